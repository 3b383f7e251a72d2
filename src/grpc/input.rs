//! What tonic answers by itself, before a handler runs, when a client sends something it
//! cannot read: garbage protobuf, invalid UTF-8, bad gRPC-Web base64, an empty body (all
//! INTERNAL in tonic), a message over the size limit (OUT_OF_RANGE). Those are the
//! client's mistakes, so [`InputLayer`] rewrites their codes as [`status::client_input`]
//! says (INVALID_ARGUMENT, RESOURCE_EXHAUSTED): INTERNAL stays ours alone, and a client's
//! retry policy does not retry its own bad input. It also bounds how long a request body
//! may take to arrive (`TIDINGS__SERVER__BODY_TIMEOUT_SECONDS`, as on the HTTP faces), so
//! a body trickled a byte at a time cannot hold a call open.
//!
//! It sits inside the gRPC-Web layer, so it sees every call in native gRPC form.

use super::status;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;
use tonic::body::Body;
use tonic::codegen::{http, Service};
use tonic::Status;

#[derive(Debug, Clone, Copy)]
pub struct InputLayer {
    pub body_timeout: Duration,
}

impl<S> tower_layer::Layer<S> for InputLayer {
    type Service = InputService<S>;

    fn layer(&self, inner: S) -> InputService<S> {
        InputService {
            inner,
            body_timeout: self.body_timeout,
        }
    }
}

#[derive(Debug, Clone)]
pub struct InputService<S> {
    inner: S,
    body_timeout: Duration,
}

impl<S, ResBody> Service<http::Request<Body>> for InputService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let timeout = self.body_timeout;
        // Reflection is a bidirectional stream (a tool sends request after request on one
        // call), so its body is not bounded; every other method takes one message.
        let streaming = req.uri().path().starts_with("/grpc.reflection.");
        let req = if streaming {
            req
        } else {
            req.map(|body| {
                Body::new(TimedBody {
                    body,
                    deadline: Box::pin(tokio::time::sleep(timeout)),
                    timeout,
                })
            })
        };
        let response = self.inner.call(req);
        Box::pin(async move {
            let mut response = response.await?;
            recode(response.headers_mut());
            Ok(response)
        })
    }
}

/// Rewrites a trailers-only answer's `grpc-status` when it reports a client's mistake.
/// Errors a handler returns come through [`status`] already and are left alone.
fn recode(headers: &mut http::HeaderMap) {
    let Some(found) = Status::from_header_map(headers) else {
        return;
    };
    if let Some(code) = status::client_input(found.code(), found.message()) {
        headers.insert("grpc-status", http::HeaderValue::from(code as i32));
    }
}

/// A request body that fails with DEADLINE_EXCEEDED once it has taken longer than
/// `timeout` to arrive.
struct TimedBody {
    body: Body,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl http_body::Body for TimedBody {
    type Data = tonic::codegen::Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(status::body_too_slow(this.timeout)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
