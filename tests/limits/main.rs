//! The process's own limits, on the real `tidings` binary started under a shell `ulimit`:
//! the open-file limit it is given, the connection cap that limit allows, and how refusals
//! reach the log. SQLite only: none of this depends on the database.

use jsonwebtoken::Algorithm;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tidings_test_support::harness;
use tidings_test_support::processes::{kill_now, log_file, tail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

const SECRET: &str = "test-secret-that-is-at-least-32-characters-long";
/// Far longer than any answer takes; past it a connection counts as hung.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

struct Replica {
    port: u16,
    grpc_port: u16,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Replica {
    fn drop(&mut self) {
        kill_now(&mut self.child);
    }
}

impl Replica {
    /// Starts the binary through `sh -c '<ulimit>; exec tidings serve'` and waits until it
    /// answers `/healthz`.
    async fn start(ulimit: &str, env: &[(&str, &str)]) -> Replica {
        let dir = tempfile::tempdir().expect("tempdir");
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port()
        };
        let port = free_port();
        let grpc_port = free_port();
        let log = dir.path().join("tidings.log");
        let (out, err) = log_file(&log);
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("{ulimit} && exec \"$0\" serve"))
            .arg(env!("CARGO_BIN_EXE_tidings"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("TIDINGS") {
                cmd.env_remove(key);
            }
        }
        cmd.env_remove("RUST_LOG")
            .env("TIDINGS_PROFILE", "local")
            .env("TIDINGS__SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("TIDINGS__GRPC__LISTEN", format!("127.0.0.1:{grpc_port}"))
            .env("TIDINGS__SERVER__WORKERS", "2")
            .env("TIDINGS__SERVER__HEARTBEAT_SECONDS", "60")
            .env(
                "TIDINGS__DATABASE__URL",
                format!("sqlite://{}", dir.path().join("tidings.db").display()),
            )
            .env("TIDINGS__DATABASE__MAX_CONNECTIONS", "5")
            .env("TIDINGS__AUTH__JWT_SECRET", SECRET)
            .env("TIDINGS__LOG__FORMAT", "json")
            .env("TIDINGS__LOG__LEVEL", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start tidings");
        let mut replica = Replica {
            port,
            grpc_port,
            child,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = replica.child.try_wait() {
                panic!("tidings exited with {status}:\n{}", tail(&replica.log, 40));
            }
            if let Ok(Ok(200)) = timeout(ANSWER_WITHIN, replica.status_of("/healthz")).await {
                return replica;
            }
            assert!(
                Instant::now() < deadline,
                "tidings did not answer /healthz:\n{}",
                tail(&replica.log, 40)
            );
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// Opens a connection and sends a GET; the socket is returned open.
    async fn get(&self, path: &str) -> std::io::Result<TcpStream> {
        let mut socket = TcpStream::connect(("127.0.0.1", self.port)).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
            self.port
        );
        socket.write_all(request.as_bytes()).await?;
        Ok(socket)
    }

    async fn status_of(&self, path: &str) -> std::io::Result<u16> {
        let mut socket = self.get(path).await?;
        read_head(&mut socket).await.map(|(status, _)| status)
    }

    fn log_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// Reads a response's head: its status and the head's text.
async fn read_head(socket: &mut TcpStream) -> std::io::Result<(u16, String)> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed before a response head"));
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&seen).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not a response: {head:?}")))?;
    Ok((status, head))
}

fn stream_path(user: &str) -> String {
    let token = harness::sign(Algorithm::HS256, SECRET, user, 3600, None);
    format!("/v1/notifications/stream?access_token={token}")
}

/// The `Max open files` soft and hard limits of a running process.
fn open_file_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut values = line["Max open files".len()..].split_whitespace();
    (
        values.next().unwrap_or_default().to_owned(),
        values.next().unwrap_or_default().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_open_file_limit_is_raised_to_the_hard_limit() {
    let replica = Replica::start("ulimit -Sn 1024 && ulimit -Hn 4096", &[]).await;
    // `exec`: the shell's pid is the server's.
    assert_eq!(
        open_file_limits(replica.child.id()),
        ("4096".to_owned(), "4096".to_owned()),
        "{}",
        tail(&replica.log, 20)
    );
    let raised = replica
        .log_lines()
        .into_iter()
        .any(|l| l["message"] == "raised the open-file limit to the hard limit");
    assert!(raised, "{}", tail(&replica.log, 20));
}

/// Under a hard limit of 1,024 descriptors and the default cap of 20,000 connections, the
/// replica lowers its cap to what fits: every connection past it gets a clean 503 at once,
/// none hangs waiting for a descriptor, and the replica keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_what_the_open_file_limit_allows_clients_get_a_clean_503() {
    let replica = Replica::start(
        "ulimit -n 1024",
        &[
            ("TIDINGS__SERVER__MAX_CONNECTIONS", "20000"),
            ("TIDINGS__SERVER__MAX_CONNECTIONS_PER_USER", "2000"),
        ],
    )
    .await;
    let path = stream_path("alice");
    let mut open = Vec::new();
    let refused = loop {
        assert!(
            open.len() < 1024,
            "1,024 streams accepted under a limit of 1,024 descriptors"
        );
        let attempt = async {
            let mut socket = replica.get(&path).await?;
            let (status, _) = read_head(&mut socket).await?;
            Ok::<_, std::io::Error>((status, socket))
        };
        match timeout(ANSWER_WITHIN, attempt).await {
            Ok(Ok((200, socket))) => open.push(socket),
            Ok(Ok((status, socket))) => break (status, socket),
            Ok(Err(e)) => panic!(
                "connection {} failed: {e}\n{}",
                open.len() + 1,
                tail(&replica.log, 20)
            ),
            Err(_) => panic!(
                "connection {} hung with {} streams open\n{}",
                open.len() + 1,
                open.len(),
                tail(&replica.log, 20)
            ),
        }
    };
    assert_eq!(refused.0, 503);
    let accepted = open.len();
    assert!(
        accepted >= 500,
        "only {accepted} streams before the first 503"
    );

    // Everyone after that is refused too, promptly, even while holding the refused sockets.
    let mut refusals = vec![refused.1];
    for i in 0..100 {
        let attempt = async {
            let mut socket = replica.get(&path).await?;
            let (status, head) = read_head(&mut socket).await?;
            Ok::<_, std::io::Error>((status, head, socket))
        };
        match timeout(ANSWER_WITHIN, attempt).await {
            Ok(Ok((503, head, socket))) => {
                assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
                refusals.push(socket);
            }
            Ok(Ok((status, head, _))) => panic!("refusal {i}: {status}\n{head}"),
            Ok(Err(e)) => panic!("refusal {i} failed: {e}\n{}", tail(&replica.log, 20)),
            Err(_) => panic!("refusal {i} hung\n{}", tail(&replica.log, 20)),
        }
    }
    // The replica still answers other requests, and never ran out of descriptors.
    let health = timeout(ANSWER_WITHIN, replica.status_of("/healthz")).await;
    assert!(matches!(health, Ok(Ok(200))), "{health:?}");
    let lines = replica.log_lines();
    let lowered = lines
        .iter()
        .find(|l| l["effective"].as_u64().is_some())
        .unwrap_or_else(|| {
            panic!(
                "no warning about the lowered cap\n{}",
                tail(&replica.log, 20)
            )
        });
    assert_eq!(lowered["level"], "WARN");
    assert_eq!(lowered["effective"].as_u64(), Some(accepted as u64));
    let log = std::fs::read_to_string(&replica.log).unwrap_or_default();
    assert!(
        !log.contains("Too many open files"),
        "{}",
        tail(&replica.log, 20)
    );
    drop(open);
    drop(refusals);
}

/// A flood of refusals writes one WARN line a second, with the number left out, and
/// nothing at ERROR: the replica is working as configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_logged_once_a_second_as_a_warning() {
    let replica = Replica::start(
        "true",
        &[
            ("TIDINGS__SERVER__MAX_CONNECTIONS", "2"),
            ("TIDINGS__SERVER__MAX_CONNECTIONS_PER_USER", "1"),
        ],
    )
    .await;
    let mut alice = replica.get(&stream_path("alice")).await.expect("connect");
    assert_eq!(read_head(&mut alice).await.expect("a response").0, 200);
    let mut bob = replica.get(&stream_path("bob")).await.expect("connect");
    assert_eq!(read_head(&mut bob).await.expect("a response").0, 200);

    let started = Instant::now();
    let mut statuses = Vec::new();
    for user in ["alice", "carol"].iter().cycle().take(40) {
        let status = timeout(ANSWER_WITHIN, replica.status_of(&stream_path(user)))
            .await
            .expect("an answer in time")
            .expect("a response");
        statuses.push(status);
    }
    let took = started.elapsed();
    // Alice is at her own cap; Carol finds the replica full.
    assert!(
        statuses.iter().step_by(2).all(|s| *s == 429),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().skip(1).step_by(2).all(|s| *s == 503),
        "{statuses:?}"
    );

    let lines = replica.log_lines();
    let errors: Vec<_> = lines.iter().filter(|l| l["level"] == "ERROR").collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let warnings: Vec<_> = lines
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("refused a connection"))
        })
        .collect();
    assert!(!warnings.is_empty(), "no refusal logged");
    assert!(
        warnings.iter().all(|l| l["level"] == "WARN"),
        "{warnings:#?}"
    );
    let most = took.as_secs() as usize + 1;
    assert!(
        warnings.len() <= most,
        "{} refusal lines in {took:?}: {warnings:#?}",
        warnings.len()
    );
}

