//! Child processes for the multi-process test harnesses (tests/cluster, tests/nginx): log
//! files, and a private redis-server per test, which a test may stop and start again to
//! simulate an outage without disturbing other tests.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep, Instant};

/// How long a redis-server may take to answer after it is started.
const REDIS_WITHIN: Duration = Duration::from_secs(30);

pub fn log_file(path: &Path) -> (Stdio, Stdio) {
    let file = File::options()
        .create(true)
        .append(true)
        .open(path)
        .expect("log file");
    let clone = file.try_clone().expect("log file");
    (Stdio::from(file), Stdio::from(clone))
}

/// The last `lines` lines of a log, for failure messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
        let _ = f.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub fn kill_now(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Why a redis-server is not answering.
#[derive(Debug)]
pub enum NotReady {
    /// The process ended (typically: its port was taken between [`free_port`] and the bind).
    Exited(String),
    /// Still running, but silent past [`REDIS_WITHIN`].
    Silent(String),
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Exited(why) | NotReady::Silent(why) => f.write_str(why),
        }
    }
}

pub struct RedisServer {
    pub port: u16,
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl RedisServer {
    pub fn spawn(&mut self) {
        self.spawn_with(&[]);
    }

    /// Starts the server with `extra` arguments after the usual ones.
    pub fn spawn_with(&mut self, extra: &[&str]) {
        let (out, err) = log_file(&self.log);
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .args(extra)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("redis-server must be installed for the multi-process tests");
        self.child = Some(child);
    }

    pub async fn wait_ready(&mut self) {
        if let Err(e) = self.try_ready().await {
            panic!("{e}");
        }
    }

    /// Waits until the server answers, or says why it will not.
    pub async fn try_ready(&mut self) -> Result<(), NotReady> {
        let deadline = Instant::now() + REDIS_WITHIN;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(NotReady::Exited(format!(
                        "redis-server on port {} exited with {status}:\n{}",
                        self.port,
                        tail(&self.log, 20)
                    )));
                }
            }
            if self.ping().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(NotReady::Silent(format!(
                    "redis-server on port {} did not answer within {REDIS_WITHIN:?}:\n{}",
                    self.port,
                    tail(&self.log, 20)
                )));
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn ping(&self) -> bool {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .ok()?;
            s.write_all(b"PING\r\n").await.ok()?;
            let mut buf = [0u8; 16];
            let n = s.read(&mut buf).await.ok()?;
            Some(buf[..n].starts_with(b"+PONG"))
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), attempt).await,
            Ok(Some(true))
        )
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_now(&mut child);
        }
    }
}

/// A private Redis Cluster: `2 × primaries` `redis-server --cluster-enabled yes` processes on
/// free ports, joined by `redis-cli --cluster create … --cluster-replicas 1`, each primary with
/// one replica. A short node timeout makes a killed primary's fail-over take a second or two.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

/// How long the cluster may take to form, or to fail over.
const CLUSTER_WITHIN: Duration = Duration::from_secs(60);

