// Tidings demo page. Token from #token=… (or localStorage), transport from &transport=….
import { connect, decodeJwtPayload, enablePush } from './tidings.js';

const TOKEN_KEY = 'tidings-demo:token';
const TRANSPORTS = ['auto', 'sse', 'websocket', 'longpoll'];
const PAGE = 50;

const $ = (id) => document.getElementById(id);
const el = {
  bell: document.querySelector('[data-testid="bell"]'),
  badge: document.querySelector('[data-testid="badge"]'),
  state: document.querySelector('[data-testid="state"]'),
  markAll: document.querySelector('[data-testid="mark-all"]'),
  panel: $('panel'),
  list: $('list'),
  empty: $('empty'),
  emptyTitle: $('empty-title'),
  emptyText: $('empty-text'),
  skeleton: $('skeleton'),
  more: $('more'),
  sub: $('panel-sub'),
  tabCount: $('tab-count'),
  footState: $('foot-state'),
  footCursor: $('foot-cursor'),
  avatar: $('avatar'),
  greeting: $('greeting'),
  setup: $('setup'),
  snippet: $('snippet'),
  toast: $('toast'),
  pruned: $('pruned'),
};

// ---- token and options from the fragment --------------------------------

function fragment() {
  return new URLSearchParams(location.hash.replace(/^#/, ''));
}

function storedToken() {
  try { return localStorage.getItem(TOKEN_KEY); } catch { return null; }
}

function saveToken(t) {
  try { localStorage.setItem(TOKEN_KEY, t); } catch { /* private mode */ }
}

/**
 * The freshest token, re-read on every call: the fragment's, unless localStorage holds a later one
 * for the same user (another tab got a fresh token; this tab may hold the connection).
 */
function readToken() {
  const f = fragment().get('token');
  const s = storedToken();
  if (!f) return s;
  if (s && s !== f) {
    const pf = decodeJwtPayload(f);
    const ps = decodeJwtPayload(s);
    if (pf && ps && pf.sub === ps.sub && Number(ps.exp || 0) > Number(pf.exp || 0)) return s;
  }
  if (f !== s) saveToken(f);
  return f;
}

function readTransport() {
  const t = fragment().get('transport');
  return TRANSPORTS.includes(t) ? t : 'auto';
}

function readApi() {
  const a = fragment().get('api');
  return a || location.origin;
}

// ---- view state ----------------------------------------------------------

let client = null;
let user = null;
let transport = readTransport();
let unread = null;
let filter = 'all';
let loaded = false;
let loadingFor = null; // the client whose list() is in flight
let hasOlder = false;
/** The server's problem detail once it refused the token and a fresh one (any tab), else null. */
let authError = null;
const items = new Map(); // seq -> notification
const nodes = new Map(); // seq -> <li>

// ---- rendering -----------------------------------------------------------

const ICONS = {
  box: '<path d="M21 8l-9-5-9 5 9 5 9-5z"/><path d="M3 8v8l9 5 9-5V8"/><path d="M12 13v8"/>',
  card: '<rect x="2.5" y="5" width="19" height="14" rx="2.5"/><path d="M2.5 10h19M7 15h3"/>',
  shield: '<path d="M12 3l8 3v6c0 5-3.5 8-8 9-4.5-1-8-4-8-9V6l8-3z"/><path d="M9 12l2 2 4-4"/>',
  chat: '<path d="M20 12a8 8 0 0 1-11.6 7.1L4 20l1-4.3A8 8 0 1 1 20 12z"/>',
  user: '<circle cx="12" cy="8" r="4"/><path d="M4 21c.8-3.8 4-6 8-6s7.2 2.2 8 6"/>',
  alert: '<path d="M12 3.5l9.5 16.5h-19L12 3.5z"/><path d="M12 10v4M12 17.2v.1"/>',
  spark: '<path d="M12 3l2.2 6.8L21 12l-6.8 2.2L12 21l-2.2-6.8L3 12l6.8-2.2L12 3z"/>',
  bell: '<path d="M6 8a6 6 0 1 1 12 0c0 7 3 9 3 9H3s3-2 3-9"/><path d="M10.3 21a1.94 1.94 0 0 0 3.4 0"/>',
};
const ICON_RULES = [
  [/order|ship|deliver|parcel|package/, 'box'],
  [/pay|invoice|billing|charge|refund/, 'card'],
  [/secur|login|auth|password|token/, 'shield'],
  [/comment|mention|message|reply|chat/, 'chat'],
  [/user|invite|follow|member|team/, 'user'],
  [/alert|error|fail|incident|down/, 'alert'],
  [/release|feature|news|launch/, 'spark'],
];

function iconFor(type) {
  const rule = ICON_RULES.find(([re]) => re.test(type || ''));
  return ICONS[rule ? rule[1] : 'bell'];
}

const HUES = { box: 235, card: 152, shield: 199, chat: 272, user: 24, alert: 352, spark: 38, bell: 235 };

function hueFor(type) {
  const rule = ICON_RULES.find(([re]) => re.test(type || ''));
  return HUES[rule ? rule[1] : 'bell'];
}

const dateFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });
const dateYearFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', year: 'numeric' });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

