// Web Push in a real browser: the demo's "Enable desktop notifications" registers tidings-sw.js,
// a push is delivered to it through the DevTools protocol (ServiceWorker.deliverPushMessage, as
// the browser's push service would), and the worker shows the notification, sets the badge, and
// a click marks it read over the REST API.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { e2e, publish, inbox, waitFor } from './lib/harness.js';

/** A VAPID key as `tidings vapid-keys` prints it: base64url of the raw 32-byte P-256 scalar. */
function vapidKey() {
  const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return privateKey.export({ format: 'jwk' }).d;
}

e2e('web push: the service worker shows a pushed notification, sets the badge, and a click marks it read', async (s) => {
  const server = await s.sqliteServer({
    env: {
      TIDINGS__WEBPUSH__VAPID_PRIVATE_KEY: vapidKey(),
      TIDINGS__WEBPUSH__SUBJECT: 'mailto:ops@example.com',
    },
  });
  const ctx = await s.context();
  await ctx.grantPermissions(['notifications'], { origin: server.url });
  const page = await s.openDemo(ctx, server);

  // The button: permission, the worker registered at /demo/ and configured with the API and the
  // token. Headless Chromium has no push service to subscribe with, so the button may end in
  // 'error' after the registration; the registration is what this test needs.
  await page.locator('[data-testid="enable-push"]').click();
  await waitFor(async () => (await page.locator('[data-testid="enable-push"]').getAttribute('data-state')) !== null,
    { timeout: 15000, message: 'the push button to finish' });
  const scope = await page.evaluate(async () => (await navigator.serviceWorker.ready).scope);
  assert.equal(scope, `${server.url}/demo/`);
  const [sw] = ctx.serviceWorkers().length ? ctx.serviceWorkers() : [await ctx.waitForEvent('serviceworker')];
  assert.match(sw.url(), /\/demo\/tidings-sw\.js$/);
  await waitFor(async () => sw.evaluate(async () => {
    const res = await (await caches.open('tidings-sw-state')).match('/__tidings_sw_state__');
    return res ? Boolean((await res.json()).token) : false;
  }), { timeout: 10000, message: 'the worker to hold the token' });

  // What Tidings would push for this notification (see bridges/webpush/payload.rs).
  const [n] = await publish(server, [{ title: 'Order #1001 shipped', body: 'On its way', link: `${server.url}/demo/` }]);
  const stored = (await inbox(server)).notifications.find((x) => x.id === n.id);
  const payload = {
    kind: 'notification', id: n.id, seq: n.seq, title: stored.title, body: stored.body,
    link: stored.link, type: stored.type, created_at: stored.created_at, unread: 1,
  };

  // No visible, focused tab of the app: the worker shows it (a focused tab would have shown it live).
  const blank = await ctx.newPage();
  await page.close();
  const cdp = await ctx.newCDPSession(blank);
  const registrations = [];
  cdp.on('ServiceWorker.workerRegistrationUpdated', (e) => registrations.push(...e.registrations));
  await cdp.send('ServiceWorker.enable');
  const registrationId = await waitFor(async () => {
    const r = registrations.find((x) => x.scopeURL === `${server.url}/demo/` && !x.isDeleted);
    return r ? r.registrationId : null;
  }, { timeout: 10000, message: 'the worker registration over CDP' });
  await cdp.send('ServiceWorker.deliverPushMessage', { origin: server.url, registrationId, data: JSON.stringify(payload) });

  const shown = await waitFor(async () => {
    const ns = await sw.evaluate(async () => (await self.registration.getNotifications()).map((x) => ({ title: x.title, body: x.body, tag: x.tag })));
    return ns.length ? ns : null;
  }, { timeout: 10000, message: 'a notification shown by the worker' });
  assert.deepEqual(shown, [{ title: 'Order #1001 shipped', body: 'On its way', tag: n.id }]);
  const badge = await sw.evaluate(() => self.tidings.lastBadge);
  assert.equal(badge.unread, 1, 'the badge follows the push');

  // A click marks it read through the API (and opens the link where the browser allows it).
  assert.equal((await inbox(server)).unread, 1);
  await sw.evaluate(async () => {
    const [x] = await self.registration.getNotifications();
    await self.tidings.onClick(x);
  });
  await waitFor(async () => (await inbox(server)).unread === 0, { timeout: 10000, message: 'unread 0 over REST after the click' });
  assert.equal((await sw.evaluate(() => self.tidings.lastBadge)).unread, 0, 'the badge is cleared');
  assert.deepEqual(await sw.evaluate(async () => (await self.registration.getNotifications()).length), 0, 'the notification is closed');

  // A silent badge update (mark-read elsewhere) only moves the badge.
  await cdp.send('ServiceWorker.deliverPushMessage', { origin: server.url, registrationId, data: JSON.stringify({ kind: 'badge', unread: 4, seq: 9 }) });
  await waitFor(async () => (await sw.evaluate(() => self.tidings.lastBadge)).unread === 4, { timeout: 10000, message: 'badge 4' });
  assert.equal(await sw.evaluate(async () => (await self.registration.getNotifications()).length), 0, 'no notification for a badge update');
}, { strictConsole: false });
