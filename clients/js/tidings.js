// Tidings browser client: SSE / WebSocket / long-poll with a persisted cursor,
// duplicate and gap handling, capped backoff, and one live connection per
// browser (leader tab over BroadcastChannel). Zero dependencies, ES module.
//
// The pure pieces (JWT decoding, cursor store, SeqTracker, backoff, frame
// parsing, fallback policy, heartbeat election) are exported on their own so
// they can be tested without a browser.

export const VERSION = '0.1.0';

export const STATES = Object.freeze(['connecting', 'live', 'reconnecting', 'offline', 'follower', 'closed']);
export const TRANSPORTS = Object.freeze(['sse', 'websocket', 'longpoll']);
export const PAGE_LIMIT = 200;

const g = globalThis;
const nowMs = () => Date.now();

// ---------------------------------------------------------------------------
// JWT, URLs, keys
// ---------------------------------------------------------------------------

/** Decodes a JWT payload without verifying it. Returns an object or null. */
export function decodeJwtPayload(token) {
  if (typeof token !== 'string') return null;
  const parts = token.split('.');
  if (parts.length < 2 || !parts[1]) return null;
  try {
    let b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    while (b64.length % 4) b64 += '=';
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const payload = JSON.parse(new TextDecoder().decode(bytes));
    return payload && typeof payload === 'object' && !Array.isArray(payload) ? payload : null;
  } catch {
    return null;
  }
}

/** Absolute base URL without a trailing slash. '' or a relative path resolve against location. */
export function normalizeBaseUrl(baseUrl, href = g.location && g.location.href) {
  let b = baseUrl == null ? '' : String(baseUrl).trim();
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(b)) {
    if (!href) {
      if (!b) throw new TypeError('tidings: baseUrl is required outside a browser');
      return b.replace(/\/+$/, '');
    }
    b = new URL(b || '/', href).href;
  }
  return b.replace(/[?#].*$/, '').replace(/\/+$/, '');
}

/** baseUrl + path + query (undefined/null values are left out). */
export function buildUrl(baseUrl, path, query) {
  let url = baseUrl + path;
  if (query) {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null) qs.append(k, String(v));
    const s = qs.toString();
    if (s) url += (url.includes('?') ? '&' : '?') + s;
  }
  return url;
}

export function toWebSocketUrl(httpUrl) {
  return httpUrl.replace(/^http(s?):\/\//i, (_, s) => `ws${s}://`);
}

/** localStorage key of the cursor: one per server and user. */
export function storageKeyFor(baseUrl, user) {
  return `tidings:cursor:${baseUrl}:${user}`;
}

/** BroadcastChannel / Web Lock name: one per server and user. */
export function channelNameFor(baseUrl, user) {
  return `tidings:${baseUrl}:${user}`;
}

// ---------------------------------------------------------------------------
// Cursor persistence
// ---------------------------------------------------------------------------

/** Parses a stored or received seq: a non-negative safe integer, else null. */
export function toSeq(v) {
  if (typeof v === 'string') {
    if (!/^\d+$/.test(v.trim())) return null;
    v = Number(v.trim());
  }
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : null;
}

/**
 * The persisted cursor (last seq delivered), one key per server + user.
 * Works with any Storage-like object ({getItem,setItem,removeItem}); falls
 * back to memory when storage is missing or throws (private mode, quota).
 */
export class CursorStore {
  constructor(storage, key) {
    this.storage = storage || null;
    this.key = key;
    this.memory = null;
  }
  get() {
    if (this.storage && !this.writeFailed) {
      try {
        return toSeq(this.storage.getItem(this.key));
      } catch { /* fall through */ }
    }
    return this.memory;
  }
  set(seq) {
    const v = toSeq(seq);
    if (v === null) return;
    this.memory = v;
    if (this.storage) {
      try {
        this.storage.setItem(this.key, String(v));
        this.writeFailed = false;
      } catch {
        this.writeFailed = true; // memory only until a write succeeds
      }
    }
  }
  clear() {
    this.memory = null;
    if (this.storage) {
      try { this.storage.removeItem(this.key); } catch { /* ignore */ }
    }
  }
}

// ---------------------------------------------------------------------------
// Ordering: duplicates, out-of-order, gaps
// ---------------------------------------------------------------------------

/**
 * Tracks the cursor and delivers notifications exactly once, in seq order.
 *
 * - accept(n): live frames. seq <= cursor or already buffered: duplicate.
 *   seq == cursor + 1: delivered (plus any buffered successors). Beyond:
 *   buffered, and gap() says what to fetch (after=cursor).
 * - acceptPage(list): an authoritative page from `GET ?after=cursor`. A hole
 *   inside it is confirmed by the server (no longer retained) and skipped.
 * - cursor null means "not anchored yet": the first notification anchors it.
 */
export class SeqTracker {
  constructor(cursor = null, { maxPending = 1000 } = {}) {
    this.cursor = toSeq(cursor);
    this.pending = new Map();
    this.maxPending = maxPending;
    this.highestSeen = this.cursor ?? 0;
    this.duplicates = 0;
    this.skipped = 0;
  }

  accept(n) {
    const res = { delivered: [], duplicate: false, gap: null };
    const seq = n ? toSeq(n.seq) : null;
    if (seq === null || seq < 1) return res;
    if (seq > this.highestSeen) this.highestSeen = seq;
    if (this.cursor === null) this.cursor = seq - 1;
    if (seq <= this.cursor || this.pending.has(seq)) {
      this.duplicates++;
      res.duplicate = true;
      res.gap = this.gap();
      return res;
    }
    if (seq === this.cursor + 1) {
      this.cursor = seq;
      res.delivered.push(n);
      this._drain(res.delivered);
    } else {
      this.pending.set(seq, n);
      if (this.pending.size > this.maxPending) {
        // Drop the newest: highestSeen keeps it in the catch-up target, so it is re-fetched.
        this.pending.delete(Math.max(...this.pending.keys()));
      }
    }
    res.gap = this.gap();
    return res;
  }

  acceptPage(list) {
    const res = { delivered: [], duplicates: 0, skipped: 0 };
    const page = (list || []).filter((n) => n && toSeq(n.seq) !== null && n.seq >= 1);
    if (!page.length) return res;
    const bySeq = new Map();
    for (const n of page) bySeq.set(n.seq, n);
    const maxPage = Math.max(...bySeq.keys());
    if (maxPage > this.highestSeen) this.highestSeen = maxPage;
    // Buffered live items below the page's end are ordered together with it.
    for (const [seq, n] of this.pending) {
      if (seq < maxPage) {
        if (!bySeq.has(seq)) bySeq.set(seq, n);
        this.pending.delete(seq);
      }
    }
    const seqs = [...bySeq.keys()].sort((a, b) => a - b);
    if (this.cursor === null) this.cursor = seqs[0] - 1;
    for (const seq of seqs) {
      if (seq <= this.cursor) { res.duplicates++; this.duplicates++; continue; }
      if (seq > this.cursor + 1) {
        const hole = seq - this.cursor - 1;
        res.skipped += hole;
        this.skipped += hole;
      }
      this.cursor = seq;
      this.pending.delete(seq);
      res.delivered.push(bySeq.get(seq));
    }
    this._drain(res.delivered);
    return res;
  }

  /** Gives up on the current hole: delivers what is buffered, in order. */
  skipGap() {
    const delivered = [];
    if (!this.pending.size) return delivered;
    const first = Math.min(...this.pending.keys());
    this.skipped += first - this.cursor - 1;
    this.cursor = first - 1;
    this._drain(delivered);
    return delivered;
  }

  /** Moves the cursor forward without delivering (never backwards). */
  advanceTo(seq) {
    const v = toSeq(seq);
    if (v === null || (this.cursor !== null && v <= this.cursor)) return [];
    this.cursor = v;
    if (v > this.highestSeen) this.highestSeen = v;
    for (const k of [...this.pending.keys()]) if (k <= v) this.pending.delete(k);
    const delivered = [];
    this._drain(delivered);
    return delivered;
  }

  /** Sets the cursor unconditionally (e.g. the server's seq went backwards). */
  reset(seq) {
    this.cursor = toSeq(seq);
    this.pending.clear();
    this.highestSeen = this.cursor ?? 0;
  }

  /** null, or { after, before }: seqs after+1 .. before-1 are missing. */
  gap() {
    if (!this.pending.size || this.cursor === null) return null;
    return { after: this.cursor, before: Math.min(...this.pending.keys()) };
  }

  hasGap() { return this.pending.size > 0; }

  _drain(out) {
    while (this.pending.has(this.cursor + 1)) {
      const n = this.pending.get(this.cursor + 1);
      this.pending.delete(this.cursor + 1);
      this.cursor += 1;
      out.push(n);
    }
    for (const k of [...this.pending.keys()]) if (k <= this.cursor) this.pending.delete(k);
  }
}

// ---------------------------------------------------------------------------
// Backoff
// ---------------------------------------------------------------------------

/** Full jitter: uniform in [0, min(cap, base * 2^attempt)). */
export function backoffDelay(attempt, { baseMs = 500, capMs = 30000, random = Math.random } = {}) {
  const a = Math.max(0, Math.floor(Number(attempt)) || 0);
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(a, 52));
  const r = Math.min(Math.max(Number(random()) || 0, 0), 1);
  return Math.max(0, Math.min(Math.floor(r * ceiling), ceiling - 1));
}

