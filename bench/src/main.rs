//! `tidings-bench`: drives Tidings or Nchan with the same workload and measures connections,
//! memory, publish-to-receive latency, throughput, and lost or duplicated notifications.
//!
//! Scenarios: `idle`, `unicast`, `cross-replica`, `fanout`, `ingest`; `report` turns the JSON
//! files they write into side-by-side tables. See `bench/run.sh` for how they are run.

mod net;
mod report;
mod stats;
mod sub;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use hyper::Method;
use net::{now_us, Client, Connector, Endpoint, Pool};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use stats::{cpu_json, cpu_sample, hist_json, hist_line, ms, rss, rss_json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use sub::{Ctx, SubResult};
use tokio::task::JoinSet;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    Tidings,
    Nchan,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    Sse,
    Ws,
    Poll,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Ws => "ws",
            Transport::Poll => "poll",
        }
    }
}

#[derive(Parser)]
#[command(
    name = "tidings-bench",
    version,
    about = "Load generator: Tidings vs Nchan (idle, unicast, fan-out, ingest, cross-replica)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// N idle subscribers: server RSS per connection.
    Idle {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 15_000)]
        connections: usize,
        #[arg(long, value_enum, default_value = "sse")]
        transport: Transport,
        /// Seconds to wait after the last connection before reading RSS again.
        #[arg(long, default_value_t = 5)]
        settle: u64,
    },
    /// N online users; R notifications per second for D seconds, each to one random user.
    Unicast {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: UnicastArgs,
    },
    /// `unicast` with the subscribers on `--sub-url` (replica B) and the publisher on `--url` (A).
    CrossReplica {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: UnicastArgs,
    },
    /// One notification to K online users (Nchan: K publishes at once): time until the last has it.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        recipients: usize,
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Pause between rounds.
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
        /// Nchan: keep-alive connections the K publishes are spread over.
        #[arg(long, default_value_t = 100)]
        publishers: usize,
        #[arg(long, value_enum, default_value = "sse")]
        transport: Transport,
    },
    /// Highest sustained publish rate with no subscribers: closed loop at each concurrency.
    Ingest {
        #[command(flatten)]
        common: Common,
        /// Recipients per request (Nchan: that many publishes per request).
        #[arg(long, default_value_t = 1)]
        recipients_per_request: usize,
        /// Distinct users the recipients are drawn from.
        #[arg(long, default_value_t = 10_000)]
        users: usize,
        /// Concurrent publishers; each level is run for --duration seconds.
        #[arg(long, value_delimiter = ',', default_value = "16,64,256")]
        concurrency: Vec<usize>,
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// Side-by-side tables (Markdown) from the JSON files the scenarios wrote.
    Report { files: Vec<PathBuf> },
}

#[derive(Args, Clone)]
struct Common {
    #[arg(long, value_enum, default_value = "tidings")]
    target: Target,
    /// Base URL publishes go to (and subscribers, unless --sub-url).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Base URL subscribers connect to (cross-replica: replica B).
    #[arg(long)]
    sub_url: Option<String>,
    /// Tidings' HS256 secret, to mint user and service tokens.
    #[arg(long, env = "TIDINGS__AUTH__JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Server processes whose RSS is summed (comma-separated or repeated): the Tidings
    /// replica(s) the subscribers are on, or the nginx workers.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// More server processes whose CPU (not RSS) counts, e.g. the publishing replica.
    #[arg(long, value_delimiter = ',')]
    cpu_pid: Vec<u32>,
    /// Write the result here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Name of this column in reports (default: the target).
    #[arg(long)]
    label: Option<String>,
    /// User and channel name prefix (default: unique per run).
    #[arg(long)]
    prefix: Option<String>,
    /// Spread client sockets over this many loopback source addresses (127.0.0.2..).
    #[arg(long, default_value_t = 16)]
    source_ips: u8,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// Exit with status 3 if any notification was lost or duplicated, a seq had a gap, a
    /// publish failed, or a subscriber could not connect or was dropped.
    #[arg(long)]
    fail_on_loss: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Helper processes (by name) whose CPU use is reported too.
    #[arg(long, value_delimiter = ',', default_value = "postgres,redis-server")]
    watch_comm: Vec<String>,
}

