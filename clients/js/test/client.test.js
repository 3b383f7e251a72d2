import nodeTest, { afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { connect, storageKeyFor } from '../tidings.js';
import { FakeServer, FakeStorage, FakeLocks, makeJwt, waitFor, sleep } from './helpers.js';

// A hang must fail the test, not stall the run.
const test = (name, fn) => nodeTest(name, { timeout: 20000 }, fn);

const EXP = Math.floor(Date.now() / 1000) + 3600;
const tok = (n, sub = 'alice') => makeJwt({ sub, exp: EXP, n });
let baseCounter = 0;
const open = new Set();
// A failed assertion must not leave clients (timers, channels) running.
afterEach(() => {
  for (const c of open) c.close();
  open.clear();
});

function harness({ server, storage, token = tok(1), ...extra } = {}) {
  const srv = server || new FakeServer({ base: `https://t${++baseCounter}.test`, tokens: [token] });
  const h = {
    server: srv,
    storage: storage || new FakeStorage(),
    token,
    got: [],
    unread: [],
    states: [],
    reads: [],
    tokenCalls: [],
  };
  h.client = connect({
    baseUrl: srv.base,
    getToken: async (ctx) => { h.tokenCalls.push(ctx.reason); return h.token; },
    fetch: srv.fetch,
    EventSource: srv.EventSource,
    WebSocket: srv.WebSocket,
    BroadcastChannel: null,
    locks: null,
    storage: h.storage,
    onNotification: (n, meta) => h.got.push({ seq: n.seq, source: meta.source }),
    onUnread: (u) => h.unread.push(u),
    onStateChange: (s) => h.states.push(s),
    onRead: (r) => h.reads.push(r),
    backoffBaseMs: 5,
    backoffCapMs: 40,
    promptMs: 2,
    openTimeoutMs: 150,
    lagCheckMs: 30,
    stableMs: 50,
    pollTimeoutSec: 1,
    ...extra,
  });
  open.add(h.client);
  h.seqs = () => h.got.map((g) => g.seq);
  return h;
}

const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);
const live = (c) => waitFor(() => c.state === 'live', { what: 'live' });

test('first connect loads the latest page, sets the cursor to it, then streams after it', async () => {
  const server = new FakeServer({ base: 'https://first.test', tokens: [tok(1)] });
  server.publishMany(60);
  server.items[59].read_at = null;
  const h = harness({ server });
  await live(h.client);
  assert.equal(h.client.transport, 'sse');
  const list = server.requests.find((r) => r.path === '/v1/notifications');
  assert.deepEqual(list.query, { limit: '50' });
  assert.deepEqual(h.seqs(), range(11, 60), 'the newest 50, oldest first');
  assert.ok(h.got.every((g) => g.source === 'history'));
  assert.equal(h.client.cursor, 60);
  assert.equal(h.storage.getItem(storageKeyFor('https://first.test', 'alice')), '60');
  const es = server.eventSources[0];
  assert.equal(es.params.get('after'), '60');
  assert.equal(es.params.get('access_token'), h.token);
  assert.equal(server.requests.find((r) => r.path === '/v1/notifications').auth, `Bearer ${h.token}`);
  assert.equal(h.unread.at(-1), 60);

  server.publish();
  await waitFor(() => h.client.cursor === 61);
  assert.deepEqual(h.got.at(-1), { seq: 61, source: 'live' });
  assert.equal(h.storage.getItem(storageKeyFor('https://first.test', 'alice')), '61');
  await waitFor(() => h.unread.at(-1) === 61);
  h.client.close();
  assert.equal(h.client.state, 'closed');
  assert.deepEqual(h.states.slice(0, 2), ['connecting', 'live']);
});

test('history "all" replays from 0; "none" starts at the latest seq', async () => {
  const server = new FakeServer({ base: 'https://hist.test', tokens: [tok(1)] });
  server.publishMany(3);
  const all = harness({ server, history: 'all' });
  await waitFor(() => all.got.length === 3);
  assert.equal(server.eventSources[0].params.get('after'), '0');
  all.client.close();
  const none = harness({ server, history: 'none' });
  await live(none.client);
  assert.equal(server.eventSources[1].params.get('after'), '3');
  assert.deepEqual(none.got, []);
  none.client.close();
});

