//! Redis pub/sub between replicas, routed by user.
//!
//! Each user has a channel, `<channel>:u:<user id>`, and a replica subscribes to it only
//! while it holds one of the user's connections (the hub tells it, through
//! [`Presence`]). So a replica receives the events of the users it holds and no others: its
//! bus cost follows its own connections, not the size of the cluster. (One channel for all
//! events, as before, made every replica decode every event: R × E work in all.) A channel
//! per user, rather than per shard of users, because a shard channel carries the events of
//! every user in the shard, and a replica holding many users would end up subscribed to
//! every shard, which is the single channel again. Redis keeps a subscribed channel in a
//! hash table, so 100,000 channels per replica cost it a few MiB.
//!
//! `TIDINGS__REDIS__ROUTING=shared` keeps the single channel instead (every event on
//! `<channel>`, decoded by every replica), to measure against and to fall back on.
//!
//! One more channel, `<channel>` itself, carries the rare "catch up" broadcast (the
//! publisher lost events) to every replica.
//!
//! On a Redis Cluster (a comma-separated list of seed nodes, or one node that reports
//! `cluster_enabled:1`) the same channels are sharded channels: `SPUBLISH` and `SSUBSCRIBE`
//! (Redis 7), so a channel lives on the shard that owns its slot and the traffic spreads over
//! every shard. User ids cannot hold `{`, so no hash tag pins channels to a few slots.
//!
//! The replay race. A connection's replay read starts as soon as it joins, which may be
//! before its user's channel is confirmed: an event committed after the read and before the
//! subscription would be missed. So every subscription confirmation Redis sends (the first
//! one, and every one after a reconnect, a slot move or a fail-over) has the user's session
//! catch up from the database, from each connection's last delivered seq; the session's
//! sequencer merges that read with live events, dropping duplicates.
//!
//! A confirmation is not a promise, on a cluster. The cluster client keeps one connection per
//! node and replaces them on its own while slots change hands: during a fail-over, several
//! subscribe commands redirected at once to the new primary each open a connection to it, and
//! each new one takes the place of the last in the client's map; those it replaced close, and
//! their subscriptions go with them, with neither a disconnection nor an unsubscribe push.
//! The channel stays confirmed here and receives nothing: its events are lost for good unless
//! a later one shows the gap (in the fail-over test, the last events of a run went missing
//! that way). So the subscriber does not trust its own bookkeeping: every second it asks each
//! node how many channels its connection holds (`CLIENT INFO`, `sub` + `ssub`), and when they
//! are fewer than the channels it subscribed, twice in a row, it starts over on a fresh
//! connection: every channel is subscribed again and every confirmation catches its user up.
//!
//! Two tasks own the Redis connections:
//! * the publisher drains a bounded queue and pipelines (S)PUBLISHes. While Redis is down it
//!   keeps failed events in a bounded buffer and sends them when Redis returns; if even that
//!   overflows, it sends one "catch up" event instead, and every replica re-reads the
//!   database;
//! * the subscriber reconciles the channels it is subscribed to with the users the hub
//!   holds, in bounded pipelined batches. When the connection drops, it reconnects and
//!   subscribes to every channel again (each confirmation catches its user up).

use super::envelope::{self, CatchUp, Received};
use super::{BusState, Event};
use crate::configuration::Routing;
use crate::domain::UserId;
use crate::hub::{Hub, Presence};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use futures_util::StreamExt;
use redis::cluster_async::ClusterConnection;
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, Notify, OnceCell};
use tokio_util::sync::CancellationToken;

/// Events queued for the publisher.
const QUEUE: usize = 16 * 1024;
/// Events kept for retry while Redis is down.
const RETRY_BUFFER: usize = 16 * 1024;
/// PUBLISHes per pipeline.
const BATCH: usize = 256;
/// Channels per SUBSCRIBE (one Redis) or SSUBSCRIBEs in flight at once (a cluster, where
/// each channel may live on another shard): bounds a restart's resubscription of thousands.
const SUBSCRIBE_BATCH: usize = 512;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// A subscribe batch may wait for a slot map refresh on a cluster.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the subscriber checks its connection, and counts the channels the server holds
/// for it, when nothing else happens.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Checks in a row that may find fewer channels held than subscribed before the subscriber
/// starts over. One short count can be a moved slot whose re-subscription (after the server's
/// unsubscribe push) has not run yet; two a second apart is a subscription that is gone.
const SHORT_CHECKS: u32 = 2;
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long after a resubscription on a cluster every session catches up once more.
const SETTLE: Duration = Duration::from_secs(3);

