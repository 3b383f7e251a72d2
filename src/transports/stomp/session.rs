//! One STOMP session: the task that owns a WebSocket from the upgrade to the close.
//!
//! It is one task per socket that selects over the client's messages, the hub frames of its
//! subscriptions, its timers (CONNECT deadline, heart-beats both ways, WebSocket pings, token
//! expiry) and nothing else; the JSON WebSocket ([`crate::transports::ws`]) polls the same
//! kinds of things from its response body instead, with no task. Frames are handled one at a
//! time, in order, so a `RECEIPT` is only sent once everything before it took effect, as the
//! spec requires.
//!
//! Every problem ends the session the same way STOMP says it must: an `ERROR` frame with a
//! one-line `message` header (and the detail in its body), then the close. STOMP has no
//! negative reply that keeps a session open.
//!
//! This file is the state machine only: what the frames *mean* (destinations, versions,
//! cursors, tokens, MESSAGE framing, the `/app/read` body) is in [`super::protocol`], pure
//! and tested there, so that what is left here is the order of things and the I/O.

use super::ack::{truncate, AckMode, Unacked};
use super::frame::{Command, Decoder, Frame, FrameError, Item, Limits};
use super::heartbeat::{self, HeartBeat, Negotiated};
use super::protocol::{
    connect_token, events, message_frame, negotiate_version, parse_cursor, parse_destination,
    parse_read_body, Destination, Event, AFTER_HEADER, READ, VERSIONS,
};
use super::socket::{Inbound, Outbound};
use super::transaction::{Transactions, TxLimits};
use crate::auth::{AuthError, Principal};
use crate::domain::{MarkRead, UserId};
use crate::http::AppState;
use crate::hub::{Connection, Frame as HubFrame};
use crate::metrics::Transport;
use crate::store::StoreError;
use crate::telemetry::Chain;
use crate::transports::is_overflow;
use crate::transports::stream::expiry_instant;
use actix_web::web;
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use std::future::{poll_fn, Future};
use std::task::Poll;
use std::time::Duration;
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// A client that has not sent CONNECT within this long is not a STOMP client (or is
/// holding a socket open for free): it gets an ERROR and the close.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Subscriptions per session. Each holds a hub connection, so this also bounds how
/// much of the replica's connection budget one socket can take.
pub const MAX_SUBSCRIPTIONS: usize = 32;
/// Messages awaiting ACK or NACK per subscription before the session is ended.
pub const MAX_UNACKED: usize = 1000;
/// A client that does not take a frame within this long is treated as gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Without STOMP heart-beats from the client, it is dropped after this many WebSocket
/// ping periods with nothing received (not even a pong), like `/v1/ws` (two missed pongs).
const PING_SILENCE_FACTOR: u32 = 3;

pub const CLOSE_TOKEN_EXPIRED: u16 = crate::transports::ws::CLOSE_TOKEN_EXPIRED;
pub const CLOSE_TOO_SLOW: u16 = crate::transports::ws::CLOSE_TOO_SLOW;

/// How a session ends.
#[derive(Debug)]
pub enum End {
    /// Send an ERROR frame, then close the WebSocket with `code`.
    Error(Failure),
    /// Close without an ERROR (a DISCONNECT).
    Close(CloseCode, &'static str),
    /// The client is gone: nothing can be sent.
    Gone,
}

/// What goes into the ERROR frame.
#[derive(Debug)]
pub struct Failure {
    /// The `message` header: one line, says what was wrong.
    pub message: String,
    pub code: CloseCode,
    /// Extra headers (`version` for a failed negotiation).
    pub headers: Vec<(&'static str, String)>,
}

impl Failure {
    fn new(message: impl Into<String>, code: CloseCode) -> Self {
        Failure {
            message: message.into(),
            code,
            headers: Vec::new(),
        }
    }

    /// A client mistake in a frame: STOMP's only answer is ERROR and close.
    fn protocol(message: impl Into<String>) -> End {
        End::Error(Failure::new(message, CloseCode::Protocol))
    }

