//! The route table and the OpenAPI document: the one place that knows every HTTP face.
//!
//! It sits above the faces (the REST API in [`crate::api`], the live transports in
//! [`crate::transports`]) so that they never import each other or this: a new face is a
//! module beside them and a few lines here.

pub mod openapi;

use crate::api::{demo, health, notifications, preferences, push, scheduled, topics};
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
            .default_service(method_not_allowed("GET, POST")),
    )
    .service(
        web::resource("/v1/notifications/unread-count")
            .route(web::get().to(notifications::unread_count))
            .default_service(method_not_allowed("GET")),
    )
    .service(
        web::resource("/v1/notifications/read")
            .route(web::post().to(notifications::mark_read))
            .default_service(method_not_allowed("POST")),
    )
    .service(
        web::resource("/v1/notifications/archive")
            .route(web::post().to(notifications::archive))
            .default_service(method_not_allowed("POST")),
    )
    .service(
        web::resource("/v1/notifications/unarchive")
            .route(web::post().to(notifications::unarchive))
            .default_service(method_not_allowed("POST")),
    )
    .service(
        web::resource("/v1/notifications/delete")
            .route(web::post().to(notifications::delete_many))
            .default_service(method_not_allowed("POST")),
    )
    .service(get_only("/v1/notifications/stream", sse::stream))
    .service(get_only("/v1/notifications/stream.ndjson", ndjson::stream))
    .service(get_only("/v1/notifications/stream.html", iframe::stream))
    .service(get_only("/v1/notifications/poll", longpoll::poll))
    .service(get_only("/v1/ws", ws::socket))
    .service(get_only("/v1/stomp", stomp::socket))
    // After every fixed path under /v1/notifications/, which it would otherwise shadow.
    .service(
        web::resource("/v1/notifications/{id}")
            .route(web::delete().to(notifications::delete_one))
            .default_service(method_not_allowed("DELETE")),
    )
    .service(
        web::resource("/v1/scheduled")
            .route(web::get().to(scheduled::list))
            .default_service(method_not_allowed("GET")),
    )
    .service(
        web::resource("/v1/scheduled/{id}")
            .route(web::delete().to(scheduled::cancel))
            .default_service(method_not_allowed("DELETE")),
    )
    .service(get_only("/metrics", health::metrics))
    .configure(demo::configure)
    .configure(|cfg| preferences::configure(cfg, method_not_allowed))
    .service(
        web::resource("/v1/topics/{topic}/subscribers/{user}")
            .route(web::put().to(topics::subscribe))
            .route(web::delete().to(topics::unsubscribe))
            .default_service(method_not_allowed("PUT, DELETE")),
    )
    .service(
        web::resource("/v1/topics/{topic}/subscribers")
            .route(web::post().to(topics::bulk))
            .default_service(method_not_allowed("POST")),
    )
    .service(
        web::resource("/v1/topics/{topic}")
            .route(web::get().to(topics::info))
            .default_service(method_not_allowed("GET")),
    )
    .service(get_only(
        "/v1/push/vapid-public-key",
        push::vapid_public_key,
    ))
    .service(
        web::resource("/v1/push/subscriptions")
            .route(web::post().to(push::subscribe))
            .route(web::get().to(push::list))
            .route(web::delete().to(push::unsubscribe))
            .default_service(method_not_allowed("GET, POST, DELETE")),
    )
    .service(get_only("/healthz", health::healthz))
    .service(get_only("/readyz", health::readyz))
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
        // Like every HTML page Tidings serves: a CSP that runs only its own scripts.
        web::scope("/docs")
            .wrap(
                actix_web::middleware::DefaultHeaders::new()
                    .add(("Content-Security-Policy", crate::http::html::DOCS_POLICY))
                    .add(("X-Content-Type-Options", crate::http::html::NOSNIFF)),
            )
            .service(
                utoipa_swagger_ui::SwaggerUi::new("/{_:.*}")
                    .config(utoipa_swagger_ui::Config::from("/openapi.json")),
            ),
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

/// The default service of a resource: any other method is a 405 whose `Allow` header lists
/// `allow`, the methods the resource's routes answer.
fn method_not_allowed(allow: &'static str) -> actix_web::Route {
    web::to(move || async move { Err::<HttpResponse, _>(ApiError::MethodNotAllowed(allow)) })
}

/// A resource that answers GET only; any other method is a 405 with `Allow: GET`.
fn get_only<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler))
        .default_service(method_not_allowed("GET"))
}

/// Unknown paths get a problem document too.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}
