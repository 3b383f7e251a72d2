//! SockJS through nginx with three replicas: every request of an xhr-polling or xhr-streaming
//! session reaches the replica that holds it (nginx hashes on the session id in the URL), and
//! after `kill -9` of that replica the client opens a new session, which lands elsewhere, and
//! resumes by cursor, losing nothing.

use crate::topology::{service_token, user_token, Topology, REPLICAS};
use futures::StreamExt;
use std::collections::BTreeSet;
use std::time::Duration;
use tidings_test_support::live::{publish, sample};
use tokio::time::Instant;

const WITHIN: Duration = Duration::from_secs(60);

fn connect(token: &str, after: i64) -> String {
    serde_json::to_string(&[
        format!("CONNECT\naccept-version:1.2\nheart-beat:0,0\npasscode:{token}\n\n\0"),
        format!(
            "SUBSCRIBE\nid:0\ndestination:/user/queue/notifications\nx-tidings-after:{after}\n\n\0"
        ),
    ])
    .expect("json")
}

/// The notification seqs in the SockJS frames of `text` (one frame per line).
fn seqs_of(text: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(array) = line.strip_prefix('a') else {
            continue;
        };
        let frames: Vec<String> = serde_json::from_str(array).unwrap_or_default();
        for f in frames {
            let head = f.split("\n\n").next().unwrap_or_default();
            if head.lines().any(|l| l == "x-tidings-event:notification") {
                if let Some(seq) = head
                    .lines()
                    .find_map(|l| l.strip_prefix("x-tidings-seq:"))
                    .and_then(|v| v.parse().ok())
                {
                    out.push(seq);
                }
            }
        }
    }
    out
}

/// The replicas (by number) that served requests of `session`, from nginx's access log.
fn replicas_of(t: &Topology, session: &str) -> BTreeSet<usize> {
    let log = t.nginx_log();
    let mut found = BTreeSet::new();
    for line in log.lines().filter(|l| l.contains(&format!("/{session}/"))) {
        for n in 1..=REPLICAS {
            let addr = t.replica_url(n).trim_start_matches("http://").to_owned();
            if line.contains(&format!("upstream={addr} ")) {
                found.insert(n);
            }
        }
    }
    found
}

struct Client<'a> {
    t: &'a Topology,
    http: reqwest::Client,
    token: String,
    seqs: Vec<i64>,
    sessions: Vec<String>,
}

impl<'a> Client<'a> {
    fn new(t: &'a Topology, user: &str) -> Self {
        Client {
            t,
            http: reqwest::Client::new(),
            token: user_token(user),
            seqs: Vec::new(),
            sessions: Vec::new(),
        }
    }

    fn url(&self, session: &str, transport: &str) -> String {
        // The token on the SockJS URL, as sockjs-client repeats it on every request.
        format!(
            "{}/v1/sockjs/000/{session}/{transport}?access_token={}",
            self.t.url(),
            self.token
        )
    }

    async fn post(&self, session: &str, transport: &str, body: String) -> Option<String> {
        let resp = self
            .http
            .post(self.url(session, transport))
            .body(body)
            .timeout(Duration::from_secs(40))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.text().await.ok()
    }

    /// Opens a new xhr-polling session from the cursor. False if it could not.
    async fn open_polling(&mut self) -> bool {
        let session = format!("poll{}", self.sessions.len());
        if self.post(&session, "xhr", String::new()).await.as_deref() != Some("o\n") {
            return false;
        }
        let after = self.seqs.last().copied().unwrap_or(0);
        if self
            .post(&session, "xhr_send", connect(&self.token, after))
            .await
            .is_none()
        {
            return false;
        }
        self.sessions.push(session);
        true
    }