    fn policy(message: impl Into<String>) -> End {
        End::Error(Failure::new(message, CloseCode::Policy))
    }
}

impl From<FrameError> for End {
    fn from(e: FrameError) -> Self {
        let code = match e {
            FrameError::FrameTooLarge { .. } | FrameError::BodyTooLarge { .. } => CloseCode::Size,
            _ => CloseCode::Protocol,
        };
        End::Error(Failure::new(e.to_string(), code))
    }
}

fn store_failure(e: StoreError) -> End {
    let message = match e {
        StoreError::Unavailable(_) => {
            tracing::error!(error = %Chain(&e), "database unavailable");
            "the database is unavailable; reconnect shortly"
        }
        _ => {
            tracing::error!(error = %Chain(&e), "database error in a STOMP session");
            "internal error"
        }
    };
    End::Error(Failure::new(message, CloseCode::Error))
}

type Step = Result<(), End>;

/// A frame held by a transaction, already validated.
#[derive(Debug)]
enum Held {
    Read(MarkRead),
    Ack(u64),
    Nack(u64),
}

struct Subscription {
    id: String,
    destination: Destination,
    /// The destination as the client wrote it, echoed in every MESSAGE.
    destination_name: String,
    conn: Connection,
    unacked: Unacked<Event>,
}

/// The STOMP state of a socket: a WebSocket, or any channel that implements
/// [`Outbound`] (a SockJS session).
pub struct Session<W: Outbound = actix_ws::Session> {
    state: web::Data<AppState>,
    ws: W,
    /// A token that came with the channel (SockJS's `access_token` in the URL), used when
    /// CONNECT carries none.
    url_token: Option<String>,
    /// The user the channel belongs to, and when its token expires (a SockJS session
    /// belongs to the user of the token that opened it): CONNECT must name the same user.
    bound: Option<(UserId, i64)>,
    decoder: Decoder,
    /// Set by CONNECT.
    user: Option<UserId>,
    /// The negotiated protocol version, once CONNECTED was sent.
    version: Option<&'static str>,
    session_id: String,
    connect_deadline: Instant,
    expires: Option<Instant>,
    heartbeat: Negotiated,
    /// Server heart-beats; reset whenever anything is sent, so an EOL only goes out on
    /// an otherwise idle connection.
    hb_tick: Interval,
    /// WebSocket pings, for proxies and for liveness when the client sends no
    /// heart-beats.
    ping_tick: Interval,
    /// Last STOMP bytes (frame or EOL) from the client: what heart-beating is about.
    last_stomp_in: Instant,
    /// Last anything from the client, pongs included.
    last_any_in: Instant,
    subs: Vec<Subscription>,
    /// Where the next poll of the subscriptions starts, so a busy one cannot starve others.
    next_poll: usize,
    /// The next `message-id`; ids below it were issued by this session.
    next_message_id: u64,
    transactions: Transactions<Held>,
}

/// Largest WebSocket message taken from a client: a full-size frame plus room for small
/// frames around it. The codec bounds each frame on its own; this bounds the buffer that
/// actix-ws aggregates before the codec sees it.
pub const MAX_WS_MESSAGE: usize = 64 * 1024 + 4 * 1024;

impl<W: Outbound> Session<W> {
    pub fn new(state: web::Data<AppState>, ws: W) -> Self {
        let now = Instant::now();
        let ping_every = ping_period(state.heartbeat);
        let mut ping_tick = tokio::time::interval_at(now + ping_every, ping_every);
        ping_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Session {
            state,
            ws,
            url_token: None,
            bound: None,
            decoder: Decoder::new(Limits::default()),
            user: None,
            version: None,
            session_id: uuid::Uuid::new_v4().simple().to_string(),
            connect_deadline: now + CONNECT_TIMEOUT,
            expires: None,
            heartbeat: Negotiated::NONE,
            hb_tick: idle_interval(),
            ping_tick,
            last_stomp_in: now,
            last_any_in: now,
            subs: Vec::new(),
            next_poll: 0,
            next_message_id: 1,
            transactions: Transactions::new(TxLimits::default()),
        }
    }