test('a reload resumes from the stored cursor and misses nothing', async () => {
  const h = harness();
  await live(h.client);
  h.server.publish();
  h.server.publish();
  await waitFor(() => h.client.cursor === 2);
  h.client.close();
  h.server.publishMany(3); // while the page is closed
  const h2 = harness({ server: h.server, storage: h.storage });
  await waitFor(() => h2.got.length === 3);
  assert.deepEqual(h2.got, [3, 4, 5].map((seq) => ({ seq, source: 'live' })));
  assert.equal(h.server.eventSources.at(-1).params.get('after'), '2');
  assert.equal(h.server.requests.filter((r) => r.path === '/v1/notifications').length, 1, 'no second history load');
  h2.client.close();
});

test('a cursor below the history floor: onTruncated once, then the kept ones, no gap chased', async () => {
  for (const transport of ['sse', 'websocket']) {
    const h = harness({ transport });
    await live(h.client);
    h.server.publishMany(2);
    h.server.publish();
    await waitFor(() => h.client.cursor === 3);
    h.client.close();
    h.server.publishMany(5); // 4..8 while the page is closed
    h.server.prune(5); // retention removed 1..5, so 4 and 5 were never seen
    const truncated = [];
    const before = h.server.requests.length;
    const h2 = harness({ server: h.server, storage: h.storage, transport, onTruncated: (t) => truncated.push(t) });
    await waitFor(() => h2.got.length === 3, { what: `${transport}: the kept ones` });
    assert.deepEqual(h2.seqs(), [6, 7, 8], transport);
    assert.deepEqual(truncated, [{ floor: 5 }], transport);
    assert.equal(h2.client.cursor, 8);
    const listed = h.server.requests.slice(before).filter((r) => r.path === '/v1/notifications' && r.query.after !== undefined);
    assert.deepEqual(listed, [], `${transport}: no catch-up for the jump over the floor`);
    h2.client.close();
  }
});

test('a catch-up page below the floor reports it and moves on', async () => {
  const truncated = [];
  const h = harness({ onTruncated: (t) => truncated.push(t) });
  await live(h.client);
  h.server.publish();
  await waitFor(() => h.client.cursor === 1);
  h.server.publishMany(4); // 2..5, their live frames lost
  h.server.prune(3);
  h.server.publish(); // 6 arrives live: a gap, fetched with ?after=1
  await waitFor(() => h.client.cursor === 6, { what: 'caught up' });
  assert.deepEqual(h.seqs(), [1, 4, 5, 6]);
  assert.deepEqual(truncated, [{ floor: 3 }]);
});

test('duplicates are dropped; a gap is fetched via ?after= and delivered in order', async () => {
  const h = harness();
  await live(h.client);
  const es = h.server.eventSources[0];
  h.server.publish();
  await waitFor(() => h.client.cursor === 1);
  h.server.publish({}, { live: false }); // seq 2 is lost on the way
  h.server.publish(); // seq 3 arrives: N+2 after N
  await waitFor(() => h.client.cursor === 3, { what: 'gap filled' });
  assert.deepEqual(h.seqs(), [1, 2, 3]);
  assert.deepEqual(h.got[1], { seq: 2, source: 'catchup' });
  const paging = h.server.requests.filter((r) => r.path === '/v1/notifications' && r.query.after !== undefined);
  assert.deepEqual(paging.map((r) => r.query), [{ after: '1', limit: '200' }]);
  // The stream repeats itself: nothing is delivered twice.
  for (const n of h.server.items) es.emit('notification', n, n.seq);
  h.server.publish();
  await waitFor(() => h.client.cursor === 4);
  assert.deepEqual(h.seqs(), [1, 2, 3, 4]);
  h.client.close();
});

test('a lost tail is noticed from the unread seq and fetched', async () => {
  const h = harness();
  await live(h.client);
  h.server.publish({}, { live: false });
  h.server.openStreams()[0].emit('unread', { unread: 1, seq: 1 });
  await waitFor(() => h.client.cursor === 1, { what: 'lag check' });
  assert.deepEqual(h.got, [{ seq: 1, source: 'catchup' }]);
  h.client.close();
});

