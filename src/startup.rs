//! Wiring: settings in, a bound server out.

use crate::auth::Authenticator;
use crate::bus::{Bus, RedisBus};
use crate::configuration::{JwtAlgorithm, Settings};
use crate::domain::{Page, Seq, UserId};
use crate::http::AppState;
use crate::hub::{History, HistoryRead, Hub, HubSettings};
use crate::metrics::Metrics;
use crate::notifier::Notifier;
use crate::routes;
use crate::shutdown::Shutdown;
use crate::store::{ListQuery, Store};
use crate::telemetry::{Chain, RedactingRootSpan};
use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};
use secrecy::ExposeSecret;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;
use tracing_actix_web::TracingLogger;

/// How often expired idempotency keys are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

pub struct Application {
    port: u16,
    server: Server,
    store: Store,
    hub: Hub,
    grace: Duration,
    /// The replica's one shutdown signal. Two moments, one tree:
    ///
    /// * `stopping`, a child of the root, is cancelled at the signal: readiness fails, and
    ///   the hub (its own child) refuses new connections and tells every stream to
    ///   reconnect elsewhere.
    /// * the root is cancelled once the server has drained its requests: the bus, the
    ///   group committers and the purge task (each a child) end, after the publishes of
    ///   those last requests are committed and announced.
    ///
    /// Every task spawned under it is awaited, bounded by the grace period, before the
    /// store closes.
    shutdown: Shutdown,
    stopping: Shutdown,
}

/// The token checker for these settings, resolving (or, in the local profile, generating)
/// the HS256 secret. Shared by the server and `tidings token`.
pub fn authenticator(settings: &Settings) -> anyhow::Result<Authenticator> {
    let secret = match settings.auth.algorithm {
        JwtAlgorithm::HS256 => Some(settings.resolve_jwt_secret()?),
        _ => None,
    };
    Ok(Authenticator::new(&settings.auth, secret.as_ref())?)
}

impl Application {
    /// Connects to the database (running migrations) and binds the listener. With
    /// `server.listen` on port 0 the OS picks a free port: see [`Application::port`].
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let auth = Arc::new(authenticator(&settings)?);
        let shutdown = Shutdown::new();
        let stopping = shutdown.child();
        let store = Store::connect(
            settings.database.url.expose_secret(),
            settings.database.max_connections,
            &shutdown.child(),
        )
        .await?;
        let listener = TcpListener::bind(settings.listen_addr()?)?;
        let port = listener.local_addr()?.port();

        let metrics = Metrics::new();
        let hub = Hub::new(
            Arc::new(StoreHistory(store.clone())),
            metrics.clone(),
            HubSettings {
                max_connections: settings.server.max_connections,
                connection_queue: settings.server.connection_queue,
            },
            stopping.child().token().clone(),
        );
        // The hub's reaction to the signal: a tracked task, so nothing outlives the store.
        let hub_stopping = stopping.child();
        stopping.spawn({
            let hub = hub.clone();
            async move {
                hub_stopping.cancelled().await;
                hub.shutdown();
            }
        });
        let bus = match &settings.redis.url {
            Some(url) => Bus::Redis(RedisBus::start(
                url.expose_secret(),
                settings.redis.channel.clone(),
                hub.clone(),
                &shutdown.child(),
            )?),
            None => Bus::InProcess(hub.clone()),
        };
        let state = web::Data::new(AppState {
            store: store.clone(),
            notifier: Notifier::new(store.clone(), bus, metrics),
            auth,
            hub: hub.clone(),
            heartbeat: Duration::from_secs(settings.server.heartbeat_seconds),
            allowed_origins: settings.server.allowed_origins.clone(),
            stopping: stopping.clone(),
        });
        let sockjs = crate::sockjs::tidings::endpoints(state.clone(), &settings.sockjs);
        let stalled = Duration::from_secs(settings.server.stalled_client_seconds);
        let grace = Duration::from_secs(settings.server.shutdown_grace_seconds);
        let mut server = HttpServer::new(move || {
            App::new()
                .wrap(TracingLogger::<RedactingRootSpan>::new())
                .app_data(state.clone())
                .configure(routes::configure)
                .configure(|cfg| routes::configure_sockjs(cfg, &sockjs))
                .default_service(web::to(routes::not_found))
        })
        .on_connect(move |io, _| set_stall_timeout(io, stalled))
        .listen(listener)?
        .disable_signals()
        .shutdown_timeout(grace.as_secs());
        if settings.server.workers > 0 {
            server = server.workers(settings.server.workers);
        }
        let server = server.run();