    /// Accepts `token` (from the channel's URL) when CONNECT carries none.
    pub fn with_url_token(mut self, token: Option<String>) -> Self {
        self.url_token = token;
        self
    }

    /// Binds the session to `user` (whose token, expiring at `expires_at`, opened the
    /// channel): a CONNECT token of anybody else is refused, and the session ends no later
    /// than that token, since every request of the channel carries it.
    pub fn bound_to(mut self, user: UserId, expires_at: i64) -> Self {
        self.bound = Some((user, expires_at));
        self
    }

    /// Runs the session to its end, then closes the socket.
    pub async fn run(mut self, mut messages: impl Inbound) {
        let timer = tokio::time::sleep_until(self.next_deadline());
        tokio::pin!(timer);
        let end = loop {
            timer.as_mut().reset(self.next_deadline());
            let sends_heartbeats = self.heartbeat.send.is_some();
            let pings = self.pings();
            tokio::select! {
                _ = &mut timer => {
                    if let Some(end) = self.deadline_passed(Instant::now()) {
                        break end;
                    }
                }
                (index, frame) = recv_any(&mut self.subs, self.next_poll) => {
                    self.next_poll = index + 1;
                    if let Err(end) = self.on_hub_frame(index, frame).await {
                        break end;
                    }
                }
                msg = messages.recv() => {
                    if let Err(end) = self.on_ws_message(msg).await {
                        break end;
                    }
                }
                _ = self.hb_tick.tick(), if sends_heartbeats => {
                    if !self.send_heartbeat().await {
                        break End::Gone;
                    }
                }
                _ = self.ping_tick.tick(), if pings => {
                    if self.ws.ping().await.is_err() {
                        break End::Gone;
                    }
                }
            }
        };
        self.finish(end).await;
    }

    /// Sends the ERROR (if any) and closes. Subscriptions and open transactions go with
    /// `self`: the hub connections leave, held frames are dropped (an implicit ABORT).
    async fn finish(mut self, end: End) {
        let reason = match end {
            End::Gone => return,
            End::Close(code, description) => CloseReason {
                code,
                description: Some(description.to_owned()),
            },
            End::Error(failure) => {
                tracing::debug!(message = %failure.message, "STOMP session ended with ERROR");
                // Header escaping (`:` as `\c`) is a 1.1+ rule: a client that has not
                // negotiated (a refused CONNECT) or speaks 1.0 would show the escapes. Its
                // message header is written without colons instead; the body has the text.
                let message = match self.version {
                    Some("1.1" | "1.2") => failure.message.clone(),
                    _ => without_colons(&failure.message),
                };
                let mut f = Frame::new(Command::Error)
                    .with_header("message", message)
                    .with_header("content-type", "text/plain");
                for (name, value) in failure.headers {
                    f.push_header(name, value);
                }
                let f = f
                    .with_body(format!("{}\n", failure.message))
                    .with_content_length();
                if !self.send_frame(&f).await {
                    return;
                }
                CloseReason {
                    code: failure.code,
                    description: Some(close_description(&failure.message)),
                }
            }
        };
        let _ = tokio::time::timeout(SEND_TIMEOUT, self.ws.close(Some(reason))).await;
    }

    /// Whether to send WebSocket pings: when the client sends no heart-beats, its pongs are
    /// the only proof of life; and when the server's own heart-beats are off or slower
    /// than the configured period, pings keep proxies from closing an idle socket.
    fn pings(&self) -> bool {
        W::PINGS
            && (self.heartbeat.recv.is_none()
                || self
                    .heartbeat
                    .send
                    .is_none_or(|every| every > self.state.heartbeat))
    }

