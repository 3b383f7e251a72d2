// Web Push in a real browser: the demo's "Enable desktop notifications" registers tidings-sw.js;
// the server pushes to a real push service run by this test (lib/push-service.js: RFC 8030, the
// VAPID JWT checked, the aes128gcm body decrypted with the subscription's keys, made here as a
// browser makes them); and exactly the bytes that service decrypted are delivered to the worker
// through the DevTools protocol (ServiceWorker.deliverPushMessage, as the browser's push service
// would). The worker shows the notification, sets the badge, and a click marks it read over the
// REST API; a mark-read's silent badge update, taken from the push service too, only moves the
// badge.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { e2e, publish, inbox, markReadRest, userToken, timeoutSignal, waitFor } from './lib/harness.js';
import { request } from '../js-support/harness.js';
import { PushService } from './lib/push-service.js';

/**
 * A VAPID key pair: the private key as `tidings vapid-keys` prints it (base64url of the raw
 * 32-byte P-256 scalar) and the public key as `GET /v1/push/vapid-public-key` gives it.
 */
function vapidKeys() {
  const ecdh = crypto.createECDH('prime256v1');
  ecdh.generateKeys();
  return {
    privateKey: ecdh.getPrivateKey().toString('base64url').padStart(43, 'A'),
    publicKey: ecdh.getPublicKey().toString('base64url'),
  };
}

e2e('web push: the service worker shows a pushed notification, sets the badge, and a click marks it read', async (s, t) => {
  const vapid = vapidKeys();
  const pushService = await PushService.start(vapid.publicKey);
  t.after(() => pushService.stop());
  const server = await s.sqliteServer({
    env: {
      TIDINGS__WEBPUSH__VAPID_PRIVATE_KEY: vapid.privateKey,
      TIDINGS__WEBPUSH__SUBJECT: 'mailto:ops@example.com',
      // The push service is plain HTTP on 127.0.0.1 (see lib/push-service.js).
      TIDINGS__WEBPUSH__ALLOW_INSECURE_ENDPOINTS: 'true',
      TIDINGS__WEBPUSH__POLL_MILLIS: '100',
    },
  });
  const key = await request(server.url, 'GET', '/v1/push/vapid-public-key', userToken('alice'), undefined, { signal: timeoutSignal(10000) });
  assert.equal(key.status, 200);
  assert.equal(key.json.publicKey, vapid.publicKey, 'the server publishes the key it signs with');

  // Headless Chromium has no push service of its own, so the subscription the browser would make
  // is made here (its key pair and auth secret) and registered for alice through the REST API.
  const sub = pushService.subscribe();
  const registered = await request(server.url, 'POST', '/v1/push/subscriptions', userToken('alice'), sub.toJSON(), { signal: timeoutSignal(10000) });
  assert.equal(registered.status, 201, JSON.stringify(registered.json));

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

  // What Tidings pushes for this notification, as the push service decrypted it.
  const [n] = await publish(server, [{ title: 'Order #1001 shipped', body: 'On its way', link: `${server.url}/demo/` }]);
  const pushed = await pushService.waitFor(sub, (j) => j.kind === 'notification' && j.id === n.id, { message: `the push of ${n.id}` });
  assert.equal(pushed.json.title, 'Order #1001 shipped');
  assert.equal(pushed.json.unread, 1);

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
  await cdp.send('ServiceWorker.deliverPushMessage', { origin: server.url, registrationId, data: pushed.bytes.toString('utf8') });

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

  // The click's mark-read made the server push a silent badge update (unread 0).
  const cleared = await pushService.waitFor(sub, (j) => j.kind === 'badge' && j.unread === 0, { message: 'the badge update after the click' });
  await cdp.send('ServiceWorker.deliverPushMessage', { origin: server.url, registrationId, data: cleared.bytes.toString('utf8') });

  // A silent badge update (mark-read elsewhere) only moves the badge: two more notifications
  // (pushed, not delivered to the browser), one marked read over REST, and the badge update that
  // mark-read pushes (unread 1) is delivered.
  const [n2, n3] = await publish(server, [{ title: 'second' }, { title: 'third' }]);
  await pushService.waitFor(sub, (j) => j.kind === 'notification' && j.id === n3.id, { message: 'the push of the third' });
  await markReadRest(server, [n2.id]);
  const badgeUpdate = await pushService.waitFor(sub, (j) => j.kind === 'badge' && j.unread === 1 && j.seq >= n3.seq,
    { message: 'the badge update after the mark-read' });
  await cdp.send('ServiceWorker.deliverPushMessage', { origin: server.url, registrationId, data: badgeUpdate.bytes.toString('utf8') });
  await waitFor(async () => (await sw.evaluate(() => self.tidings.lastBadge)).unread === 1, { timeout: 10000, message: 'badge 1' });
  assert.equal(await sw.evaluate(async () => (await self.registration.getNotifications()).length), 0, 'no notification for a badge update');
  assert.deepEqual(pushService.violations, [], 'every push passed the push service\'s checks');
}, { strictConsole: false });
