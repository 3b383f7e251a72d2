// Tidings service worker: Web Push notifications and the app badge, with no tab open.
//
// Serve this file from your own origin, at or above the pages it should cover: a service
// worker controls only URLs under its own path (its scope), so /tidings-sw.js covers the
// whole site and /app/tidings-sw.js only /app/. Register it with `enablePush()` from
// tidings.js, which also hands it the API's base URL and the user's token.
//
// On a push (the JSON Tidings sends, at most 4 KB):
//   {kind: "notification", id, seq, title, body, link, type, unread[, truncated]}
//   {kind: "badge", unread, seq}                       (mark-read, archive, delete)
// the worker always sets the app badge to `unread` (cleared at 0) and, for a notification,
// shows it (tag = its id, so a repeat replaces it) unless a tab of the app is visible and
// focused: that tab's live connection already showed it. A click opens the link (or
// focuses a tab) and marks the notification read through the API.

/* global self, clients */

const STATE_CACHE = 'tidings-sw-state';
const STATE_URL = '/__tidings_sw_state__';
let state = null; // {baseUrl, token, applicationServerKey}

async function loadState() {
  if (state) return state;
  try {
    const cache = await caches.open(STATE_CACHE);
    const res = await cache.match(STATE_URL);
    state = res ? await res.json() : {};
  } catch {
    state = {};
  }
  return state;
}

async function saveState(next) {
  state = { ...(await loadState()), ...next };
  try {
    const cache = await caches.open(STATE_CACHE);
    await cache.put(STATE_URL, new Response(JSON.stringify(state), { headers: { 'content-type': 'application/json' } }));
  } catch { /* private mode: memory only */ }
}

function api(path) {
  return `${(state && state.baseUrl) || ''}${path}`;
}

async function windows() {
  return clients.matchAll({ type: 'window', includeUncontrolled: true });
}

/** Sets (or clears) the app badge and tells the open tabs; returns whether the badge API took it. */
async function setBadge(unread) {
  let set = false;
  try {
    if (unread > 0 && self.navigator.setAppBadge) { await self.navigator.setAppBadge(unread); set = true; }
    else if (unread <= 0 && self.navigator.clearAppBadge) { await self.navigator.clearAppBadge(); set = true; }
  } catch { /* not an installed app, or no Badging API: the tabs still hear it */ }
  self.tidings.lastBadge = { unread, set };
  for (const c of await windows()) c.postMessage({ type: 'tidings:badge', unread, set });
  return set;
}

async function onPush(data) {
  await loadState();
  if (typeof data.unread === 'number') await setBadge(data.unread);
  if (data.kind !== 'notification') return;
  const open = await windows();
  if (open.some((c) => c.visibilityState === 'visible' && c.focused)) return;
  await self.registration.showNotification(data.title || 'New notification', {
    body: data.body || '',
    tag: data.id,
    data: { id: data.id, seq: data.seq, link: data.link || null },
  });
}

/** A click: close it, mark it read through the API, open its link (or focus a tab). */
async function onClick(notification) {
  const { id, link } = notification.data || {};
  notification.close();
  const st = await loadState();
  if (id && st.token) {
    try {
      const res = await fetch(api('/v1/notifications/read'), {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${st.token}` },
        body: JSON.stringify({ ids: [id] }),
      });
      if (res.ok) {
        const counts = await res.json();
        if (typeof counts.unread === 'number') await setBadge(counts.unread);
      }
    } catch { /* offline: the tab marks it when it loads */ }
  }
  const open = await windows();
  try {
    if (link) {
      const same = open.find((c) => c.url === link);
      return await (same ? same.focus() : clients.openWindow(link));
    }
    if (open[0]) return await open[0].focus();
  } catch { /* no user activation (a synthetic click): nothing to open */ }
  return undefined;
}

/** The push service replaced the subscription: subscribe again and tell the server. */
async function onSubscriptionChange(oldSubscription) {
  const st = await loadState();
  const key = (oldSubscription && oldSubscription.options.applicationServerKey) || st.applicationServerKey;
  if (!key || !st.token) return;
  const sub = await self.registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
  await fetch(api('/v1/push/subscriptions'), {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${st.token}` },
    body: JSON.stringify(sub.toJSON()),
  });
}

// The handlers, also reachable for tests (a synthetic event cannot be waited on).
self.tidings = { onPush, onClick, onSubscriptionChange, setBadge, lastBadge: null };

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

self.addEventListener('message', (event) => {
  const m = event.data || {};
  if (m.type === 'tidings:config') {
    event.waitUntil(saveState({ baseUrl: m.baseUrl || '', token: m.token || null, applicationServerKey: m.applicationServerKey || null }));
  }
});

self.addEventListener('push', (event) => {
  let data = {};
  try { data = event.data ? event.data.json() : {}; } catch { data = { kind: 'notification', title: event.data && event.data.text() }; }
  event.waitUntil(onPush(data));
});

self.addEventListener('notificationclick', (event) => event.waitUntil(onClick(event.notification)));

self.addEventListener('pushsubscriptionchange', (event) => {
  event.waitUntil(onSubscriptionChange(event.oldSubscription));
});
