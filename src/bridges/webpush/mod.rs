//! The Web Push bridge: every committed notification to a user with push subscriptions is
//! pushed to each of them (RFC 8030), encrypted for the browser (RFC 8291, `aes128gcm`),
//! signed by the server's VAPID key (RFC 8292); every change of their unread count
//! (mark-read, archive, delete) sends a silent badge update.
//!
//! Delivered from the store's transactional outbox, as the MQTT bridge is: a row exists if
//! and only if the change committed, and is deleted only once the push service took it, so
//! nothing committed is lost when the push service or this replica is down. Each
//! subscription is its own queue, sent in order; the push service's answers decide:
//!
//! * 2xx: done.
//! * 404, 410: the subscription is gone; it is deleted with its queue.
//! * 413: the push is too big (it should never be: see [`payload`]); logged, dropped.
//! * other 4xx: this push can never succeed (a key the push service refuses); logged,
//!   dropped, so the queue moves on.
//! * 429, 5xx, no answer: the subscription backs off (its `Retry-After`, or exponentially
//!   from 1 s to 5 min) and its queue waits, in the database, where every replica sees it.
//!   Other subscriptions go on meanwhile.
//!
//! One sender per replica; on Postgres, replicas share the queues through the lease
//! (`FOR UPDATE SKIP LOCKED`), and a replica killed mid-batch leaves its rows to the others.

pub mod payload;
pub mod policy;
mod resolve;
mod vapid;

use crate::configuration::WebPushSettings;
use crate::domain::VapidKey;
use crate::metrics::WebPushMetrics;
use crate::shutdown::Shutdown;
use crate::store::{OutboxChannel, OutboxKind, PushResult, PushRow, PushTarget, Store};
use crate::telemetry::Chain;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use vapid::Signer;

