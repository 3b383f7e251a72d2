//! The nginx topology suite: the deployment of `docker-compose.yml` (three replicas behind nginx
//! with `deploy/nginx.conf`, one Postgres, one Redis) run as local processes by
//! `scripts/cluster.sh`, with clients that connect only through nginx on SSE, WebSocket and
//! long-poll while publishing (also through nginx) runs all the time.
//!
//! Needs Debian's `nginx`, `redis-server`, a local Postgres (`TIDINGS_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and, for the compose check, Debian's
//! `docker-compose`. A missing tool fails the test with the command that installs it; nothing
//! is skipped. The tests run one at a time (they would only slow each other down on a small
//! machine) and print the figures for the closing note; run with `-- --nocapture` to see them,
//! or read `target/tmp/nginx-figures.txt`.

mod measure;
mod sockjs;
mod topology;

use measure::{errors, millis, pace, percentiles, report_figure, tally, watch_gaps, Gaps};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tidings_test_support::live::{
    self, eventually, fixed_token, long_poll, metric, publish, sample, scrape, Auth, Collector,
    CollectorOptions, PollAnswer, PublishRun, Report, SseClient, SseEvent, SseOptions, Transport,
    WsClient, WsFrame, WsOptions, WAIT,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use topology::{service_token, user_token, Topology, HEARTBEAT_SECONDS, REPLICAS};

/// One topology at a time: each runs four servers and dozens of clients, and the figures
/// (reconnect gaps, latency) mean something only on an otherwise quiet machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Far more publishes than any test lets out: the tests stop the publishing, not the count.
const UNBOUNDED: usize = 1_000_000;

fn users(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:02}")).collect()
}

/// A collector that connects through nginx only.
fn collector(t: &Topology, user: &str, transport: Transport) -> Collector {
    Collector::spawn(CollectorOptions::new(
        format!("{user} {transport:?} via nginx"),
        transport,
        vec![t.url()],
        fixed_token(user_token(user)),
    ))
}

fn collectors(t: &Topology, users: &[String], transports: &[Transport]) -> Vec<Collector> {
    users
        .iter()
        .flat_map(|u| transports.iter().map(move |&tr| collector(t, u, tr)))
        .collect()
}

async fn all_connected(collectors: &[Collector]) {
    for c in collectors {
        c.wait_connects(1, WAIT).await;
    }
}

/// Open connections of one replica, from its own `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Held {
    sse: i64,
    websocket: i64,
    longpoll: i64,
}

impl Held {
    /// SSE streams and WebSockets: the connections that stay open.
    fn persistent(&self) -> i64 {
        self.sse + self.websocket
    }
}

/// Scrapes replica `n` directly (not through nginx). `None` when it does not answer.
async fn held_by(t: &Topology, n: usize) -> Option<Held> {
    let url = format!("{}/metrics", t.replica_url(n));
    let call = async {
        let resp = t.client.get(&url).send().await.ok()?;
        if resp.status() != 200 {
            return None;
        }
        resp.text().await.ok()
    };
    let text = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .ok()??;
    let get = |transport: &str| {
        metric(&text, "tidings_connections", &[("transport", transport)]).unwrap_or(0.0) as i64
    };
    Some(Held {
        sse: get("sse"),
        websocket: get("websocket"),
        longpoll: get("longpoll"),
    })
}

/// Waits until the replicas `among` (1-based) together hold `persistent` SSE + WebSocket
/// connections; returns what each of them holds.
async fn wait_persistent(
    t: &Topology,
    among: &[usize],
    persistent: i64,
    within: Duration,
) -> BTreeMap<usize, Held> {
    eventually(
        within,
        &format!("replicas {among:?} to hold {persistent} SSE + WebSocket connections"),
        || async {
            let mut by = BTreeMap::new();
            for &n in among {
                by.insert(n, held_by(t, n).await?);
            }
            (by.values().map(Held::persistent).sum::<i64>() == persistent).then_some(by)
        },
    )
    .await
}

