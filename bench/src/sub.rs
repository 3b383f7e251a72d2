//! Subscribers: one per user, over SSE, WebSocket or long-poll, to Tidings or Nchan. Each
//! records what it received (message ids, seq order) and feeds the shared latency histogram.

use crate::net::{self, handshake, now_us, Client, Connector, Endpoint};
use crate::{Target, Transport};
use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use http_body_util::BodyExt;
use hyper::header::ACCEPT;
use hyper::Method;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// What every subscriber shares.
pub struct Ctx {
    pub target: Target,
    pub transport: Transport,
    pub ep: Endpoint,
    pub connector: Arc<Connector>,
    pub connect_sem: Semaphore,
    pub cancel: CancellationToken,
    /// publish-to-receive, microseconds: from when the request was written
    pub latency: Mutex<Histogram<u64>>,
    /// from when the publish was due by the schedule (includes any queueing in this client)
    pub latency_sched: Mutex<Histogram<u64>>,
    pub received: AtomicU64,
    pub connected: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
    /// Long-poll answers other than a result or a timeout (e.g. 503), each retried.
    pub poll_errors: AtomicU64,
    pub first_recv_us: AtomicU64,
    pub last_recv_us: AtomicU64,
    /// Fan-out: per round (message id), the last arrival time and the number of arrivals.
    pub round_last_us: Vec<AtomicU64>,
    pub round_count: Vec<AtomicU64>,
    /// Per user: connected and not dropped.
    pub online: Vec<AtomicBool>,
    pub errors: Mutex<Vec<String>>,
}

impl Ctx {
    pub fn new(
        target: Target,
        transport: Transport,
        ep: Endpoint,
        connector: Arc<Connector>,
        connect_concurrency: usize,
        rounds: usize,
        users: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            target,
            transport,
            ep,
            connector,
            connect_sem: Semaphore::new(connect_concurrency.max(1)),
            cancel: CancellationToken::new(),
            latency: Mutex::new(histogram()),
            latency_sched: Mutex::new(histogram()),
            received: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            poll_errors: AtomicU64::new(0),
            first_recv_us: AtomicU64::new(u64::MAX),
            last_recv_us: AtomicU64::new(0),
            round_last_us: (0..rounds).map(|_| AtomicU64::new(0)).collect(),
            round_count: (0..rounds).map(|_| AtomicU64::new(0)).collect(),
            online: (0..users).map(|_| AtomicBool::new(false)).collect(),
            errors: Mutex::new(Vec::new()),
        })
    }

    pub fn note_error(&self, what: String) {
        let mut e = self.errors.lock().unwrap();
        if e.len() < 20 {
            e.push(what);
        }
    }
}

/// What one subscriber saw, returned when it stops.
pub struct SubResult {
    pub idx: u32,
    pub got: Vec<u64>,
    pub connected: bool,
    pub dropped: bool,
    /// Tidings: a seq that skipped ahead (a hole) or went back (a duplicate or reorder).
    pub seq_gaps: u32,
    pub seq_back: u32,
}

struct State {
    res: SubResult,
    last_seq: i64,
}

impl State {
    fn on_msg(&mut self, ctx: &Ctx, payload: &str, seq: Option<i64>) {
        let now = now_us();
        let (Some(sent), Some(m)) = (
            num_after(payload, "\"sent_us\":"),
            num_after(payload, "\"bench_m\":"),
        ) else {
            ctx.note_error(format!(
                "unparsable message: {}",
                &payload[..payload.len().min(200)]
            ));
            return;
        };
        let _ = ctx
            .latency
            .lock()
            .unwrap()
            .record(now.saturating_sub(sent).max(1));
        let sched = num_after(payload, "\"sched_us\":").unwrap_or(sent);
        let _ = ctx
            .latency_sched
            .lock()
            .unwrap()
            .record(now.saturating_sub(sched).max(1));
        ctx.received.fetch_add(1, Ordering::Relaxed);
        ctx.first_recv_us.fetch_min(now, Ordering::Relaxed);
        ctx.last_recv_us.fetch_max(now, Ordering::Relaxed);
        if let Some(r) = ctx.round_last_us.get(m as usize) {
            r.fetch_max(now, Ordering::Relaxed);
            ctx.round_count[m as usize].fetch_add(1, Ordering::Relaxed);
        }
        self.res.got.push(m);
        if let Some(seq) = seq {
            if seq > self.last_seq + 1 {
                self.res.seq_gaps += 1;
            } else if seq <= self.last_seq {
                self.res.seq_back += 1;
            }
            self.last_seq = self.last_seq.max(seq);
        }
    }
}

