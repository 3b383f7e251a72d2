//! Preferences: a user's mute rules and quiet hours, read and written whole (`PUT`) or in
//! part (`PATCH`, JSON Merge Patch), with the version as a strong `ETag` so two tabs never
//! overwrite each other silently (`If-Match` → 412). A service whose token has the
//! `preferences:write` scope does the same for any user under `/v1/users/{user}/…`.

use crate::api::notifications::UserIdText;
use crate::domain::{merge_patch, FieldError, Preferences, UserId};
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{read_json, AuthenticatedUser, PreferencesWriter, MAX_BODY_BYTES};
use crate::http::AppState;
use crate::store::{NotificationTypeCount, StoreError, StoredPreferences};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// A `PATCH` without `If-Match` re-reads and re-applies itself this many times when another
/// write lands between its read and its write.
const PATCH_ATTEMPTS: usize = 3;

/// The preferences document, as documented: exactly what the server accepts, so that a
/// document valid by the schema is stored and one that is not is a 422 naming the field.
/// (The server validates it by hand, to name every bad field at once.) The one rule JSON
/// Schema cannot say is that quiet hours' `end` differs from their `start`.
#[derive(serde::Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct PreferencesDocument {
    /// At most 200 rules. The most specific matching rule wins: an exact type over a prefix,
    /// a longer prefix over a shorter one, a rule naming the topic over one that does not,
    /// then `allow` over `mute`. With no matching rule everything is delivered.
    #[schema(max_items = 200)]
    rules: Option<Vec<RuleDocument>>,
    /// `push` and `mqtt` are held back during these hours (never the inbox); `null` for none.
    quiet_hours: Option<QuietHoursDocument>,
}

/// A JSON Merge Patch (RFC 7386) of the preferences: `rules`, when present, replaces the
/// rules whole (`null`: none); `quiet_hours` replaces the quiet hours (`null` removes them).
/// Documented with whole quiet hours, the form that is valid whatever is stored; a patch
/// naming only some of their fields merges into the stored ones, if there are any.
#[derive(serde::Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct PreferencesPatch {
    /// At most 200 rules; they replace the stored ones whole.
    #[schema(max_items = 200)]
    rules: Option<Vec<RuleDocument>>,
    /// The new quiet hours; `null` removes them.
    quiet_hours: Option<QuietHoursDocument>,
}

#[derive(serde::Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct RuleDocument {
    /// Exact types (`order.shipped`) or prefixes ending in `.*` (`marketing.*`); empty or
    /// absent: every type. At most 100.
    #[schema(example = json!(["marketing.*"]), max_items = 100, value_type = Option<Vec<TypePatternText>>)]
    types: Option<Vec<String>>,
    /// Topic names; empty or absent: any publish. A rule with topics matches only
    /// publishes to one of them. At most 100.
    #[schema(max_items = 100, value_type = Option<Vec<UserIdText>>)]
    topics: Option<Vec<String>>,
    /// `inbox` (stored at all, and so every live transport), `push`, `mqtt` or `all`.
    #[schema(example = json!(["all"]), min_items = 1)]
    channels: Vec<ChannelName>,
    /// `mute` or `allow`.
    #[schema(example = "mute")]
    action: ActionName,
}

/// A channel a rule applies to: `inbox` (stored at all, and so every live transport),
/// `push` (Web Push), `mqtt` (the MQTT bridge) or `all`.
#[derive(serde::Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = Channel)]
#[allow(dead_code)]
pub enum ChannelName {
    Inbox,
    Push,
    Mqtt,
    All,
}

/// What a rule does to the notifications it matches.
#[derive(serde::Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = RuleAction)]
#[allow(dead_code)]
pub enum ActionName {
    Mute,
    Allow,
}

/// A rule's type pattern, as documented: a notification type or such a type followed by
/// `.*` (`TypePattern::parse`).
pub struct TypePatternText;

impl utoipa::PartialSchema for TypePatternText {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(r"^[a-z0-9._-]{1,64}(\.\*)?$"))
            .description(Some(
                "A notification type (`order.shipped`: 1 to 64 characters of `a-z 0-9 . _ -`), or \
                 one followed by `.*` for every type starting with it and a dot (`marketing.*`).",
            ))
            .examples([serde_json::json!("marketing.*")])
            .into()
    }
}

impl ToSchema for TypePatternText {
    fn name() -> std::borrow::Cow<'static, str> {
        "TypePattern".into()
    }
}

