// Types for @tidings/client (tidings.js).

export interface Notification {
  id: string;
  /** The user's own cursor: 1, 2, 3, … with no holes. */
  seq: number;
  type: string;
  title: string;
  body: string | null;
  data: Record<string, unknown> | null;
  link: string | null;
  /** RFC 3339 */
  created_at: string | null;
  /** null while unread */
  read_at: string | null;
  /** When it was archived; null when it is in the inbox view. */
  archived_at: string | null;
}

/**
 * `unauthorized`: the server refused the token and then a fresh one from getToken(); the
 * client stopped retrying (see `onAuthError`; `reconnect()` starts again).
 */
export type ConnectionState = 'connecting' | 'live' | 'reconnecting' | 'offline' | 'follower' | 'unauthorized' | 'closed';
export type Transport = 'sse' | 'websocket' | 'longpoll';
export type TransportOption = 'auto' | Transport;
export type Role = 'leader' | 'follower';

/** Where a delivered notification came from. */
export type NotificationSource =
  | 'history' //  the first-connect page (option `history: 'latest'`)
  | 'live' //     the stream (including the server's replay after reconnect)
  | 'catchup'; // paging via GET /v1/notifications?after= (gap or resync)

export interface NotificationMeta {
  source: NotificationSource;
  transport: Transport | null;
}

export interface StateInfo {
  transport: Transport | null;
  role: Role | null;
  /** The leader tab's state (this tab's own when it is the leader). */
  leaderState: ConnectionState | null;
  /** With `unauthorized` (in any tab): the server's problem `detail`. */
  detail?: string;
}

export interface TokenRequest {
  /** 'initial', 'expired' (SSE token-expired / WS 4001 / exp reached) or 'unauthorized' (a 401). */
  reason: 'initial' | 'expired' | 'unauthorized';
  /** true when the previous token was rejected or expired: do not hand it back. */
  forceRefresh: boolean;
}

export interface Change {
  change: 'archived' | 'unarchived' | 'deleted';
  ids: string[];
  seqs: number[];
}

export interface UnreadCount {
  unread: number | null;
  seq: number | null;
}

export interface Page {
  notifications: Notification[];
  unread: number | null;
  seq: number | null;
  /** The history floor (seqs at or below it were removed by retention), on `after=` pages. */
  floor: number | null;
  /** The page's cursor was below the floor: history the client never saw was removed. */
  truncated: boolean;
  /** The page's cursor was above the latest seq (`seq`): continue from `seq`. */
  ahead: boolean;
}

export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface ConnectOptions {
  /** Server origin (and path prefix), e.g. "https://tidings.example.com". '' = this page's origin. */
  baseUrl?: string;
  /** Returns (a Promise of) a user JWT. Called at start, on a 401, and on token expiry. */
  getToken: (req: TokenRequest) => string | Promise<string>;
  /** Default 'auto': SSE, falling back to long-poll (see README). */
  transport?: TransportOption;
  onNotification?: (n: Notification, meta: NotificationMeta) => void;
  onUnread?: (unread: number, info: { seq: number }) => void;
  /**
   * Retention removed notifications up to `floor` before this client saw them (its cursor
   * was below the server's history floor): show "older notifications were removed". Called
   * once per floor, in every tab.
   */
  onTruncated?: (info: { floor: number }) => void;
  /**
   * The cursor was above the user's latest seq, `seq` (the server's database was restored
   * to an earlier point, say): the client moved its cursor down to `seq` and goes on from
   * there. Called in every tab.
   */
  onAhead?: (info: { seq: number }) => void;
  onStateChange?: (state: ConnectionState, info: StateInfo) => void;
  /**
   * The server refused the token with 401, and again the fresh one getToken() returned: the
   * client stops retrying (state `unauthorized`) rather than look like a network fault for
   * ever. `detail` is the server's problem detail. Called in every tab.
   */
  onAuthError?: (error: { status: 401; detail: string }) => void;
  /** Reads made by this or another tab (to update read marks in lists). */
  onRead?: (read: { ids: string[] } | { upTo: number }) => void;
  /**
   * Notifications archived, unarchived or deleted, by any tab or session of the user (or,
   * for `deleted`, by the service that published them). `ids` and `seqs` name the same
   * notifications, in seq order. A deleted notification that arrives later is not passed
   * to onNotification.
   */
  onChange?: (change: Change) => void;
  /** The user's preferences changed (this tab, another tab, or a service): every settings page follows. */
  onPreferences?: (p: VersionedPreferences) => void;
  /** Where the cursor is kept. Default localStorage; null = memory only. */
  storage?: StorageLike | null;
  /** Overrides the cursor key (default `tidings:cursor:<baseUrl>:<sub>`). */
  storageKey?: string;

  /** First connect only (no stored cursor). Default 'latest'. */
  history?: 'latest' | 'all' | 'none';
  /** Size of the first-connect page for history 'latest'. Default 50. */
  historyLimit?: number;
  /** One connection per browser (leader tab). Default true. */
  shareConnection?: boolean;
  /** A stream that sends no frame within this time counts as stalled. Default 5000. */
  openTimeoutMs?: number;
  /** Stalled SSE attempts in a row (REST answering) before auto switches to long-poll. Default 3. */
  sseStrikes?: number;
  backoffBaseMs?: number; // 500
  backoffCapMs?: number; // 30000
  /** Upper bound of the quick reconnect after 1012 / 4008 / token expiry / a healthy SSE end. Default 250. */
  promptMs?: number;
  /** A connection that lived this long resets the backoff. Default 5000. */
  stableMs?: number;
  /** Long-poll `timeout` (seconds). Default 30. */
  pollTimeoutSec?: number;
  /** WebSocket {"type":"ping"} interval. Default 20000. */
  wsPingMs?: number;
  /** Wait before fetching a tail the unread seq says is missing. Default 3000. */
  lagCheckMs?: number;
  /** Heartbeat election (only without Web Locks). Defaults 1000 / 5000 / 1200. */
  heartbeatMs?: number;
  leaderTimeoutMs?: number;
  leaderClaimMs?: number;

  /** Injection points for tests and non-browser runtimes. */
  fetch?: typeof fetch;
  EventSource?: unknown;
  WebSocket?: unknown;
  BroadcastChannel?: unknown;
  locks?: unknown;
  random?: () => number;
}

