//! Bad client input on gRPC and gRPC-Web is the client's mistake, never INTERNAL (issue 22,
//! item 8): garbage protobuf, invalid UTF-8, bad grpc-web-text base64 and an empty body are
//! INVALID_ARGUMENT, a message over the limit RESOURCE_EXHAUSTED; and a gRPC-Web body
//! trickled in is cut off at `TIDINGS__SERVER__BODY_TIMEOUT_SECONDS`.

use crate::helpers::{service_token, spawn_app, spawn_app_with, Backend, TestApp};
use prost::bytes::{Buf, BufMut};
use std::time::Duration;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Request, Status};

const PUBLISH: &str = "/tidings.v1.Notifications/Publish";

/// Sends bytes as they are, so a test can send what no generated client would.
#[derive(Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(bytes.to_vec()))
    }
}

async fn raw_call(app: &TestApp, body: Vec<u8>) -> Status {
    let channel = tonic::transport::Endpoint::from_shared(app.grpc_address.clone())
        .expect("an endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let mut req = Request::new(body);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", service_token("billing"))
            .parse()
            .expect("metadata"),
    );
    match grpc.unary(req, PUBLISH.parse().expect("a path"), Raw).await {
        Ok(_) => panic!("the bad request was accepted"),
        Err(status) => status,
    }
}

/// A protobuf string field: tag, length, bytes.
fn string_field(number: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![(number << 3) | 2];
    let mut len = bytes.len();
    while len >= 0x80 {
        out.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(bytes);
    out
}

/// A gRPC-Web call over HTTP/1.1: its `grpc-status`, from the head (a trailers-only answer)
/// or from the trailer frame in the body.
async fn grpc_web(
    app: &TestApp,
    content_type: &str,
    body: reqwest::Body,
) -> Result<i32, reqwest::Error> {
    let response = app
        .client
        .post(format!("{}{PUBLISH}", app.grpc_address))
        .header("content-type", content_type)
        .header("x-grpc-web", "1")
        .header(
            "authorization",
            format!("Bearer {}", service_token("billing")),
        )
        .body(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    if let Some(code) = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        return Ok(code);
    }
    let text = String::from_utf8_lossy(&response.bytes().await?).into_owned();
    Ok(text
        .split("grpc-status:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no grpc-status in {text:?}")))
}

fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

async fn grpc_bad_input_is_invalid_argument_never_internal(b: Backend) {
    let app = spawn_app(b).await;
    // Native gRPC.
    let garbage = raw_call(&app, vec![0xff, 0xff, 0xff, 0xff]).await;
    assert_eq!(
        garbage.code(),
        Code::InvalidArgument,
        "garbage: {garbage:?}"
    );
    let mut bad_utf8 = string_field(1, b"alice");
    bad_utf8.extend(string_field(3, b"t"));
    bad_utf8.extend(string_field(4, &[0xff, 0xfe, 0x41]));
    let utf8 = raw_call(&app, bad_utf8).await;
    assert_eq!(
        utf8.code(),
        Code::InvalidArgument,
        "invalid UTF-8: {utf8:?}"
    );
    let huge = raw_call(&app, string_field(4, &vec![b'a'; 70_000])).await;
    assert_eq!(huge.code(), Code::ResourceExhausted, "oversized: {huge:?}");

    // gRPC-Web.
    let invalid = Code::InvalidArgument as i32;
    let empty = grpc_web(&app, "application/grpc-web+proto", Vec::new().into()).await;
    assert_eq!(empty.expect("an answer"), invalid, "empty grpc-web body");
    let web_garbage = grpc_web(
        &app,
        "application/grpc-web+proto",
        frame(&[0xff, 0xff, 0xff]).into(),
    )
    .await;
    assert_eq!(web_garbage.expect("an answer"), invalid, "grpc-web garbage");
    let base64 = grpc_web(&app, "application/grpc-web-text", "!!!!".into()).await;
    assert_eq!(
        base64.expect("an answer"),
        invalid,
        "bad grpc-web-text base64"
    );
    let web_huge = grpc_web(
        &app,
        "application/grpc-web+proto",
        frame(&string_field(4, &vec![b'a'; 70_000])).into(),
    )
    .await;
    assert_eq!(
        web_huge.expect("an answer"),
        Code::ResourceExhausted as i32,
        "oversized grpc-web"
    );
}

/// A gRPC-Web body that never finishes is cut off at the body timeout.
async fn grpc_web_trickled_body_is_cut_off(b: Backend) {
    let app = spawn_app_with(b, |s| s.server.body_timeout_seconds = 1).await;
    let first: Result<Vec<u8>, std::io::Error> = Ok(vec![0, 0, 0]);
    let body =
        futures::StreamExt::chain(futures::stream::iter([first]), futures::stream::pending());
    let started = tokio::time::Instant::now();
    let code = grpc_web(
        &app,
        "application/grpc-web+proto",
        reqwest::Body::wrap_stream(body),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(
        code.expect("an answer before the client's 10 s timeout"),
        Code::DeadlineExceeded as i32
    );
    assert!(took < Duration::from_secs(5), "cut off after {took:?}");
}

crate::both_backends!(
    grpc_bad_input_is_invalid_argument_never_internal,
    grpc_web_trickled_body_is_cut_off,
);
