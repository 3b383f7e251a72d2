import test from 'node:test';
import assert from 'node:assert/strict';
import {
  parseSseEvent,
  parseWsMessage,
  parsePollResponse,
  parsePage,
  normalizeNotification,
  preferencesFrame,
} from '../tidings.js';

const raw = {
  id: '0b6f8f4e-4a59-4c0e-9a57-0d0f0c1c2b3a',
  seq: 7,
  type: 'order.shipped',
  title: 'Your order has shipped',
  body: 'Parcel 1Z999 is on its way.',
  data: { order_id: 1234 },
  link: 'https://shop.example/orders/1234',
  created_at: '2024-05-01T10:00:00Z',
  read_at: null,
  archived_at: null,
};

test('the same notification normalises identically from every transport', () => {
  const sse = parseSseEvent('notification', JSON.stringify(raw), '7');
  const ws = parseWsMessage(JSON.stringify({ type: 'notification', notification: raw }));
  const poll = parsePollResponse(200, { notifications: [raw], unread: 3, seq: 7 });
  assert.deepEqual(sse, { type: 'notification', notification: raw });
  assert.deepEqual(ws, sse);
  assert.deepEqual(poll[0], sse);
  assert.deepEqual(poll[1], { type: 'unread', unread: 3, seq: 7 });
});

test('unread, resync and token-expired frames', () => {
  assert.deepEqual(parseSseEvent('unread', '{"unread":2,"seq":9}'), { type: 'unread', unread: 2, seq: 9 });
  assert.deepEqual(parseWsMessage('{"type":"unread","unread":0,"seq":0}'), { type: 'unread', unread: 0, seq: 0 });
  assert.deepEqual(parseSseEvent('resync', '{"seq":900}'), { type: 'resync', seq: 900 });
  assert.deepEqual(parseWsMessage('{"type":"resync","seq":900}'), { type: 'resync', seq: 900 });
  assert.deepEqual(parseSseEvent('token-expired', ''), { type: 'token-expired' });
  assert.deepEqual(parseWsMessage('{"type":"pong"}'), { type: 'pong' });
});

test('the history floor: truncated frames on every transport, and on pages', () => {
  assert.deepEqual(parseSseEvent('truncated', '{"floor":7}', '7'), { type: 'truncated', floor: 7 });
  assert.deepEqual(parseWsMessage('{"type":"truncated","floor":7}'), { type: 'truncated', floor: 7 });
  assert.equal(parseWsMessage('{"type":"truncated"}'), null);
  const body = { notifications: [{ ...raw, seq: 8 }], unread: 1, seq: 8, truncated: true, floor: 7 };
  const page = parsePage(body);
  assert.equal(page.truncated, true);
  assert.equal(page.floor, 7);
  const frames = parsePollResponse(200, body);
  assert.deepEqual(frames[0], { type: 'truncated', floor: 7 }, 'the floor comes first');
  assert.equal(frames[1].notification.seq, 8);
  assert.equal(parsePollResponse(200, { ...body, truncated: undefined })[0].type, 'notification');
});

test('a cursor ahead of the latest seq: ahead frames on every transport, and on pages', () => {
  assert.deepEqual(parseSseEvent('ahead', '{"seq":2}', '2'), { type: 'ahead', seq: 2 });
  assert.deepEqual(parseWsMessage('{"type":"ahead","seq":2}'), { type: 'ahead', seq: 2 });
  assert.equal(parseWsMessage('{"type":"ahead"}'), null);
  assert.equal(parseSseEvent('ahead', 'null'), null);
  const body = { notifications: [], unread: 0, seq: 2, ahead: true };
  assert.equal(parsePage(body).ahead, true);
  assert.deepEqual(parsePollResponse(200, body), [
    { type: 'ahead', seq: 2 },
    { type: 'unread', unread: 0, seq: 2 },
  ]);
  assert.equal(parsePage({ ...body, ahead: undefined }).ahead, false);
});

test('the SSE id fills in a missing seq', () => {
  const { seq, ...noSeq } = raw;
  assert.equal(seq, 7);
  assert.equal(parseSseEvent('notification', JSON.stringify(noSeq), '7').notification.seq, 7);
});

test('malformed frames are ignored, not thrown', () => {
  assert.equal(parseSseEvent('notification', '{not json'), null);
  assert.equal(parseSseEvent('notification', '{"title":"no seq"}'), null);
  assert.equal(parseSseEvent('unread', '{}'), null);
  assert.equal(parseSseEvent('something-new', '{}'), null);
  assert.equal(parseWsMessage('garbage'), null);
  assert.equal(parseWsMessage('{"type":"notification"}'), null);
  assert.equal(parseWsMessage('{"type":"later-feature"}'), null);
  assert.equal(parseWsMessage('[1,2]'), null);
  assert.deepEqual(parseSseEvent('resync', 'oops'), { type: 'resync', seq: null });
});

test('long-poll: 204 has no frames; 200 frames are sorted by seq', () => {
  assert.deepEqual(parsePollResponse(204, null), []);
  const frames = parsePollResponse(200, {
    notifications: [{ ...raw, seq: 9 }, { ...raw, seq: 8 }],
    unread: 2,
    seq: 9,
  });
  assert.deepEqual(frames.map((f) => f.type), ['notification', 'notification', 'unread']);
  assert.deepEqual(frames.slice(0, 2).map((f) => f.notification.seq), [8, 9]);
});

test('normalizeNotification fills optional fields and keeps extra ones', () => {
  const n = normalizeNotification({ id: 1, seq: '3', title: 'Hi', extra: true });
  assert.deepEqual(n, {
    id: '1', seq: 3, type: '', title: 'Hi', body: null, data: null, link: null,
    created_at: null, read_at: null, archived_at: null, extra: true,
  });
  assert.equal(normalizeNotification({ seq: 0 }), null);
  assert.equal(normalizeNotification(null), null);
});

test('parsePage tolerates missing fields', () => {
  assert.deepEqual(parsePage({}), { notifications: [], unread: null, seq: null, floor: null, truncated: false, ahead: false });
  assert.deepEqual(parsePage('{"notifications":[{"seq":1}],"unread":1,"seq":1}').notifications.length, 1);
});

test('a changed event parses the same from SSE, WebSocket and long-poll', () => {
  const body = { change: 'deleted', ids: ['a', 'b'], seqs: [3, 5], unread: 2, seq: 9 };
  const want = { type: 'changed', change: 'deleted', ids: ['a', 'b'], seqs: [3, 5], unread: 2, seq: 9 };
  assert.deepEqual(parseSseEvent('changed', JSON.stringify(body), ''), want);
  assert.deepEqual(parseWsMessage(JSON.stringify({ type: 'changed', ...body })), want);
  const frames = parsePollResponse(200, JSON.stringify({ notifications: [], changes: [body], unread: 2, seq: 9 }));
  assert.deepEqual(frames, [want, { type: 'unread', unread: 2, seq: 9 }]);
  assert.equal(parseSseEvent('changed', JSON.stringify({ ...body, change: 'exploded' }), ''), null);
});

test('a preferences event reads the same from SSE and WebSocket', () => {
  const body = { version: 3, preferences: { rules: [], quiet_hours: null } };
  const sse = parseSseEvent('preferences', JSON.stringify(body), '');
  const ws = parseWsMessage(JSON.stringify({ type: 'preferences', ...body }));
  assert.deepEqual(sse, { type: 'preferences', ...body });
  assert.deepEqual(ws, sse);
  assert.equal(preferencesFrame({ version: 'x', preferences: {} }), null);
  assert.equal(preferencesFrame({ version: 1 }), null);
});
