//! The route table and the OpenAPI document: the one place that knows every HTTP face.
//!
//! It sits above the faces (the REST API in [`crate::api`], the live transports in
//! [`crate::transports`]) so that they never import each other or this: a new face is a
//! module beside them and a few lines here.

pub mod openapi;

use crate::api::{demo, health, notifications, topics};
use crate::http::error::ApiError;
use crate::sockjs::Endpoint;
use crate::transports::{iframe, longpoll, ndjson, sse, stomp, ws};
use actix_web::{web, HttpResponse};

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let openapi_json = web::Data::new(openapi::document());
    cfg.service(
        web::resource("/v1/notifications")
            .route(web::post().to(notifications::publish))
            .route(web::get().to(notifications::list))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/notifications/unread-count")
            .route(web::get().to(notifications::unread_count))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/notifications/read")
            .route(web::post().to(notifications::mark_read))
            .default_service(web::to(method_not_allowed)),
    )
    .route("/v1/notifications/stream", web::get().to(sse::stream))
    .route(
        "/v1/notifications/stream.ndjson",
        web::get().to(ndjson::stream),
    )
    .route(
        "/v1/notifications/stream.html",
        web::get().to(iframe::stream),
    )
    .route("/v1/notifications/poll", web::get().to(longpoll::poll))
    .route("/v1/ws", web::get().to(ws::socket))
    .route("/v1/stomp", web::get().to(stomp::socket))
    .route("/metrics", web::get().to(health::metrics))
    .configure(demo::configure)
    .service(
        web::resource("/v1/topics/{topic}/subscribers/{user}")
            .route(web::put().to(topics::subscribe))
            .route(web::delete().to(topics::unsubscribe))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/topics/{topic}/subscribers")
            .route(web::post().to(topics::bulk))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/topics/{topic}")
            .route(web::get().to(topics::info))
            .default_service(web::to(method_not_allowed)),
    )
    .route("/healthz", web::get().to(health::healthz))
    .route("/readyz", web::get().to(health::readyz))
    .app_data(openapi_json)
    .route("/openapi.json", web::get().to(serve_openapi))
    .route(
        "/docs",
        web::get().to(|| async {
            HttpResponse::PermanentRedirect()
                .insert_header(("Location", "/docs/"))
                .finish()
        }),
    )
    .service(
        utoipa_swagger_ui::SwaggerUi::new("/docs/{_:.*}")
            .config(utoipa_swagger_ui::Config::from("/openapi.json")),
    );
}

/// Mounts the SockJS endpoints (built once per replica by
/// [`crate::sockjs::tidings::endpoints`], so every worker shares their sessions).
pub fn configure_sockjs(cfg: &mut web::ServiceConfig, endpoints: &[Endpoint]) {
    for endpoint in endpoints {
        endpoint.configure(cfg);
    }
}

async fn serve_openapi(doc: web::Data<String>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.get_ref().clone())
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}

/// Unknown paths get a problem document too.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}
