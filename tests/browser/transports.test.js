// Forced transports (#transport=longpoll / websocket / sse): the same badge behaviour in two tabs.
import assert from 'node:assert/strict';
import { e2e, publish, waitBadge, waitItems, waitFor, connState, inbox, range } from './lib/harness.js';

for (const transport of ['longpoll', 'websocket', 'sse']) {
  e2e(`forced ${transport}: publish 3 → 3 in both tabs, mark one read in tab 1 → 2 in tab 2`, async (s) => {
    const server = await s.sqliteServer();
    const ctx = await s.context();
    const tab1 = await s.openDemo(ctx, server, { transport, label: 'tab1' });
    const tab2 = await s.openDemo(ctx, server, { transport, label: 'tab2' });

    // The leader is live over the forced transport; the follower shares it.
    for (const tab of [tab1, tab2]) {
      await waitFor(async () => {
        const c = await connState(tab);
        return c.transport === transport && (c.state === 'live' || c.state === 'follower');
      }, { timeout: 15000, message: `${tab.__label} on ${transport}` });
    }
    const states = [await connState(tab1), await connState(tab2)];
    assert.deepEqual(states.map((c) => c.role).sort(), ['follower', 'leader']);
    const leader = states.find((c) => c.role === 'leader');
    assert.equal(leader.text, `live · ${transport}`);
    s.note(`state texts: ${states.map((c) => c.text).join(' / ')}`);

    const t0 = Date.now();
    await publish(server, ['Order #2001 shipped', 'Invoice INV-8 ready', 'Sam replied to your comment']);
    const [ms1, ms2] = await waitBadge([tab1, tab2], 3, { since: t0 });
    s.time(`${transport}: badge 3 in tab1 after first POST`, ms1);
    s.time(`${transport}: badge 3 in tab2 after first POST`, ms2);
    for (const tab of [tab1, tab2]) await waitItems(tab, range(1, 3), { read: new Set(), settle: 0 });

    await tab1.locator('[data-testid="item"][data-seq="1"] .item-title').click();
    const t1 = Date.now();
    const [r1, r2] = await waitBadge([tab1, tab2], 2, { since: t1 });
    s.time(`${transport}: badge 2 in tab1 after the click returned`, r1);
    s.time(`${transport}: badge 2 in tab2 after the click returned`, r2);
    for (const tab of [tab1, tab2]) await waitItems(tab, range(1, 3), { read: new Set([1]) });
    assert.equal((await inbox(server)).unread, 2);

    // And one more afterwards still arrives over the same transport.
    await publish(server, ['One more']);
    await waitBadge([tab1, tab2], 3);
    for (const tab of [tab1, tab2]) await waitItems(tab, range(1, 4), { read: new Set([1]) });
    const leaderTab = leader === states[0] ? tab1 : tab2;
    assert.equal((await connState(leaderTab)).text, `live · ${transport}`);
  });
}