/// Issue 22: under a 1,024 open-file limit, 1,100 connections to the gRPC port that send
/// nothing took the descriptors HTTP needed ("Too many open files", /healthz timing out).
/// Now the gRPC listener holds at most its share of the budget, refuses the rest at once,
/// closes the silent ones at the handshake bound, and HTTP never notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_grpc_connections_never_starves_http() {
    let replica = Replica::start(
        "ulimit -n 1024",
        &[
            ("TIDINGS__GRPC__HANDSHAKE_TIMEOUT_SECONDS", "2"),
            ("TIDINGS__SERVER__MAX_CONNECTIONS_PER_USER", "100"),
        ],
    )
    .await;
    let mut silent = Vec::new();
    for _ in 0..1100 {
        match timeout(
            ANSWER_WITHIN,
            TcpStream::connect(("127.0.0.1", replica.grpc_port)),
        )
        .await
        {
            Ok(Ok(socket)) => silent.push(socket),
            Ok(Err(e)) => panic!("connect: {e}"),
            Err(_) => panic!("connect hung"),
        }
    }
    // HTTP answers, and streams open, while the flood is held.
    let health = timeout(ANSWER_WITHIN, replica.status_of("/healthz")).await;
    assert!(
        matches!(health, Ok(Ok(200))),
        "{health:?}\n{}",
        tail(&replica.log, 20)
    );
    let mut streams = Vec::new();
    for _ in 0..50 {
        let mut socket = timeout(ANSWER_WITHIN, replica.get(&stream_path("alice")))
            .await
            .expect("in time")
            .expect("connect");
        let (status, _) = timeout(ANSWER_WITHIN, read_head(&mut socket))
            .await
            .expect("an answer in time")
            .expect("a response");
        assert_eq!(status, 200, "{}", tail(&replica.log, 20));
        streams.push(socket);
    }
    // Every silent connection is closed: refused at once past the cap, or at the
    // handshake bound (2 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    for (i, socket) in silent.iter_mut().enumerate() {
        let mut buf = [0u8; 16];
        let closed = tokio::time::timeout_at(deadline, socket.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0) | Err(_))),
            "silent gRPC connection {i} still open after 10 s: {closed:?}"
        );
    }
    let log = std::fs::read_to_string(&replica.log).unwrap_or_default();
    assert!(
        !log.contains("Too many open files"),
        "{}",
        tail(&replica.log, 20)
    );
    let refused = replica.log_lines().into_iter().any(|l| {
        l["level"] == "WARN"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("refused a gRPC connection"))
    });
    assert!(refused, "no refusal logged\n{}", tail(&replica.log, 20));
    drop(streams);
}
