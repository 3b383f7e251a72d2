//! Scheduled notifications (`deliver_at`): the publishing service lists and cancels its own.

use crate::http::error::{ApiError, Problem};
use crate::http::extract::{query_map, AuthenticatedService};
use crate::http::AppState;
use crate::store::{Cancel, ScheduledItem};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// Schedules per page, at most and by default.
pub const MAX_PAGE: u32 = 200;
const DEFAULT_PAGE: u32 = 50;

/// A page of pending schedules, in the order they were made.
#[derive(Serialize, ToSchema)]
pub struct ScheduledPage {
    pub scheduled: Vec<ScheduledItem>,
    /// Pass as `after` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<Uuid>,
}

/// List this service's pending scheduled notifications.
///
/// Only the calling service's, only those not delivered yet, oldest schedule first.
#[utoipa::path(
    get, path = "/v1/scheduled", tag = "publishing", operation_id = "list_scheduled",
    params(
        ("after" = Option<uuid::Uuid>, Query, nullable = false, description = "A page's `next`: the schedules made after that one."),
        ("limit" = Option<i64>, Query, nullable = false, minimum = 1, maximum = 200, description = "1 to 200, default 50."),
    ),
    responses(
        (status = 200, body = ScheduledPage, description = "The page."),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "A bad query parameter, named in `errors`."),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Not a service token."),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "The database is unavailable; see Retry-After."),
    ),
    security(("service_token" = []))
)]
pub async fn list(
    state: web::Data<AppState>,
    service: AuthenticatedService,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q = query_map(&req)?;
    let after = match q.get("after") {
        None => None,
        Some(s) => Some(
            Uuid::parse_str(s)
                .map_err(|_| ApiError::bad_field("after", "must be a schedule id (a UUID)"))?,
        ),
    };
    let limit = crate::http::extract::int_param(&q, "limit", 1, i64::from(MAX_PAGE))?
        .and_then(|l| u32::try_from(l).ok())
        .unwrap_or(DEFAULT_PAGE);
    let scheduled = state
        .store
        .list_scheduled(&service.name, after, limit)
        .await?;
    let next = (scheduled.len() == limit as usize)
        .then(|| scheduled.last().map(|s| s.schedule_id))
        .flatten();
    Ok(HttpResponse::Ok().json(ScheduledPage { scheduled, next }))
}

/// Cancel a scheduled notification.
///
/// Only before it is delivered: afterwards a 409 (for a day after delivery; later, a 404).
/// A topic's schedule whose fan-out has begun is delivered as far as this goes.
#[utoipa::path(
    delete, path = "/v1/scheduled/{id}", tag = "publishing", operation_id = "cancel_scheduled",
    params(("id" = uuid::Uuid, Path, description = "The `schedule_id` of the 202 answer.")),
    responses(
        (status = 204, description = "Cancelled: it will not be delivered."),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "The id is not a UUID."),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Not a service token."),
        (status = 404, body = Problem, content_type = "application/problem+json", description = "Not a schedule of this service (or delivered more than a day ago)."),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "Already delivered."),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "The database is unavailable; see Retry-After."),
    ),
    security(("service_token" = []))
)]
pub async fn cancel(
    state: web::Data<AppState>,
    service: AuthenticatedService,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = Uuid::parse_str(&path.into_inner())
        .map_err(|_| ApiError::bad_field("id", "must be a schedule id (a UUID)"))?;
    match state.store.cancel_scheduled(&service.name, id).await? {
        Cancel::Cancelled => Ok(HttpResponse::NoContent().finish()),
        Cancel::Delivered => Err(ApiError::Conflict(
            "this scheduled notification was already delivered".into(),
        )),
        Cancel::Unknown => Err(ApiError::NotFound),
    }
}
