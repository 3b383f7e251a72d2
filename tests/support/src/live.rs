//! Real clients for the live transports, shared by the API suite (`tests/api/live.rs`) and the
//! cluster suite (`tests/cluster`): an SSE client (reqwest + eventsource-stream, the parsing a
//! browser's EventSource does), a WebSocket client (tokio-tungstenite), a long-poll call, a
//! publisher that keeps publishing while the test breaks things, and the [`Collector`]: a client
//! that keeps a cursor across reconnects and records every `seq` it was sent, so a test can
//! assert "1..=N, each exactly once, in order".
//!
//! Every wait has a timeout: a broken server fails a test, it never hangs it.

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::{SinkExt, Stream, StreamExt};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use std::collections::{BTreeSet, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for any one thing (an event, a response) before it fails. Every
/// wait is for a condition, so this costs nothing when things work; it is generous so that a
/// loaded machine (a CI runner, a fresh clone building while testing) cannot fail a test.
pub const WAIT: Duration = Duration::from_secs(30);

/// How a client presents its token.
#[derive(Clone, Debug, Default)]
pub enum Auth {
    #[default]
    None,
    /// `?access_token=` (what a browser's EventSource and WebSocket must use).
    Query(String),
    /// `Authorization: Bearer`.
    Bearer(String),
}

/// The server refused the stream before it started (a status other than 200/101).
#[derive(Debug, Clone)]
pub struct Refused {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

#[derive(Debug, Clone)]
pub enum ConnectError {
    Refused(Refused),
    /// No connection, no answer in time, or a broken handshake.
    Failed(String),
}

impl ConnectError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ConnectError::Refused(r) => Some(r.status),
            ConnectError::Failed(_) => None,
        }
    }

    /// The refusal, or a panic naming what happened instead.
    pub fn refused(self) -> Refused {
        match self {
            ConnectError::Refused(r) => r,
            ConnectError::Failed(e) => {
                panic!("expected an HTTP refusal, the connection failed: {e}")
            }
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused(r) => write!(f, "refused with {}: {}", r.status, r.body),
            ConnectError::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `base` + `path` + the query parameters, encoded.
pub fn url_with(base: &str, path: &str, params: &[(&str, String)]) -> String {
    let mut url = format!("{base}{path}");
    let mut sep = if path.contains('?') { '&' } else { '?' };
    for (key, value) in params {
        url.push(sep);
        url.push_str(key);
        url.push('=');
        url.push_str(&percent_encode(value));
        sep = '&';
    }
    url
}

// ---------------------------------------------------------------------------------------------
// SSE
// ---------------------------------------------------------------------------------------------

/// One SSE event as the contract names them.
#[derive(Debug, Clone, PartialEq)]
pub enum SseEvent {
    /// `event: notification`; `id` is the event's last-event-id (`id:` of the frame).
    Notification {
        seq: i64,
        id: Option<i64>,
        json: Value,
    },
    /// `event: unread`; `id` is the last-event-id in force when it arrived.
    Unread {
        unread: i64,
        seq: i64,
        id: Option<i64>,
    },
    Resync {
        seq: i64,
    },
    TokenExpired,
    /// Anything else that carries data (unknown event names, malformed data).
    Other {
        event: String,
        data: String,
        id: String,
    },
    /// The server ended the response cleanly.
    End,
    /// The connection broke (reset, truncated chunk, bad UTF-8…).
    Error(String),
}

/// Parses an event the way the contract defines them.
pub fn parse_sse(ev: &Event) -> SseEvent {
    let id = ev.id.trim().parse::<i64>().ok();
    let data: Option<Value> = serde_json::from_str(&ev.data).ok();
    let other = || SseEvent::Other {
        event: ev.event.clone(),
        data: ev.data.clone(),
        id: ev.id.clone(),
    };
    match ev.event.as_str() {
        "notification" => match data {
            Some(json) if json["seq"].is_i64() => SseEvent::Notification {
                seq: json["seq"].as_i64().unwrap_or_default(),
                id,
                json,
            },
            _ => other(),
        },
        "unread" => match data {
            Some(d) if d["unread"].is_i64() && d["seq"].is_i64() => SseEvent::Unread {
                unread: d["unread"].as_i64().unwrap_or_default(),
                seq: d["seq"].as_i64().unwrap_or_default(),
                id,
            },
            _ => other(),
        },
        "resync" => match data {
            Some(d) if d["seq"].is_i64() => SseEvent::Resync {
                seq: d["seq"].as_i64().unwrap_or_default(),
            },
            _ => other(),
        },
        "token-expired" => SseEvent::TokenExpired,
        _ => other(),
    }
}

type SseStream =
    Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<reqwest::Error>>> + Send>>;

#[derive(Debug, Clone, Default)]
pub struct SseOptions {
    /// `?after=`; `None` leaves it out ("only what is new").
    pub after: Option<i64>,
    /// The `Last-Event-ID` header, as EventSource sends it on a reconnect.
    pub last_event_id: Option<String>,
    pub auth: Auth,
    /// Any other request headers.
    pub headers: Vec<(String, String)>,
}

impl SseOptions {
    pub fn new(auth: Auth, after: Option<i64>) -> Self {
        Self {
            after,
            auth,
            ..Self::default()
        }
    }
}

/// An open SSE stream. Tracks the last event id the way EventSource does.
pub struct SseClient {
    pub status: u16,
    pub headers: HeaderMap,
    /// The last non-empty `id:` seen (initially the `Last-Event-ID` it was opened with).
    pub last_event_id: Option<String>,
    /// The `after` it was opened with (EventSource reconnects to the same URL).
    pub after: Option<i64>,
    auth: Auth,
    events: SseStream,
    ended: bool,
}

impl SseClient {
    /// Opens `GET /v1/notifications/stream`. Anything but a 200 is a [`ConnectError::Refused`].
    pub async fn connect(
        client: &reqwest::Client,
        base: &str,
        opts: &SseOptions,
    ) -> Result<SseClient, ConnectError> {
        let mut params = Vec::new();
        if let Some(after) = opts.after {
            params.push(("after", after.to_string()));
        }
        if let Auth::Query(token) = &opts.auth {
            params.push(("access_token", token.clone()));
        }
        let url = url_with(base, "/v1/notifications/stream", &params);
        let mut req = client
            .get(&url)
            .header("Accept", "text/event-stream")
            .header("Cache-Control", "no-cache");
        if let Auth::Bearer(token) = &opts.auth {
            req = req.bearer_auth(token);
        }
        if let Some(id) = &opts.last_event_id {
            req = req.header("Last-Event-ID", id.as_str());
        }
        for (name, value) in &opts.headers {
            req = req.header(name.as_str(), value.as_str());
        }
        let resp = match timeout(WAIT, req.send()).await {
            Err(_) => {
                return Err(ConnectError::Failed(format!(
                    "GET {url}: no response headers within {WAIT:?}"
                )))
            }
            Ok(Err(e)) => return Err(ConnectError::Failed(format!("GET {url}: {e}"))),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        if status != 200 {
            let body = match timeout(WAIT, resp.text()).await {
                Ok(Ok(body)) => body,
                _ => String::new(),
            };
            return Err(ConnectError::Refused(Refused {
                status,
                headers,
                body,
            }));
        }
        Ok(SseClient {
            status,
            headers,
            last_event_id: opts.last_event_id.clone(),
            after: opts.after,
            auth: opts.auth.clone(),
            events: Box::pin(resp.bytes_stream().eventsource()),
            ended: false,
        })
    }

    /// Opens a stream with the token in the query (as a browser does), or panics.
    pub async fn open(base: &str, token: &str, after: Option<i64>) -> SseClient {
        let opts = SseOptions::new(Auth::Query(token.to_owned()), after);
        SseClient::connect(&reqwest::Client::new(), base, &opts)
            .await
            .unwrap_or_else(|e| panic!("could not open the SSE stream on {base}: {e}"))
    }

    /// Reconnects like EventSource: the same `after`, plus `Last-Event-ID` when it has one.
    /// `token` replaces the old one (after a `token-expired`).
    pub async fn reconnect(&self, base: &str, token: Option<&str>) -> SseClient {
        let auth = match (token, &self.auth) {
            (Some(t), Auth::Bearer(_)) => Auth::Bearer(t.to_owned()),
            (Some(t), _) => Auth::Query(t.to_owned()),
            (None, auth) => auth.clone(),
        };
        let opts = SseOptions {
            after: self.after,
            last_event_id: self.last_event_id.clone(),
            auth,
            headers: Vec::new(),
        };
        SseClient::connect(&reqwest::Client::new(), base, &opts)
            .await
            .unwrap_or_else(|e| panic!("could not reopen the SSE stream on {base}: {e}"))
    }

    /// The next event, or `None` when nothing arrives `within`.
    pub async fn next_within(&mut self, within: Duration) -> Option<SseEvent> {
        if self.ended {
            return Some(SseEvent::End);
        }
        match timeout(within, self.events.next()).await {
            Err(_) => None,
            Ok(None) => {
                self.ended = true;
                Some(SseEvent::End)
            }
            Ok(Some(Err(e))) => {
                self.ended = true;
                Some(SseEvent::Error(e.to_string()))
            }
            Ok(Some(Ok(ev))) => {
                if !ev.id.is_empty() {
                    self.last_event_id = Some(ev.id.clone());
                }
                Some(parse_sse(&ev))
            }
        }
    }

    /// The next event; panics when none arrives within [`WAIT`].
    pub async fn next(&mut self) -> SseEvent {
        self.next_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("no SSE event within {WAIT:?}"))
    }

    /// The next notification, skipping `unread` events; panics on anything else.
    pub async fn next_notification(&mut self) -> (i64, Value) {
        loop {
            match self.next().await {
                SseEvent::Notification { seq, id, json } => {
                    assert_eq!(id, Some(seq), "a notification's SSE id is its seq: {json}");
                    return (seq, json);
                }
                SseEvent::Unread { .. } | SseEvent::Other { .. } => continue,
                other => panic!("expected an SSE notification, got {other:?}"),
            }
        }
    }

    /// The seqs of the next `n` notifications, skipping `unread` events.
    pub async fn next_seqs(&mut self, n: usize) -> Vec<i64> {
        let mut seqs = Vec::with_capacity(n);
        for _ in 0..n {
            seqs.push(self.next_notification().await.0);
        }
        seqs
    }

    /// Skips `unread` events until one says `unread`; returns its `(seq, id)`. Panics on a
    /// notification or the end of the stream.
    pub async fn wait_unread(&mut self, unread: i64) -> (i64, Option<i64>) {
        loop {
            match self.next().await {
                SseEvent::Unread {
                    unread: u, seq, id, ..
                } if u == unread => return (seq, id),
                SseEvent::Unread { .. } | SseEvent::Other { .. } => continue,
                other => panic!("waiting for an SSE unread event of {unread}, got {other:?}"),
            }
        }
    }

    /// Reads until the stream ends; returns what came on the way and how it ended
    /// ([`SseEvent::End`] or [`SseEvent::Error`]). Panics if it does not end `within`.
    pub async fn until_end(&mut self, within: Duration) -> (Vec<SseEvent>, SseEvent) {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left).await {
                None => panic!(
                    "the SSE stream did not end within {within:?}; last events: {:?}",
                    seen.iter().rev().take(5).collect::<Vec<_>>()
                ),
                Some(end @ (SseEvent::End | SseEvent::Error(_))) => return (seen, end),
                Some(ev) => seen.push(ev),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------------

pub type WsStream = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// One server frame as the contract names them.
#[derive(Debug, Clone, PartialEq)]
pub enum WsFrame {
    Notification {
        seq: i64,
        json: Value,
    },
    Unread {
        unread: i64,
        seq: i64,
    },
    Resync {
        seq: i64,
    },
    Pong,
    Other(Value),
    /// A close frame, with its code.
    Closed(Option<u16>),
    /// The connection ended without (further) frames.
    End,
    Error(String),
}

pub fn parse_ws(text: &str) -> WsFrame {
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => return WsFrame::Other(json!({ "unparsable": text })),
    };
    match v["type"].as_str() {
        Some("notification") if v["notification"]["seq"].is_i64() => WsFrame::Notification {
            seq: v["notification"]["seq"].as_i64().unwrap_or_default(),
            json: v["notification"].clone(),
        },
        Some("unread") if v["unread"].is_i64() && v["seq"].is_i64() => WsFrame::Unread {
            unread: v["unread"].as_i64().unwrap_or_default(),
            seq: v["seq"].as_i64().unwrap_or_default(),
        },
        Some("resync") if v["seq"].is_i64() => WsFrame::Resync {
            seq: v["seq"].as_i64().unwrap_or_default(),
        },
        Some("pong") => WsFrame::Pong,
        _ => WsFrame::Other(v),
    }
}

#[derive(Debug, Clone, Default)]
pub struct WsOptions {
    pub after: Option<i64>,
    pub auth: Auth,
    /// The `Origin` header; `None` sends none (a non-browser client).
    pub origin: Option<String>,
}

impl WsOptions {
    pub fn new(auth: Auth, after: Option<i64>) -> Self {
        Self {
            after,
            auth,
            origin: None,
        }
    }
}

pub struct WsClient {
    ws: WsStream,
    done: bool,
}

impl WsClient {
    /// Opens `GET /v1/ws`. A refused upgrade is a [`ConnectError::Refused`] with its status.
    pub async fn connect(base: &str, opts: &WsOptions) -> Result<WsClient, ConnectError> {
        let ws_base = base
            .replacen("http://", "ws://", 1)
            .replacen("https://", "wss://", 1);
        let mut params = Vec::new();
        if let Some(after) = opts.after {
            params.push(("after", after.to_string()));
        }
        if let Auth::Query(token) = &opts.auth {
            params.push(("access_token", token.clone()));
        }
        let url = url_with(&ws_base, "/v1/ws", &params);
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| ConnectError::Failed(format!("{url}: {e}")))?;
        if let Auth::Bearer(token) = &opts.auth {
            req.headers_mut().insert(
                "Authorization",
                HeaderValue::from_str(&format!("Bearer {token}")).expect("header value"),
            );
        }
        if let Some(origin) = &opts.origin {
            req.headers_mut().insert(
                "Origin",
                HeaderValue::from_str(origin).expect("header value"),
            );
        }
        match timeout(WAIT, tokio_tungstenite::connect_async(req)).await {
            Err(_) => Err(ConnectError::Failed(format!(
                "{url}: no handshake within {WAIT:?}"
            ))),
            Ok(Err(WsError::Http(resp))) => Err(ConnectError::Refused(Refused {
                status: resp.status().as_u16(),
                headers: resp.headers().clone(),
                body: resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
            })),
            Ok(Err(e)) => Err(ConnectError::Failed(format!("{url}: {e}"))),
            Ok(Ok((ws, _))) => Ok(WsClient { ws, done: false }),
        }
    }

    /// Opens a socket with the token in the query, or panics.
    pub async fn open(base: &str, token: &str, after: Option<i64>) -> WsClient {
        WsClient::connect(base, &WsOptions::new(Auth::Query(token.to_owned()), after))
            .await
            .unwrap_or_else(|e| panic!("could not open the WebSocket on {base}: {e}"))
    }

    pub async fn send_json(&mut self, value: &Value) {
        timeout(WAIT, self.ws.send(Message::text(value.to_string())))
            .await
            .expect("the WebSocket send did not finish in time")
            .expect("WebSocket send");
    }

    pub async fn send_read_ids(&mut self, ids: &[Value]) {
        self.send_json(&json!({"type": "read", "ids": ids})).await;
    }

    pub async fn send_read_up_to(&mut self, seq: i64) {
        self.send_json(&json!({"type": "read", "up_to": seq})).await;
    }

    pub async fn close(mut self) {
        let _ = timeout(Duration::from_secs(5), self.ws.close(None)).await;
    }

    /// The next frame (control frames are handled and skipped), or `None` after `within`.
    pub async fn next_within(&mut self, within: Duration) -> Option<WsFrame> {
        if self.done {
            return Some(WsFrame::End);
        }
        let deadline = Instant::now() + within;
        loop {
            let msg = match timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(msg) => msg,
            };
            return Some(match msg {
                None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    self.done = true;
                    WsFrame::End
                }
                Some(Err(e)) => {
                    self.done = true;
                    WsFrame::Error(e.to_string())
                }
                Some(Ok(Message::Text(text))) => parse_ws(text.as_str()),
                Some(Ok(Message::Binary(bytes))) => {
                    WsFrame::Other(json!({ "binary_len": bytes.len() }))
                }
                Some(Ok(Message::Close(frame))) => {
                    self.done = true;
                    WsFrame::Closed(frame.map(|f| u16::from(f.code)))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            });
        }
    }

    /// The next frame; panics when none arrives within [`WAIT`].
    pub async fn next(&mut self) -> WsFrame {
        self.next_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("no WebSocket frame within {WAIT:?}"))
    }

    /// The next notification, skipping `unread` frames; panics on anything else.
    pub async fn next_notification(&mut self) -> (i64, Value) {
        loop {
            match self.next().await {
                WsFrame::Notification { seq, json } => return (seq, json),
                WsFrame::Unread { .. } | WsFrame::Other(_) | WsFrame::Pong => continue,
                other => panic!("expected a WebSocket notification, got {other:?}"),
            }
        }
    }

    pub async fn next_seqs(&mut self, n: usize) -> Vec<i64> {
        let mut seqs = Vec::with_capacity(n);
        for _ in 0..n {
            seqs.push(self.next_notification().await.0);
        }
        seqs
    }

    /// Skips `unread` frames until one says `unread`; returns its `seq`.
    pub async fn wait_unread(&mut self, unread: i64) -> i64 {
        loop {
            match self.next().await {
                WsFrame::Unread { unread: u, seq } if u == unread => return seq,
                WsFrame::Unread { .. } | WsFrame::Other(_) | WsFrame::Pong => continue,
                other => panic!("waiting for a WebSocket unread frame of {unread}, got {other:?}"),
            }
        }
    }

    /// [`Self::until_close`], except that the client's own write failing (`Broken pipe`,
    /// `Connection reset`) counts as the server having closed, with no code: the client's
    /// automatic Pong or Close reply races the server's close of the TCP connection, and
    /// tungstenite reports the failed write before the close frame already in its buffer.
    /// `Err` carries that write error, for the caller to accept or not.
    pub async fn until_close_or_reset(&mut self, within: Duration) -> Result<Option<u16>, String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left).await {
                None => panic!("the WebSocket was not closed within {within:?}"),
                Some(WsFrame::Closed(code)) => return Ok(code),
                Some(WsFrame::End) => return Ok(None),
                Some(WsFrame::Error(e)) if e.contains("Broken pipe") || e.contains("reset") => {
                    return Err(e)
                }
                Some(WsFrame::Error(e)) => panic!("the WebSocket broke without a close frame: {e}"),
                Some(_) => {}
            }
        }
    }

    /// Skips frames until the server closes; returns the close code (`None`: no close frame or
    /// no code) and the frames skipped.
    pub async fn until_close(&mut self, within: Duration) -> (Vec<WsFrame>, Option<u16>) {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left).await {
                None => panic!(
                    "the WebSocket was not closed within {within:?}; last frames: {:?}",
                    seen.iter().rev().take(5).collect::<Vec<_>>()
                ),
                Some(WsFrame::Closed(code)) => return (seen, code),
                Some(WsFrame::End) => return (seen, None),
                Some(WsFrame::Error(e)) => panic!("the WebSocket broke without a close frame: {e}"),
                Some(frame) => seen.push(frame),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Long-poll, REST, metrics
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub enum PollAnswer {
    Batch {
        notifications: Vec<Value>,
        unread: i64,
        seq: i64,
        /// The `changed` events the poll saw (archive, unarchive, delete), oldest first.
        changes: Vec<Value>,
    },
    NoContent,
    Refused(Refused),
}

impl PollAnswer {
    /// The seqs of a 200 answer; panics on anything else.
    pub fn seqs(&self) -> Vec<i64> {
        match self {
            PollAnswer::Batch { notifications, .. } => notifications
                .iter()
                .map(|n| n["seq"].as_i64().expect("seq"))
                .collect(),
            other => panic!("expected a 200 poll answer, got {other:?}"),
        }
    }

    /// `(unread, seq)` of a 200 answer; panics on anything else.
    pub fn counts(&self) -> (i64, i64) {
        match self {
            PollAnswer::Batch { unread, seq, .. } => (*unread, *seq),
            other => panic!("expected a 200 poll answer, got {other:?}"),
        }
    }
}

/// One `GET /v1/notifications/poll` with a Bearer token. `timeout_secs` is sent as `timeout=`
/// when given; the call itself gives up 15 seconds after the server should have answered.
pub async fn long_poll(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    after: Option<i64>,
    unread: Option<i64>,
    timeout_secs: Option<u64>,
) -> Result<PollAnswer, String> {
    let mut params = Vec::new();
    if let Some(after) = after {
        params.push(("after", after.to_string()));
    }
    if let Some(unread) = unread {
        params.push(("unread", unread.to_string()));
    }
    if let Some(t) = timeout_secs {
        params.push(("timeout", t.to_string()));
    }
    long_poll_query(client, base, token, &params, timeout_secs.unwrap_or(30)).await
}

/// A poll with arbitrary query parameters (for bad-parameter tests).
pub async fn long_poll_query(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    params: &[(&str, String)],
    expected_secs: u64,
) -> Result<PollAnswer, String> {
    let url = url_with(base, "/v1/notifications/poll", params);
    let guard = Duration::from_secs(expected_secs) + WAIT;
    let call = async {
        let resp = client
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.map_err(|e| format!("GET {url}: {e}"))?;
        match status {
            200 => {
                let v: Value = serde_json::from_str(&body).map_err(|e| {
                    format!("poll answered 200 with a body that is not JSON ({e}): {body}")
                })?;
                let notifications = v["notifications"]
                    .as_array()
                    .ok_or_else(|| format!("poll answer without notifications: {v}"))?
                    .clone();
                let (Some(unread), Some(seq)) = (v["unread"].as_i64(), v["seq"].as_i64()) else {
                    return Err(format!("poll answer without unread/seq: {v}"));
                };
                let changes = v["changes"].as_array().cloned().unwrap_or_default();
                Ok(PollAnswer::Batch {
                    notifications,
                    unread,
                    seq,
                    changes,
                })
            }
            204 => Ok(PollAnswer::NoContent),
            _ => Ok(PollAnswer::Refused(Refused {
                status,
                headers,
                body,
            })),
        }
    };
    match timeout(guard, call).await {
        Err(_) => Err(format!("GET {url}: no answer within {guard:?}")),
        Ok(r) => r,
    }
}

/// `POST /v1/notifications`; the 201 body, or what went wrong.
pub async fn publish(
    client: &reqwest::Client,
    base: &str,
    service_token: &str,
    body: &Value,
    idempotency_key: Option<&str>,
) -> Result<Value, String> {
    let mut req = client
        .post(format!("{base}/v1/notifications"))
        .bearer_auth(service_token)
        .json(body);
    if let Some(key) = idempotency_key {
        req = req.header("Idempotency-Key", key);
    }
    let call = async {
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        if status != 201 {
            return Err(format!("publish answered {status}: {text}"));
        }
        serde_json::from_str::<Value>(&text).map_err(|e| format!("publish body: {e}: {text}"))
    };
    timeout(WAIT, call)
        .await
        .unwrap_or_else(|_| Err(format!("publish: no answer within {WAIT:?}")))
}

/// The contract's example notification.
pub fn sample(recipients: &[&str]) -> Value {
    json!({
        "recipients": recipients,
        "type": "order.shipped",
        "title": "Your order has shipped",
        "body": "Parcel 1Z999 is on its way.",
        "data": {"order_id": 1234},
        "link": "https://shop.example/orders/1234"
    })
}

/// A small notification numbered `k`.
pub fn numbered(recipients: &[String], k: usize) -> Value {
    json!({
        "recipients": recipients,
        "type": "live.test",
        "title": format!("notification {k}"),
        "data": {"k": k},
    })
}

/// `GET {base}{path}` with a Bearer token: status and JSON body (Null when not JSON).
pub async fn get_json(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, Value), String> {
    let mut req = client.get(format!("{base}{path}"));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let call = async {
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    };
    timeout(WAIT, call)
        .await
        .unwrap_or_else(|_| Err(format!("GET {base}{path}: no answer within {WAIT:?}")))
}

/// `GET /metrics` as text.
pub async fn scrape(client: &reqwest::Client, base: &str) -> String {
    let call = async {
        let resp = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(resp.status(), 200, "GET /metrics");
        resp.text().await.expect("metrics body")
    };
    timeout(WAIT, call)
        .await
        .unwrap_or_else(|_| panic!("GET {base}/metrics: no answer within {WAIT:?}"))
}

/// The labels of a sample line `name{a="x",b="y"} value`.
fn parse_labels(labels: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = labels.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_owned();
        let after = &rest[eq + 1..];
        let Some(after) = after.strip_prefix('"') else {
            break;
        };
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key, value));
        rest = after[end..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    out
}