const UP: u8 = 1;
const DOWN: u8 = 2;

/// The channel names of one deployment.
#[derive(Debug, Clone)]
struct Channels {
    /// The broadcast channel, and the prefix of every user's channel.
    base: String,
    /// `<base>:u:`
    user_prefix: String,
    /// [`Routing::Shared`]: every event on `base`, and no user channels.
    shared: bool,
}

impl Channels {
    fn new(base: String, routing: Routing) -> Self {
        let user_prefix = format!("{base}:u:");
        Self {
            base,
            user_prefix,
            shared: routing == Routing::Shared,
        }
    }

    fn user(&self, user: &UserId) -> String {
        format!("{}{}", self.user_prefix, user.as_str())
    }

    /// The channel an event travels on: its user's, or the broadcast one.
    fn of(&self, event: &Event) -> String {
        match event.user() {
            Some(user) if !self.shared => self.user(user),
            _ => self.base.clone(),
        }
    }

    fn user_of(&self, channel: &[u8]) -> Option<UserId> {
        let name = std::str::from_utf8(channel).ok()?;
        UserId::parse(name.strip_prefix(&self.user_prefix)?).ok()
    }
}

/// Where the bus connects: decided once, on the first successful contact.
#[derive(Debug, Clone)]
enum Target {
    Single(redis::ConnectionInfo),
    Cluster(Vec<redis::ConnectionInfo>),
}

impl Target {
    fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }
}

/// The seed URLs, parsed, with RESP3 (subscription pushes share the connection).
fn parse_urls(urls: &str) -> Result<Vec<redis::ConnectionInfo>, redis::RedisError> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            let info = u.into_connection_info()?;
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            Ok(info.set_redis_settings(settings))
        })
        .collect()
}

/// A list of seeds is a cluster; one node is asked whether it is one.
async fn detect(seeds: &[redis::ConnectionInfo]) -> Result<Target, redis::RedisError> {
    if seeds.len() > 1 {
        return Ok(Target::Cluster(seeds.to_vec()));
    }
    let Some(seed) = seeds.first() else {
        return Err((redis::ErrorKind::InvalidClientConfig, "no Redis URL").into());
    };
    let client = redis::Client::open(seed.clone())?;
    let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| timed_out("connect"))??;
    let info: String = tokio::time::timeout(
        COMMAND_TIMEOUT,
        redis::cmd("INFO").arg("cluster").query_async(&mut conn),
    )
    .await
    .map_err(|_| timed_out("INFO"))??;
    if info.lines().any(|l| l.trim() == "cluster_enabled:1") {
        Ok(Target::Cluster(vec![seed.clone()]))
    } else {
        Ok(Target::Single(seed.clone()))
    }
}

fn timed_out(what: &'static str) -> redis::RedisError {
    (redis::ErrorKind::Io, "timed out", what.to_owned()).into()
}

/// The users whose channels this replica wants, as the hub reports them, and what changed
/// since the subscriber last looked.
#[derive(Debug, Default)]
pub struct Subscriptions {
    state: Mutex<Wanted>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct Wanted {
    users: HashSet<UserId>,
    /// Users joined or left since the subscriber's last reconciliation.
    changed: HashSet<UserId>,
    /// Users whose subscription the server dropped (a slot moved away): subscribe again.
    lost: HashSet<UserId>,
}

impl Subscriptions {
    fn lock(&self) -> MutexGuard<'_, Wanted> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn holds(&self, user: &UserId) -> bool {
        self.lock().users.contains(user)
    }
}

impl Presence for Subscriptions {
    fn joined(&self, user: &UserId) {
        let mut w = self.lock();
        if w.users.insert(user.clone()) {
            w.changed.insert(user.clone());
            drop(w);
            self.wake.notify_one();
        }
    }

    fn left(&self, user: &UserId) {
        let mut w = self.lock();
        if w.users.remove(user) {
            w.changed.insert(user.clone());
            drop(w);
            self.wake.notify_one();
        }
    }
}

