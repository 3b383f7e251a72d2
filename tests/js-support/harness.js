// What the Node harnesses (tests/browser, tests/stomp) share: where the server binary is, real
// `tidings serve` processes killed on any exit, HS256 tokens minted with node's crypto, REST calls,
// free ports and waits with hard limits so that nothing can hang. Node built-ins only: this file
// lives outside both packages, so it cannot import their node_modules.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, '..', '..');
/** The binary under test: TIDINGS_BIN, else the debug build in CARGO_TARGET_DIR or target/. */
export const BIN = process.env.TIDINGS_BIN
  || path.join(process.env.CARGO_TARGET_DIR ? path.resolve(ROOT, process.env.CARGO_TARGET_DIR) : path.join(ROOT, 'target'), 'debug', 'tidings');

// ---------------------------------------------------------------------------------------------
// Processes we started, killed when node exits so that a failing or timed-out test leaves nothing.
// ---------------------------------------------------------------------------------------------

const children = new Set();

/** SIGKILLs every server still running (also done on exit; a harness may call it on signals). */
export function killChildren() {
  for (const c of children) {
    try { c.kill('SIGKILL'); } catch { /* gone */ }
  }
}
process.on('exit', killChildren);

// ---------------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------------

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A TCP port that was free a moment ago. */
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

/** Resolves to `promise`'s value, or to `fallback` after `ms` (the timer is cleared either way). */
export function orAfter(promise, ms, fallback = undefined) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((r) => { timer = setTimeout(() => r(fallback), ms); }),
  ]);
}

/**
 * The environment of a server: the caller's minus anything that could change its behaviour
 * (TIDINGS*, RUST_LOG, DATABASE_URL); the harness then sets exactly what it wants.
 */
export function inheritedEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('TIDINGS') && k !== 'RUST_LOG' && k !== 'DATABASE_URL') env[k] = v;
  }
  return env;
}

/** The last `lines` lines of a log file ('' when there is none). */
export function tailFile(file, lines = 40) {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

/**
 * `fetch` of `base` + `path` with a bearer token and an optional JSON body. Returns the status
 * and the text; `json` parses it on demand (null for an empty body).
 */
export async function request(base, method, urlPath, token, body, { signal } = {}) {
  const headers = { authorization: `Bearer ${token}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`${base}${urlPath}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  const text = await res.text();
  return {
    status: res.status,
    text,
    get json() { return text ? JSON.parse(text) : null; },
  };
}

// ---------------------------------------------------------------------------------------------
// One harness's kit: its secret, its slow-down factor, its default token subjects
// ---------------------------------------------------------------------------------------------

const b64url = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
const nowS = () => Math.floor(Date.now() / 1000);

/**
 * The helpers that depend on a harness's settings.
 *
 * @param {object} o
 * @param {string} o.secret            the HS256 secret its servers are started with
 * @param {string} o.slowdownEnv       the variable that multiplies every guard (…=2 on a busy machine)
 * @param {string} o.serviceSub        the default `sub` of service tokens
 * @param {string} [o.defaultUser]     the default `sub` of user tokens, if any
 */
export function kit({ secret, slowdownEnv, serviceSub, defaultUser }) {
  const slow = Number(process.env[slowdownEnv] || 1) || 1;
  /** Every guard is multiplied by the harness's slow-down factor. */
  const guard = (ms) => Math.round(ms * slow);

  /** An HS256 JWT signed with the harness's secret (or `key`). */
  function jwt(payload, key = secret) {
    const head = b64url({ alg: 'HS256', typ: 'JWT' });
    const body = b64url(payload);
    const sig = crypto.createHmac('sha256', key).update(`${head}.${body}`).digest('base64url');
    return `${head}.${body}.${sig}`;
  }
  const userToken = (sub = defaultUser, ttlSeconds = 3600) => jwt({ sub, exp: nowS() + ttlSeconds });
  const serviceToken = (sub = serviceSub) => jwt({ sub, exp: nowS() + 3600, scope: 'notifications:publish' });

  /** Like AbortSignal.timeout, but its timer does not keep the process alive (node 20's does, once fetch listens). */
  function timeoutSignal(ms) {
    const ac = new AbortController();
    setTimeout(() => ac.abort(new Error(`timed out after ${guard(ms)} ms`)), guard(ms)).unref();
    return ac.signal;
  }

  /**
   * Polls `fn` until it returns a truthy value, then returns it; throws `message` (with the last value
   * or error seen) after `timeout` ms. The guard is generous: it is not a timed assertion.
   */
  async function waitFor(fn, { timeout = 10000, interval = 25, message = 'condition' } = {}) {
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

  /** Resolves with `promise`, or rejects after `ms` (guarded) naming `what`. */
  function within(promise, ms, what) {
    let timer;
    const limit = guard(ms);
    return Promise.race([
      promise,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${limit} ms waiting for ${what}`)), limit);
      }),
    ]).finally(() => clearTimeout(timer));
  }

  /**
   * Starts `tidings serve` in `dir` with `env` (on top of inheritedEnv() and the secret), output
   * appended to `log`, and waits until it answers /readyz at `url`. Returns the child process,
   * also handed to `onSpawn` at once, so that a server that fails to start can still be stopped.
   * `name` labels errors; `tail` gives the log lines shown when it exits during start.
   */
  async function startServer({ name, url, dir, env, log, tail, onSpawn = () => {} }) {
    assert.ok(fs.existsSync(BIN), `no server binary at ${BIN} (run: cargo build --locked --bin tidings)`);
    const out = fs.openSync(log, 'a');
    const child = spawn(BIN, ['serve'], {
      cwd: dir,
      // gRPC on any free port: the default (HTTP + 1) may be taken.
      env: { ...inheritedEnv(), TIDINGS_PROFILE: 'local', TIDINGS__AUTH__JWT_SECRET: secret, TIDINGS__GRPC__LISTEN: '127.0.0.1:0', NO_COLOR: '1', ...env },
      stdio: ['ignore', out, out],
    });
    fs.closeSync(out);
    children.add(child);
    onSpawn(child);
    let exited = null;
    child.on('exit', (code, signal) => {
      exited = { code, signal };
      children.delete(child);
    });
    const died = () => `${name} exited during start (${JSON.stringify(exited)}); log:\n${tail()}`;
    await waitFor(async () => {
      if (exited) throw new Error(died());
      const r = await fetch(`${url}/readyz`, { signal: timeoutSignal(2000) });
      return r.status === 200;
    }, { timeout: 30000, interval: 50, message: `${name} to answer /readyz` }).catch((e) => {
      if (exited) e.message = died();
      throw e;
    });
    return child;
  }

  /** Publishes `body` through the service API (asserting 201) and returns the response body. */
  async function publishBody(base, body, { label = base, token = serviceToken() } = {}) {
    const r = await request(base, 'POST', '/v1/notifications', token, body, { signal: timeoutSignal(10000) });
    assert.equal(r.status, 201, `publish to ${label} answered ${r.status}: ${r.text}`);
    return r.json;
  }

  return { guard, jwt, userToken, serviceToken, timeoutSignal, waitFor, within, startServer, publishBody };
}
