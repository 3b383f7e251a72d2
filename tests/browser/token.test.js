// Token expiry: the server ends the stream when the token's exp passes; the page gets a fresh token
// through getToken (the demo's getToken re-reads the fragment and localStorage) and keeps going.
import assert from 'node:assert/strict';
import { e2e, publish, waitBadge, waitItems, waitFor, connState, inbox, range, sleep, userToken } from './lib/harness.js';

// Seconds. The client asks getToken again once exp is within 5 s, and page loads can take a few
// seconds on a loaded machine, so this leaves room to connect first while keeping the test short.
const TTL = 12;

async function stateLog(page) {
  return page.evaluate(() => window.__stateLog.map((e) => `${e.state}/${e.transport}/${e.role}`));
}

e2e('token expiry (SSE): expired while idle, a new token through setToken, nothing lost', async (s) => {
  const server = await s.sqliteServer();
  const ctx = await s.context();
  const short = userToken('alice', TTL);
  const expMs = JSON.parse(Buffer.from(short.split('.')[1], 'base64url')).exp * 1000;
  const page = await s.openDemo(ctx, server, { token: short, transport: 'sse', label: 'tab1' });
  await publish(server, ['Before expiry']);
  await waitBadge([page], 1);

  // The server ends the stream at exp; with no newer token anywhere, the page cannot reconnect.
  await sleep(Math.max(0, expMs - Date.now()));
  await waitFor(async () => (await connState(page)).state !== 'live', { timeout: 15000, message: 'the page to drop its expired connection' });
  s.note(`states after expiry: ${(await stateLog(page)).slice(-4).join(' → ')}`);

  // Published while the page has no valid token: not lost. The page keeps retrying meanwhile
  // (getToken still yields the expired token), with backoff rather than in a tight loop.
  const downSince = Date.now();
  await publish(server, ['While the token was expired']);
  await sleep(4000);
  const attempts = server.requests('/v1/', downSince).length;
  s.note(`requests to /v1/ in the 4 s with only an expired token: ${attempts}`);
  assert.ok(attempts < 40, `no tight reconnect loop while the token is expired (${attempts} requests in 4 s)`);

  const t0 = Date.now();
  await page.evaluate((t) => window.tidingsDemo.setToken(t), userToken('alice', 3600));
  await waitFor(async () => (await connState(page)).state === 'live', { timeout: 20000, message: 'live again with the fresh token' });
  s.time('live again after setToken(fresh)', Date.now() - t0);
  await waitBadge([page], 2, { timeout: 10000 });

  await publish(server, ['After the new token']);
  await waitBadge([page], 3);
  await waitItems(page, range(1, 3), { read: new Set() });
  assert.match(page.url(), /#token=/);
  assert.notEqual(new URL(page.url()).hash, `#token=${short}&transport=sse`, 'the fragment holds the fresh token');
});

e2e('token expiry (WebSocket, two tabs): a fresh token in the fragment is picked up at exp, nothing lost', async (s) => {
  const server = await s.sqliteServer();
  const ctx = await s.context();
  const short = userToken('alice', TTL + 4);
  const expMs = JSON.parse(Buffer.from(short.split('.')[1], 'base64url')).exp * 1000;
  const tab1 = await s.openDemo(ctx, server, { token: short, transport: 'websocket', label: 'tab1' });
  const tab2 = await s.openDemo(ctx, server, { token: short, transport: 'websocket', label: 'tab2' });
  await publish(server, ['Before expiry']);
  await waitBadge([tab1, tab2], 1);

  // A fresh token reaches one tab by changing its fragment (hashchange); the demo saves it in
  // localStorage, where the other tab's getToken finds it too, whichever tab is the leader.
  const fresh = userToken('alice', 3600);
  await tab2.evaluate((t) => { location.hash = `token=${t}&transport=websocket`; }, fresh);
  const leader = (await connState(tab1)).role === 'leader' ? tab1 : tab2;
  s.note(`leader is ${leader.__label}; the new token went to tab2 ${((expMs - Date.now()) / 1000).toFixed(1)} s before exp`);

  // Past exp the server closes the socket (4001); the client asks getToken and reconnects.
  await sleep(Math.max(0, expMs - Date.now()) + 1500);
  await publish(server, ['Just after expiry']);
  await waitBadge([tab1, tab2], 2, { timeout: 15000 });
  await publish(server, ['A bit later']);
  await waitBadge([tab1, tab2], 3, { timeout: 10000 });
  for (const tab of [tab1, tab2]) await waitItems(tab, range(1, 3), { read: new Set() });
  const c = await connState(leader);
  assert.equal(c.text, 'live · websocket');
  s.note(`leader states: ${(await stateLog(leader)).slice(-5).join(' → ')}`);
  const log = await leader.evaluate(() => window.__stateLog);
  assert.ok(log.some((e) => e.state === 'live' && e.t >= expMs - 1000), 'the leader reconnected at expiry with the fresh token');
  assert.equal((await inbox(server)).unread, 3);
});

e2e('an invalid token: /demo shows the auth error with the server\'s detail, not "reconnecting" for ever', async (s) => {
  const server = await s.sqliteServer();
  // Signed, but not with the server's secret: every answer is a 401, the fresh token too.
  const good = userToken('alice', 3600);
  const bad = `${good.slice(0, good.lastIndexOf('.'))}.${Buffer.from('not the signature').toString('base64url')}`;
  for (const transport of ['sse', 'websocket', 'longpoll']) {
    const ctx = await s.context(); // its own storage: the demo keeps the token in localStorage
    const page = await s.openDemo(ctx, server, { token: bad, transport, label: transport, wait: false });
    await waitFor(async () => (await connState(page)).state === 'unauthorized', { timeout: 15000, message: `${transport}: the page to say unauthorized` });
    const shown = await page.evaluate(() => ({
      skeleton: document.getElementById('skeleton').hidden,
      empty: document.getElementById('empty').hidden,
      title: document.getElementById('empty-title').textContent,
      text: document.getElementById('empty-text').textContent,
      foot: document.getElementById('foot-state').textContent,
    }));
    s.note(`${transport}: ${JSON.stringify(shown)}`);
    assert.equal(shown.skeleton, true, `${transport}: no skeleton rows`);
    assert.equal(shown.empty, false, `${transport}: the reason is shown`);
    assert.equal(shown.title, 'Your session was refused');
    assert.match(shown.text, /the token is not valid/, `${transport}: the server's problem detail`);
    assert.match(shown.foot, /^Not signed in: the token is not valid/, transport);
    // And it stays so: no retry loop, no "reconnecting".
    const since = Date.now();
    await sleep(3000);
    assert.equal((await connState(page)).state, 'unauthorized', transport);
    const retries = server.requests('/v1/', since).length;
    assert.ok(retries <= 1, `${transport}: stopped retrying (${retries} requests in 3 s)`);
    // A valid token brings it back.
    await page.evaluate((t) => window.tidingsDemo.setToken(t), good);
    await s.waitConnected(page);
    await page.close();
  }
});