/** Reasons a connection ends that call for a prompt reconnect. */
const PROMPT_REASONS = new Set(['token-expired', 'restart', 'too-slow', 'manual']);

/**
 * Delay before reconnecting. Prompt reasons (token expired, 1012 restart,
 * 4008 too slow, a healthy SSE stream that ended) reconnect within `promptMs`
 * on the first retry; anything else, or repeated failures, use full-jitter
 * backoff on `attempt`.
 */
export function reconnectDelay({ reason, healthy = false, attempt = 0 }, { baseMs = 500, capMs = 30000, promptMs = 250, random = Math.random } = {}) {
  const prompt = PROMPT_REASONS.has(reason) || (reason === 'ended' && healthy);
  if (prompt && attempt === 0) return Math.floor(Math.min(Math.max(Number(random()) || 0, 0), 1) * promptMs);
  return backoffDelay(attempt, { baseMs, capMs, random });
}

/** WebSocket close code to an end reason. */
export function closeCodeReason(code, healthy = false) {
  switch (code) {
    case 4001: return 'token-expired';
    case 4008: return 'too-slow';
    case 1012: return 'restart';
    case 1000:
    case 1001: return healthy ? 'ended' : 'error';
    case 4401:
    case 4403: return 'unauthorized';
    default: return 'error';
  }
}

// ---------------------------------------------------------------------------
// Transport choice and the auto fallback rule
// ---------------------------------------------------------------------------

/** Which transport to open, given what was asked and what the environment has. */
export function chooseTransport(requested, { hasEventSource, hasWebSocket, sseDisabled = false }) {
  switch (requested) {
    case 'websocket': return hasWebSocket ? 'websocket' : 'longpoll';
    case 'longpoll': return 'longpoll';
    case 'sse': return hasEventSource ? 'sse' : 'longpoll';
    default: return hasEventSource && !sseDisabled ? 'sse' : 'longpoll';
  }
}

/**
 * `auto` gives up on SSE after `maxStrikes` consecutive attempts that never
 * received a frame (the opening `unread`) within the open timeout while the
 * REST API itself answered. That pattern is a buffering proxy or a broken
 * stream path. Failures while the server is unreachable do not count: those
 * are outages, and long-poll would not help.
 */
export class SseFallbackPolicy {
  constructor({ maxStrikes = 3 } = {}) {
    this.maxStrikes = maxStrikes;
    this.strikes = 0;
    this.tripped = false;
  }
  /** Returns true when auto should switch to long-poll. */
  record({ healthy, serverReachable }) {
    if (healthy) { this.strikes = 0; return false; }
    if (serverReachable !== true) return this.tripped;
    this.strikes++;
    if (this.strikes >= this.maxStrikes) this.tripped = true;
    return this.tripped;
  }
}

// ---------------------------------------------------------------------------
// Frames: one shape for every transport
// ---------------------------------------------------------------------------

/**
 * Frames: {type:'notification', notification}, {type:'unread', unread, seq},
 * {type:'changed', change, ids, seqs, unread, seq}, {type:'resync', seq},
 * {type:'truncated', floor}, {type:'ahead', seq}, {type:'token-expired'}, {type:'pong'}.
 * `truncated` comes first when the cursor was below the server's history floor:
 * retention removed every seq up to `floor` before this client saw it. `ahead` comes first
 * when the cursor was above the user's latest seq (a restored database): the server goes
 * on from `seq`, and so must the cursor.
 */
export function normalizeNotification(raw) {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) return null;
  const seq = toSeq(raw.seq);
  if (seq === null || seq < 1) return null;
  return {
    ...raw,
    id: raw.id == null ? '' : String(raw.id),
    seq,
    type: raw.type == null ? '' : String(raw.type),
    title: raw.title == null ? '' : String(raw.title),
    body: raw.body ?? null,
    data: raw.data ?? null,
    link: raw.link ?? null,
    created_at: raw.created_at ?? null,
    read_at: raw.read_at ?? null,
    archived_at: raw.archived_at ?? null,
  };
}

const CHANGES = ['archived', 'unarchived', 'deleted'];

/** A `changed` event's body (any transport) to a frame, or null. */
export function changedFrame(obj) {
  if (!obj || typeof obj !== 'object' || !CHANGES.includes(obj.change)) return null;
  const ids = Array.isArray(obj.ids) ? obj.ids.map(String) : [];
  const seqs = Array.isArray(obj.seqs) ? obj.seqs.map(toSeq).filter((x) => x !== null) : [];
  return { type: 'changed', change: obj.change, ids, seqs, unread: toSeq(obj.unread), seq: toSeq(obj.seq) };
}

function parseJson(text) {
  if (typeof text !== 'string') return text && typeof text === 'object' ? text : null;
  try { return JSON.parse(text); } catch { return null; }
}

function unreadFrame(obj) {
  if (!obj || typeof obj !== 'object') return null;
  const unread = toSeq(obj.unread);
  const seq = toSeq(obj.seq);
  if (unread === null) return null;
  return { type: 'unread', unread, seq: seq ?? null };
}

/** An SSE event (event name, data, lastEventId) to a frame, or null. */
export function parseSseEvent(event, data, lastEventId) {
  switch (event) {
    case 'notification': {
      const obj = parseJson(data);
      if (obj && typeof obj === 'object' && obj.seq == null && lastEventId) obj.seq = lastEventId;
      const n = normalizeNotification(obj);
      return n ? { type: 'notification', notification: n } : null;
    }
    case 'unread': return unreadFrame(parseJson(data));
    case 'changed': return changedFrame(parseJson(data));
    case 'resync': {
      const obj = parseJson(data);
      const seq = obj ? toSeq(obj.seq) : null;
      return { type: 'resync', seq };
    }
    case 'truncated': return truncatedFrame(parseJson(data));
    case 'ahead': return aheadFrame(parseJson(data));
    case 'preferences': return preferencesFrame(parseJson(data));
    case 'token-expired': return { type: 'token-expired' };
    default: return null;
  }
}

/** A `preferences` event's body (`{version, preferences}`) to a frame, or null. */
export function preferencesFrame(obj) {
  if (!obj || typeof obj !== 'object' || !obj.preferences || typeof obj.preferences !== 'object') return null;
  const version = toSeq(obj.version);
  return version === null ? null : { type: 'preferences', version, preferences: obj.preferences };
}

/** The version in an ETag header (`"3"`), or null. */
function etagVersion(etag) {
  const m = /^(?:W\/)?"(\d+)"$/.exec(String(etag || '').trim());
  return m ? Number(m[1]) : null;
}

function truncatedFrame(obj) {
  const floor = obj ? toSeq(obj.floor) : null;
  return floor === null ? null : { type: 'truncated', floor };
}

function aheadFrame(obj) {
  const seq = obj && typeof obj === 'object' ? toSeq(obj.seq) : null;
  return seq === null ? null : { type: 'ahead', seq };
}

