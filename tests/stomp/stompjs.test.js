// @stomp/stompjs, the client Spring front ends use, against a real `tidings serve`, over the `ws`
// WebSocket polyfill that stompjs documents for Node. Each test starts from fresh users on one server.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';
import {
  Server, RawStomp, userToken, serviceToken, sleep, waitFor, within, guard, SERVER_HEARTBEAT_MS,
} from './lib/harness.js';

// The polyfill: stompjs opens `new WebSocket(brokerURL, ['v12.stomp', 'v11.stomp', 'v10.stomp'])`.
Object.assign(globalThis, { WebSocket });

let server;
let userCounter = 0;
const freshUser = (name) => `${name}-${process.pid}-${++userCounter}`;

before(async () => {
  server = await new Server().start();
});

after(async () => {
  await server?.stop();
});

/** A stompjs client that records everything it sees; never reconnects on its own. */
function stomp({ token, connectHeaders, heartbeatIncoming = 0, heartbeatOutgoing = 0 } = {}) {
  const seen = { errors: [], closes: [], heartbeats: 0, lost: 0, order: [] };
  let onConnected;
  let onFailed;
  const connected = new Promise((resolve, reject) => {
    onConnected = resolve;
    onFailed = reject;
  });
  connected.catch(() => {});
  const client = new Client({
    brokerURL: server.wsUrl,
    connectHeaders: connectHeaders ?? { Authorization: `Bearer ${token}` },
    heartbeatIncoming,
    heartbeatOutgoing,
    reconnectDelay: 0,
    connectionTimeout: guard(10000),
    debug: () => {},
    onConnect: (frame) => onConnected(frame),
    onStompError: (frame) => {
      seen.errors.push(frame);
      seen.order.push('ERROR');
    },
    onWebSocketClose: (evt) => {
      seen.closes.push({ code: evt.code, reason: evt.reason });
      seen.order.push('close');
      onFailed(new Error(`closed with ${evt.code} before CONNECTED`));
    },
    onHeartbeatReceived: () => { seen.heartbeats += 1; },
    onHeartbeatLost: () => { seen.lost += 1; },
  });
  client.activate();
  return { client, connected, seen };
}

/** Collects the MESSAGE frames of a subscription. */
function collector() {
  const messages = [];
  const fn = (m) => messages.push(m);
  fn.messages = messages;
  fn.events = (kind) => messages.filter((m) => m.headers['x-tidings-event'] === kind);
  fn.notifications = () => fn.events('notification').map((m) => JSON.parse(m.body));
  return fn;
}

/** Sends `frame` with a receipt header and waits for the RECEIPT: everything before it took effect. */
async function withReceipt(client, send) {
  const id = `r-${Math.random().toString(36).slice(2)}`;
  const got = new Promise((resolve) => client.watchForReceipt(id, resolve));
  send({ receipt: id });
  return within(got, 10000, `RECEIPT ${id}`);
}

/** A frame with a receipt that changes nothing: a barrier after frames without receipts. */
const barrier = (client) => withReceipt(client, (h) => client.publish({
  destination: '/app/read', body: JSON.stringify({ up_to: 0 }), headers: h,
}));

test('connect with a token: CONNECTED carries version, heart-beat, server, session and user-name', async () => {
  const user = freshUser('carol');
  const { client, connected } = stomp({ token: userToken(user), heartbeatIncoming: 10000, heartbeatOutgoing: 10000 });
  try {
    const frame = await within(connected, 10000, 'CONNECTED');
    assert.equal(frame.headers.version, '1.2');
    assert.equal(frame.headers['heart-beat'], `250,${SERVER_HEARTBEAT_MS}`);
    assert.match(frame.headers.server, /^tidings\/\d+\.\d+\.\d+/);
    assert.ok(frame.headers.session.length > 0);
    assert.equal(frame.headers['user-name'], user);
    assert.equal(client.webSocket.protocol, 'v12.stomp');
  } finally {
    await client.deactivate();
  }
});

