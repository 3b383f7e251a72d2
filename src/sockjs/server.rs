//! The HTTP side of a SockJS endpoint: its URL scheme under a prefix, and each transport's
//! way of writing frames. See [`super`] for what is served.

use super::frame::{self, PayloadError};
use super::session::{Closed, Full, Next, Receiver, Registry, Session};
use super::{Options, Service, CLIENT_FILE, CLIENT_JS};
use crate::http::html::{self, nonce_policy, script_hash, script_safe, NOSNIFF};
use actix_web::body::BodyStream;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{ConnectionType, Method, StatusCode, Version};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::{Instant, MissedTickBehavior};

const NO_CACHE: &str = "no-store, no-cache, no-transform, must-revalidate, max-age=0";
const YEAR: u64 = 31_536_000;
const JS: &str = "application/javascript; charset=UTF-8";
const TEXT: &str = "text/plain; charset=UTF-8";
const HTML: &str = "text/html; charset=UTF-8";

/// `xhr_streaming` starts with 2 KiB of `h`: some browsers deliver nothing of a
/// response before they have that much.
const XHR_PRELUDE_LEN: usize = 2048;
/// `htmlfile` pads its head to this many bytes, for the same reason.
const HTMLFILE_MIN: usize = 1024;

/// The iframe page's one inline script; its CSP allows it by hash.
const IFRAME_SCRIPT: &str = r#"
    document.domain = document.domain;
    SockJS.bootstrap_iframe();
  "#;

const IFRAME: &str = r#"<!DOCTYPE html>
<html>
<head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
  <script src="{{ sockjs_url }}"></script>
  <script>{{ script }}</script>
</head>
<body>
  <h2>Don't panic!</h2>
  <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>
</body>
</html>"#;

const HTMLFILE_HEAD: &str = r#"<!doctype html>
<html><head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
</head><body><h2>Don't panic!</h2>
  <script nonce="{{ nonce }}">
    document.domain = document.domain;
    var c = parent.{{ callback }};
    c.start();
    function p(d) {c.message(d);};
    window.onload = function() {c.stop();};
  </script>"#;

/// Why a SockJS request is refused. The statuses and texts are the protocol's own
/// (sockjs-client and the conformance suite rely on them), mapped in [`Refusal::response`]
/// and nowhere else.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("\"callback\" parameter required")]
    CallbackRequired,
    #[error("invalid \"callback\" parameter")]
    BadCallback,
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error("Payload larger than {0} bytes.")]
    TooLarge(usize),
    #[error("Broken request body.")]
    BrokenBody,
    #[error("Can \"Upgrade\" only to \"WebSocket\".")]
    NotUpgrade,
    #[error("Too many sessions; try again shortly.")]
    Full,
    #[error("The request body did not arrive in {0} s.")]
    BodyTimeout(u64),
    /// An unknown (or closed) session, or a path that is not SockJS's.
    #[error("Not found.")]
    NotFound,
    /// The service refused the session (a bad token or origin): its own response.
    #[error("{0}")]
    Service(actix_web::Error),
}

impl Refusal {
    pub fn response(&self) -> HttpResponse {
        let status = match self {
            Refusal::CallbackRequired | Refusal::BadCallback | Refusal::Payload(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Refusal::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::BrokenBody | Refusal::NotUpgrade => StatusCode::BAD_REQUEST,
            Refusal::Full => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Refusal::NotFound => return HttpResponse::NotFound().finish(),
            Refusal::Service(e) => return e.error_response(),
        };
        HttpResponse::build(status)
            .content_type(TEXT)
            .body(self.to_string())
    }
}

/// One SockJS endpoint: a prefix, its settings, the service it carries and its sessions.
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

struct Inner {
    prefix: String,
    options: Options,
    service: Arc<dyn Service>,
    registry: Arc<Registry>,
    iframe: String,
    iframe_etag: String,
    iframe_csp: String,
}

/// How a receiving transport frames what it writes.
#[derive(Clone)]
enum Format {
    Xhr,
    Jsonp(String),
    XhrStreaming,
    EventSource,
    /// The callback, and the response's CSP nonce.
    HtmlFile(String, String),
}

impl Format {
    fn polling(&self) -> bool {
        matches!(self, Format::Xhr | Format::Jsonp(_))
    }

