// Shared machinery for the STOMP tests: a real `tidings serve` process on a free port with a fresh
// SQLite file, HS256 tokens minted with node's crypto, REST helpers, a raw STOMP-over-WebSocket client
// (for what a library will not send: silence, malformed frames), and waits with hard limits so that
// nothing can hang.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, '..', '..', '..');
export const BIN = process.env.TIDINGS_BIN
  || path.join(process.env.CARGO_TARGET_DIR ? path.resolve(ROOT, process.env.CARGO_TARGET_DIR) : path.join(ROOT, 'target'), 'debug', 'tidings');
export const SECRET = 'stomp-tests-secret-0123456789-abcdefghijklmnopq';
/** `TIDINGS__SERVER__HEARTBEAT_SECONDS` of the test server: the interval the server asks clients for. */
export const SERVER_HEARTBEAT_MS = 1000;

/** Every wait is multiplied by this (TIDINGS_STOMP_SLOWDOWN=2 on a very busy machine). */
const SLOW = Number(process.env.TIDINGS_STOMP_SLOWDOWN || 1) || 1;
export const guard = (ms) => Math.round(ms * SLOW);

const children = new Set();
process.on('exit', () => {
  for (const c of children) {
    try { c.kill('SIGKILL'); } catch { /* gone */ }
  }
});

// ---- tokens ----

const b64url = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');

/** An HS256 JWT signed with `secret`. */
export function jwt(payload, secret = SECRET) {
  const head = b64url({ alg: 'HS256', typ: 'JWT' });
  const body = b64url(payload);
  const sig = crypto.createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

const nowS = () => Math.floor(Date.now() / 1000);
export const userToken = (sub, ttlSeconds = 3600) => jwt({ sub, exp: nowS() + ttlSeconds });
export const serviceToken = (sub = 'stomp-tests') => jwt({ sub, exp: nowS() + 3600, scope: 'notifications:publish' });

// ---- small utilities ----

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Polls `fn` until it returns a truthy value; throws after `timeout` ms. */
export async function waitFor(fn, { timeout = 10000, interval = 25, message = 'condition' } = {}) {
  const limit = guard(timeout);
  const start = Date.now();
  let last;
  let lastErr;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      lastErr = e;
    }
    if (Date.now() - start > limit) {
      const seen = lastErr ? `last error: ${lastErr.message}` : `last value: ${JSON.stringify(last)}`;
      throw new Error(`timed out after ${limit} ms waiting for ${message} (${seen})`);
    }
    await sleep(interval);
  }
}