    /// The earliest instant at which something must be checked.
    fn next_deadline(&self) -> Instant {
        let mut at = match (self.user.is_some(), self.expires) {
            (false, _) => self.connect_deadline,
            (true, Some(expires)) => expires,
            (true, None) => far_future(),
        };
        if self.user.is_some() {
            at = at.min(self.silence_deadline());
        }
        at
    }

    fn silence_deadline(&self) -> Instant {
        match self.heartbeat.silence_limit() {
            Some(limit) => self.last_stomp_in + limit,
            None if W::PINGS => {
                self.last_any_in + ping_period(self.state.heartbeat) * PING_SILENCE_FACTOR
            }
            // The channel ends `recv` itself once its client is gone.
            None => far_future(),
        }
    }

    fn deadline_passed(&self, now: Instant) -> Option<End> {
        if self.user.is_none() {
            return (now >= self.connect_deadline).then(|| {
                Failure::policy(format!(
                    "no CONNECT frame within {} seconds",
                    CONNECT_TIMEOUT.as_secs()
                ))
            });
        }
        if self.expires.is_some_and(|e| now >= e) {
            return Some(End::Error(Failure::new(
                "token expired",
                CloseCode::Other(CLOSE_TOKEN_EXPIRED),
            )));
        }
        if now >= self.silence_deadline() {
            let message = match self.heartbeat.recv {
                Some(every) => format!(
                    "no heart-beat from the client for more than {} ms (negotiated every {} ms)",
                    (every * heartbeat::TOLERANCE).as_millis(),
                    every.as_millis()
                ),
                None => "the client stopped answering WebSocket pings".to_owned(),
            };
            return Some(End::Error(Failure::new(message, CloseCode::Away)));
        }
        None
    }

    // ---- client → server ----

    async fn on_ws_message(
        &mut self,
        msg: Option<Result<AggregatedMessage, actix_ws::ProtocolError>>,
    ) -> Step {
        let now = Instant::now();
        self.last_any_in = now;
        let bytes = match msg {
            None => return Err(End::Gone),
            Some(Err(e)) if is_overflow(&e) => {
                return Err(End::Error(Failure::new(
                    format!("WebSocket message larger than {MAX_WS_MESSAGE} bytes"),
                    CloseCode::Size,
                )))
            }
            Some(Err(e)) => {
                return Err(Failure::protocol(format!("WebSocket protocol error: {e}")));
            }
            Some(Ok(AggregatedMessage::Text(text))) => text.into_bytes(),
            Some(Ok(AggregatedMessage::Binary(bytes))) => bytes,
            Some(Ok(AggregatedMessage::Ping(payload))) => {
                return match self.ws.pong(&payload).await {
                    Ok(()) => Ok(()),
                    Err(_) => Err(End::Gone),
                };
            }
            Some(Ok(AggregatedMessage::Pong(_))) => return Ok(()),
            Some(Ok(AggregatedMessage::Close(_))) => {
                return Err(End::Close(CloseCode::Normal, "closed by the client"))
            }
        };
        self.last_stomp_in = now;
        let mut input: &[u8] = &bytes;
        while let Some(item) = self.decoder.decode(&mut input)? {
            if let Item::Frame(frame) = item {
                self.on_frame(frame).await?;
            }
        }
        Ok(())
    }

    /// One client frame; sends its RECEIPT once it took effect.
    async fn on_frame(&mut self, frame: Frame) -> Step {
        // Any frame but CONNECT may ask for a receipt (CONNECTED is CONNECT's).
        let receipt = frame
            .header("receipt")
            .filter(|_| !matches!(frame.command, Command::Connect | Command::Stomp))
            .map(str::to_owned);
        let outcome = if self.user.is_none() {
            self.on_connect(&frame).await
        } else {
            self.on_session_frame(frame).await
        };
        match outcome {
            Ok(()) => match receipt {
                Some(id) => self.receipt(id).await,
                None => Ok(()),
            },
            Err(End::Close(code, why)) => {
                // DISCONNECT: the receipt is the last frame before the close.
                if let Some(id) = receipt {
                    self.receipt(id).await?;
                }
                Err(End::Close(code, why))
            }
            Err(End::Error(mut failure)) => {
                if let Some(id) = receipt {
                    failure.headers.push(("receipt-id", id));
                }
                Err(End::Error(failure))
            }
            Err(End::Gone) => Err(End::Gone),
        }
    }

