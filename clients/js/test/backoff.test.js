import test from 'node:test';
import assert from 'node:assert/strict';
import {
  backoffDelay,
  reconnectDelay,
  closeCodeReason,
  chooseTransport,
  SseFallbackPolicy,
} from '../tidings.js';

test('full jitter stays within [0, min(cap, base * 2^attempt))', () => {
  const opts = { baseMs: 500, capMs: 30000 };
  for (let attempt = 0; attempt < 40; attempt++) {
    const ceiling = Math.min(30000, 500 * 2 ** attempt);
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(attempt, opts);
      assert.ok(d >= 0 && d < ceiling, `attempt ${attempt}: ${d} < ${ceiling}`);
      assert.ok(Number.isInteger(d));
    }
  }
});

test('backoff bounds at the extremes of the random source', () => {
  const lo = () => 0;
  const hi = () => 0.999999;
  assert.equal(backoffDelay(0, { random: lo }), 0);
  assert.equal(backoffDelay(0, { random: hi }), 499);
  assert.equal(backoffDelay(1, { random: hi }), 999);
  assert.equal(backoffDelay(5, { random: hi }), 15999);
  assert.equal(backoffDelay(6, { random: hi }), 29999, 'capped');
  assert.equal(backoffDelay(1e9, { random: hi }), 29999, 'huge attempt: no overflow');
  assert.equal(backoffDelay(-3, { random: hi }), 499, 'negative attempt reads as 0');
  assert.equal(backoffDelay(NaN, { random: hi }), 499);
  assert.equal(backoffDelay(3, { random: () => 1 }), 3999, 'random() == 1 stays below the ceiling');
  assert.equal(backoffDelay(3, { random: () => 7 }), 3999, 'a misbehaving random source is clamped');
  assert.equal(backoffDelay(2, { baseMs: 100, capMs: 250, random: hi }), 249);
});

test('the mean grows with attempts until the cap', () => {
  const mean = (a) => {
    let s = 0;
    for (let i = 0; i < 2000; i++) s += backoffDelay(a);
    return s / 2000;
  };
  assert.ok(mean(0) < mean(3));
  assert.ok(mean(3) < mean(6));
  assert.ok(Math.abs(mean(12) - 15000) < 1500);
});

test('prompt reasons reconnect within promptMs on the first retry, then back off', () => {
  const hi = () => 0.999999;
  for (const reason of ['restart', 'token-expired', 'too-slow', 'manual']) {
    assert.ok(reconnectDelay({ reason, attempt: 0 }, { random: hi }) < 250, reason);
    assert.equal(reconnectDelay({ reason, attempt: 3 }, { random: hi }), 3999, `${reason} repeated`);
  }
  assert.ok(reconnectDelay({ reason: 'ended', healthy: true, attempt: 0 }, { random: hi }) < 250, 'a healthy SSE stream that ended');
  assert.equal(reconnectDelay({ reason: 'ended', healthy: false, attempt: 0 }, { random: hi }), 499);
  assert.equal(reconnectDelay({ reason: 'error', attempt: 2 }, { random: hi }), 1999);
  assert.equal(reconnectDelay({ reason: 'stalled', attempt: 0 }, { random: hi }), 499);
});

test('WebSocket close codes map to reasons', () => {
  assert.equal(closeCodeReason(4001), 'token-expired');
  assert.equal(closeCodeReason(4008), 'too-slow');
  assert.equal(closeCodeReason(1012), 'restart');
  assert.equal(closeCodeReason(1000, true), 'ended');
  assert.equal(closeCodeReason(1006), 'error');
  assert.equal(closeCodeReason(undefined), 'error');
});

test('transport choice', () => {
  const env = { hasEventSource: true, hasWebSocket: true };
  assert.equal(chooseTransport('auto', env), 'sse');
  assert.equal(chooseTransport(undefined, env), 'sse');
  assert.equal(chooseTransport('auto', { ...env, hasEventSource: false }), 'longpoll');
  assert.equal(chooseTransport('auto', { ...env, sseDisabled: true }), 'longpoll');
  assert.equal(chooseTransport('sse', { ...env, sseDisabled: true }), 'sse', 'explicit sse ignores the auto rule');
  assert.equal(chooseTransport('websocket', env), 'websocket');
  assert.equal(chooseTransport('websocket', { ...env, hasWebSocket: false }), 'longpoll');
  assert.equal(chooseTransport('longpoll', env), 'longpoll');
});

test('auto fallback: N stalled SSE attempts in a row while REST answers', () => {
  const p = new SseFallbackPolicy({ maxStrikes: 3 });
  assert.equal(p.record({ healthy: false, serverReachable: true }), false);
  assert.equal(p.record({ healthy: false, serverReachable: true }), false);
  assert.equal(p.record({ healthy: true }), false, 'a healthy stream resets the count');
  assert.equal(p.strikes, 0);
  assert.equal(p.record({ healthy: false, serverReachable: true }), false);
  assert.equal(p.record({ healthy: false, serverReachable: false }), false, 'an outage does not count');
  assert.equal(p.record({ healthy: false, serverReachable: true }), false);
  assert.equal(p.record({ healthy: false, serverReachable: true }), true);
  assert.equal(p.tripped, true);
});