/** Resolves with `promise`, or rejects after `ms` naming `what`. */
export function within(promise, ms, what) {
  let timer;
  const limit = guard(ms);
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${limit} ms waiting for ${what}`)), limit);
    }),
  ]).finally(() => clearTimeout(timer));
}

// ---- the server ----

export class Server {
  constructor({ heartbeatSeconds = SERVER_HEARTBEAT_MS / 1000 } = {}) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tidings-stomp-'));
    this.log = path.join(this.dir, 'server.log');
    this.heartbeatSeconds = heartbeatSeconds;
    this.child = null;
  }

  get url() { return `http://127.0.0.1:${this.port}`; }
  get wsUrl() { return `ws://127.0.0.1:${this.port}/v1/stomp`; }

  async start() {
    assert.ok(fs.existsSync(BIN), `no server binary at ${BIN} (run: cargo build --locked --bin tidings)`);
    this.port = await freePort();
    const env = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (!k.startsWith('TIDINGS') && k !== 'RUST_LOG' && k !== 'DATABASE_URL') env[k] = v;
    }
    const out = fs.openSync(this.log, 'a');
    const child = spawn(BIN, ['serve'], {
      cwd: this.dir,
      env: {
        ...env,
        TIDINGS_PROFILE: 'local',
        TIDINGS__AUTH__JWT_SECRET: SECRET,
        TIDINGS__SERVER__LISTEN: `127.0.0.1:${this.port}`,
        TIDINGS__DATABASE__URL: `sqlite://${path.join(this.dir, 'tidings.db')}`,
        TIDINGS__SERVER__HEARTBEAT_SECONDS: String(this.heartbeatSeconds),
        TIDINGS__SERVER__SHUTDOWN_GRACE_SECONDS: '1',
        TIDINGS__LOG__FORMAT: 'pretty',
        TIDINGS__LOG__LEVEL: 'info,tidings::transports::stomp=debug',
        NO_COLOR: '1',
      },
      stdio: ['ignore', out, out],
    });
    fs.closeSync(out);
    children.add(child);
    this.child = child;
    let exited = null;
    child.on('exit', (code, signal) => {
      exited = { code, signal };
      children.delete(child);
    });
    await waitFor(async () => {
      if (exited) throw new Error(`the server exited during start (${JSON.stringify(exited)}):\n${this.tail()}`);
      const r = await fetch(`${this.url}/readyz`);
      return r.status === 200;
    }, { timeout: 30000, interval: 50, message: 'the server to answer /readyz' });
    return this;
  }

  async stop() {
    const child = this.child;
    this.child = null;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10000);
    await exited;
    clearTimeout(timer);
    if (!process.env.TIDINGS_STOMP_KEEP) fs.rmSync(this.dir, { recursive: true, force: true });
  }

  tail(lines = 40) {
    try {
      return fs.readFileSync(this.log, 'utf8').split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  }

  // ---- REST ----

  async request(method, url, token, body) {
    const headers = { Authorization: `Bearer ${token}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const r = await fetch(`${this.url}${url}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    return { status: r.status, json: text ? JSON.parse(text) : null };
  }

  /** Publishes through the service API; returns the response body. */
  async publish(body) {
    const r = await this.request('POST', '/v1/notifications', serviceToken(), body);
    assert.equal(r.status, 201, `publish: ${JSON.stringify(r.json)}`);
    return r.json;
  }

  async subscribeToTopic(topic, user) {
    const r = await this.request('PUT', `/v1/topics/${topic}/subscribers/${user}`, serviceToken());
    assert.ok(r.status === 204 || r.status === 200, `topic subscribe: ${r.status} ${JSON.stringify(r.json)}`);
  }

  async unread(user) {
    const r = await this.request('GET', '/v1/notifications/unread-count', userToken(user));
    assert.equal(r.status, 200);
    return r.json;
  }
}

// ---- a raw STOMP client, for what libraries will not do ----

/** Encodes a client frame (headers escaped as STOMP 1.2 says, except in CONNECT). */
export function encodeFrame(command, headers = {}, body = '') {
  const esc = (s) => (command === 'CONNECT' ? String(s)
    : String(s).replace(/\\/g, '\\\\').replace(/\r/g, '\\r').replace(/\n/g, '\\n').replace(/:/g, '\\c'));
  let out = `${command}\n`;
  for (const [k, v] of Object.entries(headers)) out += `${esc(k)}:${esc(v)}\n`;
  return `${out}\n${body}\0`;
}

/** Parses the server's frames (one or more per message; bare EOLs are heart-beats). */
export function parseFrames(data) {
  const frames = [];
  let rest = data;
  for (;;) {
    rest = rest.replace(/^(\r?\n)+/, '');
    if (!rest) break;
    const headEnd = rest.indexOf('\n\n');
    if (headEnd < 0) throw new Error(`incomplete frame: ${JSON.stringify(rest)}`);
    const [command, ...lines] = rest.slice(0, headEnd).split('\n');
    const headers = {};
    for (const line of lines) {
      const i = line.indexOf(':');
      const unesc = (s) => (command === 'CONNECTED' ? s
        : s.replace(/\\(.)/g, (_, c) => ({ r: '\r', n: '\n', c: ':', '\\': '\\' })[c]));
      const name = unesc(line.slice(0, i));
      if (!(name in headers)) headers[name] = unesc(line.slice(i + 1));
    }
    const bodyStart = headEnd + 2;
    let bodyEnd;
    if (headers['content-length'] !== undefined) {
      bodyEnd = bodyStart + Number(headers['content-length']);
    } else {
      bodyEnd = rest.indexOf('\0', bodyStart);
    }
    frames.push({ command, headers, body: rest.slice(bodyStart, bodyEnd) });
    rest = rest.slice(bodyEnd + 1);
  }
  return frames;
}

/**
 * A WebSocket speaking raw STOMP: `frames` collects what the server sent, `heartbeats` counts bare
 * EOLs, `closed` resolves with {code, reason}.
 */
export class RawStomp {
  constructor(url, protocols = ['v12.stomp']) {
    this.frames = [];
    this.heartbeats = 0;
    this.ws = new WebSocket(url, protocols);
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', resolve);
      this.ws.once('error', reject);
    });
    this.closed = new Promise((resolve) => {
      this.ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() }));
    });
    this.ws.on('message', (data) => {
      const text = data.toString('utf8');
      if (/^(\r?\n)+$/.test(text)) {
        this.heartbeats += 1;
        return;
      }
      this.frames.push(...parseFrames(text));
    });
  }

  send(command, headers, body) {
    this.ws.send(encodeFrame(command, headers, body));
  }

  sendRaw(text) {
    this.ws.send(text);
  }

  async next(command, timeout = 10000) {
    return waitFor(() => this.frames.find((f) => f.command === command), { timeout, message: `a ${command} frame` });
  }

  close() {
    try { this.ws.terminate(); } catch { /* gone */ }
  }
}