/// The sum of every sample of metric `name` (exact name, so `x_count` is not `x`) whose labels
/// include all of `labels`; `None` when there is no such sample.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.find('{') {
            Some(open) => {
                let Some(close) = line.rfind('}') else {
                    continue;
                };
                (
                    (&line[..open], parse_labels(&line[open + 1..close])),
                    line[close + 1..].trim(),
                )
            }
            None => {
                let mut parts = line.splitn(2, char::is_whitespace);
                let n = parts.next().unwrap_or("");
                ((n, Vec::new()), parts.next().unwrap_or("").trim())
            }
        };
        let (series_name, series_labels) = series;
        if series_name != name {
            continue;
        }
        if !labels
            .iter()
            .all(|(k, v)| series_labels.iter().any(|(sk, sv)| sk == k && sv == v))
        {
            continue;
        }
        let value = value.split_whitespace().next().unwrap_or("");
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        *total.get_or_insert(0.0) += value;
    }
    total
}

/// Polls `check` every 100 ms until it returns `Some`; panics with `what` after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("{what}: not within {within:?}");
        }
        sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Checking what a client received
// ---------------------------------------------------------------------------------------------

/// `Ok` when `seqs` is exactly `1..=n`; otherwise a short description of what differs.
pub fn check_exactly_once_in_order(seqs: &[i64], n: i64) -> Result<(), String> {
    let expected: Vec<i64> = (1..=n).collect();
    if seqs == expected.as_slice() {
        return Ok(());
    }
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    let mut duplicates = Vec::new();
    for pair in sorted.windows(2) {
        if pair[0] == pair[1] && duplicates.last() != Some(&pair[0]) {
            duplicates.push(pair[0]);
        }
    }
    sorted.dedup();
    let missing: Vec<i64> = (1..=n)
        .filter(|s| sorted.binary_search(s).is_err())
        .collect();
    let extra: Vec<i64> = sorted
        .iter()
        .copied()
        .filter(|s| *s < 1 || *s > n)
        .collect();
    let first_wrong = seqs
        .iter()
        .zip(1..)
        .position(|(got, want)| *got != want)
        .unwrap_or(seqs.len().min(expected.len()));
    let around = &seqs[first_wrong.saturating_sub(3)..(first_wrong + 5).min(seqs.len())];
    Err(format!(
        "expected seqs 1..={n} once each in order; got {} seqs: {} missing (first {:?}), {} duplicated \
         (first {:?}), {} out of range ({:?}); first difference at index {first_wrong}, around it: {around:?}",
        seqs.len(),
        missing.len(),
        &missing[..missing.len().min(10)],
        duplicates.len(),
        &duplicates[..duplicates.len().min(10)],
        extra.len(),
        &extra[..extra.len().min(10)],
    ))
}