export interface TidingsClient {
  /** Current state of this tab. */
  readonly state: ConnectionState;
  /** Last seq delivered to onNotification (null before the first connect has settled). */
  readonly cursor: number | null;
  /** The live transport: this tab's, or the leader tab's when a follower. */
  readonly transport: Transport | null;
  readonly role: Role | null;
  readonly leaderState: ConnectionState | null;
  /** Last unread count from the server. */
  readonly unread: number | null;
  /** The user (JWT `sub`), once started. */
  readonly user: string | null;
  /** Resolves once the token is read and the tab has joined the election. */
  readonly ready: Promise<void>;

  /** POST /v1/notifications/read {ids} (chunks of 1000). */
  markRead(ids: string | string[]): Promise<UnreadCount | null>;
  /** POST /v1/notifications/read {up_to: cursor}: never marks what was not delivered. */
  markAllRead(): Promise<UnreadCount | null>;
  /** GET /v1/notifications?before=&limit=&unread=&archived= (newest first), for rendering a list. Archived ones are left out unless `archived: true` (then only they are listed). */
  list(params?: { before?: number; limit?: number; unread?: boolean; archived?: boolean }): Promise<Page>;
  /** POST /v1/notifications/archive: archives (and marks read) ids, or everything up to a seq. */
  archive(what: string | string[] | { upTo: number }): Promise<UnreadCount | null>;
  /** POST /v1/notifications/unarchive: back to the inbox view (still read). */
  unarchive(what: string | string[] | { upTo: number }): Promise<UnreadCount | null>;
  /** POST /v1/notifications/delete: deletes for good; the seqs are never reused. */
  remove(what: string | string[] | { upTo: number }): Promise<UnreadCount | null>;
  /** GET /v1/preferences: the document and its version (the ETag). */
  getPreferences(): Promise<VersionedPreferences>;
  /** PUT /v1/preferences; with `version`, rejects with HttpError 412 when another tab wrote first. */
  setPreferences(preferences: Preferences, options?: { version?: number | null }): Promise<VersionedPreferences>;
  /** Skip the backoff wait and reconnect now (leader only). */
  reconnect(): void;
  /** Closes the connection, hands leadership to another tab. */
  close(): void;
}

export function connect(options: ConnectOptions): TidingsClient;

// ---- pure building blocks (exported for tests and custom transports) ----

export const VERSION: string;
export const STATES: readonly ConnectionState[];
export const TRANSPORTS: readonly Transport[];
export const PAGE_LIMIT: number;

export type Frame =
  | { type: 'notification'; notification: Notification }
  | { type: 'unread'; unread: number; seq: number | null }
  | { type: 'resync'; seq: number | null }
  | { type: 'truncated'; floor: number }
  | { type: 'ahead'; seq: number }
  | { type: 'token-expired' }
  | { type: 'pong' };

export function decodeJwtPayload(token: string): Record<string, unknown> | null;
export function normalizeBaseUrl(baseUrl?: string, href?: string): string;
export function buildUrl(baseUrl: string, path: string, query?: Record<string, unknown>): string;
export function toWebSocketUrl(httpUrl: string): string;
export function storageKeyFor(baseUrl: string, user: string): string;
export function channelNameFor(baseUrl: string, user: string): string;
export function toSeq(v: unknown): number | null;

export class CursorStore {
  constructor(storage: StorageLike | null, key: string);
  get(): number | null;
  set(seq: number): void;
  clear(): void;
}

export interface AcceptResult {
  delivered: Notification[];
  duplicate: boolean;
  /** Missing: seqs after+1 .. before-1. */
  gap: { after: number; before: number } | null;
}

