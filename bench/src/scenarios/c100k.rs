//! `c100k-gen`: one of several load-generator processes that together hold 100,000 SSE
//! connections (issue 27). A process may hold at most 20,000 open files here, so
//! `bench/run.sh c100k` starts several, each with its share of the users on one replica,
//! and they meet at barriers (files in `--barrier`):
//!
//! 1. subscribe this share's users to the shared topic (Tidings), open their streams, wait
//!    2 s and read the replica's RSS; write `ready-G` and wait for `go` (run.sh writes it
//!    when every process is ready);
//! 2. the process given `--topic-publisher` publishes one notification to the topic (to
//!    every user of every process; Nchan: one publish to the channel every subscriber also
//!    listens on) and writes `topic-published` (when, how long, how many recipients); every
//!    process waits until each of its users has it: the time until its last one has it;
//! 3. write `topic-done-G`, wait for all of them, then publish its share of the unicast load
//!    (each notification to one random user of this share, through `--url`, which run.sh
//!    points at another replica than the users', so every delivery crosses the bus);
//! 4. account for every notification (lost, duplicated, seq order) and write the JSON, with
//!    the unicast latencies as histogram buckets so run.sh can merge the processes' figures.

use super::publishing::{account, delivery_clean, publish_recorded, PubStats, Publisher};
use super::subscribers::{close_subs, connections_json, open_subs, print_errors};
use super::topic::{publish_once, subscribe_all};
use crate::net::{now_us, Client, Connector, Endpoint, Pool};
use crate::stats::{cpu_json, cpu_sample, hist_json, hist_line, ms, rss, rss_json};
use crate::{Common, Target, Transport};
use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

#[derive(clap::Args)]
pub(crate) struct GenArgs {
    /// This process's users (its share of the connections).
    #[arg(long)]
    pub(crate) users: usize,
    /// This process's number, 0..procs.
    #[arg(long)]
    pub(crate) index: usize,
    /// Processes in the run (the barrier waits for this many).
    #[arg(long)]
    pub(crate) procs: usize,
    /// The topic (Tidings) or the channel every subscriber also listens on (Nchan).
    #[arg(long)]
    pub(crate) topic: String,
    /// The directory the processes meet in.
    #[arg(long)]
    pub(crate) barrier: PathBuf,
    /// This process publishes the topic notification.
    #[arg(long)]
    pub(crate) topic_publisher: bool,
    /// Users subscribed to the topic in all (to check the publish reached every one).
    #[arg(long)]
    pub(crate) topic_total: u64,
    /// This process's unicast notifications per second.
    #[arg(long)]
    pub(crate) rate: u64,
    /// Seconds of unicast publishing.
    #[arg(long, default_value_t = 60)]
    pub(crate) duration: u64,
    /// Keep-alive publisher connections of this process.
    #[arg(long, default_value_t = 16)]
    pub(crate) publishers: usize,
    /// Seconds to wait at a barrier, or for a delivery, before giving up.
    #[arg(long, default_value_t = 900)]
    pub(crate) timeout: u64,
}

