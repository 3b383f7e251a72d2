//! `mqtt-drain`: the MQTT bridge's sustained rate. A backlog of notifications is published as
//! fast as Tidings takes them (many recipients per request), with the broker reachable; the
//! figure is notifications per second from the first publish until the outbox is empty, every
//! row PUBACKed by the broker. With `--subscribe`, MQTT clients subscribed to every recipient's
//! topic consume the backlog meanwhile, and every notification is checked to arrive.
//!
//! With the broker reachable the bridge drains while Tidings is still taking publishes, so the
//! figure cannot exceed the publish rate. With `--broker-up-cmd` the broker is down while the
//! backlog is written and started afterwards: the rate from the first PUBACK to the empty
//! outbox is the bridge's own, with nothing else running.

use super::publishing::{account, delivery_clean, publish_recorded, PubStats, Publisher};
use super::subscribers::{close_subs, connections_json, open_subs, print_errors};
use crate::net::{self, now_us, Client, Connector, Endpoint, Pool};
use crate::stats::{cpu_json, cpu_sample, hist_json, hist_line};
use crate::{Common, DrainArgs, Transport};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use hyper::Method;
use serde_json::{json, Value};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinSet;

/// One `psql` session kept open for the whole run (the bench has no database driver): a query
/// costs a round trip, not a process start, so the outbox can be polled every few
/// milliseconds and the moment it empties is known to that precision.
struct Psql {
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Psql {
    fn open(db: &str) -> Result<Self> {
        let mut child = Command::new("psql")
            .args(["-X", "-q", "-t", "-A", "-d", db])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting psql")?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("psql without pipes");
        };
        Ok(Self {
            _child: child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
        })
    }

    /// A query whose answer is one number on one line.
    async fn number(&mut self, sql: &str) -> Result<i64> {
        self.stdin.write_all(format!("{sql};\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let line = tokio::time::timeout(Duration::from_secs(30), self.stdout.next_line())
            .await
            .map_err(|_| anyhow!("psql did not answer {sql} in 30 s"))??
            .ok_or_else(|| anyhow!("psql exited"))?;
        line.trim()
            .parse()
            .with_context(|| format!("psql answered {line:?} to {sql}"))
    }

    async fn outbox_depth(&mut self) -> Result<i64> {
        self.number("SELECT count(*) FROM mqtt_outbox").await
    }

    /// Whether any row is left: an index probe, cheap enough to ask every 20 ms without
    /// taking Postgres' time from the bridge (a count scans the whole table).
    async fn outbox_empty(&mut self) -> Result<bool> {
        Ok(self
            .number("SELECT count(*) FROM (SELECT id FROM mqtt_outbox ORDER BY id LIMIT 1) t")
            .await?
            == 0)
    }

    /// The outbox id sequence's next value (it draws one): the difference of two readings is
    /// how many rows were written between them, plus one.
    async fn outbox_next_id(&mut self) -> Result<i64> {
        self.number("SELECT nextval(pg_get_serial_sequence('mqtt_outbox', 'id'))")
            .await
    }
}

/// A counter or gauge (no labels) from Tidings' /metrics.
async fn scrape(client: &mut Client, name: &str) -> Result<f64> {
    let req = net::request(Method::GET, client.host(), "/metrics", &[], Bytes::new())?;
    let reply = client.send(req).await?;
    let text = String::from_utf8_lossy(&reply.body);
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse::<f64>().ok()).flatten()
        })
        .ok_or_else(|| anyhow!("/metrics has no {name}: is the MQTT bridge on?"))
}

