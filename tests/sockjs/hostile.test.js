// A hostile notification title in a real browser (issue 22): on the HTML transports, which write
// the title inside a <script> block of a page on Tidings' origin (SockJS htmlfile, through
// sockjs-client and directly, and the hidden-iframe stream), the title runs nothing and arrives as
// the very text that was published. The page is on another origin than the server, as in
// sockjs.test.js.
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

const HOSTILE = '</script><script>window.__pwned=1</script>\u2028\u2029<!--<b>&amp;</b>';

let server;
let browser;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tidings-hostile-'));
const log = path.join(dir, 'server.log');
let port;
const url = () => `http://127.0.0.1:${port}`;
const pageOrigin = () => `http://localhost:${port}`;

async function start() {
  port = await freePort();
  server = await startServer({
    name: 'the server',
    url: url(),
    dir,
    env: {
      TIDINGS__SERVER__LISTEN: `127.0.0.1:${port}`,
      TIDINGS__DATABASE__URL: `sqlite://${path.join(dir, 'tidings.db')}`,
      TIDINGS__SERVER__ALLOWED_ORIGINS: pageOrigin(),
      TIDINGS__SERVER__SHUTDOWN_GRACE_SECONDS: '1',
      TIDINGS__LOG__LEVEL: 'info',
    },
    log,
    tail: () => tailFile(log),
  });
  await publishBody(url(), { recipients: ['alice'], type: 'hostile.test', title: HOSTILE, body: 'x' });
}

after(async () => {
  await browser?.close();
  if (server && server.exitCode === null) {
    const exited = new Promise((r) => server.once('exit', r));
    server.kill('SIGTERM');
    await exited;
  }
});

/** A page on the other origin, with CSP violations and errors recorded. */
async function newPage() {
  if (!server) await start();
  browser ??= await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  const page = await browser.newPage();
  page.on('pageerror', (e) => console.error(`[page] ${e.message}`));
  await page.goto(`${pageOrigin()}/healthz`);
  return page;
}

/** `window.__pwned` in every frame of the page (the HTML transports' documents are frames). */
async function pwned(page) {
  const found = [];
  for (const frame of page.frames()) {
    const v = await frame.evaluate(() => window.__pwned).catch(() => undefined);
    if (v !== undefined) found.push(frame.url());
  }
  return found;
}

function fail(e) {
  e.message += `\nserver log:\n${tailFile(log)}`;
  throw e;
}

test('a hostile title over SockJS iframe-htmlfile (STOMP) runs nothing and arrives as text', async () => {
  try {
    const page = await newPage();
    await page.addScriptTag({ path: SOCKJS_JS });
    await page.addScriptTag({ path: STOMP_JS });
    await page.evaluate(({ url, token }) => {
      const w = window;
      w.titles = []; w.transport = null;
      w.client = new StompJs.Client({
        webSocketFactory: () => {
          const sock = new SockJS(`${url}/v1/sockjs?access_token=${token}`, null, { transports: ['iframe-htmlfile'] });
          sock.addEventListener('open', () => { w.transport = sock.transport; });
          return sock;
        },
        reconnectDelay: 0,
        heartbeatIncoming: 0,
        heartbeatOutgoing: 0,
        onConnect: () => {
          w.client.subscribe('/user/queue/notifications', (m) => {
            if (m.headers['x-tidings-event'] === 'notification') w.titles.push(JSON.parse(m.body).title);
          }, { 'x-tidings-after': '0' });
        },
      });
      w.client.activate();
    }, { url: url(), token: userToken('alice') });
    // Until the title arrives, or an injected script ran (it breaks the frame it came in).
    await waitFor(async () => (await page.evaluate(() => window.titles.length)) >= 1 || (await pwned(page)).length > 0,
      { timeout: 20000, message: 'the hostile notification over iframe-htmlfile' });
    assert.deepEqual(await pwned(page), [], 'the title ran as a script');
    assert.equal(await page.evaluate(() => window.transport), 'iframe-htmlfile');
    assert.deepEqual(await page.evaluate(() => window.titles), [HOSTILE]);
    // The htmlfile document is a frame inside the SockJS iframe page.
    assert.ok(page.frames().some((f) => f.url().includes('/htmlfile')), page.frames().map((f) => f.url()).join(' '));
    assert.deepEqual(await pwned(page), []);
    await page.evaluate(() => window.client.deactivate());
    await page.close();
  } catch (e) { fail(e); }
});

