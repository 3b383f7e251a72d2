// A real gRPC-Web client in headless Chromium: @connectrpc/connect-web's gRPC-Web transport with
// code that protoc-gen-es generates (through the npm `buf`, no system protoc) from the committed
// proto/tidings/v1/notifications.proto, bundled by esbuild. The page is served from an origin of
// its own and calls the gRPC listener across origins, so CORS is exercised: an allowed origin
// subscribes (replay, then live) and sees the unread count move; any other origin is refused.
import { before } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';
import {
  ARTIFACTS, ROOT, e2e, freePort, markReadRest, publish, userToken, waitFor,
} from './lib/harness.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const OUT = path.join(ARTIFACTS, 'grpcweb');
const BUNDLE = path.join(OUT, 'bundle.js');
const HTML = fs.readFileSync(path.join(here, 'grpcweb', 'index.html'));

/** Generates the protobuf-es code from the committed contract and bundles the page. */
before(async () => {
  fs.rmSync(OUT, { recursive: true, force: true });
  const template = JSON.stringify({
    version: 'v2',
    plugins: [{ local: 'protoc-gen-es', out: path.join(OUT, 'gen'), opt: ['target=js'] }],
  });
  const bin = path.join(here, 'node_modules', '.bin');
  await new Promise((resolve, reject) => {
    execFile(path.join(bin, 'buf'), ['generate', path.join(ROOT, 'proto'), '--template', template], {
      cwd: here,
      timeout: 60000,
      env: { ...process.env, PATH: `${bin}${path.delimiter}${process.env.PATH}` },
    }, (err, _stdout, stderr) => (err ? reject(new Error(`buf generate failed: ${err.message}\n${stderr}`)) : resolve()));
  });
  await esbuild.build({
    entryPoints: [path.join(here, 'grpcweb', 'page.js')],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'chrome110',
    outfile: BUNDLE,
    logLevel: 'error',
  });
});

/** Serves the page and its bundle on 127.0.0.1:`port`: an origin of its own. */
async function pageOrigin(s, port) {
  const bundle = fs.readFileSync(BUNDLE);
  const srv = http.createServer((req, res) => {
    if (req.url === '/bundle.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' }).end(bundle);
    } else if (req.url === '/' || req.url.startsWith('/?')) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(HTML);
    } else if (req.url === '/favicon.ico') {
      res.writeHead(204).end();
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((resolve) => srv.listen(port, '127.0.0.1', resolve));
  s.t.after(() => new Promise((resolve) => srv.close(resolve)));
  return `http://127.0.0.1:${port}`;
}

/** Opens the page at `origin`, subscribing over gRPC-Web to `grpc`, and records its console. */
async function openPage(s, ctx, origin, grpc, { token = userToken('alice'), after, label } = {}) {
  const page = await ctx.newPage();
  page.__label = label;
  s.pages.push(page);
  page.on('console', (m) => s.console.push({ t: Date.now(), tab: label, type: m.type(), text: m.text() }));
  page.on('pageerror', (e) => s.pageErrors.push({ tab: label, error: String(e && e.stack ? e.stack : e) }));
  const frag = new URLSearchParams({ token, grpc });
  if (after !== undefined) frag.set('after', String(after));
  await page.goto(`${origin}/#${frag}`);
  return page;
}

const view = (page) => page.evaluate(() => ({
  ...window.grpcWeb,
  badge: document.querySelector('[data-testid="badge"]').textContent,
  badgeHidden: document.querySelector('[data-testid="badge"]').hidden,
}));

/** Waits until the page has received exactly `seqs` and shows `unread`. */
async function waitPage(page, seqs, unread, what) {
  return waitFor(async () => {
    const v = await view(page);
    if (v.state === 'error') throw new Error(`the page failed: ${JSON.stringify(v.error)}`);
    return JSON.stringify(v.seqs) === JSON.stringify(seqs) && v.unread === unread
      && v.badge === String(unread) && v.badgeHidden === (unread === 0) ? v : null;
  }, { timeout: 15000, message: `${page.__label}: ${what} (seqs ${JSON.stringify(seqs)}, unread ${unread})` });
}

