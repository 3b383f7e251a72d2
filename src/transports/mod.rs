//! The live transports: SSE, long-poll and WebSocket. Each opens a hub connection from a
//! cursor and turns [`Frame`](crate::hub::Frame)s into its own wire format.

pub mod iframe;
pub mod longpoll;
pub mod ndjson;
pub mod sse;
pub mod stomp;
pub mod stream;
pub mod ws;

use crate::api::error::ApiError;
use crate::domain::Cursor;
use crate::hub::HubError;
use actix_web::http::header;
use actix_web::HttpRequest;
use std::collections::HashMap;

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        let retry_after = match e {
            HubError::Full(_) => 5,
            HubError::Stopping => 1,
        };
        ApiError::Unavailable {
            detail: format!("{e}; try again shortly"),
            retry_after: Some(retry_after),
        }
    }
}

/// `after=<seq>` as a cursor; absent means "only what is new from now on".
pub fn cursor_param(q: &HashMap<String, String>) -> Result<Cursor, ApiError> {
    Ok(
        match crate::api::extract::int_param(q, "after", 0, i64::MAX)? {
            Some(after) => Cursor::After(after),
            None => Cursor::Live,
        },
    )
}

/// Refuses a cross-site WebSocket request: browsers always send `Origin`, so a page on
/// another site cannot open a socket with the user's credentials. Requests without `Origin`
/// come from non-browser clients and are allowed.
pub fn check_origin(req: &HttpRequest, allowed: &[String]) -> Result<(), ApiError> {
    match req.headers().get(header::ORIGIN) {
        None => Ok(()),
        Some(origin) => check_origin_value(req, origin.to_str().unwrap_or(""), allowed),
    }
}

/// Whether `origin` is this server's own (its host and port are the request's Host) or one
/// of the allowed origins (`*` allows any).
pub fn check_origin_value(
    req: &HttpRequest,
    origin: &str,
    allowed: &[String],
) -> Result<(), ApiError> {
    if allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return Ok(());
    }
    let host = req.connection_info().host().to_owned();
    let same = url::Url::parse(origin).ok().is_some_and(|u| {
        let origin_host = match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            _ => String::new(),
        };
        origin_host.eq_ignore_ascii_case(&host)
    });
    if same {
        Ok(())
    } else {
        Err(crate::auth::AuthError::Forbidden(
            "this origin is not allowed; add it to TIDINGS__SERVER__ALLOWED_ORIGINS",
        )
        .into())
    }
}