test('a hostile title in a SockJS htmlfile page (JSON protocol) runs nothing', async () => {
  try {
    const page = await newPage();
    const src = `${url()}/v1/sockjs-json/000/hostile1/htmlfile?c=cb&after=0&access_token=${userToken('alice')}`;
    await page.evaluate((src) => {
      const f = document.createElement('iframe');
      f.src = src;
      document.body.appendChild(f);
    }, src);
    // The frame's document is streamed: wait until the notification was written into it.
    await waitFor(async () => {
      const f = page.frames().find((x) => x.url().includes('/htmlfile'));
      if (!f) return false;
      const html = await f.evaluate(() => document.documentElement.outerHTML).catch(() => '');
      return html.includes('notification');
    }, { timeout: 20000, message: 'the hostile notification written into the htmlfile page' });
    assert.deepEqual(await pwned(page), [], 'the title ran as a script');
    const f = page.frames().find((x) => x.url().includes('/htmlfile'));
    // Shown as text: still one script per frame, and the data is the title, escaped.
    const scripts = await f.evaluate(() => [...document.scripts].map((s) => s.text));
    const data = scripts.find((t) => t.includes('notification'));
    assert.ok(data && !data.includes('</script>'), data);
    const frame = JSON.parse(data.trim().replace(/^p\(/, '').replace(/\);$/, ''));
    const event = JSON.parse(JSON.parse(frame.slice(1))[0]);
    assert.equal(event.notification.title, HOSTILE);
    await page.close();
  } catch (e) { fail(e); }
});

test('a hostile title on the hidden-iframe stream runs nothing and arrives as text', async () => {
  try {
    const page = await newPage();
    const src = `${url()}/v1/notifications/stream.html?origin=${encodeURIComponent(pageOrigin())}`
      + `&after=0&access_token=${userToken('alice')}`;
    await page.evaluate(({ src, from }) => {
      window.events = [];
      window.addEventListener('message', (e) => { if (e.origin === from) window.events.push(e.data); });
      const f = document.createElement('iframe');
      f.src = src;
      document.body.appendChild(f);
    }, { src, from: url() });
    await waitFor(async () => (await page.evaluate(() => window.events.some((e) => e.type === 'notification'))),
      { timeout: 20000, message: 'the hostile notification by postMessage' });
    assert.deepEqual(await pwned(page), [], 'the title ran as a script');
    const titles = await page.evaluate(() => window.events.filter((e) => e.type === 'notification').map((e) => e.notification.title));
    assert.deepEqual(titles, [HOSTILE]);
    await page.close();
  } catch (e) { fail(e); }
});

test('the Swagger UI at /docs works under its CSP', async () => {
  try {
    const page = await newPage();
    const violations = [];
    page.on('console', (m) => { if (/Content Security Policy/i.test(m.text())) violations.push(m.text()); });
    const resp = await page.goto(`${url()}/docs/`);
    assert.match(resp.headers()['content-security-policy'] ?? '', /script-src 'self'/);
    assert.equal(resp.headers()['x-content-type-options'], 'nosniff');
    await page.waitForSelector('.swagger-ui .info .title', { timeout: 20000 });
    await page.waitForSelector('.opblock', { timeout: 20000 });
    assert.deepEqual(violations, []);
    await page.close();
  } catch (e) { fail(e); }
});