async function servers(s) {
  const [allowedPort, grpcPort] = [await freePort(), await freePort()];
  const allowed = await pageOrigin(s, allowedPort);
  const server = await s.sqliteServer({
    env: {
      TIDINGS__GRPC__LISTEN: `127.0.0.1:${grpcPort}`,
      TIDINGS__SERVER__ALLOWED_ORIGINS: allowed,
    },
  });
  return { server, allowed, grpc: `http://127.0.0.1:${grpcPort}` };
}

e2e('gRPC-Web in Chromium: Subscribe replays then streams live, the badge follows the unread count', async (s) => {
  const { server, allowed, grpc } = await servers(s);
  await publish(server, ['Before the page opened', 'Also before']);
  await publish(server, ['For bob'], { recipient: 'bob' });

  const ctx = await s.context();
  const page = await openPage(s, ctx, allowed, grpc, { after: 0, label: 'alice' });
  // Replay: both of alice's, nothing of bob's.
  await waitPage(page, [1, 2], 2, 'the replay');

  // Live: published over REST while the stream is open.
  await publish(server, ['Live one']);
  await waitPage(page, [1, 2, 3], 3, 'a live notification');
  // A read anywhere moves the count on the open stream.
  const { notifications } = await (await fetch(`${server.url}/v1/notifications?after=0`, {
    headers: { authorization: `Bearer ${userToken('alice')}` },
  })).json();
  await markReadRest(server, notifications.map((n) => n.id));
  await waitPage(page, [1, 2, 3], 0, 'the count after a read');

  // Unary calls through the same transport: an answer, and a client mistake as its status.
  const listed = await page.evaluate(() => window.grpcWebList({ after: 0n }));
  assert.deepEqual(listed, { code: 'OK', seqs: [1, 2, 3], unread: 0 });
  const bad = await page.evaluate(() => window.grpcWebList({ limit: 0n }));
  assert.equal(bad.code, 'InvalidArgument', JSON.stringify(bad));

  // The stream stayed open through all of it: one subscription, counted by the server.
  assert.equal((await view(page)).state, 'live');
  const metrics = await (await fetch(`${server.url}/metrics`)).text();
  assert.match(metrics, /tidings_connections\{transport="grpc"\} 1\b/);
});

e2e('gRPC-Web in Chromium: a page from an origin not allowed is refused by CORS', async (s) => {
  const { server, allowed, grpc } = await servers(s);
  const other = await pageOrigin(s, await freePort());
  await publish(server, ['Not for other origins']);

  const ctx = await s.context();
  const refused = await openPage(s, ctx, other, grpc, { after: 0, label: 'other-origin' });
  const v = await waitFor(async () => {
    const x = await view(refused);
    return x.state === 'error' ? x : null;
  }, { timeout: 15000, message: 'the call from another origin to fail' });
  assert.deepEqual(v.seqs, [], 'nothing reached a page of another origin');
  assert.equal(v.unread, null);
  await waitFor(() => s.console.some((m) => m.tab === 'other-origin' && /blocked by CORS policy/.test(m.text)), {
    timeout: 5000, message: 'Chromium to report the CORS refusal',
  });
  // The preflight itself names no origin for it, and does for the allowed one.
  const preflight = async (origin) => (await fetch(`${grpc}/tidings.v1.Notifications/Subscribe`, {
    method: 'OPTIONS',
    headers: {
      origin,
      'access-control-request-method': 'POST',
      'access-control-request-headers': 'authorization,content-type,x-grpc-web,x-user-agent',
    },
  })).headers.get('access-control-allow-origin');
  assert.equal(await preflight(other), null);
  assert.equal(await preflight(allowed), allowed);

  // The same page from the allowed origin, in the same browser, works.
  const ok = await openPage(s, ctx, allowed, grpc, { after: 0, label: 'allowed' });
  await waitPage(ok, [1], 1, 'the allowed origin');
}, { strictConsole: false });
