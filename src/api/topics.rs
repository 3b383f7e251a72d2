//! Topics: audiences bigger than one user, managed by services.

use super::notifications::UserIdText;
use crate::domain::{FieldError, TopicName, UserId};
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{read_json, AuthenticatedService, MAX_BODY_BYTES};
use crate::http::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// At most this many users in each list of a bulk change.
pub const MAX_BULK: usize = 1000;

fn topic_param(raw: &str) -> Result<TopicName, ApiError> {
    TopicName::parse(raw).map_err(|m| ApiError::Validation(vec![FieldError::new("topic", m)]))
}

fn user_param(raw: &str) -> Result<UserId, ApiError> {
    UserId::parse(raw).map_err(|m| ApiError::Validation(vec![FieldError::new("user", m)]))
}

#[derive(Serialize, ToSchema)]
pub struct TopicInfo {
    topic: String,
    /// How many users are subscribed.
    subscribers: i64,
}

#[derive(Serialize, ToSchema)]
pub struct BulkResult {
    /// Users newly subscribed.
    added: u64,
    /// Users who were subscribed and no longer are.
    removed: u64,
    /// Subscribers after the change.
    subscribers: i64,
}

/// A bulk change: `{"add": [...], "remove": [...]}`, each at most 1000 user ids.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct BulkRequest {
    /// Users to subscribe; absent or `null` means none.
    #[schema(value_type = Option<Vec<UserIdText>>, max_items = 1000)]
    add: Option<Vec<String>>,
    /// Users to unsubscribe; absent or `null` means none.
    #[schema(value_type = Option<Vec<UserIdText>>, max_items = 1000)]
    remove: Option<Vec<String>>,
}

/// A topic and its subscriber count.
#[utoipa::path(get, path = "/v1/topics/{topic}", tag = "topics",
    params(("topic" = String, Path, pattern = "^[A-Za-z0-9._:@-]{1,128}$", description = "1 to 128 characters of `A-Z a-z 0-9 . _ : @ -`.")),
    responses(
        (status = 200, body = TopicInfo, description = "The topic; a topic nobody is subscribed to has 0 subscribers."),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Not a service token."),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "The topic or user id breaks its rule."),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "The database is unavailable; see Retry-After."),
    ),
    security(("service_token" = [])))]
pub async fn info(
    state: web::Data<AppState>,
    _service: AuthenticatedService,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let topic = topic_param(&path)?;
    let subscribers = state.store.topic_size(&topic).await?;
    Ok(HttpResponse::Ok().json(TopicInfo {
        topic: topic.as_str().to_owned(),
        subscribers,
    }))
}

/// Subscribe a user to a topic. Idempotent. The user gets what is published to the topic
/// from now on, not what was published before.
#[utoipa::path(put, path = "/v1/topics/{topic}/subscribers/{user}", tag = "topics",
    params(("topic" = String, Path, pattern = "^[A-Za-z0-9._:@-]{1,128}$", description = "1 to 128 characters of `A-Z a-z 0-9 . _ : @ -`."), ("user" = String, Path, pattern = "^[A-Za-z0-9._:@-]{1,128}$", description = "A user id: 1 to 128 characters of `A-Z a-z 0-9 . _ : @ -`.")),
    responses(
        (status = 204, description = "Subscribed."),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Not a service token."),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "The topic or user id breaks its rule."),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "The database is unavailable; see Retry-After."),
    ),
    security(("service_token" = [])))]
pub async fn subscribe(
    state: web::Data<AppState>,
    _service: AuthenticatedService,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (topic, user) = (topic_param(&path.0)?, user_param(&path.1)?);
    state.store.subscribe(&topic, &[user]).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Unsubscribe a user from a topic. Idempotent.
#[utoipa::path(delete, path = "/v1/topics/{topic}/subscribers/{user}", tag = "topics",
    params(("topic" = String, Path, pattern = "^[A-Za-z0-9._:@-]{1,128}$", description = "1 to 128 characters of `A-Z a-z 0-9 . _ : @ -`."), ("user" = String, Path, pattern = "^[A-Za-z0-9._:@-]{1,128}$", description = "A user id: 1 to 128 characters of `A-Z a-z 0-9 . _ : @ -`.")),
    responses(
        (status = 204, description = "Not subscribed (any more)."),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Not a service token."),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "The topic or user id breaks its rule."),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "The database is unavailable; see Retry-After."),
    ),
    security(("service_token" = [])))]
pub async fn unsubscribe(
    state: web::Data<AppState>,
    _service: AuthenticatedService,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (topic, user) = (topic_param(&path.0)?, user_param(&path.1)?);
    state.store.unsubscribe(&topic, &[user]).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Subscribe and unsubscribe many users at once.
#[utoipa::path(post, path = "/v1/topics/{topic}/subscribers", tag = "topics",
    params(("topic" = String, Path, pattern = "^[A-Za-z0-9._:@-]{1,128}$", description = "1 to 128 characters of `A-Z a-z 0-9 . _ : @ -`.")),
    request_body = BulkRequest,
    responses(
        (status = 200, body = BulkResult, description = "The change is committed."),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "The body is empty or not JSON."),
        (status = 408, body = Problem, content_type = "application/problem+json", description = "The body did not arrive within the body timeout."),
        (status = 413, body = Problem, content_type = "application/problem+json", description = "Body over 64 KiB."),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Not a service token."),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "The topic, a user id or a field breaks its rule."),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "The database is unavailable; see Retry-After."),
    ),
    security(("service_token" = [])))]
pub async fn bulk(
    state: web::Data<AppState>,
    _service: AuthenticatedService,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let topic = topic_param(&path)?;
    let body = read_json(&req, payload, MAX_BODY_BYTES).await?;
    let (add, remove) = parse_bulk(&body).map_err(ApiError::Validation)?;
    let added = state.store.subscribe(&topic, &add).await?;
    let removed = state.store.unsubscribe(&topic, &remove).await?;
    let subscribers = state.store.topic_size(&topic).await?;
    Ok(HttpResponse::Ok().json(BulkResult {
        added,
        removed,
        subscribers,
    }))
}

fn parse_bulk(body: &Value) -> Result<(Vec<UserId>, Vec<UserId>), Vec<FieldError>> {
    let Value::Object(obj) = body else {
        return Err(vec![FieldError::new("", "the body must be a JSON object")]);
    };
    let mut errors: Vec<FieldError> = obj
        .keys()
        .filter(|k| !matches!(k.as_str(), "add" | "remove"))
        .map(|k| FieldError::new(k.clone(), "is not a known field"))
        .collect();
    let mut list = |field: &str| -> Vec<UserId> {
        match obj.get(field) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) if items.len() > MAX_BULK => {
                errors.push(FieldError::new(
                    field,
                    format!("must hold at most {MAX_BULK} user ids"),
                ));
                Vec::new()
            }
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| match v.as_str().map(UserId::parse) {
                    Some(Ok(u)) => Some(u),
                    Some(Err(m)) => {
                        errors.push(FieldError::new(format!("{field}[{i}]"), m));
                        None
                    }
                    None => {
                        errors.push(FieldError::new(format!("{field}[{i}]"), "must be a string"));
                        None
                    }
                })
                .collect(),
            Some(_) => {
                errors.push(FieldError::new(field, "must be an array of user ids"));
                Vec::new()
            }
        }
    };
    let add = list("add");
    let remove = list("remove");
    if errors.is_empty() {
        Ok((add, remove))
    } else {
        Err(errors)
    }
}
