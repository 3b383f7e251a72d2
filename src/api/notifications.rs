//! The REST endpoints: publishing (services) and the inbox (users).

use crate::domain::{ChangeKind, FieldError, IdempotencyKey, MarkRead, Seq};
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{
    bool_param, int_param, query_map, read_json, AuthenticatedService, AuthenticatedUser, Caller,
    MAX_BODY_BYTES,
};
use crate::http::jsonp;
use crate::http::pages::{NotificationPage, UnreadCount};
use crate::http::AppState;
use crate::ingest::{parse_mark_read, publish_plan};
use crate::store::ScheduleReceipt;
use crate::store::{ListQuery, Receipt, DEFAULT_PAGE, MAX_PAGE};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

/// A user id or topic name: 1 to 128 characters of `A-Z a-z 0-9 . _ : @ -`.
pub const ID_PATTERN: &str = "^[A-Za-z0-9._:@-]{1,128}$";

/// A user id or topic name, as documented: the `UserId` schema.
pub struct UserIdText;

impl utoipa::PartialSchema for UserIdText {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(ID_PATTERN))
            .description(Some("1 to 128 characters of `A-Z a-z 0-9 . _ : @ -`."))
            .examples([serde_json::json!("alice")])
            .into()
    }
}

impl ToSchema for UserIdText {
    fn name() -> std::borrow::Cow<'static, str> {
        "UserId".into()
    }
}

/// `null`, for a field that is documented as absent-or-null.
fn null_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Null)
        .description(Some("Absent or `null`; `null` means absent."))
        .build()
}

/// The body of a publish, as documented: exactly one of `recipients` and `topic` (the other
/// absent or `null`). The server validates the body by hand to report every bad field at once;
/// these types only describe it.
#[derive(serde::Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum PublishRequest {
    Recipients(PublishToRecipients),
    Topic(PublishToTopic),
}

/// The two publish bodies in one shape: what selects the audience (`recipients` or
/// `topic`, the other absent or `null`), then the notification's fields, written once so
/// the documented rules cannot drift apart between the two.
macro_rules! publish_body {
    ($(#[$meta:meta])* $name:ident { $($target:tt)* }) => {
        $(#[$meta])*
        #[derive(serde::Deserialize, ToSchema)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        pub struct $name {
            $($target)*
            /// 1 to 64 characters of `a-z 0-9 . _ -`.
            #[serde(rename = "type")]
            #[schema(example = "order.shipped", pattern = "^[a-z0-9._-]{1,64}$")]
            kind: String,
            /// 1 to 200 characters, not only white space, none of them U+0000.
            #[schema(
                example = "Your order has shipped",
                min_length = 1,
                max_length = 200,
                pattern = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"
            )]
            title: String,
            /// At most 4000 characters, none of them U+0000.
            #[schema(max_length = 4000, pattern = "^[^\\u0000]*$")]
            body: Option<String>,
            /// A JSON object of at most 16 KiB serialized, nested at most 32 levels of objects and
            /// arrays (itself included); no key or string in it may contain U+0000.
            #[schema(value_type = Option<Object>)]
            data: Option<serde_json::Value>,
            /// An absolute http(s) URL of at most 2048 characters.
            #[schema(
                max_length = 2048,
                pattern = "^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]{1,4})?([/?#][!-~]*)?$"
            )]
            link: Option<String>,
            /// Passes every recipient's mutes and quiet hours (security, billing). Default false.
            critical: Option<bool>,
            /// Publish at this time instead of now (RFC 3339 with its offset; at most 366 days
            /// ahead): the answer is then a 202 with a `schedule_id`. Now or past means now.
            /// A topic's subscribers are read at that time, not when scheduled.
            #[schema(value_type = Option<String>, format = DateTime, example = "2026-12-24T09:00:00Z")]
            deliver_at: Option<String>,
            /// When it leaves every recipient's inbox, unread count and replay (announced as a
            /// `changed` event, like a retraction): an RFC 3339 time in the future, at most 366
            /// days ahead. Not with `ttl_seconds`.
            #[schema(format = DateTime, example = "2026-12-24T18:00:00Z")]
            expires_at: Option<String>,
            /// `expires_at` as seconds from now: 1 to 31622400 (366 days). Not with `expires_at`.
            #[schema(minimum = 1, maximum = 31622400)]
            ttl_seconds: Option<i64>,
            /// 1 to 64 characters, no control characters. Replaces each recipient's unread notification from the same
            /// service with the same key (deleted, announced as `changed`); the unread count
            /// rises only when nothing was replaced. A read one is kept. Web Push uses it as
            /// the push's `Topic`.
            #[schema(
                min_length = 1,
                max_length = 64,
                pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$",
                example = "chat:general"
            )]
            collapse_key: Option<String>,
        }
    };
}