test('a deleted seq is not fetched again and again: a short page covers up to the latest seq', async () => {
  const h = harness();
  await live(h.client);
  h.server.publish();
  await waitFor(() => h.client.cursor === 1);
  // 2 and 3 are published and deleted before this client saw them (the tail is a hole).
  h.server.publish({}, { live: false });
  h.server.publish({}, { live: false });
  h.server.remove([2, 3], { live: false });
  h.server.openStreams()[0].emit('unread', { unread: 1, seq: 3 });
  await waitFor(() => h.client.cursor === 3, { what: 'the cursor passes the deleted tail' });
  await sleep(150);
  const paging = h.server.requests.filter((r) => r.path === '/v1/notifications' && r.query.after !== undefined);
  assert.deepEqual(paging.map((r) => r.query.after), ['1'], 'one page, no retries');
  // A live notification after a deleted one is delivered after one page, without a loop.
  h.server.publish({}, { live: false });
  h.server.remove([4], { live: false });
  h.server.publish();
  await waitFor(() => h.client.cursor === 5, { what: 'past the hole' });
  assert.deepEqual(h.seqs(), [1, 5]);
  await sleep(150);
  const after = h.server.requests.filter((r) => r.path === '/v1/notifications' && r.query.after !== undefined);
  assert.deepEqual(after.map((r) => r.query.after), ['1', '3']);
  h.client.close();
});

test('changed events reach onChange; a deleted notification arriving late is not shown', async () => {
  const changes = [];
  const h = harness({ onChange: (c) => changes.push(c) });
  await live(h.client);
  h.server.publish();
  h.server.publish();
  await waitFor(() => h.client.cursor === 2);
  h.server.remove([1]);
  await waitFor(() => changes.length === 1, { what: 'onChange' });
  assert.deepEqual(changes[0], { change: 'deleted', ids: ['00000000-0000-4000-8000-000000000001'], seqs: [1] });
  assert.equal(h.client.unread, 1);
  // Deleted before it was delivered (a late live frame): the cursor moves, nothing is shown.
  const es = h.server.openStreams()[0];
  h.server.publish({}, { live: false });
  h.server.remove([3]);
  await waitFor(() => changes.length === 2, { what: 'the second onChange' });
  const late = { id: 'x', seq: 3, type: 't', title: 'late' };
  es.emit('notification', late, 3);
  await waitFor(() => h.client.cursor === 3);
  assert.deepEqual(h.seqs(), [1, 2]);
  h.client.close();
});

test('resync pages through ?after= until caught up, in order, once', async () => {
  const storage = new FakeStorage();
  const server = new FakeServer({ base: 'https://resync.test', tokens: [tok(1)] });
  storage.setItem(storageKeyFor(server.base, 'alice'), '0');
  server.publishMany(650);
  const h = harness({ server, storage });
  await waitFor(() => h.client.cursor === 650, { what: 'caught up' });
  assert.deepEqual(h.seqs(), range(1, 650));
  const afters = server.requests.filter((r) => r.path === '/v1/notifications').map((r) => r.query.after);
  assert.deepEqual(afters, ['0', '200', '400', '600']);
  server.publish();
  await waitFor(() => h.client.cursor === 651);
  h.client.close();
});

test('SSE token-expired: getToken() is called again, reconnect with the new token and the cursor', async () => {
  const h = harness();
  await live(h.client);
  h.server.publish();
  await waitFor(() => h.client.cursor === 1);
  const t2 = tok(2);
  h.server.valid.add(t2);
  h.token = t2;
  h.server.openStreams()[0].emit('token-expired', '');
  await waitFor(() => h.server.openStreams().length === 1 && h.server.eventSources.length === 2 && h.client.state === 'live');
  const es2 = h.server.eventSources[1];
  assert.equal(es2.params.get('access_token'), t2);
  assert.equal(es2.params.get('after'), '1');
  assert.equal(h.tokenCalls.at(-1), 'expired');
  h.server.publish();
  await waitFor(() => h.client.cursor === 2);
  assert.deepEqual(h.seqs(), [1, 2]);
  h.client.close();
});

