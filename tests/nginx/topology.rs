//! The docker-compose topology as local processes, brought up and down by `scripts/cluster.sh`:
//! three `tidings` replicas behind Debian's nginx, sharing a fresh Postgres database and a
//! private `redis-server`. The test only chooses the settings (free ports, a private state
//! directory, the binary under test); starting, stopping, restarting and killing is the
//! script's job, so these tests also prove the script works.

use jsonwebtoken::Algorithm;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::{sleep, Instant};

use tidings_test_support::harness;
pub use tidings_test_support::processes::tail;
use tidings_test_support::processes::{kill_now, log_file, RedisServer};

/// The same secret as the other suites'.
pub const SECRET: &str = "test-secret-that-is-at-least-32-characters-long";
/// `TIDINGS__SERVER__SHUTDOWN_GRACE_SECONDS` of every replica.
pub const GRACE_SECONDS: u64 = 3;
/// `TIDINGS__SERVER__HEARTBEAT_SECONDS` of every replica (SSE `: ping`, WebSocket ping).
pub const HEARTBEAT_SECONDS: u64 = 2;
/// How many replicas `cluster.sh` runs.
pub const REPLICAS: usize = 3;

/// Bounds every `cluster.sh` call (its own readiness timeout is `CLUSTER_START_TIMEOUT`).
const SCRIPT_WITHIN: Duration = Duration::from_secs(90);
const START_TIMEOUT_SECS: u64 = 60;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn script_path() -> PathBuf {
    repo_root().join("scripts/cluster.sh")
}

fn sign(sub: &str, scope: Option<&str>) -> String {
    harness::sign(Algorithm::HS256, SECRET, sub, 3600, scope)
}

pub fn user_token(user: &str) -> String {
    sign(user, None)
}

pub fn service_token(service: &str) -> String {
    sign(service, Some("notifications:publish"))
}

/// Fails loudly (never skips) when Debian's nginx is not installed.
pub fn require_nginx() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "nginx is required for the nginx topology tests and was not found on PATH or in \
             /usr/sbin: install it with `apt-get install -y nginx` (Debian's package)"
        )
    })
}

/// A port the kernel gave out a moment ago (for the private Redis, which is not a cluster.sh
/// port and needs no neighbours).
fn ephemeral_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The ports handed out by this process, so parallel tests never pick the same ones.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// `(CLUSTER_PORT, CLUSTER_BASE_PORT)`: eight consecutive ports, nginx first and the replicas
/// after it, then nginx's gRPC port and the replicas' gRPC ports (`CLUSTER_GRPC_PORT`, which
/// `cluster.sh` puts right after the replicas' HTTP ports), that are free right now. They come from below the kernel's ephemeral range
/// (`ip_local_port_range`), so no outgoing connection of any process (nor a port-0 bind of
/// another test) can be given one of them between this check and the script binding them, and
/// at a random place in it, so other test processes doing the same rarely meet; a collision
/// that still happens makes `cluster.sh up` fail with "taken", and [`Topology::up`] then picks
/// again.
fn pick_ports() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (lo, hi) = if ephemeral_low > 12_000 {
        (10_000u32, ephemeral_low - 1)
    } else {
        // An unusual range starting low: use the space above it instead.
        (61_000u32, 65_000u32)
    };
    let span = hi - lo - 8;
    let mut handed_out = HANDED_OUT.lock().unwrap();
    for _ in 0..2000 {
        let base = (lo + rand::random::<u32>() % span) as u16;
        let ports: Vec<u16> = (0..8).map(|i| base + i).collect();
        if ports.iter().any(|p| handed_out.contains(p)) {
            continue;
        }
        if ports
            .iter()
            .all(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            handed_out.extend(ports);
            return (base, base + 1);
        }
    }
    panic!("no eight consecutive free ports between {lo} and {hi}");
}

/// What one `cluster.sh` call did.
#[derive(Debug)]
pub struct ScriptRun {
    pub status: Option<ExitStatus>,
    /// stdout and stderr, interleaved.
    pub output: String,
    pub took: Duration,
}

