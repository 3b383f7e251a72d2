//! The MQTT bridge against a real Mosquitto (started per test on a free port, with its own
//! configuration) and a real, independent subscriber (rumqttc with a session of its own).

use crate::helpers::{sample, spawn_app_with, Backend, TestApp};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use secrecy::SecretString;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidings::configuration::Settings;
use tidings_test_support::live::{eventually, metric, scrape};

const WAIT: Duration = Duration::from_secs(60);

/// A private Mosquitto; stopped (SIGTERM, so it saves its sessions) and started again on
/// the same port by the outage test.
struct Broker {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    async fn start() -> Broker {
        Self::start_with("allow_anonymous true\n", |_| {}).await
    }

    /// A broker with `auth` lines in its configuration, after `prepare` has written any
    /// files they name into the broker's directory.
    async fn start_with(auth: &str, prepare: impl FnOnce(&std::path::Path)) -> Broker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let dir = tempfile::tempdir().expect("tempdir");
        prepare(dir.path());
        // `{dir}` in `auth` names the broker's own directory.
        let auth = auth.replace("{dir}", &dir.path().display().to_string());
        let conf = format!(
            "listener {port} 127.0.0.1\n{auth}persistence true\npersistence_location {}/\nmax_queued_messages 100000\n",
            dir.path().display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).expect("conf");
        let mut broker = Broker {
            port,
            dir,
            child: None,
        };
        broker.up().await;
        broker
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    async fn up(&mut self) {
        let conf: PathBuf = self.dir.path().join("mosquitto.conf");
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .expect("log");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("mosquitto must be installed (Debian package mosquitto)");
        self.child = Some(child);
        let port = self.port;
        eventually(WAIT, "mosquitto accepts connections", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
    }

    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.down();
    }
}

#[derive(Debug, Clone)]
struct Message {
    topic: String,
    payload: Value,
}

/// An independent subscriber to `tidings/users/#`, with a persistent session so the broker
/// keeps its QoS 1 messages across a broker restart.
struct Subscriber {
    got: Arc<Mutex<Vec<Message>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    async fn start(port: u16) -> Subscriber {
        Self::start_as(port, None, "tidings/users/#").await
    }

    async fn start_as(port: u16, login: Option<(&str, &str)>, filter: &str) -> Subscriber {
        let id = format!("test-sub-{}", uuid::Uuid::new_v4().simple());
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        let filter = filter.to_owned();
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(options, 100);
        let got = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn({
            let got = got.clone();
            let subscribed = subscribed.clone();
            async move {
                loop {
                    match events.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(ack))) if !ack.session_present => {
                            let _ = client.subscribe(filter.as_str(), QoS::AtLeastOnce).await;
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => subscribed.notify_one(),
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let payload = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                            got.lock().unwrap().push(Message {
                                topic: p.topic,
                                payload,
                            });
                        }
                        Ok(_) => {}
                        // The broker is restarting: try again shortly.
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        });
        tokio::time::timeout(WAIT, subscribed.notified())
            .await
            .expect("the subscriber subscribed");
        Subscriber { got, task }
    }

    fn messages(&self) -> Vec<Message> {
        self.got.lock().unwrap().clone()
    }

    /// Per user, the seqs of the notifications received, in arrival order, duplicates kept.
    fn notification_seqs(&self) -> BTreeMap<String, Vec<i64>> {
        let mut by_user: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for m in self.messages() {
            if let Some(user) = m
                .topic
                .strip_prefix("tidings/users/")
                .and_then(|t| t.strip_suffix("/notifications"))
            {
                by_user
                    .entry(user.to_owned())
                    .or_default()
                    .push(m.payload["seq"].as_i64().unwrap_or(-1));
            }
        }
        by_user
    }

    /// The newest unread message of `user` (by version).
    fn unread(&self, user: &str) -> Option<Value> {
        let topic = format!("tidings/users/{user}/unread");
        self.messages()
            .into_iter()
            .filter(|m| m.topic == topic)
            .max_by_key(|m| m.payload["version"].as_i64().unwrap_or(-1))
            .map(|m| m.payload)
    }

