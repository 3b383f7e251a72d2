// The hidden-iframe stream in a real browser: a parent page on another origin embeds
// /v1/notifications/stream.html, and the events reach it by postMessage, in seq order, once each.
import assert from 'node:assert/strict';
import http from 'node:http';
import { e2e, publish, waitFor, freePort, userToken } from './lib/harness.js';

e2e('hidden iframe stream delivers to the parent page by postMessage', async (s) => {
  const parentPort = await freePort();
  const parentOrigin = `http://127.0.0.1:${parentPort}`;
  const server = await s.sqliteServer({ env: { TIDINGS__SERVER__ALLOWED_ORIGINS: parentOrigin } });
  const src = `${server.url}/v1/notifications/stream.html?origin=${encodeURIComponent(parentOrigin)}`
    + `&after=0&access_token=${userToken('alice')}`;
  const parent = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(`<!doctype html><html><body><script>
      window.events = [];
      window.addEventListener('message', (e) => {
        if (e.origin === ${JSON.stringify(server.url)}) window.events.push(e.data);
      });
    </script><iframe id="stream" style="display:none" src="${src}"></iframe></body></html>`);
  });
  await new Promise((resolve) => parent.listen(parentPort, '127.0.0.1', resolve));
  try {
    await publish(server, ['First', 'Second']); // before the page opens: replayed from after=0
    const ctx = await s.context();
    const page = await ctx.newPage();
    // 'load' never fires: the iframe's document never ends, by design.
    await page.goto(`${parentOrigin}/`, { waitUntil: 'domcontentloaded' });
    const notifications = () => page.evaluate(
      () => window.events.filter((e) => e.type === 'notification').map((e) => e.notification.seq));
    await waitFor(async () => (await notifications()).length === 2, { message: 'the replay arrives by postMessage' });
    await publish(server, ['Third']); // live
    await waitFor(async () => (await notifications()).length === 3, { message: 'the live one arrives too' });
    assert.deepEqual(await notifications(), [1, 2, 3]);
    const unread = await page.evaluate(() => window.events.filter((e) => e.type === 'unread').pop());
    assert.equal(unread.unread, 3);
    assert.equal(unread.seq, 3);
  } finally {
    await new Promise((resolve) => parent.close(resolve));
  }
});