publish_body!(
    /// A publish to named users.
    PublishToRecipients {
        /// 1 to 1000 distinct user ids; duplicates are folded.
        #[schema(example = json!(["alice", "bob"]), min_items = 1, value_type = Vec<UserIdText>)]
        recipients: Vec<String>,
        #[schema(schema_with = null_schema)]
        #[serde(default)]
        topic: Option<()>,
    }
);

publish_body!(
    /// A publish to every current subscriber of a topic (see `/v1/topics`). Users who subscribe
    /// later do not get it. Not combined with an `Idempotency-Key`.
    PublishToTopic {
        /// 1 to 128 characters of `A-Z a-z 0-9 . _ : @ -`.
        #[schema(example = "team.ops", pattern = "^[A-Za-z0-9._:@-]{1,128}$")]
        topic: String,
        #[schema(schema_with = null_schema)]
        #[serde(default)]
        recipients: Option<()>,
    }
);

/// A publish to `recipients` answers `notifications`; a publish to a `topic` answers
/// `topic` and `recipients` (how many subscribers it reached).
#[derive(Serialize, ToSchema)]
pub struct PublishResponse {
    /// One entry per distinct recipient, in the order they were named.
    #[serde(skip_serializing_if = "Option::is_none")]
    notifications: Option<Vec<Receipt>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recipients: Option<u64>,
    /// How many recipients' preferences muted it (not stored for them; see `/v1/preferences`).
    muted: u64,
}

/// Mark read by `ids` or `up_to`: exactly one of them.
#[derive(serde::Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum ReadRequest {
    Ids(ReadIds),
    UpTo(ReadUpTo),
}

/// Mark these notifications read.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ReadIds {
    /// 1 to 1000 notification ids; ids that are not the caller's are ignored.
    #[schema(value_type = Vec<uuid::Uuid>, min_items = 1, max_items = 1000)]
    ids: Vec<String>,
}

/// Mark every notification up to a seq read.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ReadUpTo {
    /// Marks every notification with seq ≤ up_to read.
    #[schema(minimum = 0)]
    up_to: i64,
}

/// Publish a notification to one or more users.
///
/// One transaction: every recipient gets it, or none does. It is committed before the
/// response is sent and before any live delivery.
#[utoipa::path(
    post, path = "/v1/notifications", tag = "publishing",
    request_body = PublishRequest,
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255, pattern = "^[ -~]+$",
        description = "1 to 255 visible ASCII characters. The same key from the same service within 24 hours returns the first response again; with a different body it is a 422.")),
    responses(
        (status = 201, body = PublishResponse, description = "Committed. An idempotent replay carries `Idempotent-Replayed: true`.",
            headers(("Idempotent-Replayed" = String, description = "`true` when this is the first response again, for a reused Idempotency-Key."))),
        (status = 202, body = ScheduleReceipt, description = "Scheduled (`deliver_at` in the future): stored, and published at that time. Nothing is visible, counted or delivered before. An idempotent replay carries `Idempotent-Replayed: true`.",
            headers(("Idempotent-Replayed" = String, description = "`true` when this is the first response again, for a reused Idempotency-Key."))),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "The body is empty or not JSON."),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Not a service token."),
        (status = 408, body = Problem, content_type = "application/problem+json", description = "The body did not arrive within the body timeout."),
        (status = 413, body = Problem, content_type = "application/problem+json", description = "Body over 64 KiB."),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "Invalid or unknown fields (`deliver_at` more than 366 days ahead or not a time among them), or a reused Idempotency-Key."),
        (status = 429, body = Problem, content_type = "application/problem+json", description = "`deliver_at`: the service already has its maximum of pending scheduled notifications."),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "The database is unavailable; see Retry-After."),
    ),
    security(("service_token" = []))
)]
pub async fn publish(
    state: web::Data<AppState>,
    service: AuthenticatedService,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let key = match req.headers().get("Idempotency-Key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| "must be visible ASCII characters".to_owned())
                .and_then(IdempotencyKey::parse)
                .map_err(|m| ApiError::Validation(vec![FieldError::new("Idempotency-Key", m)]))?,
        ),
    };
    let body = read_json(&req, payload, MAX_BODY_BYTES).await?;
    let plan =
        publish_plan(service.name, key, &body, chrono::Utc::now()).map_err(ApiError::Validation)?;
    let cmd = plan.cmd;
    if let Some(at) = plan.deliver_at {
        let scheduled = state.notifier.schedule(&cmd, at, &plan.request).await?;
        return Ok(scheduled_response(scheduled.receipt, scheduled.replayed));
    }
    if let Some(topic) = &cmd.notification.topic {
        let reached = state.notifier.publish_topic(&cmd).await?;
        return Ok(HttpResponse::Created().json(PublishResponse {
            notifications: None,
            topic: Some(topic.as_str().to_owned()),
            recipients: Some(reached.recipients),
            muted: reached.muted,
        }));
    }
    let outcome = state.notifier.publish(&cmd).await?;
    if let Some(receipt) = outcome.scheduled {
        // This key and body were scheduled when first sent; their time has come since.
        return Ok(scheduled_response(receipt, true));
    }
    let mut response = HttpResponse::Created();
    if outcome.replayed {
        response.insert_header(("Idempotent-Replayed", "true"));
    }
    let muted = outcome.muted();
    Ok(response.json(PublishResponse {
        notifications: Some(outcome.receipts),
        topic: None,
        recipients: None,
        muted,
    }))
}