#[derive(Args, Clone)]
struct UnicastArgs {
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Notifications per second.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    #[arg(long, value_enum, default_value = "sse")]
    transport: Transport,
    /// Keep-alive publisher connections.
    #[arg(long, default_value_t = 64)]
    publishers: usize,
    /// Seconds to wait for stragglers after the last publish.
    #[arg(long, default_value_t = 10)]
    drain: u64,
    /// Seconds between the last connection and the first publish.
    #[arg(long, default_value_t = 2)]
    settle: u64,
}

impl Common {
    fn label(&self) -> String {
        self.label.clone().unwrap_or_else(|| match self.target {
            Target::Tidings => "tidings".into(),
            Target::Nchan => "nchan".into(),
        })
    }

    fn cpu_pids(&self) -> Vec<u32> {
        let mut p = self.server_pid.clone();
        p.extend(&self.cpu_pid);
        p
    }

    fn prefix(&self) -> String {
        self.prefix
            .clone()
            .unwrap_or_else(|| format!("b{:x}-", now_us() % 0xffff_ffff))
    }

    fn users(&self, prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}u{i}")).collect()
    }

    fn secret(&self) -> Result<&str> {
        match self.secret.as_deref() {
            Some(s) => Ok(s),
            None => bail!("--target tidings needs --secret or TIDINGS__AUTH__JWT_SECRET"),
        }
    }

    fn user_tokens(&self, users: &[String]) -> Result<Vec<String>> {
        match self.target {
            Target::Nchan => Ok(vec![String::new(); users.len()]),
            Target::Tidings => {
                let secret = self.secret()?;
                users.iter().map(|u| net::mint(secret, u, None)).collect()
            }
        }
    }

    fn service_token(&self) -> Result<String> {
        match self.target {
            Target::Nchan => Ok(String::new()),
            Target::Tidings => net::mint(self.secret()?, "bench", Some("notifications:publish")),
        }
    }

    fn header(
        &self,
        scenario: &str,
        variant: &str,
        params: Value,
    ) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("scenario".into(), json!(scenario));
        m.insert("variant".into(), json!(variant));
        m.insert(
            "target".into(),
            json!(match self.target {
                Target::Tidings => "tidings",
                Target::Nchan => "nchan",
            }),
        );
        m.insert("label".into(), json!(self.label()));
        m.insert("url".into(), json!(self.url));
        m.insert("sub_url".into(), json!(self.sub_url));
        m.insert("params".into(), params);
        m.insert("finished_unix".into(), json!(now_us() / 1_000_000));
        m.insert("machine".into(), stats::machine());
        // The command line, without a secret given with --secret.
        let mut args: Vec<String> = std::env::args().collect();
        for i in 0..args.len() {
            if args[i] == "--secret" && i + 1 < args.len() {
                args[i + 1] = "…".into();
            } else if args[i].starts_with("--secret=") {
                args[i] = "--secret=…".into();
            }
        }
        m.insert("command".into(), json!(args.join(" ")));
        m
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Cmd::Report { files } = &cli.cmd {
        return report::print(files);
    }
    let nofile = net::raise_nofile();
    eprintln!("open-file limit: {nofile}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (common, result) = rt.block_on(async {
        match cli.cmd {
            Cmd::Idle {
                common,
                connections,
                transport,
                settle,
            } => {
                let r = idle(&common, connections, transport, settle).await;
                (common, r)
            }
            Cmd::Unicast { common, args } => {
                let r = unicast(&common, &args, "unicast").await;
                (common, r)
            }
            Cmd::CrossReplica { common, args } => {
                let r = if common.sub_url.is_none() {
                    Err(anyhow::anyhow!(
                        "cross-replica needs --sub-url (replica B) besides --url (replica A)"
                    ))
                } else {
                    unicast(&common, &args, "cross-replica").await
                };
                (common, r)
            }
            Cmd::Fanout {
                common,
                recipients,
                rounds,
                interval_ms,
                publishers,
                transport,
            } => {
                let r = fanout(
                    &common,
                    recipients,
                    rounds,
                    interval_ms,
                    publishers,
                    transport,
                )
                .await;
                (common, r)
            }
            Cmd::Ingest {
                common,
                recipients_per_request,
                users,
                concurrency,
                duration,
            } => {
                let r = ingest(
                    &common,
                    recipients_per_request,
                    users,
                    &concurrency,
                    duration,
                )
                .await;
                (common, r)
            }
            Cmd::Report { .. } => unreachable!(),
        }
    });
    // Do not wait for thousands of socket tasks to notice the end.
    rt.shutdown_background();
    let (value, ok) = result?;
    if let Some(path) = &common.json {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).ok();
        }
        std::fs::write(path, serde_json::to_string_pretty(&value)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if common.fail_on_loss && !ok {
        eprintln!("FAIL: notifications were lost or duplicated, or requests failed (see above)");
        std::process::exit(3);
    }
    Ok(())
}