    async fn receipt(&mut self, id: String) -> Step {
        let f = Frame::new(Command::Receipt).with_header("receipt-id", id);
        self.send_or_gone(&f).await
    }

    async fn on_connect(&mut self, frame: &Frame) -> Step {
        if !matches!(frame.command, Command::Connect | Command::Stomp) {
            return Err(Failure::protocol(format!(
                "the first frame must be CONNECT or STOMP, not {}",
                frame.command
            )));
        }
        let Some(version) = negotiate_version(frame.header("accept-version")) else {
            let mut f = Failure::new(
                "no supported protocol version; this server speaks STOMP 1.2, 1.1 and 1.0",
                CloseCode::Protocol,
            );
            f.headers.push(("version", VERSIONS.join(",")));
            return Err(End::Error(f));
        };
        let token = connect_token(frame)
            .or(self.url_token.as_deref())
            .ok_or_else(|| {
                Failure::policy(
                    "no token: send the user's JWT in the CONNECT frame's Authorization header \
                 (Bearer <jwt>) or as passcode",
                )
            })?;
        let verified = self
            .state
            .auth
            .authenticate(token)
            .await
            .map_err(|e| match e {
                AuthError::Expired => End::Error(Failure::new(
                    "token expired",
                    CloseCode::Other(CLOSE_TOKEN_EXPIRED),
                )),
                other => Failure::policy(format!("bad token: {other}")),
            })?;
        let user = match verified.principal {
            Principal::User(user) => user,
            Principal::Service(_) => {
                return Err(Failure::policy(
                    "a service token cannot read an inbox; connect with a user token",
                ))
            }
        };
        // STOMP 1.0 has no heart-beating; a 1.0 client's header (if any) means nothing.
        let server_offer = heartbeat::server_offer(self.state.heartbeat);
        let (negotiated, offered) = if version == "1.0" {
            (Negotiated::NONE, HeartBeat::default())
        } else {
            let client = HeartBeat::parse(frame.header("heart-beat")).map_err(Failure::protocol)?;
            (heartbeat::negotiate(client, server_offer), server_offer)
        };
        let mut expires_at = verified.expires_at;
        if let Some((owner, owner_expires)) = &self.bound {
            if *owner != user {
                return Err(Failure::policy(
                    "this token names another user than the one whose token opened the SockJS \
                     session (access_token in its URL)",
                ));
            }
            expires_at = expires_at.min(*owner_expires);
        }
        let connected = Frame::new(Command::Connected)
            .with_header("version", version)
            .with_header("heart-beat", offered.header())
            .with_header("server", concat!("tidings/", env!("CARGO_PKG_VERSION")))
            .with_header("session", self.session_id.clone())
            .with_header("user-name", user.as_str());
        self.user = Some(user);
        self.version = Some(version);
        self.expires = Some(expiry_instant(expires_at));
        self.heartbeat = negotiated;
        if let Some(every) = negotiated.send {
            self.ws.heartbeats_negotiated();
            let mut tick = tokio::time::interval_at(Instant::now() + every, every);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            self.hb_tick = tick;
        }
        self.last_stomp_in = Instant::now();
        self.send_or_gone(&connected).await
    }