    /// Polls the current session until `n` is reached; on a broken or replaced session
    /// (the replica died), opens a new one, as sockjs-client does, and goes on.
    async fn poll_until(&mut self, n: i64) {
        let deadline = Instant::now() + WITHIN;
        while self.seqs.last().copied().unwrap_or(0) < n {
            assert!(
                Instant::now() < deadline,
                "polling reached {:?}, not {n}",
                self.seqs.last()
            );
            let current = self.sessions.last().cloned();
            let answer = match &current {
                Some(s) => self.post(s, "xhr", String::new()).await,
                None => None,
            };
            match answer.as_deref() {
                Some(text) if text.starts_with('a') || text.starts_with('h') => {
                    self.seqs.extend(seqs_of(text));
                }
                // "o" (a replica that never saw this session), "c[...]", or no answer.
                _ => {
                    while !self.open_polling().await {
                        assert!(Instant::now() < deadline, "could not open a new session");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    }

    /// An xhr-streaming session from the cursor, read until `n` or until it breaks.
    async fn stream_until(&mut self, n: i64) -> bool {
        let session = format!("stream{}", self.sessions.len());
        self.sessions.push(session.clone());
        let Ok(resp) = self
            .http
            .post(self.url(&session, "xhr_streaming"))
            .send()
            .await
        else {
            return false;
        };
        let mut body = resp.bytes_stream();
        let mut buf = String::new();
        let mut sent = false;
        let deadline = Instant::now() + WITHIN;
        while self.seqs.last().copied().unwrap_or(0) < n {
            let chunk = match tokio::time::timeout_at(deadline, body.next()).await {
                Ok(Some(Ok(c))) => c,
                _ => return false,
            };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(i) = buf.find('\n') {
                let line: String = buf.drain(..=i).collect();
                if line.trim_end() == "o" && !sent {
                    let after = self.seqs.last().copied().unwrap_or(0);
                    sent = self
                        .post(&session, "xhr_send", connect(&self.token, after))
                        .await
                        .is_some();
                }
                self.seqs.extend(seqs_of(&line));
            }
        }
        true
    }
}

async fn publish_n(t: &Topology, user: &str, n: usize) {
    let svc = service_token("billing");
    for _ in 0..n {
        publish(&t.client, &t.url(), &svc, &sample(&[user]), None)
            .await
            .expect("publish through nginx");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockjs_sessions_stay_on_their_replica_and_resume_elsewhere_after_kill_9() {
    let _serial = crate::SERIAL.lock().await;
    let t = Topology::up().await;

    // xhr-polling: every request of the session on one replica.
    publish_n(&t, "pia", 3).await;
    let mut p = Client::new(&t, "pia");
    assert!(p.open_polling().await, "{}", t.logs());
    p.poll_until(3).await;
    publish_n(&t, "pia", 2).await;
    p.poll_until(5).await;
    let held = replicas_of(&t, "poll0");
    assert_eq!(held.len(), 1, "poll0 was served by {held:?}\n{}", t.logs());
    let victim = *held.iter().next().expect("a replica");

    // xhr-streaming: the stream and its xhr_send on one replica.
    publish_n(&t, "sam", 2).await;
    let mut s = Client::new(&t, "sam");
    assert!(s.stream_until(2).await, "{}", t.logs());
    let stream_held = replicas_of(&t, "stream0");
    assert_eq!(
        stream_held.len(),
        1,
        "stream0 was served by {stream_held:?}"
    );

    // kill -9 of the polling session's replica: its client resumes elsewhere by cursor.
    t.kill(victim).await;
    publish_n(&t, "pia", 4).await;
    p.poll_until(9).await;
    assert_eq!(
        p.seqs,
        (1..=9).collect::<Vec<_>>(),
        "pia: every seq exactly once"
    );
    let after = replicas_of(&t, p.sessions.last().expect("a session"));
    assert!(
        !after.contains(&victim),
        "resumed on {after:?}, the killed replica was {victim}"
    );

    // The streaming client: its stream breaks if it was on the killed replica; either way a
    // new stream from the cursor gets the rest.
    publish_n(&t, "sam", 3).await;
    let deadline = Instant::now() + WITHIN;
    while !s.stream_until(5).await {
        assert!(
            Instant::now() < deadline,
            "sam never reached 5: {:?}",
            s.seqs
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        s.seqs,
        (1..=5).collect::<Vec<_>>(),
        "sam: every seq exactly once"
    );
}