/// Waits until `f` holds, checking every 50 ms, at most `within`.
async fn until(within: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let t = Instant::now();
    while !f() {
        if t.elapsed() > within {
            bail!("{what}: not within {}s", within.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn count_files(dir: &Path, prefix: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .count()
        })
        .unwrap_or(0)
}

/// The histogram's recorded values as `[value, count]` pairs, to be merged across processes.
fn buckets(h: &hdrhistogram::Histogram<u64>) -> Value {
    Value::Array(
        h.iter_recorded()
            .map(|v| json!([v.value_iterated_to(), v.count_at_value()]))
            .collect(),
    )
}

pub(crate) async fn c100k_gen(c: &Common, a: &GenArgs) -> Result<(Value, bool)> {
    let within = Duration::from_secs(a.timeout);
    let prefix = c.prefix();
    let users = Arc::new(
        (0..a.users)
            .map(|i| format!("{prefix}g{}u{i:06}", a.index))
            .collect::<Vec<_>>(),
    );
    let tokens = c.user_tokens(&users)?;
    let ep = Endpoint::parse(&c.url)?;
    let connector = Arc::new(Connector::new(c.source_ips, &ep.addr));
    let bearer = Arc::new(format!("Bearer {}", c.service_token()?));
    if c.target == Target::Tidings {
        let t = Instant::now();
        subscribe_all(&ep, &connector, &bearer, &a.topic, &users).await?;
        println!(
            "[{}] {} users subscribed to {} in {:.1}s",
            a.index,
            users.len(),
            a.topic,
            t.elapsed().as_secs_f64()
        );
    }
    let before = rss(&c.server_pid);
    let subs = open_subs(c, Transport::Sse, &users, &tokens, 1).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss(&c.server_pid);
    let online: Vec<u32> = (0..users.len() as u32)
        .filter(|&i| subs.ctx.online[i as usize].load(Ordering::Relaxed))
        .collect();
    let conns = subs.ctx.connected.load(Ordering::Relaxed);
    let rss_v = rss_json(&c.server_pid, before, after, conns);
    // run.sh passes no --server-pid (it reads every server's RSS itself, around all the
    // processes' connections); given one, this process's view is printed too.
    if c.server_pid.is_empty() {
        println!("[{}] {conns} connected", a.index);
    } else {
        println!(
            "[{}] {conns} connected; server RSS {} → {} kB, {} bytes per connection",
            a.index, before.vm_rss, after.vm_rss, rss_v["bytes_per_conn"]
        );
    }
    std::fs::write(a.barrier.join(format!("ready-{}", a.index)), b"")?;
    let go = a.barrier.join("go");
    until(within, "the go barrier", || go.exists()).await?;

    // The topic notification (message 0).
    let stats = PubStats::new(users.len());
    let published = a.barrier.join("topic-published");
    let cpu_t0 = cpu_sample(&c.cpu_pids(), &c.watch_comm);
    if a.topic_publisher {
        let mut client = Client::new(ep.clone(), connector.clone(), within);
        client.warm().await?;
        let t0 = now_us();
        let t = Instant::now();
        let r = publish_once(c.target, &mut client, &bearer, &a.topic, 0, t0).await;
        let took = t.elapsed().as_micros() as u64;
        let (status, recipients) = match &r {
            Ok((s, n)) => (Some(*s), *n),
            Err(e) => {
                eprintln!("[{}] topic publish failed: {e:#}", a.index);
                (None, None)
            }
        };
        println!(
            "[{}] topic publish: {status:?} in {}, recipients {recipients:?}",
            a.index,
            ms(took)
        );
        let tmp = a.barrier.join("topic-published.tmp");
        std::fs::write(
            &tmp,
            json!({"t0_us": t0, "publish_us": took, "status": status, "recipients": recipients})
                .to_string(),
        )?;
        std::fs::rename(tmp, &published)?;
    }
    until(within, "the topic publish", || published.exists()).await?;
    let info: Value =
        serde_json::from_slice(&std::fs::read(&published)?).context("reading topic-published")?;
    let t0 = info["t0_us"].as_u64().unwrap_or(0);
    let topic_ok = matches!(info["status"].as_u64(), Some(201 | 202))
        && (c.target == Target::Nchan || info["recipients"].as_u64() == Some(a.topic_total));
    if topic_ok {
        stats
            .accepted_n
            .fetch_add(online.len() as u64, Ordering::Relaxed);
        let mut list = stats.accepted.lock().unwrap();
        for &i in &online {
            list[i as usize].push(0);
        }
    }
    let expect = if topic_ok { online.len() as u64 } else { 0 };
    let wait = Instant::now();
    while subs.ctx.round_count[0].load(Ordering::Relaxed) < expect && wait.elapsed() < within {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let topic_got = subs.ctx.round_count[0].load(Ordering::Relaxed);
    let topic_last_us = subs.ctx.round_last_us[0]
        .load(Ordering::Relaxed)
        .saturating_sub(t0);
    let topic_cpu = cpu_json(&cpu_t0, &cpu_sample(&c.cpu_pids(), &c.watch_comm));
    let topic_latency = std::mem::replace(
        &mut *subs.ctx.latency.lock().unwrap(),
        crate::sub::histogram(),
    );
    subs.ctx.latency_sched.lock().unwrap().reset();
    println!(
        "[{}] topic: {topic_got}/{expect} of this process's users have it, the last after {}",
        a.index,
        ms(topic_last_us)
    );
    std::fs::write(a.barrier.join(format!("topic-done-{}", a.index)), b"")?;
    until(within, "the topic-done barrier", || {
        count_files(&a.barrier, "topic-done-") >= a.procs
    })
    .await?;

    // The unicast load: messages 1.., each to one random user of this share.
    let pool = Pool::new(a.publishers, &ep, &connector).await?;
    let publisher = Arc::new(Publisher {
        target: c.target,
        pool,
        stats: stats.clone(),
        bearer: bearer.to_string(),
        users: users.clone(),
    });
    let total = a.rate * a.duration;
    let mut rng = StdRng::seed_from_u64(c.seed ^ a.index as u64);
    let mut tasks = JoinSet::new();
    let cpu0 = cpu_sample(&c.cpu_pids(), &c.watch_comm);
    let start = Instant::now();
    let start_us = now_us();
    let mut i = 0u64;
    if online.is_empty() {
        bail!("no subscriber connected");
    }
    while i < total {
        let due = ((start.elapsed().as_secs_f64() * a.rate as f64) as u64).min(total);
        while i < due {
            let user = online[rng.random_range(0..online.len())];
            let offset = Duration::from_secs_f64(i as f64 / a.rate as f64);
            let scheduled = (start + offset, start_us + offset.as_micros() as u64);
            let publisher = publisher.clone();
            let m = i + 1;
            tasks.spawn(async move {
                publish_recorded(&publisher, &[user], m, None, Some(scheduled)).await;
            });
            i += 1;
        }
        while tasks.try_join_next().is_some() {}
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    while tasks.join_next().await.is_some() {}
    let publish_secs = start.elapsed().as_secs_f64();
    let expected = stats.accepted_n.load(Ordering::Relaxed);
    let drain = Instant::now();
    while subs.ctx.received.load(Ordering::Relaxed) < expected
        && drain.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = cpu_json(&cpu0, &cpu_sample(&c.cpu_pids(), &c.watch_comm));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let latency = subs.ctx.latency.lock().unwrap().clone();
    let connections = connections_json(&subs, users.len());
    let ctx = subs.ctx.clone();
    let results = close_subs(subs).await;
    let delivery = account(&stats, &results);
    println!(
        "[{}] unicast {}/s for {}s: {}; lost {}, duplicated {}, seq gaps {}",
        a.index,
        a.rate,
        a.duration,
        hist_line(&latency),
        delivery["lost"],
        delivery["duplicated"],
        delivery["seq_gaps"]
    );
    print_errors(&ctx);
    let ok = topic_ok
        && delivery_clean(&delivery)
        && stats.failed_n.load(Ordering::Relaxed) == 0
        && connections["failed"] == 0
        && connections["dropped"] == 0;
    let mut out = c.header(
        "c100k-gen",
        "sse",
        json!({"users": a.users, "index": a.index, "procs": a.procs, "rate": a.rate,
               "duration_s": a.duration, "publishers": a.publishers,
               "topic_total": a.topic_total}),
    );
    out.insert("connections".into(), connections);
    out.insert("rss".into(), rss_v);
    out.insert(
        "topic".into(),
        json!({
            "published": info,
            "expected": expect,
            "received": topic_got,
            "time_to_last_us": topic_last_us,
            "latency_us": hist_json(&topic_latency),
            "cpu": topic_cpu,
        }),
    );
    out.insert("latency_us".into(), hist_json(&latency));
    out.insert("latency_buckets".into(), buckets(&latency));
    out.insert("publish".into(), stats.json(publish_secs));
    out.insert("delivery".into(), delivery);
    out.insert("cpu".into(), cpu);
    out.insert("ok".into(), json!(ok));
    Ok((Value::Object(out), ok))
}