/// Every IANA time zone name the server knows (the `chrono-tz` database it parses them with),
/// as an enum: a pattern could not tell `Europe/Berlin` from `Europe/Atlantis`. With
/// `x-enum-varnames`, since names such as `Etc/GMT+1` and `Etc/GMT-1` would otherwise become
/// one identifier in a generated client (openapi-python-client refuses the document then).
fn time_zone_schema() -> utoipa::openapi::Object {
    let zones = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name());
    let names: Vec<String> = zones.clone().map(zone_var_name).collect();
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(zones))
        .description(Some("An IANA time zone; DST changes are followed."))
        .examples([serde_json::json!("Europe/Berlin")])
        .extensions(Some(
            utoipa::openapi::extensions::ExtensionsBuilder::new()
                .add("x-enum-varnames", names)
                .build(),
        ))
        .build()
}

/// A time zone's name as an identifier: `Etc/GMT+1` → `ETC_GMT_PLUS_1`, `Etc/GMT-1` →
/// `ETC_GMT_MINUS_1`, `America/Port-au-Prince` → `AMERICA_PORT_AU_PRINCE`.
fn zone_var_name(zone: &str) -> String {
    let mut out = String::with_capacity(zone.len() + 8);
    let mut chars = zone.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_ascii_alphanumeric() => out.push(c.to_ascii_uppercase()),
            '+' => out.push_str("_PLUS_"),
            '-' if chars.peek().is_some_and(char::is_ascii_digit) => out.push_str("_MINUS_"),
            _ => out.push('_'),
        }
    }
    out
}

#[derive(serde::Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct QuietHoursDocument {
    /// HH:MM, local time.
    #[schema(example = "22:00", pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    start: String,
    /// HH:MM, local time, not the same as `start`; before it for a window across midnight.
    #[schema(example = "07:00", pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    end: String,
    /// An IANA time zone; DST changes are followed.
    #[schema(schema_with = time_zone_schema)]
    time_zone: String,
}

/// The types of the notifications in the caller's inbox, most frequent first.
#[derive(Serialize, ToSchema)]
pub struct NotificationTypes {
    types: Vec<NotificationTypeCount>,
}

/// The user a `preferences:write` token names in the path.
fn target(user: &str) -> Result<UserId, ApiError> {
    UserId::parse(user).map_err(|m| ApiError::bad_field("user", m))
}

/// `If-Match`: `None` when absent or `*`, else the version it names.
fn if_match(req: &HttpRequest) -> Result<Option<i64>, ApiError> {
    let Some(v) = req.headers().get(header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_field(
            "If-Match",
            "must be the ETag of a GET of these preferences, such as \"3\"",
        )
    };
    let v = v.to_str().map_err(|_| bad())?.trim();
    if v == "*" {
        return Ok(None);
    }
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|n| *n >= 0)
        .map(Some)
        .ok_or_else(bad)
}

fn respond(version: i64, preferences: &Preferences) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::ETAG, format!("\"{version}\"")))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(preferences.to_json())
}

async fn get(state: &AppState, user: &UserId) -> Result<HttpResponse, ApiError> {
    let StoredPreferences {
        version,
        preferences,
    } = state.store.preferences(user).await?;
    Ok(respond(version, &preferences))
}

async fn put(
    state: &AppState,
    user: &UserId,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let expected = if_match(req)?;
    let body = read_json(req, payload, MAX_BODY_BYTES).await?;
    let preferences = Preferences::parse(&body).map_err(ApiError::Validation)?;
    let version = state
        .notifier
        .put_preferences(user, &preferences, expected)
        .await?;
    Ok(respond(version, &preferences))
}