// ---------------------------------------------------------------------------------------------
// Publishing while things break
// ---------------------------------------------------------------------------------------------

/// Publishes notifications numbered `0..total` to `recipients` from several tasks, round-robin
/// over `targets`, each with an `Idempotency-Key` so a publish that failed mid-flight (a replica
/// killed under it) is retried elsewhere without creating a second notification. The test
/// opens the gate in steps with [`PublishRun::allow`] to break things at known points.
pub struct PublishRun {
    total: usize,
    targets: Arc<Mutex<Vec<String>>>,
    allowed: watch::Sender<usize>,
    done: Arc<watch::Sender<usize>>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<JoinHandle<Result<(), String>>>,
}

impl PublishRun {
    /// Starts `tasks` publishers; only the first `allowed` notifications may go out until
    /// [`PublishRun::allow`] says more.
    pub fn start(
        targets: Vec<String>,
        service_token: String,
        recipients: Vec<String>,
        total: usize,
        tasks: usize,
        allowed: usize,
    ) -> PublishRun {
        assert!(!targets.is_empty(), "a publish run needs a target");
        let targets = Arc::new(Mutex::new(targets));
        let (allowed_tx, allowed_rx) = watch::channel(allowed);
        let done = Arc::new(watch::channel(0usize).0);
        let failures = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicUsize::new(0));
        let run_id = uuid::Uuid::new_v4().simple().to_string();
        let client = reqwest::Client::new();
        let recipients = Arc::new(recipients);
        let tasks = (0..tasks)
            .map(|i| {
                let client = client.clone();
                let token = service_token.clone();
                let recipients = recipients.clone();
                let next = next.clone();
                let mut allowed_rx = allowed_rx.clone();
                let targets = targets.clone();
                let done = done.clone();
                let failures = failures.clone();
                let run_id = run_id.clone();
                tokio::spawn(async move {
                    let mut attempt = i;
                    loop {
                        let k = next.fetch_add(1, Ordering::SeqCst);
                        if k >= total {
                            return Ok(());
                        }
                        allowed_rx
                            .wait_for(|a| *a > k)
                            .await
                            .map_err(|_| format!("the run ended before #{k} was allowed"))?;
                        let body = numbered(&recipients, k);
                        let key = format!("{run_id}-{k}");
                        let deadline = Instant::now() + Duration::from_secs(60);
                        loop {
                            let target = {
                                let t = targets.lock().unwrap();
                                t[attempt % t.len()].clone()
                            };
                            attempt += 1;
                            match publish(&client, &target, &token, &body, Some(&key)).await {
                                Ok(_) => break,
                                Err(e) => {
                                    failures
                                        .lock()
                                        .unwrap()
                                        .push(format!("#{k} via {target}: {e}"));
                                    if Instant::now() >= deadline {
                                        return Err(format!(
                                            "could not publish #{k} within 60s; last error: {e}"
                                        ));
                                    }
                                    sleep(Duration::from_millis(100)).await;
                                }
                            }
                        }
                        done.send_modify(|d| *d += 1);
                    }
                })
            })
            .collect();
        PublishRun {
            total,
            targets,
            allowed: allowed_tx,
            done,
            failures,
            tasks,
        }
    }

    /// Lets the first `n` notifications go out.
    pub fn allow(&self, n: usize) {
        self.allowed.send_replace(n.min(self.total));
    }

    /// Where the next publishes go (a load balancer dropping a dead replica).
    pub fn set_targets(&self, targets: Vec<String>) {
        assert!(!targets.is_empty());
        *self.targets.lock().unwrap() = targets;
    }

    pub fn done(&self) -> usize {
        *self.done.borrow()
    }

    pub fn is_finished(&self) -> bool {
        self.done() >= self.total || self.tasks.iter().all(|t| t.is_finished())
    }

    /// Waits until `n` publishes succeeded; panics after `within`.
    pub async fn wait_done(&self, n: usize, within: Duration) {
        let mut rx = self.done.subscribe();
        let reached = matches!(timeout(within, rx.wait_for(|d| *d >= n)).await, Ok(Ok(_)));
        if !reached {
            panic!(
                "only {} of {n} publishes succeeded within {within:?}; failures: {:?}",
                self.done(),
                self.failures_so_far()
            );
        }
    }

    pub fn failures_so_far(&self) -> Vec<String> {
        let f = self.failures.lock().unwrap();
        f.iter().rev().take(10).cloned().collect()
    }

    /// Lets everything out, waits for every publisher, panics if one gave up; returns the
    /// publishes that failed (and were retried).
    pub async fn finish(mut self, within: Duration) -> Vec<String> {
        self.allow(self.total);
        let deadline = Instant::now() + within;
        for task in std::mem::take(&mut self.tasks) {
            match timeout_at(deadline, task).await {
                Err(_) => panic!(
                    "the publishers did not finish within {within:?} ({} of {} done)",
                    self.done(),
                    self.total
                ),
                Ok(Err(e)) => panic!("a publisher panicked: {e}"),
                Ok(Ok(Err(e))) => panic!("a publisher gave up: {e}"),
                Ok(Ok(Ok(()))) => {}
            }
        }
        assert_eq!(self.done(), self.total, "every notification was published");
        std::mem::take(&mut *self.failures.lock().unwrap())
    }
}

