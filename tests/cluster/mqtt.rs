//! The MQTT bridge across real replicas: several `tidings` processes on one Postgres drain
//! one outbox into one private Mosquitto, and an independent subscriber checks what the
//! broker got. One replica is `kill -9`ed mid-run; its leased rows must go to the others.

use crate::cluster::{service_token, Cluster};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidings_test_support::live::{eventually, metric, scrape, PublishRun};
use tidings_test_support::processes::{kill_now, tail};

const WAIT: Duration = Duration::from_secs(90);

/// A private Mosquitto on a free port, with a generated configuration; killed on drop.
struct Broker {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    async fn start() -> Broker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n"
            ),
        )
        .expect("write mosquitto.conf");
        let log = std::fs::File::create(dir.path().join("mosquitto.log")).expect("log");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("mosquitto must be installed (Debian package mosquitto)");
        eventually(WAIT, "mosquitto accepts connections", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        Broker {
            port,
            dir,
            child: Some(child),
        }
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            kill_now(child);
        }
        if std::thread::panicking() {
            eprintln!(
                "---- mosquitto log ----\n{}",
                tail(&self.dir.path().join("mosquitto.log"), 30)
            );
        }
    }
}

/// An independent subscriber to `tidings/users/+/notifications`: per user, the seqs in
/// arrival order, repeats kept.
struct Subscriber {
    got: Arc<Mutex<BTreeMap<String, Vec<i64>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    async fn start(port: u16) -> Subscriber {
        let id = format!("test-sub-{}", uuid::Uuid::new_v4().simple());
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(options, 100);
        let got = Arc::new(Mutex::new(BTreeMap::<String, Vec<i64>>::new()));
        let subscribed = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn({
            let got = got.clone();
            let subscribed = subscribed.clone();
            async move {
                loop {
                    match events.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(ack))) if !ack.session_present => {
                            let _ = client
                                .subscribe("tidings/users/+/notifications", QoS::AtLeastOnce)
                                .await;
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => subscribed.notify_one(),
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let Some(user) = p
                                .topic
                                .strip_prefix("tidings/users/")
                                .and_then(|t| t.strip_suffix("/notifications"))
                            else {
                                continue;
                            };
                            let seq = serde_json::from_slice::<Value>(&p.payload)
                                .ok()
                                .and_then(|v| v["seq"].as_i64())
                                .unwrap_or(-1);
                            got.lock()
                                .unwrap()
                                .entry(user.to_owned())
                                .or_default()
                                .push(seq);
                        }
                        Ok(_) => {}
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

    fn seqs(&self) -> BTreeMap<String, Vec<i64>> {
        self.got.lock().unwrap().clone()
    }

    fn received(&self) -> usize {
        self.got.lock().unwrap().values().map(Vec::len).sum()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Each user's seqs, first copies only.
fn firsts(seqs: &[i64]) -> Vec<i64> {
    let mut seen = HashSet::new();
    seqs.iter().copied().filter(|s| seen.insert(*s)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_bridge_replica_mid_run_loses_no_mqtt_message() {
    const TOTAL: usize = 300;
    let broker = Broker::start().await;
    let sub = Subscriber::start(broker.port).await;
    let url = broker.url();
    let mut c = Cluster::start_with_env(
        3,
        &[
            ("TIDINGS__MQTT__URL", url.as_str()),
            ("TIDINGS__MQTT__POLL_MILLIS", "50"),
            // Small batches: every replica holds leases at any moment of the run.
            ("TIDINGS__MQTT__BATCH_USERS", "3"),
            ("TIDINGS__MQTT__BATCH_PER_USER", "5"),
        ],
    )
    .await;
    let users: Vec<String> = (0..12).map(|i| format!("mq-cluster-{i:02}")).collect();
    // Each notification goes to a third of the users, so users' outboxes interleave.
    let runs: Vec<PublishRun> = users
        .chunks(4)
        .map(|group| {
            PublishRun::start(
                c.urls(),
                service_token("billing"),
                group.to_vec(),
                TOTAL,
                2,
                TOTAL / 3,
            )
        })
        .collect();
    for run in &runs {
        run.wait_done(TOTAL / 3, WAIT).await;
    }
    // The bridges are busy: the broker has been getting messages, and more are committed.
    eventually(WAIT, "the bridges publish", || async {
        (sub.received() >= 100).then_some(())
    })
    .await;
    // The replica to be killed takes part: it has had rows acknowledged, so it holds leases.
    let doomed = c.url(1);
    let client = c.client.clone();
    eventually(WAIT, "replica 1 publishes to the broker", || {
        let (doomed, client) = (doomed.clone(), client.clone());
        async move {
            let text = scrape(&client, &doomed).await;
            (metric(&text, "tidings_mqtt_acknowledged_total", &[]).unwrap_or(0.0) >= 1.0)
                .then_some(())
        }
    })
    .await;
    // Kill while publishes are still coming in, not between two phases.
    for run in &runs {
        run.allow(TOTAL * 2 / 3);
    }
    for run in &runs {
        run.wait_done(TOTAL / 2, WAIT).await;
    }
    c.kill9(1);
    for run in &runs {
        run.set_targets(vec![c.url(0), c.url(2)]);
        run.allow(TOTAL);
    }
    for run in runs {
        let failures = run.finish(WAIT).await;
        // Publishes that were in flight on the killed replica are retried elsewhere.
        assert!(
            failures.iter().all(|f| f.contains(&c.url(1))),
            "publishing failed beyond the killed replica: {failures:?}"
        );
    }

    // Every user gets every seq at least once, and no user stalls behind the dead lease.
    eventually(
        WAIT,
        "every user's notifications reach the broker",
        || async {
            let got = sub.seqs();
            users
                .iter()
                .all(|u| {
                    let seen: HashSet<i64> = got.get(u).into_iter().flatten().copied().collect();
                    (1..=TOTAL as i64).all(|s| seen.contains(&s))
                })
                .then_some(())
        },
    )
    .await;
    let got = sub.seqs();
    for u in &users {
        let seqs = got.get(u).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            firsts(seqs),
            (1..=TOTAL as i64).collect::<Vec<_>>(),
            "user {u}: first copies in seq order, no gap"
        );
    }
    // The survivors drained the outbox, the dead replica's rows included.
    for i in [0, 2] {
        let base = c.url(i);
        let client = c.client.clone();
        eventually(WAIT, "the outbox is empty", || {
            let (base, client) = (base.clone(), client.clone());
            async move {
                let text = scrape(&client, &base).await;
                (metric(&text, "tidings_mqtt_outbox_depth", &[]) == Some(0.0)).then_some(())
            }
        })
        .await;
    }
}