test('own feed and a topic: receive, ack, and mark read by SEND', async () => {
  const user = freshUser('alice');
  const topic = `deploys-${process.pid}`;
  await server.subscribeToTopic(topic, user);
  const { client, connected, seen } = stomp({ token: userToken(user) });
  try {
    await within(connected, 10000, 'CONNECTED');
    const feed = collector();
    const onTopic = collector();
    // The feed in client-individual mode, from the start of the inbox; the topic cumulative.
    await withReceipt(client, (h) => client.subscribe('/user/queue/notifications', feed,
      { ...h, ack: 'client-individual', 'x-tidings-after': '0' }));
    await withReceipt(client, (h) => client.subscribe(`/topic/${topic}`, onTopic, { ...h, ack: 'client' }));

    await server.publish({ recipients: [user], type: 'order.shipped', title: 'Your order has shipped' });
    const topicPublish = await server.publish({ topic, type: 'deploy.done', title: 'Deployed to prod' });
    assert.equal(topicPublish.recipients, 1);

    await waitFor(() => feed.notifications().length === 2, { message: 'two notifications on the feed' });
    await waitFor(() => onTopic.notifications().length === 1, { message: 'one notification on the topic' });
    const [first, second] = feed.notifications();
    assert.deepEqual([first.seq, second.seq], [1, 2]);
    assert.equal(first.title, 'Your order has shipped');
    assert.equal(second.topic, topic);
    const t = onTopic.messages.find((m) => m.headers['x-tidings-event'] === 'notification');
    assert.equal(JSON.parse(t.body).seq, 2);
    assert.equal(JSON.parse(t.body).topic, topic);

    // The MESSAGE headers the issue names.
    const m = feed.events('notification')[0];
    assert.equal(m.headers.destination, '/user/queue/notifications');
    assert.equal(m.headers['content-type'], 'application/json');
    assert.ok(m.headers['message-id']);
    assert.ok(m.headers.subscription);
    assert.equal(m.headers['x-tidings-seq'], '1');
    assert.equal(m.headers.ack, m.headers['message-id']);
    assert.equal(Number(m.headers['content-length']), Buffer.byteLength(m.body));
    assert.equal(t.headers.destination, `/topic/${topic}`);

    // The feed also reports the unread count.
    await waitFor(() => feed.events('unread').some((u) => JSON.parse(u.body).unread === 2),
      { message: 'unread 2 on the feed' });

    // Acknowledge everything (client-individual: each one; client: the last one covers all).
    for (const msg of feed.messages) msg.ack();
    onTopic.messages.at(-1).ack();
    await barrier(client);

    // Mark seq 1 read with a SEND; the receipt comes once it is committed.
    await withReceipt(client, (h) => client.publish({
      destination: '/app/read', body: JSON.stringify({ up_to: 1 }), headers: { ...h, 'content-type': 'application/json' },
    }));
    assert.deepEqual(await server.unread(user), { unread: 1, seq: 2 });
    await waitFor(() => feed.events('unread').some((u) => JSON.parse(u.body).unread === 1),
      { message: 'unread 1 pushed to the feed after the SEND' });

    // By ids too.
    await withReceipt(client, (h) => client.publish({
      destination: '/app/read', body: JSON.stringify({ ids: [second.id] }), headers: h,
    }));
    assert.deepEqual(await server.unread(user), { unread: 0, seq: 2 });
    assert.deepEqual(seen.errors, []);
  } finally {
    await client.deactivate();
  }
});