/// The first and the longest wait of a subscription whose push service failed.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A `Retry-After` beyond this is capped: a queue must not sleep for days on one answer.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// A queue stops sending after this much of a batch (rows left for the next lease), so a
/// batch always ends well within the lease's 60 s.
const QUEUE_BUDGET: Duration = Duration::from_secs(30);
/// How long a batch waits for its slowest queues before it records what the others did
/// and leases again: a push service that takes a request and never answers must not hold
/// up anybody else's pushes for the whole request timeout. Push services answer in well
/// under this; the slow queues go on and record their outcome when they end.
const BATCH_GRACE: Duration = Duration::from_secs(1);
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(5);
const DEPTH_CAP: i64 = 1_000_000;
/// How often at most it looks for ended quiet-hours holds.
const QUIET_RELEASE_MIN: Duration = Duration::from_millis(250);
/// After a failed lease (the database away), wait before trying again.
const STORE_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum WebPushError {
    #[error("TIDINGS__WEBPUSH__VAPID_PRIVATE_KEY: {0}")]
    Key(#[from] crate::domain::VapidKeyError),
    #[error("the HTTP client for push services could not be built")]
    Client(#[from] reqwest::Error),
}

/// The settings a sender works with.
#[derive(Debug, Clone)]
struct Limits {
    subscriptions: u32,
    per_subscription: u32,
    concurrency: usize,
    ttl: u64,
    poll: Duration,
    request_timeout: Duration,
}

/// The HTTP client for push services: rustls, pooled connections (one push service takes
/// many pushes over one), bounded by timeouts, no redirects (a push resource that
/// redirects is not one, and following it could reach the internal network), and DNS
/// names resolved to public addresses only unless `allow_private` (see [`resolve`]).
pub fn client(timeout: Duration, allow_private: bool) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .dns_resolver(std::sync::Arc::new(resolve::PublicOnly { allow_private }))
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .pool_idle_timeout(Duration::from_secs(90))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tidings/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Starts the sender and its housekeeping under `shutdown`.
pub fn start(
    store: Store,
    settings: &WebPushSettings,
    key: VapidKey,
    subject: String,
    metrics: WebPushMetrics,
    shutdown: &Shutdown,
) -> Result<(), WebPushError> {
    let signer = Signer::new(&key, subject)?;
    let http = client(
        Duration::from_secs(settings.request_timeout_seconds),
        settings.allow_insecure_endpoints,
    )?;
    let limits = Limits {
        subscriptions: settings.batch_subscriptions,
        per_subscription: settings.batch_per_subscription,
        concurrency: settings.concurrency,
        ttl: settings.ttl_seconds,
        poll: Duration::from_millis(settings.poll_millis),
        request_timeout: Duration::from_secs(settings.request_timeout_seconds),
    };
    tracing::info!(
        public_key = %key.public_key(),
        "Web Push is on: notifications are pushed to subscribed browsers through the outbox"
    );
    shutdown.spawn(housekeeping(
        store.clone(),
        Duration::from_secs(settings.ttl_seconds),
        metrics.clone(),
        shutdown.clone(),
    ));
    // Quiet hours (issue 25) hold pushes back; this sends what is due when they end.
    shutdown.spawn(super::release_quiet_hours(
        store.clone(),
        OutboxChannel::WebPush,
        Duration::from_millis(settings.poll_millis).max(QUIET_RELEASE_MIN),
        shutdown.clone(),
    ));
    shutdown.spawn(sender(
        store,
        http,
        signer,
        limits,
        metrics,
        shutdown.clone(),
    ));
    Ok(())
}

async fn sender(
    store: Store,
    http: reqwest::Client,
    mut signer: Signer,
    limits: Limits,
    m: WebPushMetrics,
    shutdown: Shutdown,
) {
    let permits = Arc::new(Semaphore::new(limits.concurrency.max(1)));
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let lease = match store
            .push_lease(limits.subscriptions, limits.per_subscription)
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "Web Push: could not lease outbox rows");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(STORE_RETRY) => continue,
                }
            }
        };
        if lease.rows.is_empty() {
            if let Err(e) = lease.complete(&PushResult::default()).await {
                tracing::warn!(error = %Chain(&e), "Web Push: could not release a lease");
            }
            // Our own commits wake us at once; other replicas' (and backoffs ending) are
            // found by the poll.
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = store.outbox().written_to(OutboxChannel::WebPush) => {}
                () = tokio::time::sleep(limits.poll) => {}
            }
            continue;
        }
        // Owned (a few hundred small rows), so the sends can run concurrently.
        let mut queues: BTreeMap<i64, Vec<PushRow>> = BTreeMap::new();
        for row in &lease.rows {
            queues
                .entry(row.subscription)
                .or_default()
                .push(row.clone());
        }
        let mut jobs = Vec::with_capacity(queues.len());
        let mut orphans = Vec::new();
        let mut expired = Vec::new();
        let now_ms = Utc::now().timestamp_millis();
        for (sid, rows) in queues {
            let Some(target) = lease.targets.get(&sid) else {
                // Its subscription was deleted after the lease read the rows: nobody to
                // send them to.
                orphans.extend(rows.iter().map(|r| r.id));
                continue;
            };
            if is_expired(target.expires, now_ms) {
                // Past the browser's `expirationTime` the push service refuses it anyway
                // (and the browser has subscribed anew, through `pushsubscriptionchange`):
                // removed like a 410, with its queue, without a request.
                tracing::info!(
                    subscription = sid,
                    "Web Push: the subscription is past its expirationTime; removing it"
                );
                expired.push(sid);
                continue;
            }
            let auth = signer.authorization(&target.endpoint);
            jobs.push((target.clone(), rows, auth));
        }
        // Each queue on a task of its own, at most `concurrency` sending at once across
        // batches (a straggler keeps its permit).
        let mut running: JoinSet<QueueOutcome> = JoinSet::new();
        let mut in_flight: BTreeSet<i64> = BTreeSet::new();
        for (target, rows, auth) in jobs {
            in_flight.insert(target.id);
            let (http, limits, m, permits) =
                (http.clone(), limits.clone(), m.clone(), permits.clone());
            running.spawn(async move {
                // Never closed; if it were, the queue would go on without a permit.
                let _permit = permits.acquire_owned().await.ok();
                send_queue(&http, target, rows, auth, &limits, &m).await
            });
        }
        let mut outcomes = Vec::with_capacity(in_flight.len());
        let grace = tokio::time::sleep(BATCH_GRACE);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                joined = running.join_next() => match joined {
                    Some(Ok(o)) => {
                        in_flight.remove(&o.subscription);
                        outcomes.push(o);
                    }
                    // A queue task that panicked: its rows stay, sent again by a later lease.
                    Some(Err(_)) => {}
                    None => break,
                },
                () = &mut grace => break,
            }
        }
        let mut result = fold(outcomes, &m);
        result.done.extend(orphans);
        for sid in expired {
            m.removed.inc();
            result.gone.push(sid);
        }
        // Queues still sending (a push service that accepts and does not answer) do not
        // hold up the rest: the batch is recorded now, and they are marked busy (no lease,
        // here or on another replica, takes them) until they record their own outcome, or,
        // if this replica dies first, until their requests would have timed out.
        let busy_until = Utc::now()
            + chrono::Duration::from_std(QUEUE_BUDGET + limits.request_timeout + BATCH_GRACE)
                .unwrap_or(chrono::Duration::seconds(60));
        result
            .busy
            .extend(in_flight.iter().map(|sid| (*sid, busy_until)));
        if let Err(e) = lease.complete(&result).await {
            // The rows stay; they are sent again (a redelivery, which workers drop by id).
            tracing::warn!(error = %Chain(&e), "Web Push: could not record a batch");
        }
        if !running.is_empty() {
            // After the batch's record, so the stragglers' own outcome overwrites `busy`.
            shutdown.spawn(stragglers(store.clone(), running, m.clone()));
        }
    }
}