function relativeTime(iso) {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return '';
  const s = Math.round((Date.now() - t) / 1000);
  if (s < 45) return 'just now';
  const m = Math.round(s / 60);
  if (m < 60) return `${m} min ago`;
  const h = Math.round(m / 60);
  if (h < 24) return `${h} h ago`;
  const d = Math.round(h / 24);
  if (d === 1) return 'yesterday';
  if (d < 7) return `${d} days ago`;
  const date = new Date(t);
  return (date.getFullYear() === new Date().getFullYear() ? dateFmt : dateYearFmt).format(date);
}

function linkLabel(href) {
  try {
    const u = new URL(href);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') return null;
    const path = u.pathname === '/' ? '' : u.pathname;
    return (u.host + path).slice(0, 48);
  } catch {
    return null;
  }
}

function h(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function createItem(n) {
  const li = h('li', { class: 'item', 'data-testid': 'item', tabindex: '0' });
  const icon = h('div', { class: 'type-icon', 'aria-hidden': 'true' });
  icon.innerHTML = `<svg viewBox="0 0 24 24">${iconFor(n.type)}</svg>`;
  icon.style.setProperty('--hue', hueFor(n.type));
  const main = h('div', { class: 'item-main' });
  const top = h('div', { class: 'item-top' });
  top.append(h('p', { class: 'item-title' }), h('time', { class: 'item-time' }));
  main.append(top, h('p', { class: 'item-body' }), h('div', { class: 'item-meta' }));
  const actions = h('div', { class: 'item-actions' });
  const archive = h('button', { class: 'icon-btn', type: 'button', 'data-action': 'archive' });
  archive.innerHTML = '<svg viewBox="0 0 24 24" aria-hidden="true"><rect x="3" y="4" width="18" height="5" rx="1.5"/><path d="M5 9v9a2 2 0 0 0 2 2h10a2 2 0 0 0 2-2V9M10 13h4"/></svg>';
  const del = h('button', { class: 'icon-btn', type: 'button', 'data-action': 'delete', 'data-testid': 'delete', 'aria-label': 'Delete', title: 'Delete' });
  del.innerHTML = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 7h16M10 11v6M14 11v6M6 7l1 12a2 2 0 0 0 2 2h6a2 2 0 0 0 2-2l1-12M9 7V4h6v3"/></svg>';
  actions.append(archive, del);
  li.append(icon, main, actions);
  updateItem(li, n);
  return li;
}

function updateItem(li, n) {
  const read = Boolean(n.read_at);
  li.dataset.seq = String(n.seq);
  li.dataset.id = n.id;
  li.dataset.read = String(read);
  li.dataset.archived = String(Boolean(n.archived_at));
  const archive = li.querySelector('[data-action="archive"]');
  const label = n.archived_at ? 'Move to inbox' : 'Archive';
  archive.dataset.testid = n.archived_at ? 'unarchive' : 'archive';
  archive.setAttribute('data-testid', archive.dataset.testid);
  archive.setAttribute('aria-label', label);
  archive.title = label;
  li.setAttribute('aria-label', `${read ? '' : 'Unread: '}${n.title}`);
  li.querySelector('.item-title').textContent = n.title;
  const time = li.querySelector('.item-time');
  time.textContent = relativeTime(n.created_at);
  if (n.created_at) {
    time.dateTime = n.created_at;
    const t = Date.parse(n.created_at);
    if (!Number.isNaN(t)) time.title = fullFmt.format(t);
  }
  const body = li.querySelector('.item-body');
  body.textContent = n.body || '';
  body.hidden = !n.body;
  const meta = li.querySelector('.item-meta');
  if (meta.dataset.for !== `${n.type}|${n.link}`) {
    meta.dataset.for = `${n.type}|${n.link}`;
    meta.replaceChildren(h('span', { class: 'chip' }, n.type || 'notification'));
    const label = n.link && linkLabel(n.link);
    if (label) {
      const a = h('a', { class: 'item-link', href: n.link, target: '_blank', rel: 'noopener noreferrer' });
      a.append(h('span', { class: 'item-link-text' }, label));
      const ext = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
      ext.setAttribute('viewBox', '0 0 24 24');
      ext.innerHTML = '<path d="M7 17L17 7M9 7h8v8"/>';
      a.append(ext);
      meta.append(a);
    }
  }
}

function visible(n) {
  if (filter === 'archived') return Boolean(n.archived_at);
  if (n.archived_at) return false;
  return filter === 'all' || !n.read_at;
}

function render() {
  const sorted = [...items.values()].filter(visible).sort((a, b) => b.seq - a.seq);
  const keep = new Set();
  let prev = null;
  for (const n of sorted) {
    let li = nodes.get(n.seq);
    if (!li) {
      li = createItem(n);
      nodes.set(n.seq, li);
    } else {
      updateItem(li, n);
    }
    keep.add(li);
    const want = prev ? prev.nextSibling : el.list.firstChild;
    if (li !== want) el.list.insertBefore(li, want);
    prev = li;
  }
  for (const [seq, li] of nodes) {
    if (!keep.has(li)) {
      li.remove();
      if (!items.has(seq)) nodes.delete(seq);
    }
  }
  // A refused token is no loading state: no skeleton rows for ever, but the reason.
  const showSkeleton = !loaded && items.size === 0 && client !== null && authError === null;
  el.skeleton.hidden = !showSkeleton;
  el.empty.hidden = showSkeleton || (sorted.length > 0 && authError === null);
  el.empty.dataset.auth = authError === null ? '' : 'refused';
  if (authError !== null) {
    el.emptyTitle.textContent = 'Your session was refused';
    el.emptyText.textContent = `${authError.replace(/[.\s]*$/, ".")} Sign in again, or open this page with a valid #token=.`;
  } else if (!client) {
    el.emptyTitle.textContent = 'Not connected';
    el.emptyText.textContent = 'Open this page with #token=<user JWT> to see your notifications.';
  } else if (filter === 'archived') {
    el.emptyTitle.textContent = 'Nothing archived';
    el.emptyText.textContent = 'Archived notifications are kept here, out of your inbox.';
  } else if (filter === 'unread' && items.size > 0) {
    el.emptyTitle.textContent = 'No unread notifications';
    el.emptyText.textContent = 'Nice work. Everything here has been read.';
  } else {
    el.emptyTitle.textContent = "You're all caught up";
    el.emptyText.textContent = 'New notifications will show up here as they arrive.';
  }
  el.more.hidden = !(hasOlder && filter === 'all');
  renderCounts();
}

function renderCounts() {
  const n = unread ?? [...items.values()].filter((x) => !x.read_at).length;
  const prevText = el.badge.textContent;
  el.badge.textContent = String(n);
  el.badge.hidden = n === 0;
  el.badge.dataset.count = String(n);
  if (String(n) !== prevText && n > Number(prevText)) {
    el.badge.classList.remove('bump');
    void el.badge.offsetWidth;
    el.badge.classList.add('bump');
  }
  el.bell.setAttribute('aria-label', n ? `Notifications, ${n} unread` : 'Notifications');
  el.tabCount.textContent = n ? String(n) : '';
  el.sub.textContent = !client ? 'Not connected' : n ? `${n} unread` : 'No unread notifications';
  el.markAll.classList.toggle('is-muted', n === 0);
  $('fact-unread').textContent = unread === null ? '—' : String(unread);
  el.footCursor.textContent = client && client.cursor !== null ? `cursor ${client.cursor}` : '';
  $('fact-cursor').textContent = client && client.cursor !== null ? String(client.cursor) : '—';
}

const TRANSPORT_NAMES = { sse: 'Server-Sent Events', websocket: 'WebSocket', longpoll: 'Long-polling' };

function renderState() {
  const s = client ? client.state : 'idle';
  const t = client ? client.transport : null;
  el.state.dataset.state = s;
  el.state.dataset.transport = t || '';
  el.state.dataset.role = client && client.role ? client.role : '';
  el.state.textContent = client ? (t ? `${s} · ${t}` : s) : 'no token';
  el.state.title = authError === null ? 'Connection' : authError;
  const lead = client ? client.leaderState : null;
  const foot = {
    idle: 'Not connected',
    connecting: 'Connecting…',
    live: `Live via ${TRANSPORT_NAMES[t] || t}`,
    reconnecting: 'Reconnecting…',
    unauthorized: `Not signed in: ${authError || 'the token was refused'}`,
    offline: 'Offline — waiting for the network',
    follower: authError !== null
      ? `Not signed in: ${authError}`
      : `Live in another tab${t ? ` via ${TRANSPORT_NAMES[t] || t}` : ''}${lead && lead !== 'live' ? ` (${lead})` : ''}`,
    closed: 'Disconnected',
  };
  el.footState.textContent = foot[s] || s;
  const pill = $('fact-state');
  pill.textContent = client ? s : 'no token';
  pill.dataset.state = s;
  $('fact-transport').textContent = t ? TRANSPORT_NAMES[t] || t : '—';
  $('fact-role').textContent = !client || !client.role ? '—' : client.role === 'leader' ? 'Holds the connection' : 'Shares another tab’s connection';
}

function renderUser() {
  const t = readToken();
  const p = t ? decodeJwtPayload(t) : null;
  const name = p && p.sub ? String(p.sub) : null;
  el.avatar.textContent = name ? name.replace(/[^A-Za-z0-9]/g, '').slice(0, 2).toUpperCase() || '?' : '?';
  el.greeting.textContent = name ? `Welcome back, ${name.split(/[@.]/)[0]}` : 'Welcome';
  $('fact-user').textContent = name || '—';
  const exp = p && Number(p.exp);
  if (exp) {
    const left = Math.round(exp - Date.now() / 1000);
    $('fact-token').textContent = left <= 0 ? 'expired' : `expires in ${duration(left)}`;
  } else {
    $('fact-token').textContent = t ? 'no expiry' : '—';
  }
  el.setup.hidden = Boolean(t);
}

function duration(sec) {
  if (sec < 120) return `${sec} s`;
  const m = Math.round(sec / 60);
  if (m < 120) return `${m} min`;
  const h = Math.floor(m / 60);
  return h < 48 ? `${h} h ${m % 60 ? `${m % 60} min` : ''}`.trim() : `${Math.round(h / 24)} days`;
}

function renderSnippet() {
  const name = user || 'alice';
  el.snippet.textContent = `curl -X POST ${readApi()}/v1/notifications \\
  -H "Authorization: Bearer $SERVICE_TOKEN" \\
  -H "Content-Type: application/json" \\
  -d '{"recipients":["${name}"],
       "type":"order.shipped",
       "title":"Your order has shipped",
       "body":"Parcel 1Z999 is on its way.",
       "link":"https://shop.example/orders/1234"}'

# Or remind yourself in 5 s: a 202 now, the bell rings then.
curl -X POST ${readApi()}/v1/notifications \\
  -H "Authorization: Bearer $SERVICE_TOKEN" \\
  -H "Content-Type: application/json" \\
  -d '{"recipients":["${name}"],
       "type":"reminder",
       "title":"Reminder: 5 seconds are up",
       "deliver_at":"'$(date -u -d '+5 seconds' +%Y-%m-%dT%H:%M:%SZ)'"}'`;
}

let toastTimer = null;
function toast(msg) {
  el.toast.textContent = msg;
  el.toast.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.toast.hidden = true; }, 3500);
}

