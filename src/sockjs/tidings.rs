//! Tidings' protocols on SockJS: STOMP 1.2 at `/v1/sockjs` (the very session of
//! `/v1/stomp`) and the JSON event protocol of `/v1/ws` at `/v1/sockjs-json`.
//!
//! The rest of this module is generic; this file is the glue, and the only part of it
//! that knows the crate: it adapts a SockJS [`Conn`] to what each protocol reads and
//! writes. Every session is bounded like a WebSocket: its hub connections count against
//! the replica's cap, its outgoing queue is bounded (a slow client's hub queue overflows and
//! it is told to resume with its cursor), and so are the bodies it sends.

use super::{Conn, Endpoint, Options, Outgoing, Service};
use crate::configuration::SockJsSettings;
use crate::domain::UserId;
use crate::http::extract::{cursor_param, query_map, StreamUser};
use crate::http::origin::check_origin;
use crate::http::AppState;
use crate::hub::{Connection, Frame};
use crate::metrics::Transport;
use crate::transports::stomp::session::Session as StompSession;
use crate::transports::stomp::socket::{Gone, Inbound, Outbound};
use crate::transports::stream::expiry_instant;
use crate::transports::ws;
use actix_web::{web, FromRequest, HttpRequest};
use actix_ws::{AggregatedMessage, CloseReason, ProtocolError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub const STOMP_PREFIX: &str = "/v1/sockjs";
pub const JSON_PREFIX: &str = "/v1/sockjs-json";

/// The two endpoints, built once per replica: their sessions are shared by every worker,
/// since a polling client's requests may reach any of them.
pub fn endpoints(state: web::Data<AppState>, settings: &SockJsSettings) -> Vec<Endpoint> {
    if !settings.enabled {
        return Vec::new();
    }
    let options = Options {
        heartbeat: Duration::from_secs(settings.heartbeat_seconds),
        disconnect_delay: Duration::from_secs(settings.disconnect_delay_seconds),
        stream_bytes_limit: settings.stream_bytes_limit,
        jsessionid: settings.jsessionid,
        sockjs_url: settings.client_url.clone(),
        max_sessions: settings.max_sessions,
        body_timeout: state.body_timeout,
        ..Options::default()
    };
    vec![
        Endpoint::new(
            STOMP_PREFIX,
            options.clone(),
            Arc::new(Stomp {
                state: state.clone(),
            }),
        ),
        Endpoint::new(JSON_PREFIX, options, Arc::new(Json { state })),
    ]
}

/// STOMP 1.2, the session of `/v1/stomp`.
struct Stomp {
    state: web::Data<AppState>,
}

impl Service for Stomp {
    fn owner(&self, req: &HttpRequest) -> Result<String, actix_web::Error> {
        owner(req)
    }

    fn open(&self, req: &HttpRequest, conn: Conn) -> Result<(), actix_web::Error> {
        check_origin(req, &self.state.allowed_origins)?;
        // The token comes in the SockJS URL (sockjs-client repeats the base URL's query on
        // every request, which is how each of them shows it speaks for the session's
        // user); a token in CONNECT must name the same user.
        let user = StreamUser::extract(req).into_inner()?.0;
        let token = query_map(req)?.remove("access_token");
        let session = StompSession::new(self.state.clone(), SockOut(conn.out))
            .with_url_token(token)
            .bound_to(user.user, user.expires_at);
        actix_web::rt::spawn(session.run(SockIn(conn.incoming)));
        Ok(())
    }

    fn trusts_origin(&self, req: &HttpRequest) -> bool {
        check_origin(req, &self.state.allowed_origins).is_ok()
    }
}

/// The owner of a session: the user of the request's token (`access_token` in the URL,
/// or `Authorization`).
fn owner(req: &HttpRequest) -> Result<String, actix_web::Error> {
    let user = StreamUser::extract(req).into_inner()?.0;
    Ok(user.user.as_str().to_owned())
}

struct SockOut(Outgoing);

impl Outbound for SockOut {
    const PINGS: bool = false;

    async fn text(&mut self, text: String) -> Result<(), Gone> {
        self.0.send(text).await.map_err(|_| Gone)
    }

    async fn ping(&mut self) -> Result<(), Gone> {
        Ok(())
    }

    async fn pong(&mut self, _: &[u8]) -> Result<(), Gone> {
        Ok(())
    }

    async fn close(self, reason: Option<CloseReason>) {
        let (code, text) = match reason {
            Some(r) => (u16::from(r.code), r.description.unwrap_or_default()),
            None => (1000, String::new()),
        };
        self.0.close(code, &text);
    }

    fn heartbeats_negotiated(&mut self) {
        self.0.set_heartbeats(false);
    }
}

struct SockIn(mpsc::Receiver<String>);

impl Inbound for SockIn {
    async fn recv(&mut self) -> Option<Result<AggregatedMessage, ProtocolError>> {
        self.0
            .recv()
            .await
            .map(|text| Ok(AggregatedMessage::Text(text.into())))
    }
}

/// The JSON protocol of `/v1/ws`: authenticated by `access_token` in the URL (there is
/// no CONNECT frame), resumed by `after`.
struct Json {
    state: web::Data<AppState>,
}

impl Service for Json {
    fn owner(&self, req: &HttpRequest) -> Result<String, actix_web::Error> {
        owner(req)
    }

    fn trusts_origin(&self, req: &HttpRequest) -> bool {
        check_origin(req, &self.state.allowed_origins).is_ok()
    }

    fn open(&self, req: &HttpRequest, conn: Conn) -> Result<(), actix_web::Error> {
        check_origin(req, &self.state.allowed_origins)?;
        let user = StreamUser::extract(req).into_inner()?.0;
        let cursor = cursor_param(&query_map(req)?)?;
        let state = self.state.clone();
        // The hub connection is opened in the session's task: `connect` waits until a
        // connection without a cursor has its starting seq fixed, and refusals (the caps, a
        // stopping replica, an unreadable database) close the session with the reason.
        actix_web::rt::spawn(async move {
            match state
                .hub
                .connect(&user.user, cursor, Transport::WebSocket)
                .await
            {
                Ok(hub) => {
                    let task = JsonTask {
                        state,
                        user: user.user,
                        hub,
                        expires: expiry_instant(user.expires_at),
                    };
                    task.run(conn).await
                }
                Err(e) => conn.out.close(1013, &e.to_string()),
            }
        });
        Ok(())
    }
}

struct JsonTask {
    state: web::Data<AppState>,
    user: UserId,
    hub: Connection,
    expires: Instant,
}

impl JsonTask {
    async fn run(mut self, mut conn: Conn) {
        let expiry = tokio::time::sleep_until(self.expires);
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                _ = &mut expiry => {
                    conn.out.close(ws::CLOSE_TOKEN_EXPIRED, "token expired");
                    return;
                }
                frame = self.hub.rx.recv() => match frame {
                    Some(Frame::Shutdown) => return conn.out.close(1012, "server restarting"),
                    Some(frame) => {
                        for text in ws::render(&frame) {
                            if conn.out.send(text).await.is_err() {
                                return;
                            }
                        }
                    }
                    None if self.hub.control.overflowed() => {
                        return conn.out.close(ws::CLOSE_TOO_SLOW, "too slow; reconnect with your cursor");
                    }
                    None => return conn.out.close(1012, "session restarted"),
                },
                msg = conn.incoming.recv() => match msg {
                    Some(text) => {
                        if let Some(reply) = ws::on_client_message(&self.state, &self.user, &text).await {
                            if conn.out.send(reply).await.is_err() {
                                return;
                            }
                        }
                    }
                    None => return,
                },
            }
        }
    }
}
