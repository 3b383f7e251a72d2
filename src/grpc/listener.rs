//! The gRPC listener's own bounds on TCP connections, which tonic and hyper leave open:
//!
//! * **a cap**: at most `max_connections` at once, its descriptors set aside out of the
//!   same open-file budget as the HTTP face's (see `startup::connection_caps`), so a flood
//!   on one listener cannot take the descriptors the other needs; past it a connection is
//!   closed at once (a client sees a reset and retries) instead of waiting in the backlog;
//! * **a handshake deadline**: hyper waits for a connection's first bytes (to tell HTTP/2
//!   from HTTP/1) for ever, so a connection that has not sent its HTTP/2 preface (or an
//!   HTTP/1 request's first bytes, for gRPC-Web) within `handshake` is closed;
//! * **an idle deadline**: HTTP/2 keep-alive pings close dead peers, but a live client
//!   holding a connection with no call on it would keep its descriptor for ever; after
//!   `idle` without an open call it is closed, as grpc-go's `MaxConnectionIdle` does.
//!
//! Both deadlines are one timer per connection, checked when hyper reads: no task per
//! connection. Calls are counted by [`CallsLayer`], through the connection's
//! [`ConnInfo`], which tonic puts into every request's extensions.

use futures_util::Stream;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::codegen::http;
use tonic::codegen::Service;
use tonic::transport::server::Connected;

/// The HTTP/2 client preface is 24 bytes; any HTTP/1 request is longer.
const PREFACE_BYTES: usize = 24;
/// After a failed accept (out of descriptors, most often), wait this long before the next
/// one, rather than spinning on the error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How often a refused connection is logged at most.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

/// The listener's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// From accept to the end of the HTTP/2 preface.
    pub handshake: Duration,
    /// With no call open.
    pub idle: Duration,
}

/// The accepted connections, bounded as [`Limits`] says; each holds its place in the cap
/// until dropped.
pub fn incoming(
    listener: TcpListener,
    limits: Limits,
) -> impl Stream<Item = Result<Conn, io::Error>> + Send + 'static {
    let places = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let state = Accepting {
        listener,
        places,
        limits,
        last_warning: None,
        suppressed: 0,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        let conn = state.next().await;
        Some((Ok::<_, io::Error>(conn), state))
    })
}

struct Accepting {
    listener: TcpListener,
    places: Arc<Semaphore>,
    limits: Limits,
    last_warning: Option<Instant>,
    suppressed: u64,
}

impl Accepting {
    async fn next(&mut self) -> Conn {
        loop {
            let (socket, remote) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(error = %e, "the gRPC listener could not accept");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Ok(place) = self.places.clone().try_acquire_owned() else {
                drop(socket);
                self.log_refusal();
                continue;
            };
            if let Err(e) = socket.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
            return Conn::new(socket, remote, place, self.limits);
        }
    }

    /// One WARN line a second at most: refusals come in floods.
    fn log_refusal(&mut self) {
        let now = Instant::now();
        if self
            .last_warning
            .is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_EVERY)
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            max_connections = self.limits.max_connections,
            suppressed = self.suppressed,
            "refused a gRPC connection: the listener is at its connection cap \
             (TIDINGS__GRPC__MAX_CONNECTIONS)"
        );
        self.last_warning = Some(now);
        self.suppressed = 0;
    }
}

/// What a connection shares with the calls on it.
#[derive(Debug)]
struct Calls {
    open: AtomicUsize,
    /// When the last call ended (or the connection was accepted).
    idle_since: Mutex<Instant>,
}

impl Calls {
    fn idle_since(&self) -> Instant {
        *self
            .idle_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One accepted connection with its deadlines and its place in the cap.
pub struct Conn {
    io: TcpStream,
    remote: SocketAddr,
    calls: Arc<Calls>,
    accepted: Instant,
    limits: Limits,
    /// Preface bytes still to come.
    preface_left: usize,
    timer: Pin<Box<Sleep>>,
    _place: OwnedSemaphorePermit,
}

impl Conn {
    fn new(io: TcpStream, remote: SocketAddr, place: OwnedSemaphorePermit, limits: Limits) -> Self {
        let accepted = Instant::now();
        Self {
            io,
            remote,
            calls: Arc::new(Calls {
                open: AtomicUsize::new(0),
                idle_since: Mutex::new(accepted),
            }),
            accepted,
            limits,
            preface_left: PREFACE_BYTES,
            timer: Box::pin(tokio::time::sleep_until(accepted + limits.handshake)),
            _place: place,
        }
    }

    /// Whether the connection has outlived its deadline; otherwise the timer is armed for
    /// the next one (and registered with `cx`).
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            let now = Instant::now();
            let (deadline, why) = if self.preface_left > 0 {
                (
                    self.accepted + self.limits.handshake,
                    "no HTTP/2 preface in time",
                )
            } else if self.calls.open.load(Ordering::Acquire) > 0 {
                (now + self.limits.idle, "")
            } else {
                (
                    self.calls.idle_since() + self.limits.idle,
                    "idle with no call",
                )
            };
            if deadline <= now {
                return Some(why);
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                this.preface_left = this.preface_left.saturating_sub(read);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.expired(cx) {
                Some(why) => {
                    tracing::debug!(remote = %this.remote, why, "closing a gRPC connection");
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)))
                }
                None => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// What tonic puts into each request's extensions: the connection's call counter.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    calls: Arc<Calls>,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            calls: self.calls.clone(),
        }
    }
}

/// Counts the calls open on each connection, for its idle deadline: a call is open from
/// its request until its response body is dropped (a `Subscribe` stream stays open).
#[derive(Debug, Clone, Copy, Default)]
pub struct CallsLayer;

impl<S> tower_layer::Layer<S> for CallsLayer {
    type Service = CallsService<S>;

    fn layer(&self, inner: S) -> CallsService<S> {
        CallsService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct CallsService<S> {
    inner: S,
}

/// A call's hold on its connection's counter.
struct OpenCall(Option<Arc<Calls>>);

impl OpenCall {
    fn start(calls: Option<Arc<Calls>>) -> Self {
        if let Some(c) = &calls {
            c.open.fetch_add(1, Ordering::AcqRel);
        }
        Self(calls)
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            // The time first, so a reader that sees no call open sees the new time.
            *c.idle_since
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
            c.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for CallsService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let call = OpenCall::start(req.extensions().get::<ConnInfo>().map(|i| i.calls.clone()));
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| CountedBody {
                body: Box::pin(body),
                _call: call,
            }))
        })
    }
}

/// A response body that keeps its call counted until it is dropped.
pub struct CountedBody<B> {
    body: Pin<Box<B>>,
    _call: OpenCall,
}

impl<B: http_body::Body> http_body::Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.get_mut().body.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