function ring() {
  el.bell.classList.remove('ring');
  void el.bell.offsetWidth;
  el.bell.classList.add('ring');
}

// ---- data ----------------------------------------------------------------

function upsert(n, { fresh = false } = {}) {
  const old = items.get(n.seq);
  const merged = old ? { ...old, ...n, read_at: old.read_at || n.read_at, archived_at: n.archived_at ?? old.archived_at ?? null } : n;
  items.set(n.seq, merged);
  if (fresh && !old) {
    requestAnimationFrame(() => {
      const li = nodes.get(n.seq);
      if (li) li.classList.add('is-new');
    });
  }
}

function markLocal({ ids, upTo }) {
  const now = new Date().toISOString();
  const set = ids ? new Set(ids) : null;
  for (const n of items.values()) {
    if (n.read_at) continue;
    if ((set && set.has(n.id)) || (upTo !== undefined && n.seq <= upTo)) n.read_at = now;
  }
}

/** A change from any tab, session or the publishing service: archived, unarchived, deleted. */
function applyChange({ change, seqs }) {
  const now = new Date().toISOString();
  for (const seq of seqs) {
    const n = items.get(seq);
    if (!n) continue;
    if (change === 'deleted') items.delete(seq);
    else if (change === 'archived') {
      n.archived_at = n.archived_at || now;
      n.read_at = n.read_at || now;
    } else if (change === 'unarchived') n.archived_at = null;
  }
}

