// The browser end-to-end tests' own machinery: real `tidings` processes (SQLite, or Postgres + Redis
// for two replicas), headless Debian Chromium driven by playwright-core, and reading the demo page.
// What the STOMP harness needs too (the server process, tokens, REST, waits with hard limits) is in
// tests/js-support/harness.js.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import {
  ROOT, BIN, freePort, killChildren, kit, orAfter, request, sleep, tailFile,
} from '../../js-support/harness.js';

export { ROOT, BIN, freePort, sleep };
const here = path.dirname(fileURLToPath(import.meta.url));
export const ARTIFACTS = path.resolve(here, '..', 'artifacts');
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const SECRET = 'browser-tests-secret-0123456789-abcdefghijklmnop';
export const POSTGRES_ADMIN_URL = process.env.TIDINGS_TEST_POSTGRES_URL || 'postgres://postgres@127.0.0.1:5432/postgres';
export const REDIS_URL = process.env.TIDINGS_TEST_REDIS_URL || 'redis://127.0.0.1:6379';

/** Every guard is multiplied by TIDINGS_BROWSER_SLOWDOWN (=2 on a very busy machine). */
const {
  guard, jwt, userToken, serviceToken, timeoutSignal, waitFor, startServer, publishBody,
} = kit({ secret: SECRET, slowdownEnv: 'TIDINGS_BROWSER_SLOWDOWN', serviceSub: 'tests', defaultUser: 'alice' });
export { guard, jwt, userToken, serviceToken, timeoutSignal, waitFor };
/** Resolves to `promise`'s value, or to `fallback` after `ms` (the timer is cleared either way). */
export const within = orAfter;

fs.mkdirSync(ARTIFACTS, { recursive: true });

// The servers are killed on exit by the shared harness; on a signal too.
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(sig, () => {
    killChildren();
    process.exit(128 + ({ SIGINT: 2, SIGTERM: 15, SIGHUP: 1 })[sig]);
  });
}
// A file that somehow outlives every per-test limit stops itself (node --test then reports it).
const FILE_LIMIT_MS = guard(Number(process.env.TIDINGS_BROWSER_FILE_LIMIT_MS || 10 * 60 * 1000));
setTimeout(() => {
  console.error(`browser tests: file limit of ${FILE_LIMIT_MS} ms reached; killing servers and exiting`);
  process.exit(1);
}, FILE_LIMIT_MS).unref();

// ---------------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------------

export function slug(s) {
  return s.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 60);
}

