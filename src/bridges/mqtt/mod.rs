//! The MQTT bridge: every committed notification, and every change of a user's unread
//! count, is published to an MQTT broker, at least once, from the store's transactional
//! outbox.
//!
//! * `{prefix}/users/{user}/notifications`, QoS 1: the notification's JSON exactly as the
//!   REST API shows it (with `seq`).
//! * `{prefix}/users/{user}/unread`, QoS 1, retained: `{"unread", "seq", "version"}`;
//!   `version` grows with every change, so a consumer keeps the message with the highest.
//!
//! Why an outbox rather than publishing after the commit: a replica can die between the
//! commit and the publish, and the broker can be down for an hour. The row is written in
//! the commit's own transaction and deleted only after the broker's PUBACK, so nothing
//! committed is ever lost, and the API never waits for the broker.
//!
//! One worker per replica. Each round it leases some users' oldest rows (on Postgres a
//! transaction holding each user's oldest row `FOR UPDATE SKIP LOCKED`, so replicas share
//! users without publishing one twice or out of order), publishes them in id order on one
//! connection, and deletes those the broker acknowledged. After a failure the connection
//! is dropped and a new one starts clean; unacknowledged rows are published again. So a
//! consumer may see a message twice (it drops what it has seen by `seq`), but per user the
//! first copies arrive in `seq` order: one TCP connection keeps the order, and a lease is
//! only taken over after the previous holder's last publish has either been acknowledged
//! or abandoned with the rows left in place.

mod options;

pub use options::{BrokerOptions, OptionsError};