    fn content_type(&self) -> &'static str {
        match self {
            Format::Xhr | Format::Jsonp(_) | Format::XhrStreaming => JS,
            Format::EventSource => "text/event-stream",
            Format::HtmlFile(..) => HTML,
        }
    }

    fn prelude(&self) -> Option<String> {
        match self {
            Format::XhrStreaming => Some(format!("{}\n", "h".repeat(XHR_PRELUDE_LEN))),
            Format::EventSource => Some("\r\n".to_owned()),
            Format::HtmlFile(cb, nonce) => {
                let head = HTMLFILE_HEAD
                    .replace("{{ callback }}", cb)
                    .replace("{{ nonce }}", nonce);
                let pad = HTMLFILE_MIN.saturating_sub(head.len()) + 14;
                Some(format!("{head}{}\r\n\r\n", " ".repeat(pad)))
            }
            Format::Xhr | Format::Jsonp(_) => None,
        }
    }

    fn wrap(&self, f: &str) -> String {
        match self {
            Format::Xhr | Format::XhrStreaming => format!("{f}\n"),
            Format::EventSource => format!("data: {f}\r\n\r\n"),
            // The frame is the client's data (a title, a STOMP body): escaped so that it
            // can neither end the block nor be read as markup.
            Format::HtmlFile(_, nonce) => format!(
                "<script nonce=\"{nonce}\">\np({});\n</script>\r\n",
                script_safe(&frame::quote(f))
            ),
            Format::Jsonp(cb) => format!("/**/{cb}({});\r\n", frame::quote(f)),
        }
    }
}