/** The Archived tab lists what the server holds archived (not only what this page has seen). */
async function loadArchived() {
  if (!client) return;
  const c = client;
  try {
    const page = await c.list({ limit: PAGE, archived: true });
    if (c !== client) return;
    for (const n of page.notifications) upsert(n);
  } catch {
    toast('Could not load archived notifications');
  }
  render();
}

async function onItemAction(li, action) {
  const n = items.get(Number(li.dataset.seq));
  if (!n || !client) return;
  try {
    if (action === 'delete') await client.remove([n.id]);
    else if (n.archived_at) await client.unarchive([n.id]);
    else await client.archive([n.id]);
  } catch {
    toast('Could not change the notification — check your connection');
  }
  // This tab and every other one update from the `changed` event (onChange).
}

async function loadList({ older = false } = {}) {
  if (!client || loadingFor === client) return;
  const c = client;
  loadingFor = c;
  try {
    const seqs = [...items.values()].filter((n) => !n.archived_at).map((n) => n.seq);
    const before = older && seqs.length ? Math.min(...seqs) : undefined;
    const page = await c.list({ limit: PAGE, before });
    if (c !== client) return;
    for (const n of page.notifications) upsert(n);
    hasOlder = page.notifications.length >= PAGE;
    if (page.unread !== null && unread === null) unread = page.unread;
    loaded = true;
  } catch (e) {
    if (older) toast('Could not load older notifications');
  } finally {
    if (loadingFor === c) loadingFor = null;
    render();
  }
}

