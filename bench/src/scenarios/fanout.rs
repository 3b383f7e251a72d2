//! `fanout`: one notification to K online users (Nchan: K publishes), in rounds.

use super::publishing::{account, delivery_clean, publish_recorded, PubStats, Publisher};
use super::subscribers::{close_subs, connections_json, open_subs, print_errors};
use crate::net::{now_us, Connector, Endpoint, Pool};
use crate::stats::{cpu_json, cpu_sample, hist_json, hist_line, ms, rss, rss_json};
use crate::{Common, Target, Transport};
use anyhow::Result;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

pub(crate) async fn fanout(
    c: &Common,
    k: usize,
    rounds: usize,
    interval_ms: u64,
    publishers: usize,
    transport: Transport,
) -> Result<(Value, bool)> {
    let prefix = c.prefix();
    let users = Arc::new(c.users(&prefix, k));
    let tokens = c.user_tokens(&users)?;
    // Before the streams open: a change is announced on the user's live transports.
    super::prefs::apply(c, &users).await?;
    let before = rss(&c.server_pid);
    let subs = open_subs(c, transport, &users, &tokens, rounds).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss(&c.server_pid);
    let online: Vec<u32> = (0..users.len() as u32)
        .filter(|&i| subs.ctx.online[i as usize].load(Ordering::Relaxed))
        .collect();

    let ep = Endpoint::parse(&c.url)?;
    let connector = Arc::new(Connector::new(c.source_ips, &ep.addr));
    let chunks: Vec<Vec<u32>> = match c.target {
        // Tidings takes up to 1000 recipients per request.
        Target::Tidings => online.chunks(1000).map(<[u32]>::to_vec).collect(),
        Target::Nchan => online.iter().map(|&u| vec![u]).collect(),
    };
    let pool_size = match c.target {
        Target::Tidings => chunks.len(),
        Target::Nchan => publishers.min(chunks.len()),
    };
    let pool = Pool::new(pool_size, &ep, &connector).await?;
    let stats = PubStats::new(users.len());
    let publisher = Arc::new(Publisher {
        target: c.target,
        pool,
        stats: stats.clone(),
        bearer: format!("Bearer {}", c.service_token()?),
        users: users.clone(),
    });
    let mut per_round = Vec::new();
    let mut ttl = Vec::new();
    let cpu0 = cpu_sample(&c.cpu_pids(), &c.watch_comm);
    for r in 0..rounds {
        let t0 = now_us();
        let mut tasks = JoinSet::new();
        for chunk in &chunks {
            let (publisher, chunk) = (publisher.clone(), chunk.clone());
            tasks.spawn(async move {
                let ok = publish_recorded(&publisher, &chunk, r as u64, Some(t0), None).await;
                if ok {
                    chunk.len() as u64
                } else {
                    0
                }
            });
        }
        let mut accepted_r = 0;
        while let Some(n) = tasks.join_next().await {
            accepted_r += n.unwrap_or(0);
        }
        let published_us = now_us() - t0;
        let wait = Instant::now();
        while subs.ctx.round_count[r].load(Ordering::Relaxed) < accepted_r
            && wait.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let got = subs.ctx.round_count[r].load(Ordering::Relaxed);
        let last = subs.ctx.round_last_us[r]
            .load(Ordering::Relaxed)
            .saturating_sub(t0);
        ttl.push(last);
        println!(
            "  round {r}: {got}/{accepted_r} received, last after {}, publish took {}",
            ms(last),
            ms(published_us)
        );
        per_round.push(json!({"round": r, "accepted": accepted_r, "received": got,
            "time_to_last_us": last, "publish_us": published_us}));
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
    }
    let cpu = cpu_json(&cpu0, &cpu_sample(&c.cpu_pids(), &c.watch_comm));
    let mut sorted = ttl.clone();
    sorted.sort_unstable();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0);
    let latency = subs.ctx.latency.lock().unwrap().clone();
    let connections = connections_json(&subs, k);
    let ctx = subs.ctx.clone();
    let results = close_subs(subs).await;
    let delivery = account(&stats, &results);
    let conns = ctx.connected.load(Ordering::Relaxed);
    println!(
        "[{}] fan-out to {} over {}: time until the last has it: median {}, min {}, max {}; all deliveries {}",
        c.label(),
        online.len(),
        transport.name(),
        ms(median),
        ms(*sorted.first().unwrap_or(&0)),
        ms(*sorted.last().unwrap_or(&0)),
        hist_line(&latency)
    );
    println!(
        "  delivery: lost {}, duplicated {}, seq gaps {}",
        delivery["lost"], delivery["duplicated"], delivery["seq_gaps"]
    );
    print_errors(&ctx);
    let ok = delivery_clean(&delivery) && stats.failed_n.load(Ordering::Relaxed) == 0;
    let mut out = c.header(
        "fanout",
        transport.name(),
        json!({"recipients": k, "rounds": rounds, "interval_ms": interval_ms,
               "publishers": pool_size, "transport": transport.name()}),
    );
    out.insert("connections".into(), connections);
    out.insert("rss".into(), rss_json(&c.server_pid, before, after, conns));
    out.insert(
        "fanout".into(),
        json!({
            "time_to_last_us": {"median": median, "min": sorted.first(), "max": sorted.last()},
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