impl Drop for PublishRun {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The collector
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Sse,
    WebSocket,
    LongPoll,
}

pub const ALL_TRANSPORTS: [Transport; 3] =
    [Transport::Sse, Transport::WebSocket, Transport::LongPoll];

pub type TokenSource = Arc<dyn Fn() -> String + Send + Sync>;

/// A token source that always gives the same token.
pub fn fixed_token(token: impl Into<String>) -> TokenSource {
    let token = token.into();
    Arc::new(move || token.clone())
}

pub struct CollectorOptions {
    pub name: String,
    pub transport: Transport,
    /// Where to connect: attempt `k` goes to `targets[k % len]` (so a client whose replica is
    /// gone tries the next one).
    pub targets: Vec<String>,
    /// Called for every connection, so an expired token is replaced.
    pub token: TokenSource,
    /// The first cursor; `None` = only new notifications.
    pub start: Option<i64>,
    /// `timeout=` of each long-poll.
    pub poll_timeout_secs: u64,
    /// Notifications may be deleted during the run: an SSE `unread` whose id is past the
    /// last notification sent (a deleted seq passed over) is not a violation.
    pub allow_deleted_gaps: bool,
}

impl CollectorOptions {
    pub fn new(
        name: impl Into<String>,
        transport: Transport,
        targets: Vec<String>,
        token: TokenSource,
    ) -> Self {
        Self {
            name: name.into(),
            transport,
            targets,
            token,
            start: Some(0),
            poll_timeout_secs: 10,
            allow_deleted_gaps: false,
        }
    }
}