test('a stream rejected for its token (401) gets a fresh token via the REST probe', async () => {
  const h = harness();
  await live(h.client);
  const t2 = tok(2);
  h.server.valid.delete(h.token);
  h.server.valid.add(t2);
  h.token = t2;
  h.server.openStreams()[0].fail(); // stream dropped; the old token no longer opens one
  await waitFor(() => h.server.eventSources.at(-1).params.get('access_token') === t2 && h.client.state === 'live');
  assert.ok(h.tokenCalls.includes('unauthorized'));
  h.client.close();
});

test('REST 401: getToken() again and retry once', async () => {
  const h = harness();
  await live(h.client);
  const n = h.server.publish();
  await waitFor(() => h.client.cursor === 1);
  const t2 = tok(2);
  h.server.valid.delete(h.token);
  h.server.valid.add(t2);
  h.token = t2;
  const res = await h.client.markRead([n.id]);
  assert.deepEqual(res, { unread: 0, seq: 1 });
  const posts = h.server.requests.filter((r) => r.method === 'POST');
  assert.deepEqual(posts.map((p) => p.auth), [`Bearer ${tok(1)}`, `Bearer ${t2}`]);
  assert.equal(h.tokenCalls.at(-1), 'unauthorized');
  h.client.close();
});

test('a token refused again after a fresh one: onAuthError with the detail, state unauthorized, retries stop', async () => {
  for (const [transport, stored] of [['sse', '0'], ['websocket', '0'], ['longpoll', '0'], ['sse', null]]) {
    const what = `${transport}${stored === null ? ', first connect' : ''}`;
    const server = new FakeServer({ base: `https://refused-${transport}-${stored}.test`, tokens: [] });
    const storage = new FakeStorage();
    if (stored !== null) storage.setItem(storageKeyFor(server.base, 'alice'), stored);
    const errors = [];
    const infos = [];
    const h = harness({
      server,
      storage,
      transport,
      onAuthError: (e) => errors.push(e),
      onStateChange: (s, info) => { h.states.push(s); infos.push(info); },
    });
    await waitFor(() => h.client.state === 'unauthorized', { what: `${what}: unauthorized` });
    assert.deepEqual(errors, [{ status: 401, detail: 'The token is invalid.' }], what);
    assert.equal(infos.at(-1).detail, 'The token is invalid.', what);
    assert.ok(h.tokenCalls.includes('unauthorized'), `${what}: a fresh token was asked for first`);
    assert.ok(!h.states.includes('live'), what);
    const seen = server.requests.length + server.eventSources.length + server.sockets.length;
    await sleep(300); // many backoff periods (5..40 ms)
    assert.equal(server.requests.length + server.eventSources.length + server.sockets.length, seen, `${what}: no more retries`);
    assert.equal(h.client.state, 'unauthorized', what);
    // Once the app has a valid session again, reconnect() starts over.
    server.valid.add(h.token);
    h.client.reconnect();
    await live(h.client);
    h.client.close();
  }
});

test('markRead and markAllRead go over REST and update unread', async () => {
  const h = harness();
  await live(h.client);
  const a = h.server.publish();
  h.server.publish();
  h.server.publish({}, { live: false }); // committed, not yet delivered: must stay unread
  await waitFor(() => h.client.cursor === 2);
  assert.deepEqual(await h.client.markRead(a.id), { unread: 2, seq: 3 });
  assert.deepEqual(h.server.requests.filter((r) => r.method === 'POST')[0].body, { ids: [a.id] });
  assert.deepEqual(h.reads[0], { ids: [a.id] });
  await h.client.markAllRead();
  const posts = h.server.requests.filter((r) => r.method === 'POST');
  assert.deepEqual(posts[1].body, { up_to: 2 }, 'up_to is the cursor');
  assert.equal(h.client.unread, 1);
  assert.equal(h.unread.at(-1), 1);
  assert.deepEqual(await h.client.markRead([]), { unread: 1, seq: 3 }, 'nothing to send');
  h.client.close();
});