    async fn on_session_frame(&mut self, frame: Frame) -> Step {
        match frame.command {
            Command::Connect | Command::Stomp => {
                Err(Failure::protocol("already connected: CONNECT is sent once"))
            }
            Command::Subscribe => self.on_subscribe(&frame).await,
            Command::Unsubscribe => self.on_unsubscribe(&frame),
            Command::Send => self.on_send(&frame).await,
            Command::Ack | Command::Nack => self.on_ack(&frame).await,
            Command::Begin => {
                let id = required(&frame, "transaction")?;
                self.transactions.begin(id).map_err(tx_failure)
            }
            Command::Commit => {
                let id = required(&frame, "transaction")?;
                let held = self.transactions.commit(id).map_err(tx_failure)?;
                for action in held {
                    self.apply(action).await?;
                }
                Ok(())
            }
            Command::Abort => {
                let id = required(&frame, "transaction")?;
                self.transactions.abort(id).map_err(tx_failure)
            }
            Command::Disconnect => Err(End::Close(CloseCode::Normal, "disconnected")),
            Command::Connected | Command::Message | Command::Receipt | Command::Error => {
                Err(Failure::protocol(format!(
                    "{} is a server frame; a client may not send it",
                    frame.command
                )))
            }
        }
    }

    async fn on_subscribe(&mut self, frame: &Frame) -> Step {
        let id = required(frame, "id")?;
        let destination_name = required(frame, "destination")?;
        if self.subs.iter().any(|s| s.id == id) {
            return Err(Failure::protocol(format!(
                "subscription id '{}' is already in use",
                truncate(id, 64)
            )));
        }
        if self.subs.len() >= MAX_SUBSCRIPTIONS {
            return Err(Failure::policy(format!(
                "more than {MAX_SUBSCRIPTIONS} subscriptions in one session"
            )));
        }
        let mode = AckMode::parse(frame.header("ack")).map_err(Failure::protocol)?;
        let destination = parse_destination(destination_name).map_err(Failure::protocol)?;
        let cursor = parse_cursor(frame.header(AFTER_HEADER)).map_err(Failure::protocol)?;
        let Some(user) = self.user.clone() else {
            return Err(Failure::protocol("not connected"));
        };
        if let Destination::Topic(topic) = &destination {
            let subscribed = self
                .state
                .store
                .is_topic_subscriber(topic, &user)
                .await
                .map_err(store_failure)?;
            if !subscribed {
                return Err(Failure::policy(format!(
                    "you are not subscribed to topic '{topic}'; a service subscribes you with \
                     PUT /v1/topics/{topic}/subscribers/{user}"
                )));
            }
        }
        let conn = self
            .state
            .hub
            .connect(&user, cursor, Transport::Stomp)
            .await
            .map_err(|e| {
                End::Error(Failure::new(
                    format!("{e}; try again shortly"),
                    CloseCode::Again,
                ))
            })?;
        self.subs.push(Subscription {
            id: id.to_owned(),
            destination,
            destination_name: destination_name.to_owned(),
            conn,
            unacked: Unacked::new(mode, MAX_UNACKED),
        });
        Ok(())
    }

    fn on_unsubscribe(&mut self, frame: &Frame) -> Step {
        let id = required(frame, "id")?;
        match self.subs.iter().position(|s| s.id == id) {
            Some(i) => {
                // Dropping the subscription leaves the hub; its unacknowledged messages
                // are forgotten (a later ACK of one of them is a no-op).
                self.subs.remove(i);
                Ok(())
            }
            None => Err(Failure::protocol(format!(
                "no subscription with id '{}'",
                truncate(id, 64)
            ))),
        }
    }

    async fn on_send(&mut self, frame: &Frame) -> Step {
        let destination = required(frame, "destination")?;
        if destination != READ {
            return Err(Failure::protocol(format!(
                "cannot SEND to '{}'; the only destination is {READ}, with {{\"ids\":[...]}} or {{\"up_to\":seq}}",
                truncate(destination, 128)
            )));
        }
        let what = parse_read_body(&frame.body).map_err(Failure::protocol)?;
        match frame.header("transaction") {
            Some(tx) => self
                .transactions
                .hold(tx, Held::Read(what), frame.body.len())
                .map_err(tx_failure),
            None => self.apply(Held::Read(what)).await,
        }
    }

