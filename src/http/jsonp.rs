//! JSONP for the short-poll endpoints (`callback=` on `GET /v1/notifications/unread-count`
//! and `GET /v1/notifications?after=`): the seed's AJAX JSONP polling, done safely.
//!
//! It is safe because Tidings authenticates by token, never by cookie: a `<script>` on a
//! page that does not hold the user's token reads nothing, so JSONP's classic hole (any
//! site reading the data with the visitor's cookies) does not exist here. The callback name
//! is checked strictly, the body starts with `/**/` (so a response can never begin with
//! bytes an old plugin would sniff as something else) and carries `nosniff`.

use super::error::{ApiError, Problem};
use super::extract::{query_map, AuthenticatedUser, StreamUser};
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, HttpResponse};
use serde::Serialize;

/// The longest callback name accepted.
pub const MAX_CALLBACK: usize = 64;

/// The `callback` parameter, if any: a JavaScript identifier path (`cb`, `app.badge.set`,
/// `$jq_123`), at most 64 characters. Anything else is a 400 (as a plain problem
/// document: with no valid callback there is nothing to call).
pub fn callback(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(cb) = query_map(req)?.remove("callback") else {
        return Ok(None);
    };
    if valid_callback(&cb) {
        Ok(Some(cb))
    } else {
        Err(ApiError::bad_field(
            "callback",
            format!(
                "must be a JavaScript identifier path (letters, digits, _ and $, dotted), \
                 at most {MAX_CALLBACK} characters, with no part named constructor, \
                 prototype, __proto__, eval or Function"
            ),
        ))
    }
}

/// Nor may any dotted part reach a constructor or the evaluator: `a.constructor.constructor`
/// is `Function`, which would run the response's data as code.
pub fn valid_callback(cb: &str) -> bool {
    cb.len() <= MAX_CALLBACK
        && cb.split('.').all(|part| {
            !["constructor", "prototype", "__proto__", "eval", "Function"].contains(&part)
        })
        && cb.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        })
}

/// The caller: from `Authorization`, or with a callback also from `?access_token=`,
/// since a `<script src>` cannot send headers. Awaited: a provider token naming a key not
/// yet cached waits for the re-fetch, as on every other face.
pub async fn user(req: &HttpRequest, jsonp: bool) -> Result<AuthenticatedUser, ApiError> {
    if jsonp {
        StreamUser::extract(req).await.map(|u| u.0)
    } else {
        AuthenticatedUser::extract(req).await
    }
}

/// The answer: JSON (or the error) as usual without a callback; with one, always a 200
/// script that calls it with the body, or with the problem document on an error.
pub fn respond<T: Serialize>(
    callback: Option<String>,
    result: Result<T, ApiError>,
) -> Result<HttpResponse, ApiError> {
    let Some(cb) = callback else {
        return result.map(|body| HttpResponse::Ok().json(body));
    };
    let json = match result {
        Ok(body) => serde_json::to_string(&body),
        Err(e) => serde_json::to_string::<Problem>(&e.problem()),
    }
    .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(script(&cb, &json))
}

fn script(cb: &str, json: &str) -> HttpResponse {
    // U+2028/2029 are valid in JSON strings but ended string literals in older engines.
    let json = json
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029");
    HttpResponse::Ok()
        .content_type("application/javascript; charset=utf-8")
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(format!("/**/{cb}({json});"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_names() {
        for ok in [
            "cb",
            "app.badge.set",
            "$jq_123",
            "_",
            "a1.b2",
            "evaluate",
            "app.functions",
        ] {
            assert!(valid_callback(ok), "{ok}");
        }
        let long = "a".repeat(MAX_CALLBACK + 1);
        for bad in [
            "",
            "1a",
            "a..b",
            "a.",
            "a-b",
            "a(b)",
            "alert(1)//",
            "a b",
            "a[0]",
            "eval",
            "constructor.constructor",
            "app.constructor",
            "Object.prototype.x",
            "a.__proto__",
            "Function",
            "window.eval",
            &long,
        ] {
            assert!(!valid_callback(bad), "{bad}");
        }
    }
}