async fn patch(
    state: &AppState,
    user: &UserId,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let expected = if_match(req)?;
    let body = read_json(req, payload, MAX_BODY_BYTES).await?;
    if !body.is_object() {
        return Err(ApiError::Validation(vec![FieldError::new(
            "",
            "a JSON Merge Patch of the preferences must be an object",
        )]));
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let current = state.store.preferences(user).await?;
        let mut doc: Value = current.preferences.to_json();
        merge_patch(&mut doc, &body);
        let preferences = Preferences::parse(&doc).map_err(ApiError::Validation)?;
        // Without `If-Match`, the version just read: a write in between is re-read and the
        // patch applied to it, never overwritten.
        match state
            .notifier
            .put_preferences(
                user,
                &preferences,
                Some(expected.unwrap_or(current.version)),
            )
            .await
        {
            Ok(version) => return Ok(respond(version, &preferences)),
            Err(StoreError::PreconditionFailed { .. })
                if expected.is_none() && attempt < PATCH_ATTEMPTS => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// The caller's preferences.
#[utoipa::path(
    get, path = "/v1/preferences", tag = "preferences",
    responses(
        (status = 200, body = PreferencesDocument, description = "The preferences; `ETag` is their version (\"0\" before the first write).",
            headers(("ETag" = String, description = "The version, for `If-Match`."))),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Not a user token."),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "The database is unavailable; see Retry-After."),
    ),
    security(("user_token" = []))
)]
pub async fn get_own(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
) -> Result<HttpResponse, ApiError> {
    get(&state, &user.user).await
}

/// Replace the caller's preferences.
///
/// Applied to every publish that commits after this answer (and to none before), on every
/// replica; every live connection of the user gets a `preferences` event.
#[utoipa::path(
    put, path = "/v1/preferences", tag = "preferences",
    request_body = PreferencesDocument,
    params(("If-Match" = Option<String>, Header, nullable = false, pattern = "^(\\*|\"[0-9]{1,18}\")$", description = "The `ETag` of the version this replaces; a newer one answers 412.")),
    responses(
        (status = 200, body = PreferencesDocument, description = "Stored; `ETag` is the new version.",
            headers(("ETag" = String, description = "The new version."))),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "The body is not JSON, or `If-Match` is malformed."),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Not a user token."),
        (status = 412, body = Problem, content_type = "application/problem+json", description = "`If-Match` is not the current version (its `ETag` is the current one)."),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "Invalid fields, each named in `errors` (`rules[3].channels[0]`)."),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "The database is unavailable; see Retry-After."),
    ),
    security(("user_token" = []))
)]
pub async fn put_own(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    put(&state, &user.user, &req, payload).await
}

/// Change part of the caller's preferences (RFC 7386 JSON Merge Patch: `rules` is replaced
/// whole, `"quiet_hours": null` removes them).
#[utoipa::path(
    patch, path = "/v1/preferences", tag = "preferences",
    request_body(content = PreferencesPatch, content_type = "application/merge-patch+json"),
    params(("If-Match" = Option<String>, Header, nullable = false, pattern = "^(\\*|\"[0-9]{1,18}\")$", description = "The `ETag` of the version this patches; a newer one answers 412. Without it, the patch applies to the current version.")),
    responses(
        (status = 200, body = PreferencesDocument, description = "Stored; `ETag` is the new version.",
            headers(("ETag" = String, description = "The new version."))),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "The body is not JSON, or `If-Match` is malformed."),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Not a user token."),
        (status = 412, body = Problem, content_type = "application/problem+json", description = "`If-Match` is not the current version."),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "The patched document has invalid fields, each named in `errors`."),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "The database is unavailable; see Retry-After."),
    ),
    security(("user_token" = []))
)]
pub async fn patch_own(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    patch(&state, &user.user, &req, payload).await
}

/// A user's preferences, for a service's own settings page.
#[utoipa::path(
    get, path = "/v1/users/{user}/preferences", tag = "preferences",
    params(("user" = String, Path, description = "The user id.")),
    responses(
        (status = 200, body = PreferencesDocument, description = "As `GET /v1/preferences`.",
            headers(("ETag" = String, description = "The version, for `If-Match`."))),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "The token lacks the `preferences:write` scope."),
    ),
    security(("service_token" = []))
)]
pub async fn get_for(
    state: web::Data<AppState>,
    _: PreferencesWriter,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user = target(&path)?;
    get(&state, &user).await
}

/// Replace a user's preferences, as `PUT /v1/preferences` does for the user.
#[utoipa::path(
    put, path = "/v1/users/{user}/preferences", tag = "preferences",
    request_body = PreferencesDocument,
    params(("user" = String, Path, description = "The user id."),
        ("If-Match" = Option<String>, Header, nullable = false, pattern = "^(\\*|\"[0-9]{1,18}\")$", description = "The `ETag` of the version this replaces.")),
    responses(
        (status = 200, body = PreferencesDocument, description = "Stored; `ETag` is the new version."),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "The body is not JSON, or `If-Match` is malformed."),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "The token lacks the `preferences:write` scope."),
        (status = 412, body = Problem, content_type = "application/problem+json", description = "`If-Match` is not the current version."),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "Invalid fields, each named in `errors`."),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "The database is unavailable; see Retry-After."),
    ),
    security(("service_token" = []))
)]
pub async fn put_for(
    state: web::Data<AppState>,
    _: PreferencesWriter,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let user = target(&path)?;
    put(&state, &user, &req, payload).await
}

