// The server goes away and comes back: nothing is lost and nothing shows twice.
import assert from 'node:assert/strict';
import { e2e, publish, waitBadge, waitItems, waitFor, connState, inbox, range } from './lib/harness.js';

/** The state of the connection a tab relies on: its own as leader, else the leader tab's. */
async function linkState(page) {
  const c = await connState(page);
  return c.role === 'leader' ? c.state : page.evaluate(() => window.tidingsDemo.client.leaderState);
}

/** Waits until the page has noticed that the connection is down. */
async function waitDown(page) {
  const t0 = Date.now();
  await waitFor(async () => (await linkState(page)) !== 'live',
    { timeout: 20000, message: `${page.__label} to notice the server is down` });
  return Date.now() - t0;
}

async function waitLive(page, timeout = 45000) {
  const t0 = Date.now();
  await waitFor(async () => (await linkState(page)) === 'live',
    { timeout, interval: 50, message: `${page.__label} to be live again` });
  return Date.now() - t0;
}

e2e('server restart (SQLite, same port): publish nothing while down, then 2: each once, none lost', async (s) => {
  const server = await s.sqliteServer();
  const ctx = await s.context();
  const tab1 = await s.openDemo(ctx, server, { label: 'tab1' });
  const tab2 = await s.openDemo(ctx, server, { label: 'tab2' });
  await publish(server, ['Before the restart']);
  await waitBadge([tab1, tab2], 1);

  const t0 = Date.now();
  await server.stop();
  s.time('server stop (SIGTERM, grace 2 s)', Date.now() - t0);
  s.time('tab1 noticed the outage after', await waitDown(tab1));

  await server.start();
  s.time('server ready again after', server.readyMs);
  const back = await Promise.all([waitLive(tab1), waitLive(tab2)]);
  s.time('tabs live again after the restart (client backoff)', Math.max(...back));

  const t1 = Date.now();
  await publish(server, ['After the restart 1', 'After the restart 2']);
  const [ms1, ms2] = await waitBadge([tab1, tab2], 3, { since: t1, timeout: 10000 });
  s.time('badge 3 after the restart, tab1', ms1);
  s.time('badge 3 after the restart, tab2', ms2);
  for (const tab of [tab1, tab2]) await waitItems(tab, range(1, 3), { read: new Set(), settle: 1000 });
  assert.equal((await inbox(server)).unread, 3);
});

e2e('replica restart (Postgres + Redis, two replicas): published through B while A is down, none lost', async (s) => {
  const [a, b] = await s.postgresReplicas(['a', 'b']);
  const ctx = await s.context();
  const tab1 = await s.openDemo(ctx, a, { label: 'tab1' });
  const tab2 = await s.openDemo(ctx, a, { label: 'tab2' });

  // Published through B, delivered to the page on A over Redis.
  const t0 = Date.now();
  await publish(b, ['Through B, A up 1', 'Through B, A up 2']);
  const [c1, c2] = await waitBadge([tab1, tab2], 2, { since: t0 });
  s.time('cross-replica badge 2 (publish on B, page on A), tab1', c1);
  s.time('cross-replica badge 2 (publish on B, page on A), tab2', c2);

  await a.stop();
  await waitDown(tab1);
  // While A is down (and while it restarts), B takes the publishes.
  await publish(b, ['While A is down 1', 'While A is down 2']);
  const restarting = a.start();
  await publish(b, ['While A is restarting']);
  await restarting;
  s.time('replica A ready again after', a.readyMs);
  const back = await Promise.all([waitLive(tab1), waitLive(tab2)]);
  s.time('tabs live on A again after', Math.max(...back));
  await waitBadge([tab1, tab2], 5, { timeout: 10000 });

  const t1 = Date.now();
  await publish(b, ['After A is back 1', 'After A is back 2']);
  const [ms1, ms2] = await waitBadge([tab1, tab2], 7, { since: t1, timeout: 10000 });
  s.time('badge 7 after A is back, tab1', ms1);
  s.time('badge 7 after A is back, tab2', ms2);
  for (const tab of [tab1, tab2]) await waitItems(tab, range(1, 7), { read: new Set(), settle: 1000 });
  assert.equal((await inbox(a)).unread, 7);
  assert.equal((await connState(tab1)).transport, 'sse');
}, { timeout: 180000 });
