//! Hostile or unlucky conditions: the database gone under a waiting long-poll, oversized or
//! fragmented WebSocket messages and the WebSocket's control frames, request URIs too long,
//! and request bodies trickled in.

use crate::helpers::{sample, service_token, spawn_app, spawn_app_with, user_token, Backend};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use std::time::Duration;
use tidings_test_support::live::{long_poll, PollAnswer, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
use tokio_tungstenite::tungstenite::Message;

type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket on `/v1/ws` for alice, with tungstenite's own view of every frame.
async fn raw_socket(address: &str) -> RawWs {
    let url = format!(
        "{}/v1/ws?access_token={}",
        address.replacen("http://", "ws://", 1),
        user_token("alice")
    );
    let (ws, _) = timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake in time")
        .expect("handshake");
    ws
}

/// The next message that `keep` selects, skipping the rest; panics on an error or the end.
async fn next_matching<T>(ws: &mut RawWs, keep: impl Fn(Message) -> Option<T>) -> T {
    timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(msg)) => {
                    if let Some(found) = keep(msg) {
                        break found;
                    }
                }
                other => panic!("the socket ended or broke: {other:?}"),
            }
        }
    })
    .await
    .expect("the awaited frame in time")
}

/// Splits a raw HTTP/1 response into its status, lower-cased head and body.
fn parse_response(raw: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// Reads until the server closes the connection (or `within` passes).
async fn read_until_closed(stream: &mut (impl AsyncReadExt + Unpin), within: Duration) -> Vec<u8> {
    let mut raw = Vec::new();
    let _ = timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    raw
}

async fn long_poll_answers_503_when_the_database_cannot_be_read(b: Backend) {
    let app = spawn_app(b).await;
    app.publish(&sample(&["alice"])).await;
    app.break_database().await;

    // There is something after 0, but it cannot be read: "nothing new" (204) would be a
    // lie the client trusts. Answered as soon as the read fails, well before the timeout.
    let started = Instant::now();
    let answer = long_poll(
        &app.client,
        &app.address,
        &user_token("alice"),
        Some(0),
        None,
        Some(20),
    )
    .await
    .unwrap();
    let PollAnswer::Refused(refused) = answer else {
        panic!("a long-poll while the database is down: expected 503, got {answer:?}");
    };
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "answered only at the poll's timeout"
    );
    assert_eq!(
        refused.headers["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    assert!(refused.headers.contains_key("retry-after"));
    let problem: Value = serde_json::from_str(&refused.body).unwrap();
    assert_eq!(problem["type"], "urn:tidings:problem:unavailable");
    assert_eq!(problem["status"], 503);
}

/// A stream with no cursor starts "from now", and now is a seq read from the database: when
/// that read fails, the stream must not open (a notification committed meanwhile would be
/// skipped), but answer 503 so the client retries.
async fn a_stream_from_now_is_503_when_the_database_cannot_be_read(b: Backend) {
    let app = spawn_app(b).await;
    app.publish(&sample(&["alice"])).await;
    app.break_database().await;
    let resp = timeout(
        WAIT,
        app.client
            .get(format!("{}/v1/notifications/stream", app.address))
            .bearer_auth(user_token("alice"))
            .send(),
    )
    .await
    .expect("the stream answered in time")
    .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().contains_key("retry-after"));
}

async fn an_oversized_websocket_message_closes_with_1009(b: Backend) {
    let app = spawn_app(b).await;
    let url = format!(
        "{}/v1/ws?access_token={}",
        app.address.replacen("http://", "ws://", 1),
        user_token("alice")
    );
    let (mut ws, _) = timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake in time")
        .expect("handshake");
    ws.send(Message::text("x".repeat(70 * 1024)))
        .await
        .expect("send");
    let close = timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("a close frame in time")
    .expect("a close code and reason");
    assert_eq!(u16::from(close.code), 1009, "{close:?}");
    assert!(
        close.reason.contains("65536"),
        "the reason names the limit: {:?}",
        close.reason
    );
}

/// Continuation frames are put together into one message, answered as if sent whole; the
/// total over 64 KiB closes with 1009, though each fragment is under the frame limit.
async fn a_fragmented_websocket_message_is_put_together_up_to_64_kib(b: Backend) {
    let app = spawn_app(b).await;
    let mut ws = raw_socket(&app.address).await;
    let fragments = [
        (OpCode::Data(Data::Text), false, r#"{"type""#),
        (OpCode::Data(Data::Continue), false, r#":"pi"#),
        (OpCode::Data(Data::Continue), true, r#"ng"}"#),
    ];
    for (opcode, fin, part) in fragments {
        ws.send(Message::Frame(Frame::message(part.to_owned(), opcode, fin)))
            .await
            .expect("send a fragment");
    }
    next_matching(&mut ws, |m| match m {
        Message::Text(t) if t.as_str() == r#"{"type":"pong"}"# => Some(()),
        _ => None,
    })
    .await;

    let part = "x".repeat(40 * 1024);
    ws.send(Message::Frame(Frame::message(
        part.clone(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .expect("send a fragment");
    ws.send(Message::Frame(Frame::message(
        part,
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .expect("send a fragment");
    let close = next_matching(&mut ws, |m| match m {
        Message::Close(frame) => Some(frame),
        _ => None,
    })
    .await
    .expect("a close code and reason");
    assert_eq!(u16::from(close.code), 1009, "{close:?}");
    assert!(close.reason.contains("65536"), "{:?}", close.reason);
}

/// A protocol Ping is answered with a Pong carrying its payload, and the client's Close with
/// a Close of the same code (RFC 6455 5.5.1), not by the connection just ending.
async fn websocket_pings_and_closes_are_answered(b: Backend) {
    let app = spawn_app(b).await;
    let mut ws = raw_socket(&app.address).await;
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .expect("send a ping");
    next_matching(&mut ws, |m| match m {
        Message::Pong(payload) => {
            assert_eq!(&payload[..], b"are you there");
            Some(())
        }
        _ => None,
    })
    .await;
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .expect("send the close");
    let reply = next_matching(&mut ws, |m| match m {
        Message::Close(frame) => Some(frame),
        _ => None,
    })
    .await;
    assert_eq!(
        reply.map(|f| u16::from(f.code)),
        Some(1000),
        "the close is answered with the same code"
    );
}

async fn a_request_uri_too_long_is_414_with_a_problem_document(b: Backend) {
    let app = spawn_app(b).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let request = format!(
        "GET /v1/notifications?after={} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n",
        "1".repeat(78 * 1024)
    );
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let raw = read_until_closed(&mut stream, WAIT).await;
    let (status, head, body) = parse_response(&raw);
    assert_eq!(status, 414, "{head}");
    assert!(
        head.contains("content-type: application/problem+json"),
        "{head}"
    );
    let problem: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(problem["type"], "urn:tidings:problem:uri-too-long");
    assert_eq!(problem["status"], 414);
    assert!(problem["detail"].as_str().unwrap().contains("65534"));
}

async fn a_body_trickled_in_is_timed_out_with_408(b: Backend) {
    let app = spawn_app_with(b, |s| s.server.body_timeout_seconds = 1).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let head = format!(
        "POST /v1/notifications HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n",
        service_token("billing")
    );
    let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(head.as_bytes()).await.unwrap();
    // One byte every 200 ms, until the server answers (or stops reading).
    let trickle = tokio::spawn(async move {
        loop {
            if writer.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let started = Instant::now();
    let raw = read_until_closed(&mut reader, WAIT).await;
    trickle.abort();
    let (status, head, body) = parse_response(&raw);
    assert_eq!(status, 408, "{head}");
    assert!(
        started.elapsed() < WAIT,
        "the connection was held for {:?}",
        started.elapsed()
    );
    assert!(
        head.contains("content-type: application/problem+json"),
        "{head}"
    );
    let problem: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(problem["type"], "urn:tidings:problem:request-timeout");
    assert_eq!(problem["status"], 408);
}

crate::both_backends!(
    a_stream_from_now_is_503_when_the_database_cannot_be_read,
    long_poll_answers_503_when_the_database_cannot_be_read,
    an_oversized_websocket_message_closes_with_1009,
    a_fragmented_websocket_message_is_put_together_up_to_64_kib,
    websocket_pings_and_closes_are_answered,
    a_request_uri_too_long_is_414_with_a_problem_document,
    a_body_trickled_in_is_timed_out_with_408,
);