#[derive(Default)]
struct State {
    seqs: Vec<i64>,
    /// The last seq received (the highest; a lower one is a duplicate and does not move it).
    cursor: Option<i64>,
    /// SSE: the last `id:` (what EventSource would send as `Last-Event-ID`).
    last_event_id: Option<String>,
    connects: u64,
    resyncs: u64,
    /// Seqs a `changed` event said were deleted.
    deleted: BTreeSet<i64>,
    current: Option<String>,
    /// Protocol violations; a test fails when there are any.
    anomalies: Vec<String>,
    /// The last events of the collector's life (connects, ends, closes), for failure messages.
    log: VecDeque<String>,
}

struct Shared {
    name: String,
    state: Mutex<State>,
    targets: Mutex<Vec<String>>,
    progress: watch::Sender<i64>,
}

impl Shared {
    fn log(&self, line: String) {
        let mut st = self.state.lock().unwrap();
        if st.log.len() >= 40 {
            st.log.pop_front();
        }
        st.log.push_back(line);
    }

    fn anomaly(&self, what: String) {
        let mut st = self.state.lock().unwrap();
        if st.anomalies.len() < 20 {
            st.anomalies.push(what);
        }
    }

    fn record(&self, seq: i64) {
        let mut st = self.state.lock().unwrap();
        st.seqs.push(seq);
        if st.cursor.is_none_or(|c| seq > c) {
            st.cursor = Some(seq);
            self.progress.send_replace(seq);
        }
    }