test('auto uses long-poll when EventSource is missing', async () => {
  const h = harness({ EventSource: undefined });
  await live(h.client);
  assert.equal(h.client.transport, 'longpoll');
  h.server.publish();
  await waitFor(() => h.client.cursor === 1);
  assert.deepEqual(h.got, [{ seq: 1, source: 'live' }]);
  const poll = h.server.requests.find((r) => r.path === '/v1/notifications/poll');
  assert.equal(poll.query.after, '0');
  assert.equal(poll.query.timeout, '1');
  assert.equal(poll.query.unread, '0');
  await h.client.markAllRead();
  await waitFor(() => h.client.unread === 0);
  h.server.publish();
  h.server.publish();
  await waitFor(() => h.client.cursor === 3);
  assert.deepEqual(h.seqs(), [1, 2, 3]);
  h.client.close();
  assert.equal(h.server.pollWaiters.size, 0, 'the pending poll is aborted');
});

test('auto falls back to long-poll when the stream never opens (buffering proxy)', async () => {
  const server = new FakeServer({ base: 'https://buffer.test', tokens: [tok(1)] });
  server.sseMode = 'buffering';
  const h = harness({ server, openTimeoutMs: 40, sseStrikes: 2 });
  await waitFor(() => h.client.transport === 'longpoll' && h.client.state === 'live', { what: 'fallback' });
  assert.equal(server.eventSources.length, 2);
  server.publish();
  await waitFor(() => h.client.cursor === 1);
  h.client.close();
});

test('an outage (REST down too) does not trigger the fallback', async () => {
  const server = new FakeServer({ base: 'https://outage.test', tokens: [tok(1)] });
  const h = harness({ server, openTimeoutMs: 40, sseStrikes: 2 });
  await live(h.client);
  server.sseMode = 'down';
  server.restDown = true;
  server.openStreams()[0].fail();
  await waitFor(() => server.eventSources.length >= 5, { what: 'retries' });
  assert.equal(h.client.state === 'reconnecting' || h.client.state === 'connecting', true);
  server.sseMode = 'normal';
  server.restDown = false;
  await live(h.client);
  assert.equal(h.client.transport, 'sse');
  h.client.close();
});

test('explicit transport "sse" never falls back while EventSource exists', async () => {
  const server = new FakeServer({ base: 'https://explicit.test', tokens: [tok(1)] });
  server.sseMode = 'buffering';
  const h = harness({ server, transport: 'sse', openTimeoutMs: 20, sseStrikes: 1 });
  await waitFor(() => server.eventSources.length >= 4);
  assert.equal(h.client.transport, 'sse');
  assert.equal(server.requests.some((r) => r.path === '/v1/notifications/poll'), false);
  h.client.close();
});

test('WebSocket: frames, 4001 refreshes the token, 1012 reconnects promptly, 4008 resumes from the cursor', async () => {
  // With this backoff a non-prompt reconnect would wait about 2 s.
  const h = harness({ transport: 'websocket', backoffBaseMs: 2000, backoffCapMs: 30000, random: () => 0.999 });
  await live(h.client);
  assert.equal(h.client.transport, 'websocket');
  const ws1 = h.server.sockets[0];
  assert.match(ws1.url, /^wss:\/\/t\d+\.test\/v1\/ws\?after=0&access_token=/);
  h.server.publish();
  await waitFor(() => h.client.cursor === 1);

  const t2 = tok(2);
  h.server.valid.add(t2);
  h.token = t2;
  await sleep(60); // stable: attempts reset
  ws1.serverClose(4001);
  await waitFor(() => h.server.openSockets().length === 1 && h.server.sockets.length === 2);
  assert.equal(h.server.sockets[1].params.get('access_token'), t2);
  assert.equal(h.server.sockets[1].params.get('after'), '1');
  assert.equal(h.tokenCalls.at(-1), 'expired');

  await sleep(60); // a stable connection resets the backoff
  const t0 = Date.now();
  h.server.sockets[1].serverClose(1012);
  await waitFor(() => h.server.openSockets().length === 1 && h.server.sockets.length === 3);
  assert.ok(Date.now() - t0 < 1000, 'prompt');

  await sleep(60);
  h.server.publish({}, { live: false });
  h.server.sockets[2].serverClose(4008);
  await waitFor(() => h.client.cursor === 2);
  assert.equal(h.server.sockets[3].params.get('after'), '1');
  assert.deepEqual(h.seqs(), [1, 2]);
  h.client.close();
});

