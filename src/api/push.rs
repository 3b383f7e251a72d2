//! Web Push: the application server key, and the caller's push subscriptions.
//!
//! A browser subscribes with the server's key (`GET /v1/push/vapid-public-key`), then the
//! page hands the `PushSubscription` to `POST /v1/push/subscriptions`; from then on every
//! notification for the user reaches that browser even with no tab open (see
//! `bridges::webpush`). Every endpoint answers 404 with a problem document saying how to
//! turn Web Push on while it is off.

use crate::domain::{parse_subscription, FieldError};
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{query_map, read_json, AuthenticatedUser};
use crate::http::AppState;
use crate::store::{PushSubscription, SubscribeOutcome};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

/// A subscription request is a `PushSubscription`'s JSON: well under this.
const MAX_SUBSCRIPTION_BYTES: usize = 8 * 1024;

/// What the push endpoints need of the settings.
#[derive(Debug, Clone)]
pub struct PushApi {
    /// The VAPID public key; `None` while Web Push is off.
    pub public_key: Option<String>,
    pub max_per_user: u32,
    pub allow_insecure: bool,
}

impl PushApi {
    fn key(&self) -> Result<&str, ApiError> {
        self.public_key.as_deref().ok_or_else(|| {
            ApiError::NotEnabled(
                "Web Push is not enabled on this server: set TIDINGS__WEBPUSH__VAPID_PRIVATE_KEY \
                 (`tidings vapid-keys` prints one) and TIDINGS__WEBPUSH__SUBJECT (mailto: or https:)"
                    .into(),
            )
        })
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VapidPublicKey {
    /// The application server key for `pushManager.subscribe({applicationServerKey})`:
    /// base64url of the uncompressed P-256 public key.
    public_key: String,
}

#[derive(Serialize, ToSchema)]
pub struct SubscriptionKeys {
    /// base64url, the browser's P-256 public key (65 bytes).
    p256dh: String,
    /// base64url, the 16-byte auth secret.
    auth: String,
}

/// A browser's push subscription, as `PushSubscription.toJSON()` gives it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    /// The push service's URL for this browser (https).
    endpoint: String,
    /// Milliseconds since the epoch, or null.
    expiration_time: Option<i64>,
    keys: SubscriptionKeys,
}

impl From<PushSubscription> for Subscription {
    fn from(s: PushSubscription) -> Self {
        Self {
            endpoint: s.endpoint,
            expiration_time: s.expiration_time,
            keys: SubscriptionKeys {
                p256dh: s.p256dh,
                auth: s.auth,
            },
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct SubscriptionList {
    subscriptions: Vec<Subscription>,
}

/// The server's VAPID application server key.
#[utoipa::path(get, path = "/v1/push/vapid-public-key", tag = "push",
    responses(
        (status = 200, body = VapidPublicKey, description = "The key to subscribe with."),
        (status = 404, body = Problem, content_type = "application/problem+json", description = "Web Push is off; the detail says how to turn it on."),
    ))]
pub async fn vapid_public_key(push: web::Data<PushApi>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(VapidPublicKey {
        public_key: push.key()?.to_owned(),
    }))
}

/// Register the caller's browser for push.
///
/// Idempotent on `endpoint` (a repeat refreshes the keys). An endpoint another user had is
/// moved to the caller, and nothing of the other user's is sent to it any more.
#[utoipa::path(post, path = "/v1/push/subscriptions", tag = "push", operation_id = "push_subscribe",
    request_body(content = Object, description = "`PushSubscription.toJSON()`: `endpoint`, `keys.p256dh`, `keys.auth`, optional `expirationTime`."),
    responses(
        (status = 201, body = Subscription, description = "Registered."),
        (status = 200, body = Subscription, description = "Already registered; keys refreshed."),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "The body is empty or not JSON."),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Not a user token."),
        (status = 404, body = Problem, content_type = "application/problem+json", description = "Web Push is off; the detail says how to turn it on."),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "The caller already has the maximum of subscriptions; remove one first."),
        (status = 413, body = Problem, content_type = "application/problem+json", description = "Body over 8 KiB."),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "A field breaks its rule (not https, a private address, a key of the wrong length); `errors` names it."),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "The database is unavailable; see Retry-After."),
    ),
    security(("user_token" = [])))]
pub async fn subscribe(
    state: web::Data<AppState>,
    push: web::Data<PushApi>,
    user: AuthenticatedUser,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    push.key()?;
    let body = read_json(&req, payload, MAX_SUBSCRIPTION_BYTES).await?;
    let sub = parse_subscription(&body, push.allow_insecure).map_err(ApiError::Validation)?;
    let stored = PushSubscription {
        endpoint: sub.endpoint,
        p256dh: sub.p256dh,
        auth: sub.auth,
        expiration_time: sub.expiration_time,
    };
    let outcome = state
        .store
        .push_subscribe(&user.user, &stored, push.max_per_user)
        .await?;
    let mut response = match outcome {
        SubscribeOutcome::Created => HttpResponse::Created(),
        SubscribeOutcome::Updated => HttpResponse::Ok(),
        SubscribeOutcome::Full => {
            return Err(ApiError::Conflict(format!(
                "this user already has {} push subscriptions, the maximum; remove one (DELETE /v1/push/subscriptions?endpoint=…) first",
                push.max_per_user
            )))
        }
    };
    Ok(response.json(Subscription::from(stored)))
}

/// The caller's push subscriptions, oldest first.
#[utoipa::path(get, path = "/v1/push/subscriptions", tag = "push", operation_id = "push_subscriptions",
    responses(
        (status = 200, body = SubscriptionList, description = "The caller's subscriptions."),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Not a user token."),
        (status = 404, body = Problem, content_type = "application/problem+json", description = "Web Push is off; the detail says how to turn it on."),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "The database is unavailable; see Retry-After."),
    ),
    security(("user_token" = [])))]
pub async fn list(
    state: web::Data<AppState>,
    push: web::Data<PushApi>,
    user: AuthenticatedUser,
) -> Result<HttpResponse, ApiError> {
    push.key()?;
    let subs = state.store.push_subscriptions(&user.user).await?;
    Ok(HttpResponse::Ok().json(SubscriptionList {
        subscriptions: subs.into_iter().map(Subscription::from).collect(),
    }))
}

/// Remove one of the caller's push subscriptions, by endpoint.
#[utoipa::path(delete, path = "/v1/push/subscriptions", tag = "push", operation_id = "push_unsubscribe",
    params(("endpoint" = String, Query, description = "The subscription's endpoint URL.")),
    responses(
        (status = 204, description = "Removed; nothing more is pushed to it."),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Not a user token."),
        (status = 404, body = Problem, content_type = "application/problem+json", description = "The caller has no subscription with this endpoint, or Web Push is off."),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "`endpoint` is missing."),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "The database is unavailable; see Retry-After."),
    ),
    security(("user_token" = [])))]
pub async fn unsubscribe(
    state: web::Data<AppState>,
    push: web::Data<PushApi>,
    user: AuthenticatedUser,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    push.key()?;
    let q = query_map(&req)?;
    let Some(endpoint) = q.get("endpoint").filter(|e| !e.is_empty()) else {
        return Err(ApiError::Validation(vec![FieldError::new(
            "endpoint",
            "is required: the subscription's endpoint URL",
        )]));
    };
    if state.store.push_unsubscribe(&user.user, endpoint).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::NotFound)
    }
}
