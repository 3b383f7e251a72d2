//! `topic`: one publish to a topic of N subscribers, K of them online, in rounds.
//!
//! Tidings: N users are subscribed to one topic (set-up, not measured), K of them hold an SSE
//! stream, and each round publishes one notification with `"topic"`. The publish answers once
//! every subscriber's copy is committed (in batches of 500, one transaction each), so its
//! duration gives recipients committed per second; the online users give the time until the
//! last of them has it, and loss, duplicates and seq contiguity.
//!
//! Nchan's closest equivalent is its native multi-subscriber channel: K subscribers on ONE
//! channel and one publish per round. It stores nothing per subscriber, so it has no
//! "committed for N" figure.

use super::publishing::{accepted, account, delivery_clean, payload, PubStats};
use super::subscribers::{close_subs, connections_json, open_subs, print_errors};
use crate::net::{self, now_us, Client, Connector, Endpoint};
use crate::stats::{cpu_json, cpu_sample, hist_json, hist_line, ms, rss, rss_json};
use crate::{Common, Target, Transport};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hyper::Method;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// How the run is shaped: `tidings-bench topic`'s own options.
#[derive(clap::Args)]
pub(crate) struct TopicArgs {
    /// Users subscribed to the topic (Tidings; Nchan stores no subscriber list).
    #[arg(long, default_value_t = 100_000)]
    pub(crate) subscribers: usize,
    /// Of them, users holding a stream (Nchan: subscribers on the one channel).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) online: usize,
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: usize,
    /// Pause between rounds.
    #[arg(long, default_value_t = 1000)]
    pub(crate) interval_ms: u64,
    #[arg(long, value_enum, default_value = "sse")]
    pub(crate) transport: Transport,
    /// Seconds one publish may take before the client gives up on it.
    #[arg(long, default_value_t = 300)]
    pub(crate) publish_timeout: u64,
    /// Seconds to wait after a publish answered for every online user to have it.
    #[arg(long, default_value_t = 30)]
    pub(crate) drain: u64,
}

/// The bulk subscribe route takes at most this many users per request (`MAX_BULK`).
const BULK: usize = 1000;
/// Bulk subscribe requests in flight at once during the set-up.
const BULK_CONCURRENCY: usize = 4;

/// Median, smallest and largest of `xs`.
fn spread(xs: &[f64]) -> Value {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    json!({"median": s.get(s.len() / 2), "min": s.first(), "max": s.last()})
}