test('a committed transaction takes effect, an aborted one does not', async () => {
  const user = freshUser('dave');
  const published = [];
  for (let i = 1; i <= 3; i++) {
    const r = await server.publish({ recipients: [user], type: 'note', title: `note ${i}` });
    published.push(r.notifications[0]);
  }
  const { client, connected, seen } = stomp({ token: userToken(user) });
  try {
    await within(connected, 10000, 'CONNECTED');
    assert.equal((await server.unread(user)).unread, 3);

    const kept = client.begin('tx-kept');
    const dropped = client.begin('tx-dropped');
    await withReceipt(client, (h) => client.publish({
      destination: '/app/read', body: JSON.stringify({ ids: [published[0].id] }),
      headers: { ...h, transaction: kept.id },
    }));
    await withReceipt(client, (h) => client.publish({
      destination: '/app/read', body: JSON.stringify({ up_to: 3 }),
      headers: { ...h, transaction: dropped.id },
    }));
    // Held, not applied: the receipts only say the frames were taken into the transactions.
    assert.equal((await server.unread(user)).unread, 3);

    dropped.abort();
    await barrier(client);
    assert.equal((await server.unread(user)).unread, 3, 'the aborted transaction changed nothing');

    kept.commit();
    await barrier(client);
    assert.deepEqual(await server.unread(user), { unread: 2, seq: 3 }, 'the committed one marked one read');

    // Both are closed now: committing again is an error (ERROR, then the close).
    kept.commit();
    await waitFor(() => seen.errors.length === 1, { message: 'ERROR for an unknown transaction' });
    assert.match(seen.errors[0].headers.message, /no open transaction 'tx-kept'/);
    await waitFor(() => seen.closes.length === 1, { message: 'the close' });
    assert.deepEqual(seen.order, ['ERROR', 'close']);
  } finally {
    await client.deactivate();
  }
});

test('ACK and NACK in a transaction, and NACK redelivers once', async () => {
  const user = freshUser('erin');
  const { client, connected, seen } = stomp({ token: userToken(user) });
  try {
    await within(connected, 10000, 'CONNECTED');
    const feed = collector();
    await withReceipt(client, (h) => client.subscribe('/user/queue/notifications', feed,
      { ...h, ack: 'client-individual' }));
    await server.publish({ recipients: [user], type: 'note', title: 'one' });
    await waitFor(() => feed.notifications().length === 1, { message: 'the notification' });
    const original = feed.events('notification')[0];

    // A NACK inside a transaction waits for the COMMIT.
    const tx = client.begin('tx-nack');
    original.nack({ transaction: tx.id });
    await barrier(client);
    assert.equal(feed.events('notification').length, 1, 'no redelivery before COMMIT');
    tx.commit();
    await waitFor(() => feed.events('notification').length === 2, { message: 'the redelivery' });
    const again = feed.events('notification')[1];
    assert.equal(again.headers.redelivered, 'true');
    assert.equal(again.body, original.body);
    assert.notEqual(again.headers['message-id'], original.headers['message-id']);

    // A second NACK drops it: no third copy.
    again.nack();
    await barrier(client);
    await sleep(200);
    assert.equal(feed.events('notification').length, 2);
    for (const m of feed.events('unread')) m.ack();
    await barrier(client);
    assert.deepEqual(seen.errors, []);
  } finally {
    await client.deactivate();
  }
});

test('heart-beats keep an idle connection open past 3 heart-beat periods', async () => {
  const user = freshUser('frank');
  // The client wants a heart-beat every 500 ms and can send one every 500 ms; the server asks for one
  // every SERVER_HEARTBEAT_MS (1 s), so the client sends every 1 s and the server every 500 ms.
  const { client, connected, seen } = stomp({ token: userToken(user), heartbeatIncoming: 500, heartbeatOutgoing: 500 });
  try {
    const frame = await within(connected, 10000, 'CONNECTED');
    assert.equal(frame.headers['heart-beat'], `250,${SERVER_HEARTBEAT_MS}`);
    const idle = 4 * SERVER_HEARTBEAT_MS;
    await sleep(idle);
    assert.deepEqual(seen.closes, [], 'still open after 4 client heart-beat periods (8 server ones)');
    assert.deepEqual(seen.errors, []);
    assert.equal(seen.lost, 0);
    assert.ok(client.connected);
    // The server's EOLs every 500 ms: about 8 in 4 s.
    assert.ok(seen.heartbeats >= 5, `received ${seen.heartbeats} heart-beats in ${idle} ms`);
    // And the session still works.
    const feed = collector();
    await withReceipt(client, (h) => client.subscribe('/user/queue/notifications', feed, h));
    await server.publish({ recipients: [user], type: 'note', title: 'still here' });
    await waitFor(() => feed.notifications().length === 1, { message: 'a notification after the idle time' });
  } finally {
    await client.deactivate();
  }
});

