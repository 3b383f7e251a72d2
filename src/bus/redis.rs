//! Redis pub/sub between replicas.
//!
//! One channel carries every event; each replica keeps the events for the users it holds.
//! (A channel per user would spare replicas the others' traffic, but then every connect
//! must wait for a SUBSCRIBE round trip before its replay read, and a replica that restarts
//! must resubscribe thousands of channels; one channel has neither race.)
//!
//! Two tasks own the two Redis connections:
//! * the publisher drains a bounded queue and pipelines PUBLISHes. While Redis is down it
//!   keeps failed events in a bounded buffer and sends them when Redis returns; if even that
//!   overflows, it sends one "catch up" event instead, and every replica re-reads the
//!   database;
//! * the subscriber keeps a SUBSCRIBE open. Each time it (re)subscribes, it has every local
//!   session catch up from the database, from each connection's last delivered seq, so
//!   nothing published while it was disconnected is lost.

use super::{BusState, Event};
use crate::hub::Hub;
use crate::shutdown::Shutdown;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Events queued for the publisher.
const QUEUE: usize = 16 * 1024;
/// Events kept for retry while Redis is down.
const RETRY_BUFFER: usize = 16 * 1024;
/// PUBLISHes per pipeline.
const BATCH: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

const UP: u8 = 1;
const DOWN: u8 = 2;

/// What travels on the channel: the event and the replica that sent it, which already
/// delivered it to its own users. Written from borrowed parts, so the event the local hub
/// also holds is serialized in place rather than copied.
#[derive(Serialize)]
struct Envelope<'a> {
    origin: &'a str,
    event: &'a Event,
}

/// The same envelope, as received.
#[derive(Deserialize)]
struct Received {
    origin: String,
    event: Event,
}

#[derive(Debug, Clone)]
pub struct RedisBus {
    hub: Hub,
    tx: mpsc::Sender<Arc<Event>>,
    state: Arc<AtomicU8>,
    lost: Arc<std::sync::atomic::AtomicBool>,
}

impl RedisBus {
    /// Starts the publisher and subscriber tasks; they stop when `shutdown` is cancelled.
    pub fn start(
        url: &str,
        channel: String,
        hub: Hub,
        shutdown: &Shutdown,
    ) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let origin = uuid::Uuid::new_v4().to_string();
        let state = Arc::new(AtomicU8::new(DOWN));
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = mpsc::channel(QUEUE);
        shutdown.spawn(publisher(
            client.clone(),
            channel.clone(),
            origin.clone(),
            rx,
            lost.clone(),
            shutdown.token().clone(),
        ));
        shutdown.spawn(subscriber(
            client,
            channel,
            origin,
            hub.clone(),
            state.clone(),
            shutdown.token().clone(),
        ));
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

async fn publisher(
    client: redis::Client,
    channel: String,
    origin: String,
    mut rx: mpsc::Receiver<Arc<Event>>,
    lost: Arc<std::sync::atomic::AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    let mut retry: VecDeque<String> = VecDeque::new();
    let mut failures = 0u32;
    let mut batch = Vec::with_capacity(BATCH);
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
            let envelope = Envelope {
                origin: &origin,
                event: &event,
            };
            match serde_json::to_string(&envelope) {
                Ok(json) if retry.len() < RETRY_BUFFER => retry.push_back(json),
                Ok(_) => lost.store(true, Ordering::Release),
                Err(e) => tracing::error!(error = %e, "could not encode an event"),
            }
        }
        if lost.swap(false, Ordering::AcqRel) {
            // Some events were dropped: replace them all with one catch-up.
            retry.clear();
            let envelope = Envelope {
                origin: &origin,
                event: &Event::CatchUp,
            };
            retry.push_back(serde_json::to_string(&envelope).unwrap_or_default());
        }
        if conn.is_none() {
            match tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection())
                .await
            {
                Ok(Ok(c)) => conn = Some(c),
                Ok(Err(e)) => log_failure(&mut failures, &e.to_string()),
                Err(_) => log_failure(&mut failures, "connect timed out"),
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        while !retry.is_empty() {
            let n = retry.len().min(BATCH);
            let mut pipe = redis::pipe();
            for json in retry.iter().take(n) {
                pipe.cmd("PUBLISH").arg(&channel).arg(json).ignore();
            }
            match tokio::time::timeout(COMMAND_TIMEOUT, pipe.query_async::<()>(c)).await {
                Ok(Ok(())) => {
                    retry.drain(..n);
                    if failures > 0 {
                        tracing::info!("publishing to Redis again");
                        failures = 0;
                    }
                }
                Ok(Err(e)) => {
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

async fn subscriber(
    client: redis::Client,
    channel: String,
    origin: String,
    hub: Hub,
    state: Arc<AtomicU8>,
    shutdown: CancellationToken,
) {
    let mut attempt = 0u32;
    let mut ever_up = false;
    loop {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(CONNECT_TIMEOUT, subscribed) => r,
        };
        match pubsub {
            Ok(Ok(mut pubsub)) => {
                state.store(UP, Ordering::Release);
                attempt = 0;
                if ever_up {
                    hub.metrics().bus_reconnects.inc();
                    tracing::info!(
                        "subscribed to Redis again; catching sessions up from the database"
                    );
                }
                ever_up = true;
                // Whatever was published while we were not subscribed is in the database.
                hub.catch_up_all();
                let mut messages = pubsub.on_message();
                loop {
                    let msg = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        m = messages.next() => m,
                    };
                    let Some(msg) = msg else { break };
                    let payload: Vec<u8> = msg.get_payload_bytes().to_vec();
                    match serde_json::from_slice::<Received>(&payload) {
                        Ok(env) if env.origin == origin => {}
                        Ok(env) => hub.dispatch(Arc::new(env.event)),
                        Err(e) => tracing::warn!(error = %e, "ignoring an undecodable bus message"),
                    }
                }
                state.store(DOWN, Ordering::Release);
                tracing::error!("lost the Redis subscription; serving local clients, retrying");
            }
            Ok(Err(e)) => {
                state.store(DOWN, Ordering::Release);
                if attempt == 0 {
                    tracing::error!(error = %e, "cannot subscribe to Redis; retrying");
                }
            }
            Err(_) => {
                state.store(DOWN, Ordering::Release);
                if attempt == 0 {
                    tracing::error!("subscribing to Redis timed out; retrying");
                }
            }
        }
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff(attempt)) => {}
        }
    }
}