/// Subscribes `users` to `topic` in bulk requests of [`BULK`]; returns the topic's size as
/// Tidings reports it afterwards.
pub(super) async fn subscribe_all(
    ep: &Endpoint,
    connector: &Arc<Connector>,
    bearer: &Arc<String>,
    topic: &str,
    users: &[String],
) -> Result<i64> {
    let chunks: Vec<Vec<String>> = users.chunks(BULK).map(<[String]>::to_vec).collect();
    let chunks = Arc::new(tokio::sync::Mutex::new(chunks.into_iter()));
    let mut workers = JoinSet::new();
    for _ in 0..BULK_CONCURRENCY {
        let mut client = Client::new(ep.clone(), connector.clone(), Duration::from_secs(60));
        let (chunks, bearer, path) = (
            chunks.clone(),
            bearer.clone(),
            format!("/v1/topics/{topic}/subscribers"),
        );
        workers.spawn(async move {
            loop {
                let Some(chunk) = chunks.lock().await.next() else {
                    return Ok::<_, anyhow::Error>(());
                };
                let body = serde_json::to_vec(&json!({ "add": chunk }))?;
                let req = net::request(
                    Method::POST,
                    client.host(),
                    &path,
                    &[
                        ("authorization", bearer.as_str()),
                        ("content-type", "application/json"),
                    ],
                    Bytes::from(body),
                )?;
                let reply = client.send(req).await?;
                if reply.status != 200 {
                    bail!(
                        "bulk subscribe: HTTP {}: {}",
                        reply.status,
                        String::from_utf8_lossy(&reply.body)
                    );
                }
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        r??;
    }
    let mut client = Client::new(ep.clone(), connector.clone(), Duration::from_secs(60));
    let req = net::request(
        Method::GET,
        client.host(),
        &format!("/v1/topics/{topic}"),
        &[("authorization", bearer.as_str())],
        Bytes::new(),
    )?;
    let reply = client.send(req).await?;
    let v: Value = serde_json::from_slice(&reply.body)
        .with_context(|| format!("topic info: HTTP {}", reply.status))?;
    v["subscribers"]
        .as_i64()
        .with_context(|| format!("topic info without a subscriber count: {v}"))
}

/// One publish of message `m` to the topic (Nchan: to the channel): the status, and for
/// Tidings the recipients it reports.
pub(super) async fn publish_once(
    target: Target,
    client: &mut Client,
    bearer: &str,
    topic: &str,
    m: u64,
    t0: u64,
) -> Result<(u16, Option<u64>)> {
    let req = match target {
        Target::Tidings => net::request(
            Method::POST,
            client.host(),
            "/v1/notifications",
            &[
                ("authorization", bearer),
                ("content-type", "application/json"),
            ],
            Bytes::from(format!(
                "{{\"topic\":{},{}}}",
                serde_json::to_string(topic)?,
                payload(m, t0, t0)
            )),
        )?,
        Target::Nchan => net::request(
            Method::POST,
            client.host(),
            &format!("/pub/{topic}"),
            &[("content-type", "application/json")],
            Bytes::from(format!("{{{}}}", payload(m, t0, t0))),
        )?,
    };
    let reply = client.send(req).await?;
    let recipients = match target {
        Target::Tidings => serde_json::from_slice::<Value>(&reply.body)
            .ok()
            .and_then(|v| v["recipients"].as_u64()),
        Target::Nchan => None,
    };
    Ok((reply.status.as_u16(), recipients))
}

pub(crate) async fn topic(c: &Common, a: &TopicArgs) -> Result<(Value, bool)> {
    let prefix = c.prefix();
    let topic = format!("{prefix}topic");
    let ep = Endpoint::parse(&c.url)?;
    let connector = Arc::new(Connector::new(c.source_ips, &ep.addr));
    let bearer = Arc::new(format!("Bearer {}", c.service_token()?));
    let online_n = a.online.min(a.subscribers).max(1);
    let mut setup_secs = None;
    let mut topic_size = None;
    // The online users, and (Tidings) every subscriber. Ids are zero-padded, so the order
    // Tidings pages subscribers in (by user id) is the numeric one, and the online users are
    // spread evenly over it up to the very last subscriber: the last batch has one online.
    let (names, tokens) = match c.target {
        Target::Tidings => {
            let all: Vec<String> = (0..a.subscribers)
                .map(|i| format!("{prefix}u{i:07}"))
                .collect();
            let step = a.subscribers / online_n;
            let names: Vec<String> = (0..online_n)
                .map(|j| all[(j + 1) * step - 1].clone())
                .collect();
            let t = Instant::now();
            let size = subscribe_all(&ep, &connector, &bearer, &topic, &all).await?;
            let secs = t.elapsed().as_secs_f64();
            println!(
                "set-up: {} users subscribed to {topic} in {secs:.1}s (topic size {size})",
                all.len()
            );
            if size != a.subscribers as i64 {
                bail!("the topic has {size} subscribers, not {}", a.subscribers);
            }
            setup_secs = Some((secs * 100.0).round() / 100.0);
            topic_size = Some(size);
            let tokens = c.user_tokens(&names)?;
            (names, tokens)
        }
        // Every subscriber on the one channel.
        Target::Nchan => (vec![topic.clone(); online_n], vec![String::new(); online_n]),
    };
    let before = rss(&c.server_pid);
    let subs = open_subs(c, a.transport, &names, &tokens, a.rounds).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss(&c.server_pid);
    let online: Vec<u32> = (0..names.len() as u32)
        .filter(|&i| subs.ctx.online[i as usize].load(Ordering::Relaxed))
        .collect();

    let mut client = Client::new(
        ep.clone(),
        connector.clone(),
        Duration::from_secs(a.publish_timeout),
    );
    client.warm().await?;
    let stats = PubStats::new(names.len());
    let mut per_round = Vec::new();
    let (mut publish_us, mut rates, mut ttl) = (Vec::new(), Vec::new(), Vec::new());
    let mut reached_all = true;
    let cpu0 = cpu_sample(&c.cpu_pids(), &c.watch_comm);
    for r in 0..a.rounds {
        let t0 = now_us();
        let t = Instant::now();
        let result = publish_once(c.target, &mut client, &bearer, &topic, r as u64, t0).await;
        let took_us = (t.elapsed().as_micros() as u64).max(1);
        let ok = matches!(result, Ok((s, _)) if accepted(s));
        stats.count(match &result {
            Ok((s, _)) => s.to_string(),
            Err(e) => format!("error: {e:#}"),
        });
        let recipients = result.as_ref().ok().and_then(|(_, n)| *n);
        if ok {
            let _ = stats.latency.lock().unwrap().record(took_us);
        }
        let (list, n) = if ok {
            (&stats.accepted, &stats.accepted_n)
        } else {
            (&stats.failed, &stats.failed_n)
        };
        n.fetch_add(online.len() as u64, Ordering::Relaxed);
        {
            let mut list = list.lock().unwrap();
            for &i in &online {
                list[i as usize].push(r as u64);
            }
        }
        let expect = if ok { online.len() as u64 } else { 0 };
        let wait = Instant::now();
        while subs.ctx.round_count[r].load(Ordering::Relaxed) < expect
            && wait.elapsed() < Duration::from_secs(a.drain)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let got = subs.ctx.round_count[r].load(Ordering::Relaxed);
        let last = subs.ctx.round_last_us[r]
            .load(Ordering::Relaxed)
            .saturating_sub(t0);
        // Recipients committed per second: what Tidings says it reached over the time the
        // publish took to answer (it answers after the last batch committed).
        let rate = match (ok, recipients) {
            (true, Some(n)) => Some(n as f64 / (took_us as f64 / 1e6)),
            _ => None,
        };
        if c.target == Target::Tidings && recipients != Some(a.subscribers as u64) {
            reached_all = false;
        }
        if ok {
            publish_us.push(took_us as f64);
            ttl.push(last as f64);
            if let Some(rate) = rate {
                rates.push(rate);
            }
        }
        println!(
            "  round {r}: publish {} in {}{}; online: {got}/{expect} received, last after {}{}",
            match &result {
                Ok((s, _)) => format!("HTTP {s}"),
                Err(e) => format!("failed ({e:#})"),
            },
            ms(took_us),
            match (recipients, rate) {
                (Some(n), Some(rate)) => format!(", {n} recipients committed, {rate:.0}/s"),
                (Some(n), None) => format!(", {n} recipients"),
                _ => ", committed for every subscriber: n/a".into(),
            },
            ms(last),
            if got < expect {
                " (not all arrived)"
            } else {
                ""
            }
        );
        per_round.push(json!({"round": r, "status": result.as_ref().ok().map(|(s, _)| *s),
            "recipients": recipients, "publish_us": took_us, "recipients_per_s": rate.map(f64::round),
            "online_expected": expect, "online_received": got, "time_to_last_us": last}));
        tokio::time::sleep(Duration::from_millis(a.interval_ms)).await;
    }
    let cpu = cpu_json(&cpu0, &cpu_sample(&c.cpu_pids(), &c.watch_comm));
    let latency = subs.ctx.latency.lock().unwrap().clone();
    let connections = connections_json(&subs, names.len());
    let ctx = subs.ctx.clone();
    let results = close_subs(subs).await;
    let delivery = account(&stats, &results);
    let conns = ctx.connected.load(Ordering::Relaxed);
    let publish = spread(&publish_us);
    let time_to_last = spread(&ttl);
    let rate = if rates.is_empty() {
        Value::Null
    } else {
        spread(&rates.iter().map(|r| r.round()).collect::<Vec<_>>())
    };
    let f = |v: &Value| v.as_f64().map_or("–".into(), |x| ms(x as u64));
    println!(
        "[{}] topic of {} subscribers, {} online over {}: publish median {} (min {}, max {}); \
         recipients committed per second, median round: {}; time until the last online has it: \
         median {} (min {}, max {}); all deliveries {}",
        c.label(),
        match c.target {
            Target::Tidings => a.subscribers.to_string(),
            Target::Nchan => "(one channel)".into(),
        },
        online.len(),
        a.transport.name(),
        f(&publish["median"]),
        f(&publish["min"]),
        f(&publish["max"]),
        rate["median"]
            .as_f64()
            .map_or("n/a".into(), |x| format!("{x:.0}")),
        f(&time_to_last["median"]),
        f(&time_to_last["min"]),
        f(&time_to_last["max"]),
        hist_line(&latency)
    );
    println!(
        "  delivery: lost {}, duplicated {}, seq gaps {}, seq backwards {}",
        delivery["lost"], delivery["duplicated"], delivery["seq_gaps"], delivery["seq_backwards"]
    );
    if !reached_all {
        eprintln!(
            "  a publish did not reach every one of the {} subscribers",
            a.subscribers
        );
    }
    print_errors(&ctx);
    let ok = delivery_clean(&delivery)
        && stats.failed_n.load(Ordering::Relaxed) == 0
        && online.len() == names.len()
        && reached_all;
    // Server CPU per 1,000 recipients committed (Tidings), in ms: over the whole rounds, so
    // the deliveries and the pauses between rounds are in it too.
    let committed = rates.len() as f64 * a.subscribers as f64;
    let cpu_per_1000 = match (c.target, cpu["server_cpu_s"].as_f64()) {
        (Target::Tidings, Some(s)) if committed > 0.0 => {
            json!((s * 1e6 / committed * 100.0).round() / 100.0)
        }
        _ => Value::Null,
    };
    let mut out = c.header(
        "topic",
        a.transport.name(),
        json!({"subscribers": a.subscribers, "online": online_n, "rounds": a.rounds,
               "interval_ms": a.interval_ms, "transport": a.transport.name(),
               "publish_timeout_s": a.publish_timeout}),
    );
    out.insert("connections".into(), connections);
    out.insert("rss".into(), rss_json(&c.server_pid, before, after, conns));
    out.insert(
        "topic".into(),
        json!({
            "name": topic,
            "subscribers": topic_size,
            "online": online.len(),
            "setup_secs": setup_secs,
            "publish_us": publish,
            "recipients_per_s": rate,
            "time_to_last_us": time_to_last,
            "server_cpu_ms_per_1000_committed": cpu_per_1000,
            "rounds": per_round,
        }),
    );
    out.insert("latency_us".into(), hist_json(&latency));
    out.insert("publish".into(), stats.json(1.0));
    out.insert("delivery".into(), delivery);
    out.insert("cpu".into(), cpu);
    out.insert("ok".into(), json!(ok));
    Ok((Value::Object(out), ok))
}