impl ScriptRun {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// The nginx topology of one test.
pub struct Topology {
    pub client: reqwest::Client,
    /// `CLUSTER_DIR`: pids, logs, the nginx prefix (the script makes it 0755 for nginx's
    /// unprivileged workers when the tests run as root).
    dir: tempfile::TempDir,
    /// Where script outputs and the Redis log go (not inside `CLUSTER_DIR`).
    scratch: tempfile::TempDir,
    pub port: u16,
    pub base_port: u16,
    db_name: String,
    db_url: String,
    redis: RedisServer,
    runs: std::sync::atomic::AtomicUsize,
}

impl Topology {
    /// A fresh database, a private Redis, and `cluster.sh up` on free ports.
    pub async fn up() -> Topology {
        require_nginx();
        assert!(
            script_path().is_file(),
            "{} is missing",
            script_path().display()
        );
        let dir = tempfile::Builder::new()
            .prefix("tidings-nginx-")
            .tempdir()
            .expect("tempdir");
        let scratch = tempfile::Builder::new()
            .prefix("tidings-nginx-scratch-")
            .tempdir()
            .expect("tempdir");
        let (db_name, db_url) = harness::create_database("tidings_nginx").await;

        let (port, base_port) = pick_ports();
        let mut topology = Topology {
            client: reqwest::Client::new(),
            redis: RedisServer {
                port: ephemeral_port(),
                child: None,
                dir: scratch.path().to_owned(),
                log: scratch.path().join("redis.log"),
            },
            dir,
            scratch,
            port,
            base_port,
            db_name,
            db_url,
            runs: Default::default(),
        };
        topology.redis.spawn();
        topology.redis.wait_ready().await;

        // A port taken by someone else between the check and the bind: down, new ports, again.
        for attempt in 1..=4 {
            let run = topology.script(&["up"]).await;
            if run.success() {
                break;
            }
            let collided = run.output.contains("is taken")
                || topology
                    .replica_logs()
                    .iter()
                    .any(|log| tail(log, 40).contains("Address already in use"));
            let _ = topology.script(&["down"]).await;
            if !collided || attempt == 4 {
                panic!(
                    "cluster.sh up failed (attempt {attempt}):\n{}\n{}",
                    run.output,
                    topology.logs()
                );
            }
            eprintln!(
                "cluster.sh up: a port was taken ({}, {}..); picking others",
                topology.port, topology.base_port
            );
            let (port, base_port) = pick_ports();
            topology.port = port;
            topology.base_port = base_port;
        }
        topology
    }

