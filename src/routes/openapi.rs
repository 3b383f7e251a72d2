//! The OpenAPI 3.1 document. `openapi/openapi.json` is this, pretty-printed; a test fails
//! when they drift, and `cargo run -- openapi > openapi/openapi.json` regenerates it.

use crate::api::{health, notifications, preferences, push, scheduled, topics};
use crate::http::error;
use crate::transports::{iframe, longpoll, ndjson, sse, stomp, ws};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tidings",
        description = "Notifications with a durable inbox and live delivery. Services publish with one REST call; \
            users read their inbox and unread count, and receive new notifications live over SSE, long-poll or \
            WebSocket. Every error is an RFC 9457 `application/problem+json` document.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        notifications::publish,
        notifications::list,
        notifications::unread_count,
        notifications::mark_read,
        notifications::archive,
        notifications::unarchive,
        notifications::delete_many,
        notifications::delete_one,
        scheduled::list,
        scheduled::cancel,
        sse::stream,
        ndjson::stream,
        iframe::stream,
        longpoll::poll,
        ws::socket,
        stomp::socket,
        topics::info,
        topics::subscribe,
        topics::unsubscribe,
        topics::bulk,
        preferences::get_own,
        preferences::put_own,
        preferences::patch_own,
        preferences::get_for,
        preferences::put_for,
        preferences::patch_for,
        preferences::notification_types,
        push::vapid_public_key,
        push::subscribe,
        push::list,
        push::unsubscribe,
        health::healthz,
        health::readyz,
        health::metrics,
    ),
    components(schemas(
        error::Problem,
        crate::domain::FieldError,
        notifications::UserIdText,
        notifications::PublishToRecipients,
        notifications::PublishToTopic,
        notifications::ReadIds,
        notifications::ReadUpTo,
    )),
    modifiers(&BearerTokens),
    tags(
        (name = "publishing", description = "Services send notifications."),
        (name = "inbox", description = "Users read and mark their own notifications."),
        (name = "live", description = "New notifications as they commit, resuming from the client's cursor: SSE, long-poll, WebSocket."),
        (name = "topics", description = "Services manage who is subscribed to a topic; a publish with `topic` reaches every subscriber."),
        (name = "preferences", description = "Each user's mute rules and quiet hours, applied at commit to every publish."),
        (name = "push", description = "Web Push: browsers subscribe, and get every notification with no tab open."),
        (name = "operations", description = "Health, readiness and metrics."),
    )
)]
pub struct ApiDoc;

struct BearerTokens;

impl Modify for BearerTokens {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, description) in [
            (
                "user_token",
                "A JWT whose `sub` is the user id. Streams also accept it as `?access_token=`.",
            ),
            (
                "service_token",
                "A JWT whose `scope` contains `notifications:publish`; `sub` names the service.",
            ),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .description(Some(description))
                        .build(),
                ),
            );
        }
    }
}

/// The document as committed: pretty JSON with a trailing newline.
pub fn document() -> String {
    let mut json = ApiDoc::openapi().to_pretty_json().unwrap_or_default();
    json.push('\n');
    json
}
