//! The demo page at `/demo`: a bell with a live unread badge, built on the browser client.
//! The files are compiled into the binary, so it works offline and needs no static folder.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

const INDEX: &str = include_str!("../../assets/demo/index.html");
const CSS: &str = include_str!("../../assets/demo/demo.css");
const JS: &str = include_str!("../../assets/demo/demo.js");
const CLIENT: &str = include_str!("../../clients/js/tidings.js");
const SERVICE_WORKER: &str = include_str!("../../clients/js/tidings-sw.js");

/// Only same-origin scripts, styles and connections (which covers the page's own SSE and
/// WebSocket): the token lives in this page, so nothing else may run in it.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/demo",
        web::get().to(|| async {
            // Relative imports resolve against /demo/; a browser keeps the #token fragment.
            HttpResponse::PermanentRedirect()
                .insert_header((header::LOCATION, "/demo/"))
                .finish()
        }),
    )
    .route(
        "/demo/",
        web::get().to(|| async { asset("text/html; charset=utf-8", INDEX) }),
    )
    .route(
        "/demo/demo.css",
        web::get().to(|| async { asset("text/css; charset=utf-8", CSS) }),
    )
    .route(
        "/demo/demo.js",
        web::get().to(|| async { asset("text/javascript; charset=utf-8", JS) }),
    )
    .route(
        "/demo/tidings.js",
        web::get().to(|| async { asset("text/javascript; charset=utf-8", CLIENT) }),
    )
    // Web Push's service worker; at /demo/ its scope is the demo page.
    .route(
        "/demo/tidings-sw.js",
        web::get().to(|| async { asset("text/javascript; charset=utf-8", SERVICE_WORKER) }),
    );
}

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .body(body)
}