impl Endpoint {
    /// An endpoint at `prefix` (no trailing slash, e.g. `/v1/sockjs`).
    pub fn new(prefix: &str, options: Options, service: Arc<dyn Service>) -> Self {
        let prefix = prefix.trim_end_matches('/').to_owned();
        let script = options
            .sockjs_url
            .clone()
            .unwrap_or_else(|| format!("{prefix}/{CLIENT_FILE}"));
        let iframe = IFRAME
            .replace("{{ sockjs_url }}", &html_attr(&script))
            .replace("{{ script }}", IFRAME_SCRIPT);
        // The client script from this server, or from where `sockjs_url` says (its origin).
        let script_source = url::Url::parse(&script)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_else(|| "'self'".to_owned());
        // Its transports connect to this server and frame its htmlfile pages.
        let iframe_csp = format!(
            "default-src 'none'; script-src {script_source} {}; connect-src 'self'; \
             frame-src 'self'; base-uri 'none'; form-action 'none'",
            script_hash(IFRAME_SCRIPT)
        );
        let digest = Sha256::digest(iframe.as_bytes());
        let iframe_etag = format!(
            "\"{}\"",
            digest[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        Endpoint {
            inner: Arc::new(Inner {
                registry: Registry::new(options.max_sessions),
                prefix,
                options,
                service,
                iframe,
                iframe_etag,
                iframe_csp,
            }),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Open sessions of the polling and streaming transports (WebSocket sessions live
    /// as long as their socket and are not in here).
    pub fn sessions(&self) -> usize {
        self.inner.registry.len()
    }

    /// Mounts the endpoint on an actix-web app.
    pub fn configure(&self, cfg: &mut web::ServiceConfig) {
        let ep = self.clone();
        cfg.service(web::scope(&self.inner.prefix).default_service(web::to(
            move |req: HttpRequest, body: web::Payload| {
                let ep = ep.clone();
                async move { Ok::<_, Infallible>(ep.dispatch(req, body).await) }
            },
        )));
    }

    async fn dispatch(&self, req: HttpRequest, body: web::Payload) -> HttpResponse {
        let path = req.uri().path();
        let Some(tail) = path.strip_prefix(self.inner.prefix.as_str()) else {
            return not_found();
        };
        let tail = tail.to_owned();
        let opts = &self.inner.options;
        match tail.as_str() {
            "" | "/" => method(&req, &[Method::GET], || {
                HttpResponse::Ok()
                    .content_type(TEXT)
                    .body("Welcome to SockJS!\n")
            }),
            "/info" => match *req.method() {
                Method::GET => self.info(&req),
                Method::OPTIONS => self.options(&req, "OPTIONS, GET"),
                _ => not_allowed("OPTIONS, GET"),
            },
            "/websocket" if opts.websocket => {
                if req.method() != Method::GET {
                    return not_allowed("GET");
                }
                self.websocket(req, body, true)
            }
            t if t.strip_prefix('/') == Some(CLIENT_FILE) => method(&req, &[Method::GET], || {
                cacheable(HttpResponse::Ok())
                    .content_type(JS)
                    .body(CLIENT_JS)
            }),
            t if is_iframe(t) => method(&req, &[Method::GET], || self.iframe(&req)),
            t => {
                let parts: Vec<&str> = t.split('/').collect();
                match parts.as_slice() {
                    ["", server, session, transport] if valid_id(server) && valid_id(session) => {
                        // A session is named by both segments: the same session id under
                        // another server id is another session.
                        let key = format!("{server}/{session}");
                        let transport = transport.to_string();
                        self.transport(req, body, &key, &transport).await
                    }
                    _ => not_found(),
                }
            }
        }
    }

    fn info(&self, req: &HttpRequest) -> HttpResponse {
        let o = &self.inner.options;
        let body = serde_json::json!({
            "websocket": o.websocket,
            "cookie_needed": o.jsessionid,
            "origins": ["*:*"],
            "entropy": rand::random::<u32>(),
        });
        let mut r = HttpResponse::Ok();
        self.cors(&mut r, req);
        r.insert_header((header::CACHE_CONTROL, NO_CACHE))
            .content_type("application/json; charset=UTF-8")
            .body(body.to_string())
    }

    fn iframe(&self, req: &HttpRequest) -> HttpResponse {
        let etag = &self.inner.iframe_etag;
        let matches = req
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
        if matches {
            return HttpResponse::NotModified()
                .insert_header((header::ETAG, etag.as_str()))
                .finish();
        }
        cacheable(HttpResponse::Ok())
            .insert_header((header::ETAG, etag.as_str()))
            .insert_header((
                header::CONTENT_SECURITY_POLICY,
                self.inner.iframe_csp.as_str(),
            ))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, NOSNIFF))
            .content_type(HTML)
            .body(self.inner.iframe.clone())
    }

    async fn transport(
        &self,
        req: HttpRequest,
        body: web::Payload,
        key: &str,
        transport: &str,
    ) -> HttpResponse {
        let post = [Method::POST];
        let get = [Method::GET];
        let allowed: &[Method] = match transport {
            "websocket" if self.inner.options.websocket => &get,
            "xhr" | "xhr_send" | "xhr_streaming" | "jsonp_send" => &post,
            "eventsource" | "htmlfile" | "jsonp" => &get,
            _ => return not_found(),
        };
        if req.method() == Method::OPTIONS && allowed == post {
            return self.options(&req, "OPTIONS, POST");
        }
        if !allowed.contains(req.method()) {
            return not_allowed(if allowed == post {
                "OPTIONS, POST"
            } else {
                "GET"
            });
        }
        let format = match transport {
            "websocket" => {
                // A WebSocket session lives on its socket, apart from the registry; still,
                // nobody but its owner opens anything under a polling session's name.
                if let Some(s) = self.inner.registry.get(key) {
                    if !self.owns(&req, &s) {
                        return not_found();
                    }
                }
                return self.websocket(req, body, false);
            }
            "xhr_send" | "jsonp_send" => {
                return self.send(req, body, key, transport == "jsonp_send").await
            }
            "xhr" => Format::Xhr,
            "xhr_streaming" => Format::XhrStreaming,
            "eventsource" => Format::EventSource,
            "htmlfile" | "jsonp" => match callback(&req) {
                Ok(cb) if transport == "jsonp" => Format::Jsonp(cb),
                Ok(cb) => Format::HtmlFile(cb, html::nonce()),
                Err(r) => return r.response(),
            },
            _ => return not_found(),
        };
        let session = match self.session(&req, key) {
            Ok(s) => s,
            Err(r) => return r.response(),
        };
        self.receive(&req, session, format).await
    }

    /// Whether `req` speaks for the owner of `session` (a valid token of the same user).
    fn owns(&self, req: &HttpRequest, session: &Session) -> bool {
        self.inner
            .service
            .owner(req)
            .is_ok_and(|owner| owner == session.owner)
    }

    /// The session `key` if the request speaks for its owner, or a new one opened with the
    /// service. Somebody else's session is "not found", exactly as an unknown one is on
    /// `xhr_send`; a request that speaks for nobody opens nothing (the service's refusal,
    /// before a session is counted).
    fn session(&self, req: &HttpRequest, key: &str) -> Result<Arc<Session>, Refusal> {
        if let Some(s) = self.inner.registry.get(key) {
            return if self.owns(req, &s) {
                Ok(s)
            } else {
                Err(Refusal::NotFound)
            };
        }
        let owner = self.inner.service.owner(req).map_err(Refusal::Service)?;
        let o = &self.inner.options;
        let (session, conn) =
            Session::new(owner, o.max_queued_bytes, o.incoming_queue, o.send_timeout);
        match self
            .inner
            .registry
            .insert(key, session.clone(), o.disconnect_delay)
        {
            // Two first requests raced: the other one opened it.
            Ok(Some(existing)) if existing.owner == session.owner => return Ok(existing),
            Ok(Some(_)) => return Err(Refusal::NotFound),
            Ok(None) => {}
            Err(Full) => return Err(Refusal::Full),
        }
        if let Err(e) = self.inner.service.open(req, conn) {
            self.inner.registry.remove(key, &session);
            return Err(Refusal::Service(e));
        }
        Ok(session)
    }

    async fn receive(
        &self,
        req: &HttpRequest,
        session: Arc<Session>,
        format: Format,
    ) -> HttpResponse {
        let o = &self.inner.options;
        let mut r = HttpResponse::Ok();
        r.content_type(format.content_type())
            .insert_header((header::CACHE_CONTROL, NO_CACHE))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, NOSNIFF));
        if let Format::HtmlFile(_, nonce) = &format {
            r.insert_header((header::CONTENT_SECURITY_POLICY, nonce_policy(nonce)));
        }
        self.cors(&mut r, req);
        self.cookie(&mut r, req);
        let polling = format.polling();
        let receiver = Receiver::attach(session, o.heartbeat, polling);
        if polling {
            let frame = match receiver {
                Ok(mut rx) => match rx.next().await {
                    Some(Next::Frame(f) | Next::Last(f)) => f,
                    None => frame::close(3000, "Go away!"),
                },
                Err(f) => f,
            };
            return r.body(format.wrap(&frame));
        }
        let limit = o.stream_bytes_limit;
        let prelude = format.prelude();
        let (rx, first) = match receiver {
            Ok(rx) => (Some(rx), None),
            Err(f) => (None, Some(format.wrap(&f))),
        };
        struct St {
            rx: Option<Receiver>,
            prelude: Option<String>,
            first: Option<String>,
            sent: usize,
            limit: usize,
            format: Format,
        }
        let st = St {
            rx,
            prelude,
            first,
            sent: 0,
            limit,
            format,
        };
        let stream = futures_util::stream::unfold(st, |mut st| async move {
            if let Some(p) = st.prelude.take() {
                return Some((Ok::<_, Infallible>(web::Bytes::from(p)), st));
            }
            if let Some(f) = st.first.take() {
                return Some((Ok(web::Bytes::from(f)), st));
            }
            let rx = st.rx.as_mut()?;
            let text = match rx.next().await? {
                Next::Frame(f) => {
                    let text = st.format.wrap(&f);
                    st.sent += text.len();
                    if st.sent >= st.limit {
                        // The client opens a new request; the browser can let go of
                        // everything this one received.
                        rx.finish();
                    }
                    text
                }
                Next::Last(f) => st.format.wrap(&f),
            };
            Some((Ok(web::Bytes::from(text)), st))
        });
        let mut res = r.body(BodyStream::new(stream));
        if req.version() == Version::HTTP_10 {
            // HTTP/1.0 has no chunked encoding: the body runs until the connection closes.
            res.head_mut().no_chunking(true);
            res.head_mut().set_connection_type(ConnectionType::Close);
        }
        res
    }

    async fn send(
        &self,
        req: HttpRequest,
        body: web::Payload,
        key: &str,
        jsonp: bool,
    ) -> HttpResponse {
        let o = &self.inner.options;
        // Somebody else's session is as unknown as one that never was: nothing of the
        // body is read, nothing reaches the service.
        let Some(session) = self.inner.registry.get(key).filter(|s| self.owns(&req, s)) else {
            return not_found();
        };
        let bytes =
            match tokio::time::timeout(o.body_timeout, read_body(body, o.max_send_bytes)).await {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(refusal)) => return refusal.response(),
                Err(_) => return Refusal::BodyTimeout(o.body_timeout.as_secs()).response(),
            };
        let payload = if jsonp && is_form(&req) {
            serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
                .ok()
                .and_then(|f| f.into_iter().find(|(k, _)| k == "d").map(|(_, v)| v))
                .unwrap_or_default()
                .into_bytes()
        } else {
            bytes.to_vec()
        };
        let messages = match frame::parse_send(&payload) {
            Ok(m) => m,
            Err(e) => return Refusal::Payload(e).response(),
        };
        if let Err(Closed) = session.deliver(messages, o.send_timeout).await {
            return Refusal::NotFound.response();
        }
        let mut r = if jsonp {
            HttpResponse::Ok()
        } else {
            HttpResponse::NoContent()
        };
        r.content_type(TEXT)
            .insert_header((header::CACHE_CONTROL, NO_CACHE))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, NOSNIFF));
        self.cors(&mut r, &req);
        self.cookie(&mut r, &req);
        if jsonp {
            r.body("ok")
        } else {
            r.finish()
        }
    }

    /// A WebSocket: a SockJS session (`raw` false: `o`, `a[...]`, `h`, `c[...]` frames,
    /// JSON arrays from the client) or the raw `/websocket` (one message per WebSocket
    /// message, nothing else). Either way the session lives as long as the socket.
    fn websocket(&self, req: HttpRequest, body: web::Payload, raw: bool) -> HttpResponse {
        let o = &self.inner.options;
        let (response, ws, messages) = match actix_ws::handle(&req, body) {
            Ok(x) => x,
            Err(_) => return Refusal::NotUpgrade.response(),
        };
        let messages = messages
            .max_frame_size(o.max_send_bytes)
            .aggregate_continuations()
            .max_continuation_size(o.max_send_bytes);
        // Who opens it owns it; a request that speaks for nobody opens nothing.
        let owner = match self.inner.service.owner(&req) {
            Ok(owner) => owner,
            Err(e) => return Refusal::Service(e).response(),
        };
        let (session, conn) =
            Session::new(owner, o.max_queued_bytes, o.incoming_queue, o.send_timeout);
        if let Err(e) = self.inner.service.open(&req, conn) {
            return Refusal::Service(e).response();
        }
        let task = SocketTask {
            session,
            ws,
            heartbeat: o.heartbeat,
            send_timeout: o.send_timeout,
            raw,
        };
        actix_web::rt::spawn(task.run(messages));
        response
    }

    /// CORS as SockJS does it, where it is safe: sockjs-client sends every cross-origin XHR
    /// with credentials, so an origin the service accepts gets itself echoed with
    /// `Access-Control-Allow-Credentials` (and a `JSESSIONID` cookie can fly); any other
    /// origin gets `*` without credentials, which a credentialed request cannot read.
    fn cors(&self, r: &mut HttpResponseBuilder, req: &HttpRequest) {
        match req.headers().get(header::ORIGIN) {
            Some(origin) if self.inner.service.trusts_origin(req) => {
                r.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()))
                    .insert_header((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true"))
                    .insert_header((header::VARY, "Origin"));
            }
            Some(_) => {
                r.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
                    .insert_header((header::VARY, "Origin"));
            }
            None => {
                r.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"));
            }
        }
    }

    fn options(&self, req: &HttpRequest, methods: &'static str) -> HttpResponse {
        let mut r = cacheable(HttpResponse::NoContent());
        r.insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, methods))
            .insert_header((header::ACCESS_CONTROL_MAX_AGE, YEAR.to_string()));
        if let Some(h) = req
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .filter(|h| !h.is_empty())
        {
            r.insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, h.clone()));
        }
        self.cors(&mut r, req);
        r.finish()
    }

    fn cookie(&self, r: &mut HttpResponseBuilder, req: &HttpRequest) {
        if !self.inner.options.jsessionid {
            return;
        }
        let value = req
            .headers()
            .get_all(header::COOKIE)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == "JSESSIONID")
            .map(|(_, v)| v)
            .filter(|v| {
                v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            })
            .unwrap_or("dummy");
        r.insert_header((header::SET_COOKIE, format!("JSESSIONID={value}; path=/")));
    }
}

