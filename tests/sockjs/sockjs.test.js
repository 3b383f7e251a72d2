// SockJS end-to-end: real sockjs-client 1.x with @stomp/stompjs over it, in headless Chromium,
// each SockJS transport forced in turn, against a real `tidings serve`. The page is on another
// origin than the server (localhost vs 127.0.0.1), as a front end on its own host would be, so the
// XHR transports go through CORS and the iframe transports load the server's iframe page (and the
// sockjs-client copy in the binary). For each transport: subscribe to /user/queue/notifications from
// a cursor, get the replay, live notifications and the unread count; restart the server and lose
// nothing (every seq exactly once).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { freePort, kit, tailFile } from '../js-support/harness.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const SECRET = 'sockjs-tests-secret-0123456789-abcdefghijklmnop';
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const {
  userToken, waitFor, startServer, publishBody,
} = kit({ secret: SECRET, slowdownEnv: 'TIDINGS_SOCKJS_SLOWDOWN', serviceSub: 'sockjs-tests', defaultUser: 'alice' });

const SOCKJS_JS = path.join(here, 'node_modules/sockjs-client/dist/sockjs.min.js');
const STOMP_JS = path.join(here, 'node_modules/@stomp/stompjs/bundles/stomp.umd.min.js');

class Server {
  constructor() {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tidings-sockjs-'));
    this.log = path.join(this.dir, 'server.log');
  }

  get url() { return `http://127.0.0.1:${this.port}`; }
  get pageOrigin() { return `http://localhost:${this.port}`; }

  async start() {
    this.port ??= await freePort();
    this.child = await startServer({
      name: 'the server',
      url: this.url,
      dir: this.dir,
      env: {
        TIDINGS__SERVER__LISTEN: `127.0.0.1:${this.port}`,
        TIDINGS__DATABASE__URL: `sqlite://${path.join(this.dir, 'tidings.db')}`,
        TIDINGS__SERVER__ALLOWED_ORIGINS: this.pageOrigin,
        TIDINGS__SERVER__SHUTDOWN_GRACE_SECONDS: '1',
        // Small enough that the streaming transports end a response and open another during the test.
        TIDINGS__SOCKJS__STREAM_BYTES_LIMIT: '4096',
        TIDINGS__SOCKJS__HEARTBEAT_SECONDS: '5',
        TIDINGS__LOG__LEVEL: 'info',
      },
      log: this.log,
      tail: () => tailFile(this.log),
    });
  }

  async stop() {
    if (!this.child || this.child.exitCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.kill('SIGTERM');
    await exited;
  }

  publish(n, user = 'alice') {
    return publishBody(this.url, {
      recipients: [user], type: 'sockjs.test', title: `note ${n}`, body: 'x'.repeat(200),
    });
  }
}

let browser;
after(async () => { await browser?.close(); });

/** Opens the page on the other origin and starts a STOMP-over-SockJS client forced to `transport`. */
async function openClient(server, transport, token) {
  browser ??= await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  const page = await browser.newPage();
  page.on('pageerror', (e) => console.error(`[page] ${e.message}`));
  // Any page of that origin will do: the test injects what it needs.
  await page.goto(`${server.pageOrigin}/healthz`);
  await page.addScriptTag({ path: SOCKJS_JS });
  await page.addScriptTag({ path: STOMP_JS });
  await page.evaluate(({ url, transport, token }) => {
    const w = window;
    w.seqs = []; w.unread = null; w.transports = []; w.connects = 0; w.errors = [];
    w.client = new StompJs.Client({
      webSocketFactory: () => {
        const sock = new SockJS(`${url}/v1/sockjs?access_token=${token}`, null, { transports: [transport] });
        sock.addEventListener('open', () => w.transports.push(sock.transport));
        return sock;
      },
      reconnectDelay: 300,
      heartbeatIncoming: 0,
      heartbeatOutgoing: 0,
      onConnect: () => {
        w.connects += 1;
        const last = w.seqs.length ? w.seqs[w.seqs.length - 1] : 0;
        w.client.subscribe('/user/queue/notifications', (m) => {
          const body = JSON.parse(m.body);
          if (m.headers['x-tidings-event'] === 'notification') w.seqs.push(body.seq);
          if (m.headers['x-tidings-event'] === 'unread') w.unread = body.unread;
        }, { 'x-tidings-after': String(last) });
      },
      onStompError: (f) => w.errors.push(f.headers.message),
    });
    w.client.activate();
  }, { url: server.url, transport, token });
  return page;
}

const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

for (const transport of [
  'websocket', 'xhr-streaming', 'xhr-polling', 'eventsource', 'iframe-eventsource', 'iframe-htmlfile', 'jsonp-polling',
]) {
  test(`STOMP over SockJS ${transport}: replay from a cursor, live, unread count, restart without loss`, async () => {
    const server = new Server();
    await server.start();
    let page;
    try {
      for (let i = 1; i <= 3; i++) await server.publish(i);
      page = await openClient(server, transport, userToken('alice'));
      const seen = () => page.evaluate(() => ({
        seqs: window.seqs, unread: window.unread, transports: window.transports, connects: window.connects, errors: window.errors,
      }));

      // The replay.
      await waitFor(async () => (await seen()).seqs.length >= 3, { timeout: 20000, message: `${transport}: replay` });
      // Live, past the 4 KiB streaming limit (each notification is ~500 bytes framed).
      for (let i = 4; i <= 15; i++) await server.publish(i);
      await waitFor(async () => { const s = await seen(); return s.seqs.length >= 15 && s.unread === 15; },
        { timeout: 20000, message: `${transport}: live notifications and the unread count` });

      // A restart: the client reconnects (stompjs) on a new SockJS session and resumes by cursor.
      await server.stop();
      await server.publish(16).catch(() => {}); // nobody is listening: this one may fail, and is not counted
      await server.start();
      for (let i = 17; i <= 19; i++) await server.publish(i);
      const s = await waitFor(async () => { const v = await seen(); return v.seqs.length >= 18 && v.connects >= 2 && v; },
        { timeout: 30000, message: `${transport}: resume after the restart` });
      const total = s.seqs[s.seqs.length - 1];
      assert.deepEqual(s.seqs, range(1, total), `${transport}: every seq exactly once, in order`);
      assert.ok(s.transports.length >= 2 && s.transports.every((t) => t === transport), `transports used: ${s.transports}`);
      // The only ERROR is the one that tells the client to come back (the restart itself).
      assert.ok(s.errors.every((m) => /server restarting/.test(m)), `STOMP errors: ${s.errors}`);
    } catch (e) {
      e.message += `\nserver log:\n${tailFile(server.log)}`;
      throw e;
    } finally {
      await page?.close();
      await server.stop();
    }
  });
}