#[derive(Debug, Clone)]
pub struct RedisBus {
    hub: Hub,
    tx: mpsc::Sender<Arc<Event>>,
    state: Arc<AtomicU8>,
    lost: Arc<AtomicBool>,
}

/// What both tasks share.
#[derive(Debug)]
struct Shared {
    seeds: Vec<redis::ConnectionInfo>,
    target: OnceCell<Target>,
    channels: Channels,
    origin: String,
    hub: Hub,
    subs: Arc<Subscriptions>,
    state: Arc<AtomicU8>,
}

impl Shared {
    async fn target(&self) -> Result<Target, redis::RedisError> {
        self.target
            .get_or_try_init(|| detect(&self.seeds))
            .await
            .cloned()
    }

    fn metrics(&self) -> &Metrics {
        self.hub.metrics()
    }
}

impl RedisBus {
    /// Starts the publisher and subscriber tasks; they stop when `shutdown` is cancelled.
    /// `url` is one Redis URL, or a comma-separated list of a cluster's seed nodes.
    pub fn start(
        url: &str,
        channel: String,
        routing: Routing,
        hub: Hub,
        shutdown: &Shutdown,
    ) -> Result<Self, redis::RedisError> {
        let seeds = parse_urls(url)?;
        let state = Arc::new(AtomicU8::new(DOWN));
        let lost = Arc::new(AtomicBool::new(false));
        let subs = Arc::new(Subscriptions::default());
        let shared = Arc::new(Shared {
            seeds,
            target: OnceCell::new(),
            channels: Channels::new(channel, routing),
            origin: uuid::Uuid::new_v4().to_string(),
            hub: hub.clone(),
            subs: subs.clone(),
            state: state.clone(),
        });
        hub.set_presence(subs);
        let (tx, rx) = mpsc::channel(QUEUE);
        shutdown.spawn(publisher(
            shared.clone(),
            rx,
            lost.clone(),
            shutdown.token().clone(),
        ));
        shutdown.spawn(subscriber(shared, shutdown.token().clone()));
        Ok(Self {
            hub,
            tx,
            state,
            lost,
        })
    }

    pub fn publish(&self, events: Vec<Event>) {
        for event in events {
            let event = Arc::new(event);
            self.hub.dispatch(event.clone());
            if self.tx.try_send(event).is_err() {
                // The publisher is far behind: other replicas will catch up from the database.
                self.lost.store(true, Ordering::Release);
            }
        }
    }