test('reconnects with backoff after errors and resets after a healthy connection', async () => {
  const server = new FakeServer({ base: 'https://backoff.test', tokens: [tok(1)] });
  const h = harness({ server, backoffBaseMs: 20, backoffCapMs: 80, random: () => 0.999 });
  await live(h.client);
  server.sseMode = 'down';
  server.restDown = true;
  const times = [];
  const origPush = server.eventSources.push.bind(server.eventSources);
  server.eventSources.push = (es) => { times.push(Date.now()); return origPush(es); };
  server.openStreams()[0].fail();
  await waitFor(() => times.length >= 5, { what: 'five retries' });
  const gaps = times.slice(1).map((t, i) => t - times[i]);
  assert.ok(gaps.at(-1) >= 60, `capped delays reached: ${gaps}`);
  // Timers never fire early, so the lower bound is exact; the upper one allows for a loaded machine.
  assert.ok(gaps.every((g) => g < 80 + 250), `never far above the cap: ${gaps}`);
  h.client.close();
});

test('one connection per browser: follower tabs get notifications; a new leader takes over from the shared cursor', async () => {
  const server = new FakeServer({ base: 'https://tabs.test', tokens: [tok(1)] });
  const storage = new FakeStorage();
  const locks = new FakeLocks();
  const shared = { BroadcastChannel, locks };
  const a = harness({ server, storage, ...shared });
  await live(a.client);
  assert.equal(a.client.role, 'leader');
  const b = harness({ server, storage, ...shared });
  await waitFor(() => b.client.state === 'follower');
  await waitFor(() => b.client.transport === 'sse' && b.client.leaderState === 'live', { what: 'leader state reaches follower' });
  assert.equal(server.eventSources.length, 1, 'one live connection');

  server.publish();
  server.publish();
  await waitFor(() => b.client.cursor === 2 && a.client.cursor === 2);
  assert.deepEqual(b.seqs(), [1, 2]);
  await waitFor(() => b.unread.at(-1) === 2);

  // A follower's read reaches the leader tab too.
  await b.client.markRead(server.items[0].id);
  await waitFor(() => a.reads.length === 1 && a.client.unread === 1);

  a.client.close();
  server.publish({}, { live: false }); // commits during the hand-over, with no stream open
  await waitFor(() => b.client.role === 'leader' && b.client.state === 'live', { what: 'takeover' });
  assert.equal(server.openStreams().length, 1);
  assert.equal(server.eventSources.at(-1).params.get('after'), '2');
  await waitFor(() => b.client.cursor === 3);
  assert.deepEqual(b.seqs(), [1, 2, 3], 'nothing lost, nothing twice');
  b.client.close();
});

test('heartbeat election (no Web Locks) keeps one leader and hands over', async () => {
  const server = new FakeServer({ base: 'https://hb.test', tokens: [tok(1)] });
  const storage = new FakeStorage();
  const opts = { server, storage, BroadcastChannel, locks: null, heartbeatMs: 20, leaderTimeoutMs: 150, leaderClaimMs: 60 };
  const a = harness(opts);
  await live(a.client);
  const b = harness(opts);
  const c = harness(opts);
  await waitFor(() => b.client.state === 'follower' && c.client.state === 'follower');
  await sleep(150);
  assert.equal(a.client.role, 'leader', 'the first tab keeps the lead');
  assert.equal(server.openStreams().length, 1);
  server.publish();
  await waitFor(() => b.client.cursor === 1 && c.client.cursor === 1);
  a.client.close(); // says bye
  await waitFor(() => [b, c].filter((x) => x.client.role === 'leader').length === 1 && server.openStreams().length === 1);
  const leader = b.client.role === 'leader' ? b : c;
  const follower = leader === b ? c : b;
  server.publish();
  await waitFor(() => follower.client.cursor === 2 && leader.client.cursor === 2);
  await sleep(200);
  assert.equal(server.openStreams().length, 1, 'still one connection');
  b.client.close();
  c.client.close();
});