/** A WebSocket text frame to a frame, or null. */
export function parseWsMessage(text) {
  const obj = parseJson(text);
  if (!obj || typeof obj !== 'object') return null;
  switch (obj.type) {
    case 'notification': {
      const n = normalizeNotification(obj.notification);
      return n ? { type: 'notification', notification: n } : null;
    }
    case 'unread': return unreadFrame(obj);
    case 'changed': return changedFrame(obj);
    case 'resync': return { type: 'resync', seq: toSeq(obj.seq) };
    case 'truncated': return truncatedFrame(obj);
    case 'ahead': return aheadFrame(obj);
    case 'preferences': return preferencesFrame(obj);
    case 'pong': return { type: 'pong' };
    case 'token-expired': return { type: 'token-expired' };
    default: return null;
  }
}

/**
 * `{notifications, unread, seq}` (list, page and poll bodies), notifications sorted by seq;
 * `floor` when the server sent one, `truncated` (true when the cursor was below it), and
 * `ahead` (true when the cursor was above the latest seq, `seq`).
 */
export function parsePage(body) {
  const obj = parseJson(body) || {};
  const list = Array.isArray(obj.notifications) ? obj.notifications.map(normalizeNotification).filter(Boolean) : [];
  return {
    notifications: list,
    unread: toSeq(obj.unread),
    seq: toSeq(obj.seq),
    floor: toSeq(obj.floor),
    truncated: obj.truncated === true,
    ahead: obj.ahead === true,
  };
}

/** A long-poll answer to frames: 204 gives none. */
export function parsePollResponse(status, body) {
  if (status === 204 || body == null) return [];
  const page = parsePage(body);
  const frames = page.truncated && page.floor !== null ? [{ type: 'truncated', floor: page.floor }] : [];
  if (page.ahead && page.seq !== null) frames.push({ type: 'ahead', seq: page.seq });
  frames.push(...page.notifications
    .slice()
    .sort((a, b) => a.seq - b.seq)
    .map((n) => ({ type: 'notification', notification: n })));
  const obj = parseJson(body) || {};
  if (Array.isArray(obj.changes)) for (const c of obj.changes) { const f = changedFrame(c); if (f) frames.push(f); }
  if (page.unread !== null) frames.push({ type: 'unread', unread: page.unread, seq: page.seq });
  return frames;
}

// ---------------------------------------------------------------------------
// Leader election fallback (when the Web Locks API is missing)
// ---------------------------------------------------------------------------

/**
 * Heartbeat election over a broadcast bus, as a pure state machine: feed it
 * messages and clock ticks, send what it returns. The leader announces itself
 * every `heartbeatMs`; a follower that hears nothing for `timeoutMs` (or gets
 * the leader's `bye`) takes over. A new tab asks `hb?` and claims after
 * `claimMs` if no one answers. Two leaders resolve to the one that has led
 * longer (then the lower id), so a late claim never unseats a working leader.
 */
export class HeartbeatElection {
  constructor({ id, heartbeatMs = 1000, timeoutMs = 5000, claimMs = 1200 } = {}) {
    this.id = String(id ?? Math.random().toString(36).slice(2));
    this.heartbeatMs = heartbeatMs;
    this.timeoutMs = timeoutMs;
    this.claimMs = claimMs;
    this.role = 'idle';
    this.leaderId = null;
    this.lastHeard = 0;
    this.lastSent = -Infinity;
    this.since = 0;
    this.leaderSince = 0;
  }
  _hb(now) { this.lastSent = now; return { t: 'hb', from: this.id, since: this.leaderSince }; }
  _lead(now) { this.role = 'leader'; this.leaderId = this.id; this.leaderSince = now; return [this._hb(now)]; }
  /** Does the other leader (msg) win over this one? */
  _yields(msg) {
    const since = Number(msg.since);
    if (Number.isFinite(since) && since !== this.leaderSince) return since < this.leaderSince;
    return String(msg.from) < this.id;
  }
  start(now) {
    this.role = 'candidate';
    this.since = now;
    this.leaderId = null;
    return [{ t: 'hb?', from: this.id }];
  }
  receive(msg, now) {
    if (!msg || msg.from === this.id || this.role === 'idle' || this.role === 'stopped') return [];
    switch (msg.t) {
      case 'hb':
        if (this.role === 'leader') {
          if (this._yields(msg)) {
            this.role = 'follower';
            this.leaderId = msg.from;
            this.lastHeard = now;
            return [];
          }
          return [this._hb(now)];
        }
        this.role = 'follower';
        this.leaderId = msg.from;
        this.lastHeard = now;
        return [];
      case 'hb?':
        return this.role === 'leader' ? [this._hb(now)] : [];
      case 'bye':
        if (this.role === 'follower' && msg.from === this.leaderId) return this._lead(now);
        return [];
      default:
        return [];
    }
  }
  tick(now) {
    switch (this.role) {
      case 'leader': return now - this.lastSent >= this.heartbeatMs ? [this._hb(now)] : [];
      case 'candidate': return now - this.since >= this.claimMs ? this._lead(now) : [];
      case 'follower': return now - this.lastHeard >= this.timeoutMs ? this._lead(now) : [];
      default: return [];
    }
  }
  stop() {
    const out = this.role === 'leader' ? [{ t: 'bye', from: this.id }] : [];
    this.role = 'stopped';
    return out;
  }
}

// ---------------------------------------------------------------------------
// Tokens and HTTP
// ---------------------------------------------------------------------------

export class HttpError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.name = 'HttpError';
    this.status = status;
    this.problem = problem || null;
  }
}

/** Caches the token; asks getToken() again when forced, or when `exp` is near. */
export class TokenSource {
  constructor(getToken, { skewMs = 5000, now = nowMs } = {}) {
    if (typeof getToken !== 'function') throw new TypeError('tidings: getToken must be a function');
    this.getToken = getToken;
    this.skewMs = skewMs;
    this.now = now;
    this.token = null;
    this.payload = null;
    this.inflight = null;
    this.calls = 0;
  }
  fresh() {
    if (!this.token) return false;
    const exp = this.payload && Number(this.payload.exp);
    return !exp || exp * 1000 - this.now() > this.skewMs;
  }
  get({ force = false, reason = 'initial' } = {}) {
    if (!force && this.fresh()) return Promise.resolve(this.token);
    if (this.inflight) return this.inflight;
    this.calls++;
    this.inflight = Promise.resolve()
      .then(() => this.getToken({ reason, forceRefresh: force }))
      .then((t) => {
        if (typeof t !== 'string' || !t) throw new Error('tidings: getToken() returned no token');
        this.token = t;
        this.payload = decodeJwtPayload(t);
        return t;
      })
      .finally(() => { this.inflight = null; });
    return this.inflight;
  }
}