    pub fn state(&self) -> BusState {
        match self.state.load(Ordering::Acquire) {
            UP => BusState::Up,
            _ => BusState::Down,
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(100) * 2u32.saturating_pow(attempt.min(6));
    base.min(MAX_BACKOFF)
}

/// The publisher's connection.
enum PubConn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl PubConn {
    async fn open(target: &Target) -> Result<Self, redis::RedisError> {
        match target {
            Target::Single(info) => {
                let client = redis::Client::open(info.clone())?;
                Ok(PubConn::Single(
                    client.get_multiplexed_async_connection().await?,
                ))
            }
            Target::Cluster(seeds) => {
                let client = redis::cluster::ClusterClientBuilder::new(seeds.clone())
                    .use_protocol(ProtocolVersion::RESP3)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(COMMAND_TIMEOUT)
                    .build()?;
                Ok(PubConn::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// Publishes the first `n` queued messages; returns how many of them, from the front,
    /// may be forgotten (all of them, or up to the first that failed).
    async fn publish(
        &mut self,
        queued: &VecDeque<(String, String)>,
        n: usize,
    ) -> Result<(), (usize, redis::RedisError)> {
        match self {
            PubConn::Single(c) => {
                let mut pipe = redis::pipe();
                for (channel, json) in queued.iter().take(n) {
                    pipe.cmd("PUBLISH").arg(channel).arg(json).ignore();
                }
                pipe.query_async::<()>(c).await.map_err(|e| (0, e))
            }
            PubConn::Cluster(c) => {
                // Each channel may live on another shard: one SPUBLISH each, all in flight at
                // once (the connection pipelines them per node).
                let results =
                    futures_util::future::join_all(queued.iter().take(n).map(|(channel, json)| {
                        let mut c = c.clone();
                        async move {
                            redis::cmd("SPUBLISH")
                                .arg(channel)
                                .arg(json)
                                .query_async::<()>(&mut c)
                                .await
                        }
                    }))
                    .await;
                match results.into_iter().position(|r| r.is_err()) {
                    None => Ok(()),
                    // Those after the failure are sent again: a duplicate is dropped by
                    // the receiving session's sequencer, a loss would not be noticed.
                    Some(i) => Err((
                        i,
                        (redis::ErrorKind::Io, "SPUBLISH failed on a shard").into(),
                    )),
                }
            }
        }
    }
}

async fn publisher(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Arc<Event>>,
    lost: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut conn: Option<PubConn> = None;
    let mut retry: VecDeque<(String, String)> = VecDeque::new();
    let mut failures = 0u32;
    let mut batch = Vec::with_capacity(BATCH);
    let origin = shared.origin.as_str();
    loop {
        if retry.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                n = rx.recv_many(&mut batch, BATCH) => if n == 0 { return },
            }
        } else {
            // Redis was down: wait a little, taking in what arrives meanwhile.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff(failures)) => {}
                n = rx.recv_many(&mut batch, BATCH) => if n == 0 { return },
            }
        }
        for event in batch.drain(..) {
            match envelope::encode(origin, &event) {
                Ok(json) if retry.len() < RETRY_BUFFER => {
                    retry.push_back((shared.channels.of(&event), json))
                }
                Ok(_) => lost.store(true, Ordering::Release),
                Err(e) => tracing::error!(error = %e, "could not encode an event"),
            }
        }
        if lost.swap(false, Ordering::AcqRel) {
            // Some events were dropped: replace them all with one catch-up, to everyone.
            retry.clear();
            retry.push_back((
                shared.channels.base.clone(),
                envelope::encode(origin, &Event::CatchUp).unwrap_or_default(),
            ));
        }
        if conn.is_none() {
            let open = async {
                let target = shared.target().await?;
                PubConn::open(&target).await
            };
            match tokio::time::timeout(CONNECT_TIMEOUT * 2, open).await {
                Ok(Ok(c)) => conn = Some(c),
                Ok(Err(e)) => log_failure(&mut failures, &e.to_string()),
                Err(_) => log_failure(&mut failures, "connect timed out"),
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        while !retry.is_empty() {
            let n = retry.len().min(BATCH);
            match tokio::time::timeout(COMMAND_TIMEOUT * 2, c.publish(&retry, n)).await {
                Ok(Ok(())) => {
                    retry.drain(..n);
                    if failures > 0 {
                        tracing::info!("publishing to Redis again");
                        failures = 0;
                    }
                }
                Ok(Err((sent, e))) => {
                    retry.drain(..sent);
                    log_failure(&mut failures, &e.to_string());
                    conn = None;
                    break;
                }
                Err(_) => {
                    log_failure(&mut failures, "PUBLISH timed out");
                    conn = None;
                    break;
                }
            }
        }
    }
}

fn log_failure(failures: &mut u32, error: &str) {
    if *failures == 0 {
        tracing::error!(
            error,
            "cannot publish to Redis; other replicas will catch up from the database"
        );
    }
    *failures = failures.saturating_add(1);
}

/// The subscriber's connection. Messages and subscription confirmations arrive as RESP3
/// pushes, handled by [`on_push`] on the connection's own task.
enum SubConn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl SubConn {
    async fn open(
        target: &Target,
        shared: Arc<Shared>,
        dropped: Arc<Notify>,
    ) -> Result<Self, redis::RedisError> {
        let push = move |info: PushInfo| {
            on_push(&shared, &dropped, info);
            Ok::<(), std::convert::Infallible>(())
        };
        match target {
            Target::Single(info) => {
                let client = redis::Client::open(info.clone())?;
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(SUBSCRIBE_TIMEOUT))
                    .set_push_sender(push);
                Ok(SubConn::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ))
            }
            Target::Cluster(seeds) => {
                let client = redis::cluster::ClusterClientBuilder::new(seeds.clone())
                    .use_protocol(ProtocolVersion::RESP3)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(SUBSCRIBE_TIMEOUT)
                    .push_sender(push)
                    .build()?;
                Ok(SubConn::Cluster(client.get_async_connection().await?))
            }
        }
    }

    async fn subscribe(&mut self, channels: Vec<String>, on: bool) -> redis::RedisResult<()> {
        match self {
            SubConn::Single(c) if on => c.subscribe(channels).await,
            SubConn::Single(c) => c.unsubscribe(channels).await,
            SubConn::Cluster(c) => {
                let mut results = futures_util::stream::iter(channels)
                    .map(|channel| {
                        let mut c = c.clone();
                        async move {
                            if on {
                                c.ssubscribe(channel).await
                            } else {
                                c.sunsubscribe(channel).await
                            }
                        }
                    })
                    .buffer_unordered(SUBSCRIBE_BATCH);
                let mut first_error = None;
                while let Some(r) = results.next().await {
                    if let Err(e) = r {
                        first_error.get_or_insert(e);
                    }
                }
                first_error.map_or(Ok(()), Err)
            }
        }
    }

    async fn ping(&mut self) -> redis::RedisResult<()> {
        match self {
            SubConn::Single(c) => redis::cmd("PING").query_async(c).await,
            // Every primary the cluster client holds a connection to must answer: one that
            // does not (killed, its replica not yet promoted) is reported. A primary it holds
            // no connection to is skipped, though, so a PING that passes does not prove every
            // shard is reachable; [`SubConn::held`] finds the channels such a shard lost.
            SubConn::Cluster(c) => {
                use redis::cluster_routing::{
                    MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo,
                };
                c.route_command(
                    redis::cmd("PING"),
                    RoutingInfo::MultiNode((
                        MultipleNodeRoutingInfo::AllMasters,
                        Some(ResponsePolicy::AllSucceeded),
                    )),
                )
                .await
                .map(|_| ())
            }
        }
    }

    /// How many channels the server holds for this subscriber: `sub` + `ssub` of
    /// `CLIENT INFO` on its connection, summed over every primary's on a cluster. A primary
    /// the cluster client holds no connection to is not asked, so the channels it should hold
    /// count as missing, which they are.
    async fn held(&mut self) -> redis::RedisResult<usize> {
        let mut client_info = redis::cmd("CLIENT");
        client_info.arg("INFO");
        let unexpected = || -> redis::RedisError {
            (
                redis::ErrorKind::Client,
                "CLIENT INFO answered without sub= and ssub=",
            )
                .into()
        };
        match self {
            SubConn::Single(c) => {
                let reply: Value = client_info.query_async(c).await?;
                subscriptions_in(&reply).ok_or_else(unexpected)
            }
            SubConn::Cluster(c) => {
                use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
                // No response policy: one reply per primary, keyed by its address.
                let replies = c
                    .route_command(
                        client_info,
                        RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                    )
                    .await?;
                let Value::Map(replies) = replies else {
                    return Err(unexpected());
                };
                replies.iter().try_fold(0usize, |total, (_, reply)| {
                    subscriptions_in(reply)
                        .map(|n| total + n)
                        .ok_or_else(unexpected)
                })
            }
        }
    }
}

/// The channels (`sub=`) and shard channels (`ssub=`) one `CLIENT INFO` line counts; `None`
/// for anything else (an error from that node, a server without those fields).
fn subscriptions_in(reply: &Value) -> Option<usize> {
    let text = match reply {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?,
        Value::VerbatimString { text, .. } => text.as_str(),
        Value::SimpleString(text) => text.as_str(),
        _ => return None,
    };
    let mut found = false;
    let mut total = 0usize;
    for (key, value) in text.split_whitespace().filter_map(|f| f.split_once('=')) {
        if key == "sub" || key == "ssub" {
            total += value.parse::<usize>().ok()?;
            found = true;
        }
    }
    found.then_some(total)
}

/// One push from Redis: a message, a subscription confirmed or dropped, or the connection
/// gone. Runs on the connection's task: it only decodes and hands over, without waiting.
fn on_push(shared: &Shared, dropped: &Notify, info: PushInfo) {
    let channels = &shared.channels;
    let metrics = shared.metrics();
    match info.kind {
        PushKind::Message | PushKind::SMessage => {
            let Some(Value::BulkString(payload)) = info.data.get(1) else {
                return;
            };
            metrics.bus_received.inc();
            let channel_user = info.data.first().and_then(|c| match c {
                Value::BulkString(name) => channels.user_of(name),
                _ => None,
            });
            match envelope::decode(payload, channel_user) {
                Received::Event { origin, .. } if origin == shared.origin => {
                    metrics.bus_dropped.inc();
                }
                Received::Event { event, .. } => match event.user() {
                    // Unsubscribed since, or a message that crossed the unsubscribe.
                    Some(user) if !shared.subs.holds(user) => {
                        metrics.bus_dropped.inc();
                    }
                    _ => shared.hub.dispatch(Arc::new(event)),
                },
                // Another release's event (or a broken one): never stop reading; re-read
                // from the database what it may have changed, unless its sender said it
                // changes nothing this release shows.
                Received::Skipped { reason, catch_up } => {
                    metrics.bus_skipped(reason.as_str());
                    tracing::debug!(
                        reason = reason.as_str(),
                        "skipped a bus event this release cannot read"
                    );
                    match catch_up {
                        CatchUp::Nobody => {}
                        CatchUp::User(user) => shared.hub.catch_up(&user),
                        CatchUp::Everyone => shared.hub.catch_up_all(),
                    }
                }
            }
        }
        PushKind::Subscribe | PushKind::SSubscribe => {
            let Some(Value::BulkString(channel)) = info.data.first() else {
                return;
            };
            // Subscribed (again): whatever committed before now is only in the database.
            if channel.as_slice() == channels.base.as_bytes() {
                shared.hub.catch_up_all();
            } else if let Some(user) = channels.user_of(channel) {
                shared.hub.catch_up(&user);
            }
        }
        PushKind::SUnsubscribe => {
            // The server drops sharded subscriptions whose slot moved away; one we still
            // want is subscribed again (on the slot's new owner).
            let Some(Value::BulkString(channel)) = info.data.first() else {
                return;
            };
            if let Some(user) = channels.user_of(channel) {
                let mut w = shared.subs.lock();
                if w.users.contains(&user) {
                    w.lost.insert(user);
                    drop(w);
                    shared.subs.wake.notify_one();
                }
            }
        }
        PushKind::Disconnection => dropped.notify_one(),
        _ => {}
    }
}

async fn subscriber(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut attempt = 0u32;
    let mut ever_up = false;
    let metrics = shared.metrics().clone();
    loop {
        let dropped = Arc::new(Notify::new());
        let connected = async {
            let target = shared.target().await?;
            let conn = SubConn::open(&target, shared.clone(), dropped.clone()).await?;
            Ok::<_, redis::RedisError>((target, conn))
        };
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(CONNECT_TIMEOUT * 2, connected) => r,
        };
        let (target, mut conn) = match connected {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                down(&shared, &mut attempt, &e.to_string());
                if !sleep_or_stop(&shutdown, attempt).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                down(&shared, &mut attempt, "connecting to Redis timed out");
                if !sleep_or_stop(&shutdown, attempt).await {
                    return;
                }
                continue;
            }
        };
        // Every channel, afresh: the broadcast one (its confirmation catches every session
        // up), then every user held here, in bounded batches.
        let mut subscribed: HashSet<UserId> = HashSet::new();
        metrics.bus_subscriptions.set(0);
        let everyone: Vec<UserId> = {
            let mut w = shared.subs.lock();
            w.changed.clear();
            w.lost.clear();
            w.users.iter().cloned().collect()
        };
        let all = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = subscribe_all(&mut conn, &shared, &mut subscribed, everyone) => r,
        };
        if let Err(e) = all {
            down(&shared, &mut attempt, &e.to_string());
            if !sleep_or_stop(&shutdown, attempt).await {
                return;
            }
            continue;
        }
        shared.state.store(UP, Ordering::Release);
        // `attempt` (the backoff) is reset only once a check finds every channel held: a
        // connection that keeps losing subscriptions backs off like one that cannot connect.
        if ever_up {
            metrics.bus_reconnects.inc();
            metrics.bus_resubscribes.inc();
            tracing::info!(
                channels = subscribed.len() + 1,
                "subscribed to Redis again; sessions catch up from the database"
            );
        } else {
            tracing::info!(
                cluster = target.is_cluster(),
                "subscribed to Redis, one channel per user held here"
            );
        }
        let resubscribed = ever_up;
        ever_up = true;

        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // After a resubscription on a cluster, sessions catch up once more when the
        // fail-over has had time to settle. The catch-up on each confirmation, and the
        // count of what the server holds (below), are what close the gaps; this one more
        // read per session after a rare event is a cheap safety net for what the cluster
        // client may do that neither can see.
        let mut settle = Box::pin(tokio::time::sleep(SETTLE));
        let mut settled = !resubscribed || !target.is_cluster();
        let mut short_checks = 0u32;
        let why = loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = &mut settle, if !settled => {
                    settled = true;
                    shared.hub.catch_up_all();
                }
                _ = dropped.notified() => break "the Redis connection closed".to_owned(),
                _ = shared.subs.wake.notified() => {
                    if let Err(e) = reconcile(&mut conn, &shared, &mut subscribed).await {
                        break e.to_string();
                    }
                }
                _ = ping.tick() => {
                    // The liveness check, and the count of what the server holds for us: a
                    // subscription can vanish without a push (see the module's docs).
                    let held = match tokio::time::timeout(COMMAND_TIMEOUT, conn.held()).await {
                        Ok(Ok(held)) => held,
                        Ok(Err(e)) => break e.to_string(),
                        Err(_) => break "CLIENT INFO timed out".to_owned(),
                    };
                    // The broadcast channel and every user's (none with shared routing).
                    let wanted = subscribed.len() + 1;
                    if held >= wanted {
                        short_checks = 0;
                        attempt = 0;
                    } else {
                        short_checks += 1;
                        if short_checks >= SHORT_CHECKS {
                            break format!(
                                "Redis holds {held} of the {wanted} channels it confirmed"
                            );
                        }
                    }
                }
            }
        };
        tracing::error!(
            error = why,
            "lost the Redis subscription; serving local clients, resubscribing"
        );
        shared.state.store(DOWN, Ordering::Release);
        metrics.bus_subscriptions.set(0);
        attempt = attempt.saturating_add(1);
        if !sleep_or_stop(&shutdown, attempt).await {
            return;
        }
    }
}