test('long-poll answers that come back at once with nothing do not busy-loop', async () => {
  const server = new FakeServer({ base: 'https://storm.test', tokens: [tok(1)] });
  server.instant204 = true;
  const h = harness({ server, transport: 'longpoll' });
  await live(h.client);
  await sleep(1000);
  const polls = server.requests.filter((r) => r.path === '/v1/notifications/poll').length;
  assert.ok(polls <= 6, `${polls} polls in a second`);
  h.client.close();
});

test('a server whose seq went backwards (history reset) resets the cursor', async () => {
  const storage = new FakeStorage();
  const server = new FakeServer({ base: 'https://reset.test', tokens: [tok(1)] });
  server.noAhead = true; // a server from before the `ahead` signal: seen from `unread`
  storage.setItem(storageKeyFor(server.base, 'alice'), '100');
  server.publishMany(3);
  const h = harness({ server, storage });
  await waitFor(() => server.eventSources.length === 2 && h.client.state === 'live');
  assert.equal(server.eventSources[1].params.get('after'), '3');
  assert.equal(storage.getItem(storageKeyFor(server.base, 'alice')), '3');
  server.publish();
  await waitFor(() => h.client.cursor === 4);
  assert.deepEqual(h.seqs(), [4]);
  h.client.close();
});

test('a cursor above the server\'s latest seq: onAhead, the cursor moves down, new ones arrive', async () => {
  for (const transport of ['sse', 'websocket', 'longpoll']) {
    const storage = new FakeStorage();
    const server = new FakeServer({ base: `https://ahead-${transport}.test`, tokens: [tok(1)] });
    storage.setItem(storageKeyFor(server.base, 'alice'), '10');
    server.publishMany(2);
    const ahead = [];
    const h = harness({ server, storage, transport, onAhead: (a) => ahead.push(a) });
    await waitFor(() => h.client.cursor === 2, { what: `${transport}: the cursor down to 2` });
    assert.deepEqual(ahead, [{ seq: 2 }], transport);
    assert.equal(storage.getItem(storageKeyFor(server.base, 'alice')), '2', transport);
    server.publish();
    await waitFor(() => h.client.cursor === 3, { what: `${transport}: 3 delivered` });
    assert.deepEqual(h.seqs(), [3], transport);
    if (transport !== 'longpoll') {
      const opened = transport === 'sse' ? server.eventSources : server.sockets;
      assert.equal(opened.length, 1, `${transport}: followed without reconnecting`);
    }
    h.client.close();
  }
});

test('close() stops everything: no timers, no requests afterwards', async () => {
  const h = harness();
  await live(h.client);
  h.client.close();
  const n = h.server.requests.length;
  const es = h.server.eventSources.length;
  await sleep(200);
  assert.equal(h.server.requests.length, n);
  assert.equal(h.server.eventSources.length, es);
  assert.equal(h.server.openStreams().length, 0);
  assert.equal(h.states.at(-1), 'closed');
});

test('preferences: read with their version, a stale write is a 412, every change reaches onPreferences', async () => {
  const heard = [];
  const h = harness({ onPreferences: (p) => heard.push(p) });
  await live(h.client);
  assert.deepEqual(await h.client.getPreferences(), { preferences: { rules: [], quiet_hours: null }, version: 0 });
  const doc = { rules: [{ types: ['marketing.*'], channels: ['all'], action: 'mute' }], quiet_hours: null };
  const set = await h.client.setPreferences(doc, { version: 0 });
  assert.deepEqual(set, { preferences: doc, version: 1 });
  const put = h.server.requests.find((r) => r.method === 'PUT');
  assert.deepEqual(put.body, doc);
  await waitFor(() => heard.length === 1, { what: 'onPreferences' });
  assert.deepEqual(heard[0], { preferences: doc, version: 1 });
  await assert.rejects(h.client.setPreferences(doc, { version: 0 }), (e) => e.status === 412);
  // Without a version, the write is unconditional.
  assert.equal((await h.client.setPreferences(doc)).version, 2);
  h.client.close();
});