/// The first unsigned number after `key` in `s`.
pub fn num_after(s: &str, key: &str) -> Option<u64> {
    let i = s.find(key)? + key.len();
    let digits: &str = {
        let rest = s[i..].trim_start();
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        &rest[..end]
    };
    digits.parse().ok()
}

/// A minimal `text/event-stream` parser: dispatches (event, id, data) at each blank line.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: String,
    id: String,
    data: String,
}

impl SseParser {
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(&str, &str, &str)) {
        self.buf.extend_from_slice(chunk);
        let buf = std::mem::take(&mut self.buf);
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
            let mut line = &buf[start..start + pos];
            start += pos + 1;
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.is_empty() {
                if !self.data.is_empty() || !self.event.is_empty() {
                    on_event(&self.event, &self.id, &self.data);
                }
                self.event.clear();
                self.data.clear();
                self.id.clear();
                continue;
            }
            if line[0] == b':' {
                continue;
            }
            let line = String::from_utf8_lossy(line);
            let (field, value) = match line.find(':') {
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(' ').unwrap_or(v))
                }
                None => (&line[..], ""),
            };
            match field {
                "event" => value.clone_into(&mut self.event),
                "id" => value.clone_into(&mut self.id),
                "data" => {
                    if !self.data.is_empty() {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                }
                _ => {}
            }
        }
        self.buf = buf;
        self.buf.drain(..start);
    }
}

fn sub_path(ctx: &Ctx, name: &str, token: &str) -> String {
    match (ctx.target, ctx.transport) {
        (Target::Tidings, Transport::Sse) => {
            format!("/v1/notifications/stream?access_token={token}")
        }
        (Target::Tidings, Transport::Ws) => format!("/v1/ws?access_token={token}"),
        (Target::Tidings, Transport::Poll) => "/v1/notifications/poll".into(),
        (Target::Nchan, _) => format!("/sub/{name}"),
    }
}

/// Runs one subscriber until `ctx.cancel`; never fails, it reports what happened instead.
pub async fn run(ctx: Arc<Ctx>, idx: u32, name: String, token: String) -> SubResult {
    let mut st = State {
        res: SubResult {
            idx,
            got: Vec::new(),
            connected: false,
            dropped: false,
            seq_gaps: 0,
            seq_back: 0,
        },
        last_seq: 0,
    };
    let outcome = match ctx.transport {
        Transport::Sse => sse(&ctx, &mut st, &name, &token).await,
        Transport::Ws => ws(&ctx, &mut st, &name, &token).await,
        Transport::Poll => poll(&ctx, &mut st, &name, &token).await,
    };
    if let Err(e) = outcome {
        if st.res.connected {
            st.res.dropped = true;
            ctx.online[idx as usize].store(false, Ordering::Relaxed);
            ctx.dropped.fetch_add(1, Ordering::Relaxed);
            ctx.note_error(format!("{name}: dropped: {e:#}"));
        } else {
            ctx.failed.fetch_add(1, Ordering::Relaxed);
            ctx.note_error(format!("{name}: connect: {e:#}"));
        }
    }
    st.res
}

fn connected(ctx: &Ctx, st: &mut State) {
    st.res.connected = true;
    ctx.online[st.res.idx as usize].store(true, Ordering::Relaxed);
    ctx.connected.fetch_add(1, Ordering::Relaxed);
}

async fn sse(ctx: &Ctx, st: &mut State, name: &str, token: &str) -> Result<()> {
    let (_sender, mut body) = {
        let _permit = ctx.connect_sem.acquire().await?;
        let stream = ctx.connector.connect(ctx.ep.addr).await?;
        let mut sender = handshake(stream).await?;
        let req = net::request(
            Method::GET,
            &ctx.ep.host,
            &sub_path(ctx, name, token),
            &[(ACCEPT.as_str(), "text/event-stream")],
            Bytes::new(),
        )?;
        let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
            .await
            .map_err(|_| anyhow!("no response head in 30s"))??;
        if resp.status() != 200 {
            let status = resp.status();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
            bail!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body.unwrap_or_default())
            );
        }
        (sender, resp.into_body())
    };
    connected(ctx, st);
    let tidings = ctx.target == Target::Tidings;
    let mut parser = SseParser::default();
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(()),
            frame = body.frame() => match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        parser.feed(&data, |event, id, data| {
                            if tidings {
                                if event == "notification" {
                                    st.on_msg(ctx, data, id.parse().ok());
                                }
                            } else if event.is_empty() || event == "message" {
                                st.on_msg(ctx, data, None);
                            }
                        });
                    }
                }
                Some(Err(e)) => bail!("stream error: {e}"),
                None => bail!("the server ended the stream"),
            },
        }
    }
}