// ---------------------------------------------------------------- subscribers ---

struct Subs {
    ctx: Arc<Ctx>,
    handles: Vec<tokio::task::JoinHandle<SubResult>>,
    connect_secs: f64,
}

async fn open_subs(
    c: &Common,
    transport: Transport,
    users: &[String],
    tokens: &[String],
    rounds: usize,
) -> Result<Subs> {
    let ep = Endpoint::parse(c.sub_url.as_deref().unwrap_or(&c.url))?;
    let connector = Arc::new(Connector::new(c.source_ips, &ep.addr));
    let ctx = Ctx::new(
        c.target,
        transport,
        ep,
        connector,
        c.connect_concurrency,
        rounds,
        users.len(),
    );
    let t0 = Instant::now();
    let handles = users
        .iter()
        .zip(tokens)
        .enumerate()
        .map(|(i, (name, token))| {
            tokio::spawn(sub::run(ctx.clone(), i as u32, name.clone(), token.clone()))
        })
        .collect();
    let n = users.len() as u64;
    let mut shown = Instant::now();
    loop {
        let ok = ctx.connected.load(Ordering::Relaxed);
        let failed = ctx.failed.load(Ordering::Relaxed);
        if ok + failed >= n {
            break;
        }
        if t0.elapsed() > Duration::from_secs(300) {
            eprintln!("giving up waiting for connections after 300 s");
            break;
        }
        if shown.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "  connecting: {ok}/{n} connected, {failed} failed ({:.1}s)",
                t0.elapsed().as_secs_f64()
            );
            shown = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    let subs = Subs {
        ctx,
        handles,
        connect_secs,
    };
    println!(
        "subscribers: {}/{} connected over {}, {} failed, in {:.1}s",
        subs.ctx.connected.load(Ordering::Relaxed),
        n,
        transport.name(),
        subs.ctx.failed.load(Ordering::Relaxed),
        connect_secs
    );
    print_errors(&subs.ctx);
    Ok(subs)
}

fn print_errors(ctx: &Ctx) {
    let errors = ctx.errors.lock().unwrap();
    for e in errors.iter().take(5) {
        eprintln!("  error: {e}");
    }
}

async fn close_subs(subs: Subs) -> Vec<SubResult> {
    subs.ctx.cancel.cancel();
    let mut out = Vec::with_capacity(subs.handles.len());
    for h in subs.handles {
        if let Ok(r) = h.await {
            out.push(r);
        }
    }
    out
}

fn connections_json(subs: &Subs, requested: usize) -> Value {
    json!({
        "requested": requested,
        "connected": subs.ctx.connected.load(Ordering::Relaxed),
        "failed": subs.ctx.failed.load(Ordering::Relaxed),
        "dropped": subs.ctx.dropped.load(Ordering::Relaxed),
        "poll_errors": subs.ctx.poll_errors.load(Ordering::Relaxed),
        "connect_secs": (subs.connect_secs * 100.0).round() / 100.0,
    })
}

// ------------------------------------------------------------------ publishing ---

/// What the publisher did, shared by its concurrent requests.
struct PubStats {
    latency: Mutex<Histogram<u64>>,
    statuses: Mutex<BTreeMap<String, u64>>,
    /// Per user: the message ids the server accepted, and those whose publish failed.
    accepted: Mutex<Vec<Vec<u64>>>,
    failed: Mutex<Vec<Vec<u64>>>,
    accepted_n: AtomicU64,
    failed_n: AtomicU64,
    max_lag_us: AtomicU64,
}