test('a client that stops heart-beating is dropped with ERROR, then the close', async () => {
  const user = freshUser('gina');
  const { client, connected, seen } = stomp({ token: userToken(user), heartbeatIncoming: 0, heartbeatOutgoing: 500 });
  try {
    await within(connected, 10000, 'CONNECTED');
    // Let a few heart-beats go out, then stop sending them (everything else still goes through).
    await sleep(1500);
    assert.deepEqual(seen.closes, []);
    const ws = client.webSocket;
    const send = ws.send.bind(ws);
    ws.send = (data) => { if (data !== '\n') send(data); };
    const stoppedAt = Date.now();
    await waitFor(() => seen.closes.length === 1, { timeout: 10000, message: 'the server to drop the silent client' });
    const after = Date.now() - stoppedAt;
    // Negotiated: the client sends every max(500, 1000) = 1000 ms; dropped after 2 intervals of silence.
    assert.ok(after >= 1000 && after < 5000, `dropped after ${after} ms`);
    assert.equal(seen.errors.length, 1);
    assert.match(seen.errors[0].headers.message, /no heart-beat from the client/);
    assert.deepEqual(seen.order, ['ERROR', 'close']);
    assert.equal(seen.closes[0].code, 1001);
  } finally {
    await client.deactivate();
  }
});

test('a wrong token gets ERROR, then the close', async () => {
  for (const [connectHeaders, expected, code] of [
    [{ Authorization: 'Bearer not-a-jwt' }, /bad token/, 1008],
    [{ Authorization: `Bearer ${userToken('mallory').slice(0, -4)}AAAA` }, /bad token - the token is not valid - the signature does not match/, 1008],
    [{ passcode: userToken('mallory', -10) }, /^token expired$/, 4001],
    [{ Authorization: `Bearer ${serviceToken()}` }, /service token/, 1008],
    [{}, /no token/, 1008],
  ]) {
    const { client, connected, seen } = stomp({ connectHeaders });
    try {
      await assert.rejects(within(connected, 10000, 'the refusal'));
      await waitFor(() => seen.closes.length === 1, { message: 'the close' });
      assert.deepEqual(seen.order, ['ERROR', 'close'], JSON.stringify(connectHeaders));
      assert.match(seen.errors[0].headers.message, expected);
      assert.equal(seen.closes[0].code, code);
    } finally {
      await client.deactivate();
    }
  }
});

test('the token may come as passcode, and STOMP 1.1 clients ACK by message-id', async () => {
  const user = freshUser('hank');
  const raw = new RawStomp(server.wsUrl, ['v11.stomp']);
  try {
    await within(raw.opened, 10000, 'the socket');
    assert.equal(raw.ws.protocol, 'v11.stomp');
    raw.send('CONNECT', { 'accept-version': '1.0,1.1', host: 'tidings', login: user, passcode: userToken(user) });
    const connectedFrame = await raw.next('CONNECTED');
    assert.equal(connectedFrame.headers.version, '1.1');
    raw.send('SUBSCRIBE', { id: 's1', destination: '/user/queue/notifications', ack: 'client', 'x-tidings-after': '0', receipt: 'sub' });
    await raw.next('RECEIPT');
    await server.publish({ recipients: [user], type: 'note', title: 'v1.1' });
    const message = await waitFor(() => raw.frames.find((f) => f.command === 'MESSAGE' && f.headers['x-tidings-event'] === 'notification'),
      { message: 'a MESSAGE' });
    raw.send('ACK', { 'message-id': message.headers['message-id'], subscription: 's1', receipt: 'acked' });
    await waitFor(() => raw.frames.some((f) => f.command === 'RECEIPT' && f.headers['receipt-id'] === 'acked'), { message: 'the ACK receipt' });
    raw.send('DISCONNECT', { receipt: 'bye' });
    await waitFor(() => raw.frames.some((f) => f.command === 'RECEIPT' && f.headers['receipt-id'] === 'bye'), { message: 'the DISCONNECT receipt' });
    const closed = await within(raw.closed, 10000, 'the close after DISCONNECT');
    assert.equal(closed.code, 1000);
    assert.equal(raw.frames.filter((f) => f.command === 'ERROR').length, 0);
  } finally {
    raw.close();
  }
});