struct SocketTask {
    session: Arc<Session>,
    ws: actix_ws::Session,
    heartbeat: Duration,
    send_timeout: Duration,
    raw: bool,
}

impl SocketTask {
    async fn run(mut self, mut messages: actix_ws::AggregatedMessageStream) {
        let mut changes = self.session.subscribe();
        let mut hb = tokio::time::interval_at(Instant::now() + self.heartbeat, self.heartbeat);
        hb.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut close: Option<CloseReason> = None;
        if !self.raw {
            self.session.lock().opened = true;
            if !self.text(frame::OPEN.to_owned()).await {
                return self.end(None).await;
            }
        }
        loop {
            changes.mark_unchanged();
            let (queued, closing, heartbeats) = {
                let mut st = self.session.lock();
                (
                    Session::take_queue(&mut st),
                    st.close.clone(),
                    st.heartbeats,
                )
            };
            if !queued.is_empty() {
                self.session.changed();
                changes.mark_unchanged();
                let ok = if self.raw {
                    let mut ok = true;
                    for m in queued {
                        ok = ok && self.text(m).await;
                    }
                    ok
                } else {
                    self.text(frame::messages(&queued)).await
                };
                if !ok {
                    break;
                }
                hb.reset();
            }
            if let Some((code, reason)) = closing {
                if self.raw || self.text(frame::close(code, &reason)).await {
                    close = Some(CloseReason {
                        code: CloseCode::from(code),
                        description: Some(reason),
                    });
                }
                break;
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = hb.tick(), if !self.raw => {
                    if heartbeats && !self.text(frame::HEARTBEAT.to_owned()).await {
                        break;
                    }
                }
                msg = messages.recv() => match msg {
                    Some(Ok(AggregatedMessage::Text(text))) => {
                        let parsed = if self.raw {
                            Ok(vec![text.to_string()])
                        } else {
                            frame::parse_ws(&text)
                        };
                        match parsed {
                            Ok(msgs) if msgs.is_empty() => {}
                            Ok(msgs) => {
                                if self.session.deliver(msgs, self.send_timeout).await.is_err() {
                                    continue;
                                }
                            }
                            Err(_) => {
                                // Broken JSON: the protocol says to drop the socket.
                                close = Some(CloseReason {
                                    code: CloseCode::Unsupported,
                                    description: Some("Broken JSON encoding.".to_owned()),
                                });
                                break;
                            }
                        }
                    }
                    Some(Ok(AggregatedMessage::Ping(p))) => {
                        if self.ws.pong(&p).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(AggregatedMessage::Pong(_) | AggregatedMessage::Binary(_))) => {}
                    Some(Ok(AggregatedMessage::Close(_))) | None => break,
                    Some(Err(_)) => {
                        close = Some(CloseReason {
                            code: CloseCode::Protocol,
                            description: None,
                        });
                        break;
                    }
                }
            }
        }
        self.end(close).await;
    }

