//! `unicast` (and `cross-replica`, the same with subscribers on replica B): each notification
//! to one random online user at a fixed rate; latency, CPU and every delivery accounted for.

use super::publishing::{account, delivery_clean, publish_recorded, PubStats, Publisher};
use super::subscribers::{close_subs, connections_json, open_subs, print_errors};
use crate::net::{now_us, Connector, Endpoint, Pool};
use crate::stats::{cpu_json, cpu_sample, hist_json, hist_line, rss, rss_json};
use crate::{Common, Transport, UnicastArgs};
use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

pub(crate) async fn unicast(c: &Common, a: &UnicastArgs, scenario: &str) -> Result<(Value, bool)> {
    let prefix = c.prefix();
    let users = Arc::new(c.users(&prefix, a.users));
    let tokens = c.user_tokens(&users)?;
    let before = rss(&c.server_pid);
    let subs = open_subs(c, a.transport, &users, &tokens, 0).await?;
    tokio::time::sleep(Duration::from_secs(a.settle)).await;
    let after = rss(&c.server_pid);
    let online: Vec<u32> = (0..users.len() as u32)
        .filter(|&i| subs.ctx.online[i as usize].load(Ordering::Relaxed))
        .collect();
    if online.is_empty() {
        bail!("no subscriber connected");
    }

    let ep = Endpoint::parse(&c.url)?;
    let connector = Arc::new(Connector::new(c.source_ips, &ep.addr));
    let pool = Pool::new(a.publishers, &ep, &connector).await?;
    let stats = PubStats::new(users.len());
    let publisher = Arc::new(Publisher {
        target: c.target,
        pool,
        stats: stats.clone(),
        bearer: format!("Bearer {}", c.service_token()?),
        users: users.clone(),
    });
    let total = a.rate * a.duration;
    println!(
        "[{}] {scenario}: publishing {total} notifications at {}/s over {} connections to {} online users",
        c.label(),
        a.rate,
        a.publishers,
        online.len()
    );
    let mut rng = StdRng::seed_from_u64(c.seed);
    let mut tasks = JoinSet::new();
    let cpu0 = cpu_sample(&c.cpu_pids(), &c.watch_comm);
    let broker0 = cpu_sample(&c.broker_pid, &[]);
    let start = Instant::now();
    let start_us = now_us();
    let mut i = 0u64;
    let mut shown = Instant::now();
    while i < total {
        let due = ((start.elapsed().as_secs_f64() * a.rate as f64) as u64).min(total);
        while i < due {
            let user = online[rng.random_range(0..online.len())];
            let offset = Duration::from_secs_f64(i as f64 / a.rate as f64);
            let scheduled = (start + offset, start_us + offset.as_micros() as u64);
            let publisher = publisher.clone();
            let m = i;
            tasks.spawn(async move {
                publish_recorded(&publisher, &[user], m, None, Some(scheduled)).await;
            });
            i += 1;
        }
        while tasks.try_join_next().is_some() {}
        if shown.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  {:.0}s: sent {i}, received {}, in flight {}",
                start.elapsed().as_secs_f64(),
                subs.ctx.received.load(Ordering::Relaxed),
                tasks.len()
            );
            shown = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    while tasks.join_next().await.is_some() {}
    let publish_secs = start.elapsed().as_secs_f64();

    let expected = stats.accepted_n.load(Ordering::Relaxed);
    let drain = Instant::now();
    while subs.ctx.received.load(Ordering::Relaxed) < expected
        && drain.elapsed() < Duration::from_secs(a.drain)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = cpu_json(&cpu0, &cpu_sample(&c.cpu_pids(), &c.watch_comm));
    let broker_cpu = cpu_json(&broker0, &cpu_sample(&c.broker_pid, &[]));
    // Room for late duplicates.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connections = connections_json(&subs, users.len());
    let latency = subs.ctx.latency.lock().unwrap().clone();
    let latency_sched = subs.ctx.latency_sched.lock().unwrap().clone();
    let last_recv = subs.ctx.last_recv_us.load(Ordering::Relaxed);
    let received = subs.ctx.received.load(Ordering::Relaxed);
    let ctx = subs.ctx.clone();
    let results = close_subs(subs).await;
    let delivery = account(&stats, &results);
    let window = (last_recv.saturating_sub(start_us)) as f64 / 1e6;
    let delivered_per_s = if window > 0.0 {
        (received as f64 / window).round()
    } else {
        0.0
    };
    let conns = ctx.connected.load(Ordering::Relaxed);
    let rss_v = rss_json(&c.server_pid, before, after, conns);

    println!("[{}] {scenario} over {}:", c.label(), a.transport.name());
    println!("  latency      {}", hist_line(&latency));
    println!("  +queueing    {}", hist_line(&latency_sched));
    println!(
        "  publish      {} accepted, {} failed, {:.0}/s; request {}",
        stats.accepted_n.load(Ordering::Relaxed),
        stats.failed_n.load(Ordering::Relaxed),
        stats.accepted_n.load(Ordering::Relaxed) as f64 / publish_secs,
        hist_line(&stats.latency.lock().unwrap())
    );
    println!(
        "  delivery     {} received of {}, {delivered_per_s}/s; lost {}, duplicated {}, unexpected {}, seq gaps {}, seq backwards {}, redelivered (dropped by seq) {}",
        delivery["received"],
        delivery["expected"],
        delivery["lost"],
        delivery["duplicated"],
        delivery["unexpected"],
        delivery["seq_gaps"],
        delivery["seq_backwards"],
        delivery["redelivered_dropped"]
    );
    println!(
        "  memory       {} bytes/connection (server RSS {} -> {} kB)",
        rss_v["bytes_per_conn"], before.vm_rss, after.vm_rss
    );
    if connections["poll_errors"] != 0 {
        println!(
            "  long-poll    {} polls answered with an error and retried",
            connections["poll_errors"]
        );
    }
    println!("  cpu (cores)  {cpu}");
    if !c.broker_pid.is_empty() {
        println!("  broker cpu   {broker_cpu}");
    }
    print_errors(&ctx);
    println!("  statuses     {:?}", stats.statuses.lock().unwrap());

    let ok = delivery_clean(&delivery)
        && stats.failed_n.load(Ordering::Relaxed) == 0
        && connections["failed"] == 0
        && connections["dropped"] == 0;
    // `faces` compares transports in one table: the transport is the column, not the variant.
    let (variant, mut params) = if scenario == "faces" {
        (
            "unicast",
            json!({"users": a.users, "rate": a.rate, "duration_s": a.duration, "publishers": a.publishers}),
        )
    } else {
        (
            a.transport.name(),
            json!({
                "users": a.users, "rate": a.rate, "duration_s": a.duration,
                "transport": a.transport.name(), "publishers": a.publishers,
            }),
        )
    };
    if a.transport == Transport::Mqtt {
        params["mqtt_users_per_connection"] = json!(c.mqtt_users_per_connection);
    }
    let mut out = c.header(scenario, variant, params);
    out.insert("transport".into(), json!(a.transport.name()));
    out.insert("connections".into(), connections);
    out.insert("rss".into(), rss_v);
    out.insert("latency_us".into(), hist_json(&latency));
    out.insert("latency_from_schedule_us".into(), hist_json(&latency_sched));
    out.insert("publish".into(), stats.json(publish_secs));
    out.insert("delivery".into(), delivery);
    out.insert("delivered_per_s".into(), json!(delivered_per_s));
    let per_1000 = |secs: f64| {
        if received > 0 {
            json!((secs * 1e6 / received as f64 * 100.0).round() / 100.0)
        } else {
            Value::Null
        }
    };
    out.insert(
        "server_cpu_ms_per_1000".into(),
        per_1000(cpu["server_cpu_s"].as_f64().unwrap_or(0.0)),
    );
    out.insert("cpu".into(), cpu);
    if !c.broker_pid.is_empty() {
        out.insert(
            "broker_cpu_ms_per_1000".into(),
            per_1000(broker_cpu["server_cpu_s"].as_f64().unwrap_or(0.0)),
        );
        out.insert("broker_cpu".into(), broker_cpu);
    }
    out.insert(
        "subscriber_errors".into(),
        json!(*ctx.errors.lock().unwrap()),
    );
    out.insert("ok".into(), json!(ok));
    Ok((Value::Object(out), ok))
}
