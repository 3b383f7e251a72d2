// Archive and delete in the demo: one tab acts, the other tabs (and another browser) follow —
// their lists, their badges and the Archived tab — from the server's `changed` event.
import assert from 'node:assert/strict';
import { e2e, publish, waitBadge, waitItems, waitFor, inbox, range } from './lib/harness.js';

const item = (tab, seq, testid) => tab.locator(`[data-testid="item"][data-seq="${seq}"] [data-testid="${testid}"]`);

async function showTab(tab, filter) {
  await tab.locator(`.tab[data-filter="${filter}"]`).click();
}

e2e('two tabs and another browser: delete in one, the others\' lists and badges follow', async (s) => {
  const server = await s.sqliteServer();
  const ctx = await s.context();
  const tab1 = await s.openDemo(ctx, server, { label: 'tab1' });
  const tab2 = await s.openDemo(ctx, server, { label: 'tab2' });
  // A second browser: its own connection, so it hears the change from the server, not a tab.
  const other = await s.openDemo(await s.context(), server, { label: 'other browser' });
  const all = [tab1, tab2, other];
  await publish(server, ['Order #1001 shipped', 'Invoice INV-7 ready', 'Priya mentioned you', 'Deploy finished']);
  await waitBadge(all, 4);
  for (const tab of all) await waitItems(tab, range(1, 4), { settle: 0 });

  // Delete an unread one in tab 1 (whichever of the two holds the connection).
  const t0 = Date.now();
  await item(tab1, 2, 'delete').click();
  const ms = await waitBadge(all, 3, { since: t0 });
  s.time('badge 3 in all three after the delete click', Math.max(...ms));
  for (const tab of all) await waitItems(tab, [1, 3, 4], { settle: 0 });

  // Delete from tab 2 too, and from the other browser.
  await item(tab2, 4, 'delete').click();
  await item(other, 1, 'delete').click();
  await waitBadge(all, 1);
  for (const tab of all) await waitItems(tab, [3], { settle: 300 });
  const box = await inbox(server);
  assert.deepEqual(box.notifications.map((n) => n.seq), [3]);
  assert.equal(box.unread, 1);
  assert.equal(box.seq, 4);

  // A new one after the deletions: seq 5, not a reused one; everyone shows it.
  await publish(server, ['Weekly report']);
  await waitBadge(all, 2);
  for (const tab of all) await waitItems(tab, [3, 5], { settle: 0 });
});

e2e('archive in one tab: out of every inbox list, read, and in the Archived tab; unarchive brings it back', async (s) => {
  const server = await s.sqliteServer();
  const ctx = await s.context();
  const tab1 = await s.openDemo(ctx, server, { label: 'tab1' });
  const tab2 = await s.openDemo(ctx, server, { label: 'tab2' });
  const other = await s.openDemo(await s.context(), server, { label: 'other browser' });
  const all = [tab1, tab2, other];
  await publish(server, ['Order #1001 shipped', 'Invoice INV-7 ready', 'Priya mentioned you']);
  await waitBadge(all, 3);
  for (const tab of all) await waitItems(tab, range(1, 3), { settle: 0 });

  await item(tab2, 3, 'archive').click();
  await waitBadge(all, 2);
  for (const tab of all) await waitItems(tab, [1, 2], { settle: 0 });
  const box = await inbox(server);
  const three = box.notifications.find((n) => n.seq === 3);
  assert.ok(three.archived_at && three.read_at, JSON.stringify(three));

  // The Archived tab of another tab and of the other browser lists it.
  for (const tab of [tab1, other]) {
    await showTab(tab, 'archived');
    await waitItems(tab, [3], { settle: 0 });
  }
  // A freshly opened tab finds it there too (from the server, not from events it saw).
  const late = await s.openDemo(await s.context(), server, { label: 'late tab' });
  await waitItems(late, [1, 2], { settle: 0 });
  await showTab(late, 'archived');
  await waitItems(late, [3], { settle: 0 });

  // Unarchive from the Archived tab: back in every inbox, still read.
  await item(other, 3, 'unarchive').click();
  await waitFor(async () => (await inbox(server)).notifications.find((n) => n.seq === 3).archived_at === null,
    { message: 'unarchived on the server' });
  for (const tab of [tab1, other, late]) {
    await waitItems(tab, [], { settle: 0 });
    await showTab(tab, 'all');
  }
  for (const tab of [...all, late]) await waitItems(tab, [1, 2, 3], { settle: 0, read: new Set([3]) });
  await waitBadge([...all, late], 2);
});
