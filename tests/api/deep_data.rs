//! One nesting limit for `data` at ingest, for every face (issue 22, item 7), and a stored
//! notification deeper than that (written before the limit existed) still delivered over
//! gRPC, as JSON text, by List and by Subscribe and its resume.

use crate::helpers::{problem_fields, service_token, spawn_app, user_token, Backend, TestApp};
use serde_json::{json, Value};
use std::time::Duration;
use tidings::domain::NotificationData;
use tidings::grpc::proto::{self, event, notifications_client::NotificationsClient};
use tidings::grpc::{json_to_struct, struct_to_json};
use tidings::ingest::publish_command;
use tidings::shutdown::Shutdown;
use tidings::store::{Outbox, Store};
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_types::StatusExt;

/// Objects `depth` deep: `{"a": {"a": ... 1}}`.
fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |inner, _| json!({ "a": inner }))
}

fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    req
}

async fn client(app: &TestApp) -> NotificationsClient<Channel> {
    NotificationsClient::connect(app.grpc_address.clone())
        .await
        .expect("connect")
}

fn grpc_publish(data: &Value) -> proto::PublishRequest {
    proto::PublishRequest {
        recipients: vec!["alice".into()],
        r#type: "deep".into(),
        title: "deep".into(),
        data: json_to_struct(data),
        ..Default::default()
    }
}

async fn data_nesting_is_limited_at_ingest_on_every_face(b: Backend) {
    let app = spawn_app(b).await;
    let limit = NotificationData::MAX_DEPTH;
    let body = |data: Value| json!({"recipients": ["alice"], "type": "deep", "title": "deep", "data": data});
    app.publish(&body(nested(limit))).await;
    let refused = app
        .publish_raw(&service_token("billing"), &body(nested(limit + 1)), None)
        .await;
    assert_eq!(refused.status(), 422);
    let problem: Value = refused.json().await.expect("a problem");
    assert_eq!(problem_fields(&problem), ["data"], "{problem}");

    let mut grpc = client(&app).await;
    grpc.publish(authed(
        &service_token("billing"),
        grpc_publish(&nested(limit)),
    ))
    .await
    .expect("the limit itself is accepted over gRPC");
    let status = grpc
        .publish(authed(
            &service_token("billing"),
            grpc_publish(&nested(limit + 1)),
        ))
        .await
        .expect_err("one more level is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let named = status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| v.field)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(
        named == ["data"] || status.message().contains("data"),
        "does not name data: {status:?}"
    );
    // What was accepted is read back whole over gRPC (prost decodes it).
    let page = grpc
        .list(authed(&user_token("alice"), proto::ListRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page.notifications.len(), 2);
    for n in &page.notifications {
        let data = n.data.as_ref().expect("data as a Struct");
        assert_eq!(struct_to_json(data), nested(limit));
        assert_eq!(n.data_json, None);
    }
}

async fn a_stored_notification_deeper_than_a_face_can_encode_is_still_delivered(b: Backend) {
    let app = spawn_app(b).await;
    let deep = nested(100);
    // Written through the store, as a row from before the limit would be.
    {
        let shutdown = Shutdown::new();
        let store = Store::connect(&app.database_url, 2, Outbox::off(), &shutdown)
            .await
            .expect("connect to the app's database");
        let mut cmd = publish_command(
            "billing".into(),
            None,
            &json!({"recipients": ["alice"], "type": "old", "title": "from before the limit"}),
        )
        .expect("a command");
        let Value::Object(map) = deep.clone() else {
            unreachable!()
        };
        cmd.notification.data = Some(NotificationData::from_stored(map));
        store.publish(&cmd).await.expect("stored");
        shutdown.cancel();
        store.close().await;
    }
    let as_text = |n: &proto::Notification| -> Value {
        assert_eq!(n.data, None, "too deep for a Struct");
        serde_json::from_str(n.data_json.as_deref().expect("data as JSON text")).expect("JSON text")
    };
    let mut grpc = client(&app).await;
    let page = grpc
        .list(authed(&user_token("alice"), proto::ListRequest::default()))
        .await
        .expect("List survives the deep row")
        .into_inner();
    assert_eq!(page.notifications.len(), 1);
    assert_eq!(as_text(&page.notifications[0]), deep);

    // Subscribe replays it, goes on live, and a resume from the start replays it again.
    for round in 0..2 {
        let mut stream = grpc
            .subscribe(authed(
                &user_token("alice"),
                proto::SubscribeRequest { after: Some(0) },
            ))
            .await
            .expect("subscribe")
            .into_inner();
        let mut seen = Vec::new();
        if round == 0 {
            // Once the replay is out, a live one.
            let first = next_notification(&mut stream).await;
            assert_eq!(as_text(&first), deep);
            seen.push(first.seq);
            app.publish(&json!({"recipients": ["alice"], "type": "new", "title": "live"}))
                .await;
            seen.push(next_notification(&mut stream).await.seq);
        } else {
            let first = next_notification(&mut stream).await;
            assert_eq!(as_text(&first), deep);
            seen.push(first.seq);
            seen.push(next_notification(&mut stream).await.seq);
        }
        assert_eq!(seen, [1, 2], "round {round}");
    }
}

async fn next_notification(stream: &mut tonic::Streaming<proto::Event>) -> proto::Notification {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an event within 10 s")
            .expect("the stream stays alive")
            .expect("the stream stays open");
        if let Some(event::Event::Notification(n)) = event.event {
            return n;
        }
    }
}

crate::both_backends!(
    data_nesting_is_limited_at_ingest_on_every_face,
    a_stored_notification_deeper_than_a_face_can_encode_is_still_delivered,
);