async fn ws(ctx: &Ctx, st: &mut State, name: &str, token: &str) -> Result<()> {
    let mut socket = {
        let _permit = ctx.connect_sem.acquire().await?;
        let stream = ctx.connector.connect(ctx.ep.addr).await?;
        let url = format!("ws://{}{}", ctx.ep.host, sub_path(ctx, name, token));
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (socket, _) = tokio::time::timeout(
            Duration::from_secs(30),
            tokio_tungstenite::client_async_with_config(url, stream, Some(config)),
        )
        .await
        .map_err(|_| anyhow!("no handshake answer in 30s"))??;
        socket
    };
    connected(ctx, st);
    let tidings = ctx.target == Target::Tidings;
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(()),
            msg = socket.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let text = text.as_str();
                    if tidings {
                        if text.starts_with("{\"type\":\"notification\"") {
                            let seq = num_after(text, "\"seq\":").map(|s| s as i64);
                            st.on_msg(ctx, text, seq);
                        }
                    } else {
                        st.on_msg(ctx, text, None);
                    }
                }
                Some(Ok(Message::Close(frame))) => bail!("closed by the server: {frame:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("socket error: {e}"),
                None => bail!("socket ended"),
            },
        }
    }
}

async fn poll(ctx: &Ctx, st: &mut State, name: &str, token: &str) -> Result<()> {
    let mut client = Client::new(
        ctx.ep.clone(),
        ctx.connector.clone(),
        Duration::from_secs(60),
    );
    {
        let _permit = ctx.connect_sem.acquire().await?;
        client.warm().await?;
    }
    connected(ctx, st);
    let bearer = format!("Bearer {token}");
    let mut after: i64 = 0;
    // Nchan: Last-Modified + Etag of the previous message, sent back to get the next one.
    let mut nchan_cursor: Option<(String, String)> = None;
    let mut consecutive_errors = 0;
    loop {
        let req = match ctx.target {
            Target::Tidings => net::request(
                Method::GET,
                client.host(),
                &format!("/v1/notifications/poll?after={after}&timeout=30"),
                &[("authorization", &bearer)],
                Bytes::new(),
            )?,
            Target::Nchan => {
                let mut h: Vec<(&str, &str)> = Vec::new();
                if let Some((lm, etag)) = &nchan_cursor {
                    h.push(("if-modified-since", lm));
                    h.push(("if-none-match", etag));
                }
                net::request(
                    Method::GET,
                    client.host(),
                    &format!("/sub/{name}"),
                    &h,
                    Bytes::new(),
                )?
            }
        };
        let reply = tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(()),
            r = client.send(req) => r,
        };
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                consecutive_errors += 1;
                if consecutive_errors > 3 {
                    return Err(e);
                }
                ctx.note_error(format!("{name}: poll: {e:#}"));
                continue;
            }
        };
        consecutive_errors = 0;
        match (ctx.target, reply.status.as_u16()) {
            (_, 204) | (Target::Nchan, 304) | (Target::Nchan, 408) => {}
            (Target::Tidings, 200) => {
                let v: serde_json::Value = serde_json::from_slice(&reply.body)?;
                for n in v["notifications"].as_array().into_iter().flatten() {
                    let seq = n["seq"].as_i64();
                    after = after.max(seq.unwrap_or(after));
                    st.on_msg(ctx, &n["data"].to_string(), seq);
                }
            }
            (Target::Nchan, 200) => {
                let h = |k: &str| {
                    reply
                        .headers
                        .get(k)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                nchan_cursor = Some((h("last-modified"), h("etag")));
                st.on_msg(ctx, &String::from_utf8_lossy(&reply.body), None);
            }
            (_, status) => {
                ctx.poll_errors.fetch_add(1, Ordering::Relaxed);
                ctx.note_error(format!("{name}: poll: HTTP {status}"));
                // Honour Retry-After, as a browser client would, plus jitter so that
                // thousands of pollers do not come back in the same millisecond.
                let retry_after = reply
                    .headers
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map_or(200, |s| s.min(10) * 1000);
                let jitter = rand::random_range(0..500);
                tokio::time::sleep(Duration::from_millis(retry_after + jitter)).await;
            }
        }
    }
}
