//! Request extractors: who is calling, and the body and query read within their limits.

use super::error::ApiError;
use super::AppState;
use crate::auth::oidc::Check;
use crate::auth::{
    bearer_token, AuthError, Principal, Verified, KEYS_REFRESHING, PREFERENCES_SCOPE,
};
use crate::domain::{Cursor, Seq, UserId};
use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A request body's upper bound, from the contract.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The user a user token speaks for. Reads the `Authorization` header only.
#[derive(Debug, Clone)]
pub struct AuthenticatedUser {
    pub user: UserId,
    pub expires_at: i64,
}

/// Like [`AuthenticatedUser`], but also accepts `?access_token=`, because a browser's
/// EventSource and WebSocket cannot set headers. Only stream endpoints use it, to keep
/// tokens out of URLs elsewhere.
#[derive(Debug, Clone)]
pub struct StreamUser(pub AuthenticatedUser);

/// A service allowed to publish.
#[derive(Debug, Clone)]
pub struct AuthenticatedService {
    pub name: String,
}

/// A token whose `scope` holds `preferences:write`: it may read and write any user's
/// preferences (a settings page in the company's own app). Reads the `Authorization` header
/// only. An extractor like the others, so a token naming a signing key being re-fetched
/// waits for the fetch instead of getting a 503.
#[derive(Debug, Clone)]
pub struct PreferencesWriter;

fn bearer(req: &HttpRequest) -> Result<Option<&str>, AuthError> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| AuthError::Invalid("the Authorization header is not text".into()))?;
    bearer_token(value, "the Authorization header").map(Some)
}

fn query_token(req: &HttpRequest) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(req.query_string())
        .ok()?
        .into_iter()
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v)
}

fn state(req: &HttpRequest) -> Result<&web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::Internal("application state is missing".into()))
}

/// The future of every token-checking extractor. Ready at once on the hot path (a local
/// token, or a provider token whose signing key is cached); pending only while the
/// identity provider's key set is re-fetched for a token naming a key it lacks.
pub enum Authenticating<T> {
    Ready(Option<Result<T, ApiError>>),
    Waiting(LocalBoxFuture<'static, Result<T, ApiError>>),
}

impl<T> Authenticating<T> {
    /// The answer now, for a caller that cannot wait (a SockJS session opens in a
    /// synchronous callback): a token whose key is being re-fetched gets a 503, to retry.
    pub fn into_inner(self) -> Result<T, ApiError> {
        match self {
            Authenticating::Ready(result) => result.unwrap_or_else(|| {
                Err(ApiError::Internal(
                    "an extractor was polled after it finished".into(),
                ))
            }),
            Authenticating::Waiting(_) => Err(AuthError::Unavailable(KEYS_REFRESHING).into()),
        }
    }
}

impl<T: Unpin> Future for Authenticating<T> {
    type Output = Result<T, ApiError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Authenticating::Ready(result) => Poll::Ready(result.take().unwrap_or_else(|| {
                Err(ApiError::Internal(
                    "an extractor was polled after it finished".into(),
                ))
            })),
            Authenticating::Waiting(later) => later.as_mut().poll(cx),
        }
    }
}

/// Checks `token` with the state's authenticator (the one place every HTTP face does), and
/// turns who it is into `T` with `then`.
fn authenticating<T: 'static>(
    req: &HttpRequest,
    token: Result<Option<&str>, ApiError>,
    then: fn(&HttpRequest, Verified) -> Result<T, ApiError>,
) -> Authenticating<T> {
    let auth =
        match token.and_then(|t| Ok((t.ok_or(AuthError::Missing)?, state(req)?.auth.clone()))) {
            Ok(found) => found,
            Err(e) => return Authenticating::Ready(Some(Err(e))),
        };
    let (token, auth) = auth;
    match auth.check(token) {
        Check::Done(result) => Authenticating::Ready(Some(
            result.map_err(ApiError::from).and_then(|v| then(req, v)),
        )),
        Check::Wait(wait) => {
            let req = req.clone();
            let token = token.to_owned();
            Authenticating::Waiting(Box::pin(async move {
                wait.finished().await;
                let verified = auth.authenticate(&token).await?;
                then(&req, verified)
            }))
        }
    }
}

fn user_from(req: &HttpRequest, verified: Verified) -> Result<AuthenticatedUser, ApiError> {
    match verified.principal {
        Principal::User(user) => {
            req.extensions_mut().insert(user.clone());
            Ok(AuthenticatedUser {
                user,
                expires_at: verified.expires_at,
            })
        }
        Principal::Service(_) => Err(AuthError::Forbidden(
            "a service token cannot read an inbox; use a user token",
        )
        .into()),
    }
}