// ---- client --------------------------------------------------------------

function start() {
  const token = readToken();
  renderUser();
  renderSnippet();
  if (!token) {
    render();
    renderState();
    return;
  }
  const payload = decodeJwtPayload(token) || {};
  user = payload.sub ? String(payload.sub) : null;
  transport = readTransport();
  loaded = false;
  hasOlder = false;
  unread = null;
  items.clear();
  el.pruned.hidden = true;
  authError = null;
  for (const li of nodes.values()) li.remove();
  nodes.clear();
  renderSnippet();

  // Callbacks of a client replaced by restart() (another user) are ignored.
  let self = null;
  const mine = (fn) => (...args) => { if (self !== null && self === client) fn(...args); };
  self = client = connect({
    baseUrl: readApi(),
    transport,
    getToken: async () => {
      const t = readToken();
      if (!t) throw new Error('no token');
      return t;
    },
    onNotification: mine((n, meta) => {
      upsert(n, { fresh: meta.source === 'live' });
      if (meta.source === 'live') ring();
      render();
    }),
    onUnread: mine((count) => {
      unread = count;
      renderCounts();
    }),
    // The server's retention removed notifications this browser never saw: say so at the
    // end of the list instead of letting it look complete.
    onTruncated: mine(({ floor }) => {
      el.pruned.hidden = false;
      el.pruned.title = `Notifications up to #${floor} were removed by the server's retention`;
    }),
    onRead: mine((r) => {
      markLocal(r);
      render();
    }),
    onChange: mine((c) => {
      applyChange(c);
      render();
    }),
    // The token was refused, and a fresh one from getToken() too: the client stopped
    // retrying; say why instead of "reconnecting" over skeleton rows.
    onAuthError: mine(({ detail }) => {
      authError = detail || 'The server refused the token.';
      render();
      renderState();
    }),
    onStateChange: mine((state, info) => {
      if (state === 'live' || (state === 'follower' && info.leaderState === 'live')) authError = null;
      if (state === 'unauthorized' && authError === null) authError = info.detail || 'The server refused the token.';
      render();
      renderState();
      renderCounts();
      if ((state === 'live' || state === 'follower') && !loaded) loadList();
    }),
    // Another tab (or a service) changed the preferences: the settings card follows.
    onPreferences: mine((p) => renderPrefs(p)),
  });
  loadPrefs();
  loadList();
  render();
  renderState();
}

