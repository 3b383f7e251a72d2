//! Wiring: settings in, a bound server out.

use crate::auth::Authenticator;
use crate::bridges;
use crate::bus::{Bus, RedisBus};
use crate::configuration::{JwtAlgorithm, Settings};
use crate::domain::{Page, Seq, UserId};
use crate::grpc;
use crate::http::AppState;
use crate::hub::{History, HistoryRead, Hub, HubSettings};
use crate::metrics::Metrics;
use crate::notifier::Notifier;
use crate::routes;
use crate::shutdown::Shutdown;
use crate::store::{ListQuery, Outbox, Store};
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
    grpc_port: Option<u16>,
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
        Self::build_with_history(settings, |history| history).await
    }

    /// [`Application::build`], with the hub's [`History`] (the store) passed through `layer`
    /// first. The seam for what sits between the hub and the database: a test slows the
    /// hub's reads down to hold a race window open on purpose, and a read replica or a cache
    /// would go here too. Code, not a setting, so no deployment can switch it on by mistake.
    pub async fn build_with_history(
        settings: Settings,
        layer: impl FnOnce(Arc<dyn History>) -> Arc<dyn History>,
    ) -> anyhow::Result<Self> {
        let auth = Arc::new(authenticator(&settings)?);
        let shutdown = Shutdown::new();
        let stopping = shutdown.child();
        let mqtt_url = settings.mqtt.url.as_ref().map(|u| u.expose_secret());
        let vapid = settings
            .webpush
            .vapid_private_key
            .as_ref()
            .map(|k| crate::domain::VapidKey::parse(k.expose_secret()))
            .transpose()
            .map_err(bridges::webpush::WebPushError::from)?;
        // The outbox is written only when a bridge reads it: otherwise it would only grow.
        let outbox = Outbox::with(mqtt_url.is_some(), vapid.is_some());
        let store = Store::connect(
            settings.database.url.expose_secret(),
            settings.database.max_connections,
            outbox,
            &shutdown.child(),
        )
        .await?;
        let listener = TcpListener::bind(settings.listen_addr()?)?;
        let port = listener.local_addr()?.port();
        let grpc_listener = settings
            .grpc_addr()?
            .map(|addr| {
                TcpListener::bind(addr).map_err(|e| {
                    anyhow::anyhow!(
                        "could not bind the gRPC listener {addr} (TIDINGS__GRPC__LISTEN): {e}"
                    )
                })
            })
            .transpose()?;
        let grpc_port = grpc_listener
            .as_ref()
            .map(|l| l.local_addr().map(|a| a.port()))
            .transpose()?;

        let caps = connection_caps(&settings, grpc_listener.is_some(), raise_fd_limit());
        let max_connections = caps.hub;
        let metrics = Metrics::with_bridges(mqtt_url.is_some(), vapid.is_some());
        // The identity provider's key set has one owner task; it stops with the root.
        if let Some(provider) = auth.provider() {
            let owner = shutdown.child();
            owner.spawn(crate::auth::oidc::run(
                provider.clone(),
                metrics.oidc.clone(),
                owner.token().clone(),
            ));
        }
        // Under the root: it stops with the bus and the committers, after the server has
        // drained, so the last requests' rows are published if the broker is there.
        if let (Some(url), Some(m)) = (mqtt_url, &metrics.mqtt) {
            bridges::mqtt::start(
                store.clone(),
                &settings.mqtt,
                url,
                m.clone(),
                &shutdown.child(),
            )?;
        }
        if let (Some(key), Some(m)) = (&vapid, &metrics.webpush) {
            bridges::webpush::start(
                store.clone(),
                &settings.webpush,
                key.clone(),
                settings.webpush.subject.clone().unwrap_or_default(),
                m.clone(),
                &shutdown.child(),
            )?;
        }
        let push_api = web::Data::new(crate::api::push::PushApi {
            public_key: vapid.as_ref().map(|k| k.public_key()),
            max_per_user: settings.webpush.max_subscriptions_per_user,
            allow_insecure: settings.webpush.allow_insecure_endpoints,
        });
        let hub = Hub::new(
            layer(Arc::new(StoreHistory(store.clone()))),
            metrics.clone(),
            HubSettings {
                max_connections,
                max_connections_per_user: settings.server.max_connections_per_user,
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
                settings.redis.routing,
                hub.clone(),
                &shutdown.child(),
            )?),
            None => Bus::InProcess(hub.clone()),
        };
        let notifier = Notifier::new(store.clone(), bus, metrics.clone())
            .with_max_pending_schedules(settings.schedule.max_pending_per_service);
        let grace = Duration::from_secs(settings.server.shutdown_grace_seconds);
        if let Some(listener) = grpc_listener {
            grpc::spawn(
                grpc::Core {
                    store: store.clone(),
                    notifier: notifier.clone(),
                    auth: auth.clone(),
                    hub: hub.clone(),
                },
                listener,
                grpc::Options {
                    allowed_origins: settings.server.allowed_origins.clone(),
                    heartbeat: Duration::from_secs(settings.server.heartbeat_seconds),
                    grace,
                    limits: grpc::listener::Limits {
                        max_connections: caps.grpc,
                        handshake: Duration::from_secs(settings.grpc.handshake_timeout_seconds),
                        idle: Duration::from_secs(settings.grpc.idle_timeout_seconds),
                    },
                    body_timeout: Duration::from_secs(settings.server.body_timeout_seconds),
                },
                &stopping,
                &shutdown,
            )?;
        }
        let state = web::Data::new(AppState {
            store: store.clone(),
            notifier: notifier.clone(),
            auth,
            hub: hub.clone(),
            heartbeat: Duration::from_secs(settings.server.heartbeat_seconds),
            allowed_origins: settings.server.allowed_origins.clone(),
            body_timeout: Duration::from_secs(settings.server.body_timeout_seconds),
            stopping: stopping.clone(),
        });
        let sockjs = crate::sockjs::tidings::endpoints(state.clone(), &settings.sockjs);
        let stalled = Duration::from_secs(settings.server.stalled_client_seconds);
        let mut server = HttpServer::new(move || {
            App::new()
                .wrap(actix_web::middleware::from_fn(
                    crate::http::head::head_as_get,
                ))
                .wrap(TracingLogger::<RedactingRootSpan>::new())
                .app_data(state.clone())
                .app_data(push_api.clone())
                .configure(routes::configure)
                .configure(|cfg| routes::configure_sockjs(cfg, &sockjs))
                .default_service(web::to(routes::not_found))
        })
        .on_connect(move |io, _| set_stall_timeout(io, stalled))
        // A client that closes its side (FIN) is gone: end the connection at once, which
        // drops a waiting long-poll's handler or a stream's body and so frees its place in
        // the hub. With half-closed connections allowed (actix's default) the dispatcher
        // keeps serving the response, and a stream is noticed closed only when a heartbeat
        // write fails, the second one after the close: twice the heartbeat later. No
        // browser, proxy or EventSource half-closes an HTTP/1.1 request it awaits.
        .h1_allow_half_closed(false)
        .listen(listener)?
        .disable_signals()
        .shutdown_timeout(grace.as_secs());
        if settings.server.workers > 0 {
            server = server.workers(settings.server.workers);
        }
        let server = server.run();

        let purge = shutdown.child();
        purge.spawn(purge_idempotency_keys(store.clone(), purge.clone()));
        // Under the root like the purge: a delivery in flight ends at its commit.
        crate::scheduler::spawn(store.clone(), notifier.clone(), &shutdown.child());
        // Under the root like the purge: a run in flight ends at its next step.
        crate::expiry::spawn(notifier.clone(), &shutdown.child());
        crate::retention::spawn(
            store.clone(),
            notifier,
            settings.retention.clone(),
            metrics.retention.clone(),
            &shutdown.child(),
        );
        tracing::info!(
            port,
            grpc_port,
            backend = store.backend_name(),
            profile = settings.profile.as_str(),
            "tidings is listening"
        );
        Ok(Self {
            port,
            grpc_port,
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

    /// The gRPC listener's port (the OS's pick when configured as port 0); `None` when
    /// `TIDINGS__GRPC__LISTEN=off`.
    pub fn grpc_port(&self) -> Option<u16> {
        self.grpc_port
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

/// File descriptors a replica keeps for other things than its clients' connections: per
/// database connection up to three (SQLite opens the database, its WAL and its shared
/// memory) in each of two pools (Postgres has a write and a read pool), plus
/// [`FD_RESERVE_FIXED`].
const FD_PER_DATABASE_CONNECTION: u64 = 6;
/// The listener, Redis, the runtime's epoll and wake-up descriptors per worker, stdio, log
/// files, and room to accept and answer 503 to clients past the cap (each holds a descriptor
/// while it is refused).
const FD_RESERVE_FIXED: u64 = 256;

/// Raises the soft open-file limit to the hard limit, as Go's runtime and nginx's
/// `worker_rlimit_nofile` do: a service holding one descriptor per client needs many, and the
/// soft limit it inherits (often 1,024) is a default for interactive shells. Returns the
/// soft limit now in force, `None` when unlimited or unknown.
#[cfg(unix)]
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let before = getrlimit(Resource::Nofile);
    if before.current == before.maximum {
        tracing::info!(
            soft = ?before.current,
            hard = ?before.maximum,
            "open-file limit (already at the hard limit)"
        );
        return before.current;
    }
    let raised = Rlimit {
        current: before.maximum,
        maximum: before.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            let after = getrlimit(Resource::Nofile);
            tracing::info!(
                soft_before = ?before.current,
                soft = ?after.current,
                hard = ?after.maximum,
                "raised the open-file limit to the hard limit"
            );
            after.current
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                soft = ?before.current,
                hard = ?before.maximum,
                "could not raise the open-file limit"
            );
            before.current
        }
    }
}