        let purge = shutdown.child();
        purge.spawn(purge_idempotency_keys(store.clone(), purge.clone()));
        tracing::info!(
            port,
            backend = store.backend_name(),
            profile = settings.profile.as_str(),
            "tidings is listening"
        );
        Ok(Self {
            port,
            server,
            store,
            hub,
            grace,
            shutdown,
            stopping,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGTERM or SIGINT, then stops gracefully.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(wait_for_signal()).await
    }

    /// Serves until `stop` completes, then stops gracefully: readiness fails first so load
    /// balancers stop sending clients, in-flight requests get the grace period to finish.
    /// Tests pass their own trigger; the binary passes the signals.
    pub async fn run_until(
        self,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let mut server = std::pin::pin!(self.server);
        let result = tokio::select! {
            // The server ended by itself (it could not serve); nothing to drain.
            r = &mut server => r.map_err(anyhow::Error::from),
            () = stop => {
                tracing::info!(
                    connections = self.hub.open_connections(),
                    "stopping: readiness fails, streams are told to reconnect elsewhere, in-flight requests finish"
                );
                self.stopping.cancel();
                // Streams end with a "reconnect now" (SSE retry, WebSocket 1012) so clients
                // move to another replica at once: wait until they have (bounded), so those
                // last frames go out before the server stops writing.
                if tokio::time::timeout(self.grace, self.hub.drained()).await.is_err() {
                    tracing::warn!(
                        connections = self.hub.open_connections(),
                        "streams still open after the grace period; stopping anyway"
                    );
                }
                let stopping = handle.stop(true);
                // The grace period starts now, at the signal, not when the server started.
                // The stop command is carried out by the server future itself: poll both.
                match tokio::time::timeout(self.grace + Duration::from_secs(2), async {
                    let ((), served) = tokio::join!(stopping, &mut server);
                    served
                })
                .await
                {
                    Ok(r) => r.map_err(anyhow::Error::from),
                    Err(_) => {
                        tracing::warn!("the grace period passed; exiting anyway");
                        Ok(())
                    }
                }
            }
        };
        self.shutdown.cancel();
        let running = self.shutdown.wait_for_tasks(self.grace).await;
        if running > 0 {
            tracing::warn!(
                tasks = running,
                "background tasks still running after the grace period"
            );
        }
        self.store.close().await;
        result
    }
}

/// Sets TCP_USER_TIMEOUT on an accepted connection: the kernel closes it when sent data
/// stays unacknowledged, or unsent behind a zero window, for longer than `timeout`. This is
/// what finally disconnects a client that stopped reading, without a task or a timer per
/// connection in the process.
fn set_stall_timeout(io: &dyn std::any::Any, timeout: Duration) {
    if let Some(tcp) = io.downcast_ref::<actix_web::rt::net::TcpStream>() {
        if let Err(e) = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(timeout)) {
            tracing::debug!(error = %e, "could not set TCP_USER_TIMEOUT");
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Keeps the idempotency table bounded: keys live 24 hours.
async fn purge_idempotency_keys(store: Store, shutdown: Shutdown) {
    loop {
        match store.purge_idempotency_keys().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "purged expired idempotency keys"),
            Err(e) => tracing::warn!(error = %Chain(&e), "could not purge idempotency keys"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PURGE_EVERY) => {}
        }
    }
}

/// The store as the hub's [`History`]: the hub replays from the database without
/// importing the store, which sits upstream of it.
#[derive(Debug)]
struct StoreHistory(Store);

impl History for StoreHistory {
    fn after(&self, user: UserId, after: Seq, limit: u32) -> HistoryRead {
        let store = self.0.clone();
        Box::pin(async move {
            let q = ListQuery::After {
                after,
                limit,
                unread_only: false,
            };
            Ok(store.list(&user, q).await?)
        })
    }

    fn latest(&self, user: UserId) -> HistoryRead {
        let store = self.0.clone();
        Box::pin(async move {
            Ok(Page {
                notifications: Vec::new(),
                counts: store.counts(&user).await?,
            })
        })
    }
}