    async fn text(&mut self, text: String) -> bool {
        matches!(
            tokio::time::timeout(self.send_timeout, self.ws.text(text)).await,
            Ok(Ok(()))
        )
    }

    async fn end(self, reason: Option<CloseReason>) {
        self.session.close(1000, "Normal closure");
        let _ = tokio::time::timeout(self.send_timeout, self.ws.close(reason)).await;
    }
}

fn is_form(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// `iframe.html` and its versioned names (`iframe-0.1.2.html`).
fn is_iframe(tail: &str) -> bool {
    tail.strip_prefix("/iframe")
        .and_then(|t| t.strip_suffix(".html"))
        .is_some_and(|mid| {
            mid.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b"-._".contains(&b))
        })
}

/// A server or session id: anything but empty or with a dot (a file name).
fn valid_id(s: &str) -> bool {
    !s.is_empty() && !s.contains('.') && s.len() <= 128
}

/// The `c` (or `callback`) parameter, checked; the protocol's own 500s otherwise.
fn callback(req: &HttpRequest) -> Result<String, Refusal> {
    let q: Vec<(String, String)> =
        serde_urlencoded::from_str(req.query_string()).unwrap_or_default();
    let cb = q
        .into_iter()
        .find(|(k, _)| k == "c" || k == "callback")
        .map(|(_, v)| v);
    match cb {
        None => Err(Refusal::CallbackRequired),
        Some(cb) if frame::valid_callback(&cb) => Ok(cb),
        Some(_) => Err(Refusal::BadCallback),
    }
}