    fn cursor(&self) -> Option<i64> {
        self.state.lock().unwrap().cursor
    }

    /// A `changed` event's JSON (any transport): remembers the seqs it deleted.
    fn changed(&self, v: &Value) {
        if v["change"] != "deleted" {
            return;
        }
        let mut st = self.state.lock().unwrap();
        for s in v["seqs"].as_array().into_iter().flatten() {
            if let Some(s) = s.as_i64() {
                st.deleted.insert(s);
            }
        }
    }

    fn connected(&self, target: &str) {
        let mut st = self.state.lock().unwrap();
        st.connects += 1;
        st.current = Some(target.to_owned());
    }

    fn summary(&self) -> String {
        let st = self.state.lock().unwrap();
        format!(
            "{}: cursor {:?}, {} seqs, {} connects, {} resyncs, on {:?}; anomalies {:?}; recent: {:?}",
            self.name,
            st.cursor,
            st.seqs.len(),
            st.connects,
            st.resyncs,
            st.current,
            st.anomalies,
            st.log.iter().rev().take(8).collect::<Vec<_>>()
        )
    }
}

enum Command {
    Reconnect,
    Stop,
}

enum Outcome {
    Stop,
    /// Reconnect at once.
    Reconnect(String),
    /// Page through the REST API, then reconnect.
    Resync(i64),
    /// The connection failed or ended: back off a little, then reconnect.
    Lost(String),
}

fn from_command(cmd: Option<Command>) -> Outcome {
    match cmd {
        Some(Command::Reconnect) => Outcome::Reconnect("asked to".into()),
        Some(Command::Stop) | None => Outcome::Stop,
    }
}

/// A client task that stays connected over one transport, keeps its cursor across reconnects
/// and records every notification seq it receives. See the module docs.
pub struct Collector {
    pub name: String,
    pub transport: Transport,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    task: Option<JoinHandle<()>>,
}

/// What a collector received, once it stopped.
#[derive(Debug)]
pub struct Report {
    pub name: String,
    pub transport: Transport,
    pub seqs: Vec<i64>,
    pub connects: u64,
    pub resyncs: u64,
    /// Seqs `changed` events said were deleted.
    pub deleted: Vec<i64>,
    pub anomalies: Vec<String>,
    pub log: Vec<String>,
}

impl Report {
    /// Every seq `1..=n` exactly once, in order, and no protocol violation on the way.
    /// With notifications deleted meanwhile: what was received is in seq order with no
    /// duplicate, holds every seq in `surviving`, and anything else it holds is in `deleted`
    /// (delivered before its deletion).
    pub fn assert_surviving(&self, surviving: &[i64], deleted: &[i64]) {
        let fail = |e: String| -> ! {
            panic!(
                "{} ({:?}, {} connects, {} resyncs): {e}; recent: {:?}",
                self.name,
                self.transport,
                self.connects,
                self.resyncs,
                self.log.iter().rev().take(8).collect::<Vec<_>>()
            )
        };
        if let Some(w) = self.seqs.windows(2).find(|w| w[0] >= w[1]) {
            fail(format!("out of order or repeated: {} then {}", w[0], w[1]));
        }
        let got: BTreeSet<i64> = self.seqs.iter().copied().collect();
        let missing: Vec<i64> = surviving
            .iter()
            .filter(|s| !got.contains(s))
            .copied()
            .collect();
        if !missing.is_empty() {
            fail(format!("missed surviving seqs {missing:?}"));
        }
        let keep: BTreeSet<i64> = surviving.iter().chain(deleted).copied().collect();
        let unknown: Vec<i64> = got.iter().filter(|s| !keep.contains(s)).copied().collect();
        if !unknown.is_empty() {
            fail(format!("received seqs never published {unknown:?}"));
        }
        assert!(
            self.anomalies.is_empty(),
            "{} ({:?}) saw protocol violations: {:?}",
            self.name,
            self.transport,
            self.anomalies
        );
    }

