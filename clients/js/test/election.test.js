import test from 'node:test';
import assert from 'node:assert/strict';
import { HeartbeatElection } from '../tidings.js';

// A tiny bus with a manual clock: every message sent is delivered to the other peers.
function world(ids, opts = {}) {
  let now = 0;
  const peers = new Map(ids.map((id) => [id, new HeartbeatElection({ id, heartbeatMs: 100, timeoutMs: 500, claimMs: 150, ...opts })]));
  const alive = new Set();
  const send = (from, msgs) => {
    for (const m of msgs) for (const [id, p] of peers) if (id !== from && alive.has(id)) send(id, p.receive(m, now));
  };
  return {
    peers,
    start(id) { alive.add(id); send(id, peers.get(id).start(now)); },
    kill(id) { alive.delete(id); },
    stop(id) { const out = peers.get(id).stop(); alive.delete(id); send(id, out); },
    advance(ms, step = 10) {
      for (let t = 0; t < ms; t += step) {
        now += step;
        for (const id of alive) send(id, peers.get(id).tick(now));
      }
    },
    leaders() { return [...alive].filter((id) => peers.get(id).role === 'leader'); },
    role(id) { return peers.get(id).role; },
  };
}

test('a lone tab claims leadership after claimMs', () => {
  const w = world(['a']);
  w.start('a');
  assert.equal(w.role('a'), 'candidate');
  w.advance(140);
  assert.equal(w.role('a'), 'candidate');
  w.advance(20);
  assert.deepEqual(w.leaders(), ['a']);
});

test('a new tab joins an existing leader as follower, whatever its id', () => {
  const w = world(['m', 'a']);
  w.start('m');
  w.advance(200);
  w.start('a'); // lower id, but a leader already answers hb?
  assert.equal(w.role('a'), 'follower');
  w.advance(2000);
  assert.deepEqual(w.leaders(), ['m']);
});

test('a follower takes over when the leader stops (bye) at once', () => {
  const w = world(['a', 'b']);
  w.start('a');
  w.advance(200);
  w.start('b');
  w.stop('a');
  assert.deepEqual(w.leaders(), ['b']);
});

test('a follower takes over when the leader dies silently, after timeoutMs', () => {
  const w = world(['a', 'b', 'c']);
  w.start('a');
  w.advance(200);
  w.start('b');
  w.start('c');
  w.kill('a');
  w.advance(400);
  assert.deepEqual(w.leaders(), []);
  w.advance(200);
  assert.equal(w.leaders().length, 1, 'both claim at the same tick, one wins');
  assert.deepEqual(w.leaders(), ['b'], 'same start time: the lower id wins');
  assert.equal(w.role('c'), 'follower');
  w.advance(3000);
  assert.deepEqual(w.leaders(), ['b'], 'stable');
});

test('a late claim (slow answer) does not unseat the established leader', () => {
  const a = new HeartbeatElection({ id: 'z', heartbeatMs: 100, timeoutMs: 500, claimMs: 150 });
  const b = new HeartbeatElection({ id: 'a', heartbeatMs: 100, timeoutMs: 500, claimMs: 150 });
  a.start(0);
  a.tick(150); // z leads since 150
  b.start(1000); // b's hb? is lost, b claims at 1150 though its id is lower
  const claim = b.tick(1150);
  assert.equal(b.role, 'leader');
  const answer = a.receive(claim[0], 1151);
  assert.equal(a.role, 'leader', 'the older leader stays');
  b.receive(answer[0], 1152);
  assert.equal(b.role, 'follower');
  assert.equal(b.leaderId, 'z');
});

test('simultaneous claims resolve to the lower id', () => {
  const x = new HeartbeatElection({ id: 'x' });
  const y = new HeartbeatElection({ id: 'y' });
  x.start(0);
  y.start(0);
  const hx = x.tick(2000);
  const hy = y.tick(2000);
  y.receive(hx[0], 2001);
  x.receive(hy[0], 2001);
  assert.equal(x.role, 'leader');
  assert.equal(y.role, 'follower');
});

test('two tabs starting together end with exactly one leader', () => {
  const w = world(['x', 'y']);
  w.start('y');
  w.start('x');
  w.advance(1000);
  assert.equal(w.leaders().length, 1);
  assert.equal([w.role('x'), w.role('y')].sort().join(), 'follower,leader');
});

test('messages from itself and after stop are ignored', () => {
  const e = new HeartbeatElection({ id: 'a' });
  e.start(0);
  assert.deepEqual(e.receive({ t: 'hb', from: 'a' }, 1), []);
  assert.equal(e.role, 'candidate');
  assert.deepEqual(e.stop(), []);
  assert.deepEqual(e.receive({ t: 'hb', from: 'b' }, 2), []);
  assert.equal(e.role, 'stopped');
});