use crate::configuration::MqttSettings;
use crate::metrics::MqttMetrics;
use crate::shutdown::Shutdown;
use crate::store::{OutboxChannel, OutboxKind, OutboxLease, OutboxRow, Store, StoreError};
use crate::telemetry::Chain;
use chrono::Utc;
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, Outgoing, Packet, QoS};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// First and longest wait before reconnecting to a broker that is down.
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A broker that accepts TCP but does not answer CONNECT within this is treated as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the outbox depth is measured (and old rows dropped, when configured).
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(5);
/// How often at most it looks for ended quiet-hours holds.
const QUIET_RELEASE_MIN: Duration = Duration::from_millis(250);
/// A lease ends (on Postgres, by `idle_in_transaction_session_timeout`) after 60 s; a batch
/// must be abandoned well before that.
const MAX_ACK_TIMEOUT: Duration = Duration::from_secs(45);
/// Events buffered between the client's event loop task and the worker.
const EVENTS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("the MQTT connection failed")]
    Connection(#[from] ConnectionError),
    #[error("the MQTT broker did not answer CONNECT in time")]
    ConnectTimeout,
    #[error("the MQTT broker did not acknowledge a batch in time")]
    AckTimeout,
    #[error("the MQTT client stopped")]
    Client(#[from] rumqttc::ClientError),
    #[error("the MQTT event loop ended")]
    Closed,
    #[error("the outbox could not be read or updated")]
    Store(#[from] StoreError),
}

/// Topic names for one prefix.
#[derive(Debug, Clone)]
struct Topics {
    prefix: String,
}

impl Topics {
    fn for_row(&self, row: &OutboxRow) -> String {
        let leaf = match row.kind {
            OutboxKind::Notification => "notifications",
            OutboxKind::Unread => "unread",
        };
        format!("{}/users/{}/{leaf}", self.prefix, row.user)
    }
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    users: u32,
    per_user: u32,
    ack_timeout: Duration,
    poll: Duration,
    capacity: usize,
}

/// Starts the bridge's worker and its housekeeping under `shutdown` (tracked, so startup
/// awaits them before the store closes). Checks the settings first: a bad URL or an
/// unreadable certificate stops the replica at start, not at the first publish.
pub fn start(
    store: Store,
    settings: &MqttSettings,
    url: &str,
    metrics: MqttMetrics,
    shutdown: &Shutdown,
) -> Result<(), OptionsError> {
    let broker = BrokerOptions::from_settings(settings, url)?;
    let limits = Limits {
        users: settings.batch_users,
        per_user: settings.batch_per_user,
        ack_timeout: Duration::from_secs(settings.ack_timeout_seconds).min(MAX_ACK_TIMEOUT),
        poll: Duration::from_millis(settings.poll_millis),
        capacity: options::batch_capacity(settings),
    };
    let topics = Topics {
        prefix: settings.topic_prefix.clone(),
    };
    let max_age = Duration::from_secs(settings.max_age_seconds);
    tracing::info!(
        broker = ?broker,
        prefix = %topics.prefix,
        "the MQTT bridge is on: notifications go to the broker through the outbox"
    );
    shutdown.spawn(housekeeping(
        store.clone(),
        max_age,
        metrics.clone(),
        shutdown.clone(),
    ));
    shutdown.spawn(super::release_quiet_hours(
        store.clone(),
        OutboxChannel::Mqtt,
        limits.poll.max(QUIET_RELEASE_MIN),
        shutdown.clone(),
    ));
    shutdown.spawn(worker(
        store,
        broker,
        limits,
        topics,
        metrics,
        shutdown.clone(),
    ));
    Ok(())
}

async fn worker(
    store: Store,
    broker: BrokerOptions,
    limits: Limits,
    topics: Topics,
    m: MqttMetrics,
    shutdown: Shutdown,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let mut connected = false;
        let result = session(
            &store,
            &broker,
            limits,
            &topics,
            &m,
            &shutdown,
            &mut connected,
        )
        .await;
        m.connected.set(0);
        match result {
            Ok(()) => return,
            Err(e) => {
                if connected {
                    backoff = MIN_BACKOFF;
                }
                m.failures.inc();
                tracing::warn!(
                    error = %Chain(&e),
                    outbox = m.outbox_depth.get(),
                    retry_in_ms = backoff.as_millis() as u64,
                    "MQTT bridge: no broker connection; notifications wait in the outbox"
                );
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The client's event loop, polled in a task of its own (so the worker can wait on the
/// store or a timer without starving the keep-alive pings), its events passed on in order.
/// Aborted when the session ends.
struct Events {
    rx: mpsc::Receiver<Result<Event, ConnectionError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Events {
    fn start(mut events: EventLoop) -> Self {
        let (tx, rx) = mpsc::channel(EVENTS);
        let task = tokio::spawn(async move {
            loop {
                let ev = events.poll().await;
                let failed = ev.is_err();
                if tx.send(ev).await.is_err() || failed {
                    return;
                }
            }
        });
        Self { rx, task }
    }

    async fn next(&mut self) -> Result<Event, BridgeError> {
        match self.rx.recv().await {
            Some(ev) => Ok(ev?),
            None => Err(BridgeError::Closed),
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One connection: connect, then lease and publish batches until the connection fails
/// (an error) or the replica stops (`Ok`).
async fn session(
    store: &Store,
    broker: &BrokerOptions,
    limits: Limits,
    topics: &Topics,
    m: &MqttMetrics,
    shutdown: &Shutdown,
    connected: &mut bool,
) -> Result<(), BridgeError> {
    let (client, events) = AsyncClient::new(broker.mqtt_options(), limits.capacity);
    let mut events = Events::start(events);
    let connack = tokio::time::timeout(CONNECT_TIMEOUT, async {
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = events.next().await? {
                return Ok::<(), BridgeError>(());
            }
        }
    });
    tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        r = connack => r.map_err(|_| BridgeError::ConnectTimeout)??,
    }
    *connected = true;
    m.connected.set(1);
    tracing::info!("MQTT bridge connected to the broker");

    loop {
        if shutdown.is_cancelled() {
            let _ = client.try_disconnect();
            return Ok(());
        }
        let lease = store.outbox_lease(limits.users, limits.per_user).await?;
        if lease.rows().is_empty() {
            lease.complete(&[]).await?;
            // Our own commits wake us at once; other replicas' are found by the poll.
            let idle = tokio::time::sleep(limits.poll);
            tokio::pin!(idle);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = store.outbox().written() => break,
                    () = &mut idle => break,
                    ev = events.next() => { ev?; }
                }
            }
            continue;
        }
        let stop = publish_batch(&client, &mut events, lease, limits, topics, m, shutdown).await?;
        if stop {
            let _ = client.try_disconnect();
            return Ok(());
        }
    }
}

/// Publishes a lease's rows in order and deletes those acknowledged. Returns whether the
/// replica is stopping. On a failure the acknowledged rows are still deleted; the others
/// stay for the next connection.
async fn publish_batch(
    client: &AsyncClient,
    events: &mut Events,
    lease: OutboxLease,
    limits: Limits,
    topics: &Topics,
    m: &MqttMetrics,
    shutdown: &Shutdown,
) -> Result<bool, BridgeError> {
    let (plan, mut done) = plan(lease.rows());
    let mut queued: VecDeque<i64> = VecDeque::with_capacity(plan.len());
    let mut result = Ok(false);
    for row in &plan {
        let retain = row.kind == OutboxKind::Unread;
        if let Err(e) = client.try_publish(
            topics.for_row(row),
            QoS::AtLeastOnce,
            retain,
            row.payload.clone().into_bytes(),
        ) {
            result = Err(e.into());
            break;
        }
        queued.push_back(row.id);
    }
    let expected = queued.len();
    let mut in_flight: HashMap<u16, (i64, Instant)> = HashMap::new();
    let mut acked = 0usize;
    let deadline = Instant::now() + limits.ack_timeout;
    while result.is_ok() && acked < expected {
        tokio::select! {
            ev = events.next() => match ev {
                // rumqttc reports each publish, in the order they were queued, as it writes it.
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                    if let Some(id) = queued.pop_front() {
                        in_flight.insert(pkid, (id, Instant::now()));
                        m.published.inc();
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some((id, at)) = in_flight.remove(&ack.pkid) {
                        done.push(id);
                        acked += 1;
                        m.acknowledged.inc();
                        m.ack_latency.observe(at.elapsed().as_secs_f64());
                    }
                }
                Ok(_) => {}
                Err(e) => result = Err(e),
            },
            () = tokio::time::sleep_until(deadline) => result = Err(BridgeError::AckTimeout),
            // Stopping: keep what was acknowledged; the rest waits for the next start.
            () = shutdown.cancelled() => result = Ok(true),
        }
        if matches!(result, Ok(true)) {
            break;
        }
    }
    lease.complete(&done).await?;
    result
}

/// Which rows of a lease to publish, and which are redundant: of one user's unread rows
/// only the newest is published (the retained message keeps only the last anyway). The
/// older ones are deleted with the batch; that is safe even if the newest is not
/// acknowledged, because then the newest stays in the outbox and is published later.
fn plan(rows: &[OutboxRow]) -> (Vec<&OutboxRow>, Vec<i64>) {
    let mut newest_unread: HashMap<&str, i64> = HashMap::new();
    for r in rows.iter().filter(|r| r.kind == OutboxKind::Unread) {
        newest_unread.insert(r.user.as_str(), r.id);
    }
    let mut publish = Vec::with_capacity(rows.len());
    let mut redundant = Vec::new();
    let now = Utc::now();
    for r in rows {
        if r.kind == OutboxKind::Unread && newest_unread.get(r.user.as_str()) != Some(&r.id) {
            redundant.push(r.id);
        } else if r.kind == OutboxKind::Notification
            && crate::store::expires_at_of(&r.payload).is_some_and(|t| t <= now)
        {
            // The bridge speaks MQTT 3.1.1, which has no message expiry: a notification
            // past its `expires_at` is dropped here instead of reaching the broker.
            redundant.push(r.id);
        } else {
            publish.push(r);
        }
    }
    (publish, redundant)
}

/// Measures the outbox depth (a metric, and a log line while the broker is away) and,
/// when a maximum age is configured, drops older rows.
async fn housekeeping(store: Store, max_age: Duration, m: MqttMetrics, shutdown: Shutdown) {
    let every = if max_age.is_zero() {
        HOUSEKEEPING_EVERY
    } else {
        HOUSEKEEPING_EVERY.min((max_age / 2).max(Duration::from_secs(1)))
    };
    loop {
        match store.outbox_depth(crate::store::OUTBOX_DEPTH_CAP).await {
            Ok(depth) => {
                m.outbox_depth.set(depth);
                if depth > 0 && m.connected.get() == 0 {
                    tracing::warn!(
                        outbox = depth,
                        "MQTT broker unreachable: notifications wait in the outbox"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %Chain(&e), "could not measure the MQTT outbox"),
        }
        if let Ok(age) = chrono::Duration::from_std(max_age) {
            if !max_age.is_zero() {
                match store.outbox_drop_before(Utc::now() - age).await {
                    Ok(0) => {}
                    Ok(n) => {
                        m.dropped.inc_by(n);
                        tracing::warn!(
                            dropped = n,
                            max_age_seconds = max_age.as_secs(),
                            "dropped MQTT outbox rows older than the maximum age; consumers resync over REST"
                        );
                    }
                    Err(e) => {
                        tracing::warn!(error = %Chain(&e), "could not drop old MQTT outbox rows")
                    }
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, user: &str, kind: OutboxKind) -> OutboxRow {
        OutboxRow {
            id,
            user: user.into(),
            kind,
            payload: String::new(),
        }
    }

    #[test]
    fn only_each_users_newest_unread_is_published() {
        use OutboxKind::{Notification as N, Unread as U};
        let rows = [
            row(1, "a", N),
            row(2, "a", U),
            row(3, "b", N),
            row(4, "b", U),
            row(5, "a", N),
            row(6, "a", U),
        ];
        let (publish, redundant) = plan(&rows);
        let ids: Vec<i64> = publish.iter().map(|r| r.id).collect();
        assert_eq!(ids, [1, 3, 4, 5, 6]);
        assert_eq!(redundant, [2]);
    }

    #[test]
    fn topics_follow_the_prefix() {
        let t = Topics {
            prefix: "acme/tidings".into(),
        };
        assert_eq!(
            t.for_row(&row(1, "alice", OutboxKind::Notification)),
            "acme/tidings/users/alice/notifications"
        );
        assert_eq!(
            t.for_row(&row(1, "alice", OutboxKind::Unread)),
            "acme/tidings/users/alice/unread"
        );
    }
}
