// One connection per browser: when the tab that holds it goes away, another tab takes over and
// nothing published before, during or after the hand-over is lost.
import assert from 'node:assert/strict';
import { e2e, publish, waitBadge, waitItems, waitFor, connState, inbox, range } from './lib/harness.js';

async function roles(pages) {
  return Promise.all(pages.map(async (p) => ({ page: p, ...(await connState(p)) })));
}

async function waitTakeover(s, page, transport) {
  const t0 = Date.now();
  await waitFor(async () => {
    const c = await connState(page);
    return c.role === 'leader' && c.state === 'live' && c.transport === transport;
  }, { timeout: 20000, message: `${page.__label} to take over the connection` });
  return Date.now() - t0;
}

for (const transport of ['sse', 'websocket']) {
  e2e(`leader tab closed (${transport}): the other tab takes over, nothing lost`, async (s) => {
    // The server notices a closed SSE client only when a write to it fails (a ping: up to two
    // heartbeats, 30 s by default); a 1 s heartbeat lets the test check "one connection" after.
    const server = await s.sqliteServer({ env: { TIDINGS__SERVER__HEARTBEAT_SECONDS: '1' } });
    const ctx = await s.context();
    const tab1 = await s.openDemo(ctx, server, { transport, label: 'tab1' });
    const tab2 = await s.openDemo(ctx, server, { transport, label: 'tab2' });

    await publish(server, ['Before the close 1', 'Before the close 2']);
    await waitBadge([tab1, tab2], 2);

    const r = await roles([tab1, tab2]);
    const leader = r.find((x) => x.role === 'leader');
    const follower = r.find((x) => x.role === 'follower');
    assert.ok(leader && follower, `one leader and one follower: ${JSON.stringify(r.map((x) => [x.page.__label, x.role, x.state]))}`);
    s.note(`leader: ${leader.page.__label}, follower: ${follower.page.__label}`);
    const metricName = `{transport="${transport === 'websocket' ? 'websocket' : 'sse'}"}`;
    await waitFor(async () => (await server.metric('tidings_connections', metricName)) === 1,
      { timeout: 5000, message: 'one connection for two tabs' });

    // Close the leader and publish at once: these commit during the hand-over.
    const t0 = Date.now();
    await Promise.all([leader.page.close(), publish(server, ['During the hand-over 1'])]);
    await publish(server, ['During the hand-over 2']);
    await waitTakeover(s, follower.page, transport);
    s.time('close → the other tab live as leader', Date.now() - t0);

    await publish(server, ['After the close']);
    const [ms] = await waitBadge([follower.page], 5, { since: t0, timeout: 10000 });
    s.time('close → badge 5 in the remaining tab', ms);
    await waitItems(follower.page, range(1, 5), { read: new Set(), settle: 1000 });
    const t1 = Date.now();
    await waitFor(async () => (await server.metric('tidings_connections', metricName)) === 1,
      { timeout: 15000, interval: 100, message: 'exactly one connection after the take-over' });
    s.time('old connection gone from the server (heartbeat 1 s) after', Date.now() - t1);
  });
}

e2e('leader tab crashes (three tabs): a follower takes over, then again when the new leader closes', async (s) => {
  const server = await s.sqliteServer();
  const ctx = await s.context();
  const tabs = [];
  for (const label of ['tab1', 'tab2', 'tab3']) tabs.push(await s.openDemo(ctx, server, { label }));
  await publish(server, ['Before 1']);
  await waitBadge(tabs, 1);

  // A crashed renderer sends no goodbye: the Web Lock it held is released by the browser.
  let r = await roles(tabs);
  const first = r.find((x) => x.role === 'leader').page;
  s.note(`first leader: ${first.__label}`);
  const cdp = await ctx.newCDPSession(first);
  const crashed = new Promise((res) => first.once('crash', res));
  cdp.send('Page.crash').catch(() => {});
  await crashed;
  // This page crash is the point of the test, not a page error.
  s.pageErrors = s.pageErrors.filter((e) => !(e.tab === first.__label && e.error === 'page crashed'));
  const t0 = Date.now();
  await publish(server, ['After the crash']);
  let rest = tabs.filter((p) => p !== first);
  await waitFor(async () => (await roles(rest)).some((x) => x.role === 'leader' && x.state === 'live'),
    { timeout: 20000, message: 'a new leader after the crash' });
  s.time('crash → new leader live', Date.now() - t0);
  await waitBadge(rest, 2, { timeout: 10000 });

  r = await roles(rest);
  const second = r.find((x) => x.role === 'leader').page;
  s.note(`second leader: ${second.__label}`);
  await second.close();
  await publish(server, ['After the second close']);
  rest = rest.filter((p) => p !== second);
  await waitTakeover(s, rest[0], 'sse');
  await waitBadge(rest, 3, { timeout: 10000 });
  await waitItems(rest[0], range(1, 3), { read: new Set(), settle: 1000 });
  assert.equal((await inbox(server)).unread, 3);
  await first.close().catch(() => {});
});