// ---- Settings: the user's preferences (mute rules, quiet hours) ----

let prefs = { preferences: { rules: [], quiet_hours: null }, version: null };

function renderPrefs(p) {
  if (p.version !== null && prefs.version !== null && p.version < prefs.version) return;
  prefs = p;
  const list = $('muted');
  list.textContent = '';
  for (const [i, r] of (p.preferences.rules || []).entries()) {
    if (r.action !== 'mute') continue;
    const li = document.createElement('li');
    li.dataset.type = (r.types || []).join(',');
    li.textContent = (r.types || []).join(', ') || 'everything';
    const x = document.createElement('button');
    x.type = 'button';
    x.textContent = '×';
    x.setAttribute('aria-label', `Unmute ${li.textContent}`);
    x.addEventListener('click', () => savePrefs((d) => { d.rules.splice(i, 1); }));
    li.append(x);
    list.append(li);
  }
  const q = p.preferences.quiet_hours;
  $('qh-start').value = q ? q.start : '';
  $('qh-end').value = q ? q.end : '';
  $('qh-tz').value = q ? q.time_zone : '';
  const state = $('prefs-state');
  state.dataset.version = String(p.version ?? '');
  state.textContent = q ? `Quiet ${q.start}–${q.end} (${q.time_zone})` : 'No quiet hours';
}

async function loadPrefs() {
  if (!client) return;
  try {
    renderPrefs(await client.getPreferences());
  } catch {
    $('prefs-state').textContent = 'Could not load the settings';
  }
}

/** Applies `change` to the current document and writes it with If-Match; on a 412 (another tab wrote first) re-reads and applies it again, once. */
async function savePrefs(change) {
  for (let attempt = 0; attempt < 2; attempt++) {
    const doc = JSON.parse(JSON.stringify(prefs.preferences));
    doc.rules ||= [];
    change(doc);
    try {
      renderPrefs(await client.setPreferences(doc, { version: prefs.version }));
      return;
    } catch (e) {
      if (e && e.status === 412 && attempt === 0) { await loadPrefs(); continue; }
      const field = e && e.problem && e.problem.errors && e.problem.errors[0];
      toast(field ? `${field.field} ${field.message}` : 'Could not save the settings');
      return;
    }
  }
}

$('mute-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const type = $('mute-type').value.trim();
  if (!type || !client) return;
  $('mute-type').value = '';
  savePrefs((d) => { d.rules.push({ types: [type], channels: ['all'], action: 'mute' }); });
});

$('quiet-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  if (!client) return;
  const start = $('qh-start').value;
  const end = $('qh-end').value;
  const tz = $('qh-tz').value.trim();
  savePrefs((d) => { d.quiet_hours = start && end && tz ? { start, end, time_zone: tz } : null; });
});

function restart() {
  if (client) client.close();
  client = null;
  start();
}

async function onItemActivate(li) {
  const n = items.get(Number(li.dataset.seq));
  if (!n || n.read_at || !client) return;
  n.read_at = new Date().toISOString();
  if (unread !== null) unread = Math.max(0, unread - 1);
  render();
  try {
    await client.markRead([n.id]);
  } catch {
    n.read_at = null;
    if (unread !== null) unread += 1;
    render();
    toast('Could not mark as read — check your connection');
  }
}

async function onMarkAll() {
  if (!client) return;
  const upTo = client.cursor;
  if (upTo === null) return;
  const before = new Map([...items.values()].filter((n) => !n.read_at).map((n) => [n.seq, n]));
  if (!before.size && !unread) return;
  markLocal({ upTo });
  unread = [...items.values()].filter((n) => !n.read_at).length ? unread : 0;
  render();
  try {
    await client.markAllRead();
  } catch {
    for (const n of before.values()) if (n.seq <= upTo) n.read_at = null;
    render();
    toast('Could not mark all as read — check your connection');
  }
}