fn scheduled_response(receipt: ScheduleReceipt, replayed: bool) -> HttpResponse {
    let mut response = HttpResponse::Accepted();
    if replayed {
        response.insert_header(("Idempotent-Replayed", "true"));
    }
    response.json(receipt)
}

/// List the caller's notifications.
///
/// With `after`: seq > after, oldest first (catching up), archived ones included (with
/// `archived_at`) and deleted ones left out; the page then carries `floor`, and
/// `truncated: true` when `after` is below it (retention removed what the client missed, and
/// the page starts at the oldest kept notification), and `ahead: true` when `after` is above the latest
/// seq (nothing after it would come: continue from `seq`). A page for `after=N` covers every seq
/// from N+1 up to the last one it returns, or up to `seq` (the latest) when it returns fewer
/// than `limit`: a seq in that range that is not in the page was deleted (or pruned), not
/// missed, and need not be asked for again. Otherwise the inbox view: newest first, before
/// `before` when given, without archived notifications (`archived=true`: only them).
/// `after` and `before` cannot be combined.
#[utoipa::path(
    get, path = "/v1/notifications", tag = "inbox",
    params(
        ("after" = Option<i64>, Query, nullable = false, minimum = 0, description = "Only seq > after, ascending."),
        ("before" = Option<i64>, Query, nullable = false, minimum = 1, description = "Only seq < before, descending; omitted means from the newest."),
        ("limit" = Option<i64>, Query, nullable = false, minimum = 1, maximum = 200, description = "1 to 200, default 50."),
        ("unread" = Option<bool>, Query, nullable = false, description = "Only unread notifications."),
        ("archived" = Option<bool>, Query, nullable = false, description = "The inbox view (without `after`) leaves archived notifications out; `archived=true` lists only them. Not with `after`: the replay includes archived notifications, with `archived_at` set."),
        ("callback" = Option<String>, Query, nullable = false, min_length = 1, max_length = 64, description = "JSONP: a JavaScript identifier path of at most 64 characters, with no part named `constructor`, `prototype`, `__proto__`, `eval` or `Function`. The answer is then always a 200 `application/javascript` script `/**/callback(body);`, where body is the page or, on an error, the problem document; the token may then come as `access_token`."),
        ("access_token" = Option<String>, Query, nullable = false, description = "The user token, with `callback` only (a `<script>` cannot send headers)."),
    ),
    responses(
        (status = 200, body = NotificationPage, description = "The page (or with `callback`, a script calling it with the page or a problem document)."),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "A bad query parameter, named in `errors`, or both `after` and `before`."),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Not a user token."),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "The database is unavailable; see Retry-After."),
    ),
    security(("user_token" = []))
)]
pub async fn list(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let callback = jsonp::callback(&req)?;
    let result = list_page(&state, &req, callback.is_some()).await;
    jsonp::respond(callback, result)
}

