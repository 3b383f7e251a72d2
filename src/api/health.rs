//! Liveness and readiness, for load balancers and orchestrators.

use crate::http::AppState;
use crate::store::OUTBOX_DEPTH_CAP;
use actix_web::{web, HttpResponse};
use serde::Serialize;
use std::time::Duration;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`, `ready`, `not ready` or `shutting down`.
    status: &'static str,
    /// `up` or `down`.
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<&'static str>,
    /// `in-process`, `up` or `down`. A replica whose Redis is down still serves its own
    /// clients, so the bus alone does not make it unready.
    #[serde(skip_serializing_if = "Option::is_none")]
    bus: Option<&'static str>,
    /// Present when the MQTT bridge is on. A broker that is down does not make the replica
    /// unready: the inbox is the source of truth, and the outbox keeps what the broker missed.
    #[serde(skip_serializing_if = "Option::is_none")]
    mqtt: Option<MqttHealth>,
    /// The release this replica runs (`Cargo.toml`'s version): during a rolling upgrade,
    /// which replicas are still on the old one.
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'static str>,
    /// Present when an OpenID Connect provider is configured: `loaded` once its signing
    /// keys are, `loading` before (not ready: its tokens cannot be checked yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    identity_provider: Option<&'static str>,
}

/// The running release, as `tidings --version` also prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Serialize, ToSchema)]
pub struct MqttHealth {
    /// `up` or `down`: whether this replica's bridge is connected to the broker.
    broker: &'static str,
    /// Rows waiting in the outbox, counted when asked (up to a million; the last
    /// measurement when the database does not answer in time).
    outbox: i64,
}

fn identity_provider(state: &AppState) -> Option<&'static str> {
    state
        .auth
        .provider()
        .map(|p| if p.ready() { "loaded" } else { "loading" })
}

/// Counts the outbox now, sets the gauge, and returns it: a backlog shows in `/readyz` and
/// `/metrics` the moment it forms, not at the bridge's next housekeeping pass seconds later.
/// One bounded query (`COUNT` over at most [`OUTBOX_DEPTH_CAP`] rows), with a deadline; on
/// failure the last measurement stands. `None` without a bridge.
async fn measure_outbox(state: &AppState) -> Option<i64> {
    let m = state.hub.metrics().mqtt.as_ref()?;
    let counted = tokio::time::timeout(
        Duration::from_secs(1),
        state.store.outbox_depth(OUTBOX_DEPTH_CAP),
    )
    .await;
    if let Ok(Ok(depth)) = counted {
        m.outbox_depth.set(depth);
    }
    Some(m.outbox_depth.get())
}

async fn mqtt_health(state: &AppState) -> Option<MqttHealth> {
    let outbox = measure_outbox(state).await?;
    state.hub.metrics().mqtt.as_ref().map(|m| MqttHealth {
        broker: if m.connected.get() == 1 { "up" } else { "down" },
        outbox,
    })
}

/// 200 while the process serves.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Health, description = "The process serves.")))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok",
        database: None,
        bus: None,
        mqtt: None,
        version: None,
        identity_provider: None,
    })
}

/// 200 when the database answers; 503 when it does not, or while shutting down.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, body = Health, description = "Ready: the database answers."),
        (status = 503, body = Health, description = "Not ready: the database does not answer, the identity provider's keys have not loaded yet, or the replica is stopping."),
    ))]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let bus = Some(state.notifier.bus_state().as_str());
    if state.stopping.is_cancelled() {
        return HttpResponse::ServiceUnavailable().json(Health {
            status: "shutting down",
            database: None,
            bus,
            mqtt: mqtt_health(&state).await,
            version: Some(VERSION),
            identity_provider: identity_provider(&state),
        });
    }
    let database_up = matches!(
        tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await,
        Ok(Ok(()))
    );
    let keys_loaded = state.auth.ready();
    let ready = database_up && keys_loaded;
    let body = Health {
        status: if ready { "ready" } else { "not ready" },
        database: Some(if database_up { "up" } else { "down" }),
        bus,
        mqtt: mqtt_health(&state).await,
        version: Some(VERSION),
        identity_provider: identity_provider(&state),
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        if !database_up {
            tracing::warn!("readiness check: the database does not answer");
        }
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus metrics: connections by transport, notifications published and delivered,
/// publish-to-delivery latency, bus reconnects, dropped slow consumers.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain; version=0.0.4", body = String, description = "Prometheus text exposition.")))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    measure_outbox(&state).await;
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.hub.metrics().render())
}
