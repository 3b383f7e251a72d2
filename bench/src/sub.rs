//! Subscribers: one per user, over SSE, WebSocket, long-poll or gRPC `Subscribe`, to Tidings
//! or Nchan; or MQTT clients of the broker Tidings' bridge publishes to, each subscribed to
//! many users' topics. Each user's subscriber records what it received (message ids, seq
//! order) and feeds the shared latency histogram.

use crate::net::{self, handshake, now_us, Client, Connector, Endpoint};
use crate::{Target, Transport};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use http_body_util::BodyExt;
use hyper::header::ACCEPT;
use hyper::Method;
use hyper_util::rt::TokioIo;
use proto::notifications_client::NotificationsClient;
use rumqttc::{
    AsyncClient, MqttOptions, NetworkOptions, Packet, QoS, SubscribeFilter, SubscribeReasonCode,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// The client of Tidings' gRPC contract, generated from the committed .proto (build.rs).
#[allow(clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("tidings.v1");
}

/// Where the `grpc` and `mqtt` subscribers connect (the others use `Ctx::ep`).
#[derive(Clone, Debug, Default)]
pub struct Faces {
    /// Tidings' gRPC listener.
    pub grpc: Option<Endpoint>,
    pub mqtt: Option<MqttBroker>,
}

/// The broker the MQTT bridge publishes to, and how the bench subscribes to it.
#[derive(Clone, Debug)]
pub struct MqttBroker {
    pub host: String,
    pub port: u16,
    /// TIDINGS__MQTT__TOPIC_PREFIX
    pub prefix: String,
}

impl MqttBroker {
    /// `mqtt://host:port` (no credentials, no TLS: the bench's own loopback broker).
    pub fn parse(url: &str, prefix: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("mqtt://")
            .ok_or_else(|| anyhow!("{url}: only mqtt:// URLs are supported"))?;
        let hostport = rest.split('/').next().unwrap_or_default();
        let (host, port) = hostport
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("{url}: no port"))?;
        Ok(Self {
            host: host.to_owned(),
            port: port.parse().with_context(|| format!("{url}: bad port"))?,
            prefix: prefix.to_owned(),
        })
    }

    pub fn topic(&self, user: &str) -> String {
        format!("{}/users/{user}/notifications", self.prefix)
    }
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// What every subscriber shares.
pub struct Ctx {
    pub target: Target,
    pub transport: Transport,
    pub ep: Endpoint,
    pub faces: Faces,
    pub connector: Arc<Connector>,
    pub connect_sem: Semaphore,
    pub cancel: CancellationToken,
    /// publish-to-receive, microseconds: from when the request was written
    pub latency: Mutex<Histogram<u64>>,
    /// from when the publish was due by the schedule (includes any queueing in this client)
    pub latency_sched: Mutex<Histogram<u64>>,
    pub received: AtomicU64,
    /// MQTT (at least once): copies of a seq already received, dropped uncounted elsewhere.
    pub redelivered: AtomicU64,
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
    ) -> Self {
        Self {
            target,
            transport,
            ep,
            faces: Faces::default(),
            connector,
            connect_sem: Semaphore::new(connect_concurrency.max(1)),
            cancel: CancellationToken::new(),
            latency: Mutex::new(histogram()),
            latency_sched: Mutex::new(histogram()),
            received: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
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
        }
    }

    /// Where `grpc` and `mqtt` subscribers connect.
    pub fn with_faces(self, faces: Faces) -> Self {
        Self { faces, ..self }
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
    /// MQTT: copies of an already received seq, dropped (at-least-once delivery).
    pub redelivered: u32,
}

struct State {
    res: SubResult,
    last_seq: i64,
    /// MQTT delivers at least once: a seq seen before is a redelivery, counted and dropped,
    /// as a consumer of the bridge is told to do. The other transports keep every copy, so a
    /// duplicate there counts as one.
    seen: Option<HashSet<i64>>,
}

impl State {
    fn new(idx: u32, dedup: bool) -> Self {
        Self {
            res: SubResult {
                idx,
                got: Vec::new(),
                connected: false,
                dropped: false,
                seq_gaps: 0,
                seq_back: 0,
                redelivered: 0,
            },
            last_seq: 0,
            seen: dedup.then(HashSet::new),
        }
    }

