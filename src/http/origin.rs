//! The Origin check for requests a browser sends with the user's credentials on its own:
//! WebSocket handshakes and the hidden-iframe stream.

use super::error::ApiError;
use actix_web::http::header;
use actix_web::HttpRequest;

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