/// Change part of a user's preferences, as `PATCH /v1/preferences` does for the user.
#[utoipa::path(
    patch, path = "/v1/users/{user}/preferences", tag = "preferences",
    request_body(content = PreferencesPatch, content_type = "application/merge-patch+json"),
    params(("user" = String, Path, description = "The user id."),
        ("If-Match" = Option<String>, Header, nullable = false, pattern = "^(\\*|\"[0-9]{1,18}\")$", description = "The `ETag` of the version this patches.")),
    responses(
        (status = 200, body = PreferencesDocument, description = "Stored; `ETag` is the new version."),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "The body is not JSON, or `If-Match` is malformed."),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "The token lacks the `preferences:write` scope."),
        (status = 412, body = Problem, content_type = "application/problem+json", description = "`If-Match` is not the current version."),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "Invalid fields, each named in `errors`."),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "The database is unavailable; see Retry-After."),
    ),
    security(("service_token" = []))
)]
pub async fn patch_for(
    state: web::Data<AppState>,
    _: PreferencesWriter,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let user = target(&path)?;
    patch(&state, &user, &req, payload).await
}

/// The types of notification the caller has in their inbox, with counts, most frequent
/// first (at most 500): what a settings page offers to mute.
#[utoipa::path(
    get, path = "/v1/notification-types", tag = "preferences",
    responses(
        (status = 200, body = NotificationTypes, description = "The types and how many of each the inbox holds."),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No token, or an invalid or expired one."),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Not a user token."),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "The database is unavailable; see Retry-After."),
    ),
    security(("user_token" = []))
)]
pub async fn notification_types(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
) -> Result<HttpResponse, ApiError> {
    let types = state.store.notification_types(&user.user).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(NotificationTypes { types }))
}

/// Registers the routes (kept here, so the shared route table gains one line).
pub fn configure(cfg: &mut web::ServiceConfig, not_allowed: fn(&'static str) -> actix_web::Route) {
    cfg.service(
        web::resource("/v1/preferences")
            .route(web::get().to(get_own))
            .route(web::put().to(put_own))
            .route(web::patch().to(patch_own))
            .default_service(not_allowed("GET, PUT, PATCH")),
    )
    .service(
        web::resource("/v1/users/{user}/preferences")
            .route(web::get().to(get_for))
            .route(web::put().to(put_for))
            .route(web::patch().to(patch_for))
            .default_service(not_allowed("GET, PUT, PATCH")),
    )
    .service(
        web::resource("/v1/notification-types")
            .route(web::get().to(notification_types))
            .default_service(not_allowed("GET")),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_time_zone_has_its_own_identifier() {
        assert_eq!(zone_var_name("Etc/GMT+1"), "ETC_GMT_PLUS_1");
        assert_eq!(zone_var_name("Etc/GMT-1"), "ETC_GMT_MINUS_1");
        assert_eq!(
            zone_var_name("America/Port-au-Prince"),
            "AMERICA_PORT_AU_PRINCE"
        );
        let names: std::collections::HashSet<String> = chrono_tz::TZ_VARIANTS
            .iter()
            .map(|tz| zone_var_name(tz.name()))
            .collect();
        assert_eq!(names.len(), chrono_tz::TZ_VARIANTS.len());
    }

    /// The documented names are the ones the domain parses, and all of them.
    #[test]
    fn documented_channels_and_actions_are_the_domains() {
        use crate::domain::{Action, Channel};
        let doc = serde_json::to_value([
            ChannelName::Inbox,
            ChannelName::Push,
            ChannelName::Mqtt,
            ChannelName::All,
        ])
        .unwrap();
        let domain =
            serde_json::to_value([Channel::Inbox, Channel::Push, Channel::Mqtt, Channel::All])
                .unwrap();
        assert_eq!(doc, domain);
        let doc = serde_json::to_value([ActionName::Mute, ActionName::Allow]).unwrap();
        let domain = serde_json::to_value([Action::Mute, Action::Allow]).unwrap();
        assert_eq!(doc, domain);
    }
}
