//! HEAD wherever GET works (RFC 9110 §9.3.2), for every route at once: a HEAD request is
//! routed as a GET, and the connection writes the GET's head without its body. One
//! mechanism rather than a HEAD route beside each GET, so a route added later answers HEAD
//! too, and a monitor's or a proxy's `HEAD /healthz` never sees a 405.

use actix_web::body::{BodySize, EitherBody, MessageBody, None as NoBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;

/// The middleware (`middleware::from_fn(head_as_get)`). actix's HTTP/1 codec remembers
/// that the request was a HEAD and sends no body whatever the handler returns, keeping the
/// GET's `Content-Length`. A streamed body (an event stream) is dropped here instead, so no
/// stream is kept polling for a client that asked for the head alone.
pub async fn head_as_get<B: MessageBody + 'static>(
    mut req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B, NoBody>>, actix_web::Error> {
    let head = req.method() == Method::HEAD;
    if head {
        req.head_mut().method = Method::GET;
    }
    let res = next.call(req).await?;
    if head && matches!(res.response().body().size(), BodySize::Stream) {
        return Ok(res.map_body(|_, _| NoBody::new()).map_into_right_body());
    }
    Ok(res.map_into_left_body())
}