#[cfg(not(unix))]
pub fn raise_fd_limit() -> Option<u64> {
    None
}

/// The connection caps this replica can honour: the hub's (streams, sockets and waiting
/// long-polls, on every face) and the gRPC listener's (TCP connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCaps {
    pub hub: usize,
    /// 0 when the gRPC listener is off.
    pub grpc: usize,
}

/// The share of the open-file budget the gRPC listener may take at most, when the limit is
/// too low for both caps: the HTTP face keeps the rest.
const GRPC_FD_SHARE: u64 = 4;

/// The connection caps this replica can honour with `fd_limit` descriptors. Past the
/// configured cap clients get a clean 503; past the descriptor limit they would get nothing
/// (the accept fails, the client hangs and the log fills with "Too many open files"), so a
/// limit too low for `MAX_CONNECTIONS` lowers the cap instead, with a warning. The gRPC
/// listener's connections come out of the same budget, set aside first (at most a quarter
/// of it), so neither listener can take the descriptors the other needs.
pub fn connection_caps(settings: &Settings, grpc: bool, fd_limit: Option<u64>) -> ConnectionCaps {
    let configured = settings.server.max_connections;
    let grpc_configured = if grpc {
        settings.grpc.max_connections
    } else {
        0
    };
    let Some(limit) = fd_limit else {
        return ConnectionCaps {
            hub: configured,
            grpc: grpc_configured,
        };
    };
    let reserve = FD_RESERVE_FIXED
        + FD_PER_DATABASE_CONNECTION * u64::from(settings.database.max_connections);
    let budget = limit.saturating_sub(reserve);
    let grpc_cap = if grpc {
        let share = usize::try_from(budget / GRPC_FD_SHARE).unwrap_or(usize::MAX);
        grpc_configured.min(share.max(1))
    } else {
        0
    };
    if grpc_cap < grpc_configured {
        tracing::warn!(
            grpc_configured,
            grpc_effective = grpc_cap,
            open_file_limit = limit,
            "the open-file limit is too low for TIDINGS__GRPC__MAX_CONNECTIONS; lowering the \
             gRPC listener's connection cap (raise the hard limit, e.g. `ulimit -Hn` or the \
             container's nofile)"
        );
    }
    let fits = usize::try_from(budget.saturating_sub(grpc_cap as u64)).unwrap_or(usize::MAX);
    if fits >= configured {
        return ConnectionCaps {
            hub: configured,
            grpc: grpc_cap,
        };
    }
    let cap = fits.max(1);
    tracing::warn!(
        configured,
        effective = cap,
        open_file_limit = limit,
        reserve,
        grpc_connections = grpc_cap,
        "the open-file limit is too low for TIDINGS__SERVER__MAX_CONNECTIONS; lowering the \
         connection cap (raise the hard limit, e.g. `ulimit -Hn` or the container's nofile)"
    );
    ConnectionCaps {
        hub: cap,
        grpc: grpc_cap,
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
        match store.purge_scheduled().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "purged delivered schedules"),
            Err(e) => tracing::warn!(error = %Chain(&e), "could not purge delivered schedules"),
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
                floor: Seq::ZERO,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configuration::Profile;

    fn settings() -> Settings {
        let mut s = Settings::defaults(Profile::Local).expect("defaults");
        s.server.max_connections = 20_000;
        s.grpc.max_connections = 10_000;
        s.database.max_connections = 5;
        s
    }

    #[test]
    fn both_caps_fit_in_the_open_file_budget() {
        // 1,024 descriptors, 256 + 6 × 5 reserved: 738 for clients, a quarter for gRPC.
        let caps = connection_caps(&settings(), true, Some(1024));
        assert_eq!(
            caps,
            ConnectionCaps {
                hub: 554,
                grpc: 184
            }
        );
        // Without the gRPC listener HTTP has it all.
        let caps = connection_caps(&settings(), false, Some(1024));
        assert_eq!(caps, ConnectionCaps { hub: 738, grpc: 0 });
    }

    #[test]
    fn a_high_limit_keeps_the_configured_caps() {
        let caps = connection_caps(&settings(), true, Some(1 << 20));
        assert_eq!(
            caps,
            ConnectionCaps {
                hub: 20_000,
                grpc: 10_000
            }
        );
        let caps = connection_caps(&settings(), true, None);
        assert_eq!(
            caps,
            ConnectionCaps {
                hub: 20_000,
                grpc: 10_000
            }
        );
    }
}