    async fn on_ack(&mut self, frame: &Frame) -> Step {
        // 1.2 names the ack by `id`; 1.0 and 1.1 by `message-id`.
        let raw = frame
            .header("id")
            .or_else(|| frame.header("message-id"))
            .ok_or_else(|| Failure::protocol(format!("{} needs an id header", frame.command)))?;
        let id = raw
            .parse::<u64>()
            .ok()
            .filter(|&id| id > 0 && id < self.next_message_id)
            .ok_or_else(|| {
                Failure::protocol(format!(
                    "{} of an unknown message: '{}' is not an ack id this session sent",
                    frame.command,
                    truncate(raw, 64)
                ))
            })?;
        let action = if frame.command == Command::Ack {
            Held::Ack(id)
        } else {
            Held::Nack(id)
        };
        match frame.header("transaction") {
            Some(tx) => self.transactions.hold(tx, action, 0).map_err(tx_failure),
            None => self.apply(action).await,
        }
    }

    /// Makes a validated frame take effect (at once, or at its transaction's COMMIT).
    async fn apply(&mut self, action: Held) -> Step {
        match action {
            Held::Read(what) => {
                let Some(user) = &self.user else {
                    return Err(Failure::protocol("not connected"));
                };
                // The new count reaches the feed subscription (and every other tab)
                // through the bus, like a REST mark-read.
                self.state
                    .notifier
                    .mark_read(user, &what)
                    .await
                    .map_err(store_failure)?;
                Ok(())
            }
            Held::Ack(id) => {
                if let Some(sub) = self.subs.iter_mut().find(|s| s.unacked.is_pending(id)) {
                    sub.unacked.ack(id);
                }
                Ok(())
            }
            Held::Nack(id) => {
                let Some(index) = self.subs.iter().position(|s| s.unacked.is_pending(id)) else {
                    return Ok(());
                };
                let again = self.subs[index].unacked.nack(id);
                for event in again {
                    self.deliver(index, &event, true).await?;
                }
                Ok(())
            }
        }
    }

    // ---- hub → client ----

    async fn on_hub_frame(&mut self, index: usize, frame: Option<HubFrame>) -> Step {
        let Some(sub) = self.subs.get(index) else {
            return Ok(());
        };
        let frame = match frame {
            Some(HubFrame::Shutdown) => {
                return Err(End::Error(Failure::new(
                    "server restarting; reconnect with your cursor",
                    CloseCode::Restart,
                )))
            }
            Some(frame) => frame,
            None if sub.conn.control.overflowed() => {
                return Err(End::Error(Failure::new(
                    "too slow: messages were not read fast enough; reconnect with your cursor",
                    CloseCode::Other(CLOSE_TOO_SLOW),
                )))
            }
            None => {
                return Err(End::Error(Failure::new(
                    "session restarted; reconnect with your cursor",
                    CloseCode::Restart,
                )))
            }
        };
        for event in events(&sub.destination, frame) {
            self.deliver(index, &event, false).await?;
        }
        Ok(())
    }

    /// Sends one event as a MESSAGE on subscription `index`, recording it for ACK.
    async fn deliver(&mut self, index: usize, event: &Event, redelivered: bool) -> Step {
        let message_id = self.next_message_id;
        let Some(sub) = self.subs.get_mut(index) else {
            return Ok(());
        };
        let mode = sub.unacked.mode();
        if sub
            .unacked
            .record(message_id, event.clone(), redelivered)
            .is_err()
        {
            return Err(Failure::policy(format!(
                "more than {MAX_UNACKED} messages await ACK on subscription '{}'; \
                 acknowledge them, or subscribe with ack:auto",
                truncate(&sub.id, 64)
            )));
        }
        self.next_message_id += 1;
        let f = message_frame(
            &sub.id,
            &sub.destination_name,
            mode,
            message_id,
            event,
            redelivered,
        );
        self.send_or_gone(&f).await
    }