    /// Waits until every user has every seq 1..=n at least once.
    async fn wait_all(&self, users: &[String], n: i64) {
        eventually(
            WAIT,
            "every notification reached the subscriber",
            || async {
                let got = self.notification_seqs();
                users
                    .iter()
                    .all(|u| {
                        let seen: HashSet<i64> =
                            got.get(u).into_iter().flatten().copied().collect();
                        (1..=n).all(|s| seen.contains(&s))
                    })
                    .then_some(())
            },
        )
        .await;
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// At least once, and after dropping repeats, exactly 1..=n in order.
fn assert_in_order_after_dedup(by_user: &BTreeMap<String, Vec<i64>>, users: &[String], n: i64) {
    for u in users {
        let mut seen = HashSet::new();
        let firsts: Vec<i64> = by_user
            .get(u)
            .into_iter()
            .flatten()
            .copied()
            .filter(|s| seen.insert(*s))
            .collect();
        assert_eq!(firsts, (1..=n).collect::<Vec<_>>(), "user {u}");
    }
}

fn with_mqtt(url: String) -> impl FnOnce(&mut Settings) {
    move |s: &mut Settings| {
        s.mqtt.url = Some(SecretString::from(url));
        s.mqtt.poll_millis = 50;
    }
}

fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("mq-user-{i:02}")).collect()
}

/// Publishes `rounds` notifications to each user, `parallel` requests at a time.
async fn publish_rounds(app: &TestApp, users: &[String], rounds: usize) {
    for _ in 0..rounds {
        let bodies: Vec<Value> = users.iter().map(|u| sample(&[u.as_str()])).collect();
        futures::future::join_all(bodies.iter().map(|b| app.publish(b))).await;
    }
}

async fn mqtt_field(app: &TestApp) -> Value {
    let resp = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "readiness stays ready");
    let body: Value = resp.json().await.unwrap();
    body["mqtt"].clone()
}

async fn every_notification_reaches_the_broker_in_order(b: Backend) {
    let broker = Broker::start().await;
    let sub = Subscriber::start(broker.port).await;
    let app = spawn_app_with(b, with_mqtt(broker.url())).await;
    let users = users(20);
    let rounds = 50; // 1,000 notifications
    publish_rounds(&app, &users, rounds).await;
    sub.wait_all(&users, rounds as i64).await;
    assert_in_order_after_dedup(&sub.notification_seqs(), &users, rounds as i64);

    // The payload is the notification exactly as the REST API shows it.
    let listed = app.list(&users[3], "?after=0&limit=1").await;
    let first = sub
        .messages()
        .into_iter()
        .find(|m| m.topic == format!("tidings/users/{}/notifications", users[3]))
        .expect("a message");
    assert_eq!(first.payload, listed["notifications"][0]);

    // The retained unread count matches the REST one, and follows a mark-read.
    for u in &users {
        let rest = app.unread(u).await;
        let mqtt = sub.unread(u).expect("an unread message");
        assert_eq!(mqtt["unread"], rest["unread"], "{u}");
        assert_eq!(mqtt["seq"], rest["seq"], "{u}");
    }
    let (status, _) = app.mark_read(&users[0], &json!({"up_to": 10})).await;
    assert_eq!(status, 200);
    let expected = app.unread(&users[0]).await["unread"].clone();
    assert_eq!(expected, json!(rounds - 10));
    eventually(WAIT, "the mark-read reaches the unread topic", || async {
        (sub.unread(&users[0]).map(|v| v["unread"].clone()) == Some(expected.clone())).then_some(())
    })
    .await;

    // A late subscriber gets the retained count at once.
    let late = Subscriber::start(broker.port).await;
    eventually(WAIT, "the retained unread count", || async {
        (late.unread(&users[0]).map(|v| v["unread"].clone()) == Some(expected.clone()))
            .then_some(())
    })
    .await;

    let m = mqtt_field(&app).await;
    assert_eq!(m["broker"], "up");
    let text = scrape(&app.client, &app.address).await;
    assert!(metric(&text, "tidings_mqtt_acknowledged_total", &[]).unwrap_or(0.0) >= 1000.0);
}

async fn nothing_is_lost_while_the_broker_is_down(b: Backend) {
    let mut broker = Broker::start().await;
    let sub = Subscriber::start(broker.port).await;
    let app = spawn_app_with(b, with_mqtt(broker.url())).await;
    let users = users(5);
    publish_rounds(&app, &users, 10).await;
    sub.wait_all(&users, 10).await;

    broker.down();
    eventually(WAIT, "readiness shows the broker down", || async {
        (mqtt_field(&app).await["broker"] == "down").then_some(())
    })
    .await;
    // The API keeps working; the outbox grows.
    publish_rounds(&app, &users, 20).await;
    eventually(WAIT, "the outbox depth shows the backlog", || async {
        let text = scrape(&app.client, &app.address).await;
        (metric(&text, "tidings_mqtt_outbox_depth", &[]).unwrap_or(0.0) >= 100.0).then_some(())
    })
    .await;
    assert!(mqtt_field(&app).await["outbox"].as_i64().unwrap_or(0) >= 100);

    broker.up().await;
    publish_rounds(&app, &users, 5).await;
    sub.wait_all(&users, 35).await;
    assert_in_order_after_dedup(&sub.notification_seqs(), &users, 35);
    eventually(WAIT, "the outbox drains", || async {
        let text = scrape(&app.client, &app.address).await;
        (metric(&text, "tidings_mqtt_outbox_depth", &[]) == Some(0.0)).then_some(())
    })
    .await;
}

