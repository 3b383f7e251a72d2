//! The SockJS conformance target: the services the official protocol suite
//! (sockjs/sockjs-protocol, `sockjs-protocol.py`) expects, with the settings sockjs-node's
//! own test server uses for it (streaming responses ended after 4,096 bytes, sessions gone
//! 5 s after their client, heartbeats every 25 s).
//!
//! `cargo build --release --example sockjs-echo`, then
//! `target/release/examples/sockjs-echo 127.0.0.1:8081` and
//! `SOCKJS_URL=http://127.0.0.1:8081 python sockjs-protocol.py`.

use actix_web::{App, HttpRequest, HttpServer};
use std::sync::Arc;
use tidings::sockjs::{Conn, Endpoint, Options, Service};

/// Sends every message back.
struct Echo;

/// The suite has no users: every request speaks for the same anonymous owner, and every
/// origin is trusted (it checks that CORS echoes the origin with credentials).
macro_rules! anonymous {
    () => {
        fn owner(&self, _req: &HttpRequest) -> Result<String, actix_web::Error> {
            Ok(String::new())
        }

        fn trusts_origin(&self, _req: &HttpRequest) -> bool {
            true
        }
    };
}

impl Service for Echo {
    anonymous!();

    fn open(&self, _req: &HttpRequest, mut conn: Conn) -> Result<(), actix_web::Error> {
        actix_web::rt::spawn(async move {
            while let Some(m) = conn.incoming.recv().await {
                if conn.out.send(m).await.is_err() {
                    break;
                }
            }
        });
        Ok(())
    }
}

/// Closes every session at once with `3000 "Go away!"`.
struct Close;

impl Service for Close {
    anonymous!();

    fn open(&self, _req: &HttpRequest, conn: Conn) -> Result<(), actix_web::Error> {
        conn.out.close(3000, "Go away!");
        Ok(())
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".to_owned());
    let base = Options {
        stream_bytes_limit: 4096,
        ..Options::default()
    };
    let endpoints = [
        Endpoint::new("/echo", base.clone(), Arc::new(Echo)),
        Endpoint::new("/close", base.clone(), Arc::new(Close)),
        Endpoint::new(
            "/disabled_websocket_echo",
            Options {
                websocket: false,
                ..base.clone()
            },
            Arc::new(Echo),
        ),
        Endpoint::new(
            "/cookie_needed_echo",
            Options {
                jsessionid: true,
                ..base.clone()
            },
            Arc::new(Echo),
        ),
    ];
    println!("sockjs-echo listening on http://{addr}");
    HttpServer::new(move || {
        let endpoints = endpoints.clone();
        App::new().configure(move |cfg| {
            for ep in &endpoints {
                ep.configure(cfg);
            }
        })
    })
    // A client that closes its connection mid-request is gone: the request is dropped at
    // once, so its session can say `c[1002,"Connection interrupted"]` to the next one.
    .h1_allow_half_closed(false)
    .bind(addr)?
    .run()
    .await
}
