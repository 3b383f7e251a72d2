//! Publishing (to Tidings or Nchan) and accounting for what each subscriber received.

use crate::net::{self, now_us, Client, Pool};
use crate::stats::hist_json;
use crate::sub::{self, SubResult};
use crate::Target;
use anyhow::Result;
use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What the publisher did, shared by its concurrent requests.
pub(super) struct PubStats {
    pub(super) latency: Mutex<Histogram<u64>>,
    pub(super) statuses: Mutex<BTreeMap<String, u64>>,
    /// Per user: the message ids the server accepted, and those whose publish failed.
    pub(super) accepted: Mutex<Vec<Vec<u64>>>,
    pub(super) failed: Mutex<Vec<Vec<u64>>>,
    pub(super) accepted_n: AtomicU64,
    pub(super) failed_n: AtomicU64,
    pub(super) max_lag_us: AtomicU64,
}

impl PubStats {
    pub(super) fn new(users: usize) -> Arc<Self> {
        Arc::new(Self {
            latency: Mutex::new(sub::histogram()),
            statuses: Mutex::new(BTreeMap::new()),
            accepted: Mutex::new(vec![Vec::new(); users]),
            failed: Mutex::new(vec![Vec::new(); users]),
            accepted_n: AtomicU64::new(0),
            failed_n: AtomicU64::new(0),
            max_lag_us: AtomicU64::new(0),
        })
    }

    pub(super) fn count(&self, key: String) {
        *self.statuses.lock().unwrap().entry(key).or_default() += 1;
    }

    pub(super) fn json(&self, secs: f64) -> Value {
        let accepted = self.accepted_n.load(Ordering::Relaxed);
        json!({
            "accepted": accepted,
            "failed": self.failed_n.load(Ordering::Relaxed),
            "statuses": *self.statuses.lock().unwrap(),
            "latency_us": hist_json(&self.latency.lock().unwrap()),
            "per_s": (accepted as f64 / secs).round(),
            "max_lag_us": self.max_lag_us.load(Ordering::Relaxed),
            "secs": (secs * 100.0).round() / 100.0,
        })
    }
}

pub(super) fn payload(m: u64, sent_us: u64, sched_us: u64) -> String {
    format!(
        "\"type\":\"bench\",\"title\":\"t\",\"data\":{{\"sent_us\":{sent_us},\"sched_us\":{sched_us},\"bench_m\":{m}}}"
    )
}

/// One publish of message `m` to `recipients` (Nchan: exactly one channel); the reply's status.
pub(super) async fn publish(
    target: Target,
    client: &mut Client,
    bearer: &str,
    recipients: &[&str],
    m: u64,
    sent_us: u64,
    sched_us: u64,
) -> Result<u16> {
    let req = match target {
        Target::Tidings => {
            let body = format!(
                "{{\"recipients\":{},{}}}",
                serde_json::to_string(recipients)?,
                payload(m, sent_us, sched_us)
            );
            net::request(
                Method::POST,
                client.host(),
                "/v1/notifications",
                &[
                    ("authorization", bearer),
                    ("content-type", "application/json"),
                ],
                Bytes::from(body),
            )?
        }
        Target::Nchan => {
            let body = format!("{{{}}}", payload(m, sent_us, sched_us));
            net::request(
                Method::POST,
                client.host(),
                &format!("/pub/{}", recipients[0]),
                &[("content-type", "application/json")],
                Bytes::from(body),
            )?
        }
    };
    Ok(client.send(req).await?.status.as_u16())
}

pub(super) fn accepted(status: u16) -> bool {
    // Tidings answers 201; Nchan 201 (had subscribers) or 202 (queued, none).
    status == 201 || status == 202
}

/// Publishes over a pool of connections and records what it did.
pub(super) struct Publisher {
    pub(super) target: Target,
    pub(super) pool: Arc<Pool>,
    pub(super) stats: Arc<PubStats>,
    pub(super) bearer: String,
    pub(super) users: Arc<Vec<String>>,
}