function run(cmd, args, { timeout = 30000, env } = {}) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout, env: env || process.env }, (err, stdout, stderr) => {
      if (err) {
        err.message += `\n${stderr}`;
        reject(err);
      } else {
        resolve(stdout);
      }
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------

export class Server {
  /**
   * @param {object} o
   * @param {string} o.name        label for logs
   * @param {number} o.port
   * @param {string} o.databaseUrl
   * @param {string} o.dir         working directory (a fresh temp dir: no stray .env or tidings.toml)
   * @param {object} [o.env]       extra TIDINGS__* variables (Redis)
   * @param {string} o.log         log file path
   */
  constructor(o) {
    Object.assign(this, o);
    this.child = null;
    this.starts = 0;
  }

  get url() { return `http://127.0.0.1:${this.port}`; }

  async start() {
    this.starts += 1;
    fs.appendFileSync(this.log, `\n===== start #${this.starts} of ${this.name} on ${this.url} at ${new Date().toISOString()} =====\n`);
    const t0 = Date.now();
    await startServer({
      name: this.name,
      url: this.url,
      dir: this.dir,
      env: {
        TIDINGS__SERVER__SHUTDOWN_GRACE_SECONDS: '2',
        TIDINGS__LOG__LEVEL: 'info',
        TIDINGS__LOG__FORMAT: 'pretty',
        TIDINGS__SERVER__LISTEN: `127.0.0.1:${this.port}`,
        TIDINGS__DATABASE__URL: this.databaseUrl,
        ...this.env,
      },
      log: this.log,
      tail: () => this.tail(30),
      onSpawn: (child) => { this.child = child; },
    });
    this.readyMs = Date.now() - t0;
    return this;
  }

  /** SIGTERM (graceful, grace 2 s), then SIGKILL if it has not exited within `timeout`. */
  async stop({ signal = 'SIGTERM', timeout = 15000 } = {}) {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill(signal);
    const ok = await within(exited.then(() => true), guard(timeout), false);
    if (!ok) {
      child.kill('SIGKILL');
      await exited;
      throw new Error(`${this.name} did not stop within ${guard(timeout)} ms of ${signal}`);
    }
    this.child = null;
  }

  kill() {
    if (this.child) {
      try { this.child.kill('SIGKILL'); } catch { /* gone */ }
      this.child = null;
    }
  }

  tail(lines = 40) {
    return tailFile(this.log, lines);
  }

  /** Lines of the log at WARN or ERROR level. */
  problems() {
    try {
      return fs.readFileSync(this.log, 'utf8').split('\n').filter((l) => /\b(WARN|ERROR)\b/.test(l));
    } catch {
      return [];
    }
  }

  /** Request log lines (`path=…`) logged at or after `sinceMs`. */
  requests(pathPrefix, sinceMs = 0) {
    const since = new Date(sinceMs).toISOString();
    let text = '';
    try { text = fs.readFileSync(this.log, 'utf8'); } catch { return []; }
    return text.split('\n').filter((l) => l.includes(' close ') && l.includes(`path=${pathPrefix}`) && l.slice(0, 24) >= since);
  }

  async metric(name, labels = '') {
    const text = await (await fetch(`${this.url}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith(`${name}${labels} `));
    return line ? Number(line.split(' ').pop()) : null;
  }
}

// ---------------------------------------------------------------------------------------------
// Publishing and reading through REST
// ---------------------------------------------------------------------------------------------

const SERVICE = serviceToken();
let publishCounter = 0;

/**
 * Publishes one notification per spec (a string is a title) to `recipient`; returns the created
 * {id, seq} list in order. One request per notification, so each gets its own seq in order.
 */
export async function publish(server, specs, { recipient = 'alice' } = {}) {
  const out = [];
  for (const spec of Array.isArray(specs) ? specs : [specs]) {
    const s = typeof spec === 'string' ? { title: spec } : spec;
    publishCounter += 1;
    const body = { recipients: [recipient], type: s.type || 'demo.test', title: s.title || `Test ${publishCounter}` };
    for (const k of ['body', 'data', 'link']) if (s[k] !== undefined) body[k] = s[k];
    const n = (await publishBody(server.url, body, { label: server.name, token: SERVICE })).notifications[0];
    out.push({ id: n.id, seq: n.seq, recipient: n.recipient });
  }
  return out;
}

export async function inbox(server, user = 'alice') {
  const r = await request(server.url, 'GET', '/v1/notifications?after=0&limit=200', userToken(user), undefined, { signal: timeoutSignal(10000) });
  assert.equal(r.status, 200);
  return r.json;
}

export async function markReadRest(server, ids, user = 'alice') {
  const r = await request(server.url, 'POST', '/v1/notifications/read', userToken(user), { ids }, { signal: timeoutSignal(10000) });
  assert.equal(r.status, 200);
  return r.json;
}

// ---------------------------------------------------------------------------------------------
// Postgres (two-replica case)
// ---------------------------------------------------------------------------------------------

function pgUrlWithDb(name) {
  const u = new URL(POSTGRES_ADMIN_URL);
  u.pathname = `/${name}`;
  return u.toString();
}

async function psql(sql) {
  return run('psql', [POSTGRES_ADMIN_URL, '-qAtX', '-v', 'ON_ERROR_STOP=1', '-c', sql], { timeout: guard(30000) });
}

export async function requirePostgresAndRedis() {
  try {
    await psql('select 1');
  } catch (e) {
    throw new Error(`this test needs PostgreSQL at ${POSTGRES_ADMIN_URL} with psql installed (scripts/test.sh starts it): ${e.message}`);
  }
  const u = new URL(REDIS_URL);
  await new Promise((resolve, reject) => {
    const sock = net.connect(Number(u.port || 6379), u.hostname);
    const timer = setTimeout(() => { sock.destroy(); reject(new Error('timeout')); }, 5000);
    sock.on('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d) => { clearTimeout(timer); sock.destroy(); d.toString().startsWith('+PONG') ? resolve() : reject(new Error(d.toString())); });
    sock.on('error', (e) => { clearTimeout(timer); reject(e); });
  }).catch((e) => {
    throw new Error(`this test needs Redis at ${REDIS_URL} (scripts/test.sh starts it): ${e.message}`);
  });
}

// ---------------------------------------------------------------------------------------------
// The browser side
// ---------------------------------------------------------------------------------------------

export const LAUNCH_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/** Records every change of the connection-state element, to explain failures and time take-overs. */
const INIT_SCRIPT = `(() => {
  window.__stateLog = [];
  const start = () => {
    const el = document.querySelector('[data-testid="state"]');
    if (!el) return;
    const note = () => window.__stateLog.push({ t: Date.now(), state: el.dataset.state, transport: el.dataset.transport, role: el.dataset.role });
    note();
    new MutationObserver(note).observe(el, { attributes: true, attributeFilter: ['data-state', 'data-transport', 'data-role'] });
  };
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start); else start();
})();`;

/**
 * One test's world: its temp dir, servers, browser and pages; collects console output and page
 * errors; on failure saves a screenshot of every open page and prints the logs; always cleans up.
 */
export class Session {
  constructor(name, t) {
    this.name = name;
    this.t = t;
    this.slug = slug(name);
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), `tidings-browser-${this.slug.slice(0, 20)}-`));
    this.servers = [];
    this.databases = [];
    this.browser = null;
    this.pages = [];
    this.pageErrors = [];
    this.console = [];
    this.timings = {};
  }

  note(msg) {
    this.t.diagnostic(msg);
  }

  time(key, ms) {
    this.timings[key] = ms;
    this.note(`${key}: ${ms} ms`);
  }

  /** A single replica on a fresh SQLite file. */
  async sqliteServer({ name = 'server', port, env = {} } = {}) {
    const server = new Server({
      name,
      port: port || await freePort(),
      databaseUrl: `sqlite://${path.join(this.dir, `${name}.db`)}`,
      dir: this.dir,
      env,
      log: path.join(ARTIFACTS, `${this.slug}.${name}.log`),
    });
    fs.writeFileSync(server.log, '');
    this.servers.push(server);
    return server.start();
  }

  /** Two replicas (or more) on one fresh Postgres database and a private Redis channel. */
  async postgresReplicas(names = ['a', 'b']) {
    await requirePostgresAndRedis();
    const db = `tidings_browser_${process.pid}_${crypto.randomBytes(4).toString('hex')}`;
    await psql(`CREATE DATABASE "${db}"`);
    this.databases.push(db);
    const channel = `tidings:browser:${db}`;
    const out = [];
    // One after the other: the first one runs the migrations.
    for (const name of names) {
      const server = new Server({
        name,
        port: await freePort(),
        databaseUrl: pgUrlWithDb(db),
        dir: this.dir,
        env: { TIDINGS__REDIS__URL: REDIS_URL, TIDINGS__REDIS__CHANNEL: channel },
        log: path.join(ARTIFACTS, `${this.slug}.${name}.log`),
      });
      fs.writeFileSync(server.log, '');
      this.servers.push(server);
      out.push(await server.start());
    }
    return out;
  }

  async launch() {
    if (this.browser) return this.browser;
    this.browser = await chromium.launch({ executablePath: CHROMIUM, args: LAUNCH_ARGS, timeout: guard(60000) });
    return this.browser;
  }

  /** A browser context: tabs in the same context share BroadcastChannel, Web Locks and localStorage. */
  async context(opts = {}) {
    const browser = await this.launch();
    const ctx = await browser.newContext({ viewport: { width: 1200, height: 800 }, ...opts });
    ctx.setDefaultTimeout(guard(15000));
    await ctx.addInitScript(INIT_SCRIPT);
    return ctx;
  }

  /** Opens the demo in a new tab of `ctx` and waits until its client is live or a follower. */
  async openDemo(ctx, server, { token = userToken('alice'), transport, label, path: p = '/demo/', wait = true } = {}) {
    const page = await ctx.newPage();
    const tag = label || `tab${this.pages.length + 1}`;
    page.__label = tag;
    this.pages.push(page);
    page.on('console', (m) => this.console.push({ t: Date.now(), tab: tag, type: m.type(), text: m.text() }));
    page.on('pageerror', (e) => this.pageErrors.push({ tab: tag, error: String(e && e.stack ? e.stack : e) }));
    page.on('crash', () => this.pageErrors.push({ tab: tag, error: 'page crashed' }));
    const frag = new URLSearchParams({ token });
    if (transport) frag.set('transport', transport);
    await page.goto(`${server.url}${p}#${frag.toString()}`, { timeout: guard(20000) });
    if (wait) await this.waitConnected(page);
    return page;
  }

  async waitConnected(page, { timeout = 20000 } = {}) {
    return waitFor(async () => {
      const s = await page.evaluate(() => window.tidingsDemo && window.tidingsDemo.state);
      return s === 'live' || s === 'follower' ? s : null;
    }, { timeout, message: `${page.__label} to be live or follower` });
  }

  /** Fails the test on any uncaught error in a page. */
  assertNoPageErrors() {
    assert.deepEqual(this.pageErrors, [], `uncaught errors in the page:\n${this.pageErrors.map((e) => `[${e.tab}] ${e.error}`).join('\n')}`);
  }

  /** Console errors that are not the network noise of a deliberately stopped server or an expired token. */
  unexpectedConsoleErrors() {
    const noise = /Failed to load resource|net::ERR_|EventSource|WebSocket connection to|status of 40[13]|status of 50[23]/i;
    return this.console.filter((m) => m.type === 'error' && !noise.test(m.text));
  }

  async dumpFailure(err) {
    const lines = [`FAILED: ${this.name}: ${err && err.message}`];
    for (const page of this.pages) {
      if (page.isClosed()) continue;
      const file = path.join(ARTIFACTS, `${this.slug}.${page.__label}.failure.png`);
      try {
        await page.screenshot({ path: file, timeout: 5000 });
        lines.push(`screenshot: ${file}`);
        const info = await page.evaluate(() => ({
          state: window.tidingsDemo && window.tidingsDemo.state,
          transport: window.tidingsDemo && window.tidingsDemo.transport,
          unread: window.tidingsDemo && window.tidingsDemo.unread,
          cursor: window.tidingsDemo && window.tidingsDemo.client && window.tidingsDemo.client.cursor,
          badge: document.querySelector('[data-testid="badge"]').textContent,
          items: [...document.querySelectorAll('[data-testid="item"]')].map((e) => `${e.dataset.seq}:${e.dataset.read}`),
          stateLog: (window.__stateLog || []).slice(-15),
        }), null, { timeout: 5000 });
        lines.push(`[${page.__label}] ${JSON.stringify(info)}`);
      } catch (e) {
        lines.push(`[${page.__label}] could not inspect: ${e.message}`);
      }
    }
    for (const m of this.console.slice(-40)) lines.push(`console [${m.tab}] ${m.type}: ${m.text}`);
    for (const s of this.servers) lines.push(`--- ${s.name} log (${s.log}), last lines:\n${s.tail(25)}`);
    console.error(lines.join('\n'));
  }

  async close() {
    if (this.browser) {
      await within(this.browser.close().catch(() => {}), 10000);
    }
    for (const s of this.servers) {
      await s.stop({ timeout: 8000 }).catch(() => s.kill());
    }
    for (const db of this.databases) {
      await psql(`DROP DATABASE IF EXISTS "${db}" WITH (FORCE)`).catch((e) => console.error(`could not drop ${db}: ${e.message}`));
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * Declares one end-to-end test with its own Session. Fails on uncaught page errors; on failure,
 * dumps screenshots and logs; always cleans up.
 */
export function e2e(name, body, { timeout = 120000, strictConsole = true } = {}) {
  test(name, { timeout: guard(timeout) }, async (t) => {
    const s = new Session(name, t);
    try {
      await body(s, t);
      s.assertNoPageErrors();
      const errors = s.console.filter((m) => m.type === 'error' || m.type === 'warning');
      if (errors.length) {
        const counts = new Map();
        for (const m of errors) {
          const key = m.text.replace(/access_token=[^&' ]+/g, 'access_token=…').replace(/127\.0\.0\.1:\d+/g, 'server').slice(0, 160);
          counts.set(key, (counts.get(key) || 0) + 1);
        }
        s.note(`console errors and warnings (expected network noise): ${[...counts].map(([k, n]) => `${n}× ${k}`).join(' | ')}`);
      }
      if (strictConsole) {
        const unexpected = s.unexpectedConsoleErrors();
        assert.deepEqual(unexpected.map((m) => `[${m.tab}] ${m.text}`), [], 'unexpected console errors');
      }
    } catch (e) {
      await s.dumpFailure(e).catch(() => {});
      throw e;
    } finally {
      await s.close();
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Reading the page
// ---------------------------------------------------------------------------------------------

/** The badge: its text (always the exact unread count) and whether it is shown. */
export function badge(page) {
  return page.evaluate(() => {
    const b = document.querySelector('[data-testid="badge"]');
    return { text: b.textContent, hidden: b.hidden };
  });
}

/** Every rendered item as {seq, read}, in page order (newest first). */
export function items(page) {
  return page.evaluate(() => [...document.querySelectorAll('[data-testid="item"]')]
    .map((e) => ({ seq: Number(e.dataset.seq), read: e.dataset.read === 'true' })));
}

export function connState(page) {
  return page.evaluate(() => {
    const e = document.querySelector('[data-testid="state"]');
    return { state: e.dataset.state, transport: e.dataset.transport, role: e.dataset.role, text: e.textContent };
  });
}

/**
 * Waits until every page's badge reads `n` (shown when n > 0), polling in the page every 10 ms.
 * Returns the ms from `since` until each page got there.
 */
export async function waitBadge(pages, n, { since = Date.now(), timeout = 10000 } = {}) {
  const limit = guard(timeout);
  return Promise.all(pages.map(async (page) => {
    try {
      await page.waitForFunction((want) => {
        const b = document.querySelector('[data-testid="badge"]');
        return b && b.textContent === String(want) && b.hidden === (want === 0);
      }, n, { timeout: limit, polling: 10 });
    } catch (e) {
      const seen = await badge(page).catch(() => null);
      throw new Error(`${page.__label}: badge did not show ${n} within ${limit} ms (it shows ${JSON.stringify(seen)})`);
    }
    return Date.now() - since;
  }));
}

/**
 * Asserts that a page lists exactly the seqs `want` (in any order given; the page shows newest first),
 * each once, with the read flags in `read` (a set of seqs) when given.
 */
export async function assertItems(page, want, { read } = {}) {
  const got = await items(page);
  const seqs = got.map((i) => i.seq);
  const dup = seqs.filter((s, i) => seqs.indexOf(s) !== i);
  assert.deepEqual(dup, [], `${page.__label}: duplicate items ${JSON.stringify(dup)} in ${JSON.stringify(seqs)}`);
  assert.deepEqual(seqs, [...want].sort((a, b) => b - a), `${page.__label}: items`);
  if (read) {
    for (const i of got) assert.equal(i.read, read.has(i.seq), `${page.__label}: item ${i.seq} read=${i.read}`);
  }
}

/** Waits until the page lists exactly the seqs `want`, then checks once more after `settle` ms. */
export async function waitItems(page, want, { timeout = 10000, settle = 500, read } = {}) {
  const key = JSON.stringify([...want].sort((a, b) => b - a));
  await waitFor(async () => JSON.stringify((await items(page)).map((i) => i.seq)) === key,
    { timeout, message: `${page.__label} to list seqs ${key}` }).catch(async (e) => {
    e.message += ` — it lists ${JSON.stringify((await items(page).catch(() => [])).map((i) => i.seq))}`;
    throw e;
  });
  if (settle) await sleep(settle);
  await assertItems(page, want, { read });
}

export const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);