    // ---- writing ----

    async fn send_or_gone(&mut self, frame: &Frame) -> Step {
        if self.send_frame(frame).await {
            Ok(())
        } else {
            Err(End::Gone)
        }
    }

    /// Writes one frame as one WebSocket message: text when it is UTF-8 (always, for
    /// what this server sends), which every STOMP-over-WebSocket client reads.
    async fn send_frame(&mut self, frame: &Frame) -> bool {
        // What this server sends is UTF-8 (headers and JSON bodies), a text message.
        let text = String::from_utf8_lossy(&frame.encode()).into_owned();
        let sent = tokio::time::timeout(SEND_TIMEOUT, self.ws.text(text)).await;
        let ok = matches!(sent, Ok(Ok(())));
        if ok {
            self.hb_tick.reset();
        }
        ok
    }

    /// A heart-beat: one EOL, as its own WebSocket message (what stompjs and Spring send).
    async fn send_heartbeat(&mut self) -> bool {
        matches!(
            tokio::time::timeout(SEND_TIMEOUT, self.ws.text("\n".to_owned())).await,
            Ok(Ok(()))
        )
    }
}

/// The next hub frame of any subscription, with its index. Starts at `start` and goes
/// round, so one busy subscription cannot starve the others. Pending forever when there
/// are none.
fn recv_any(
    subs: &mut [Subscription],
    start: usize,
) -> impl Future<Output = (usize, Option<HubFrame>)> + '_ {
    poll_fn(move |cx| {
        let n = subs.len();
        for k in 0..n {
            let i = (start + k) % n;
            if let Poll::Ready(frame) = subs[i].conn.rx.poll_recv(cx) {
                return Poll::Ready((i, frame));
            }
        }
        Poll::Pending
    })
}

/// A WebSocket close reason holds at most 123 bytes: the message, cut on a character
/// boundary.
fn close_description(message: &str) -> String {
    let mut end = 0;
    for (i, c) in message.char_indices() {
        if i + c.len_utf8() > 120 {
            break;
        }
        end = i + c.len_utf8();
    }
    message[..end].to_owned()
}

/// `a: b` as `a - b`, for a header that must read the same escaped or not.
fn without_colons(s: &str) -> String {
    s.replace(": ", " - ").replace(':', " ")
}

/// A header the frame must have, non-empty.
fn required<'f>(frame: &'f Frame, name: &'static str) -> Result<&'f str, End> {
    frame
        .header(name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Failure::protocol(format!("{} needs a {name} header", frame.command)))
}

fn tx_failure(e: super::transaction::TxError) -> End {
    Failure::protocol(e.to_string())
}

/// The WebSocket ping period: the configured heartbeat, kept within sane bounds (the
/// setting is only checked to be positive, and a timer deadline must not overflow).
fn ping_period(configured: Duration) -> Duration {
    configured.clamp(heartbeat::MIN_INTERVAL, heartbeat::MAX_INTERVAL)
}

/// An interval that never fires in practice, until CONNECT negotiates a real one.
fn idle_interval() -> Interval {
    let far = heartbeat::MAX_INTERVAL;
    tokio::time::interval_at(Instant::now() + far, far)
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(10 * 365 * 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_descriptions_fit_a_close_frame() {
        assert_eq!(close_description("token expired"), "token expired");
        let long = "é".repeat(200);
        let cut = close_description(&long);
        assert!(cut.len() <= 120 && cut.len() >= 118, "{}", cut.len());
        assert!(long.starts_with(&cut));
    }

    #[test]
    fn unescaped_messages_have_no_colons() {
        assert_eq!(
            without_colons("bad token: the token is not valid: the signature does not match"),
            "bad token - the token is not valid - the signature does not match"
        );
        assert_eq!(without_colons("a:b"), "a b");
        assert_eq!(without_colons("token expired"), "token expired");
    }
}
