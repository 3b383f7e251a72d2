// The STOMP tests' own machinery: a real `tidings serve` process on a free port with a fresh SQLite
// file, its REST calls, and a raw STOMP-over-WebSocket client (for what a library will not send:
// silence, malformed frames). What the browser harness needs too (the server process, tokens, REST,
// waits with hard limits so that nothing can hang) is in tests/js-support/harness.js.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import WebSocket from 'ws';
import {
  ROOT, BIN, freePort, kit, request, sleep, tailFile,
} from '../../js-support/harness.js';

export { ROOT, BIN, freePort, sleep };
export const SECRET = 'stomp-tests-secret-0123456789-abcdefghijklmnopq';
/** `TIDINGS__SERVER__HEARTBEAT_SECONDS` of the test server: the interval the server asks clients for. */
export const SERVER_HEARTBEAT_MS = 1000;

/** Every wait is multiplied by TIDINGS_STOMP_SLOWDOWN (=2 on a very busy machine). */
const {
  guard, jwt, userToken, serviceToken, waitFor, within, startServer, publishBody,
} = kit({ secret: SECRET, slowdownEnv: 'TIDINGS_STOMP_SLOWDOWN', serviceSub: 'stomp-tests' });
export { guard, jwt, userToken, serviceToken, waitFor, within };

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
    this.port = await freePort();
    await startServer({
      name: 'the server',
      url: this.url,
      dir: this.dir,
      env: {
        TIDINGS__SERVER__LISTEN: `127.0.0.1:${this.port}`,
        TIDINGS__DATABASE__URL: `sqlite://${path.join(this.dir, 'tidings.db')}`,
        TIDINGS__SERVER__HEARTBEAT_SECONDS: String(this.heartbeatSeconds),
        TIDINGS__SERVER__SHUTDOWN_GRACE_SECONDS: '1',
        TIDINGS__LOG__FORMAT: 'pretty',
        TIDINGS__LOG__LEVEL: 'info,tidings::transports::stomp=debug',
      },
      log: this.log,
      tail: () => this.tail(),
      onSpawn: (child) => { this.child = child; },
    });
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
    return tailFile(this.log, lines);
  }

  // ---- REST ----

  async request(method, url, token, body) {
    const r = await request(this.url, method, url, token, body);
    return { status: r.status, json: r.json };
  }

  /** Publishes through the service API; returns the response body. */
  async publish(body) {
    return publishBody(this.url, body, { label: 'the server' });
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