fn describe(by: &BTreeMap<usize, Held>) -> String {
    by.iter()
        .map(|(n, h)| {
            format!(
                "replica {n}: sse={} ws={} poll={}",
                h.sse, h.websocket, h.longpoll
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What replica `n`'s own `/readyz` said while it restarted: milliseconds from the start of
/// the watch to readiness failing (SIGTERM seen), to connections being refused (the listener
/// closed), and to 200 again.
#[derive(Debug, Default)]
struct Seen {
    not_ready: Option<u128>,
    refused: Option<u128>,
    ready_again: Option<u128>,
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |v: Option<u128>| v.map_or("-".to_owned(), |v| format!("{v} ms"));
        write!(
            f,
            "readyz 503 at {}, refusing at {}, ready again at {}",
            ms(self.not_ready),
            ms(self.refused),
            ms(self.ready_again)
        )
    }
}

/// Polls replica `n`'s `/readyz` directly every 10 ms until `done` turns true.
async fn observe(t: &Topology, n: usize, mut done: watch::Receiver<bool>) -> Seen {
    let url = format!("{}/readyz", t.replica_url(n));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(1))
        .build()
        .expect("client");
    let started = Instant::now();
    let mut seen = Seen::default();
    loop {
        let status = client.get(&url).send().await.map(|r| r.status().as_u16());
        let at = started.elapsed().as_millis();
        match status {
            Ok(200) if seen.not_ready.is_some() || seen.refused.is_some() => {
                seen.ready_again.get_or_insert(at);
            }
            Ok(200) => {}
            Ok(_) => {
                seen.not_ready.get_or_insert(at);
            }
            Err(_) => {
                seen.refused.get_or_insert(at);
            }
        }
        if *done.borrow() || seen.ready_again.is_some() {
            return seen;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            _ = done.changed() => {}
        }
    }
}

/// Waits until every collector has received seq `n`.
async fn all_reach(collectors: &[Collector], n: i64, within: Duration) {
    let deadline = Instant::now() + within;
    for c in collectors {
        let left = deadline.saturating_duration_since(Instant::now());
        c.wait_for_seq(n, left.max(Duration::from_millis(1))).await;
    }
}

fn longest(gaps: &[Gaps]) -> (Duration, String, Duration, u64) {
    let worst = gaps
        .iter()
        .max_by_key(|g| g.longest_reconnect_gap)
        .expect("collectors");
    let longest_gap = gaps.iter().map(|g| g.longest_gap).max().unwrap_or_default();
    let reconnects = gaps.iter().map(|g| g.reconnects).sum();
    (
        worst.longest_reconnect_gap,
        worst.name.clone(),
        longest_gap,
        reconnects,
    )
}

/// What nginx answered clients on the API paths, by status, from its access log.
fn nginx_statuses(log: &str) -> BTreeMap<u16, usize> {
    let mut by = BTreeMap::new();
    for line in log.lines() {
        // `addr [time] "GET /v1/... HTTP/1.1" 200 123 rt=...`
        let Some((request, rest)) = line.split_once("\" ") else {
            continue;
        };
        if !request.contains(" /v1/") {
            continue;
        }
        if let Some(status) = rest
            .split_whitespace()
            .next()
            .and_then(|s| s.parse::<u16>().ok())
        {
            *by.entry(status).or_default() += 1;
        }
    }
    by
}

/// A client error from nginx or a replica that is not the client's own doing (499: the client
/// closed the request, which the collectors do when they reconnect or stop).
fn client_errors(statuses: &BTreeMap<u16, usize>) -> Vec<(u16, usize)> {
    statuses
        .iter()
        .filter(|(s, _)| (400..500).contains(*s) && **s != 499)
        .map(|(s, n)| (*s, *n))
        .collect()
}

fn publish_retries(run: &PublishRun) -> String {
    match run.failures_so_far().len() {
        10 => ">=10".into(),
        n => n.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_spreads_users_over_every_replica() {
    const USERS: usize = 15;
    const PUBLISHES: usize = 180;
    let _serial = SERIAL.lock().await;
    let t = Topology::up().await;
    let status = t.status().await;
    assert!(
        status.success(),
        "cluster.sh status after up:\n{}",
        status.output
    );

    let users = users("spread", USERS);
    let run = PublishRun::start(
        vec![t.url()],
        service_token("billing"),
        users.clone(),
        PUBLISHES,
        3,
        0,
    );
    let (_stop_tx, stop_rx) = watch::channel(false);
    // The clients connect while publishing runs; each starts from seq 0, so it receives
    // what was published before it connected too.
    let connect = async {
        let clients = collectors(&t, &users, &[Transport::Sse, Transport::WebSocket]);
        all_connected(&clients).await;
        let all: Vec<usize> = (1..=REPLICAS).collect();
        let by = wait_persistent(&t, &all, (USERS * 2) as i64, WAIT).await;
        (clients, by)
    };
    let (published, (clients, by)) = tokio::join!(pace(&run, PUBLISHES, 60, stop_rx), connect);
    assert_eq!(published, PUBLISHES);
    report_figure(&format!(
        "SPREAD: {} SSE + WebSocket clients through nginx (least_conn): {}",
        USERS * 2,
        describe(&by)
    ));
    for (n, h) in &by {
        assert!(
            h.persistent() > 0,
            "replica {n} holds no connection: {}",
            describe(&by)
        );
    }

    // Publishing through nginx reaches every user, wherever nginx put them.
    let failures = run.finish(Duration::from_secs(60)).await;
    assert!(
        failures.is_empty(),
        "publishing through nginx failed with every replica up: {failures:?}"
    );
    live::finish_and_assert(clients, PUBLISHES as i64, Duration::from_secs(60)).await;
    for n in 1..=REPLICAS {
        let text = scrape(&t.client, &t.replica_url(n)).await;
        let delivered = metric(&text, "tidings_notifications_delivered_total", &[]).unwrap_or(0.0);
        assert!(
            delivered > 0.0,
            "replica {n} delivered nothing to the clients it holds:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_replica_moves_its_clients_through_nginx_losing_nothing() {
    const USERS: usize = 6;
    const RATE: u64 = 40;
    let _serial = SERIAL.lock().await;
    let t = Topology::up().await;
    let users = users("kill", USERS);
    let clients = collectors(
        &t,
        &users,
        &[Transport::Sse, Transport::WebSocket, Transport::LongPoll],
    );
    all_connected(&clients).await;
    let all: Vec<usize> = (1..=REPLICAS).collect();
    let persistent = (USERS * 2) as i64;
    let before = wait_persistent(&t, &all, persistent, WAIT).await;
    // The replica with the most open streams and sockets.
    let (&victim, victim_held) = before
        .iter()
        .max_by_key(|(n, h)| (h.persistent(), std::cmp::Reverse(**n)))
        .expect("replicas");
    let victim_held = victim_held.persistent();
    assert!(victim_held > 0, "no replica holds a connection");
    let survivors: Vec<usize> = all.iter().copied().filter(|&n| n != victim).collect();

    let run = PublishRun::start(
        vec![t.url()],
        service_token("billing"),
        users.clone(),
        UNBOUNDED,
        3,
        0,
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let driver = async {
        run.wait_done(60, Duration::from_secs(60)).await;
        all_reach(&clients, 50, Duration::from_secs(30)).await;

        let killed = t.kill(victim).await;
        assert!(
            killed.output.contains("SIGKILL"),
            "cluster.sh kill {victim}:\n{}",
            killed.output
        );
        let at_kill = run.done();
        // The script sees the hole; nginx routes around it.
        let status = t.status().await;
        assert!(
            !status.success(),
            "cluster.sh status must fail with replica {victim} killed:\n{}",
            status.output
        );
        assert!(
            held_by(&t, victim).await.is_none(),
            "replica {victim} still answers after kill -9"
        );
        let after = wait_persistent(&t, &survivors, persistent, Duration::from_secs(30)).await;
        // Keep publishing a while with the replica gone.
        run.wait_done(at_kill + 60, Duration::from_secs(60)).await;
        all_reach(&clients, (at_kill + 50) as i64, Duration::from_secs(60)).await;
        stop_tx.send_replace(true);
        after
    };
    let (published, gaps, after) = tokio::join!(
        pace(&run, UNBOUNDED, RATE, stop_rx.clone()),
        watch_gaps(&clients, stop_rx.clone()),
        driver
    );
    run.wait_done(published, Duration::from_secs(60)).await;
    let retries = publish_retries(&run);
    drop(run);
    let reports: Vec<Report> =
        live::finish_and_assert(clients, published as i64, Duration::from_secs(60)).await;

    let reconnected = reports.iter().filter(|r| r.connects >= 2).count();
    assert!(
        reconnected as i64 >= victim_held,
        "replica {victim} held {victim_held} streams and sockets, but only {reconnected} \
         clients reconnected"
    );
    let e = errors(&reports);
    let counts = tally(&reports, published as i64);
    let (gap, gap_client, longest_gap, reconnects) = longest(&gaps);
    report_figure(&format!(
        "KILL -9: replica {victim} held {victim_held} of {persistent} SSE+WS connections \
         (before: {}; after: {}); publishes={published} recipients={USERS} published={} \
         clients={} delivered={} lost={} duplicated={} reconnected_clients={reconnected} \
         reconnects={reconnects} longest_reconnect_gap_ms={} ({gap_client}) \
         longest_delivery_gap_ms={} publish_retries={retries}; client errors recovered from: {}",
        describe(&before),
        describe(&after),
        published * USERS,
        counts.clients,
        counts.delivered,
        counts.lost,
        counts.duplicated,
        gap.as_millis(),
        longest_gap.as_millis(),
        e.summary()
    ));
    assert!(
        e.unrecoverable.is_empty(),
        "clients saw errors they cannot recover from: {:?}",
        e.unrecoverable
    );
    assert_eq!((counts.lost, counts.duplicated), (0, 0));

    // The script brings it back.
    t.start(victim).await;
    let status = t.status().await;
    assert!(
        status.success(),
        "cluster.sh status after start {victim}:\n{}",
        status.output
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_with_sigterm_loses_nothing() {
    const USERS: usize = 8;
    const RATE: u64 = 40;
    let _serial = SERIAL.lock().await;
    let t = Topology::up().await;
    let users = users("roll", USERS);
    let clients = collectors(
        &t,
        &users,
        &[Transport::Sse, Transport::WebSocket, Transport::LongPoll],
    );
    all_connected(&clients).await;
    let all: Vec<usize> = (1..=REPLICAS).collect();
    let persistent = (USERS * 2) as i64;
    wait_persistent(&t, &all, persistent, WAIT).await;
    let log_start = t.nginx_log().len();

    let run = PublishRun::start(
        vec![t.url()],
        service_token("billing"),
        users.clone(),
        UNBOUNDED,
        3,
        0,
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let driver = async {
        run.wait_done(40, Duration::from_secs(60)).await;
        all_reach(&clients, 30, Duration::from_secs(30)).await;
        let mut steps = Vec::new();
        for n in 1..=REPLICAS {
            let held_before = held_by(&t, n).await.unwrap_or_default();
            let (seen_tx, seen_rx) = watch::channel(false);
            let (restart, seen) = tokio::join!(
                async {
                    let run = t.restart(n).await;
                    seen_tx.send_replace(true);
                    run
                },
                observe(&t, n, seen_rx)
            );
            // A clean SIGTERM exit within the grace period, not the script's SIGKILL fallback.
            assert!(
                restart.output.contains("SIGTERM") && !restart.output.contains("SIGKILL"),
                "cluster.sh restart {n} did not stop the replica with SIGTERM alone:\n{}",
                restart.output
            );
            // Everyone back, caught up, before the next replica goes.
            let done = run.done();
            all_reach(&clients, done as i64, Duration::from_secs(60)).await;
            let by = wait_persistent(&t, &all, persistent, Duration::from_secs(30)).await;
            steps.push(format!(
                "replica {n}: held sse={} ws={} poll={}; cluster.sh restart took {} ms ({}); \
                 then {}",
                held_before.sse,
                held_before.websocket,
                held_before.longpoll,
                restart.took.as_millis(),
                seen,
                describe(&by)
            ));
        }
        // Publishing goes on a little after the last restart.
        let done = run.done();
        run.wait_done(done + 40, Duration::from_secs(60)).await;
        stop_tx.send_replace(true);
        steps
    };
    let (published, gaps, steps) = tokio::join!(
        pace(&run, UNBOUNDED, RATE, stop_rx.clone()),
        watch_gaps(&clients, stop_rx.clone()),
        driver
    );
    let took = started.elapsed();
    run.wait_done(published, Duration::from_secs(60)).await;
    let retries = publish_retries(&run);
    drop(run);
    let reports: Vec<Report> =
        live::finish_and_assert(clients, published as i64, Duration::from_secs(60)).await;

    let e = errors(&reports);
    let counts = tally(&reports, published as i64);
    let (gap, gap_client, longest_gap, reconnects) = longest(&gaps);
    let log = t.nginx_log();
    let log = log.get(log_start..).unwrap_or("");
    let statuses = nginx_statuses(log);
    for step in &steps {
        report_figure(&format!("ROLLING RESTART step: {step}"));
    }
    report_figure(&format!(
        "ROLLING RESTART: published={} delivered={} lost={} duplicated={} \
         longest_reconnect_gap_ms={} (publishes={published} x recipients={USERS}; \
         clients={} = {USERS} users x SSE/WebSocket/long-poll, each expecting seqs 1..={published}; \
         reconnects={reconnects}; longest gap by {gap_client}; longest_delivery_gap_ms={}; \
         publish_retries={retries}; {} s at {RATE} publishes/s)",
        published * USERS,
        counts.delivered,
        counts.lost,
        counts.duplicated,
        gap.as_millis(),
        counts.clients,
        longest_gap.as_millis(),
        took.as_secs()
    ));
    let no_live = log.matches("no live upstreams").count();
    report_figure(&format!(
        "ROLLING RESTART errors clients recovered from: {}; nginx answered on /v1/: \
         {statuses:?}; nginx had no live upstream {no_live} times",
        e.summary()
    ));
    assert!(
        e.unrecoverable.is_empty(),
        "clients saw errors they cannot recover from: {:?}",
        e.unrecoverable
    );
    // Each replica is ready again before the next one stops, so nginx always has one to
    // give (deploy/: the backup group that is never marked failed).
    assert_eq!(
        no_live, 0,
        "nginx answered 'no live upstreams' while replicas were ready"
    );
    assert!(
        client_errors(&statuses).is_empty(),
        "nginx answered client errors during the rolling restart: {statuses:?}"
    );
    assert_eq!((counts.lost, counts.duplicated), (0, 0));
    assert_eq!(
        counts.delivered,
        counts.clients * published,
        "every client received every notification once"
    );
    let status = t.status().await;
    assert!(
        status.success(),
        "cluster.sh status after the rolling restart:\n{}",
        status.output
    );
}

/// Reads an SSE stream in a task and reports `(seq, when it arrived)` for each notification.
fn timestamps(mut sse: SseClient) -> mpsc::UnboundedReceiver<(i64, Instant)> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(ev) = sse.next_within(Duration::from_secs(60)).await {
            let at = Instant::now();
            match ev {
                SseEvent::Notification { seq, .. } if tx.send((seq, at)).is_err() => return,
                SseEvent::End | SseEvent::Error(_) => return,
                _ => {}
            }
        }
    });
    rx
}

async fn arrival(
    rx: &mut mpsc::UnboundedReceiver<(i64, Instant)>,
    seq: i64,
    what: &str,
) -> Instant {
    let (got, at) = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: seq {seq} did not arrive within {WAIT:?}"))
        .unwrap_or_else(|| panic!("{what}: the stream ended before seq {seq}"));
    assert_eq!(got, seq, "{what}: notifications arrive in order");
    at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_flows_through_nginx_unbuffered_with_heartbeats() {
    const N: i64 = 200;
    let _serial = SERIAL.lock().await;
    let t = Topology::up().await;
    let token = user_token("latency");
    let opts = SseOptions::new(Auth::Query(token.clone()), Some(0));

    let mut via_nginx = SseClient::connect(&t.client, &t.url(), &opts)
        .await
        .unwrap_or_else(|e| panic!("SSE through nginx: {e}"));
    assert_eq!(via_nginx.wait_unread(0).await, (0, Some(0)));
    let content_type = via_nginx
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        content_type.starts_with("text/event-stream"),
        "through nginx: {:?}",
        via_nginx.headers
    );
    // The replica nginx chose: the direct client goes to the same one, so the only
    // difference between the two is nginx.
    let all: Vec<usize> = (1..=REPLICAS).collect();
    let by = wait_persistent(&t, &all, 1, WAIT).await;
    let (&replica, _) = by
        .iter()
        .find(|(_, h)| h.sse == 1)
        .expect("one replica holds the stream");
    let direct_url = t.replica_url(replica);
    let mut direct = SseClient::connect(&t.client, &direct_url, &opts)
        .await
        .unwrap_or_else(|e| panic!("SSE direct: {e}"));
    assert_eq!(direct.wait_unread(0).await, (0, Some(0)));
    assert_eq!(
        direct
            .headers
            .get("x-accel-buffering")
            .and_then(|v| v.to_str().ok()),
        Some("no"),
        "the replica tells proxies not to buffer: {:?}",
        direct.headers
    );
    // nginx acts on X-Accel-* and does not pass them on.
    let forwarded = via_nginx.headers.get("x-accel-buffering").cloned();

    let mut rx_nginx = timestamps(via_nginx);
    let mut rx_direct = timestamps(direct);
    let svc = service_token("billing");
    let mut through_nginx = Vec::new();
    let mut straight = Vec::new();
    for seq in 1..=N {
        let sent = Instant::now();
        publish(&t.client, &direct_url, &svc, &sample(&["latency"]), None)
            .await
            .expect("publish");
        let a = arrival(&mut rx_nginx, seq, "SSE through nginx").await;
        let b = arrival(&mut rx_direct, seq, "SSE direct").await;
        through_nginx.push(millis(a - sent));
        straight.push(millis(b - sent));
    }
    let extra: Vec<f64> = through_nginx
        .iter()
        .zip(&straight)
        .map(|(a, b)| a - b)
        .collect();
    let (n50, n99, nmax) = percentiles(&through_nginx);
    let (d50, d99, dmax) = percentiles(&straight);
    let (e50, e99, _) = percentiles(&extra);
    report_figure(&format!(
        "SSE LATENCY publish->receive, {N} notifications, both clients on replica {replica}: \
         through nginx p50={n50:.2}ms p99={n99:.2}ms max={nmax:.2}ms; direct p50={d50:.2}ms \
         p99={d99:.2}ms max={dmax:.2}ms; nginx minus direct, same notification: \
         p50={e50:.2}ms p99={e99:.2}ms (X-Accel-Buffering passed on by nginx: {forwarded:?})"
    ));

    // Heartbeats: an idle stream through nginx gets `: ping` comments as they are sent.
    let url = live::url_with(
        &t.url(),
        "/v1/notifications/stream",
        &[("access_token", token.clone())],
    );
    let resp = tokio::time::timeout(WAIT, t.client.get(&url).send())
        .await
        .expect("headers in time")
        .expect("GET stream through nginx");
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let mut pings = 0;
    let within = Duration::from_secs(HEARTBEAT_SECONDS * 3) + WAIT;
    let deadline = Instant::now() + within;
    while pings < 2 {
        let chunk = tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut body))
            .await
            .unwrap_or_else(|_| {
                panic!("fewer than 2 heartbeats through nginx within {within:?}: {text:?}")
            })
            .expect("the stream stays open")
            .expect("the stream reads");
        text.push_str(&String::from_utf8_lossy(&chunk));
        pings = text.matches(": ping").count();
    }
    assert!(text.starts_with("retry:"), "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_and_websocket_work_through_nginx() {
    let _serial = SERIAL.lock().await;
    let t = Topology::up().await;
    let token = user_token("carol");
    let svc = service_token("billing");

    // Nothing new: 204 after the timeout, passed through as is.
    let answer = long_poll(&t.client, &t.url(), &token, Some(0), None, Some(1))
        .await
        .expect("poll through nginx");
    assert!(matches!(answer, PollAnswer::NoContent), "{answer:?}");

    // A poll that waits about 3 s, then gets its notification.
    let waiting = {
        let (client, base, token) = (t.client.clone(), t.url(), token.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = long_poll(&client, &base, &token, Some(0), None, Some(30)).await;
            (answer, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !waiting.is_finished(),
        "the poll answered before anything was published"
    );
    publish(&t.client, &t.url(), &svc, &sample(&["carol"]), None)
        .await
        .expect("publish through nginx");
    let (answer, waited) = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the poll answers once the notification commits")
        .expect("poll task");
    let answer = answer.expect("poll through nginx");
    assert_eq!(answer.seqs(), [1]);
    assert_eq!(answer.counts(), (1, 1));
    assert!(waited >= Duration::from_secs(3), "{waited:?}");
    report_figure(&format!(
        "LONG-POLL through nginx: waited {} ms, answered with seq 1",
        waited.as_millis()
    ));

    // WebSocket: the upgrade passes, frames flow both ways, pings keep it open.
    let mut ws = WsClient::open(&t.url(), &token, Some(1)).await;
    assert_eq!(ws.wait_unread(1).await, 1);
    ws.send_json(&json!({"type": "ping"})).await;
    loop {
        match ws.next().await {
            WsFrame::Pong => break,
            WsFrame::Unread { .. } => continue,
            other => panic!("waiting for a pong through nginx, got {other:?}"),
        }
    }
    // Two server heartbeats and more: the socket answers pings through nginx and stays open.
    let idle = Duration::from_secs(HEARTBEAT_SECONDS * 2 + 1);
    match ws.next_within(idle).await {
        None | Some(WsFrame::Unread { .. }) => {}
        other => panic!("the idle socket through nginx: {other:?}"),
    }
    publish(&t.client, &t.url(), &svc, &sample(&["carol"]), None)
        .await
        .expect("publish through nginx");
    assert_eq!(ws.next_notification().await.0, 2);
    ws.send_read_up_to(2).await;
    assert_eq!(ws.wait_unread(0).await, 2);
    ws.close().await;

    // nginx forwards the Host the browser used, so the page's own origin passes the check
    // and another site's does not.
    let own = WsOptions {
        after: Some(2),
        auth: Auth::Query(token.clone()),
        origin: Some(t.url()),
    };
    let mut ws = WsClient::connect(&t.url(), &own)
        .await
        .unwrap_or_else(|e| panic!("a same-origin WebSocket through nginx: {e}"));
    assert_eq!(ws.wait_unread(0).await, 2);
    ws.close().await;
    let foreign = WsOptions {
        origin: Some("https://evil.example".into()),
        ..own
    };
    match WsClient::connect(&t.url(), &foreign).await {
        Err(e) => assert_eq!(e.status(), Some(403), "{e}"),
        Ok(_) => panic!("a cross-site WebSocket through nginx was accepted"),
    }
}

// ---------------------------------------------------------------------------------------------
// docker-compose.yml
// ---------------------------------------------------------------------------------------------

fn find_on_path(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let dest = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).expect("copy");
        }
    }
}

/// `docker-compose ARGS` in `dir`, with nothing from the environment that compose would
/// substitute; `(success, stdout, stderr)`.
fn docker_compose(tool: &Path, dir: &Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(tool);
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("TIDINGS") || k.starts_with("COMPOSE_") || k.starts_with("POSTGRES_") {
            cmd.env_remove(key);
        }
    }
    let child = cmd.spawn().expect("run docker-compose");
    // wait_with_output drains both pipes; a thread bounds it.
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(out) => out.expect("docker-compose output"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("docker-compose {args:?} did not finish within 120 s");
        }
    };
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn docker_compose_config_validates_with_the_env_example() {
    let tool = find_on_path("docker-compose").unwrap_or_else(|| {
        panic!(
            "docker-compose is required to validate docker-compose.yml and was not found on \
             PATH: install Debian's package with `apt-get install -y docker-compose`"
        )
    });
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    // What the compose file refers to: itself, the build context's Dockerfile, deploy/.
    for file in ["docker-compose.yml", "Dockerfile"] {
        std::fs::copy(root.join(file), dir.path().join(file)).expect("copy");
    }
    copy_tree(&root.join("deploy"), &dir.path().join("deploy"));
    let example = std::fs::read_to_string(root.join(".env.example")).expect(".env.example");

    // As the compose file's header says: copy .env.example, then set the secret.
    let secret = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    std::fs::write(
        dir.path().join(".env"),
        format!("{example}\nTIDINGS__AUTH__JWT_SECRET={secret}\n"),
    )
    .expect("write .env");
    let (ok, _, stderr) = docker_compose(&tool, dir.path(), &["config", "-q"]);
    assert!(
        ok,
        "docker-compose config -q rejected docker-compose.yml:\n{stderr}"
    );

    // The resolved file: three replicas, each told about the shared Postgres, Redis and secret.
    let (ok, resolved, stderr) = docker_compose(&tool, dir.path(), &["config"]);
    assert!(ok, "docker-compose config:\n{stderr}");
    for service in [
        "postgres:",
        "redis:",
        "tidings1:",
        "tidings2:",
        "tidings3:",
        "nginx:",
    ] {
        assert!(
            resolved.contains(&format!("  {service}\n")),
            "no service {service} in:\n{resolved}"
        );
    }
    assert_eq!(
        resolved.matches(secret).count(),
        3,
        "each replica gets the secret from .env:\n{resolved}"
    );
    assert_eq!(
        resolved
            .matches("TIDINGS__REDIS__URL: redis://redis:6379")
            .count(),
        3,
        "{resolved}"
    );

    // .env.example alone (secret still commented out): compose refuses, naming the variable.
    std::fs::write(dir.path().join(".env"), &example).expect("write .env");
    let (ok, _, stderr) = docker_compose(&tool, dir.path(), &["config", "-q"]);
    assert!(
        !ok && stderr.contains("TIDINGS__AUTH__JWT_SECRET"),
        "without a secret docker-compose config must fail naming it; ok={ok}:\n{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// gRPC and gRPC-Web through nginx
// ---------------------------------------------------------------------------------------------

fn grpc_authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    req
}

async fn grpc_client(
    url: &str,
) -> tidings::grpc::proto::notifications_client::NotificationsClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("a gRPC address")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tidings::grpc::proto::notifications_client::NotificationsClient::new(channel)
}

/// Reads a `Subscribe` stream until `want` notification seqs arrived, bounded.
async fn grpc_seqs(
    stream: &mut tonic::Streaming<tidings::grpc::proto::Event>,
    want: usize,
    what: &str,
) -> Vec<i64> {
    use tidings::grpc::proto::event::Event;
    let mut seqs = Vec::new();
    while seqs.len() < want {
        match tokio::time::timeout(WAIT, stream.message()).await {
            Ok(Ok(Some(e))) => {
                if let Some(Event::Notification(n)) = e.event {
                    seqs.push(n.seq);
                }
            }
            other => panic!("{what}: after {seqs:?}, the stream gave {other:?}"),
        }
    }
    seqs
}

/// nginx's gRPC server (`grpc_pass` over HTTP/2) in front of the three replicas: subscribers
/// spread over them get, exactly once and in order, what was published on each replica
/// directly and through nginx; the health service answers through nginx; and a gRPC-Web call
/// (HTTP/1.1) goes through nginx's HTTP port to the replicas' gRPC listeners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_grpc_web_through_nginx_reach_every_replica() {
    use tidings::grpc::proto;
    const SUBSCRIBERS: usize = 3;
    let _serial = SERIAL.lock().await;
    let t = Topology::up().await;
    let user = "grpc-user";

    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(t.grpc_url())
            .expect("address")
            .connect()
            .await
            .expect("connect to nginx's gRPC port"),
    );
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "tidings.v1.Notifications".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("health through nginx: {e:?}\n{}", t.logs()))
        .into_inner()
        .status;
    assert_eq!(
        serving,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Subscribers through nginx, each on a connection of its own.
    let mut streams = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut c = grpc_client(&t.grpc_url()).await;
        let stream = c
            .subscribe(grpc_authed(
                &user_token(user),
                proto::SubscribeRequest { after: Some(0) },
            ))
            .await
            .unwrap_or_else(|e| panic!("subscribe through nginx: {e:?}\n{}", t.logs()))
            .into_inner();
        streams.push((c, stream));
    }
    let held = eventually(WAIT, "every gRPC subscriber held by a replica", || async {
        let mut by = Vec::new();
        for n in 1..=REPLICAS {
            let text = scrape(&t.client, &t.replica_url(n)).await;
            by.push(metric(&text, "tidings_connections", &[("transport", "grpc")]).unwrap_or(0.0));
        }
        (by.iter().sum::<f64>() >= SUBSCRIBERS as f64).then_some(by)
    })
    .await;
    report_figure(&format!(
        "GRPC: {SUBSCRIBERS} Subscribe streams through nginx (least_conn), per replica: {held:?}"
    ));
    assert!(
        held.iter().filter(|&&h| h > 0.0).count() >= 2,
        "least_conn put every gRPC stream on one replica: {held:?}"
    );

    // One publish on each replica's own gRPC listener, one through nginx: every subscriber,
    // whichever replica holds it, gets all four.
    let publish_req = |k: usize| proto::PublishRequest {
        recipients: vec![user.into()],
        r#type: "grpc.nginx".into(),
        title: format!("notification {k}"),
        ..Default::default()
    };
    for n in 1..=REPLICAS {
        let mut c = grpc_client(&t.replica_grpc_url(n)).await;
        let receipt = c
            .publish(grpc_authed(&service_token("billing"), publish_req(n)))
            .await
            .unwrap_or_else(|e| panic!("publish on replica {n}: {e:?}"))
            .into_inner();
        assert_eq!(receipt.notifications[0].seq, n as i64);
    }
    let mut via = grpc_client(&t.grpc_url()).await;
    via.publish(grpc_authed(&service_token("billing"), publish_req(4)))
        .await
        .unwrap_or_else(|e| panic!("publish through nginx: {e:?}\n{}", t.logs()));
    for (i, (_, stream)) in streams.iter_mut().enumerate() {
        assert_eq!(
            grpc_seqs(stream, 4, &format!("subscriber {i}")).await,
            [1, 2, 3, 4]
        );
    }

    // gRPC-Web (HTTP/1.1) through nginx's HTTP port: UnreadCount, one framed empty message in,
    // one framed `Counts` and a trailer frame with grpc-status 0 out.
    let resp = t
        .client
        .post(format!("{}/tidings.v1.Notifications/UnreadCount", t.url()))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .bearer_auth(user_token(user))
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .expect("gRPC-Web through nginx");
    assert_eq!(resp.status(), 200, "{}", t.logs());
    let body = resp.bytes().await.expect("gRPC-Web body");
    assert!(
        body.len() >= 5 && body[0] == 0,
        "a data frame first: {body:?}"
    );
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    assert!(body.len() >= 5 + len, "a whole data frame: {body:?}");
    let counts: proto::Counts =
        prost::Message::decode(&body[5..5 + len]).expect("a Counts message");
    assert_eq!((counts.unread, counts.seq), (4, 4));
    let trailer = String::from_utf8_lossy(&body[5 + len..]).to_lowercase();
    assert!(trailer.contains("grpc-status:0"), "trailer: {trailer:?}");
}
