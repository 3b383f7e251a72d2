//! `webpush`: the Web Push sender's sustained rate and publish-to-receipt latency (issue 24).
//!
//! A push service runs in this process on a loopback port (RFC 8030's one request per push:
//! `POST /push/<subscription>`). Like a real push service it does not decrypt: the browser
//! does that, and the test suite's push service (`tests/support/src/push.rs`) already checks
//! VAPID and decrypts every body. This one checks what it can see without the browser's key
//! (a `vapid t=…, k=…` Authorization, `Content-Encoding: aes128gcm`, a body that holds the
//! aes128gcm header and fits in 4,096 bytes, a `Topic`), time-stamps each push and answers
//! `201 Created`. Tidings sends the notification id (dashes removed) as the `Topic`, and the
//! publish answers each recipient's id, so every push is matched to its publish: latency,
//! loss and duplicates are counted per push without decrypting.
//!
//! Every subscription carries the same valid P-256 public key (the curve's generator point)
//! and its own random auth secret. The sender's work per push does not depend on the key: a
//! fresh ephemeral key pair, an ECDH, HKDF and AES-GCM, as for any browser's key.
//!
//! Two phases, on the same subscriptions:
//! 1. **sustained**: `rounds` notifications to every user, published at once (requests of up
//!    to 1,000 recipients): pushes per second from the first publish to the last receipt;
//! 2. **latency**: one-recipient publishes at `rate` per second to random users for
//!    `duration` seconds (open loop): publish (the REST call's start) to receipt.

use super::publishing::payload;
use crate::net::{self, now_us, Client, Connector, Endpoint, Pool};
use crate::stats::{cpu_json, cpu_sample, hist_json, hist_line, ms};
use crate::sub;
use crate::{Common, Target};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::Method;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

#[derive(clap::Args)]
pub(crate) struct WebPushArgs {
    /// Users with subscriptions.
    #[arg(long, default_value_t = 1000)]
    pub(crate) users: usize,
    /// Subscriptions per user (phones, laptops): `users` × this in all.
    #[arg(long, default_value_t = 1)]
    pub(crate) per_user: usize,
    /// Sustained phase: notifications to every user, all published at once.
    #[arg(long, default_value_t = 10)]
    pub(crate) rounds: usize,
    /// Latency phase: one-recipient publishes per second.
    #[arg(long, default_value_t = 200)]
    pub(crate) rate: u64,
    /// Latency phase: seconds of publishing.
    #[arg(long, default_value_t = 20)]
    pub(crate) duration: u64,
    /// Keep-alive publisher connections.
    #[arg(long, default_value_t = 16)]
    pub(crate) publishers: usize,
    /// Seconds to wait for the last pushes after a phase's last publish.
    #[arg(long, default_value_t = 120)]
    pub(crate) drain: u64,
}

/// The uncompressed P-256 generator point, base64url: a valid `p256dh` for every subscription.
const P256DH: &str =
    "BGsX0fLhLEJH-Lzm5WOkQPJ3A32BLeszoPShOUXYmMKWT-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU";

/// base64url without padding (RFC 4648 §5), for the auth secrets.
fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 2);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// One push as the push service got it.
#[derive(Clone, Copy)]
struct Receipt {
    subscription: u32,
    at_us: u64,
}

#[derive(Default)]
struct Received {
    /// By `Topic` (the notification id without dashes).
    by_topic: HashMap<String, Vec<Receipt>>,
    /// Pushes that failed a check, with why (the first few).
    violations: Vec<String>,
}

/// The push service: counts, time-stamps and answers 201.
struct PushService {
    port: u16,
    received: Arc<Mutex<Received>>,
    count: Arc<AtomicU64>,
    violations: Arc<AtomicU64>,
    server: tokio::task::JoinHandle<()>,
}

impl PushService {
    async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let received = Arc::new(Mutex::new(Received::default()));
        let count = Arc::new(AtomicU64::new(0));
        let violations = Arc::new(AtomicU64::new(0));
        let (r, c, v) = (received.clone(), count.clone(), violations.clone());
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (r, c, v) = (r.clone(), c.clone(), v.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, r, c, v).await;
                });
            }
        });
        Ok(Self {
            port,
            received,
            count,
            violations,
            server,
        })
    }
}

