// Test doubles: storage, JWTs, an in-memory Tidings server with fake
// EventSource / WebSocket / fetch, and a Web Locks stand-in.

export class FakeStorage {
  constructor() { this.map = new Map(); }
  getItem(k) { return this.map.has(k) ? this.map.get(k) : null; }
  setItem(k, v) { this.map.set(k, String(v)); }
  removeItem(k) { this.map.delete(k); }
}

const b64url = (s) => Buffer.from(s, 'utf8').toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');

export function makeJwt(payload) {
  return `${b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64url(JSON.stringify(payload))}.sig`;
}

export async function waitFor(pred, { timeout = 3000, what = 'condition' } = {}) {
  const start = Date.now();
  for (;;) {
    const v = pred();
    if (v) return v;
    if (Date.now() - start > timeout) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class FakeLocks {
  constructor() {
    this.held = new Set();
    this.queues = new Map();
  }
  async request(name, opts, cb) {
    if (typeof opts === 'function') { cb = opts; opts = {}; }
    if (this.held.has(name)) {
      if (opts.ifAvailable) return cb(null);
      await new Promise((resolve, reject) => {
        const q = this.queues.get(name) || [];
        this.queues.set(name, q);
        const entry = { resolve };
        q.push(entry);
        if (opts.signal) {
          opts.signal.addEventListener('abort', () => {
            const i = q.indexOf(entry);
            if (i >= 0) q.splice(i, 1);
            reject(Object.assign(new Error('aborted'), { name: 'AbortError' }));
          });
        }
      });
    }
    this.held.add(name);
    try {
      return await cb({ name, mode: 'exclusive' });
    } finally {
      this.held.delete(name);
      const q = this.queues.get(name);
      const next = q && q.shift();
      if (next) next.resolve();
    }
  }
}

export class FakeServer {
  constructor({ base = 'https://tidings.test', tokens = [] } = {}) {
    this.base = base;
    this.items = [];
    this.valid = new Set(tokens);
    this.requests = [];
    this.eventSources = [];
    this.sockets = [];
    this.pollWaiters = new Set();
    this.sseMode = 'normal'; // 'normal' | 'buffering' (accepts, sends nothing) | 'down'
    this.resyncOver = 500;
    this.restDown = false;
    const server = this;

    this.fetch = async (url, init = {}) => server._fetch(url, init);

    this.EventSource = class FakeEventSource {
      constructor(url) {
        this.url = url;
        this.readyState = 0;
        this.listeners = {};
        this.onerror = null;
        this.onopen = null;
        server.eventSources.push(this);
        setTimeout(() => server._openSse(this), 1);
      }
      get params() { return new URL(this.url).searchParams; }
      addEventListener(type, fn) { (this.listeners[type] ||= []).push(fn); }
      close() { this.readyState = 2; }
      emit(type, data, id = '') {
        if (this.readyState === 2) return;
        const ev = { data: typeof data === 'string' ? data : JSON.stringify(data), lastEventId: String(id) };
        for (const fn of this.listeners[type] || []) fn(ev);
      }
      fail() {
        if (this.readyState === 2) return;
        this.readyState = 0;
        if (this.onerror) this.onerror({});
      }
    };

    this.WebSocket = class FakeWebSocket {
      constructor(url) {
        this.url = url;
        this.readyState = 0;
        this.sent = [];
        server.sockets.push(this);
        setTimeout(() => server._openWs(this), 1);
      }
      get params() { return new URL(this.url).searchParams; }
      send(text) {
        this.sent.push(text);
        if (JSON.parse(text).type === 'ping') this.push({ type: 'pong' });
      }
      close() { this.serverClose(1000); }
      push(obj) { if (this.readyState === 1 && this.onmessage) this.onmessage({ data: JSON.stringify(obj) }); }
      serverClose(code) {
        if (this.readyState >= 2) return;
        this.readyState = 3;
        if (this.onclose) this.onclose({ code });
      }
    };
  }

  /** The latest seq ever given: a deleted or pruned seq stays used, as on the server. */
  latest() { return Math.max(this.top || 0, this.floor || 0, this.items.length ? this.items[this.items.length - 1].seq : 0); }

  /** Retention: removes every notification up to `upto`, which becomes the history floor. */
  prune(upto) {
    this.items = this.items.filter((n) => n.seq > upto);
    this.floor = Math.max(this.floor || 0, upto);
  }
  unread() { return this.items.filter((n) => !n.read_at).length; }
  openStreams() { return this.eventSources.filter((e) => e.readyState !== 2); }
  openSockets() { return this.sockets.filter((s) => s.readyState === 1); }

  /** Commits a notification and delivers it live (unless `live: false`, i.e. the frame is lost). */
  publish(fields = {}, { live = true } = {}) {
    const seq = this.latest() + 1;
    const n = {
      id: `00000000-0000-4000-8000-${String(seq).padStart(12, '0')}`,
      seq,
      type: 'test.event',
      title: `Notification ${seq}`,
      body: null,
      data: null,
      link: null,
      created_at: new Date().toISOString(),
      read_at: null,
      ...fields,
    };
    this.items.push(n);
    this.top = seq;
    if (live) {
      for (const es of this.openStreams()) {
        if (es.live) {
          es.emit('notification', n, seq);
          es.emit('unread', { unread: this.unread(), seq }, seq);
        }
      }
      for (const ws of this.openSockets()) {
        ws.push({ type: 'notification', notification: n });
        ws.push({ type: 'unread', unread: this.unread(), seq });
      }
    }
    this._wakePolls();
    return n;
  }

  /** Deletes notifications by seq and tells open streams and sockets (unless `live: false`). */
  remove(seqs, { live = true } = {}) {
    const gone = this.items.filter((n) => seqs.includes(n.seq));
    this.items = this.items.filter((n) => !seqs.includes(n.seq));
    const change = { change: 'deleted', ids: gone.map((n) => n.id), seqs: gone.map((n) => n.seq), unread: this.unread(), seq: this.latest() };
    if (live) {
      for (const es of this.openStreams()) if (es.live) es.emit('changed', change);
      for (const ws of this.openSockets()) ws.push({ type: 'changed', ...change });
    }
    return change;
  }

  publishMany(count, fields) {
    const out = [];
    for (let i = 0; i < count; i++) out.push(this.publish(fields, { live: false }));
    return out;
  }

  _wakePolls() { for (const w of [...this.pollWaiters]) w(); }

  _auth(tokenFromQuery, headers) {
    const h = headers && (headers.Authorization || headers.authorization);
    const token = tokenFromQuery ?? (h ? h.replace(/^Bearer /, '') : null);
    return token && this.valid.has(token);
  }

  _openSse(es) {
    if (es.readyState === 2) return;
    if (this.sseMode === 'down' || !this._auth(es.params.get('access_token'))) {
      es.readyState = 2;
      if (es.onerror) es.onerror({});
      return;
    }
    es.readyState = 1;
    if (es.onopen) es.onopen({});
    if (this.sseMode === 'buffering') return;
    const after = Number(es.params.get('after') ?? this.latest());
    if (after < (this.floor || 0)) es.emit('truncated', { floor: this.floor }, this.floor);
    if (after > this.latest() && !this.noAhead) es.emit('ahead', { seq: this.latest() }, this.latest());
    es.emit('unread', { unread: this.unread(), seq: this.latest() }, after);
    const replay = this.items.filter((n) => n.seq > after);
    if (replay.length > this.resyncOver) {
      es.emit('resync', { seq: this.latest() });
    } else {
      for (const n of replay) es.emit('notification', n, n.seq);
    }
    es.live = true;
  }

  _openWs(ws) {
    if (!this._auth(ws.params.get('access_token'))) {
      ws.readyState = 3;
      if (ws.onclose) ws.onclose({ code: 1006 });
      return;
    }
    ws.readyState = 1;
    if (ws.onopen) ws.onopen({});
    const after = Number(ws.params.get('after') ?? this.latest());
    if (after < (this.floor || 0)) ws.push({ type: 'truncated', floor: this.floor });
    if (after > this.latest() && !this.noAhead) ws.push({ type: 'ahead', seq: this.latest() });
    ws.push({ type: 'unread', unread: this.unread(), seq: this.latest() });
    const replay = this.items.filter((n) => n.seq > after);
    if (replay.length > this.resyncOver) ws.push({ type: 'resync', seq: this.latest() });
    else for (const n of replay) ws.push({ type: 'notification', notification: n });
  }

  _json(status, body, extra = {}) {
    return new Response(body == null ? null : JSON.stringify(body), {
      status,
      headers: { 'content-type': status >= 400 ? 'application/problem+json' : 'application/json', ...extra },
    });
  }

  async _fetch(url, init) {
    const u = new URL(url);
    const body = init.body ? JSON.parse(init.body) : undefined;
    const method = init.method || 'GET';
    const q = Object.fromEntries(u.searchParams);
    this.requests.push({ method, path: u.pathname, query: q, body, auth: init.headers && init.headers.Authorization });
    await new Promise((r) => setTimeout(r, 1));
    if (this.restDown) throw new TypeError('fetch failed');
    if (!this._auth(null, init.headers)) return this._json(401, { type: 'about:blank', title: 'Unauthorized', status: 401, detail: 'The token is invalid.' });
    const page = (list) => ({ notifications: list, unread: this.unread(), seq: this.latest() });
    if (method === 'GET' && u.pathname === '/v1/notifications') {
      const limit = Number(q.limit ?? 50);
      if (q.after !== undefined) {
        const body = page(this.items.filter((n) => n.seq > Number(q.after)).slice(0, limit));
        body.floor = this.floor || 0;
        if (Number(q.after) < body.floor) body.truncated = true;
        if (Number(q.after) > this.latest() && !this.noAhead) body.ahead = true;
        return this._json(200, body);
      }
      const before = q.before !== undefined ? Number(q.before) : Infinity;
      return this._json(200, page(this.items.filter((n) => n.seq < before).reverse().slice(0, limit)));
    }
    if (u.pathname === '/v1/preferences') {
      this.prefs ||= { version: 0, doc: { rules: [], quiet_hours: null } };
      const tag = () => ({ ETag: `"${this.prefs.version}"` });
      if (method === 'GET') return this._json(200, this.prefs.doc, tag());
      const ifMatch = init.headers && init.headers['If-Match'];
      if (ifMatch && ifMatch !== `"${this.prefs.version}"`) return this._json(412, { title: 'Precondition failed', status: 412 }, tag());
      this.prefs = { version: this.prefs.version + 1, doc: body };
      for (const es of this.openStreams()) if (es.live) es.emit('preferences', { version: this.prefs.version, preferences: body });
      return this._json(200, body, tag());
    }
    if (method === 'GET' && u.pathname === '/v1/notifications/unread-count') {
      return this._json(200, { unread: this.unread(), seq: this.latest() });
    }
    if (method === 'POST' && u.pathname === '/v1/notifications/read') {
      const now = new Date().toISOString();
      for (const n of this.items) {
        if ((body.ids && body.ids.includes(n.id)) || (body.up_to !== undefined && n.seq <= body.up_to)) n.read_at ||= now;
      }
      for (const es of this.openStreams()) if (es.live) es.emit('unread', { unread: this.unread(), seq: this.latest() });
      this._wakePolls();
      return this._json(200, { unread: this.unread(), seq: this.latest() });
    }
    if (method === 'GET' && u.pathname === '/v1/notifications/poll') {
      if (this.instant204) return new Response(null, { status: 204 });
      const after = Number(q.after);
      const timeoutMs = Number(q.timeout ?? 30) * 1000;
      const answer = () => {
        const list = this.items.filter((n) => n.seq > after);
        if (after > this.latest() && !this.noAhead) return this._json(200, { ...page(list), ahead: true });
        if (list.length || (q.unread !== undefined && Number(q.unread) !== this.unread())) return this._json(200, page(list));
        return null;
      };
      const now = answer();
      if (now) return now;
      return new Promise((resolve, reject) => {
        const done = (res) => { this.pollWaiters.delete(wake); clearTimeout(timer); resolve(res); };
        const wake = () => { const a = answer(); if (a) done(a); };
        const timer = setTimeout(() => done(new Response(null, { status: 204 })), timeoutMs);
        this.pollWaiters.add(wake);
        if (init.signal) {
          init.signal.addEventListener('abort', () => {
            this.pollWaiters.delete(wake);
            clearTimeout(timer);
            reject(Object.assign(new Error('aborted'), { name: 'AbortError' }));
          });
        }
      });
    }
    return this._json(404, { title: 'Not Found', status: 404 });
  }
}
