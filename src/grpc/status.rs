//! The one place where errors become gRPC status codes, matching the REST statuses of
//! `http::error`: validation → INVALID_ARGUMENT (422/400) with a `google.rpc.BadRequest`
//! naming every field, no or a bad token → UNAUTHENTICATED (401), the wrong kind of token →
//! PERMISSION_DENIED (403), a full replica → RESOURCE_EXHAUSTED, a database or replica that
//! is down or stopping → UNAVAILABLE (503). INTERNAL is kept for our own bugs, never a
//! client's mistake.

use crate::auth::AuthError;
use crate::domain::{FieldError, Seq};
use crate::hub::HubError;
use crate::store::StoreError;
use crate::telemetry::Chain;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};
use tonic_types::{BadRequest, ErrorDetail, StatusExt};

/// The metadata entry that tells a client which cursor to resubscribe with.
pub const RESUME_AFTER: &str = "resume-after";

#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// Well-formed, but fields break a rule: the same fields and words as REST.
    #[error("fix these fields: {}", names(.0))]
    Validation(Vec<FieldError>),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hub(#[from] HubError),
    /// A `Subscribe` stream ends, and says where to pick up.
    #[error("{reason}")]
    StreamEnd {
        reason: StreamEnd,
        resume_after: Seq,
    },
}

/// Why a `Subscribe` stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamEnd {
    #[error(
        "this replica is stopping; subscribe again (to another one) with the resume-after cursor"
    )]
    Shutdown,
    #[error("the stream was reset; subscribe again with the resume-after cursor")]
    Reset,
    #[error("cut off for reading too slowly; subscribe again with the resume-after cursor")]
    TooSlow,
    #[error("the token has expired; subscribe again with a new token and the resume-after cursor")]
    TokenExpired,
    #[error("a notification could not be encoded; it has been logged")]
    Encoding,
}