impl PubStats {
    fn new(users: usize) -> Arc<Self> {
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

    fn count(&self, key: String) {
        *self.statuses.lock().unwrap().entry(key).or_default() += 1;
    }

    fn json(&self, secs: f64) -> Value {
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

fn payload(m: u64, sent_us: u64, sched_us: u64) -> String {
    format!(
        "\"type\":\"bench\",\"title\":\"t\",\"data\":{{\"sent_us\":{sent_us},\"sched_us\":{sched_us},\"bench_m\":{m}}}"
    )
}

/// One publish of message `m` to `recipients` (Nchan: exactly one channel); the reply's status.
async fn publish(
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

fn accepted(status: u16) -> bool {
    // Tidings answers 201; Nchan 201 (had subscribers) or 202 (queued, none).
    status == 201 || status == 202
}

/// Publishes over a pool of connections and records what it did.
struct Publisher {
    target: Target,
    pool: Arc<Pool>,
    stats: Arc<PubStats>,
    bearer: String,
    users: Arc<Vec<String>>,
}

/// Publishes message `m` to the users `idx` (one request; Nchan: one user), recording it.
/// `sent_us` defaults to when a connection was free; `scheduled` is when it was due.
async fn publish_recorded(
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
fn account(stats: &PubStats, results: &[SubResult]) -> Value {
    let accepted = stats.accepted.lock().unwrap();
    let failed = stats.failed.lock().unwrap();
    let (mut expected, mut received, mut lost, mut dup, mut unexpected, mut after_error) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut gaps, mut back) = (0u64, 0u64);
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
        "lost_examples": lost_users,
    })
}

fn delivery_clean(d: &Value) -> bool {
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

// ------------------------------------------------------------------- scenarios ---

async fn idle(c: &Common, n: usize, transport: Transport, settle: u64) -> Result<(Value, bool)> {
    let prefix = c.prefix();
    let users = c.users(&prefix, n);
    let tokens = c.user_tokens(&users)?;
    let before = rss(&c.server_pid);
    let subs = open_subs(c, transport, &users, &tokens, 0).await?;
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let after = rss(&c.server_pid);
    let conns =
        subs.ctx.connected.load(Ordering::Relaxed) - subs.ctx.dropped.load(Ordering::Relaxed);
    let rss_v = rss_json(&c.server_pid, before, after, conns);
    println!(
        "[{}] idle {}: {} connections held; server RSS {} kB -> {} kB: {} bytes/connection ({} anon)",
        c.label(),
        transport.name(),
        conns,
        before.vm_rss,
        after.vm_rss,
        rss_v["bytes_per_conn"],
        rss_v["anon_bytes_per_conn"],
    );
    let mut out = c.header(
        "idle",
        transport.name(),
        json!({"connections": n, "transport": transport.name(), "settle_s": settle}),
    );
    out.insert("connections".into(), connections_json(&subs, n));
    out.insert("rss".into(), rss_v);
    let all = conns == n as u64;
    close_subs(subs).await;
    Ok((Value::Object(out), all))
}

async fn unicast(c: &Common, a: &UnicastArgs, scenario: &str) -> Result<(Value, bool)> {
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
        "  delivery     {} received of {}, {delivered_per_s}/s; lost {}, duplicated {}, unexpected {}, seq gaps {}, seq backwards {}",
        delivery["received"],
        delivery["expected"],
        delivery["lost"],
        delivery["duplicated"],
        delivery["unexpected"],
        delivery["seq_gaps"],
        delivery["seq_backwards"]
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
    print_errors(&ctx);
    println!("  statuses     {:?}", stats.statuses.lock().unwrap());

    let ok = delivery_clean(&delivery)
        && stats.failed_n.load(Ordering::Relaxed) == 0
        && connections["failed"] == 0
        && connections["dropped"] == 0;
    let mut out = c.header(
        scenario,
        a.transport.name(),
        json!({
            "users": a.users, "rate": a.rate, "duration_s": a.duration,
            "transport": a.transport.name(), "publishers": a.publishers,
        }),
    );
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
    out.insert(
        "subscriber_errors".into(),
        json!(*ctx.errors.lock().unwrap()),
    );
    out.insert("ok".into(), json!(ok));
    Ok((Value::Object(out), ok))
}

async fn fanout(
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

async fn ingest(
    c: &Common,
    per_request: usize,
    n_users: usize,
    levels: &[usize],
    duration: u64,
) -> Result<(Value, bool)> {
    let prefix = c.prefix();
    let users = Arc::new(c.users(&prefix, n_users.max(per_request)));
    let ep = Endpoint::parse(&c.url)?;
    let connector = Arc::new(Connector::new(c.source_ips, &ep.addr));
    let bearer = Arc::new(format!("Bearer {}", c.service_token()?));
    let warmup = Duration::from_secs((duration / 5).max(1));
    let mut out_levels = Vec::new();
    let mut best = (0.0f64, 0usize);
    let mut any_error = false;
    for (li, &conc) in levels.iter().enumerate() {
        let latency = Arc::new(Mutex::new(sub::histogram()));
        let done = Arc::new(AtomicU64::new(0));
        let statuses = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
        let start = Instant::now();
        let measure_from = start + warmup;
        let cpu_at_start = tokio::spawn({
            let (pids, names) = (c.cpu_pids(), c.watch_comm.clone());
            async move {
                tokio::time::sleep_until(measure_from.into()).await;
                cpu_sample(&pids, &names)
            }
        });
        let deadline = start + Duration::from_secs(duration) + warmup;
        let mut tasks = JoinSet::new();
        for w in 0..conc {
            let (ep, connector, bearer, users, latency, done, statuses) = (
                ep.clone(),
                connector.clone(),
                bearer.clone(),
                users.clone(),
                latency.clone(),
                done.clone(),
                statuses.clone(),
            );
            let target = c.target;
            let seed = c.seed ^ ((li as u64) << 32) ^ w as u64;
            tasks.spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut client = Client::new(ep, connector, Duration::from_secs(30));
                let mut m = (w as u64) << 40;
                while Instant::now() < deadline {
                    let idx = rand::seq::index::sample(&mut rng, users.len(), per_request);
                    let names: Vec<&str> = idx.iter().map(|i| users[i].as_str()).collect();
                    let t = Instant::now();
                    let mut status = Ok(0);
                    match target {
                        Target::Tidings => {
                            let now = now_us();
                            status =
                                publish(target, &mut client, &bearer, &names, m, now, now).await;
                        }
                        Target::Nchan => {
                            for name in &names {
                                let now = now_us();
                                status =
                                    publish(target, &mut client, "", &[name], m, now, now).await;
                                if !matches!(status, Ok(s) if accepted(s)) {
                                    break;
                                }
                            }
                        }
                    }
                    m += 1;
                    let end = Instant::now();
                    let ok = matches!(status, Ok(s) if accepted(s));
                    if end >= measure_from && end <= deadline {
                        *statuses
                            .lock()
                            .unwrap()
                            .entry(match &status {
                                Ok(s) => s.to_string(),
                                Err(e) => format!("error: {e:#}"),
                            })
                            .or_default() += 1;
                        if ok {
                            done.fetch_add(1, Ordering::Relaxed);
                            let _ = latency
                                .lock()
                                .unwrap()
                                .record((end - t).as_micros().max(1) as u64);
                        }
                    }
                    if !ok {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            });
        }
        let cpu0 = cpu_at_start.await?;
        while tasks.join_next().await.is_some() {}
        let cpu = cpu_json(&cpu0, &cpu_sample(&c.cpu_pids(), &c.watch_comm));
        let secs = duration as f64;
        let requests = done.load(Ordering::Relaxed);
        let rps = requests as f64 / secs;
        let nps = rps * per_request as f64;
        let lat = latency.lock().unwrap().clone();
        let statuses = statuses.lock().unwrap().clone();
        let errors: u64 = statuses
            .iter()
            .filter(|(k, _)| k.as_str() != "201" && k.as_str() != "202")
            .map(|(_, v)| v)
            .sum();
        any_error |= errors > 0;
        println!(
            "[{}] ingest x{per_request} at concurrency {conc}: {rps:.0} requests/s = {nps:.0} notifications/s; errors {errors}; request {}",
            c.label(),
            hist_line(&lat)
        );
        if errors > 0 {
            println!("  statuses {statuses:?}");
        }
        if nps > best.0 {
            best = (nps, conc);
        }
        out_levels.push(json!({
            "concurrency": conc, "requests_per_s": rps.round(), "notifications_per_s": nps.round(),
            "errors": errors, "statuses": statuses, "latency_us": hist_json(&lat), "cpu": cpu,
        }));
        // Let the server settle between levels.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut out = c.header(
        "ingest",
        &format!("x{per_request}"),
        json!({"recipients_per_request": per_request, "users": n_users,
               "concurrency": levels, "duration_s": duration, "warmup_s": warmup.as_secs()}),
    );
    out.insert(
        "ingest".into(),
        json!({
            "best_notifications_per_s": best.0.round(),
            "best_concurrency": best.1,
            "levels": out_levels,
        }),
    );
    out.insert("ok".into(), json!(!any_error));
    println!(
        "[{}] ingest x{per_request}: best {:.0} notifications/s at concurrency {}",
        c.label(),
        best.0,
        best.1
    );
    Ok((Value::Object(out), !any_error))
}