/** Called by tests or the console: use this token from now on. */
function setToken(t) {
  if (typeof t !== 'string' || !t) return;
  saveToken(t);
  const f = fragment();
  f.set('token', t);
  history.replaceState(null, '', `${location.pathname}${location.search}#${f.toString()}`);
  applyToken();
}

function applyToken() {
  const t = readToken();
  renderUser();
  if (!t) return;
  const sub = (decodeJwtPayload(t) || {}).sub;
  if (!client || (sub != null && String(sub) !== user)) {
    restart();
    return;
  }
  // Same user: the live connection keeps going and picks the new token up when the old one
  // expires; a connection that is down (e.g. rejected for an expired token) retries now.
  if (client.state !== 'live') client.reconnect();
}

// ---- panel ---------------------------------------------------------------

function openPanel() {
  el.panel.classList.remove('is-closed');
  el.bell.setAttribute('aria-expanded', 'true');
}

function closePanel() {
  el.panel.classList.add('is-closed');
  el.bell.setAttribute('aria-expanded', 'false');
}

// The bell opens the panel (it is open on load); ×, Escape or a click outside close it.
el.bell.addEventListener('click', () => openPanel());
$('close-panel').addEventListener('click', () => closePanel());
document.addEventListener('keydown', (e) => { if (e.key === 'Escape') closePanel(); });
document.addEventListener('click', (e) => {
  if (!el.panel.contains(e.target) && !el.bell.contains(e.target) && e.target.isConnected) closePanel();
});

el.list.addEventListener('click', (e) => {
  const li = e.target.closest('[data-testid="item"]');
  if (!li) return;
  const button = e.target.closest('[data-action]');
  if (button) onItemAction(li, button.dataset.action);
  else onItemActivate(li);
});
el.list.addEventListener('keydown', (e) => {
  if ((e.key === 'Enter' || e.key === ' ') && e.target.matches('[data-testid="item"]')) {
    e.preventDefault();
    onItemActivate(e.target);
  }
});
el.markAll.addEventListener('click', () => onMarkAll());
el.more.addEventListener('click', () => loadList({ older: true }));
for (const tab of document.querySelectorAll('.tab')) {
  tab.addEventListener('click', () => {
    filter = tab.dataset.filter;
    for (const t of document.querySelectorAll('.tab')) {
      t.classList.toggle('is-active', t === tab);
      t.setAttribute('aria-selected', String(t === tab));
    }
    if (filter === 'archived') loadArchived();
    render();
  });
}

window.addEventListener('hashchange', () => {
  if (readTransport() !== transport && client) {
    restart();
    return;
  }
  applyToken();
});

setInterval(() => {
  for (const [seq, li] of nodes) {
    const n = items.get(seq);
    if (n) li.querySelector('.item-time').textContent = relativeTime(n.created_at);
  }
  renderUser();
}, 15000);

window.tidingsDemo = {
  get client() { return client; },
  setToken,
  /** The connection state: connecting | live | reconnecting | offline | follower | unauthorized | closed, or idle without a token. */
  get state() { return client ? client.state : 'idle'; },
  get transport() { return client ? client.transport : null; },
  get unread() { return unread; },
  get items() { return [...items.values()].sort((a, b) => b.seq - a.seq); },
};

start();

// ---- Web Push: "Enable desktop notifications" ------------------------------
// The worker is served at /demo/tidings-sw.js, so its scope is /demo/ (this page).
const pushButton = document.getElementById('enable-push');
if (pushButton) {
  if (!('serviceWorker' in navigator) || !('PushManager' in window)) pushButton.hidden = true;
  pushButton.addEventListener('click', async () => {
    pushButton.disabled = true;
    try {
      const { permission } = await enablePush({
        baseUrl: readApi(),
        getToken: async () => readToken(),
        serviceWorkerUrl: '/demo/tidings-sw.js',
        scope: '/demo/',
      });
      pushButton.textContent = permission === 'granted' ? 'Desktop notifications on' : 'Notifications blocked';
      pushButton.dataset.state = permission;
    } catch (e) {
      pushButton.textContent = 'Desktop notifications unavailable';
      pushButton.title = String(e && e.message ? e.message : e);
      pushButton.dataset.state = 'error';
      pushButton.disabled = false;
    }
  });
}