/// Waits for the queues a batch left running and records what they did, in a transaction
/// of their own.
async fn stragglers(store: Store, mut running: JoinSet<QueueOutcome>, m: WebPushMetrics) {
    let mut outcomes = Vec::new();
    while let Some(joined) = running.join_next().await {
        if let Ok(o) = joined {
            outcomes.push(o);
        }
    }
    let mut result = fold(outcomes, &m);
    // A straggler that drained has its busy mark cleared even with nothing accepted.
    result.healthy.append(&mut result.drained);
    if let Err(e) = store.push_complete(&result).await {
        // The rows stay; the busy mark ends by itself; they are sent again.
        tracing::warn!(error = %Chain(&e), "Web Push: could not record a slow queue");
    }
}

/// What a batch's queues did, as the store records it.
fn fold(outcomes: Vec<QueueOutcome>, m: &WebPushMetrics) -> PushResult {
    let mut result = PushResult::default();
    for o in outcomes {
        result.done.extend(o.done);
        match o.end {
            QueueEnd::Drained => {
                if o.accepted {
                    result.healthy.push(o.subscription);
                } else {
                    result.drained.push(o.subscription);
                }
            }
            QueueEnd::Gone => {
                m.removed.inc();
                result.gone.push(o.subscription);
            }
            QueueEnd::RetryAt(at) => result.retry.push((o.subscription, at)),
        }
    }
    result
}

#[derive(Debug)]
enum QueueEnd {
    /// Every row was handled (or the budget ran out with nothing failing).
    Drained,
    /// The push service says the subscription no longer exists.
    Gone,
    /// Back off until then; the rows not done stay.
    RetryAt(DateTime<Utc>),
}

#[derive(Debug)]
struct QueueOutcome {
    subscription: i64,
    done: Vec<i64>,
    accepted: bool,
    end: QueueEnd,
}

/// Sends one subscription's rows in order, stopping at the first that must be retried.
async fn send_queue(
    http: &reqwest::Client,
    target: PushTarget,
    rows: Vec<PushRow>,
    auth: Result<String, vapid::SignError>,
    limits: &Limits,
    m: &WebPushMetrics,
) -> QueueOutcome {
    let started = Instant::now();
    let mut out = QueueOutcome {
        subscription: target.id,
        done: Vec::new(),
        accepted: false,
        end: QueueEnd::Drained,
    };
    let keys = match BrowserKeys::of(&target) {
        Some(k) => k,
        None => {
            // Keys that were checked on the way in and no longer parse: nothing can ever
            // be sent to this subscription.
            tracing::warn!(
                subscription = target.id,
                "Web Push: a subscription's keys are unusable; removing it"
            );
            out.end = QueueEnd::Gone;
            return out;
        }
    };
    for row in rows {
        if started.elapsed() > QUEUE_BUDGET {
            break;
        }
        if !policy::wants_push(&row.user, row.kind, &row.payload) {
            out.done.push(row.id);
            continue;
        }
        let push = match row.kind {
            OutboxKind::Notification => payload::notification(&row.payload),
            OutboxKind::Unread => payload::badge(&row.payload),
        };
        let (Some(push), Ok(auth)) = (push, &auth) else {
            tracing::warn!(
                row = row.id,
                "Web Push: a row could not be made into a push; dropped"
            );
            out.done.push(row.id);
            continue;
        };
        let body = match web_push_native::encrypt(push.body, &keys.public, &keys.auth) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(row = row.id, error = %e, "Web Push: encryption failed; dropped");
                out.done.push(row.id);
                continue;
            }
        };
        // An expiring notification is kept by the push service only for the time it has
        // left, and one already past is not sent at all.
        let now = chrono::Utc::now();
        let ttl = match push.expires_at {
            Some(t) => limits.ttl.min(crate::domain::remaining_seconds(t, now)),
            None => limits.ttl,
        };
        if push.expires_at.is_some_and(|t| t <= now) {
            out.done.push(row.id);
            continue;
        }
        let sent_at = Instant::now();
        let answer = http
            .post(&target.endpoint)
            .header("TTL", ttl.to_string())
            .header("Urgency", push.urgency.as_str())
            .header("Topic", push.topic.as_str())
            .header("Content-Encoding", "aes128gcm")
            .header("Content-Type", "application/octet-stream")
            .header("Authorization", auth.as_str())
            .body(body)
            .send()
            .await;
        m.latency.observe(sent_at.elapsed().as_secs_f64());
        let (status, retry_after) = match answer {
            Ok(r) => (Some(r.status().as_u16()), retry_after(r.headers())),
            Err(e) => {
                tracing::debug!(subscription = target.id, error = %Chain(&e), "Web Push: no answer from the push service");
                (None, None)
            }
        };
        match status {
            Some(200..=299) => {
                m.sent.inc();
                out.accepted = true;
                out.done.push(row.id);
            }
            Some(s @ (404 | 410)) => {
                m.failed(Some(s));
                tracing::info!(
                    subscription = target.id,
                    status = s,
                    "Web Push: the subscription is gone; removing it"
                );
                out.end = QueueEnd::Gone;
                return out;
            }
            Some(s @ (429 | 500..=599)) | Some(s @ 408) => {
                m.failed(Some(s));
                out.end = QueueEnd::RetryAt(retry_at(target.failures, retry_after));
                return out;
            }
            None => {
                m.failed(None);
                out.end = QueueEnd::RetryAt(retry_at(target.failures, None));
                return out;
            }
            Some(s) => {
                // 413 and the other 4xx: this push can never be taken; retrying would
                // hold the queue for ever.
                m.failed(Some(s));
                tracing::warn!(
                    subscription = target.id,
                    row = row.id,
                    status = s,
                    "Web Push: the push service refused a push; dropped"
                );
                out.done.push(row.id);
            }
        }
    }
    out
}

