import test from 'node:test';
import assert from 'node:assert/strict';
import { SeqTracker } from '../tidings.js';

const n = (seq) => ({ id: `id-${seq}`, seq, type: 't', title: `#${seq}` });
const seqs = (list) => list.map((x) => x.seq);

test('in-order notifications are delivered and move the cursor', () => {
  const t = new SeqTracker(0);
  for (let s = 1; s <= 5; s++) {
    const r = t.accept(n(s));
    assert.deepEqual(seqs(r.delivered), [s]);
    assert.equal(r.duplicate, false);
    assert.equal(r.gap, null);
  }
  assert.equal(t.cursor, 5);
});

test('duplicates (seq <= cursor) are dropped and counted', () => {
  const t = new SeqTracker(3);
  for (const s of [1, 2, 3]) {
    const r = t.accept(n(s));
    assert.equal(r.duplicate, true);
    assert.deepEqual(r.delivered, []);
  }
  assert.deepEqual(seqs(t.accept(n(4)).delivered), [4]);
  assert.equal(t.accept(n(4)).duplicate, true);
  assert.equal(t.duplicates, 4);
  assert.equal(t.cursor, 4);
});

test('a duplicate of a buffered (out-of-order) notification is dropped too', () => {
  const t = new SeqTracker(1);
  assert.deepEqual(t.accept(n(3)).delivered, []);
  const r = t.accept(n(3));
  assert.equal(r.duplicate, true);
  assert.equal(t.pending.size, 1);
  assert.deepEqual(seqs(t.accept(n(2)).delivered), [2, 3]);
});

test('a gap is detected at once: N+2 after N reports the hole', () => {
  const t = new SeqTracker(10);
  const r = t.accept(n(12));
  assert.deepEqual(r.delivered, []);
  assert.deepEqual(r.gap, { after: 10, before: 12 });
  assert.equal(t.hasGap(), true);
  assert.equal(t.cursor, 10, 'cursor does not move past a hole');
});

test('out-of-order arrivals are delivered in seq order once the hole is filled', () => {
  const t = new SeqTracker(0);
  assert.deepEqual(t.accept(n(3)).delivered, []);
  assert.deepEqual(t.accept(n(5)).delivered, []);
  assert.deepEqual(t.accept(n(4)).delivered, []);
  assert.deepEqual(t.gap(), { after: 0, before: 3 });
  assert.deepEqual(seqs(t.accept(n(1)).delivered), [1]);
  assert.deepEqual(t.gap(), { after: 1, before: 3 });
  const r = t.accept(n(2));
  assert.deepEqual(seqs(r.delivered), [2, 3, 4, 5]);
  assert.equal(r.gap, null);
  assert.equal(t.cursor, 5);
  assert.equal(t.hasGap(), false);
});

test('a page from ?after= fills the gap and merges with buffered live items', () => {
  const t = new SeqTracker(10);
  t.accept(n(13));
  t.accept(n(15));
  // The page holds 11..14; 15 is still buffered and follows.
  const r = t.acceptPage([n(14), n(11), n(12), n(13)]);
  assert.deepEqual(seqs(r.delivered), [11, 12, 13, 14, 15]);
  assert.equal(r.duplicates, 0);
  assert.equal(t.cursor, 15);
  assert.equal(t.hasGap(), false);
});

test('page items already delivered are duplicates', () => {
  const t = new SeqTracker(5);
  const r = t.acceptPage([n(4), n(5), n(6), n(7)]);
  assert.deepEqual(seqs(r.delivered), [6, 7]);
  assert.equal(r.duplicates, 2);
});

test('a hole inside an authoritative page is skipped (no longer retained)', () => {
  const t = new SeqTracker(0);
  const r = t.acceptPage([n(5), n(6), n(9)]);
  assert.deepEqual(seqs(r.delivered), [5, 6, 9]);
  assert.equal(r.skipped, 4 + 2);
  assert.equal(t.cursor, 9);
});

