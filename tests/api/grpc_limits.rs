//! The gRPC listener's bounds (issue 22): silent connections are closed, idle ones too, its
//! connection cap refuses past it without touching the HTTP face, and reflection lists
//! every service it serves.

use crate::helpers::{service_token, spawn_app_with, user_token, Backend, TestApp};
use std::time::Duration;
use tidings::grpc::proto::{self, event, notifications_client::NotificationsClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic::Request;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: what a client sends right after the preface.
const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

fn grpc_port(app: &TestApp) -> u16 {
    app.grpc_address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a gRPC port")
}

/// Reads until the server closes the connection; how long that took, or `None` if it
/// was still open at `within`.
async fn closed_within(socket: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(started + within, socket.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    req
}

/// A connection that sends nothing, or half a preface, is closed at the handshake bound;
/// past the listener's cap a connection is closed at once while `/healthz` and REST keep
/// answering; once the silent ones are gone a gRPC call works again.
async fn grpc_silent_connections_are_closed_and_the_cap_spares_http(b: Backend) {
    let app = spawn_app_with(b, |s| {
        s.grpc.max_connections = 4;
        s.grpc.handshake_timeout_seconds = 1;
    })
    .await;
    let port = grpc_port(&app);
    let mut silent = Vec::new();
    for i in 0..4 {
        let mut socket = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        if i == 0 {
            // Half a preface, then nothing: still no preface.
            socket.write_all(&PREFACE[..10]).await.expect("write");
        }
        silent.push(socket);
    }
    // The listener is full: the next connection is closed at once...
    let mut refused = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let at_once = closed_within(&mut refused, Duration::from_millis(900)).await;
    assert!(at_once.is_some(), "a connection past the cap was kept open");
    // ...and the HTTP face does not notice.
    for path in ["/healthz", "/readyz"] {
        let status = app
            .client
            .get(app.url(path))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .expect("HTTP answers while gRPC is full")
            .status();
        assert_eq!(status, 200, "{path}");
    }
    // The silent ones are closed at the handshake bound (1 s), not held.
    for (i, socket) in silent.iter_mut().enumerate() {
        let took = closed_within(socket, Duration::from_secs(4)).await;
        assert!(took.is_some(), "silent connection {i} still open after 4 s");
    }
    // Their places are free again.
    let mut client = NotificationsClient::connect(app.grpc_address.clone())
        .await
        .expect("connect once the silent connections are gone");
    let counts = client
        .unread_count(authed(&user_token("alice"), proto::UnreadCountRequest {}))
        .await
        .expect("a call")
        .into_inner();
    assert_eq!(counts.unread, 0);
}

/// An HTTP/2 connection with no call open is closed after the idle bound; one carrying a
/// `Subscribe` stream is not, and the stream still delivers.
async fn grpc_idle_connections_are_closed_but_open_streams_stay(b: Backend) {
    let app = spawn_app_with(b, |s| {
        s.grpc.idle_timeout_seconds = 1;
        s.grpc.handshake_timeout_seconds = 1;
    })
    .await;
    let port = grpc_port(&app);
    let mut idle = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    idle.write_all(PREFACE).await.expect("preface");
    idle.write_all(SETTINGS).await.expect("settings");
    let took = closed_within(&mut idle, Duration::from_secs(5)).await;
    assert!(
        took.is_some(),
        "an idle HTTP/2 connection was kept past 5 s"
    );

    let mut client = NotificationsClient::connect(app.grpc_address.clone())
        .await
        .expect("connect");
    let mut stream = client
        .subscribe(authed(
            &user_token("alice"),
            proto::SubscribeRequest { after: None },
        ))
        .await
        .expect("subscribe")
        .into_inner();
    // Well past the idle bound, with the stream open.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut publisher = NotificationsClient::connect(app.grpc_address.clone())
        .await
        .expect("connect");
    publisher
        .publish(authed(
            &service_token("billing"),
            proto::PublishRequest {
                recipients: vec!["alice".into()],
                r#type: "t".into(),
                title: "after the idle bound".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("publish");
    let delivered = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await.expect("the stream is alive") {
                Some(proto::Event {
                    event: Some(event::Event::Notification(n)),
                }) => return n.title,
                Some(_) => {}
                None => panic!("the stream ended"),
            }
        }
    })
    .await
    .expect("delivered within 10 s");
    assert_eq!(delivered, "after the idle bound");
}

/// `grpcurl list` shows the health service: reflection, v1 and v1alpha alike, lists every
/// service the listener answers and can describe each.
async fn grpc_reflection_lists_health_in_v1_and_v1alpha(b: Backend) {
    let app = spawn_app_with(b, |_| {}).await;
    let channel = tonic::transport::Endpoint::from_shared(app.grpc_address.clone())
        .expect("an endpoint")
        .connect()
        .await
        .expect("connect");
    // Each version lists itself as the reflection service (tonic's way).
    let wanted = |reflection: &str| {
        let mut names = vec![
            "grpc.health.v1.Health".to_owned(),
            reflection.to_owned(),
            "tidings.v1.Notifications".to_owned(),
        ];
        names.sort();
        names
    };
    {
        use tonic_reflection::pb::v1::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest,
        };
        let mut client = ServerReflectionClient::new(channel.clone());
        let requests = [
            MessageRequest::ListServices(String::new()),
            MessageRequest::FileContainingSymbol("grpc.health.v1.Health".into()),
        ]
        .map(|m| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(m),
        });
        let mut responses = client
            .server_reflection_info(futures::stream::iter(requests))
            .await
            .expect("reflection v1")
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) = responses
            .message()
            .await
            .expect("ok")
            .and_then(|r| r.message_response)
        else {
            panic!("no service list");
        };
        let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        assert_eq!(names, wanted("grpc.reflection.v1.ServerReflection"), "v1");
        let described = responses
            .message()
            .await
            .expect("ok")
            .and_then(|r| r.message_response);
        assert!(
            matches!(described, Some(MessageResponse::FileDescriptorResponse(_))),
            "v1 cannot describe the health service: {described:?}"
        );
    }
    {
        use tonic_reflection::pb::v1alpha::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest,
        };
        let mut client = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = client
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .expect("reflection v1alpha")
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) = responses
            .message()
            .await
            .expect("ok")
            .and_then(|r| r.message_response)
        else {
            panic!("no service list");
        };
        let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        assert_eq!(
            names,
            wanted("grpc.reflection.v1alpha.ServerReflection"),
            "v1alpha"
        );
    }
}

crate::both_backends!(
    grpc_silent_connections_are_closed_and_the_cap_spares_http,
    grpc_idle_connections_are_closed_but_open_streams_stay,
    grpc_reflection_lists_health_in_v1_and_v1alpha,
);