/// Whether a subscription's `expirationTime` (ms since the epoch) has passed by `now_ms`.
fn is_expired(expires: Option<i64>, now_ms: i64) -> bool {
    expires.is_some_and(|at| at <= now_ms)
}

/// The browser's keys, decoded once per queue.
struct BrowserKeys {
    public: web_push_native::p256::PublicKey,
    auth: web_push_native::Auth,
}

impl BrowserKeys {
    fn of(t: &PushTarget) -> Option<Self> {
        let p = URL_SAFE_NO_PAD.decode(&t.p256dh).ok()?;
        let a = URL_SAFE_NO_PAD.decode(&t.auth).ok()?;
        if a.len() != 16 {
            return None;
        }
        let mut auth = web_push_native::Auth::default();
        auth.copy_from_slice(&a);
        Some(Self {
            public: web_push_native::p256::PublicKey::from_sec1_bytes(&p).ok()?,
            auth,
        })
    }
}

/// `Retry-After` in seconds or as an HTTP date.
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// When a subscription that failed `failures` times before may be tried again: after its
/// `Retry-After` if it gave one, and never sooner than the exponential backoff.
fn retry_at(failures: i32, retry_after: Option<Duration>) -> DateTime<Utc> {
    let exp = u32::try_from(failures.clamp(0, 16)).unwrap_or(16);
    let backoff = (MIN_BACKOFF * 2u32.pow(exp)).min(MAX_BACKOFF);
    let wait = retry_after
        .map(|r| r.min(MAX_RETRY_AFTER))
        .unwrap_or_default()
        .max(backoff);
    Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::seconds(300))
}

/// Measures the outbox depth, and drops rows older than the TTL: their push would have
/// expired at the push service anyway, and a queue behind a long outage starts fresh.
async fn housekeeping(store: Store, ttl: Duration, m: WebPushMetrics, shutdown: Shutdown) {
    loop {
        match store
            .outbox_depth_of(OutboxChannel::WebPush, DEPTH_CAP)
            .await
        {
            Ok(depth) => {
                m.outbox_depth.set(depth);
            }
            Err(e) => tracing::warn!(error = %Chain(&e), "could not measure the Web Push outbox"),
        }
        if let Ok(age) = chrono::Duration::from_std(ttl) {
            match store
                .outbox_drop_before_of(OutboxChannel::WebPush, Utc::now() - age)
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    dropped = n,
                    "dropped Web Push outbox rows older than their TTL"
                ),
                Err(e) => tracing::warn!(error = %Chain(&e), "could not drop old Web Push rows"),
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(HOUSEKEEPING_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_honoured_and_backoff_grows() {
        let now = Utc::now();
        let at = retry_at(0, Some(Duration::from_secs(2)));
        assert!(at >= now + chrono::Duration::seconds(2));
        assert!(at < now + chrono::Duration::seconds(3));
        let at = retry_at(3, None);
        assert!(at >= now + chrono::Duration::seconds(8));
        let at = retry_at(40, Some(Duration::from_secs(86_400 * 30)));
        assert!(at <= now + chrono::Duration::seconds(3601));
    }

    #[test]
    fn a_subscription_past_its_expiration_time_is_expired() {
        assert!(!is_expired(None, 1_000));
        assert!(!is_expired(Some(1_001), 1_000));
        assert!(is_expired(Some(1_000), 1_000));
        assert!(is_expired(Some(0), 1_000));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("Retry-After", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        h.insert(
            "Retry-After",
            httpdate::fmt_http_date(later).parse().unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120));
    }
}