    /// nginx: the only address clients use.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// nginx's gRPC (HTTP/2) server.
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port())
    }

    /// Replica `n`'s own gRPC listener (1-based), bypassing nginx.
    pub fn replica_grpc_url(&self, n: usize) -> String {
        assert!((1..=REPLICAS).contains(&n), "replica {n}");
        format!("http://127.0.0.1:{}", self.grpc_port() as usize + n)
    }

    /// `CLUSTER_GRPC_PORT`: right after the replicas' HTTP ports (see [`pick_ports`]).
    fn grpc_port(&self) -> u16 {
        self.base_port + REPLICAS as u16
    }

    /// Replica `n` (1-based, as `cluster.sh` numbers them), for scraping `/metrics` directly.
    pub fn replica_url(&self, n: usize) -> String {
        assert!((1..=REPLICAS).contains(&n), "replica {n}");
        format!("http://127.0.0.1:{}", self.base_port as usize + n - 1)
    }

    fn replica_logs(&self) -> Vec<PathBuf> {
        (1..=REPLICAS)
            .map(|n| self.dir.path().join(format!("replica{n}.log")))
            .collect()
    }

    /// The last lines of every replica's log and of nginx's, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, log) in self.replica_logs().iter().enumerate() {
            out.push_str(&format!(
                "---- replica {} ({}) log, last lines ----\n{}\n",
                i + 1,
                self.replica_url(i + 1),
                tail(log, 40)
            ));
        }
        out.push_str(&format!(
            "---- nginx log, last lines ----\n{}\n---- redis log ----\n{}\n",
            tail(&self.dir.path().join("nginx.log"), 40),
            tail(&self.redis.log, 10)
        ));
        out
    }

    /// The nginx access log (one line per request, with the upstream that served it).
    pub fn nginx_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nginx.log")).unwrap_or_default()
    }

    /// `scripts/cluster.sh` with this topology's settings, and nothing else from the
    /// environment the tests run in.
    fn command(&self, args: &[&str], out: &Path) -> Command {
        let (stdout, stderr) = log_file(out);
        let mut cmd = Command::new("bash");
        cmd.arg(script_path())
            .args(args)
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (key, _) in std::env::vars_os() {
            let key_s = key.to_string_lossy();
            if key_s.starts_with("TIDINGS")
                || key_s.starts_with("CLUSTER_")
                || key_s == "RUST_LOG"
                || key_s == "NGINX_BIN"
            {
                cmd.env_remove(key);
            }
        }
        cmd.env("CLUSTER_DIR", self.dir.path())
            .env("CLUSTER_PORT", self.port.to_string())
            .env("CLUSTER_BASE_PORT", self.base_port.to_string())
            .env("CLUSTER_GRPC_PORT", self.grpc_port().to_string())
            .env("CLUSTER_REPLICAS", REPLICAS.to_string())
            .env("CLUSTER_START_TIMEOUT", START_TIMEOUT_SECS.to_string())
            .env("TIDINGS_BIN", env!("CARGO_BIN_EXE_tidings"))
            .env("TIDINGS__DATABASE__URL", &self.db_url)
            .env(
                "TIDINGS__REDIS__URL",
                format!("redis://127.0.0.1:{}", self.redis.port),
            )
            // Everything below reaches the replicas unchanged through the script.
            .env("TIDINGS_PROFILE", "local")
            .env("TIDINGS__AUTH__JWT_SECRET", SECRET)
            .env("TIDINGS__SERVER__WORKERS", "2")
            .env(
                "TIDINGS__SERVER__HEARTBEAT_SECONDS",
                HEARTBEAT_SECONDS.to_string(),
            )
            .env(
                "TIDINGS__SERVER__SHUTDOWN_GRACE_SECONDS",
                GRACE_SECONDS.to_string(),
            )
            .env("TIDINGS__DATABASE__MAX_CONNECTIONS", "5")
            .env("TIDINGS__LOG__LEVEL", "info");
        cmd
    }

    fn next_out(&self, args: &[&str]) -> PathBuf {
        let k = self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.scratch
            .path()
            .join(format!("cluster-{k:03}-{}.out", args.join("-")))
    }

    /// Runs `cluster.sh ARGS`; kills it (and reports no status) after [`SCRIPT_WITHIN`].
    pub async fn script(&self, args: &[&str]) -> ScriptRun {
        let out = self.next_out(args);
        let started = Instant::now();
        let mut child = self
            .command(args, &out)
            .spawn()
            .unwrap_or_else(|e| panic!("run bash {}: {e}", script_path().display()));
        let deadline = started + SCRIPT_WITHIN;
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Some(status);
            }
            if Instant::now() >= deadline {
                kill_now(&mut child);
                break None;
            }
            sleep(Duration::from_millis(20)).await;
        };
        ScriptRun {
            status,
            output: std::fs::read_to_string(&out).unwrap_or_default(),
            took: started.elapsed(),
        }
    }

    /// Runs `cluster.sh ARGS` and panics (with the logs) unless it exits 0.
    pub async fn script_ok(&self, args: &[&str]) -> ScriptRun {
        let run = self.script(args).await;
        assert!(
            run.success(),
            "cluster.sh {} failed ({:?} after {:?}):\n{}\n{}",
            args.join(" "),
            run.status,
            run.took,
            run.output,
            self.logs()
        );
        run
    }

    /// `cluster.sh kill N`: SIGKILL, a crash.
    pub async fn kill(&self, n: usize) -> ScriptRun {
        self.script_ok(&["kill", &n.to_string()]).await
    }

    /// `cluster.sh start N`: start replica N and wait until it is ready.
    pub async fn start(&self, n: usize) -> ScriptRun {
        self.script_ok(&["start", &n.to_string()]).await
    }

    /// `cluster.sh restart N`: SIGTERM, wait for the exit, start, wait until ready.
    pub async fn restart(&self, n: usize) -> ScriptRun {
        self.script_ok(&["restart", &n.to_string()]).await
    }

    /// `cluster.sh status`: `true` when every replica is ready and nginx answers.
    pub async fn status(&self) -> ScriptRun {
        self.script(&["status"]).await
    }

    /// `cluster.sh down`, synchronously (for `Drop`).
    fn down_blocking(&self) -> Option<ExitStatus> {
        let out = self.next_out(&["down"]);
        let mut child = self.command(&["down"], &out).spawn().ok()?;
        let deadline = std::time::Instant::now() + SCRIPT_WITHIN;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                kill_now(&mut child);
                eprintln!(
                    "cluster.sh down did not finish within {SCRIPT_WITHIN:?}:\n{}",
                    std::fs::read_to_string(&out).unwrap_or_default()
                );
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!("{}", self.logs());
        }
        match self.down_blocking() {
            Some(s) if s.success() => {}
            other => eprintln!("cluster.sh down ended with {other:?}"),
        }
        self.redis.stop();
        harness::drop_database_blocking(&self.db_name);
    }
}
