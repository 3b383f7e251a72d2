//! The one place where errors become HTTP statuses and RFC 9457 problem documents.

use crate::auth::AuthError;
use crate::domain::FieldError;
use crate::hub::HubError;
use crate::store::StoreError;
use crate::telemetry::Chain;
use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request could not be read at all: malformed JSON, a bad query parameter.
    #[error("{detail}")]
    BadRequest {
        detail: String,
        errors: Vec<FieldError>,
    },
    /// Well-formed, but a field breaks a rule.
    #[error("the request has invalid fields")]
    Validation(Vec<FieldError>),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("the request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// The body did not arrive in time (a client trickling it, or stalled mid-way).
    #[error("the request body did not arrive within {0} seconds; send it at once")]
    BodyTimeout(u64),
    #[error("this Idempotency-Key was already used with a different request body; use a new key for a new request")]
    IdempotencyMismatch,
    #[error("no such resource")]
    NotFound,
    /// `If-Match` named a version that is no longer the current one (RFC 9110 §13.1.1).
    #[error("the resource changed since version {current} was read (`If-Match`); read it again")]
    PreconditionFailed { current: i64 },
    /// A feature this deployment has not turned on; the detail says how to.
    #[error("{0}")]
    NotEnabled(String),
    /// The request conflicts with what the caller already has (a cap reached).
    #[error("{0}")]
    Conflict(String),
    /// With the methods the resource does allow, for the `Allow` header (RFC 9110 §15.5.6).
    #[error("this method is not allowed here; use {0}")]
    MethodNotAllowed(&'static str),
    /// This user already holds their maximum of live connections on the replica: close one,
    /// or try again later. Not a 503: the replica is fine, and a retry elsewhere would not
    /// help a client that opens connections without end.
    #[error("{detail}")]
    TooManyConnections { detail: String, retry_after: u64 },
    /// The service holds its maximum of pending scheduled notifications: cancel some, or wait
    /// until some are delivered. Names `deliver_at`, the field that asked for a schedule.
    #[error("this service already has {0} scheduled notifications pending, the most allowed (TIDINGS__SCHEDULE__MAX_PENDING_PER_SERVICE); cancel some or wait for them to be delivered")]
    TooManyScheduled(u64),
    /// A dependency is down or the replica is full or stopping: try again, maybe elsewhere.
    #[error("{detail}")]
    Unavailable {
        detail: String,
        retry_after: Option<u64>,
    },
    /// A bug: logged with its cause chain, reported without it.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError::BadRequest {
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    pub fn bad_field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError::BadRequest {
            detail: format!("`{field}` {message}"),
            errors: vec![FieldError::new(field, message)],
        }
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        ApiError::Unavailable {
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// The database cannot be read or written right now. Clients retry after a moment;
    /// the same answer whether the store said so or the hub's read for a live connection
    /// failed.
    pub fn database_unavailable() -> Self {
        ApiError::Unavailable {
            detail: "the database is unavailable; try again shortly".into(),
            retry_after: Some(2),
        }
    }

    /// (type slug, title) of the problem document.
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::BadRequest { .. } => ("bad-request", "Bad request"),
            ApiError::Validation(_) => ("validation", "Invalid request"),
            ApiError::Auth(AuthError::Forbidden(_)) => ("forbidden", "Forbidden"),
            ApiError::Auth(AuthError::Unavailable(_)) => ("unavailable", "Service unavailable"),
            ApiError::Auth(_) => ("unauthorized", "Unauthorized"),
            ApiError::PayloadTooLarge(_) => ("payload-too-large", "Request body too large"),
            ApiError::BodyTimeout(_) => ("request-timeout", "Request timeout"),
            ApiError::IdempotencyMismatch => ("idempotency-key-reused", "Idempotency key reused"),
            ApiError::NotFound => ("not-found", "Not found"),
            ApiError::PreconditionFailed { .. } => ("precondition-failed", "Precondition failed"),
            ApiError::NotEnabled(_) => ("not-enabled", "Not enabled"),
            ApiError::Conflict(_) => ("conflict", "Conflict"),
            ApiError::MethodNotAllowed(_) => ("method-not-allowed", "Method not allowed"),
            ApiError::TooManyConnections { .. } => ("too-many-connections", "Too many connections"),
            ApiError::TooManyScheduled(_) => {
                ("too-many-scheduled", "Too many scheduled notifications")
            }
            ApiError::Unavailable { .. } => ("unavailable", "Service unavailable"),
            ApiError::Internal(_) => ("internal", "Internal server error"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::IdempotencyMismatch => ApiError::IdempotencyMismatch,
            StoreError::PreconditionFailed { current } => {
                ApiError::PreconditionFailed { current: *current }
            }
            StoreError::TooManyScheduled { max } => ApiError::TooManyScheduled(*max),
            StoreError::Unavailable(_) => {
                tracing::error!(error = %Chain(&e), "database unavailable");
                ApiError::database_unavailable()
            }
            _ => ApiError::Internal(Box::new(e)),
        }
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        let retry_after = match e {
            HubError::UserFull(_) => {
                return ApiError::TooManyConnections {
                    detail: e.to_string(),
                    retry_after: 10,
                }
            }
            HubError::Full(_) => 5,
            HubError::Stopping => 1,
            HubError::Unavailable => 2,
        };
        ApiError::Unavailable {
            detail: format!("{e}; try again shortly"),
            retry_after: Some(retry_after),
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem, such as `urn:tidings:problem:validation`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// For validation errors: every field that breaks a rule, and how.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl ApiError {
    /// The problem document of this error: the body of its response, and what a JSONP
    /// callback is handed instead (a `<script>` cannot read a status).
    pub fn problem(&self) -> Problem {
        let (slug, title) = self.kind();
        let detail = match self {
            ApiError::Internal(_) => {
                tracing::error!(error = %Chain(self), "internal error");
                "something went wrong on our side; it has been logged".to_owned()
            }
            ApiError::Validation(errors) => {
                let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
                format!("fix these fields: {}", fields.join(", "))
            }
            other => other.to_string(),
        };
        let errors = match self {
            ApiError::Validation(errors) | ApiError::BadRequest { errors, .. } => errors.clone(),
            ApiError::TooManyScheduled(max) => vec![FieldError::new(
                "deliver_at",
                format!("this service already has {max} scheduled notifications pending"),
            )],
            _ => Vec::new(),
        };
        Problem {
            kind: format!("urn:tidings:problem:{slug}"),
            title: title.to_owned(),
            status: self.status_code().as_u16(),
            detail,
            errors,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Validation(_) | ApiError::IdempotencyMismatch => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::Auth(AuthError::Forbidden(_)) => StatusCode::FORBIDDEN,
            ApiError::Auth(AuthError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Auth(_) => StatusCode::UNAUTHORIZED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            ApiError::NotFound | ApiError::NotEnabled(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooManyConnections { .. } | ApiError::TooManyScheduled(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let problem = self.problem();
        let mut builder = HttpResponse::build(status);
        builder.content_type("application/problem+json");
        match self {
            ApiError::Auth(AuthError::Missing) => {
                builder.insert_header((header::WWW_AUTHENTICATE, r#"Bearer realm="tidings""#));
            }
            ApiError::Auth(AuthError::Invalid(_) | AuthError::Expired) => {
                builder.insert_header((
                    header::WWW_AUTHENTICATE,
                    format!(
                        r#"Bearer realm="tidings", error="invalid_token", error_description="{}""#,
                        self.to_string().replace('"', "'")
                    ),
                ));
            }
            ApiError::Auth(AuthError::Unavailable(_)) => {
                builder.insert_header((header::RETRY_AFTER, "1"));
            }
            ApiError::Unavailable {
                retry_after: Some(secs),
                ..
            }
            | ApiError::TooManyConnections {
                retry_after: secs, ..
            } => {
                builder.insert_header((header::RETRY_AFTER, secs.to_string()));
            }
            ApiError::MethodNotAllowed(allow) => {
                builder.insert_header((header::ALLOW, *allow));
            }
            ApiError::PreconditionFailed { current } => {
                builder.insert_header((header::ETAG, format!("\"{current}\"")));
            }
            _ => {}
        }
        builder.body(serde_json::to_string(&problem).unwrap_or_default())
    }
}