fn names(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| e.field.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn invalid(message: String, errors: &[FieldError]) -> Status {
    let violations = BadRequest::new(
        errors
            .iter()
            .map(|e| tonic_types::FieldViolation::new(e.field.clone(), e.message.clone()))
            .collect::<Vec<_>>(),
    );
    Status::with_error_details_vec(
        Code::InvalidArgument,
        message,
        [ErrorDetail::from(violations)],
    )
}

impl From<GrpcError> for Status {
    fn from(e: GrpcError) -> Self {
        match e {
            GrpcError::Validation(errors) => {
                invalid(format!("fix these fields: {}", names(&errors)), &errors)
            }
            GrpcError::Auth(AuthError::Forbidden(m)) => Status::permission_denied(m),
            GrpcError::Auth(AuthError::Unavailable(m)) => Status::unavailable(m),
            GrpcError::Auth(e) => Status::unauthenticated(e.to_string()),
            GrpcError::Store(StoreError::IdempotencyMismatch) => {
                let message = "this idempotency-key was already used with a different request; use a new key for a new request";
                invalid(
                    message.to_owned(),
                    &[FieldError::new("Idempotency-Key", message)],
                )
            }
            GrpcError::Store(e @ StoreError::Unavailable(_)) => {
                tracing::error!(error = %Chain(&e), "database unavailable");
                Status::unavailable("the database is unavailable; try again shortly")
            }
            GrpcError::Store(e) => {
                tracing::error!(error = %Chain(&e), "internal error");
                Status::internal("something went wrong on our side; it has been logged")
            }
            GrpcError::Hub(e @ HubError::Full(_)) => {
                Status::resource_exhausted(format!("{e}; try again shortly, or another replica"))
            }
            GrpcError::Hub(e @ HubError::Stopping) => {
                Status::unavailable(format!("{e}; try again, on another replica"))
            }
            GrpcError::Hub(e @ HubError::UserFull(_)) => {
                Status::resource_exhausted(format!("{e}; close one, or try again later"))
            }
            GrpcError::Hub(e @ HubError::Unavailable) => {
                Status::unavailable(format!("{e}; try again shortly"))
            }
            GrpcError::StreamEnd {
                reason,
                resume_after,
            } => {
                let code = match reason {
                    StreamEnd::Shutdown | StreamEnd::Reset => Code::Unavailable,
                    StreamEnd::TooSlow => Code::ResourceExhausted,
                    StreamEnd::TokenExpired => Code::Unauthenticated,
                    StreamEnd::Encoding => Code::Internal,
                };
                let mut status = Status::new(code, reason.to_string());
                if let Ok(v) = MetadataValue::try_from(resume_after.to_string()) {
                    status.metadata_mut().insert(RESUME_AFTER, v);
                }
                status
            }
        }
    }
}

/// What tonic says, before any handler runs, about a request it could not read: the
/// code these deserve, or `None` for anything else (our handlers' statuses come through
/// [`GrpcError`] and are never rewritten). tonic reports them all as INTERNAL, and a
/// message over the size limit as OUT_OF_RANGE, which we never send.
pub fn client_input(code: Code, message: &str) -> Option<Code> {
    /// tonic's and prost's words for unreadable input: garbage or invalid UTF-8 in the
    /// protobuf, a body that ends mid-message or holds none, bad gRPC-Web framing or base64.
    const UNREADABLE: [&str; 5] = [
        "failed to decode Protobuf message",
        "Missing request message",
        "Unexpected EOF decoding stream",
        "tonic-web:",
        "protocol error:",
    ];
    match code {
        Code::OutOfRange => Some(Code::ResourceExhausted),
        Code::Internal if UNREADABLE.iter().any(|m| message.starts_with(m)) => {
            Some(Code::InvalidArgument)
        }
        _ => None,
    }
}

/// A request body that took longer than `timeout` to arrive (REST's 408).
pub fn body_too_slow(timeout: std::time::Duration) -> Status {
    Status::deadline_exceeded(format!(
        "the request body took longer than {} s to arrive; send it at once",
        timeout.as_secs()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_input_is_the_clients_mistake() {
        let cases = [
            (Code::Internal, "failed to decode Protobuf message: invalid wire type", Some(Code::InvalidArgument)),
            (Code::Internal, "Missing request message.", Some(Code::InvalidArgument)),
            (Code::Internal, "tonic-web: Invalid byte 33, offset 0.", Some(Code::InvalidArgument)),
            (Code::OutOfRange, "Error, decoded message length too large: found 70000 bytes, the limit is: 65536 bytes", Some(Code::ResourceExhausted)),
            (Code::Internal, "something went wrong on our side; it has been logged", None),
            (Code::Unauthenticated, "no token", None),
        ];
        for (code, message, wanted) in cases {
            assert_eq!(client_input(code, message), wanted, "{message}");
        }
    }

    #[test]
    fn client_mistakes_are_never_internal() {
        let cases = [
            (
                GrpcError::Validation(vec![FieldError::new("title", "is required")]),
                Code::InvalidArgument,
            ),
            (GrpcError::Auth(AuthError::Missing), Code::Unauthenticated),
            (GrpcError::Auth(AuthError::Expired), Code::Unauthenticated),
            (
                GrpcError::Auth(AuthError::Forbidden("no")),
                Code::PermissionDenied,
            ),
            (
                GrpcError::Store(StoreError::IdempotencyMismatch),
                Code::InvalidArgument,
            ),
            (GrpcError::Hub(HubError::Full(1)), Code::ResourceExhausted),
            (GrpcError::Hub(HubError::Stopping), Code::Unavailable),
            (GrpcError::Hub(HubError::Unavailable), Code::Unavailable),
            (
                GrpcError::Hub(HubError::UserFull(1)),
                Code::ResourceExhausted,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(Status::from(error).code(), code);
        }
    }

    #[test]
    fn validation_names_every_field_in_the_details() {
        let status = Status::from(GrpcError::Validation(vec![
            FieldError::new("type", "must not be empty"),
            FieldError::new("recipients[1]", "bad"),
        ]));
        let fields: Vec<String> = status
            .get_details_bad_request()
            .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
            .unwrap_or_default();
        assert_eq!(fields, ["type", "recipients[1]"]);
    }

    #[test]
    fn a_stream_end_says_where_to_resume() {
        let status = Status::from(GrpcError::StreamEnd {
            reason: StreamEnd::TooSlow,
            resume_after: Seq::new(42),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status
                .metadata()
                .get(RESUME_AFTER)
                .and_then(|v| v.to_str().ok()),
            Some("42")
        );
    }
}