async fn rows_past_the_maximum_age_are_dropped_and_counted(b: Backend) {
    // No broker listens here: everything stays in the outbox until it is too old.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let app = spawn_app_with(b, move |s| {
        with_mqtt(format!("mqtt://127.0.0.1:{port}"))(s);
        s.mqtt.max_age_seconds = 1;
    })
    .await;
    app.publish(&sample(&["aged"])).await;
    eventually(WAIT, "the old rows are dropped", || async {
        let text = scrape(&app.client, &app.address).await;
        (metric(&text, "tidings_mqtt_outbox_dropped_total", &[]).unwrap_or(0.0) >= 2.0
            && metric(&text, "tidings_mqtt_outbox_depth", &[]) == Some(0.0))
        .then_some(())
    })
    .await;
    // Publishing never depended on the broker.
    assert_eq!(
        app.list("aged", "?after=0").await["notifications"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

/// The depth in `/readyz` and in the gauge is the outbox's now, not as the bridge last
/// measured it (every 5 s): read right after the publishes that filled it.
async fn the_outbox_depth_is_current(b: Backend) {
    // No broker listens here: every row stays in the outbox.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let app = spawn_app_with(b, with_mqtt(format!("mqtt://127.0.0.1:{port}"))).await;
    assert_eq!(mqtt_field(&app).await["outbox"], 0);
    for _ in 0..3 {
        app.publish(&sample(&["deep"])).await;
    }
    // A notification and an unread count per publish.
    assert_eq!(mqtt_field(&app).await["outbox"], 6);
    let text = scrape(&app.client, &app.address).await;
    assert_eq!(metric(&text, "tidings_mqtt_outbox_depth", &[]), Some(6.0));
    // A mark-read adds the new count.
    let (status, _) = app.mark_read("deep", &json!({"up_to": 3})).await;
    assert_eq!(status, 200);
    let text = scrape(&app.client, &app.address).await;
    assert_eq!(metric(&text, "tidings_mqtt_outbox_depth", &[]), Some(7.0));
    assert_eq!(mqtt_field(&app).await["outbox"], 7);
}

async fn without_a_url_there_is_no_bridge(b: Backend) {
    let app = spawn_app_with(b, |_| {}).await;
    app.publish(&sample(&["plain"])).await;
    let body: Value = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(body.get("mqtt").is_none(), "{body}");
    let text = scrape(&app.client, &app.address).await;
    assert!(!text.contains("tidings_mqtt_"), "no bridge metrics");
}

/// Preferences (issue 25) on the bridge: a type muted for the inbox never reaches the
/// broker; a type muted on `mqtt` only is stored and counted, and the broker gets its badge
/// update but not the notification.
async fn preferences_mute_the_bridge(b: Backend) {
    let broker = Broker::start().await;
    let sub = Subscriber::start(broker.port).await;
    let app = spawn_app_with(b, with_mqtt(broker.url())).await;
    let resp = app
        .client
        .put(app.url("/v1/preferences"))
        .bearer_auth(crate::helpers::user_token("mq-prefs"))
        .json(&json!({"rules": [
            {"types": ["promo.*"], "channels": ["all"], "action": "mute"},
            {"types": ["chat.*"], "channels": ["mqtt"], "action": "mute"},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for kind in ["promo.deal", "chat.message", "order.shipped"] {
        let mut body = sample(&["mq-prefs"]);
        body["type"] = json!(kind);
        app.publish(&body).await;
    }
    // seq 1 is the chat message (stored, not sent), seq 2 the order; the promo has none.
    eventually(WAIT, "the order and the badge after it", || async {
        let badge = sub.unread("mq-prefs").map(|v| v["unread"].clone());
        (sub.notification_seqs()
            .get("mq-prefs")
            .is_some_and(|s| s.contains(&2))
            && badge == Some(json!(2)))
        .then_some(())
    })
    .await;
    let sent: Vec<String> = sub
        .messages()
        .into_iter()
        .filter(|m| m.topic.ends_with("/notifications"))
        .map(|m| m.payload["type"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(sent.iter().all(|t| t == "order.shipped"), "{sent:?}");
}

/// Quiet hours (issue 25) on the bridge: while they last, a user's notifications are stored
/// and counted (the inbox is never held back) but nothing goes to the broker for them; when
/// they end, one badge update and the newest unread notification. The window is the real
/// current minute in UTC, so the test waits for at most about a minute and a quarter.
async fn quiet_hours_hold_the_bridge_then_send_one_update(b: Backend) {
    use chrono::{Timelike, Utc};
    let broker = Broker::start().await;
    let sub = Subscriber::start(broker.port).await;
    let app = spawn_app_with(b, with_mqtt(broker.url())).await;
    let now = Utc::now();
    let minute = now
        - chrono::Duration::seconds(i64::from(now.second()))
        - chrono::Duration::nanoseconds(i64::from(now.nanosecond()));
    // At least 15 s of quiet left for the publishes and the checks below.
    let end = minute + chrono::Duration::minutes(if now.second() >= 45 { 2 } else { 1 });
    let start = minute - chrono::Duration::minutes(1);
    let resp = app
        .client
        .put(app.url("/v1/preferences"))
        .bearer_auth(crate::helpers::user_token("mq-quiet"))
        .json(&json!({"quiet_hours": {
            "start": start.format("%H:%M").to_string(),
            "end": end.format("%H:%M").to_string(),
            "time_zone": "UTC",
        }}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for _ in 0..3 {
        app.publish(&sample(&["mq-quiet"])).await;
    }
    app.publish(&sample(&["mq-other"])).await;
    // The inbox is never held back.
    assert_eq!(app.unread("mq-quiet").await["unread"], 3);
    // The bridge runs (another user's arrives), and nothing of mq-quiet's went out.
    eventually(WAIT, "mq-other's notification", || async {
        sub.notification_seqs()
            .contains_key("mq-other")
            .then_some(())
    })
    .await;
    assert!(Utc::now() < end, "the checks ran within the quiet hours");
    assert!(
        sub.messages()
            .iter()
            .all(|m| !m.topic.contains("/mq-quiet/")),
        "nothing of mq-quiet's during quiet hours"
    );
    // At the end: the newest notification and the badge, once.
    eventually(
        Duration::from_secs(150),
        "the update at the end of quiet hours",
        || async {
            (sub.notification_seqs().get("mq-quiet") == Some(&vec![3])
                && sub.unread("mq-quiet").map(|v| v["unread"].clone()) == Some(json!(3)))
            .then_some(())
        },
    )
    .await;
    assert!(Utc::now() >= end);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sub.notification_seqs().get("mq-quiet"),
        Some(&vec![3]),
        "one notification"
    );
}

crate::both_backends!(
    quiet_hours_hold_the_bridge_then_send_one_update,
    preferences_mute_the_bridge,
    every_notification_reaches_the_broker_in_order,
    nothing_is_lost_while_the_broker_is_down,
    rows_past_the_maximum_age_are_dropped_and_counted,
    the_outbox_depth_is_current,
    without_a_url_there_is_no_bridge,
);

/// Two replicas on one Postgres, both running the bridge: they share the outbox, and in the
/// normal case no notification is published twice; each user's arrive in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_share_the_outbox_without_repeats() {
    let broker = Broker::start().await;
    let sub = Subscriber::start(broker.port).await;
    let (name, url) = tidings_test_support::harness::create_database("tidings_mqtt").await;
    let shared = |url: String, broker: String| {
        move |s: &mut Settings| {
            with_mqtt(broker)(s);
            s.database.url = SecretString::from(url);
        }
    };
    let a = spawn_app_with(Backend::Postgres, shared(url.clone(), broker.url())).await;
    let b = spawn_app_with(Backend::Postgres, shared(url.clone(), broker.url())).await;
    let users = users(20);
    let rounds = 20;
    for round in 0..rounds {
        let app = if round % 2 == 0 { &a } else { &b };
        publish_rounds(app, &users, 1).await;
    }
    sub.wait_all(&users, rounds).await;
    let got = sub.notification_seqs();
    assert_in_order_after_dedup(&got, &users, rounds);
    for u in &users {
        assert_eq!(
            got[u].len(),
            rounds as usize,
            "{u} got a repeat: {:?}",
            got[u]
        );
    }
    drop((a, b));
    tidings_test_support::harness::drop_database_blocking(&name);
}

/// A replica that dies mid-batch: its lease (a transaction) rolls back when its connection
/// goes, and another worker takes the same user's rows, from the oldest. While the lease
/// lives, other workers skip that user instead of publishing its later rows out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_dead_lease_leaves_its_rows_to_others() {
    use tidings::shutdown::Shutdown;
    use tidings::store::{Outbox, Store};
    // No broker here: the app's own bridge never takes a lease, the rows stay.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let (name, url) = tidings_test_support::harness::create_database("tidings_mqtt").await;
    let app = spawn_app_with(Backend::Postgres, {
        let url = url.clone();
        move |s| {
            with_mqtt(format!("mqtt://127.0.0.1:{port}"))(s);
            s.database.url = SecretString::from(url);
        }
    })
    .await;
    for _ in 0..3 {
        app.publish(&sample(&["held", "free"])).await;
    }
    let shutdown = Shutdown::new();
    let one = Store::connect(&url, 2, Outbox::on(), &shutdown)
        .await
        .unwrap();
    let two = Store::connect(&url, 2, Outbox::on(), &shutdown)
        .await
        .unwrap();

    // The first worker takes one user (the oldest rows' user), the second gets the other.
    let first = one.outbox_lease(1, 100).await.unwrap();
    let first_user = first.rows()[0].user.clone();
    assert!(first.rows().iter().all(|r| r.user == first_user));
    assert_eq!(first.rows().len(), 6, "3 notifications and 3 unread counts");
    let second = two.outbox_lease(10, 100).await.unwrap();
    assert!(!second.rows().is_empty());
    assert!(
        second.rows().iter().all(|r| r.user != first_user),
        "a leased user is skipped"
    );
    second.complete(&[]).await.unwrap();

    // The first worker dies mid-batch: its transaction rolls back. The rows are all there
    // for the next worker, from the oldest.
    let ids: Vec<i64> = first.rows().iter().map(|r| r.id).collect();
    drop(first);
    let again = eventually(WAIT, "the dead lease's rows are free again", || async {
        let lease = two.outbox_lease(10, 100).await.unwrap();
        let mine: Vec<i64> = lease
            .rows()
            .iter()
            .filter(|r| r.user == first_user)
            .map(|r| r.id)
            .collect();
        if mine.is_empty() {
            lease.complete(&[]).await.unwrap();
            None
        } else {
            Some((lease, mine))
        }
    })
    .await;
    assert_eq!(again.1, ids);
    again.0.complete(&again.1).await.unwrap();
    one.close().await;
    two.close().await;
    shutdown.cancel();
    drop(app);
    tidings_test_support::harness::drop_database_blocking(&name);
}

/// The README's Mosquitto ACL (deploy/mosquitto/acl, as committed): the bridge user writes
/// under the prefix, alice reads her own topics and not bob's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_keeps_users_to_their_own_topics() {
    let acl = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/mosquitto/acl");
    let logins = [
        ("tidings-bridge", "bridge-pw"),
        ("alice", "alice-pw"),
        ("bob", "bob-pw"),
    ];
    let broker = Broker::start_with(
        &format!("allow_anonymous false\npassword_file {{dir}}/passwd\nacl_file {acl}\n"),
        |dir| {
            let passwd = dir.join("passwd");
            std::fs::write(&passwd, "").expect("passwd");
            for (user, password) in logins {
                let ok = Command::new("mosquitto_passwd")
                    .arg("-b")
                    .arg(&passwd)
                    .arg(user)
                    .arg(password)
                    .status()
                    .expect("mosquitto_passwd (Debian package mosquitto)");
                assert!(ok.success());
            }
        },
    )
    .await;
    let port = broker.port;
    let app = spawn_app_with(
        Backend::Sqlite,
        with_mqtt(format!("mqtt://tidings-bridge:bridge-pw@127.0.0.1:{port}")),
    )
    .await;
    let alice_on_bob =
        Subscriber::start_as(port, Some(("alice", "alice-pw")), "tidings/users/bob/#").await;
    let alice =
        Subscriber::start_as(port, Some(("alice", "alice-pw")), "tidings/users/alice/#").await;
    // Bob's first, then alice's: once alice has hers, bob's would have arrived too.
    app.publish(&sample(&["bob"])).await;
    app.publish(&sample(&["alice"])).await;
    alice.wait_all(&["alice".to_owned()], 1).await;
    assert!(
        alice_on_bob.messages().is_empty(),
        "alice read bob's topics"
    );
    let bob = Subscriber::start_as(port, Some(("bob", "bob-pw")), "tidings/users/bob/#").await;
    eventually(WAIT, "bob reads his retained unread count", || async {
        bob.unread("bob").map(|_| ())
    })
    .await;
}