async function readProblem(res) {
  try {
    const text = await res.text();
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------
// Transports: each opens one connection and resolves { reason, healthy, duration }
// ---------------------------------------------------------------------------

function openSse(EventSourceImpl, url, { onFrame, onHealthy, openTimeoutMs }) {
  let es = null;
  let done = false;
  let healthy = false;
  let timer = null;
  let resolveFn;
  const started = nowMs();
  const promise = new Promise((r) => { resolveFn = r; });
  const finish = (reason) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    try { es && es.close(); } catch { /* ignore */ }
    resolveFn({ reason, healthy, duration: nowMs() - started });
  };
  try {
    es = new EventSourceImpl(url);
  } catch {
    finish('error');
    return { promise, stop: () => {} };
  }
  timer = setTimeout(() => { if (!healthy) finish('stalled'); }, openTimeoutMs);
  const handler = (name) => (ev) => {
    if (done) return;
    const f = parseSseEvent(name, ev && ev.data, ev && ev.lastEventId);
    if (!f) return;
    if (f.type === 'token-expired') { finish('token-expired'); return; }
    if (!healthy) { healthy = true; clearTimeout(timer); onHealthy(); }
    onFrame(f);
  };
  for (const name of ['notification', 'unread', 'changed', 'resync', 'truncated', 'ahead', 'preferences', 'token-expired']) es.addEventListener(name, handler(name));
  // We reconnect ourselves (fresh token, our cursor, our backoff) instead of
  // letting EventSource retry with a possibly expired token in the URL.
  es.onerror = () => finish(healthy ? 'ended' : 'error');
  return { promise, stop: (reason = 'closed') => finish(reason) };
}

function openWebSocket(WebSocketImpl, url, { onFrame, onHealthy, openTimeoutMs, pingMs }) {
  let ws = null;
  let done = false;
  let healthy = false;
  let timer = null;
  let pinger = null;
  let lastHeard = nowMs();
  let resolveFn;
  const started = nowMs();
  const promise = new Promise((r) => { resolveFn = r; });
  const finish = (reason, code) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    clearInterval(pinger);
    try { if (ws && ws.readyState < 2) ws.close(1000); } catch { /* ignore */ }
    resolveFn({ reason, healthy, duration: nowMs() - started, code });
  };
  try {
    ws = new WebSocketImpl(url);
  } catch {
    finish('error');
    return { promise, stop: () => {}, send: () => false };
  }
  timer = setTimeout(() => { if (!healthy) finish('stalled'); }, openTimeoutMs);
  ws.onopen = () => {
    lastHeard = nowMs();
    pinger = setInterval(() => {
      if (nowMs() - lastHeard > pingMs * 2) { finish('error'); return; }
      try { ws.send('{"type":"ping"}'); } catch { /* close follows */ }
    }, pingMs);
  };
  ws.onmessage = (ev) => {
    if (done) return;
    lastHeard = nowMs();
    const f = parseWsMessage(ev && ev.data);
    if (!f || f.type === 'pong') return;
    if (f.type === 'token-expired') { finish('token-expired'); return; }
    if (!healthy) { healthy = true; clearTimeout(timer); onHealthy(); }
    onFrame(f);
  };
  ws.onclose = (ev) => finish(closeCodeReason(ev && ev.code, healthy), ev && ev.code);
  ws.onerror = () => { /* a close event follows */ };
  return {
    promise,
    stop: (reason = 'closed') => finish(reason),
    send: (obj) => {
      if (done || !ws || ws.readyState !== 1) return false;
      ws.send(JSON.stringify(obj));
      return true;
    },
  };
}

function openLongPoll({ api, getCursor, getUnread, onFrame, onHealthy, timeoutSec, waitIdle }) {
  let done = false;
  let healthy = false;
  let ac = null;
  let pause = null;
  let resolveFn;
  const started = nowMs();
  const promise = new Promise((r) => { resolveFn = r; });
  const finish = (reason, problem) => {
    if (done) return;
    done = true;
    try { ac && ac.abort(); } catch { /* ignore */ }
    if (pause) pause();
    resolveFn({ reason, healthy, duration: nowMs() - started, problem });
  };
  const sleep = (ms) => new Promise((r) => {
    const t = setTimeout(() => { pause = null; r(); }, ms);
    pause = () => { clearTimeout(t); pause = null; r(); };
  });
  (async () => {
    try {
      ac = new AbortController();
      const first = await api('GET', '/v1/notifications/unread-count', { signal: ac.signal });
      if (done) return;
      healthy = true;
      onHealthy();
      const u = unreadFrame(first.body);
      if (u) onFrame(u);
      let quick = 0;
      while (!done) {
        await waitIdle();
        if (done) return;
        const asked = nowMs();
        ac = new AbortController();
        const watchdog = setTimeout(() => ac.abort(), (timeoutSec + 15) * 1000);
        let res;
        try {
          const unread = getUnread();
          res = await api('GET', '/v1/notifications/poll', {
            query: { after: getCursor() ?? 0, unread: unread ?? undefined, timeout: timeoutSec },
            signal: ac.signal,
          });
        } finally {
          clearTimeout(watchdog);
        }
        if (done) return;
        const frames = parsePollResponse(res.status, res.body);
        for (const f of frames) onFrame(f);
        // Answers with nothing new that come back at once (a proxy, a misbehaving
        // server) must not turn into a busy loop.
        if (!frames.some((f) => f.type === 'notification') && nowMs() - asked < 500) {
          quick++;
          await sleep(Math.min(250 * 2 ** quick, 8000));
        } else {
          quick = 0;
        }
      }
    } catch (e) {
      // A 401 from `api` was refused again with a fresh token: the token is not the problem
      // of the moment but the user's (see TidingsClient._refused).
      if (e && e.status === 401) finish('refused', e.problem);
      else finish('error');
    }
  })();
  return { promise, stop: (reason = 'closed') => finish(reason) };
}

// ---------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------

const DEFAULTS = {
  transport: 'auto',
  history: 'latest', // first connect only: 'latest' | 'all' | 'none'
  historyLimit: 50,
  shareConnection: true,
  openTimeoutMs: 5000,
  sseStrikes: 3,
  backoffBaseMs: 500,
  backoffCapMs: 30000,
  promptMs: 250,
  stableMs: 5000,
  pollTimeoutSec: 30,
  wsPingMs: 20000,
  lagCheckMs: 3000,
  heartbeatMs: 1000,
  leaderTimeoutMs: 5000,
  leaderClaimMs: 1200,
};