test('protocol errors: ERROR with a clear message, then the close', async () => {
  const user = freshUser('ivan');
  const cases = [
    // [frames to send after CONNECT, expected message, close code]
    ['SUBSCRIBE\nid:1\ndestination:/queue/elsewhere\n\n\0', /unknown destination '\/queue\/elsewhere'/, 1002],
    ['SUBSCRIBE\nid:1\ndestination:/topic/not-mine\n\n\0', /not subscribed to topic 'not-mine'/, 1008],
    ['ACK\nid:999\n\n\0', /ACK of an unknown message/, 1002],
    ['SEND\ndestination:/app/other\n\n{}\0', /cannot SEND to '\/app\/other'/, 1002],
    ['SEND\ndestination:/app/read\n\n{"up_to":-1}\0', /invalid \/app\/read body: up_to/, 1002],
    ['BEGIN\ntransaction:t\n\n\0BEGIN\ntransaction:t\n\n\0', /transaction 't' is already open/, 1002],
    ['SEND\ndestination:/app/read\ntransaction:nope\n\n{"up_to":1}\0', /no open transaction 'nope'/, 1002],
    ['BOGUS\n\n\0', /^unknown STOMP command$/, 1002],
    ['SEND\nfoo:a\\tb\n\n\0', /undefined escape sequence/, 1002],
    // Over the 64 KiB frame limit (the codec refuses it as it arrives) ...
    [`SEND\ndestination:/app/read\n\n${'x'.repeat(66000)}`, /frame exceeds the maximum size of 65536 bytes/, 1009],
    // ... and a WebSocket message too large to be taken at all.
    [`SEND\ndestination:/app/read\n\n${'x'.repeat(100000)}\0`, /WebSocket message larger than/, 1009],
  ];
  for (const [payload, expected, code] of cases) {
    const raw = new RawStomp(server.wsUrl);
    try {
      await within(raw.opened, 10000, 'the socket');
      raw.send('CONNECT', { 'accept-version': '1.2', Authorization: `Bearer ${userToken(user)}` });
      await raw.next('CONNECTED');
      raw.sendRaw(payload);
      const error = await raw.next('ERROR');
      assert.match(error.headers.message, expected, payload.slice(0, 60));
      const closed = await within(raw.closed, 10000, 'the close');
      assert.equal(closed.code, code, error.headers.message);
    } finally {
      raw.close();
    }
  }
});

test('no CONNECT in time, or another frame first: ERROR, then the close', async () => {
  const silent = new RawStomp(server.wsUrl);
  const early = new RawStomp(server.wsUrl);
  const old = new RawStomp(server.wsUrl);
  try {
    await Promise.all([silent.opened, early.opened, old.opened]);
    early.send('SUBSCRIBE', { id: '1', destination: '/user/queue/notifications' });
    assert.match((await early.next('ERROR')).headers.message, /first frame must be CONNECT or STOMP/);
    old.send('CONNECT', { 'accept-version': '2.0', passcode: userToken('x') });
    const versionError = await old.next('ERROR');
    assert.equal(versionError.headers.version, '1.2,1.1,1.0');
    const t0 = Date.now();
    assert.match((await silent.next('ERROR', 10000)).headers.message, /no CONNECT frame within 5 seconds/);
    assert.ok(Date.now() - t0 < guard(8000));
    for (const c of [silent, early, old]) await within(c.closed, 10000, 'the close');
  } finally {
    for (const c of [silent, early, old]) c.close();
  }
});