    fn on_msg(&mut self, ctx: &Ctx, payload: &str, seq: Option<i64>) {
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
        let sched = num_after(payload, "\"sched_us\":").unwrap_or(sent);
        self.record(ctx, sent, sched, m, seq);
    }

    /// One notification: `sent` and `sched` are the publisher's clock readings (µs), `m` the
    /// bench's message id.
    fn record(&mut self, ctx: &Ctx, sent: u64, sched: u64, m: u64, seq: Option<i64>) {
        let now = now_us();
        if let (Some(seen), Some(seq)) = (self.seen.as_mut(), seq) {
            if !seen.insert(seq) {
                self.res.redelivered += 1;
                ctx.redelivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let _ = ctx
            .latency
            .lock()
            .unwrap()
            .record(now.saturating_sub(sent).max(1));
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
        (Target::Tidings, Transport::Grpc | Transport::Mqtt) => String::new(),
        (Target::Nchan, _) => format!("/sub/{name}"),
    }
}

/// Runs one subscriber until `ctx.cancel`; never fails, it reports what happened instead.
pub async fn run(ctx: Arc<Ctx>, idx: u32, name: String, token: String) -> SubResult {
    let mut st = State::new(idx, false);
    let outcome = match ctx.transport {
        Transport::Sse => sse(&ctx, &mut st, &name, &token).await,
        Transport::Ws => ws(&ctx, &mut st, &name, &token).await,
        Transport::Poll => poll(&ctx, &mut st, &name, &token).await,
        Transport::Grpc => grpc(&ctx, &mut st, &token).await,
        Transport::Mqtt => Err(anyhow!("MQTT subscribers are run by run_mqtt")),
    };
    finish(&ctx, &mut st, &name, outcome);
    st.res
}

/// Runs one MQTT connection subscribed to `names`' notification topics (users `first`..)
/// until `ctx.cancel`; one result per user.
pub async fn run_mqtt(ctx: Arc<Ctx>, first: u32, names: Vec<String>) -> Vec<SubResult> {
    let mut states: Vec<State> = (0..names.len())
        .map(|i| State::new(first + i as u32, true))
        .collect();
    let outcome = mqtt(&ctx, &mut states, &names).await;
    if let Err(e) = outcome {
        let e = format!("{e:#}");
        for (st, name) in states.iter_mut().zip(&names) {
            finish(&ctx, st, name, Err(anyhow!("{e}")));
        }
    }
    states.into_iter().map(|s| s.res).collect()
}

/// Counts a subscriber that ended with an error as dropped (it had connected) or failed.
fn finish(ctx: &Ctx, st: &mut State, name: &str, outcome: Result<()>) {
    if let Err(e) = outcome {
        if st.res.connected {
            st.res.dropped = true;
            ctx.online[st.res.idx as usize].store(false, Ordering::Relaxed);
            ctx.dropped.fetch_add(1, Ordering::Relaxed);
            ctx.note_error(format!("{name}: dropped: {e:#}"));
        } else {
            ctx.failed.fetch_add(1, Ordering::Relaxed);
            ctx.note_error(format!("{name}: connect: {e:#}"));
        }
    }
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

/// A number field of a `google.protobuf.Struct` (the notification's `data`).
fn struct_u64(data: Option<&prost_types::Struct>, key: &str) -> Option<u64> {
    match data?.fields.get(key)?.kind.as_ref()? {
        // The bench's numbers are microsecond timestamps and counters, far below 2^53.
        prost_types::value::Kind::NumberValue(n) if *n >= 0.0 => Some(*n as u64),
        _ => None,
    }
}

/// One gRPC `Subscribe` stream (live only, like the SSE subscriber without Last-Event-ID) on
/// a connection of its own, as a browser or service holding one stream would have.
async fn grpc(ctx: &Ctx, st: &mut State, token: &str) -> Result<()> {
    use proto::event::Event as Ev;
    let Some(ep) = ctx.faces.grpc.clone() else {
        bail!("--transport grpc needs --grpc-url");
    };
    let (_client, mut stream) = {
        let _permit = ctx.connect_sem.acquire().await?;
        let connector = ctx.connector.clone();
        let addr = ep.addr;
        // Through our Connector, so that thousands of streams spread over loopback sources.
        let connect = tower::service_fn(move |_: tonic::transport::Uri| {
            let connector = connector.clone();
            async move {
                connector
                    .connect(addr)
                    .await
                    .map(TokioIo::new)
                    .map_err(|e| std::io::Error::other(format!("{e:#}")))
            }
        });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", ep.host))?
            .connect_timeout(Duration::from_secs(30))
            .connect_with_connector(connect)
            .await?;
        let mut client = NotificationsClient::new(channel);
        let mut req = tonic::Request::new(proto::SubscribeRequest { after: None });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let resp = tokio::time::timeout(Duration::from_secs(30), client.subscribe(req))
            .await
            .map_err(|_| anyhow!("no response head in 30s"))?
            .map_err(|s| anyhow!("Subscribe: {s}"))?;
        (client, resp.into_inner())
    };
    connected(ctx, st);
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(()),
            ev = stream.message() => match ev {
                Ok(Some(proto::Event { event: Some(Ev::Notification(n)) })) => {
                    let data = n.data.as_ref();
                    match (struct_u64(data, "sent_us"), struct_u64(data, "bench_m")) {
                        (Some(sent), Some(m)) => {
                            let sched = struct_u64(data, "sched_us").unwrap_or(sent);
                            st.record(ctx, sent, sched, m, Some(n.seq));
                        }
                        _ => ctx.note_error(format!("notification without bench data: {n:?}")),
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => bail!("the server ended the stream"),
                Err(status) => bail!("stream error: {status}"),
            },
        }
    }
}

/// One MQTT connection (clean session, QoS 1) subscribed to the notification topics of
/// `states`' users with one SUBSCRIBE; the users count as connected at its SUBACK.
async fn mqtt(ctx: &Ctx, states: &mut [State], names: &[String]) -> Result<()> {
    let Some(broker) = ctx.faces.mqtt.clone() else {
        bail!("--transport mqtt needs --mqtt-url");
    };
    let topics: HashMap<String, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (broker.topic(n), i))
        .collect();
    let id = format!("{}-sub", names.first().map_or("bench", String::as_str));
    let mut options = MqttOptions::new(id, broker.host.clone(), broker.port);
    options
        .set_clean_session(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(options, 16);
    // PUBACKs at once, as the broker's in-flight window for this client waits on them.
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    events.set_network_options(network);
    {
        let _permit = ctx.connect_sem.acquire().await?;
        let subscribed =
            async {
                loop {
                    match events.poll().await? {
                        rumqttc::Event::Incoming(Packet::ConnAck(_)) => client.try_subscribe_many(
                            topics
                                .keys()
                                .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce)),
                        )?,
                        rumqttc::Event::Incoming(Packet::SubAck(ack)) => {
                            if let Some(bad) = ack.return_codes.iter().find(|c| {
                                !matches!(c, SubscribeReasonCode::Success(QoS::AtLeastOnce))
                            }) {
                                bail!("SUBACK refused a topic or lowered its QoS: {bad:?}");
                            }
                            return Ok(());
                        }
                        _ => {}
                    }
                }
            };
        tokio::time::timeout(Duration::from_secs(30), subscribed)
            .await
            .map_err(|_| anyhow!("no SUBACK in 30s"))??;
    }
    for st in states.iter_mut() {
        connected(ctx, st);
    }
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => {
                let _ = client.try_disconnect();
                return Ok(());
            }
            ev = events.poll() => match ev {
                Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => {
                    let Some(&i) = topics.get(p.topic.as_str()) else {
                        continue;
                    };
                    let Ok(text) = std::str::from_utf8(&p.payload) else {
                        ctx.note_error(format!("{}: payload is not UTF-8", p.topic));
                        continue;
                    };
                    let seq = num_after(text, "\"seq\":").map(|s| s as i64);
                    states[i].on_msg(ctx, text, seq);
                }
                Ok(_) => {}
                Err(e) => bail!("MQTT connection: {e}"),
            },
        }
    }
}