function randomId() {
  if (g.crypto && typeof g.crypto.randomUUID === 'function') return g.crypto.randomUUID();
  return `${nowMs().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

function safeCall(fn, ...args) {
  if (typeof fn !== 'function') return;
  try {
    fn(...args);
  } catch (e) {
    // Surface the app's error without breaking delivery.
    setTimeout(() => { throw e; }, 0);
  }
}

export class TidingsClient {
  constructor(options = {}) {
    const o = { ...DEFAULTS, ...options };
    this.options = o;
    this.baseUrl = normalizeBaseUrl(o.baseUrl);
    this._tokens = new TokenSource(o.getToken);
    this._fetch = o.fetch || (g.fetch ? g.fetch.bind(g) : null);
    this._EventSource = 'EventSource' in options ? options.EventSource : g.EventSource;
    this._WebSocket = 'WebSocket' in options ? options.WebSocket : g.WebSocket;
    this._BroadcastChannel = 'BroadcastChannel' in options ? options.BroadcastChannel : g.BroadcastChannel;
    this._locks = 'locks' in options ? options.locks : g.navigator && g.navigator.locks;
    this._storage = 'storage' in options ? options.storage : safeLocalStorage();
    this._random = o.random || Math.random;
    this._fallback = new SseFallbackPolicy({ maxStrikes: o.sseStrikes });

    this.id = randomId();
    this.user = null;
    this._state = 'connecting';
    this._role = null;
    this._transport = null;
    this._leaderState = null;
    this._unread = null;
    this._unreadSeq = -1;
    /** `{status, detail}` once the server refused a fresh token (state `unauthorized`). */
    this._authError = null;
    this._probeProblem = null;
    /** The highest history floor reported to onTruncated (0: none). */
    this._floor = 0;
    this._tracker = new SeqTracker(null);
    // Seqs a `changed` event deleted: one that arrives after its deletion (a replay read
    // before it, another replica's event late) moves the cursor but is not shown.
    this._deleted = new Set();
    this._store = null;
    this._closed = false;
    this._epoch = 0;
    this._conn = null;
    this._wake = null;
    this._catching = null;
    this._catchTarget = 0;
    this._lagTimer = null;
    this._timers = new Set();
    this._listeners = [];
    this._bc = null;
    this._election = null;
    this._releaseLock = null;
    this._lockAbort = null;

    this.ready = this._init();
    this.ready.catch(() => {});
  }

  // ---- public surface ------------------------------------------------------

  get state() { return this._state; }
  get cursor() { return this._tracker.cursor; }
  /** Transport of the live connection: this tab's, or the leader's when a follower. */
  get transport() { return this._transport; }
  get role() { return this._role; }
  get unread() { return this._unread; }
  /** The leader's state as last broadcast (equals `state` in the leader). */
  get leaderState() { return this._role === 'leader' ? this._state : this._leaderState; }

  /**
   * The user's preferences (mute rules, quiet hours): resolves to {preferences, version}.
   * Pass `version` to setPreferences so a write another tab made first is not overwritten.
   */
  async getPreferences() {
    const res = await this._api('GET', '/v1/preferences');
    return { preferences: res.body, version: etagVersion(res.etag) };
  }

  /**
   * Replaces the user's preferences; resolves to {preferences, version}. With `{ version }`
   * it rejects with an HttpError of status 412 when they changed since that version (another
   * tab wrote first): read them again. Every tab hears `onPreferences`.
   */
  async setPreferences(preferences, { version } = {}) {
    const headers = version == null ? undefined : { 'If-Match': `"${version}"` };
    const res = await this._api('PUT', '/v1/preferences', { body: preferences, headers });
    return { preferences: res.body, version: etagVersion(res.etag) };
  }

  /** Marks notifications read over REST; resolves to {unread, seq}. */
  async markRead(ids) {
    const list = (Array.isArray(ids) ? ids : [ids]).filter((x) => x != null && x !== '').map(String);
    if (!list.length) return { unread: this._unread, seq: this._unreadSeq < 0 ? null : this._unreadSeq };
    await this.ready;
    let last = null;
    for (let i = 0; i < list.length; i += 1000) {
      const chunk = list.slice(i, i + 1000);
      const res = await this._api('POST', '/v1/notifications/read', { body: { ids: chunk } });
      last = unreadFrame(res.body);
      if (last) this._setUnread(last.unread, last.seq);
    }
    this._announceRead({ ids: list });
    return last ? { unread: last.unread, seq: last.seq } : null;
  }

  /** Marks everything up to the current cursor read (never what has not been delivered yet). */
  async markAllRead() {
    await this.ready;
    const upTo = this._tracker.cursor;
    if (upTo === null) return { unread: this._unread, seq: null };
    const res = await this._api('POST', '/v1/notifications/read', { body: { up_to: upTo } });
    const u = unreadFrame(res.body);
    if (u) this._setUnread(u.unread, u.seq);
    this._announceRead({ upTo });
    return u ? { unread: u.unread, seq: u.seq } : null;
  }

  /**
   * Archives notifications (which marks them read): ids, or `{ upTo: seq }`. Resolves to
   * {unread, seq}. Every tab (and every other session of the user) hears `onChange`.
   */
  archive(what) { return this._change('archive', what); }

  /** Moves archived notifications back to the inbox view: ids, or `{ upTo: seq }`. */
  unarchive(what) { return this._change('unarchive', what); }

  /** Deletes notifications for good: ids, or `{ upTo: seq }`. Their seqs are never reused. */
  remove(what) { return this._change('delete', what); }

  async _change(action, what) {
    await this.ready;
    const path = `/v1/notifications/${action}`;
    if (what && typeof what === 'object' && !Array.isArray(what) && 'upTo' in what) {
      const upTo = toSeq(what.upTo);
      if (upTo === null) throw new TypeError(`tidings: ${action}: upTo must be a seq`);
      const res = await this._api('POST', path, { body: { up_to: upTo } });
      const u = unreadFrame(res.body);
      if (u) this._setUnread(u.unread, u.seq);
      return u ? { unread: u.unread, seq: u.seq } : null;
    }
    const list = (Array.isArray(what) ? what : [what]).filter((x) => x != null && x !== '').map(String);
    if (!list.length) return { unread: this._unread, seq: this._unreadSeq < 0 ? null : this._unreadSeq };
    let last = null;
    for (let i = 0; i < list.length; i += 1000) {
      const res = await this._api('POST', path, { body: { ids: list.slice(i, i + 1000) } });
      last = unreadFrame(res.body);
      if (last) this._setUnread(last.unread, last.seq);
    }
    return last ? { unread: last.unread, seq: last.seq } : null;
  }

  /**
   * The inbox view (newest first) for rendering a list; does not move the cursor. Archived
   * notifications are left out; `archived: true` lists only them.
   */
  async list({ before, limit = 50, unread, archived } = {}) {
    await this.ready;
    const res = await this._api('GET', '/v1/notifications', {
      query: { before, limit, unread: unread ? 'true' : undefined, archived: archived ? 'true' : undefined },
    });
    const page = parsePage(res.body);
    page.notifications.sort((a, b) => b.seq - a.seq);
    return page;
  }

  /** Reconnects now (e.g. after the app got a new token), skipping any backoff wait. */
  reconnect() {
    if (this._closed || this._role !== 'leader') return;
    if (this._authError) {
      // Stopped on a refused token: start again, with a fresh one from getToken().
      this._authError = null;
      this._tokens.token = null;
      const epoch = ++this._epoch;
      this._leaderLoop(epoch).catch(() => {});
      return;
    }
    if (this._conn) this._conn.stop('manual');
    else if (this._wake) this._wake();
  }

  close() {
    if (this._closed) return;
    this._closed = true;
    this._epoch++;
    if (this._conn) this._conn.stop('closed');
    if (this._wake) this._wake();
    if (this._election) for (const m of this._election.stop()) this._post(m);
    if (this._releaseLock) this._releaseLock();
    if (this._lockAbort) try { this._lockAbort.abort(); } catch { /* ignore */ }
    for (const t of this._timers) clearTimeout(t);
    this._timers.clear();
    clearTimeout(this._lagTimer);
    clearInterval(this._hbTimer);
    for (const [target, type, fn] of this._listeners) target.removeEventListener(type, fn);
    this._listeners = [];
    if (this._bc) try { this._bc.close(); } catch { /* ignore */ }
    this._bc = null;
    this._setState('closed');
  }

  // ---- startup ------------------------------------------------------------

  async _init() {
    await null; // let connect() return before the first callback
    if (this._closed) return;
    this._emitState();
    let attempt = 0;
    let token;
    for (;;) {
      if (this._closed) return;
      try {
        token = await this._tokens.get();
        break;
      } catch {
        this._setState('reconnecting');
        await this._sleep(backoffDelay(attempt++, this._backoffOpts()));
      }
    }
    if (this._closed) return;
    const payload = decodeJwtPayload(token) || {};
    this.user = payload.sub != null ? String(payload.sub) : 'anonymous';
    const key = this.options.storageKey || storageKeyFor(this.baseUrl, this.user);
    this._store = new CursorStore(this._storage, key);
    this._tracker = new SeqTracker(this._store.get());
    this._channelName = channelNameFor(this.baseUrl, this.user);
    this._listenWindow();
    this._elect();
  }

  _elect() {
    const BC = this._BroadcastChannel;
    if (!this.options.shareConnection || typeof BC !== 'function') {
      this._becomeLeader();
      return;
    }
    this._bc = new BC(this._channelName);
    this._bc.onmessage = (ev) => this._onBus(ev && ev.data);
    const locks = this._locks;
    if (locks && typeof locks.request === 'function') {
      const name = `${this._channelName}:leader`;
      const hold = () => new Promise((release) => {
        this._releaseLock = release;
        this._becomeLeader();
      });
      (async () => {
        const got = await locks.request(name, { ifAvailable: true }, (lock) => (lock ? hold().then(() => true) : false));
        if (got || this._closed) return;
        this._becomeFollower();
        this._lockAbort = typeof AbortController === 'function' ? new AbortController() : null;
        await locks.request(name, this._lockAbort ? { signal: this._lockAbort.signal } : {}, () => (this._closed ? null : hold()));
      })().catch(() => {});
      return;
    }
    // Heartbeat fallback.
    this._election = new HeartbeatElection({
      id: this.id,
      heartbeatMs: this.options.heartbeatMs,
      timeoutMs: this.options.leaderTimeoutMs,
      claimMs: this.options.leaderClaimMs,
    });
    for (const m of this._election.start(nowMs())) this._post(m);
    const step = () => {
      if (this._closed) return;
      for (const m of this._election.tick(nowMs())) this._post(m);
      this._syncRole();
    };
    this._hbTimer = setInterval(step, Math.max(50, Math.floor(this.options.heartbeatMs / 2)));
  }

  _syncRole() {
    const r = this._election && this._election.role;
    if (r === 'leader' && this._role !== 'leader') this._becomeLeader();
    else if (r === 'follower' && this._role !== 'follower') this._becomeFollower();
  }

  _becomeLeader() {
    if (this._closed) return;
    this._role = 'leader';
    const epoch = ++this._epoch;
    // Own cursor first (it is what this tab has delivered); the shared one otherwise.
    if (this._tracker.cursor === null) {
      const stored = this._store.get();
      if (stored !== null) this._tracker.reset(stored);
    }
    this._leaderLoop(epoch).catch(() => {});
  }

  _becomeFollower() {
    if (this._closed) return;
    const wasLeader = this._role === 'leader';
    this._role = 'follower';
    this._epoch++;
    if (wasLeader && this._conn) this._conn.stop('closed');
    if (this._wake) this._wake();
    if (this._tracker.cursor === null) {
      const stored = this._store.get();
      if (stored !== null) this._tracker.reset(stored);
    }
    this._setState('follower');
    this._post({ t: 'hello', from: this.id });
  }

  // ---- the leader's connection loop -----------------------------------------

  _backoffOpts() {
    return { baseMs: this.options.backoffBaseMs, capMs: this.options.backoffCapMs, random: this._random };
  }

  _isCurrent(epoch) { return !this._closed && this._role === 'leader' && this._epoch === epoch; }

  async _leaderLoop(epoch) {
    let attempt = 0;
    let tokenReason = null;
    let first = true;
    while (this._isCurrent(epoch)) {
      if (first) this._setState('connecting');
      first = false;
      let outcome;
      let transport = null;
      try {
        if (this._tracker.cursor === null) await this._bootstrap();
        if (!this._isCurrent(epoch)) break;
        transport = chooseTransport(this.options.transport, {
          hasEventSource: typeof this._EventSource === 'function',
          hasWebSocket: typeof this._WebSocket === 'function',
          sseDisabled: this._fallback.tripped,
        });
        this._transport = transport;
        const token = await this._tokens.get(tokenReason ? { force: true, reason: tokenReason } : {});
        tokenReason = null;
        if (!this._isCurrent(epoch)) break;
        const conn = this._open(transport, token, epoch);
        this._conn = conn;
        outcome = await conn.promise;
        if (this._conn === conn) this._conn = null;
      } catch (e) {
        // REST (the first page) answered 401 even with a fresh token from getToken().
        outcome = e && e.status === 401
          ? { reason: 'refused', healthy: false, duration: 0, problem: e.problem }
          : { reason: 'error', healthy: false, duration: 0 };
      }
      if (!this._isCurrent(epoch)) break;
      if (outcome.reason === 'refused') {
        this._refused(outcome.problem);
        break;
      }
      if (outcome.reason === 'token-expired') tokenReason = 'expired';
      else if (outcome.reason === 'unauthorized') tokenReason = 'unauthorized';

      let switched = false;
      if ((transport === 'sse' || transport === 'websocket') && !outcome.healthy && outcome.reason !== 'manual') {
        // Why did it not open? Ask REST: refreshes a rejected token, tells an
        // outage from a stream-only failure, and brings a fresh unread count.
        const probe = await this._probe();
        if (!this._isCurrent(epoch)) break;
        if (probe === 'unauthorized') {
          this._refused(this._probeProblem);
          break;
        }
        if (probe === 'refreshed') tokenReason = null;
        if (transport === 'sse' && this.options.transport === 'auto' && probe !== 'refreshed') {
          const wasTripped = this._fallback.tripped;
          switched = this._fallback.record({ healthy: false, serverReachable: probe === 'ok' }) && !wasTripped;
        }
      } else if (transport === 'sse' && outcome.healthy) {
        this._fallback.record({ healthy: true });
      }

      if (outcome.healthy && outcome.duration >= this.options.stableMs) attempt = 0;
      let delay = switched
        ? 0
        : reconnectDelay({ reason: outcome.reason, healthy: outcome.healthy, attempt }, { ...this._backoffOpts(), promptMs: this.options.promptMs });
      if (outcome.reason === 'manual') delay = 0;
      attempt++;
      this._setState(g.navigator && g.navigator.onLine === false ? 'offline' : 'reconnecting');
      await this._sleep(delay);
    }
  }

  _open(transport, token, epoch) {
    const after = this._tracker.cursor ?? 0;
    const onHealthy = () => {
      if (this._isCurrent(epoch)) this._setState('live');
    };
    const onFrame = (f) => { if (this._isCurrent(epoch)) this._onFrame(f, after); };
    const o = this.options;
    if (transport === 'sse') {
      const url = buildUrl(this.baseUrl, '/v1/notifications/stream', { after, access_token: token });
      return openSse(this._EventSource, url, { onFrame, onHealthy, openTimeoutMs: o.openTimeoutMs });
    }
    if (transport === 'websocket') {
      const url = toWebSocketUrl(buildUrl(this.baseUrl, '/v1/ws', { after, access_token: token }));
      return openWebSocket(this._WebSocket, url, { onFrame, onHealthy, openTimeoutMs: o.openTimeoutMs, pingMs: o.wsPingMs });
    }
    return openLongPoll({
      api: (m, p, opts) => this._api(m, p, opts),
      getCursor: () => this._tracker.cursor,
      getUnread: () => this._unread,
      onFrame,
      onHealthy,
      timeoutSec: o.pollTimeoutSec,
      waitIdle: () => this._catching || Promise.resolve(),
    });
  }

  /** First connect, no stored cursor: decide where the stream starts. */
  async _bootstrap() {
    const mode = this.options.history;
    if (mode === 'all') {
      this._tracker.reset(0);
      this._store.set(0);
      return;
    }
    if (mode === 'none') {
      const res = await this._api('GET', '/v1/notifications/unread-count');
      const u = unreadFrame(res.body);
      this._tracker.reset(u && u.seq !== null ? u.seq : 0);
      this._store.set(this._tracker.cursor);
      if (u) this._setUnread(u.unread, u.seq);
      return;
    }
    const res = await this._api('GET', '/v1/notifications', { query: { limit: this.options.historyLimit } });
    const page = parsePage(res.body);
    const latest = page.seq ?? 0;
    const items = page.notifications.slice().sort((a, b) => a.seq - b.seq);
    if (!items.length) {
      this._tracker.reset(latest);
    } else {
      const max = items[items.length - 1].seq;
      this._tracker.reset(items[0].seq - 1);
      for (const n of this._tracker.acceptPage(items).delivered) this._deliver(n, 'history');
      // max < latest by a little: something committed meanwhile, the stream replays it.
      // By a lot: the server gave the oldest page, so start from the latest instead.
      if (latest - max > this.options.historyLimit) this._tracker.reset(latest);
    }
    this._store.set(this._tracker.cursor);
    if (page.unread !== null) this._setUnread(page.unread, page.seq);
  }

  /** 'ok' | 'refreshed' (a 401 was cured by a new token) | 'unauthorized' | 'unreachable'. */
  async _probe() {
    const before = this._tokens.calls;
    try {
      const after = this._tracker.cursor;
      const res = await this._api('GET', '/v1/notifications/unread-count');
      const u = unreadFrame(res.body);
      if (u) {
        this._checkServerSeq(u.seq, after);
        this._setUnread(u.unread, u.seq);
      }
      return this._tokens.calls > before ? 'refreshed' : 'ok';
    } catch (e) {
      // Only a 2xx proves the stream path (not the server) is at fault.
      if (e && e.status === 401) {
        this._probeProblem = e.problem;
        return 'unauthorized';
      }
      return 'unreachable';
    }
  }

  /**
   * The server refused the token, and then the fresh one getToken() gave: retrying would
   * only be refused again (and look like a network fault for ever). The connection stops in
   * state `unauthorized`, every tab hears `onAuthError({status, detail})` with the server's
   * problem `detail`, and `reconnect()` starts again once the app has a valid session.
   */
  _refused(problem) {
    const p = problem && typeof problem === 'object' ? problem : null;
    const detail = (p && typeof p.detail === 'string' && p.detail)
      || (p && typeof p.title === 'string' && p.title)
      || 'The server refused the token.';
    this._authError = { status: 401, detail };
    this._setState('unauthorized');
    this._post({ t: 'x', detail });
    safeCall(this.options.onAuthError, { ...this._authError });
  }

  // ---- frames and delivery --------------------------------------------------

  _onFrame(f, connectedAfter) {
    switch (f.type) {
      case 'notification':
        this._ingest(f.notification, 'live');
        break;
      case 'unread':
        this._checkServerSeq(f.seq, connectedAfter);
        this._setUnread(f.unread, f.seq);
        this._scheduleLagCheck(f.seq);
        break;
      case 'changed':
        this._onChanged(f);
        this._setUnread(f.unread, f.seq);
        break;
      case 'resync':
        // Without a seq, page until the server says we are at its latest.
        this._catchUp(f.seq ?? Number.MAX_SAFE_INTEGER);
        break;
      case 'truncated':
        this._truncated(f.floor);
        break;
      case 'ahead':
        this._ahead(f.seq);
        break;
      case 'preferences':
        this._onPreferences(f);
        break;
      default:
        break;
    }
  }

  /** The user's preferences changed (this tab, another tab or a service). */
  _onPreferences(f) {
    if (this._role === 'leader') this._post({ t: 'p', f });
    safeCall(this.options.onPreferences, { preferences: f.preferences, version: f.version });
  }

  /**
   * Retention removed every seq up to `floor` before this client saw it: the cursor moves
   * up to the floor (so the jump to the oldest kept notification is no gap to chase), and
   * the page is told, once per floor, so it can say "older notifications were removed".
   */
  _truncated(floor) {
    if (floor === null || floor === undefined) return;
    for (const n of this._tracker.advanceTo(floor)) this._deliver(n, 'catchup');
    if (this._role === 'leader') this._store.set(this._tracker.cursor);
    if (floor <= this._floor) return;
    this._floor = floor;
    if (this._role === 'leader') this._post({ t: 't', floor });
    safeCall(this.options.onTruncated, { floor });
  }

  /**
   * The cursor was above the user's latest seq (the server's history was restored to an
   * earlier point): the server goes on from `seq`, and the cursor moves down to it without
   * reconnecting, so what is published next is delivered rather than taken for a duplicate.
   */
  _ahead(seq) {
    if (seq === null || seq === undefined) return;
    const cursor = this._tracker.cursor;
    if (cursor !== null && seq >= cursor) return;
    this._tracker.reset(seq);
    this._unreadSeq = -1;
    if (this._role === 'leader') {
      this._store.set(seq);
      this._post({ t: 'a', seq });
    }
    safeCall(this.options.onAhead, { seq });
  }

  /** A change to notifications already in the inbox, from any tab or the server. */
  _onChanged(f) {
    if (f.change === 'deleted') {
      for (const s of f.seqs) this._deleted.add(s);
      // Bounded: only seqs near the cursor can still arrive late.
      if (this._deleted.size > 5000) {
        const floor = (this._tracker.cursor ?? 0) - 1000;
        for (const s of this._deleted) if (s < floor) this._deleted.delete(s);
      }
    }
    if (this._role === 'leader') this._post({ t: 'c', f });
    safeCall(this.options.onChange, { change: f.change, ids: f.ids, seqs: f.seqs });
  }

  _ingest(n, source) {
    const r = this._tracker.accept(n);
    for (const d of r.delivered) this._deliver(d, source);
    if (r.gap) this._catchUp(0);
  }

  _deliver(n, source) {
    if (!this._deleted.has(n.seq)) safeCall(this.options.onNotification, n, { source, transport: this._transport });
    if (this._role === 'leader') {
      this._store.set(n.seq);
      this._post({ t: 'n', n, source });
    }
  }

  /** The server's latest seq can never be below a cursor we had before asking. */
  _checkServerSeq(serverSeq, cursorBefore) {
    if (serverSeq === null || serverSeq === undefined || cursorBefore === null || cursorBefore === undefined) return;
    // Already followed (an `ahead` signal moved the cursor down to the server's seq).
    const cursor = this._tracker.cursor ?? cursorBefore;
    if (serverSeq < cursorBefore && serverSeq < cursor && this._role === 'leader') {
      // The server's history was reset (a server that does not say `ahead`, or a REST
      // answer before the stream's): follow it, and reopen from there.
      this._ahead(serverSeq);
      if (this._conn) this._conn.stop('manual');
    }
  }

  _setUnread(unread, seq) {
    if (unread === null || unread === undefined) return;
    const s = seq === null || seq === undefined ? this._unreadSeq : seq;
    if (s < this._unreadSeq) return; // older news (e.g. a slow REST answer)
    this._unreadSeq = s;
    const changed = unread !== this._unread;
    this._unread = unread;
    if (this._role === 'leader') this._post({ t: 'u', unread, seq: s });
    if (changed) safeCall(this.options.onUnread, unread, { seq: s });
  }

  _scheduleLagCheck(seq) {
    if (seq === null || this._tracker.cursor === null || seq <= this._tracker.cursor) return;
    clearTimeout(this._lagTimer);
    this._lagTimer = setTimeout(() => {
      if (this._closed || this._role !== 'leader') return;
      if (this._tracker.cursor !== null && this._tracker.cursor < seq) this._catchUp(seq);
    }, this.options.lagCheckMs);
  }

  /** Pages `GET ?after=cursor` until the gap is filled and the cursor reaches target. */
  _catchUp(target) {
    this._catchTarget = Math.max(this._catchTarget, target || 0);
    if (!this._catching) {
      this._catching = this._catchUpLoop().finally(() => { this._catching = null; });
    }
    return this._catching;
  }

  async _catchUpLoop() {
    let failures = 0;
    let stuck = 0;
    const t = this._tracker;
    while (!this._closed && t.cursor !== null) {
      const target = Math.max(this._catchTarget, t.highestSeen);
      if (!t.hasGap() && t.cursor >= target) break;
      const after = t.cursor;
      let page;
      try {
        const res = await this._api('GET', '/v1/notifications', { query: { after, limit: PAGE_LIMIT } });
        page = parsePage(res.body);
        failures = 0;
      } catch {
        if (++failures > 5 || this._closed) break;
        await this._sleepPlain(backoffDelay(failures, this._backoffOpts()));
        continue;
      }
      if (this._closed) break;
      if (page.truncated) this._truncated(page.floor);
      if (page.ahead) this._ahead(page.seq);
      const r = t.acceptPage(page.notifications);
      for (const n of r.delivered) this._deliver(n, 'catchup');
      // A page shorter than the limit covers every seq up to the latest (`seq`): one that
      // is not in it was deleted, so the cursor passes it instead of asking again.
      if (page.notifications.length < PAGE_LIMIT && page.seq !== null && page.seq > t.cursor) {
        for (const n of t.advanceTo(page.seq)) this._deliver(n, 'catchup');
        if (this._role === 'leader') this._store.set(t.cursor);
      }
      if (page.unread !== null) {
        this._checkServerSeq(page.seq, after);
        this._setUnread(page.unread, page.seq);
      }
      if (page.seq !== null && page.seq < this._catchTarget) this._catchTarget = page.seq;
      if (page.seq !== null && page.seq < t.highestSeen && !t.hasGap()) t.highestSeen = Math.max(page.seq, t.cursor);
      if (t.cursor === after) {
        // No progress: the server has nothing after the cursor. Retry briefly, then give up on the hole.
        if (++stuck >= 3) {
          for (const n of t.skipGap()) this._deliver(n, 'catchup');
          this._catchTarget = t.cursor;
          t.highestSeen = t.cursor;
          break;
        }
        await this._sleepPlain(100 * stuck);
      } else {
        stuck = 0;
      }
    }
    this._catchTarget = 0;
  }

  // ---- tabs -------------------------------------------------------------------

  _post(msg) {
    if (!this._bc) return;
    try { this._bc.postMessage(msg); } catch { /* closed */ }
  }

  _onBus(msg) {
    if (!msg || typeof msg !== 'object' || this._closed) return;
    if (this._election && (msg.t === 'hb' || msg.t === 'hb?' || msg.t === 'bye')) {
      for (const m of this._election.receive(msg, nowMs())) this._post(m);
      this._syncRole();
      return;
    }
    switch (msg.t) {
      case 'hello':
        if (this._role === 'leader') {
          this._post({ t: 's', state: this._state, transport: this._transport });
          if (this._unread !== null) this._post({ t: 'u', unread: this._unread, seq: this._unreadSeq });
        }
        break;
      case 's':
        if (this._role === 'follower') {
          const changed = msg.state !== this._leaderState || msg.transport !== this._transport;
          this._leaderState = msg.state;
          this._transport = msg.transport;
          if (changed) this._emitState();
        }
        break;
      case 'n':
        if (this._role === 'follower') {
          const n = normalizeNotification(msg.n);
          if (n) this._ingest(n, msg.source || 'live');
        }
        break;
      case 'u':
        if (this._role === 'follower') this._setUnread(toSeq(msg.unread), toSeq(msg.seq));
        break;
      case 't':
        if (this._role === 'follower') this._truncated(toSeq(msg.floor));
        break;
      case 'a':
        if (this._role === 'follower') this._ahead(toSeq(msg.seq));
        break;
      case 'x':
        if (this._role === 'follower') {
          this._authError = { status: 401, detail: String(msg.detail ?? '') };
          this._emitState();
          safeCall(this.options.onAuthError, { ...this._authError });
        }
        break;
      case 'c':
        if (this._role === 'follower') {
          const f = changedFrame(msg.f);
          if (f) this._onChanged(f);
        }
        break;
      case 'p':
        if (this._role === 'follower') {
          const f = preferencesFrame(msg.f);
          if (f) this._onPreferences(f);
        }
        break;
      case 'read':
        safeCall(this.options.onRead, msg.ids ? { ids: msg.ids } : { upTo: msg.upTo });
        break;
      default:
        break;
    }
  }

  _announceRead(info) {
    this._post({ t: 'read', ...info });
    safeCall(this.options.onRead, info);
  }

  // ---- state, timers, HTTP ------------------------------------------------------

  _setState(state) {
    if (this._closed && state !== 'closed') return;
    if (state === this._state) return;
    this._state = state;
    if (this._role === 'leader' || state === 'closed') this._post({ t: 's', state, transport: this._transport });
    this._emitState();
  }

  _emitState() {
    const info = {
      transport: this._transport,
      role: this._role,
      leaderState: this.leaderState,
    };
    if (this._authError) info.detail = this._authError.detail;
    safeCall(this.options.onStateChange, this._state, info);
  }

  /** Sleep that reconnect(), the `online` event, a role change or close() cut short. */
  _sleep(ms) {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this._timers.delete(timer);
        if (this._wake === done) this._wake = null;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this._timers.add(timer);
      this._wake = done;
    });
  }

  _sleepPlain(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(() => { this._timers.delete(timer); resolve(); }, ms);
      this._timers.add(timer);
    });
  }

  _listenWindow() {
    const w = g.window && typeof g.window.addEventListener === 'function' ? g.window : null;
    if (!w) return;
    const on = (type, fn) => { w.addEventListener(type, fn); this._listeners.push([w, type, fn]); };
    on('online', () => { if (this._role === 'leader' && this._state !== 'live' && this._wake) this._wake(); });
    on('offline', () => { if (this._role === 'leader' && this._state === 'reconnecting') this._setState('offline'); });
    on('pagehide', (ev) => {
      if (ev && ev.persisted) return;
      if (this._election) for (const m of this._election.stop()) this._post(m);
    });
  }

  /** fetch with the bearer token; on 401 asks getToken() again and retries once. */
  async _api(method, path, { query, body, signal, headers: extra } = {}) {
    if (!this._fetch) throw new Error('tidings: fetch is not available');
    const url = buildUrl(this.baseUrl, path, query);
    for (let i = 0; ; i++) {
      const token = await this._tokens.get(i ? { force: true, reason: 'unauthorized' } : {});
      const headers = { Authorization: `Bearer ${token}`, Accept: 'application/json' };
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      if (extra) Object.assign(headers, extra);
      const res = await this._fetch(url, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      });
      if (res.status === 401 && i === 0) {
        try { await res.text(); } catch { /* ignore */ }
        continue;
      }
      if (res.status === 204) return { status: 204, body: null };
      if (!res.ok) throw new HttpError(res.status, await readProblem(res));
      const text = await res.text();
      const etag = res.headers && typeof res.headers.get === 'function' ? res.headers.get('ETag') : null;
      return { status: res.status, body: text ? JSON.parse(text) : null, etag };
    }
  }
}

function safeLocalStorage() {
  try {
    return g.localStorage || null;
  } catch {
    return null;
  }
}

/**
 * Opens (or joins, in another tab's leader connection) the notification stream.
 * Returns the client synchronously; it starts in the background.
 */
export function connect(options) {
  if (!options || typeof options.getToken !== 'function') throw new TypeError('tidings: connect({ getToken }) is required');
  if (options.transport && !['auto', ...TRANSPORTS].includes(options.transport)) {
    throw new TypeError(`tidings: unknown transport ${options.transport}`);
  }
  return new TidingsClient(options);
}

/** base64url (the server's VAPID key) to the bytes `pushManager.subscribe` wants. */
export function base64UrlToBytes(s) {
  const b64 = s.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (s.length % 4)) % 4);
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i += 1) out[i] = bin.charCodeAt(i);
  return out;
}

/**
 * Web Push: asks permission, registers the service worker (tidings-sw.js, served from your
 * origin at or above the pages it covers), subscribes with the server's VAPID key and
 * registers the subscription with the server. Calling it again is harmless (the server is
 * idempotent on the endpoint), and refreshes the token the worker uses to mark read.
 * Resolves to {permission, subscription, registration}; `subscription` is null when
 * permission was not granted.
 */
export async function enablePush({
  baseUrl = '',
  getToken,
  serviceWorkerUrl = '/tidings-sw.js',
  scope,
  fetch: fetchImpl = g.fetch && g.fetch.bind(g),
  registration: given,
} = {}) {
  if (typeof getToken !== 'function') throw new TypeError('enablePush: getToken is required');
  const nav = g.navigator;
  if (!nav || !nav.serviceWorker || !g.PushManager) throw new Error('Web Push is not supported in this browser');
  const base = normalizeBaseUrl(baseUrl);
  const permission = g.Notification && g.Notification.permission === 'granted'
    ? 'granted'
    : await g.Notification.requestPermission();
  const registration = given || await nav.serviceWorker.register(serviceWorkerUrl, scope ? { scope } : undefined);
  await nav.serviceWorker.ready;
  const token = await getToken({ reason: 'push' });
  const keyRes = await fetchImpl(buildUrl(base, '/v1/push/vapid-public-key'));
  if (!keyRes.ok) throw new Error(`Web Push is not enabled on the server (${keyRes.status})`);
  const { publicKey } = await keyRes.json();
  const worker = registration.active || registration.waiting || registration.installing;
  if (worker) worker.postMessage({ type: 'tidings:config', baseUrl: base, token, applicationServerKey: publicKey });
  if (permission !== 'granted') return { permission, subscription: null, registration };
  let subscription = await registration.pushManager.getSubscription();
  if (!subscription) {
    subscription = await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: base64UrlToBytes(publicKey) });
  }
  const res = await fetchImpl(buildUrl(base, '/v1/push/subscriptions'), {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify(subscription.toJSON()),
  });
  if (!res.ok) throw new Error(`the server refused the push subscription (${res.status})`);
  return { permission, subscription, registration };
}

/** Unsubscribes this browser and removes the subscription from the server. */
export async function disablePush({ baseUrl = '', getToken, registration, fetch: fetchImpl = g.fetch && g.fetch.bind(g) } = {}) {
  const reg = registration || await g.navigator.serviceWorker.ready;
  const sub = await reg.pushManager.getSubscription();
  if (!sub) return false;
  const token = await getToken({ reason: 'push' });
  await fetchImpl(buildUrl(normalizeBaseUrl(baseUrl), '/v1/push/subscriptions', { endpoint: sub.endpoint }), {
    method: 'DELETE',
    headers: { authorization: `Bearer ${token}` },
  });
  return sub.unsubscribe();
}

export default { connect, enablePush, disablePush };