test('a buffered item beyond the end of a partial page stays buffered', () => {
  const t = new SeqTracker(0);
  t.accept(n(300));
  const r = t.acceptPage(Array.from({ length: 200 }, (_, i) => n(i + 1)));
  assert.equal(r.delivered.length, 200);
  assert.equal(t.cursor, 200);
  assert.deepEqual(t.gap(), { after: 200, before: 300 });
  const r2 = t.acceptPage(Array.from({ length: 100 }, (_, i) => n(i + 201)));
  assert.deepEqual(seqs(r2.delivered).slice(-2), [299, 300]);
  assert.equal(t.cursor, 300);
});

test('an unanchored tracker (cursor null) anchors on the first notification', () => {
  const t = new SeqTracker(null);
  assert.deepEqual(seqs(t.accept(n(42)).delivered), [42]);
  assert.equal(t.cursor, 42);
  assert.deepEqual(t.accept(n(44)).gap, { after: 42, before: 44 });
  const p = new SeqTracker(null);
  assert.deepEqual(seqs(p.acceptPage([n(8), n(7)]).delivered), [7, 8]);
});

test('invalid seqs are ignored', () => {
  const t = new SeqTracker(0);
  for (const bad of [null, {}, { seq: -1 }, { seq: 0 }, { seq: 1.5 }, { seq: 'x' }]) {
    const r = t.accept(bad);
    assert.deepEqual(r.delivered, []);
  }
  assert.equal(t.cursor, 0);
  assert.equal(t.accept({ seq: '1' }).delivered.length, 1, 'a numeric string seq is accepted');
  assert.equal(t.cursor, 1);
});

test('skipGap gives up on a hole and delivers the buffered run', () => {
  const t = new SeqTracker(2);
  t.accept(n(5));
  t.accept(n(6));
  t.accept(n(9));
  assert.deepEqual(seqs(t.skipGap()), [5, 6]);
  assert.equal(t.cursor, 6);
  assert.deepEqual(t.gap(), { after: 6, before: 9 });
  assert.equal(t.skipped, 2);
});

test('advanceTo moves forward only and drops what it passes', () => {
  const t = new SeqTracker(5);
  t.accept(n(7));
  t.accept(n(9));
  assert.deepEqual(seqs(t.advanceTo(8)), [9]);
  assert.equal(t.cursor, 9);
  assert.deepEqual(t.advanceTo(3), []);
  assert.equal(t.cursor, 9);
});

test('reset sets the cursor unconditionally (server history reset)', () => {
  const t = new SeqTracker(50);
  t.accept(n(52));
  t.reset(3);
  assert.equal(t.cursor, 3);
  assert.equal(t.hasGap(), false);
  assert.deepEqual(seqs(t.accept(n(4)).delivered), [4]);
});

test('the out-of-order buffer is bounded; the newest dropped item stays in highestSeen', () => {
  const t = new SeqTracker(0, { maxPending: 3 });
  for (const s of [2, 3, 4, 5]) t.accept(n(s));
  assert.equal(t.pending.size, 3);
  assert.equal(t.pending.has(5), false);
  assert.equal(t.highestSeen, 5);
  assert.deepEqual(seqs(t.accept(n(1)).delivered), [1, 2, 3, 4]);
});

test('a long shuffled stream with duplicates comes out exactly once, in order', () => {
  let seed = 7;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const input = [];
  for (let s = 1; s <= 500; s++) {
    input.push(s);
    if (rnd() < 0.2) input.push(s); // duplicate
  }
  // Local shuffles (a window of 8), like reordering between two paths.
  for (let i = 0; i < input.length; i++) {
    const j = Math.min(input.length - 1, i + Math.floor(rnd() * 8));
    [input[i], input[j]] = [input[j], input[i]];
  }
  const t = new SeqTracker(0);
  const out = [];
  for (const s of input) out.push(...seqs(t.accept(n(s)).delivered));
  assert.deepEqual(out, Array.from({ length: 500 }, (_, i) => i + 1));
  assert.equal(t.cursor, 500);
});