fn down(shared: &Shared, attempt: &mut u32, error: &str) {
    shared.state.store(DOWN, Ordering::Release);
    if *attempt == 0 {
        tracing::error!(error, "cannot subscribe to Redis; retrying");
    }
    *attempt = attempt.saturating_add(1);
}

/// Sleeps the backoff; false if the replica stops meanwhile.
async fn sleep_or_stop(shutdown: &CancellationToken, attempt: u32) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(backoff(attempt)) => true,
    }
}

async fn subscribe_all(
    conn: &mut SubConn,
    shared: &Shared,
    subscribed: &mut HashSet<UserId>,
    users: Vec<UserId>,
) -> redis::RedisResult<()> {
    timed(conn.ping()).await?;
    timed(conn.subscribe(vec![shared.channels.base.clone()], true)).await?;
    shared.metrics().bus_subscriptions.set(1);
    if shared.channels.shared {
        // The one channel carries every user's events.
        return Ok(());
    }
    change(conn, shared, subscribed, users, true).await
}

/// Subscribes or unsubscribes `users`' channels, [`SUBSCRIBE_BATCH`] at a time.
async fn change(
    conn: &mut SubConn,
    shared: &Shared,
    subscribed: &mut HashSet<UserId>,
    users: Vec<UserId>,
    on: bool,
) -> redis::RedisResult<()> {
    for chunk in users.chunks(SUBSCRIBE_BATCH) {
        let names = chunk.iter().map(|u| shared.channels.user(u)).collect();
        timed(conn.subscribe(names, on)).await?;
        for user in chunk {
            if on {
                subscribed.insert(user.clone());
            } else {
                subscribed.remove(user);
            }
        }
        shared
            .metrics()
            .bus_subscriptions
            .set(subscribed.len() as i64 + 1);
    }
    Ok(())
}

