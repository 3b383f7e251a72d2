//! Connections: loopback source-address spreading, HTTP/1.1 keep-alive clients, a publisher
//! pool, and token minting for Tidings.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderMap, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, Mutex};

/// Microseconds since the Unix epoch: the clock both the publisher and the subscribers read.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// `http://host:port[/...]`: where to connect and what to put in `Host`.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub host: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("{url}: only http:// URLs are supported"))?;
        let host = rest.split('/').next().unwrap_or_default().to_owned();
        let addr = match host.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => host
                .to_socket_addrs()
                .with_context(|| format!("{url}: cannot resolve {host}"))?
                .next()
                .ok_or_else(|| anyhow!("{url}: {host} has no address"))?,
        };
        Ok(Self { addr, host })
    }
}

/// Opens TCP connections, spreading them over the loopback source addresses 127.0.0.2.. so
/// that tens of thousands of sockets to one server port never run out of ephemeral ports.
pub struct Connector {
    sources: Vec<IpAddr>,
    next: AtomicUsize,
}

impl Connector {
    pub fn new(source_ips: u8, target: &SocketAddr) -> Self {
        let sources = if target.ip().is_loopback() && target.is_ipv4() {
            (0..source_ips.min(250))
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i)))
                .collect()
        } else {
            Vec::new()
        };
        Self {
            sources,
            next: AtomicUsize::new(0),
        }
    }

    pub async fn connect(&self, addr: SocketAddr) -> Result<TcpStream> {
        let sock = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if !self.sources.is_empty() {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.sources.len();
            sock.bind(SocketAddr::new(self.sources[i], 0))
                .with_context(|| format!("bind {}", self.sources[i]))?;
        }
        let stream = tokio::time::timeout(Duration::from_secs(30), sock.connect(addr))
            .await
            .map_err(|_| anyhow!("connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

pub type Sender = SendRequest<Full<Bytes>>;

/// An HTTP/1.1 client connection; its I/O runs on a task of its own.
pub async fn handshake(stream: TcpStream) -> Result<Sender> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

pub fn request(
    method: Method,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Request<Full<Bytes>>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    Ok(b.body(Full::new(body))?)
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// One keep-alive connection that reconnects when the server closed it. A request that
/// fails is not retried: a publish may have committed even if its answer was lost.
pub struct Client {
    ep: Endpoint,
    connector: Arc<Connector>,
    sender: Option<Sender>,
    timeout: Duration,
}

impl Client {
    pub fn new(ep: Endpoint, connector: Arc<Connector>, timeout: Duration) -> Self {
        Self {
            ep,
            connector,
            sender: None,
            timeout,
        }
    }

    pub fn host(&self) -> &str {
        &self.ep.host
    }

    pub async fn warm(&mut self) -> Result<()> {
        self.sender().await.map(|_| ())
    }

    async fn sender(&mut self) -> Result<&mut Sender> {
        let usable = match self.sender.as_mut() {
            Some(s) => !s.is_closed() && s.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            let stream = self.connector.connect(self.ep.addr).await?;
            self.sender = Some(handshake(stream).await?);
        }
        Ok(self.sender.as_mut().expect("just set"))
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Reply> {
        let timeout = self.timeout;
        let result = tokio::time::timeout(timeout, async {
            let sender = self.sender().await?;
            let resp = sender.send_request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, anyhow::Error>(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        })
        .await;
        match result {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                bail!("timed out after {}s", timeout.as_secs())
            }
        }
    }
}

/// A fixed set of keep-alive clients shared by many concurrent publishes.
pub struct Pool {
    tx: mpsc::UnboundedSender<Client>,
    rx: Mutex<mpsc::UnboundedReceiver<Client>>,
}

impl Pool {
    pub async fn new(size: usize, ep: &Endpoint, connector: &Arc<Connector>) -> Result<Arc<Self>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut warming = tokio::task::JoinSet::new();
        for _ in 0..size.max(1) {
            let mut c = Client::new(ep.clone(), connector.clone(), Duration::from_secs(30));
            warming.spawn(async move {
                let r = c.warm().await;
                (c, r)
            });
        }
        while let Some(done) = warming.join_next().await {
            let (c, r) = done?;
            r.context("opening a publisher connection")?;
            let _ = tx.send(c);
        }
        Ok(Arc::new(Self {
            tx,
            rx: Mutex::new(rx),
        }))
    }

    /// Waits for a free client; give it back with [`Pool::put`].
    pub async fn take(&self) -> Client {
        self.rx
            .lock()
            .await
            .recv()
            .await
            .expect("the pool holds its own sender")
    }

    pub fn put(&self, c: Client) {
        let _ = self.tx.send(c);
    }
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: i64,
    iat: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
}

/// An HS256 token as `tidings token` makes it: a user token, or with `scope` a service token.
pub fn mint(secret: &str, sub: &str, scope: Option<&str>) -> Result<String> {
    let now = (now_us() / 1_000_000) as i64;
    let claims = Claims {
        sub,
        exp: now + 6 * 3600,
        iat: now,
        scope,
    };
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Raises this process's open-file soft limit to its hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}