pub(crate) async fn mqtt_drain(c: &Common, a: &DrainArgs) -> Result<(Value, bool)> {
    let prefix = c.prefix();
    let n = a.users.max(1);
    let per = a.recipients_per_request.clamp(1, n);
    let requests = a.notifications / per as u64;
    let users = Arc::new(c.users(&prefix, n));
    let mut psql = Psql::open(&a.outbox_db)?;
    let depth0 = psql.outbox_depth().await?;
    if depth0 != 0 {
        bail!("the outbox holds {depth0} rows before the run; it must start empty");
    }
    if a.subscribe && a.broker_up_cmd.is_some() {
        bail!("--subscribe needs the broker up from the start; not with --broker-up-cmd");
    }
    let subs = if a.subscribe {
        let tokens = vec![String::new(); n];
        let s = open_subs(c, Transport::Mqtt, &users, &tokens, 0).await?;
        if s.ctx.connected.load(Ordering::Relaxed) < n as u64 {
            bail!("not every MQTT subscriber subscribed");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        Some(s)
    } else {
        None
    };

    let ep = Endpoint::parse(&c.url)?;
    let connector = Arc::new(Connector::new(c.source_ips, &ep.addr));
    let pool = Pool::new(a.concurrency, &ep, &connector).await?;
    let stats = PubStats::new(n);
    let publisher = Arc::new(Publisher {
        target: c.target,
        pool,
        stats: stats.clone(),
        bearer: format!("Bearer {}", c.service_token()?),
        users: users.clone(),
    });
    let mut metrics = Client::new(ep.clone(), connector.clone(), Duration::from_secs(10));
    let acked0 = scrape(&mut metrics, "tidings_mqtt_acknowledged_total").await?;
    let id0 = psql.outbox_next_id().await?;
    println!(
        "[{}] mqtt-drain: publishing {} notifications ({requests} requests of {per} recipients, {} at once) to {n} users{}",
        c.label(),
        requests * per as u64,
        a.concurrency,
        if a.subscribe { ", MQTT subscribers consuming" } else { ", no MQTT subscriber" }
    );

    let mut broker_pids = c.broker_pid.clone();
    let mut cpu0 = cpu_sample(&c.cpu_pids(), &c.watch_comm);
    let mut broker0 = cpu_sample(&broker_pids, &[]);
    let start = Instant::now();
    let start_us = now_us();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..a.concurrency.max(1) {
        let (publisher, next) = (publisher.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= requests {
                    return;
                }
                let idx: Vec<u32> = (0..per)
                    .map(|j| ((k as usize * per + j) % n) as u32)
                    .collect();
                publish_recorded(&publisher, &idx, k, None, None).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let publish_secs = start.elapsed().as_secs_f64();
    let depth_after_publish = psql.outbox_depth().await?;
    let accepted = stats.accepted_n.load(Ordering::Relaxed);
    eprintln!(
        "  published {accepted} in {publish_secs:.1}s; {depth_after_publish} outbox rows left"
    );

    let deadline = start + Duration::from_secs(a.timeout);
    // When the drain starts: the first publish, or (broker started later) the first PUBACK.
    let mut drain_from = 0.0;
    let mut broker_started_secs = None;
    if let Some(cmd) = &a.broker_up_cmd {
        broker_started_secs = Some(start.elapsed().as_secs_f64());
        let out = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stderr(Stdio::inherit())
            .output()
            .await
            .context("running --broker-up-cmd")?;
        if !out.status.success() {
            bail!("--broker-up-cmd failed: {}", out.status);
        }
        let pid: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("--broker-up-cmd must print the broker's pid")?;
        broker_pids.push(pid);
        // CPU over the drain alone: the backlog was written before.
        cpu0 = cpu_sample(&c.cpu_pids(), &c.watch_comm);
        broker0 = cpu_sample(&broker_pids, &[]);
        loop {
            let asked = start.elapsed().as_secs_f64();
            if scrape(&mut metrics, "tidings_mqtt_acknowledged_total").await? > acked0 {
                drain_from = asked;
                break;
            }
            if Instant::now() > deadline {
                bail!("no PUBACK within {}s", a.timeout);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "  broker started {:.2}s after the first publish; first PUBACK at {drain_from:.2}s",
            broker_started_secs.unwrap_or(0.0)
        );
    }
    let mut drained_secs = None;
    let mut shown = Instant::now();
    loop {
        if drained_secs.is_none() {
            // The count's snapshot is taken as the query starts.
            let asked = start.elapsed().as_secs_f64();
            if psql.outbox_empty().await? {
                drained_secs = Some(asked);
            }
        }
        let received = subs
            .as_ref()
            .map_or(accepted, |s| s.ctx.received.load(Ordering::Relaxed));
        if drained_secs.is_some() && received >= accepted {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("  gave up after {}s", a.timeout);
            break;
        }
        if shown.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "  {:.0}s: outbox {}, received {received}",
                start.elapsed().as_secs_f64(),
                if drained_secs.is_some() {
                    "empty".to_owned()
                } else {
                    "not empty".to_owned()
                },
            );
            shown = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = cpu_json(&cpu0, &cpu_sample(&c.cpu_pids(), &c.watch_comm));
    let broker_cpu = cpu_json(&broker0, &cpu_sample(&broker_pids, &[]));
    let acked = scrape(&mut metrics, "tidings_mqtt_acknowledged_total").await? - acked0;
    // Minus the reading of id0 itself.
    let rows_written = psql.outbox_next_id().await? - id0 - 1;

    let mut out = c.header(
        "mqtt-drain",
        "backlog",
        json!({
            "notifications": requests * per as u64, "users": n, "recipients_per_request": per,
            "concurrency": a.concurrency,
            "broker": if a.broker_up_cmd.is_some() { "started after the backlog" } else { "reachable" },
        }),
    );
    let rate = |secs: Option<f64>, count: f64| match secs {
        Some(s) if s > 0.0 => json!((count / s).round()),
        _ => Value::Null,
    };
    let window = drained_secs.map(|d| d - drain_from);
    let mut ok = stats.failed_n.load(Ordering::Relaxed) == 0 && drained_secs.is_some();
    println!("[{}] mqtt-drain:", c.label());
    println!(
        "  publish      {accepted} accepted, {} failed, in {publish_secs:.2}s ({:.0}/s); {depth_after_publish} outbox rows left then",
        stats.failed_n.load(Ordering::Relaxed),
        accepted as f64 / publish_secs
    );
    match (drained_secs, window) {
        (Some(d), Some(w)) => println!(
            "  drained      outbox empty {d:.2}s after the first publish, {w:.2}s after the drain began: {:.0} notifications/s; {rows_written} outbox rows, {acked} PUBACKed publishes ({:.0}/s)",
            accepted as f64 / w,
            acked / w
        ),
        _ => println!("  drained      NOT within {}s", a.timeout),
    }
    println!("  cpu (cores)  {cpu}");
    if !broker_pids.is_empty() {
        println!("  broker cpu   {broker_cpu}");
    }
    out.insert(
        "drain".into(),
        json!({
            "publish_secs": (publish_secs * 100.0).round() / 100.0,
            "accepted": accepted,
            "failed": stats.failed_n.load(Ordering::Relaxed),
            "depth_after_publish": depth_after_publish,
            "broker_started_secs": broker_started_secs.map(|s| (s * 100.0).round() / 100.0),
            "drain_from_secs": (drain_from * 100.0).round() / 100.0,
            "drained_secs": drained_secs.map(|s| (s * 100.0).round() / 100.0),
            "window_secs": window.map(|s| (s * 100.0).round() / 100.0),
            "notifications_per_s": rate(window, accepted as f64),
            "outbox_rows": rows_written,
            "acknowledged": acked,
            "acknowledged_per_s": rate(window, acked),
        }),
    );
    out.insert("publish".into(), stats.json(publish_secs));
    if let Some(subs) = subs {
        // Room for late redeliveries.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let connections = connections_json(&subs, n);
        let latency = subs.ctx.latency.lock().unwrap().clone();
        let last = subs.ctx.last_recv_us.load(Ordering::Relaxed);
        let ctx = subs.ctx.clone();
        let results = close_subs(subs).await;
        let delivery = account(&stats, &results);
        let last_secs = last.saturating_sub(start_us) as f64 / 1e6;
        println!("  latency      {}", hist_line(&latency));
        println!(
            "  delivery     {} received of {}, the last {last_secs:.2}s after the first publish; lost {}, duplicated {}, seq gaps {}, seq backwards {}, redelivered (dropped by seq) {}",
            delivery["received"],
            delivery["expected"],
            delivery["lost"],
            delivery["duplicated"],
            delivery["seq_gaps"],
            delivery["seq_backwards"],
            delivery["redelivered_dropped"]
        );
        print_errors(&ctx);
        ok = ok
            && delivery_clean(&delivery)
            && connections["failed"] == 0
            && connections["dropped"] == 0;
        out.insert("subscribed".into(), json!(true));
        out.insert(
            "last_received_secs".into(),
            json!((last_secs * 100.0).round() / 100.0),
        );
        out.insert(
            "received_per_s".into(),
            rate(
                Some(last_secs),
                delivery["received"].as_f64().unwrap_or(0.0),
            ),
        );
        out.insert("latency_us".into(), hist_json(&latency));
        out.insert("connections".into(), connections);
        out.insert("delivery".into(), delivery);
        out.insert(
            "subscriber_errors".into(),
            json!(*ctx.errors.lock().unwrap()),
        );
    } else {
        out.insert("subscribed".into(), json!(false));
    }
    let secs = cpu["wall_s"].as_f64().unwrap_or(0.0);
    let per_1000 = |cpu_s: f64| {
        if accepted > 0 && secs > 0.0 {
            json!((cpu_s * 1e6 / accepted as f64 * 100.0).round() / 100.0)
        } else {
            Value::Null
        }
    };
    out.insert(
        "server_cpu_ms_per_1000".into(),
        per_1000(cpu["server_cpu_s"].as_f64().unwrap_or(0.0)),
    );
    out.insert("cpu".into(), cpu);
    if !broker_pids.is_empty() {
        out.insert(
            "broker_cpu_ms_per_1000".into(),
            per_1000(broker_cpu["server_cpu_s"].as_f64().unwrap_or(0.0)),
        );
        out.insert("broker_cpu".into(), broker_cpu);
    }
    out.insert("ok".into(), json!(ok));
    Ok((Value::Object(out), ok))
}