fn service_from(_: &HttpRequest, verified: Verified) -> Result<AuthenticatedService, ApiError> {
    match verified.principal {
        Principal::Service(name) => Ok(AuthenticatedService { name }),
        Principal::User(_) => Err(AuthError::Forbidden(
            "a user token cannot publish; use a service token with the notifications:publish scope",
        )
        .into()),
    }
}

/// The scope is the whole check, whatever the principal: a token is let in by what it was
/// granted, not by which kind of token it otherwise is.
fn preferences_writer_from(
    _: &HttpRequest,
    verified: Verified,
) -> Result<PreferencesWriter, ApiError> {
    if verified.scopes.iter().any(|s| s == PREFERENCES_SCOPE) {
        Ok(PreferencesWriter)
    } else {
        Err(AuthError::Forbidden("this needs a token with the preferences:write scope").into())
    }
}

impl FromRequest for AuthenticatedUser {
    type Error = ApiError;
    type Future = Authenticating<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        authenticating(req, bearer(req).map_err(ApiError::from), user_from)
    }
}

impl FromRequest for StreamUser {
    type Error = ApiError;
    type Future = Authenticating<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let query = query_token(req);
        let token = bearer(req)
            .map(|header| header.or(query.as_deref()))
            .map_err(ApiError::from);
        authenticating(req, token, |req, verified| {
            user_from(req, verified).map(StreamUser)
        })
    }
}

impl FromRequest for AuthenticatedService {
    type Error = ApiError;
    type Future = Authenticating<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        authenticating(req, bearer(req).map_err(ApiError::from), service_from)
    }
}

impl FromRequest for PreferencesWriter {
    type Error = ApiError;
    type Future = Authenticating<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        authenticating(
            req,
            bearer(req).map_err(ApiError::from),
            preferences_writer_from,
        )
    }
}

/// Reads a JSON body of at most `limit` bytes. Refuses early on a declared length over
/// the limit, and stops reading as soon as the body passes it, so a large body never sits
/// in memory. The whole body must arrive within the configured body timeout: actix's own
/// timer covers only the head, so without this a client trickling a byte now and then
/// would hold a connection and its buffer for as long as it likes.
pub async fn read_json(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Value, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let body_timeout = state(req)?.body_timeout;
    let read = async {
        let mut body = web::BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::bad_request(format!("could not read the request body: {e}"))
            })?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    let body = tokio::time::timeout(body_timeout, read)
        .await
        .map_err(|_| ApiError::BodyTimeout(body_timeout.as_secs()))??;
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

/// The query string as a map. A repeated parameter keeps its last value.
pub fn query_map(req: &HttpRequest) -> Result<HashMap<String, String>, ApiError> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(req.query_string())
        .map(|pairs| pairs.into_iter().collect())
        .map_err(|e| ApiError::bad_request(format!("the query string cannot be read: {e}")))
}

/// An optional integer query parameter within `min..=max`.
pub fn int_param(
    q: &HashMap<String, String>,
    name: &str,
    min: i64,
    max: i64,
) -> Result<Option<i64>, ApiError> {
    let Some(raw) = q.get(name) else {
        return Ok(None);
    };
    match raw.parse::<i64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
        _ => Err(ApiError::bad_field(
            name,
            format!("must be a whole number from {min} to {max}"),
        )),
    }
}

/// An optional `true`/`false` query parameter.
pub fn bool_param(q: &HashMap<String, String>, name: &str) -> Result<Option<bool>, ApiError> {
    match q.get(name).map(String::as_str) {
        None => Ok(None),
        Some("true" | "1") => Ok(Some(true)),
        Some("false" | "0") => Ok(Some(false)),
        Some(_) => Err(ApiError::bad_field(name, "must be true or false")),
    }
}

/// `after=<seq>` as a cursor; absent means "only what is new from now on".
pub fn cursor_param(q: &HashMap<String, String>) -> Result<Cursor, ApiError> {
    Ok(match int_param(q, "after", 0, i64::MAX)? {
        Some(after) => Cursor::After(Seq::new(after)),
        None => Cursor::Live,
    })
}

/// Either kind of caller, for the one endpoint both may use (`DELETE
/// /v1/notifications/{id}`: a user deletes their copy, a service retracts its message).
/// Reads the `Authorization` header only.
#[derive(Debug, Clone)]
pub enum Caller {
    User(AuthenticatedUser),
    Service(AuthenticatedService),
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Authenticating<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        authenticating(
            req,
            bearer(req).map_err(ApiError::from),
            |req, verified| match verified.principal {
                Principal::Service(_) => service_from(req, verified).map(Caller::Service),
                Principal::User(_) => user_from(req, verified).map(Caller::User),
            },
        )
    }
}
