import test from 'node:test';
import assert from 'node:assert/strict';
import {
  CursorStore,
  decodeJwtPayload,
  storageKeyFor,
  channelNameFor,
  normalizeBaseUrl,
  buildUrl,
  toWebSocketUrl,
  toSeq,
  TokenSource,
} from '../tidings.js';
import { FakeStorage, makeJwt } from './helpers.js';

test('the cursor persists through a storage shared by a "reload"', () => {
  const storage = new FakeStorage();
  const key = storageKeyFor('https://api.example', 'alice');
  const a = new CursorStore(storage, key);
  assert.equal(a.get(), null, 'no cursor on first connect');
  a.set(17);
  assert.equal(storage.getItem(key), '17');
  const b = new CursorStore(storage, key); // a new page load
  assert.equal(b.get(), 17);
  b.set(18);
  assert.equal(a.get(), 18, 'another tab sees the same cursor');
  b.clear();
  assert.equal(a.get(), null);
});

test('the key is per server and per user', () => {
  const storage = new FakeStorage();
  const alice = new CursorStore(storage, storageKeyFor('https://a.example', 'alice'));
  const bob = new CursorStore(storage, storageKeyFor('https://a.example', 'bob'));
  const other = new CursorStore(storage, storageKeyFor('https://b.example', 'alice'));
  alice.set(5);
  bob.set(9);
  assert.equal(alice.get(), 5);
  assert.equal(bob.get(), 9);
  assert.equal(other.get(), null);
  assert.notEqual(channelNameFor('https://a.example', 'alice'), channelNameFor('https://a.example', 'bob'));
});

test('corrupt stored values read as "no cursor"', () => {
  const storage = new FakeStorage();
  const s = new CursorStore(storage, 'k');
  for (const bad of ['', 'abc', '-3', '1.5', '1e3', '99999999999999999999', 'null']) {
    storage.setItem('k', bad);
    assert.equal(s.get(), null, `value ${JSON.stringify(bad)}`);
  }
  storage.setItem('k', ' 12 ');
  assert.equal(s.get(), 12);
});

test('invalid cursors are never written', () => {
  const storage = new FakeStorage();
  const s = new CursorStore(storage, 'k');
  s.set(-1);
  s.set(NaN);
  s.set('x');
  assert.equal(storage.getItem('k'), null);
  s.set(0);
  assert.equal(storage.getItem('k'), '0', '0 (replay all) is a valid cursor');
});

test('a throwing storage (private mode, quota) falls back to memory', () => {
  const storage = {
    getItem() { throw new Error('SecurityError'); },
    setItem() { throw new Error('QuotaExceededError'); },
    removeItem() { throw new Error('SecurityError'); },
  };
  const s = new CursorStore(storage, 'k');
  assert.equal(s.get(), null);
  s.set(4);
  assert.equal(s.get(), 4);
  s.clear();
  assert.equal(s.get(), null);
  const none = new CursorStore(null, 'k');
  none.set(3);
  assert.equal(none.get(), 3);
});

test('toSeq accepts only non-negative safe integers', () => {
  assert.equal(toSeq(0), 0);
  assert.equal(toSeq(42), 42);
  assert.equal(toSeq('42'), 42);
  for (const bad of [-1, 1.2, NaN, Infinity, '4x', '', null, undefined, {}, 2 ** 60]) assert.equal(toSeq(bad), null);
});

test('decodeJwtPayload reads sub and exp without verifying', () => {
  const jwt = makeJwt({ sub: 'alice@example.com', exp: 2000000000, name: 'Zoë ✓' });
  const p = decodeJwtPayload(jwt);
  assert.equal(p.sub, 'alice@example.com');
  assert.equal(p.exp, 2000000000);
  assert.equal(p.name, 'Zoë ✓', 'base64url and UTF-8');
  for (const bad of [null, '', 'abc', 'a..b', 'a.!!!.c', `a.${btoa('[1]')}.c`, 42]) assert.equal(decodeJwtPayload(bad), null);
});

test('URLs: base normalised, query built, ws scheme', () => {
  assert.equal(normalizeBaseUrl('https://x.example/api/'), 'https://x.example/api');
  assert.equal(normalizeBaseUrl('', 'https://x.example/demo/#token=a'), 'https://x.example');
  assert.equal(normalizeBaseUrl('/t', 'https://x.example/demo/'), 'https://x.example/t');
  assert.equal(
    buildUrl('https://x', '/v1/notifications/stream', { after: 0, access_token: 'a.b c', skip: undefined }),
    'https://x/v1/notifications/stream?after=0&access_token=a.b+c',
  );
  assert.equal(toWebSocketUrl('https://x/v1/ws?after=1'), 'wss://x/v1/ws?after=1');
  assert.equal(toWebSocketUrl('http://x/v1/ws'), 'ws://x/v1/ws');
});

test('TokenSource caches, refreshes when forced or when exp is near', async () => {
  let now = 1_000_000_000_000;
  let n = 0;
  const reasons = [];
  const src = new TokenSource((ctx) => {
    reasons.push(ctx.reason);
    n++;
    return makeJwt({ sub: 'u', exp: Math.floor(now / 1000) + 60, n });
  }, { now: () => now });
  const t1 = await src.get();
  assert.equal(await src.get(), t1, 'cached');
  const t2 = await src.get({ force: true, reason: 'expired' });
  assert.notEqual(t2, t1);
  now += 58_000; // within the 5 s skew of exp
  const t3 = await src.get();
  assert.notEqual(t3, t2);
  assert.deepEqual(reasons, ['initial', 'expired', 'initial']);
  // Concurrent callers share one call.
  const [a, b] = await Promise.all([src.get({ force: true }), src.get({ force: true })]);
  assert.equal(a, b);
  assert.equal(src.calls, 4);
  await assert.rejects(new TokenSource(() => '').get());
});