/// One keep-alive HTTP/1.1 connection from the sender (`Content-Length` bodies).
async fn serve(
    stream: tokio::net::TcpStream,
    received: Arc<Mutex<Received>>,
    count: Arc<AtomicU64>,
    violations: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let (mut len, mut auth, mut encoding, mut topic) = (0usize, false, false, None);
        loop {
            line.clear();
            if r.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => len = v.parse().unwrap_or(usize::MAX),
                "authorization" => auth = v.starts_with("vapid t=") && v.contains(", k="),
                "content-encoding" => encoding = v == "aes128gcm",
                "topic" => topic = Some(v.to_owned()),
                _ => {}
            }
        }
        if len > 64 * 1024 {
            return Ok(());
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await?;
        let at_us = now_us();
        let sub: Option<u32> = path.strip_prefix("/push/").and_then(|s| s.parse().ok());
        // aes128gcm: salt 16, record size 4, key id length 1, the 65-byte key, then at least
        // the 16-byte tag.
        let problem = match (&sub, &topic) {
            (None, _) => Some(format!("unknown path {path}")),
            (_, None) => Some("no Topic".to_owned()),
            _ if !auth => Some("Authorization is not `vapid t=…, k=…`".to_owned()),
            _ if !encoding => Some("Content-Encoding is not aes128gcm".to_owned()),
            _ if !(21 + 65 + 16..=4096).contains(&len) => Some(format!("a body of {len} bytes")),
            _ => None,
        };
        let status = match (problem, sub, topic) {
            (None, Some(subscription), Some(topic)) => {
                received
                    .lock()
                    .unwrap()
                    .by_topic
                    .entry(topic)
                    .or_default()
                    .push(Receipt {
                        subscription,
                        at_us,
                    });
                count.fetch_add(1, Ordering::Relaxed);
                "201 Created"
            }
            (problem, _, _) => {
                violations.fetch_add(1, Ordering::Relaxed);
                let mut rec = received.lock().unwrap();
                if rec.violations.len() < 10 {
                    rec.violations
                        .push(problem.unwrap_or_else(|| "malformed".into()));
                }
                "400 Bad Request"
            }
        };
        w.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
            .await?;
    }
}

