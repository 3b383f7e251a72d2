//! The floor under Tidings' memory per idle stream: a bare actix-web server whose every
//! GET answers a text/event-stream that sends one comment and then never ends. No hub, no
//! actor, no queue, no timers, no tracing. What it costs per connection, actix-web costs
//! Tidings too; `bench/run.sh baseline` measures it with the same client as `idle`.
//!
//! Usage: actix-sse-baseline 127.0.0.1:PORT

use actix_web::web::Bytes;
use actix_web::{web, App, HttpResponse, HttpServer};
use futures_util::stream;
use std::convert::Infallible;

async fn stream_forever() -> HttpResponse {
    let first = stream::once(async { Ok::<_, Infallible>(Bytes::from_static(b"retry: 3000\n\n")) });
    HttpResponse::Ok()
        .insert_header(("Content-Type", "text/event-stream"))
        .streaming(futures_util::StreamExt::chain(first, stream::pending()))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18999".into());
    HttpServer::new(|| App::new().default_service(web::get().to(stream_forever)))
        .workers(2)
        .bind(addr)?
        .run()
        .await
}