async fn list_page(
    state: &AppState,
    req: &HttpRequest,
    jsonp: bool,
) -> Result<NotificationPage, ApiError> {
    let user = jsonp::user(req, jsonp).await?;
    let q = query_map(req)?;
    let after = int_param(&q, "after", 0, i64::MAX)?;
    let before = int_param(&q, "before", 1, i64::MAX)?;
    let limit = int_param(&q, "limit", 1, i64::from(MAX_PAGE))?.unwrap_or(DEFAULT_PAGE);
    let limit = u32::try_from(limit).unwrap_or(MAX_PAGE);
    let unread_only = bool_param(&q, "unread")?.unwrap_or(false);
    let archived = bool_param(&q, "archived")?;
    if after.is_some() && archived.is_some() {
        return Err(ApiError::bad_field(
            "archived",
            "cannot be combined with `after`: the replay after a cursor includes archived notifications (see `archived_at`)",
        ));
    }
    let query = match (after, before) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_field(
                "before",
                "cannot be combined with `after`; use one of them",
            ))
        }
        (Some(after), None) => ListQuery::After {
            after: Seq::new(after),
            limit,
            unread_only,
        },
        (None, before) => ListQuery::Before {
            before: before.map(Seq::new),
            limit,
            unread_only,
            archived: archived.unwrap_or(false),
        },
    };
    let page = state.store.list(&user.user, query).await?;
    if let ListQuery::After { after, .. } = query {
        return Ok(NotificationPage::after(page, after));
    }
    Ok(NotificationPage {
        notifications: page.notifications,
        unread: page.counts.unread,
        seq: page.counts.seq.get(),
        truncated: None,
        ahead: None,
        floor: None,
        changes: None,
    })
}

/// The caller's unread count and latest seq: the short-poll endpoint.
#[utoipa::path(
    get, path = "/v1/notifications/unread-count", tag = "inbox",
    params(
        ("callback" = Option<String>, Query, nullable = false, min_length = 1, max_length = 64, description = "JSONP: a JavaScript identifier path of at most 64 characters, with no part named `constructor`, `prototype`, `__proto__`, `eval` or `Function`. The answer is then always a 200 `application/javascript` script `/**/callback(body);`, where body is the count or, on an error, the problem document; the token may then come as `access_token`."),
        ("access_token" = Option<String>, Query, nullable = false, description = "The user token, with `callback` only (a `<script>` cannot send headers)."),
    ),
    responses(
        (status = 200, body = UnreadCount, description = "The count (or with `callback`, a script calling it with the count or a problem document)."),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "A bad `callback`."),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Not a user token."),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "The database is unavailable; see Retry-After."),
    ),
    security(("user_token" = []))
)]
pub async fn unread_count(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let callback = jsonp::callback(&req)?;
    let result = async {
        let user = jsonp::user(&req, callback.is_some()).await?;
        Ok(UnreadCount::from(state.store.counts(&user.user).await?))
    }
    .await;
    jsonp::respond(callback, result)
}

/// Mark the caller's notifications read, by ids or up to a seq.
///
/// Ids that are not the caller's are ignored, and nothing says whether they exist. Every
/// open stream and socket of the caller gets the new unread count.
#[utoipa::path(
    post, path = "/v1/notifications/read", tag = "inbox",
    request_body = ReadRequest,
    responses(
        (status = 200, body = UnreadCount, description = "The caller's counters after the change."),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "The body is empty or not JSON."),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Not a user token."),
        (status = 408, body = Problem, content_type = "application/problem+json", description = "The body did not arrive within the body timeout."),
        (status = 413, body = Problem, content_type = "application/problem+json", description = "Body over 64 KiB."),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "Invalid or unknown fields."),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "The database is unavailable; see Retry-After."),
    ),
    security(("user_token" = []))
)]
pub async fn mark_read(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_json(&req, payload, MAX_BODY_BYTES).await?;
    let what = parse_mark_read(&body, &[]).map_err(ApiError::Validation)?;
    let outcome = state.notifier.mark_read(&user.user, &what).await?;
    Ok(HttpResponse::Ok().json(UnreadCount::from(outcome.counts)))
}

async fn change_by_body(
    state: &AppState,
    user: &AuthenticatedUser,
    kind: ChangeKind,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_json(req, payload, MAX_BODY_BYTES).await?;
    let what = parse_mark_read(&body, &[]).map_err(ApiError::Validation)?;
    let outcome = state.notifier.change(&user.user, kind, &what).await?;
    Ok(HttpResponse::Ok().json(UnreadCount::from(outcome.counts)))
}

