// The demo's settings card (issue 25) in two tabs of one browser: a mute set in tab 1 shows in
// tab 2 at once (the `preferences` event, relayed by the leader tab), quiet hours set in tab 2
// show in tab 1, and a muted type never reaches either tab's bell while other types do.
import assert from 'node:assert/strict';
import { e2e, publish, waitBadge, waitFor, inbox } from './lib/harness.js';

const muted = (tab) => tab.evaluate(() => [...document.querySelectorAll('[data-testid="muted"] li')].map((li) => li.dataset.type));
const prefsState = (tab) => tab.evaluate(() => {
  const e = document.querySelector('[data-testid="prefs-state"]');
  return { text: e.textContent, version: e.dataset.version };
});

e2e('two tabs: a mute and quiet hours set in one tab show in the other; the muted type never arrives', async (s) => {
  const server = await s.sqliteServer();
  const ctx = await s.context();
  const tab1 = await s.openDemo(ctx, server, { label: 'tab1' });
  const tab2 = await s.openDemo(ctx, server, { label: 'tab2' });
  await waitFor(async () => (await prefsState(tab2)).version === '0', { message: 'tab2 loaded the settings' });

  await tab1.fill('[data-testid="mute-type"]', 'marketing.*');
  await tab1.click('[data-testid="mute-add"]');
  for (const tab of [tab1, tab2]) {
    await waitFor(async () => JSON.stringify(await muted(tab)) === '["marketing.*"]', { timeout: 10000, message: `${tab.__label} shows the mute` });
  }

  await tab2.fill('[data-testid="qh-start"]', '22:00');
  await tab2.fill('[data-testid="qh-end"]', '07:00');
  await tab2.fill('[data-testid="qh-tz"]', 'Europe/Berlin');
  await tab2.click('[data-testid="qh-save"]');
  await waitFor(async () => (await prefsState(tab1)).text.includes('Europe/Berlin'), { timeout: 10000, message: 'tab1 shows the quiet hours' });
  assert.equal((await prefsState(tab1)).version, '2');
  assert.deepEqual(await muted(tab1), ['marketing.*'], 'the quiet hours kept the mute');

  await publish(server, [{ type: 'marketing.sale', title: 'Sale!' }, { type: 'order.shipped', title: 'Shipped' }]);
  await waitBadge([tab1, tab2], 1);
  const page = await inbox(server);
  assert.deepEqual(page.notifications.map((n) => n.type), ['order.shipped']);
});