async fn timed(
    f: impl std::future::Future<Output = redis::RedisResult<()>>,
) -> redis::RedisResult<()> {
    tokio::time::timeout(SUBSCRIBE_TIMEOUT, f)
        .await
        .map_err(|_| timed_out("SUBSCRIBE"))?
}

/// Brings the subscriptions in line with the users the hub holds now.
async fn reconcile(
    conn: &mut SubConn,
    shared: &Shared,
    subscribed: &mut HashSet<UserId>,
) -> redis::RedisResult<()> {
    let (join, leave) = {
        let mut w = shared.subs.lock();
        if shared.channels.shared {
            // No user channels: the hub's changes only matter to `holds`.
            w.changed.clear();
            w.lost.clear();
            return Ok(());
        }
        let lost = std::mem::take(&mut w.lost);
        for user in &lost {
            subscribed.remove(user);
        }
        let mut changed = std::mem::take(&mut w.changed);
        changed.extend(lost);
        let mut join = Vec::new();
        let mut leave = Vec::new();
        for user in changed {
            match (w.users.contains(&user), subscribed.contains(&user)) {
                (true, false) => join.push(user),
                (false, true) => leave.push(user),
                _ => {}
            }
        }
        (join, leave)
    };
    if !join.is_empty() {
        change(conn, shared, subscribed, join, true).await?;
    }
    if !leave.is_empty() {
        change(conn, shared, subscribed, leave, false).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_channel_names_the_user_and_spreads_over_slots() {
        let c = Channels::new("tidings:events".into(), Routing::User);
        let alice = UserId::parse("alice").unwrap();
        assert_eq!(c.user(&alice), "tidings:events:u:alice");
        assert_eq!(c.user_of(b"tidings:events:u:alice"), Some(alice));
        assert_eq!(c.user_of(b"tidings:events"), None);
        assert_eq!(c.user_of(b"other:u:alice"), None);
        // No hash tag: the slot depends on the whole name, so users land on many slots.
        let slots: HashSet<u16> = (0..1000)
            .map(|i| {
                let u = UserId::parse(&format!("user-{i}")).unwrap();
                slot(c.user(&u).as_bytes())
            })
            .collect();
        assert!(slots.len() > 900, "{} slots", slots.len());
    }

    #[test]
    fn shared_routing_puts_every_event_on_the_one_channel() {
        let c = Channels::new("tidings:events".into(), Routing::Shared);
        let event = Event::Counts {
            user: UserId::parse("alice").unwrap(),
            counts: Default::default(),
        };
        assert_eq!(c.of(&event), "tidings:events");
        let per_user = Channels::new("tidings:events".into(), Routing::User);
        assert_eq!(per_user.of(&event), "tidings:events:u:alice");
    }

    /// Redis Cluster's key slot: CRC16 (XMODEM) of the name, modulo 16384.
    fn slot(key: &[u8]) -> u16 {
        let mut crc: u16 = 0;
        for &b in key {
            crc ^= (b as u16) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc % 16384
    }

    #[test]
    fn client_info_counts_channels_and_shard_channels_but_not_patterns() {
        let line = "id=7 addr=127.0.0.1:5 laddr=127.0.0.1:6379 fd=8 name= age=1 idle=0 \
                    flags=P db=0 sub=1 psub=4 ssub=2 multi=-1 qbuf=0 cmd=client|info resp=3";
        let verbatim = Value::VerbatimString {
            format: redis::VerbatimFormat::Text,
            text: line.to_owned(),
        };
        assert_eq!(subscriptions_in(&verbatim), Some(3));
        assert_eq!(
            subscriptions_in(&Value::BulkString(line.as_bytes().to_vec())),
            Some(3)
        );
        // A node that answered with an error, or a server without the fields, proves nothing.
        assert_eq!(subscriptions_in(&Value::Nil), None);
        assert_eq!(
            subscriptions_in(&Value::SimpleString("id=7 psub=1".into())),
            None
        );
        assert_eq!(
            subscriptions_in(&Value::SimpleString("sub=x ssub=1".into())),
            None
        );
    }

    #[test]
    fn several_urls_are_a_clusters_seeds() {
        let seeds = parse_urls("redis://10.0.0.1:7000, redis://10.0.0.2:7000").unwrap();
        assert_eq!(seeds.len(), 2);
        assert!(seeds
            .iter()
            .all(|s| s.redis_settings().protocol() == ProtocolVersion::RESP3));
    }
}
