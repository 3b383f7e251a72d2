//! The gRPC face, through a tonic client generated from the same committed `.proto`: every
//! method, the same validation, token and idempotency rules as REST, and `Subscribe`'s
//! replay-then-live, slow-client cut-off, token expiry and shutdown, and the reconnect race:
//! subscribers re-subscribing from their cursor over and over while notifications are published.

use crate::helpers::{
    sample, service_token, sign, spawn_app, spawn_app_with, user_token, Backend, TestApp, SECRET,
};
use jsonwebtoken::Algorithm;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidings::grpc::proto::{self, event, notifications_client::NotificationsClient};
use tidings_test_support::live::{check_exactly_once_in_order, PublishRun};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};
use tonic_types::StatusExt;

async fn client(app: &TestApp) -> NotificationsClient<Channel> {
    NotificationsClient::connect(app.grpc_address.clone())
        .await
        .expect("connect to the gRPC listener")
}

fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    req
}

fn publish_req(recipients: &[&str]) -> proto::PublishRequest {
    proto::PublishRequest {
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        r#type: "order.shipped".into(),
        title: "Your order has shipped".into(),
        body: "Parcel 1Z999 is on its way.".into(),
        link: "https://shop.example/orders/1234".into(),
        data: tidings::grpc::json_to_struct(&json!({"order_id": 1234, "tags": ["a"]})),
        ..Default::default()
    }
}

fn fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// The next event, bounded so a missing one fails the test instead of hanging it.
async fn next(stream: &mut Streaming<proto::Event>) -> Result<Option<proto::Event>, Status> {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event within 10 s")
}

/// Reads until `want` notifications arrived; returns their seqs.
async fn seqs_until(stream: &mut Streaming<proto::Event>, want: usize) -> Vec<i64> {
    let mut seqs = Vec::new();
    while seqs.len() < want {
        match next(stream)
            .await
            .expect("no error")
            .expect("stream open")
            .event
        {
            Some(event::Event::Notification(n)) => seqs.push(n.seq),
            Some(_) => {}
            None => panic!("an empty event"),
        }
    }
    seqs
}

/// The status a stream ends with, skipping the events before it.
async fn end_status(stream: &mut Streaming<proto::Event>) -> (Status, Vec<i64>) {
    let mut seqs = Vec::new();
    loop {
        match next(stream).await {
            Ok(Some(proto::Event {
                event: Some(event::Event::Notification(n)),
            })) => seqs.push(n.seq),
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => return (status, seqs),
        }
    }
}