    pub fn assert_exactly(&self, n: i64) {
        if let Err(e) = check_exactly_once_in_order(&self.seqs, n) {
            panic!(
                "{} ({:?}, {} connects, {} resyncs): {e}; recent: {:?}",
                self.name,
                self.transport,
                self.connects,
                self.resyncs,
                self.log.iter().rev().take(8).collect::<Vec<_>>()
            );
        }
        assert!(
            self.anomalies.is_empty(),
            "{} ({:?}) saw protocol violations: {:?}",
            self.name,
            self.transport,
            self.anomalies
        );
    }
}

impl Collector {
    pub fn spawn(opts: CollectorOptions) -> Collector {
        assert!(!opts.targets.is_empty(), "a collector needs a target");
        let shared = Arc::new(Shared {
            name: opts.name.clone(),
            state: Mutex::new(State::default()),
            targets: Mutex::new(opts.targets.clone()),
            progress: watch::channel(0).0,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let name = opts.name.clone();
        let transport = opts.transport;
        let task = tokio::spawn(run(Arc::new(opts), shared.clone(), rx));
        Collector {
            name,
            transport,
            shared,
            commands: tx,
            task: Some(task),
        }
    }

    /// Drops the current connection and reconnects with the cursor.
    pub fn reconnect(&self) {
        let _ = self.commands.send(Command::Reconnect);
    }

    /// Where the next connections go.
    pub fn set_targets(&self, targets: Vec<String>) {
        assert!(!targets.is_empty());
        *self.shared.targets.lock().unwrap() = targets;
    }

    pub fn connects(&self) -> u64 {
        self.shared.state.lock().unwrap().connects
    }

    /// The target of the current (or last) connection.
    pub fn current_target(&self) -> Option<String> {
        self.shared.state.lock().unwrap().current.clone()
    }

    pub fn cursor(&self) -> Option<i64> {
        self.shared.cursor()
    }

    pub fn summary(&self) -> String {
        self.shared.summary()
    }

    /// Waits until the collector has connected `n` times in all.
    pub async fn wait_connects(&self, n: u64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.connects() < n {
            if Instant::now() >= deadline {
                panic!(
                    "not connected {n} times within {within:?}: {}",
                    self.summary()
                );
            }
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the collector has received seq `n` (or beyond).
    pub async fn wait_for_seq(&self, n: i64, within: Duration) {
        let mut rx = self.shared.progress.subscribe();
        let reached = matches!(timeout(within, rx.wait_for(|s| *s >= n)).await, Ok(Ok(_)));
        if !reached {
            panic!(
                "did not reach seq {n} within {within:?}: {}",
                self.summary()
            );
        }
    }

    /// Stops the task and returns what it received.
    pub async fn stop(mut self) -> Report {
        let _ = self.commands.send(Command::Stop);
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if timeout(Duration::from_secs(10), task).await.is_err() {
                abort.abort();
            }
        }
        let mut st = self.shared.state.lock().unwrap();
        Report {
            name: self.name.clone(),
            transport: self.transport,
            seqs: std::mem::take(&mut st.seqs),
            connects: st.connects,
            resyncs: st.resyncs,
            deleted: st.deleted.iter().copied().collect(),
            anomalies: std::mem::take(&mut st.anomalies),
            log: st.log.iter().cloned().collect(),
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Until `until` publishes of `run` succeeded: after every `every` publishes, one collector
/// (the next in a stride over them) drops its connection and reconnects with its cursor. Tied
/// to the publishing's progress, not the clock, so it is as hard on a slow machine as on a fast
/// one. Returns how many reconnects it asked for; panics after `within`.
pub async fn reconnect_while_publishing(
    run: &PublishRun,
    until: usize,
    every: usize,
    collectors: &[Collector],
    within: Duration,
) -> usize {
    assert!(every > 0 && !collectors.is_empty());
    let deadline = Instant::now() + within;
    let start = run.done();
    let mut k = 0usize;
    while run.done() < until && !run.is_finished() {
        assert!(
            Instant::now() < deadline,
            "publishing did not reach {until} within {within:?} ({} done); recent failures: {:?}",
            run.done(),
            run.failures_so_far()
        );
        if run.done() >= start + k * every {
            // A stride coprime with most counts, so neighbours are not always hit together.
            collectors[(k * 7) % collectors.len()].reconnect();
            k += 1;
        } else {
            sleep(Duration::from_millis(1)).await;
        }
    }
    k
}

/// Waits for every collector to reach seq `n`, stops them all, and asserts each received
/// exactly `1..=n` once each, in order.
pub async fn finish_and_assert(
    collectors: Vec<Collector>,
    n: i64,
    within: Duration,
) -> Vec<Report> {
    let deadline = Instant::now() + within;
    for c in &collectors {
        let left = deadline.saturating_duration_since(Instant::now());
        c.wait_for_seq(n, left.max(Duration::from_millis(1))).await;
    }
    let mut reports = Vec::new();
    for c in collectors {
        reports.push(c.stop().await);
    }
    for r in &reports {
        r.assert_exactly(n);
    }
    reports
}

async fn run(
    opts: Arc<CollectorOptions>,
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let client = reqwest::Client::new();
    let mut attempt = 0usize;
    loop {
        // Commands that came while no connection was open.
        loop {
            match commands.try_recv() {
                Ok(Command::Reconnect) => continue,
                Ok(Command::Stop) | Err(mpsc::error::TryRecvError::Disconnected) => return,
                Err(mpsc::error::TryRecvError::Empty) => break,
            }
        }
        let target = {
            let targets = shared.targets.lock().unwrap();
            targets[attempt % targets.len()].clone()
        };
        attempt += 1;
        let token = (opts.token)();
        let outcome = match opts.transport {
            Transport::Sse => {
                sse_session(&opts, &shared, &client, &target, &token, &mut commands).await
            }
            Transport::WebSocket => {
                ws_session(&opts, &shared, &target, &token, &mut commands).await
            }
            Transport::LongPoll => {
                poll_session(&opts, &shared, &client, &target, &token, &mut commands).await
            }
        };
        match outcome {
            Outcome::Stop => return,
            Outcome::Reconnect(why) => shared.log(format!("reconnect from {target}: {why}")),
            Outcome::Resync(seq) => {
                shared.log(format!("resync {seq} from {target}"));
                if let Err(e) = catch_up(&shared, &client, &target, &token).await {
                    shared.log(format!("catch-up via {target} failed: {e}"));
                    if back_off(&mut commands).await {
                        return;
                    }
                }
            }
            Outcome::Lost(why) => {
                shared.log(format!("lost {target}: {why}"));
                if back_off(&mut commands).await {
                    return;
                }
            }
        }
    }
}

/// Waits a little before reconnecting; `true` when told to stop meanwhile.
async fn back_off(commands: &mut mpsc::UnboundedReceiver<Command>) -> bool {
    tokio::select! {
        () = sleep(Duration::from_millis(100)) => false,
        cmd = commands.recv() => matches!(from_command(cmd), Outcome::Stop),
    }
}

/// After a `resync`: pages through `GET /v1/notifications?after=` from the cursor, as the
/// contract tells a client to.
async fn catch_up(
    shared: &Shared,
    client: &reqwest::Client,
    target: &str,
    token: &str,
) -> Result<(), String> {
    for _ in 0..10_000 {
        let after = shared.cursor().unwrap_or(0);
        let (status, page) = get_json(
            client,
            target,
            &format!("/v1/notifications?after={after}&limit=200"),
            Some(token),
        )
        .await?;
        if status != 200 {
            return Err(format!("listing answered {status}: {page}"));
        }
        let notifications = page["notifications"]
            .as_array()
            .ok_or_else(|| format!("listing without notifications: {page}"))?;
        if notifications.is_empty() {
            let mut st = shared.state.lock().unwrap();
            st.resyncs += 1;
            st.last_event_id = st.cursor.map(|c| c.to_string());
            return Ok(());
        }
        for n in notifications {
            shared.record(
                n["seq"]
                    .as_i64()
                    .ok_or("a listed notification without seq")?,
            );
        }
    }
    Err("the listing never ended".into())
}

async fn sse_session(
    opts: &CollectorOptions,
    shared: &Shared,
    client: &reqwest::Client,
    target: &str,
    token: &str,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Outcome {
    // Like EventSource: the same URL every time, plus Last-Event-ID once it has one.
    let sse_opts = SseOptions {
        after: opts.start,
        last_event_id: shared.state.lock().unwrap().last_event_id.clone(),
        auth: Auth::Query(token.to_owned()),
        headers: Vec::new(),
    };
    let mut sse = tokio::select! {
        cmd = commands.recv() => return from_command(cmd),
        c = SseClient::connect(client, target, &sse_opts) => match c {
            Ok(sse) => sse,
            Err(e) => return Outcome::Lost(e.to_string()),
        },
    };
    shared.connected(target);
    loop {
        let ev = tokio::select! {
            cmd = commands.recv() => return from_command(cmd),
            ev = sse.next_within(Duration::from_secs(3600)) => ev,
        };
        let Some(ev) = ev else {
            return Outcome::Lost("idle for an hour".into());
        };
        match ev {
            SseEvent::Notification { seq, id, .. } => {
                if id != Some(seq) {
                    shared.anomaly(format!("notification seq {seq} carried id {id:?}"));
                }
                shared.record(seq);
                shared.state.lock().unwrap().last_event_id = sse.last_event_id.clone();
            }
            SseEvent::Unread { id, unread, seq } => {
                // Its id is the last notification this stream sent (or the cursor it started
                // from): reconnecting from it must never skip or repeat one.
                // With deletions it may be past the last one sent (a deleted seq at the end
                // of a replay is passed over); it may never be before it.
                let cursor = shared.cursor();
                if let (Some(id), Some(cursor)) = (id, cursor) {
                    if id < cursor || (id > cursor && !opts.allow_deleted_gaps) {
                        shared.anomaly(format!(
                            "unread {{unread: {unread}, seq: {seq}}} carried id {id} but the last \
                             notification sent was {cursor}"
                        ));
                    }
                }
                shared.state.lock().unwrap().last_event_id = sse.last_event_id.clone();
            }
            SseEvent::Resync { seq } => return Outcome::Resync(seq),
            SseEvent::TokenExpired => return Outcome::Reconnect("token expired".into()),
            SseEvent::Other { event, data, .. } if event == "changed" => {
                match serde_json::from_str::<Value>(&data) {
                    Ok(v) => shared.changed(&v),
                    Err(e) => shared.anomaly(format!("a changed event that is not JSON ({e})")),
                }
            }
            SseEvent::Other { event, data, .. } => {
                shared.log(format!(
                    "other event {event}: {}",
                    &data[..data.len().min(80)]
                ));
            }
            SseEvent::End => return Outcome::Lost("stream ended".into()),
            SseEvent::Error(e) => return Outcome::Lost(e),
        }
    }
}

async fn ws_session(
    opts: &CollectorOptions,
    shared: &Shared,
    target: &str,
    token: &str,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Outcome {
    let ws_opts = WsOptions::new(
        Auth::Query(token.to_owned()),
        shared.cursor().or(opts.start),
    );
    let mut ws = tokio::select! {
        cmd = commands.recv() => return from_command(cmd),
        c = WsClient::connect(target, &ws_opts) => match c {
            Ok(ws) => ws,
            Err(e) => return Outcome::Lost(e.to_string()),
        },
    };
    shared.connected(target);
    loop {
        let frame = tokio::select! {
            cmd = commands.recv() => return from_command(cmd),
            f = ws.next_within(Duration::from_secs(3600)) => f,
        };
        let Some(frame) = frame else {
            return Outcome::Lost("idle for an hour".into());
        };
        match frame {
            WsFrame::Notification { seq, .. } => shared.record(seq),
            WsFrame::Unread { .. } | WsFrame::Pong => {}
            WsFrame::Resync { seq } => return Outcome::Resync(seq),
            WsFrame::Other(v) if v["type"] == "changed" => shared.changed(&v),
            WsFrame::Other(v) => shared.log(format!("other frame {v}")),
            WsFrame::Closed(Some(4001)) => return Outcome::Reconnect("closed 4001".into()),
            WsFrame::Closed(code) => return Outcome::Lost(format!("closed {code:?}")),
            WsFrame::End => return Outcome::Lost("ended without a close frame".into()),
            WsFrame::Error(e) => return Outcome::Lost(e),
        }
    }
}

async fn poll_session(
    opts: &CollectorOptions,
    shared: &Shared,
    client: &reqwest::Client,
    target: &str,
    token: &str,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Outcome {
    shared.connected(target);
    loop {
        let after = shared.cursor().or(opts.start).unwrap_or(0);
        let answer = tokio::select! {
            cmd = commands.recv() => return from_command(cmd),
            a = long_poll(client, target, token, Some(after), None, Some(opts.poll_timeout_secs)) => a,
        };
        match answer {
            Ok(PollAnswer::Batch {
                notifications,
                changes,
                ..
            }) => {
                for c in &changes {
                    shared.changed(c);
                }
                if notifications.len() > 200 {
                    shared.anomaly(format!(
                        "a poll answered {} notifications (> 200)",
                        notifications.len()
                    ));
                }
                for n in &notifications {
                    match n["seq"].as_i64() {
                        Some(seq) => shared.record(seq),
                        None => shared.anomaly(format!("a polled notification without seq: {n}")),
                    }
                }
            }
            Ok(PollAnswer::NoContent) => {}
            Ok(PollAnswer::Refused(r)) => {
                return Outcome::Lost(format!("poll answered {}: {}", r.status, r.body))
            }
            Err(e) => return Outcome::Lost(e),
        }
    }
}