impl RedisCluster {
    /// Starts the nodes (in subdirectories of `dir`), creates the cluster and waits until
    /// every node reports `cluster_state:ok` with all 16384 slots served.
    ///
    /// A port that was free when [`free_port`] checked it may be taken by another process
    /// before redis-server binds it; such a node exits at once, and is started again on
    /// fresh ports rather than failing the test.
    pub async fn start(dir: &Path, primaries: usize) -> RedisCluster {
        let mut nodes = Vec::new();
        for i in 0..primaries * 2 {
            let node_dir = dir.join(format!("redis-node-{i}"));
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let mut node = RedisServer {
                port: 0,
                child: None,
                log: node_dir.join("redis.log"),
                dir: node_dir,
            };
            spawn_cluster_node(&mut node);
            nodes.push(node);
        }
        for node in &mut nodes {
            let mut attempt = 1;
            loop {
                match node.try_ready().await {
                    Ok(()) => break,
                    Err(NotReady::Exited(why)) if attempt < NODE_ATTEMPTS => {
                        eprintln!(
                            "redis cluster node on port {} did not start ({why}); \
                             starting it again on other ports",
                            node.port
                        );
                        attempt += 1;
                        spawn_cluster_node(node);
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli must be installed for the Redis Cluster tests");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_healthy().await;
        cluster
    }

    /// `redis://…` of every node, comma-separated: `TIDINGS__REDIS__URL` for a cluster.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until every running node reports the cluster healthy, all slots served, and
    /// `primaries` primaries among the running nodes.
    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + CLUSTER_WITHIN;
        loop {
            let running: Vec<&RedisServer> =
                self.nodes.iter().filter(|n| n.child.is_some()).collect();
            let ok = running.iter().all(|n| {
                let info = redis_cli(n.port, &["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
            });
            let primaries = running
                .iter()
                .filter(|n| redis_cli(n.port, &["ROLE"]).starts_with("master"))
                .count();
            if ok && primaries == self.nodes.len() / 2 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster did not become healthy within {CLUSTER_WITHIN:?} \
                 ({primaries} primaries running)"
            );
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// The index of a running primary that serves slots.
    pub fn a_primary(&self) -> usize {
        self.nodes
            .iter()
            .position(|n| n.child.is_some() && redis_cli(n.port, &["ROLE"]).starts_with("master"))
            .expect("a running primary")
    }

    /// The index of a running primary that does not serve `key`'s slot.
    pub fn a_primary_not_serving(&self, key: &str) -> usize {
        let any = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a running node");
        let slot: u16 = redis_cli(any.port, &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT answers a slot");
        self.nodes
            .iter()
            .position(|n| {
                n.child.is_some()
                    && redis_cli(n.port, &["ROLE"]).starts_with("master")
                    && !serves(&redis_cli(n.port, &["CLUSTER", "NODES"]), slot)
            })
            .expect("a running primary that does not serve the slot")
    }

    /// How many connections subscribe to each of `channels` (sharded pub/sub), summed over
    /// the running nodes, in the order given: Redis's own count, whatever its clients
    /// believe. Each node answers `PUBSUB SHARDNUMSUB` for its own connections only.
    pub fn shard_subscribers(&self, channels: &[String]) -> Vec<usize> {
        let mut totals = vec![0; channels.len()];
        let mut args = vec!["PUBSUB", "SHARDNUMSUB"];
        args.extend(channels.iter().map(String::as_str));
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let out = redis_cli(node.port, &args);
            // Channel and count on alternate lines, in the order asked.
            let counts = out.lines().skip(1).step_by(2);
            for (total, count) in totals.iter_mut().zip(counts) {
                *total += count.trim().parse::<usize>().unwrap_or(0);
            }
        }
        totals
    }

    /// `kill -9` of node `i`: its replica takes over after the node timeout.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    pub fn stop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether the `myself` line of a node's `CLUSTER NODES` lists `slot` among its own.
fn serves(nodes: &str, slot: u16) -> bool {
    let Some(myself) = nodes.lines().find(|l| l.contains("myself")) else {
        return false;
    };
    myself.split_whitespace().skip(8).any(|range| {
        let mut ends = range.splitn(2, '-').map(|n| n.parse::<u16>());
        match (ends.next(), ends.next()) {
            (Some(Ok(from)), Some(Ok(to))) => (from..=to).contains(&slot),
            (Some(Ok(only)), None) => only == slot,
            // `[slot->-node]`: a slot in migration, not served here for this purpose.
            _ => false,
        }
    })
}

/// One `redis-cli` command's output, empty if it failed.
fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// How many times a cluster node is started on fresh ports before the test gives up.
const NODE_ATTEMPTS: u32 = 5;

/// Starts a cluster node on fresh ports: its client port and its cluster bus port (which
/// defaults to port + 10000, which may be taken or past 65535).
fn spawn_cluster_node(node: &mut RedisServer) {
    node.port = free_port();
    let bus_port = free_port().to_string();
    node.spawn_with(&[
        "--cluster-enabled",
        "yes",
        "--cluster-port",
        &bus_port,
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "1000",
        // A replica promotes itself however long it was cut off: the test kills
        // primaries on purpose.
        "--cluster-replica-validity-factor",
        "0",
    ]);
}

/// A port free at the moment of the call, and never handed out before by this process.
///
/// The kernel hands out ephemeral ports in turn, but may give one back soon after it was
/// released; the tests of one binary run in parallel threads, so two of them could be given
/// the same port and race for it. Remembering every port handed out rules that out within
/// the process; a collision with another process is left to the caller's retry.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Option<std::collections::HashSet<u16>>> =
        std::sync::Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(Default::default);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        if given.insert(port) {
            return port;
        }
    }
}