/// Archive the caller's notifications, by ids or up to a seq.
///
/// Archiving also marks them read. They leave the inbox view (`GET /v1/notifications`
/// without `after`; `archived=true` lists them) but stay in the `after=` replay with
/// `archived_at`, so no client cursor skips them. Ids that are not the caller's are
/// ignored. Every open stream and socket of the caller, on every replica, gets a `changed`
/// event (`"change":"archived"`) and the new unread count.
#[utoipa::path(
    post, path = "/v1/notifications/archive", tag = "inbox",
    request_body = ReadRequest,
    responses(
        (status = 200, body = UnreadCount, description = "The caller's counters after the change."),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "The body is empty or not JSON."),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Not a user token."),
        (status = 408, body = Problem, content_type = "application/problem+json", description = "The body did not arrive within the body timeout."),
        (status = 413, body = Problem, content_type = "application/problem+json", description = "Body over 64 KiB."),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "Invalid or unknown fields."),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "The database is unavailable; see Retry-After."),
    ),
    security(("user_token" = []))
)]
pub async fn archive(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    change_by_body(&state, &user, ChangeKind::Archived, &req, payload).await
}

/// Move the caller's archived notifications back to the inbox view, by ids or up to a seq.
///
/// They stay read. Every open stream and socket of the caller gets a `changed` event
/// (`"change":"unarchived"`).
#[utoipa::path(
    post, path = "/v1/notifications/unarchive", tag = "inbox",
    request_body = ReadRequest,
    responses(
        (status = 200, body = UnreadCount, description = "The caller's counters after the change."),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "The body is empty or not JSON."),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Not a user token."),
        (status = 408, body = Problem, content_type = "application/problem+json", description = "The body did not arrive within the body timeout."),
        (status = 413, body = Problem, content_type = "application/problem+json", description = "Body over 64 KiB."),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "Invalid or unknown fields."),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "The database is unavailable; see Retry-After."),
    ),
    security(("user_token" = []))
)]
pub async fn unarchive(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    change_by_body(&state, &user, ChangeKind::Unarchived, &req, payload).await
}

/// Delete the caller's notifications for good, by ids or up to a seq.
///
/// A deleted notification's seq stays used (no later one takes it) and the `after=`
/// replay skips it: see `GET /v1/notifications` for how a client tells a deleted seq from
/// a missed one. Ids that are not the caller's are ignored. Every open stream and socket
/// of the caller gets a `changed` event (`"change":"deleted"`) and the new unread count.
#[utoipa::path(
    post, path = "/v1/notifications/delete", tag = "inbox",
    request_body = ReadRequest,
    responses(
        (status = 200, body = UnreadCount, description = "The caller's counters after the change."),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "The body is empty or not JSON."),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Not a user token."),
        (status = 408, body = Problem, content_type = "application/problem+json", description = "The body did not arrive within the body timeout."),
        (status = 413, body = Problem, content_type = "application/problem+json", description = "Body over 64 KiB."),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "Invalid or unknown fields."),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "The database is unavailable; see Retry-After."),
    ),
    security(("user_token" = []))
)]
pub async fn delete_many(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    change_by_body(&state, &user, ChangeKind::Deleted, &req, payload).await
}

/// Delete one notification.
///
/// With a user token: the caller's own notification, as `POST /v1/notifications/delete`
/// does for one id; an id that is not the caller's changes nothing and still answers 200
/// with the counters (nothing says whether it exists). With a service token: the
/// message behind this id is deleted for every recipient if that service published it
/// (a retracted alert), and each recipient's connections get a `changed` event; any
/// other id is a 404.
#[utoipa::path(
    delete, path = "/v1/notifications/{id}", tag = "inbox",
    params(("id" = uuid::Uuid, Path, description = "A notification id (a recipient's, as in a publish's receipts).")),
    responses(
        (status = 200, body = UnreadCount, description = "User token: the caller's counters after the change."),
        (status = 204, description = "Service token: deleted for every recipient."),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "The id is not a UUID."),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 404, body = Problem, content_type = "application/problem+json", description = "Service token: not a notification this service published (or it was deleted already)."),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "The database is unavailable; see Retry-After."),
    ),
    security(("user_token" = []), ("service_token" = []))
)]
pub async fn delete_one(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = uuid::Uuid::parse_str(&id)
        .map_err(|_| ApiError::bad_field("id", "must be a notification id (a UUID)"))?;
    match caller {
        Caller::User(user) => {
            let what = MarkRead::Ids(vec![id]);
            let outcome = state
                .notifier
                .change(&user.user, ChangeKind::Deleted, &what)
                .await?;
            Ok(HttpResponse::Ok().json(UnreadCount::from(outcome.counts)))
        }
        Caller::Service(service) => match state.notifier.retract(&service.name, id).await? {
            Some(_) => Ok(HttpResponse::NoContent().finish()),
            None => Err(ApiError::NotFound),
        },
    }
}