/// What one publish produced: for each accepted recipient, its notification's topic.
struct Published {
    /// topic → (user, publish start)
    topics: Mutex<HashMap<String, (u32, u64)>>,
    failed: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

/// Publishes one notification to `idx`; records each recipient's id as a push topic.
async fn publish(
    client: &mut Client,
    bearer: &str,
    users: &[String],
    idx: &[u32],
    m: u64,
    p: &Published,
) -> Result<()> {
    let names: Vec<&str> = idx.iter().map(|&i| users[i as usize].as_str()).collect();
    let sent = now_us();
    let body = format!(
        "{{\"recipients\":{},{}}}",
        serde_json::to_string(&names)?,
        payload(m, sent, sent)
    );
    let req = net::request(
        Method::POST,
        client.host(),
        "/v1/notifications",
        &[
            ("authorization", bearer),
            ("content-type", "application/json"),
        ],
        Bytes::from(body),
    )?;
    let t = Instant::now();
    let reply = client.send(req).await?;
    if reply.status != 201 {
        bail!(
            "publish: HTTP {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }
    let _ = p
        .latency
        .lock()
        .unwrap()
        .record((t.elapsed().as_micros() as u64).max(1));
    let v: Value = serde_json::from_slice(&reply.body).context("publish reply")?;
    let by_name: HashMap<&str, u32> = names.iter().copied().zip(idx.iter().copied()).collect();
    let mut topics = p.topics.lock().unwrap();
    for r in v["notifications"].as_array().into_iter().flatten() {
        let (Some(id), Some(user)) = (r["id"].as_str(), r["recipient"].as_str()) else {
            continue;
        };
        let topic: String = id.chars().filter(char::is_ascii_alphanumeric).collect();
        if let Some(&u) = by_name.get(user) {
            topics.insert(topic, (u, sent));
        }
    }
    Ok(())
}

/// Waits until the push service has `want` pushes, or `within` has passed.
async fn wait_for(ps: &PushService, want: u64, within: Duration) {
    let t = Instant::now();
    let mut shown = Instant::now();
    while ps.count.load(Ordering::Relaxed) < want && t.elapsed() < within {
        if shown.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "  waiting: {}/{want} pushes received",
                ps.count.load(Ordering::Relaxed)
            );
            shown = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Matches the pushes of one phase to its publishes.
fn account(
    ps: &PushService,
    published: &Published,
    per_user: usize,
    user_subs: &[Vec<u32>],
) -> Value {
    let rec = ps.received.lock().unwrap();
    let topics = published.topics.lock().unwrap();
    let mut lat = sub::histogram();
    let (mut expected, mut got, mut lost, mut dup, mut wrong) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut first, mut last) = (u64::MAX, 0u64);
    for (topic, &(user, sent)) in topics.iter() {
        expected += per_user as u64;
        let pushes = rec.by_topic.get(topic).map(Vec::as_slice).unwrap_or(&[]);
        let mut seen: Vec<u32> = Vec::with_capacity(pushes.len());
        for p in pushes {
            got += 1;
            if !user_subs[user as usize].contains(&p.subscription) {
                wrong += 1;
                continue;
            }
            if seen.contains(&p.subscription) {
                dup += 1;
                continue;
            }
            seen.push(p.subscription);
            first = first.min(sent);
            last = last.max(p.at_us);
            let _ = lat.record(p.at_us.saturating_sub(sent).max(1));
        }
        lost += (per_user - seen.len()) as u64;
    }
    json!({
        "notifications": topics.len(),
        "expected": expected,
        "received": got,
        "lost": lost,
        "duplicated": dup,
        "to_another_users_subscription": wrong,
        "first_publish_to_last_receipt_us": last.saturating_sub(first),
        "latency_us": hist_json(&lat),
        "latency_line": hist_line(&lat),
    })
}

/// Subscribes `per_user` endpoints of the push service for every user.
async fn subscribe_all(
    c: &Common,
    users: &[String],
    per_user: usize,
    port: u16,
) -> Result<Vec<Vec<u32>>> {
    let tokens = Arc::new(c.user_tokens(users)?);
    let ep = Endpoint::parse(&c.url)?;
    let connector = Arc::new(Connector::new(c.source_ips, &ep.addr));
    let next = Arc::new(AtomicUsize::new(0));
    let total = users.len() * per_user;
    let mut workers = JoinSet::new();
    for w in 0..32u64 {
        let mut client = Client::new(ep.clone(), connector.clone(), Duration::from_secs(60));
        let (tokens, next) = (tokens.clone(), next.clone());
        let seed = c.seed ^ (w << 20);
        workers.spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            loop {
                let s = next.fetch_add(1, Ordering::Relaxed);
                if s >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let mut auth = [0u8; 16];
                rng.fill_bytes(&mut auth);
                let body = json!({
                    "endpoint": format!("http://127.0.0.1:{port}/push/{s}"),
                    "expirationTime": null,
                    "keys": {"p256dh": P256DH, "auth": b64url(&auth)},
                });
                let bearer = format!("Bearer {}", tokens[s / per_user]);
                let req = net::request(
                    Method::POST,
                    client.host(),
                    "/v1/push/subscriptions",
                    &[
                        ("authorization", bearer.as_str()),
                        ("content-type", "application/json"),
                    ],
                    Bytes::from(serde_json::to_vec(&body)?),
                )?;
                let reply = client.send(req).await?;
                if reply.status != 201 && reply.status != 200 {
                    bail!(
                        "POST /v1/push/subscriptions: HTTP {}: {}",
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
    Ok((0..users.len())
        .map(|u| ((u * per_user) as u32..((u + 1) * per_user) as u32).collect())
        .collect())
}

pub(crate) async fn webpush(c: &Common, a: &WebPushArgs) -> Result<(Value, bool)> {
    if c.target != Target::Tidings {
        bail!("webpush measures Tidings only");
    }
    let prefix = c.prefix();
    let users = Arc::new(c.users(&prefix, a.users));
    let ps = PushService::start().await?;
    let t0 = Instant::now();
    let user_subs = subscribe_all(c, &users, a.per_user.max(1), ps.port).await?;
    let per_user = a.per_user.max(1);
    let subs = users.len() * per_user;
    println!(
        "webpush: {subs} subscriptions ({} users × {per_user}) to the push service on port {} in {:.1}s",
        users.len(),
        ps.port,
        t0.elapsed().as_secs_f64()
    );

    let ep = Endpoint::parse(&c.url)?;
    let connector = Arc::new(Connector::new(c.source_ips, &ep.addr));
    let pool = Pool::new(a.publishers, &ep, &connector).await?;
    let bearer = Arc::new(format!("Bearer {}", c.service_token()?));
    let all: Vec<u32> = (0..users.len() as u32).collect();

    // Phase 1: every round to every user, at once.
    let sustained = Arc::new(Published {
        topics: Mutex::new(HashMap::new()),
        failed: AtomicU64::new(0),
        latency: Mutex::new(sub::histogram()),
    });
    let base = ps.count.load(Ordering::Relaxed);
    let cpu0 = cpu_sample(&c.cpu_pids(), &c.watch_comm);
    let start_us = now_us();
    let mut tasks = JoinSet::new();
    let mut m = 0u64;
    for _ in 0..a.rounds {
        for chunk in all.chunks(1000) {
            let (pool, bearer, users, chunk, p) = (
                pool.clone(),
                bearer.clone(),
                users.clone(),
                chunk.to_vec(),
                sustained.clone(),
            );
            tasks.spawn(async move {
                let mut client = pool.take().await;
                let r = publish(&mut client, &bearer, &users, &chunk, m, &p).await;
                pool.put(client);
                if let Err(e) = r {
                    eprintln!("  publish failed: {e:#}");
                    p.failed.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            });
            m += 1;
        }
    }
    while tasks.join_next().await.is_some() {}
    let published_us = now_us() - start_us;
    let want1 = base + sustained.topics.lock().unwrap().len() as u64 * per_user as u64;
    wait_for(&ps, want1, Duration::from_secs(a.drain)).await;
    let cpu1 = cpu_json(&cpu0, &cpu_sample(&c.cpu_pids(), &c.watch_comm));
    let phase1 = account(&ps, &sustained, per_user, &user_subs);
    let span_us = phase1["first_publish_to_last_receipt_us"]
        .as_u64()
        .unwrap_or(0);
    let pushes1 =
        phase1["received"].as_u64().unwrap_or(0) - phase1["duplicated"].as_u64().unwrap_or(0);
    let rate1 = if span_us > 0 {
        (pushes1 as f64 / (span_us as f64 / 1e6)).round()
    } else {
        0.0
    };
    println!(
        "[{}] sustained: {} notifications × {} users = {} pushes expected, {pushes1} received in {} (publishing took {}): {rate1} pushes/s; lost {}, duplicated {}; publish→receipt {}",
        c.label(),
        a.rounds,
        users.len(),
        phase1["expected"],
        ms(span_us),
        ms(published_us),
        phase1["lost"],
        phase1["duplicated"],
        phase1["latency_line"].as_str().unwrap_or("")
    );

    // Phase 2: one-recipient publishes at a steady rate, each to a random user.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let steady = Arc::new(Published {
        topics: Mutex::new(HashMap::new()),
        failed: AtomicU64::new(0),
        latency: Mutex::new(sub::histogram()),
    });
    let base = ps.count.load(Ordering::Relaxed);
    let total = a.rate * a.duration;
    let mut rng = StdRng::seed_from_u64(c.seed);
    let cpu0 = cpu_sample(&c.cpu_pids(), &c.watch_comm);
    let start = Instant::now();
    let mut i = 0u64;
    while i < total {
        let due = ((start.elapsed().as_secs_f64() * a.rate as f64) as u64).min(total);
        while i < due {
            let u = rng.random_range(0..users.len() as u32);
            let (pool, bearer, users, p) =
                (pool.clone(), bearer.clone(), users.clone(), steady.clone());
            let mm = m + i;
            tasks.spawn(async move {
                let mut client = pool.take().await;
                let r = publish(&mut client, &bearer, &users, &[u], mm, &p).await;
                pool.put(client);
                if let Err(e) = r {
                    eprintln!("  publish failed: {e:#}");
                    p.failed.fetch_add(1, Ordering::Relaxed);
                }
            });
            i += 1;
        }
        while tasks.try_join_next().is_some() {}
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    while tasks.join_next().await.is_some() {}
    let publish2_secs = start.elapsed().as_secs_f64();
    let want2 = base + steady.topics.lock().unwrap().len() as u64 * per_user as u64;
    wait_for(&ps, want2, Duration::from_secs(a.drain)).await;
    let cpu2 = cpu_json(&cpu0, &cpu_sample(&c.cpu_pids(), &c.watch_comm));
    let phase2 = account(&ps, &steady, per_user, &user_subs);
    println!(
        "[{}] steady {}/s for {}s: {} pushes expected, {} received; lost {}, duplicated {}; publish→receipt {}",
        c.label(),
        a.rate,
        a.duration,
        phase2["expected"],
        phase2["received"],
        phase2["lost"],
        phase2["duplicated"],
        phase2["latency_line"].as_str().unwrap_or("")
    );
    // Room for late duplicates, then the push service's own view.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let violations = ps.violations.load(Ordering::Relaxed);
    let examples = ps.received.lock().unwrap().violations.clone();
    if violations > 0 {
        println!("  push service: {violations} malformed pushes, e.g. {examples:?}");
    }
    let phase1 = account(&ps, &sustained, per_user, &user_subs);
    let phase2 = account(&ps, &steady, per_user, &user_subs);
    ps.server.abort();

    let failed = sustained.failed.load(Ordering::Relaxed) + steady.failed.load(Ordering::Relaxed);
    let clean = |p: &Value| {
        ["lost", "duplicated", "to_another_users_subscription"]
            .iter()
            .all(|k| p[k].as_u64() == Some(0))
    };
    let ok = failed == 0 && violations == 0 && clean(&phase1) && clean(&phase2);
    let mut out = c.header(
        "webpush",
        "push service",
        json!({"users": a.users, "subscriptions_per_user": per_user, "subscriptions": subs,
               "rounds": a.rounds, "rate": a.rate, "duration_s": a.duration,
               "publishers": a.publishers}),
    );
    let strip = |mut p: Value| {
        if let Some(o) = p.as_object_mut() {
            o.remove("latency_line");
        }
        p
    };
    out.insert(
        "sustained".into(),
        json!({
            "pushes_per_s": rate1,
            "publish_us": published_us,
            "publish_request_us": hist_json(&sustained.latency.lock().unwrap()),
            "delivery": strip(phase1),
            "cpu": cpu1,
        }),
    );
    out.insert(
        "steady".into(),
        json!({
            "publish_secs": (publish2_secs * 100.0).round() / 100.0,
            "publish_request_us": hist_json(&steady.latency.lock().unwrap()),
            "delivery": strip(phase2),
            "cpu": cpu2,
        }),
    );
    out.insert("failed_publishes".into(), json!(failed));
    out.insert("push_service_violations".into(), json!(violations));
    out.insert("push_service_violation_examples".into(), json!(examples));
    out.insert("ok".into(), json!(ok));
    Ok((Value::Object(out), ok))
}

#[cfg(test)]
mod tests {
    use super::b64url;

    #[test]
    fn base64url_without_padding() {
        assert_eq!(b64url(b""), "");
        assert_eq!(b64url(b"f"), "Zg");
        assert_eq!(b64url(b"fo"), "Zm8");
        assert_eq!(b64url(b"foo"), "Zm9v");
        assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(b64url(&[0u8; 16]).len(), 22);
    }
}
