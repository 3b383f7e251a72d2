//! Tracing set-up: pretty or JSON logs, a span per request with its request id, and no
//! secrets in any of it.

use crate::configuration::{LogFormat, LogSettings};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{Error, HttpMessage};
use tracing::Span;
use tracing_actix_web::{DefaultRootSpanBuilder, RequestId, RootSpanBuilder};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::EnvFilter;

/// An error and every cause under it on one line, `outer: inner: root`, for the log: a
/// generic "database error" is no use at 3 a.m. without the driver's words under it. Error
/// types in this crate keep their cause as a `source` and leave it out of their own message,
/// so nothing is printed twice.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides the configured level. Safe to call
/// more than once (tests): later calls do nothing.
pub fn init(settings: &LogSettings) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::CLOSE)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// The root span of every request. Unlike the default it records the path without the
/// query string, because `?access_token=` carries a bearer token for EventSource and
/// WebSocket clients, and tokens must never reach the logs.
pub struct RedactingRootSpan;

impl RootSpanBuilder for RedactingRootSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map(|id| id.to_string())
            .unwrap_or_default();
        let route = request
            .match_pattern()
            .unwrap_or_else(|| "unmatched".into());
        tracing::info_span!(
            "request",
            method = %request.method(),
            path = %request.path(),
            route = %route,
            request_id = %request_id,
            user = tracing::field::Empty,
            http.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            exception.message = tracing::field::Empty,
            exception.details = tracing::field::Empty,
        )
    }

    fn on_request_end<B: actix_web::body::MessageBody>(
        span: Span,
        outcome: &Result<ServiceResponse<B>, Error>,
    ) {
        if let Ok(response) = outcome {
            if let Some(user) = response
                .request()
                .extensions()
                .get::<crate::domain::UserId>()
            {
                span.record("user", user.as_str());
            }
        }
        DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::Chain;

    #[derive(Debug, thiserror::Error)]
    #[error("database error")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_prints_every_cause_once() {
        let e = Outer(std::io::Error::other("connection reset"));
        assert_eq!(Chain(&e).to_string(), "database error: connection reset");
    }
}