export class SeqTracker {
  constructor(cursor?: number | null, options?: { maxPending?: number });
  cursor: number | null;
  highestSeen: number;
  duplicates: number;
  skipped: number;
  accept(n: Notification): AcceptResult;
  acceptPage(list: Notification[]): { delivered: Notification[]; duplicates: number; skipped: number };
  skipGap(): Notification[];
  advanceTo(seq: number): Notification[];
  reset(seq: number | null): void;
  gap(): { after: number; before: number } | null;
  hasGap(): boolean;
}

export interface BackoffOptions {
  baseMs?: number;
  capMs?: number;
  random?: () => number;
}
export function backoffDelay(attempt: number, options?: BackoffOptions): number;
export function reconnectDelay(
  outcome: { reason: string; healthy?: boolean; attempt?: number },
  options?: BackoffOptions & { promptMs?: number },
): number;
export function closeCodeReason(code: number | undefined, healthy?: boolean): string;
export function chooseTransport(
  requested: TransportOption | undefined,
  env: { hasEventSource: boolean; hasWebSocket: boolean; sseDisabled?: boolean },
): Transport;

export class SseFallbackPolicy {
  constructor(options?: { maxStrikes?: number });
  strikes: number;
  tripped: boolean;
  record(attempt: { healthy: boolean; serverReachable?: boolean }): boolean;
}

export function normalizeNotification(raw: unknown): Notification | null;
export function parseSseEvent(event: string, data: string, lastEventId?: string): Frame | null;
export function parseWsMessage(text: string): Frame | null;
export function parsePage(body: unknown): Page;
export function parsePollResponse(status: number, body: unknown): Frame[];

export type ElectionMessage = { t: 'hb' | 'hb?' | 'bye'; from: string; since?: number };
export class HeartbeatElection {
  constructor(options?: { id?: string; heartbeatMs?: number; timeoutMs?: number; claimMs?: number });
  readonly id: string;
  role: 'idle' | 'candidate' | 'leader' | 'follower' | 'stopped';
  leaderId: string | null;
  start(now: number): ElectionMessage[];
  receive(msg: ElectionMessage, now: number): ElectionMessage[];
  tick(now: number): ElectionMessage[];
  stop(): ElectionMessage[];
}

export class TokenSource {
  constructor(getToken: ConnectOptions['getToken'], options?: { skewMs?: number; now?: () => number });
  get(options?: { force?: boolean; reason?: TokenRequest['reason'] }): Promise<string>;
}

export class HttpError extends Error {
  status: number;
  problem: { type?: string; title?: string; status?: number; detail?: string } | null;
}

export interface EnablePushOptions {
  /** The Tidings server; '' = this page's origin. */
  baseUrl?: string;
  /** The user's token, for registering the subscription and for the worker's mark-read. */
  getToken: (req: { reason: 'push' }) => Promise<string> | string;
  /** Where tidings-sw.js is served (same origin, at or above the pages it covers). Default '/tidings-sw.js'. */
  serviceWorkerUrl?: string;
  /** The worker's scope; default: the folder of serviceWorkerUrl. */
  scope?: string;
  fetch?: typeof fetch;
  /** An already registered worker to use instead of registering serviceWorkerUrl. */
  registration?: ServiceWorkerRegistration;
}

export interface EnablePushResult {
  permission: NotificationPermission;
  /** null when permission was not granted. */
  subscription: PushSubscription | null;
  registration: ServiceWorkerRegistration;
}

/** Asks permission, registers tidings-sw.js, subscribes with the server's VAPID key and registers the subscription. */
export function enablePush(options: EnablePushOptions): Promise<EnablePushResult>;
/** Unsubscribes this browser and removes its subscription from the server; false if there was none. */
export function disablePush(options: Omit<EnablePushOptions, 'serviceWorkerUrl' | 'scope'>): Promise<boolean>;
export function base64UrlToBytes(s: string): Uint8Array;

/** What the service worker gets in a push. */
export type PushPayload =
  | { kind: 'notification'; id: string; seq: number; title: string; body?: string; link?: string; type?: string; unread: number; truncated?: boolean }
  | { kind: 'badge'; unread: number; seq: number };

declare const _default: { connect: typeof connect; enablePush: typeof enablePush; disablePush: typeof disablePush };
export default _default;

/** One mute/allow rule; see the README's Preferences section for the rule order. */
export interface PreferenceRule {
  /** Exact types or prefixes ending in `.*`; empty: every type. */
  types?: string[];
  topics?: string[];
  channels: Array<'inbox' | 'push' | 'mqtt' | 'all'>;
  action: 'mute' | 'allow';
}

export interface Preferences {
  rules?: PreferenceRule[];
  /** HH:MM local times and an IANA zone; holds back push and mqtt, never the inbox. */
  quiet_hours?: { start: string; end: string; time_zone: string } | null;
}

export interface VersionedPreferences {
  preferences: Preferences;
  /** The ETag's version; pass it back to setPreferences. */
  version: number | null;
}