/// An `xhr_send`/`jsonp_send` body, refused as soon as it passes `limit`.
async fn read_body(mut body: web::Payload, limit: usize) -> Result<web::BytesMut, Refusal> {
    let mut bytes = web::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|_| Refusal::BrokenBody)?;
        if bytes.len() + chunk.len() > limit {
            return Err(Refusal::TooLarge(limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Cached for a year: the iframe page, the client script and CORS preflights.
fn cacheable(mut r: HttpResponseBuilder) -> HttpResponseBuilder {
    let expires = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(YEAR));
    r.insert_header((header::CACHE_CONTROL, format!("public, max-age={YEAR}")))
        .insert_header((header::EXPIRES, expires));
    r
}

fn method(
    req: &HttpRequest,
    allowed: &[Method],
    ok: impl FnOnce() -> HttpResponse,
) -> HttpResponse {
    if allowed.contains(req.method()) {
        ok()
    } else {
        not_allowed("GET")
    }
}

fn not_found() -> HttpResponse {
    Refusal::NotFound.response()
}

fn not_allowed(allow: &'static str) -> HttpResponse {
    HttpResponse::MethodNotAllowed()
        .insert_header((header::ALLOW, HeaderValue::from_static(allow)))
        .finish()
}

/// The script URL inside `src="..."`.
fn html_attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iframe_names() {
        for ok in [
            "/iframe.html",
            "/iframe-a.html",
            "/iframe-.html",
            "/iframe-0.1.2abc-dirty.2144.html",
        ] {
            assert!(is_iframe(ok), "{ok}");
        }
        for bad in [
            "/iframe.htm",
            "/iframe",
            "/IFRAME.HTML",
            "/iframe.HTML",
            "/iframe-/.html",
        ] {
            assert!(!is_iframe(bad), "{bad}");
        }
    }

    #[test]
    fn htmlfile_head_is_padded() {
        let p = Format::HtmlFile("cb".into(), "n0nce".into())
            .prelude()
            .unwrap_or_default();
        assert!(p.len() > HTMLFILE_MIN);
        assert!(p.contains("var c = parent.cb;"));
        assert!(p.contains("<script nonce=\"n0nce\">"));
    }

    #[test]
    fn htmlfile_frames_cannot_end_their_script() {
        let f = Format::HtmlFile("cb".into(), "n".into());
        let hostile = frame::messages(&["</script><script>window.__pwned=1</script>\u{2028}&"]);
        let out = f.wrap(&hostile);
        let inner = out
            .strip_prefix("<script nonce=\"n\">\np(")
            .and_then(|s| s.strip_suffix(");\n</script>\r\n"))
            .unwrap_or_default();
        for bad in ['<', '>', '&', '\u{2028}'] {
            assert!(!inner.contains(bad), "{bad:?} in {out}");
        }
        let back: String = serde_json::from_str(inner).unwrap_or_default();
        assert_eq!(back, hostile);
    }
}