fn resume_after(status: &Status) -> Option<i64> {
    status
        .metadata()
        .get("resume-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

async fn grpc_every_method_with_rest_semantics(b: Backend) {
    let app = spawn_app(b).await;
    let mut c = client(&app).await;
    let billing = service_token("billing");

    let published = c
        .publish(authed(&billing, publish_req(&["alice", "bob", "alice"])))
        .await
        .expect("publish")
        .into_inner();
    let recipients: Vec<&str> = published
        .notifications
        .iter()
        .map(|r| r.recipient.as_str())
        .collect();
    assert_eq!(recipients, ["alice", "bob"]);
    assert_eq!(published.notifications[0].seq, 1);
    c.publish(authed(&billing, publish_req(&["alice"])))
        .await
        .expect("publish");

    // What gRPC published, REST reads the same: data integers stay integers.
    let page = app.list("alice", "?after=0").await;
    assert_eq!(
        page["notifications"][0]["data"],
        json!({"order_id": 1234, "tags": ["a"]})
    );
    assert_eq!(
        page["notifications"][0]["id"],
        published.notifications[0].id
    );

    let list = c
        .list(authed(
            &user_token("alice"),
            proto::ListRequest {
                after: Some(0),
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        list.notifications.iter().map(|n| n.seq).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!((list.unread, list.seq), (2, 2));
    let first = &list.notifications[0];
    assert_eq!(first.r#type, "order.shipped");
    assert_eq!(first.body.as_deref(), Some("Parcel 1Z999 is on its way."));
    assert_eq!(
        first.created_at,
        page["notifications"][0]["created_at"].as_str().unwrap()
    );
    assert_eq!(first.read_at, None);
    assert_eq!(
        tidings::grpc::struct_to_json(first.data.as_ref().expect("data")),
        json!({"order_id": 1234, "tags": ["a"]})
    );
    // The inbox view: newest first, `limit`.
    let newest = c
        .list(authed(
            &user_token("alice"),
            proto::ListRequest {
                limit: Some(1),
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        newest
            .notifications
            .iter()
            .map(|n| n.seq)
            .collect::<Vec<_>>(),
        [2]
    );

    let counts = c
        .mark_read(authed(
            &user_token("alice"),
            proto::MarkReadRequest {
                up_to: Some(1),
                ..Default::default()
            },
        ))
        .await
        .expect("mark read")
        .into_inner();
    assert_eq!((counts.unread, counts.seq), (1, 2));
    let counts = c
        .mark_read(authed(
            &user_token("alice"),
            proto::MarkReadRequest {
                ids: vec![list.notifications[1].id.clone()],
                ..Default::default()
            },
        ))
        .await
        .expect("mark read by id")
        .into_inner();
    assert_eq!((counts.unread, counts.seq), (0, 2));
    let unread = c
        .unread_count(authed(&user_token("alice"), proto::UnreadCountRequest {}))
        .await
        .expect("unread count")
        .into_inner();
    assert_eq!((unread.unread, unread.seq), (0, 2));
    assert_eq!(app.unread("alice").await, json!({"unread": 0, "seq": 2}));

    // Isolation: bob sees his one notification, unread; alice's ids mean nothing to him.
    let bob = c
        .list(authed(
            &user_token("bob"),
            proto::ListRequest {
                unread: true,
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(bob.notifications.len(), 1);
    let counts = c
        .mark_read(authed(
            &user_token("bob"),
            proto::MarkReadRequest {
                ids: vec![list.notifications[1].id.clone()],
                ..Default::default()
            },
        ))
        .await
        .expect("mark read")
        .into_inner();
    assert_eq!((counts.unread, counts.seq), (1, 1));

    // A topic publish answers with its reach.
    let status = app
        .client
        .put(app.url("/v1/topics/news/subscribers/carol"))
        .bearer_auth(&billing)
        .send()
        .await
        .expect("subscribe")
        .status();
    assert_eq!(status, 204);
    let topic = c
        .publish(authed(
            &billing,
            proto::PublishRequest {
                topic: "news".into(),
                r#type: "news".into(),
                title: "Hello".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("topic publish")
        .into_inner();
    assert_eq!((topic.topic.as_str(), topic.recipients), ("news", 1));
    assert!(topic.notifications.is_empty());
}

async fn grpc_validation_names_every_field(b: Backend) {
    let app = spawn_app(b).await;
    let mut c = client(&app).await;
    let billing = service_token("billing");
    let err = c
        .publish(authed(
            &billing,
            proto::PublishRequest {
                recipients: vec!["ok".into(), "not ok".into()],
                r#type: "Bad Type".into(),
                link: "nope".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    let f = fields(&err);
    for want in ["recipients[1]", "type", "title", "link"] {
        assert!(f.contains(&want.to_string()), "{want} missing from {f:?}");
    }
    // Nothing at all: the same words as REST.
    let err = c
        .publish(authed(&billing, proto::PublishRequest::default()))
        .await
        .expect_err("empty");
    assert_eq!(fields(&err), ["recipients", "type", "title"]);
    // A data object over 16 KiB.
    let mut big = publish_req(&["alice"]);
    big.data = tidings::grpc::json_to_struct(&json!({"x": "y".repeat(17 * 1024)}));
    let err = c
        .publish(authed(&billing, big))
        .await
        .expect_err("big data");
    assert_eq!(fields(&err), ["data"]);
    // A message over the REST body limit is refused before it is read.
    let mut huge = publish_req(&["alice"]);
    huge.body = "z".repeat(70 * 1024);
    let err = c
        .publish(authed(&billing, huge))
        .await
        .expect_err("too big");
    assert_ne!(err.code(), Code::Internal);
    assert_ne!(err.code(), Code::Ok);

    let alice = user_token("alice");
    for (req, field) in [
        (
            proto::ListRequest {
                limit: Some(0),
                ..Default::default()
            },
            "limit",
        ),
        (
            proto::ListRequest {
                limit: Some(201),
                ..Default::default()
            },
            "limit",
        ),
        (
            proto::ListRequest {
                after: Some(-1),
                ..Default::default()
            },
            "after",
        ),
        (
            proto::ListRequest {
                before: Some(0),
                ..Default::default()
            },
            "before",
        ),
        (
            proto::ListRequest {
                after: Some(1),
                before: Some(5),
                ..Default::default()
            },
            "before",
        ),
    ] {
        let err = c.list(authed(&alice, req)).await.expect_err("bad list");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(fields(&err), [field]);
    }
    for (req, field) in [
        (proto::MarkReadRequest::default(), "ids"),
        (
            proto::MarkReadRequest {
                ids: vec!["nope".into()],
                up_to: None,
            },
            "ids[0]",
        ),
        (
            proto::MarkReadRequest {
                ids: vec![],
                up_to: Some(-1),
            },
            "up_to",
        ),
    ] {
        let err = c
            .mark_read(authed(&alice, req))
            .await
            .expect_err("bad read");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(fields(&err), [field]);
    }
    let err = c
        .subscribe(authed(&alice, proto::SubscribeRequest { after: Some(-5) }))
        .await
        .expect_err("bad cursor");
    assert_eq!(fields(&err), ["after"]);
}

async fn grpc_tokens_follow_the_rest_rules(b: Backend) {
    let app = spawn_app(b).await;
    let mut c = client(&app).await;
    let err = c
        .publish(Request::new(publish_req(&["alice"])))
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = c
        .publish(authed("garbage", publish_req(&["alice"])))
        .await
        .expect_err("bad token");
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut basic = Request::new(proto::UnreadCountRequest {});
    basic
        .metadata_mut()
        .insert("authorization", "Basic abc".parse().unwrap());
    assert_eq!(
        c.unread_count(basic).await.expect_err("basic").code(),
        Code::Unauthenticated
    );
    let expired = sign(Algorithm::HS256, SECRET, "alice", -10, None);
    let err = c
        .unread_count(authed(&expired, proto::UnreadCountRequest {}))
        .await
        .expect_err("expired");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = c
        .publish(authed(&user_token("alice"), publish_req(&["alice"])))
        .await
        .expect_err("user publishes");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = c
        .list(authed(
            &service_token("billing"),
            proto::ListRequest::default(),
        ))
        .await
        .expect_err("service reads");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = c
        .subscribe(authed(
            &service_token("billing"),
            proto::SubscribeRequest::default(),
        ))
        .await
        .expect_err("service subscribes");
    assert_eq!(err.code(), Code::PermissionDenied);
}

async fn grpc_idempotency_key_works_as_the_rest_header(b: Backend) {
    let app = spawn_app(b).await;
    let mut c = client(&app).await;
    let billing = service_token("billing");
    let keyed = |body: proto::PublishRequest, key: &str| {
        let mut req = authed(&billing, body);
        req.metadata_mut()
            .insert("idempotency-key", key.parse().unwrap());
        req
    };
    let first = c
        .publish(keyed(publish_req(&["alice"]), "k-1"))
        .await
        .expect("first");
    assert!(first.metadata().get("idempotent-replayed").is_none());
    let again = c
        .publish(keyed(publish_req(&["alice"]), "k-1"))
        .await
        .expect("replay");
    assert_eq!(
        again
            .metadata()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    assert_eq!(first.into_inner(), again.into_inner());
    assert_eq!(app.unread("alice").await["unread"], 1);

    let err = c
        .publish(keyed(publish_req(&["bob"]), "k-1"))
        .await
        .expect_err("another body");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(fields(&err), ["Idempotency-Key"]);
    let topic = proto::PublishRequest {
        topic: "news".into(),
        r#type: "a".into(),
        title: "t".into(),
        ..Default::default()
    };
    let err = c
        .publish(keyed(topic, "k-2"))
        .await
        .expect_err("topic with a key");
    assert_eq!(fields(&err), ["Idempotency-Key"]);
}

async fn grpc_subscribe_replays_then_streams_live(b: Backend) {
    let app = spawn_app(b).await;
    let mut c = client(&app).await;
    for _ in 0..3 {
        app.publish(&sample(&["alice"])).await;
    }
    let mut from_one = c
        .subscribe(authed(
            &user_token("alice"),
            proto::SubscribeRequest { after: Some(1) },
        ))
        .await
        .expect("subscribe")
        .into_inner();
    let mut live_only = c
        .subscribe(authed(
            &user_token("alice"),
            proto::SubscribeRequest { after: None },
        ))
        .await
        .expect("subscribe")
        .into_inner();
    assert_eq!(seqs_until(&mut from_one, 2).await, [2, 3]);
    // The live-only stream starts with the counters, and nothing replayed.
    match next(&mut live_only).await.expect("ok").expect("open").event {
        Some(event::Event::Unread(counts)) => assert_eq!((counts.unread, counts.seq), (3, 3)),
        other => panic!("expected the counters first, got {other:?}"),
    }
    for _ in 0..2 {
        app.publish(&sample(&["alice"])).await;
    }
    app.publish(&sample(&["bob"])).await;
    assert_eq!(seqs_until(&mut from_one, 2).await, [4, 5]);
    assert_eq!(seqs_until(&mut live_only, 2).await, [4, 5]);
    // A read anywhere reaches the stream as new counters.
    app.mark_read("alice", &json!({"up_to": 5})).await;
    loop {
        if let Some(event::Event::Unread(counts)) =
            next(&mut from_one).await.expect("ok").expect("open").event
        {
            if counts.unread == 0 {
                assert_eq!(counts.seq, 5);
                break;
            }
        }
    }
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tidings_connections{transport=\"grpc\"} 2"),
        "{metrics}"
    );
}

async fn grpc_subscribe_over_the_replay_cap_says_resync(b: Backend) {
    let app = spawn_app(b).await;
    let users: Vec<&str> = vec!["alice"];
    for _ in 0..501 {
        app.publish(&sample(&users)).await;
    }
    let mut c = client(&app).await;
    let mut stream = c
        .subscribe(authed(
            &user_token("alice"),
            proto::SubscribeRequest { after: Some(0) },
        ))
        .await
        .expect("subscribe")
        .into_inner();
    match next(&mut stream).await.expect("ok").expect("open").event {
        Some(event::Event::Resync(r)) => assert_eq!(r.seq, 501),
        other => panic!("expected resync, got {other:?}"),
    }
    app.publish(&sample(&users)).await;
    assert_eq!(seqs_until(&mut stream, 1).await, [502]);
}

async fn grpc_a_slow_subscriber_is_cut_off_and_resumes_without_a_gap(b: Backend) {
    let app = spawn_app_with(b, |s| s.server.connection_queue = 4).await;
    // A small HTTP/2 window, so an unread stream backs up into the server's queue soon.
    let channel = tonic::transport::Endpoint::from_shared(app.grpc_address.clone())
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let mut c = NotificationsClient::new(channel);
    let mut stream = c
        .subscribe(authed(
            &user_token("alice"),
            proto::SubscribeRequest { after: Some(0) },
        ))
        .await
        .expect("subscribe")
        .into_inner();
    let mut body = sample(&["alice"]);
    body["body"] = json!("b".repeat(4000));
    body["data"] = json!({"pad": "p".repeat(15_000)});
    let total = 150;
    for _ in 0..total {
        app.publish(&body).await;
    }
    let (status, seen) = end_status(&mut stream).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let resume = resume_after(&status).expect("resume-after");
    assert_eq!(
        Some(&resume),
        seen.last(),
        "resume-after is the last seq received"
    );
    assert_eq!(seen, (1..=resume).collect::<Vec<_>>());
    // Resubscribing from there gets the rest, exactly once.
    let mut rest = c
        .subscribe(authed(
            &user_token("alice"),
            proto::SubscribeRequest {
                after: Some(resume),
            },
        ))
        .await
        .expect("resubscribe")
        .into_inner();
    let left = (total - resume) as usize;
    assert_eq!(
        seqs_until(&mut rest, left).await,
        ((resume + 1)..=total).collect::<Vec<_>>()
    );
}

async fn grpc_subscribe_ends_at_token_expiry(b: Backend) {
    let app = spawn_app(b).await;
    app.publish(&sample(&["alice"])).await;
    let mut c = client(&app).await;
    let short = sign(Algorithm::HS256, SECRET, "alice", 2, None);
    let mut stream = c
        .subscribe(authed(&short, proto::SubscribeRequest { after: Some(0) }))
        .await
        .expect("subscribe")
        .into_inner();
    let (status, seen) = end_status(&mut stream).await;
    assert_eq!(seen, [1]);
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(resume_after(&status), Some(1));
}

async fn grpc_subscribe_ends_at_shutdown_with_a_cursor(b: Backend) {
    let mut app = spawn_app(b).await;
    app.publish(&sample(&["alice"])).await;
    let mut c = client(&app).await;
    let mut stream = c
        .subscribe(authed(
            &user_token("alice"),
            proto::SubscribeRequest { after: Some(0) },
        ))
        .await
        .expect("subscribe")
        .into_inner();
    assert_eq!(seqs_until(&mut stream, 1).await, [1]);
    app.signal_stop();
    let (status, _) = end_status(&mut stream).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(resume_after(&status), Some(1));
}

async fn grpc_health_and_reflection_are_served(b: Backend) {
    let app = spawn_app(b).await;
    let channel = tonic::transport::Endpoint::from_shared(app.grpc_address.clone())
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "tidings.v1.Notifications"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
    // Reflection serves the contract compiled from the committed file, byte for byte.
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "tidings.v1.Notifications".into(),
        )),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream_once(request))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("ok")
        .expect("one response");
    let Some(MessageResponse::FileDescriptorResponse(files)) = response.message_response else {
        panic!(
            "expected a file descriptor, got {:?}",
            response.message_response
        );
    };
    let committed = protox::compile(
        ["tidings/v1/notifications.proto"],
        [concat!(env!("CARGO_MANIFEST_DIR"), "/proto")],
    )
    .expect("the committed .proto compiles");
    let wanted = committed
        .file
        .iter()
        .find(|f| f.name() == "tidings/v1/notifications.proto")
        .expect("the contract");
    let served: Vec<prost_types::FileDescriptorProto> = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost::Message::decode(bytes.as_slice()).expect("a descriptor"))
        .collect();
    assert!(
        served.iter().any(|f| f == wanted),
        "the served contract differs from proto/tidings/v1/notifications.proto"
    );
}

fn tokio_stream_once<T: Send + 'static>(
    item: T,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::iter([item])
}

// ---------------------------------------------------------------------------------------------
// The race: subscribers re-subscribing from their cursor while notifications are published
// ---------------------------------------------------------------------------------------------

const RACE_SUBSCRIBERS: usize = 20;
const RACE_NOTIFICATIONS: usize = 1000;
/// Publishes between two forced re-subscriptions (of the next subscriber in turn).
const RACE_RECONNECT_EVERY: usize = 3;

enum RaceCommand {
    Resubscribe,
    Stop,
}

#[derive(Default)]
struct RaceState {
    seqs: Vec<i64>,
    /// The highest seq received: what the next `Subscribe` resumes after.
    cursor: i64,
    subscribes: u64,
    resyncs: u64,
    /// The last few endings and failures, for a failure message.
    log: Vec<String>,
}

struct RaceShared {
    state: Mutex<RaceState>,
    progress: watch::Sender<i64>,
}

impl RaceShared {
    fn record(&self, seq: i64) {
        let mut st = self.state.lock().unwrap();
        st.seqs.push(seq);
        if seq > st.cursor {
            st.cursor = seq;
            self.progress.send_replace(seq);
        }
    }

    fn cursor(&self) -> i64 {
        self.state.lock().unwrap().cursor
    }

    fn log(&self, line: String) {
        let mut st = self.state.lock().unwrap();
        if st.log.len() >= 10 {
            st.log.remove(0);
        }
        st.log.push(line);
    }

    fn summary(&self) -> String {
        let st = self.state.lock().unwrap();
        format!(
            "cursor {}, {} seqs, {} subscribes, {} resyncs, recent: {:?}",
            st.cursor,
            st.seqs.len(),
            st.subscribes,
            st.resyncs,
            st.log
        )
    }
}

/// A gRPC subscriber that keeps its cursor (the last seq it saw) across re-subscriptions and
/// records every seq it receives; told to, it drops its stream and subscribes again with
/// `after` = that cursor, as a client following the contract does.
struct GrpcSubscriber {
    name: String,
    shared: Arc<RaceShared>,
    commands: mpsc::UnboundedSender<RaceCommand>,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcSubscriber {
    async fn spawn(name: String, app: &TestApp, token: String) -> GrpcSubscriber {
        let shared = Arc::new(RaceShared {
            state: Mutex::new(RaceState::default()),
            progress: watch::channel(0).0,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let c = client(app).await;
        let task = tokio::spawn(subscribe_loop(c, token, shared.clone(), rx));
        GrpcSubscriber {
            name,
            shared,
            commands: tx,
            task,
        }
    }

    fn resubscribe(&self) {
        let _ = self.commands.send(RaceCommand::Resubscribe);
    }

    fn subscribes(&self) -> u64 {
        self.shared.state.lock().unwrap().subscribes
    }

    /// Waits until seq `n` (or beyond) arrived, or panics at `deadline`.
    async fn wait_for_seq(&self, n: i64, deadline: Instant) {
        let mut rx = self.shared.progress.subscribe();
        let reached = matches!(
            tokio::time::timeout_at(deadline, rx.wait_for(|s| *s >= n)).await,
            Ok(Ok(_))
        );
        assert!(
            reached,
            "{} did not reach seq {n}: {}",
            self.name,
            self.shared.summary()
        );
    }

    /// Stops the task; returns the seqs received and how many subscriptions it took.
    async fn stop(self) -> (Vec<i64>, u64) {
        let _ = self.commands.send(RaceCommand::Stop);
        let abort = self.task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
        let mut st = self.shared.state.lock().unwrap();
        (std::mem::take(&mut st.seqs), st.subscribes)
    }
}

/// `true` when told to stop.
fn stop_asked(cmd: Option<RaceCommand>) -> bool {
    matches!(cmd, Some(RaceCommand::Stop) | None)
}

async fn subscribe_loop(
    mut c: NotificationsClient<Channel>,
    token: String,
    shared: Arc<RaceShared>,
    mut commands: mpsc::UnboundedReceiver<RaceCommand>,
) {
    loop {
        // Re-subscriptions asked for while no stream was open are already done.
        loop {
            match commands.try_recv() {
                Ok(RaceCommand::Resubscribe) => continue,
                Ok(RaceCommand::Stop) | Err(mpsc::error::TryRecvError::Disconnected) => return,
                Err(mpsc::error::TryRecvError::Empty) => break,
            }
        }
        let after = shared.cursor();
        let opened = tokio::select! {
            opened = c.subscribe(authed(&token, proto::SubscribeRequest { after: Some(after) })) => opened,
            cmd = commands.recv() => {
                if stop_asked(cmd) {
                    return;
                }
                continue;
            }
        };
        let mut stream = match opened {
            Ok(response) => response.into_inner(),
            Err(status) => {
                shared.log(format!("subscribe after {after} refused: {status:?}"));
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    cmd = commands.recv() => if stop_asked(cmd) { return } else { continue },
                }
            }
        };
        shared.state.lock().unwrap().subscribes += 1;
        let resync = loop {
            tokio::select! {
                cmd = commands.recv() => {
                    if stop_asked(cmd) {
                        return;
                    }
                    break false;
                }
                message = stream.message() => match message {
                    Ok(Some(proto::Event { event: Some(event::Event::Notification(n)) })) => {
                        shared.record(n.seq)
                    }
                    Ok(Some(proto::Event { event: Some(event::Event::Resync(r)) })) => {
                        shared.log(format!("resync to {} after {}", r.seq, shared.cursor()));
                        break true;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        shared.log("the stream ended without a status".into());
                        break false;
                    }
                    Err(status) => {
                        shared.log(format!("the stream ended: {status:?}"));
                        break false;
                    }
                }
            }
        };
        drop(stream);
        if resync {
            // Over the replay cap: page through `List` from the cursor, as the contract says.
            loop {
                let after = shared.cursor();
                let page = c
                    .list(authed(
                        &token,
                        proto::ListRequest {
                            after: Some(after),
                            limit: Some(200),
                            ..Default::default()
                        },
                    ))
                    .await;
                match page {
                    Ok(page) => {
                        let page = page.into_inner();
                        if page.notifications.is_empty() {
                            shared.state.lock().unwrap().resyncs += 1;
                            break;
                        }
                        for n in page.notifications {
                            shared.record(n.seq);
                        }
                    }
                    Err(status) => {
                        shared.log(format!("catch-up after {after} failed: {status:?}"));
                        break;
                    }
                }
            }
        }
    }
}

/// 20 subscribers of one user, each dropping its `Subscribe` stream and subscribing again with
/// `after` = the last seq it saw, over and over, while four tasks publish 1,000 notifications:
/// every subscriber ends with 1..=1000, once each, in order. The re-subscriptions are tied to
/// the publishing's progress, not the clock, so the race is as hard on a slow machine.
async fn grpc_resubscribing_from_the_cursor_while_publishing_loses_and_repeats_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let token = user_token("racer");
    let mut subscribers = Vec::new();
    for i in 0..RACE_SUBSCRIBERS {
        subscribers
            .push(GrpcSubscriber::spawn(format!("subscriber {i}"), &app, token.clone()).await);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for s in &subscribers {
        while s.subscribes() < 1 {
            assert!(
                Instant::now() < deadline,
                "{} never subscribed: {}",
                s.name,
                s.shared.summary()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let run = PublishRun::start(
        vec![app.address.clone()],
        service_token("billing"),
        vec!["racer".into()],
        RACE_NOTIFICATIONS,
        4,
        RACE_NOTIFICATIONS,
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut asked = 0usize;
    while run.done() < RACE_NOTIFICATIONS && !run.is_finished() {
        assert!(
            Instant::now() < deadline,
            "publishing did not finish in time ({} done); recent failures: {:?}",
            run.done(),
            run.failures_so_far()
        );
        if run.done() >= asked * RACE_RECONNECT_EVERY {
            // A stride coprime with the count, so neighbours are not always hit together.
            subscribers[(asked * 7) % RACE_SUBSCRIBERS].resubscribe();
            asked += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let failures = run.finish(Duration::from_secs(60)).await;
    assert!(failures.is_empty(), "publishing failed: {failures:?}");

    let deadline = Instant::now() + Duration::from_secs(120);
    for s in &subscribers {
        s.wait_for_seq(RACE_NOTIFICATIONS as i64, deadline).await;
    }
    let mut subscribes = 0;
    for s in subscribers {
        let name = s.name.clone();
        let (seqs, n) = s.stop().await;
        subscribes += n;
        if let Err(e) = check_exactly_once_in_order(&seqs, RACE_NOTIFICATIONS as i64) {
            panic!("{name} ({n} subscriptions): {e}");
        }
    }
    eprintln!("gRPC race: {asked} re-subscriptions asked, {subscribes} subscriptions in all");
    // Most asked-for re-subscriptions happened while notifications were still flowing.
    assert!(
        subscribes as usize >= RACE_SUBSCRIBERS + asked / 2,
        "only {subscribes} subscriptions for {asked} asked"
    );
    assert_eq!(app.unread("racer").await["seq"], RACE_NOTIFICATIONS);
}

/// `expires_at` / `ttl_seconds` and `collapse_key` (issue 26) as REST takes them: the same
/// rules, the same field names, and the expiry shown on the notification.
async fn grpc_publish_takes_expiry_and_collapse_key(b: Backend) {
    let app = spawn_app(b).await;
    let mut c = client(&app).await;
    let billing = service_token("billing");
    let mut req = publish_req(&["alice"]);
    req.ttl_seconds = Some(60);
    req.collapse_key = Some("chat:general".into());
    for _ in 0..2 {
        c.publish(authed(&billing, req.clone()))
            .await
            .expect("publish");
    }
    let page = app.list("alice", "?after=0").await;
    assert_eq!(crate::helpers::seqs(&page), [2], "{page}");
    assert!(page["notifications"][0]["expires_at"].is_string(), "{page}");
    assert_eq!(page["unread"], 1);
    for (bad, field) in [
        (
            proto::PublishRequest {
                collapse_key: Some(String::new()),
                ..publish_req(&["alice"])
            },
            "collapse_key",
        ),
        (
            proto::PublishRequest {
                expires_at: Some("yesterday".into()),
                ..publish_req(&["alice"])
            },
            "expires_at",
        ),
        (
            proto::PublishRequest {
                ttl_seconds: Some(0),
                ..publish_req(&["alice"])
            },
            "ttl_seconds",
        ),
    ] {
        let err = c.publish(authed(&billing, bad)).await.expect_err("invalid");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(fields(&err), [field]);
    }
}

crate::both_backends!(
    grpc_publish_takes_expiry_and_collapse_key,
    grpc_every_method_with_rest_semantics,
    grpc_validation_names_every_field,
    grpc_tokens_follow_the_rest_rules,
    grpc_idempotency_key_works_as_the_rest_header,
    grpc_subscribe_replays_then_streams_live,
    grpc_subscribe_over_the_replay_cap_says_resync,
    grpc_a_slow_subscriber_is_cut_off_and_resumes_without_a_gap,
    grpc_subscribe_ends_at_token_expiry,
    grpc_subscribe_ends_at_shutdown_with_a_cursor,
    grpc_health_and_reflection_are_served,
    grpc_resubscribing_from_the_cursor_while_publishing_loses_and_repeats_nothing,
);