/// Publishes message `m` to the users `idx` (one request; Nchan: one user), recording it.
/// `sent_us` defaults to when a connection was free; `scheduled` is when it was due.
pub(super) async fn publish_recorded(
    p: &Publisher,
    idx: &[u32],
    m: u64,
    sent_us: Option<u64>,
    scheduled: Option<(Instant, u64)>,
) -> bool {
    let Publisher {
        target,
        pool,
        stats,
        bearer,
        users,
    } = p;
    let target = *target;
    let mut client = pool.take().await;
    let now = now_us();
    let sent_us = sent_us.unwrap_or(now);
    let sched_us = match scheduled {
        Some((s, us)) => {
            let lag = Instant::now().saturating_duration_since(s).as_micros() as u64;
            stats.max_lag_us.fetch_max(lag, Ordering::Relaxed);
            us
        }
        None => sent_us,
    };
    let names: Vec<&str> = idx.iter().map(|&i| users[i as usize].as_str()).collect();
    let t = Instant::now();
    let result = publish(target, &mut client, bearer, &names, m, sent_us, sched_us).await;
    pool.put(client);
    let ok = matches!(result, Ok(s) if accepted(s));
    if ok {
        let _ = stats
            .latency
            .lock()
            .unwrap()
            .record((t.elapsed().as_micros() as u64).max(1));
    }
    stats.count(match &result {
        Ok(s) => s.to_string(),
        Err(e) => format!("error: {e:#}"),
    });
    let (list, n) = if ok {
        (&stats.accepted, &stats.accepted_n)
    } else {
        (&stats.failed, &stats.failed_n)
    };
    n.fetch_add(idx.len() as u64, Ordering::Relaxed);
    let mut list = list.lock().unwrap();
    for &i in idx {
        list[i as usize].push(m);
    }
    ok
}

/// Compares what each user received with what was published to it.
pub(super) fn account(stats: &PubStats, results: &[SubResult]) -> Value {
    let accepted = stats.accepted.lock().unwrap();
    let failed = stats.failed.lock().unwrap();
    let (mut expected, mut received, mut lost, mut dup, mut unexpected, mut after_error) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut gaps, mut back, mut redelivered) = (0u64, 0u64, 0u64);
    let mut lost_users = Vec::new();
    for r in results {
        let want = {
            let mut w = accepted[r.idx as usize].clone();
            w.sort_unstable();
            w
        };
        let bad = {
            let mut b = failed[r.idx as usize].clone();
            b.sort_unstable();
            b
        };
        let mut got = r.got.clone();
        got.sort_unstable();
        received += got.len() as u64;
        let before = got.len();
        got.dedup();
        dup += (before - got.len()) as u64;
        expected += want.len() as u64;
        let mut user_lost = 0;
        for m in &want {
            if got.binary_search(m).is_err() {
                user_lost += 1;
            }
        }
        if user_lost > 0 && lost_users.len() < 10 {
            lost_users.push(json!({"user": r.idx, "lost": user_lost, "connected": r.connected, "dropped": r.dropped}));
        }
        lost += user_lost;
        for m in &got {
            if want.binary_search(m).is_err() {
                if bad.binary_search(m).is_ok() {
                    after_error += 1;
                } else {
                    unexpected += 1;
                }
            }
        }
        gaps += u64::from(r.seq_gaps);
        back += u64::from(r.seq_back);
        redelivered += u64::from(r.redelivered);
    }
    json!({
        "expected": expected,
        "received": received,
        "lost": lost,
        "duplicated": dup,
        "unexpected": unexpected,
        "delivered_after_failed_publish": after_error,
        "seq_gaps": gaps,
        "seq_backwards": back,
        "redelivered_dropped": redelivered,
        "lost_examples": lost_users,
    })
}

pub(super) fn delivery_clean(d: &Value) -> bool {
    [
        "lost",
        "duplicated",
        "unexpected",
        "seq_gaps",
        "seq_backwards",
    ]
    .iter()
    .all(|k| d[k].as_u64() == Some(0))
}
