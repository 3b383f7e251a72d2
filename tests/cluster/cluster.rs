//! Real `tidings` processes, a fresh Postgres database and a private `redis-server`.

use jsonwebtoken::Algorithm;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;
use tokio::time::{sleep, Instant};

use tidings_test_support::harness;
// Ports from the harness's allocator, which never hands out the same port twice in this
// process: the replicas' ports and the Redis Cluster's cannot collide across parallel tests.
use tidings_test_support::processes::{
    free_port, kill_now, log_file, tail, RedisCluster, RedisServer,
};

/// The same secret as the API suite's.
pub const SECRET: &str = "test-secret-that-is-at-least-32-characters-long";
/// `TIDINGS__SERVER__SHUTDOWN_GRACE_SECONDS` of every replica.
pub const GRACE_SECONDS: u64 = 3;

const START_WITHIN: Duration = Duration::from_secs(30);

fn sign(sub: &str, exp_in: i64, scope: Option<&str>) -> String {
    harness::sign(Algorithm::HS256, SECRET, sub, exp_in, scope)
}

pub fn user_token(user: &str) -> String {
    sign(user, 3600, None)
}

pub fn service_token(service: &str) -> String {
    sign(service, 3600, Some("notifications:publish"))
}

/// Waits up to `within` for a child to exit.
async fn wait_child(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        sleep(Duration::from_millis(25)).await;
    }
}

pub struct Replica {
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
    /// The binary it runs when not this build's (the upgrade test's previous release).
    bin: Option<PathBuf>,
}

impl Replica {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Replicas of one deployment: one database, one Redis, one channel.
pub struct Cluster {
    pub client: reqwest::Client,
    dir: tempfile::TempDir,
    db_name: String,
    db_url: String,
    channel: String,
    redis: RedisServer,
    /// Set when the replicas use a Redis Cluster instead of `redis` (which then never runs).
    redis_cluster: Option<RedisCluster>,
    /// Set on every replica after the harness's own settings (and so over them).
    extra_env: Vec<(String, String)>,
    replicas: Vec<Replica>,
}

impl Cluster {
    /// A fresh database, a private Redis, and `n` replicas, each answering `/healthz`.
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(n, false, Vec::new()).await
    }

    /// The same, with `env` (such as `TIDINGS__MQTT__URL`) set on every replica, each time
    /// it starts.
    #[allow(dead_code)] // harness API
    pub async fn start_with_env(n: usize, env: &[(&str, &str)]) -> Cluster {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Self::start_with(n, false, env).await
    }

    /// The same on a private Redis Cluster of three primaries and three replicas, which the
    /// replicas are given as a comma-separated list of seeds.
    #[allow(dead_code)] // harness API
    pub async fn start_on_redis_cluster(n: usize) -> Cluster {
        Self::start_with(n, true, Vec::new()).await
    }

    /// The same on one private Redis, with `TIDINGS__REDIS__ROUTING=routing`.
    pub async fn start_with_routing(n: usize, routing: &'static str) -> Cluster {
        Self::start_with(
            n,
            false,
            vec![("TIDINGS__REDIS__ROUTING".to_owned(), routing.to_owned())],
        )
        .await
    }

    async fn start_with(
        n: usize,
        redis_cluster: bool,
        extra_env: Vec<(String, String)>,
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db_name, db_url) = harness::create_database("tidings_cluster").await;

        let redis_port = free_port();
        let mut cluster = Cluster {
            client: reqwest::Client::new(),
            db_name,
            db_url,
            channel: format!("tidings-test-{}", uuid::Uuid::new_v4().simple()),
            redis: RedisServer {
                port: redis_port,
                child: None,
                dir: dir.path().to_owned(),
                log: dir.path().join("redis.log"),
            },
            redis_cluster: None,
            extra_env,
            replicas: Vec::new(),
            dir,
        };
        if redis_cluster {
            cluster.redis_cluster = Some(RedisCluster::start(cluster.dir.path(), 3).await);
        } else {
            cluster.redis.spawn();
            cluster.redis.wait_ready().await;
        }
        for i in 0..n {
            cluster.replicas.push(Replica {
                port: free_port(),
                child: None,
                log: cluster.dir.path().join(format!("replica-{i}.log")),
                bin: None,
            });
            // One at a time: the first one runs the migrations.
            cluster.spawn_replica(i);
            cluster.wait_healthy(i).await;
        }
        cluster
    }

    /// Starts one more replica, running `bin` (this build's binary when `None`), and waits
    /// until it answers; returns its index.
    #[allow(dead_code)] // harness API
    pub async fn add_replica(&mut self, bin: Option<PathBuf>) -> usize {
        let i = self.replicas.len();
        self.replicas.push(Replica {
            port: free_port(),
            child: None,
            log: self.dir.path().join(format!("replica-{i}.log")),
            bin,
        });
        self.spawn_replica(i);
        self.wait_healthy(i).await;
        i
    }

    /// The port of the private `redis-server` (not a Redis Cluster's).
    #[allow(dead_code)] // harness API
    pub fn redis_port(&self) -> u16 {
        self.redis.port
    }

    #[allow(dead_code)] // harness API, handy in new tests
    pub fn replica(&self, i: usize) -> &Replica {
        &self.replicas[i]
    }

    pub fn url(&self, i: usize) -> String {
        self.replicas[i].url()
    }

    /// `TIDINGS__REDIS__CHANNEL` of every replica: the broadcast channel, and the prefix of
    /// every user's (`<channel>:u:<user>`).
    #[allow(dead_code)] // harness API
    pub fn channel(&self) -> &str {
        &self.channel
    }

    pub fn urls(&self) -> Vec<String> {
        self.replicas.iter().map(Replica::url).collect()
    }

    fn spawn_replica(&mut self, i: usize) {
        let replica = &mut self.replicas[i];
        assert!(replica.child.is_none(), "replica {i} is already running");
        let (out, err) = log_file(&replica.log);
        // TIDINGS_TEST_BIN: a copy of the binary, for a target directory that other builds
        // share (and may overwrite while the suite runs).
        let bin = match &replica.bin {
            Some(bin) => bin.clone().into_os_string(),
            None => std::env::var_os("TIDINGS_TEST_BIN")
                .unwrap_or_else(|| env!("CARGO_BIN_EXE_tidings").into()),
        };
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // Only what this test sets: nothing from the environment the tests run in.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("TIDINGS") {
                cmd.env_remove(key);
            }
        }
        cmd.env_remove("RUST_LOG")
            .env("TIDINGS_PROFILE", "local")
            .env(
                "TIDINGS__SERVER__LISTEN",
                format!("127.0.0.1:{}", replica.port),
            )
            // Any free port: the default (HTTP + 1) may be taken, by another replica or not.
            .env("TIDINGS__GRPC__LISTEN", "127.0.0.1:0")
            .env("TIDINGS__SERVER__WORKERS", "2")
            .env("TIDINGS__SERVER__HEARTBEAT_SECONDS", "2")
            .env(
                "TIDINGS__SERVER__SHUTDOWN_GRACE_SECONDS",
                GRACE_SECONDS.to_string(),
            )
            .env("TIDINGS__DATABASE__URL", &self.db_url)
            .env("TIDINGS__DATABASE__MAX_CONNECTIONS", "5")
            .env(
                "TIDINGS__REDIS__URL",
                match &self.redis_cluster {
                    Some(rc) => rc.seeds(),
                    None => format!("redis://127.0.0.1:{}", self.redis.port),
                },
            )
            .env("TIDINGS__REDIS__CHANNEL", &self.channel)
            .env("TIDINGS__AUTH__JWT_SECRET", SECRET)
            .env(
                "TIDINGS__AUTH__SECRET_FILE",
                self.dir.path().join("tidings.secret"),
            )
            .env("TIDINGS__LOG__LEVEL", "info")
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)));
        if let Ok(mut f) = File::options().append(true).open(&replica.log) {
            let _ = writeln!(f, "==== test harness: starting replica {i} ====");
        }
        replica.child = Some(cmd.spawn().expect("start tidings"));
    }

    async fn wait_healthy(&mut self, i: usize) {
        let deadline = Instant::now() + START_WITHIN;
        let url = format!("{}/healthz", self.url(i));
        loop {
            let replica = &mut self.replicas[i];
            if let Some(child) = replica.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    replica.child = None;
                    panic!(
                        "replica {i} exited with {status} while starting:\n{}",
                        tail(&replica.log, 40)
                    );
                }
            }
            let ok = matches!(
                tokio::time::timeout(Duration::from_secs(2), self.client.get(&url).send()).await,
                Ok(Ok(resp)) if resp.status() == 200
            );
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica {i} did not answer /healthz within {START_WITHIN:?}:\n{}",
                tail(&self.replicas[i].log, 40)
            );
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kill -9`: no goodbye to anyone.
    pub fn kill9(&mut self, i: usize) {
        let child = self.replicas[i]
            .child
            .as_mut()
            .unwrap_or_else(|| panic!("replica {i} is not running"));
        kill_now(child);
        self.replicas[i].child = None;
    }

    /// Sends SIGTERM and returns at once; see [`Cluster::wait_exit`].
    pub fn sigterm(&mut self, i: usize) {
        let child = self.replicas[i]
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("replica {i} is not running"));
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {}", child.id());
    }

    /// Waits for replica `i` to exit; panics (and kills it) if it does not within `within`.
    pub async fn wait_exit(&mut self, i: usize, within: Duration) -> ExitStatus {
        let replica = &mut self.replicas[i];
        let child = replica
            .child
            .as_mut()
            .unwrap_or_else(|| panic!("replica {i} is not running"));
        match wait_child(child, within).await {
            Some(status) => {
                replica.child = None;
                status
            }
            None => {
                kill_now(child);
                replica.child = None;
                panic!(
                    "replica {i} did not exit within {within:?} of SIGTERM:\n{}",
                    tail(&replica.log, 40)
                );
            }
        }
    }

    /// Starts replica `i` again on its port (killing it first if it still runs).
    pub async fn restart(&mut self, i: usize) {
        if let Some(child) = self.replicas[i].child.as_mut() {
            kill_now(child);
            self.replicas[i].child = None;
        }
        self.spawn_replica(i);
        self.wait_healthy(i).await;
    }

    /// The Redis Cluster, for tests started with [`Cluster::start_on_redis_cluster`].
    #[allow(dead_code)] // harness API
    pub fn redis_cluster(&mut self) -> &mut RedisCluster {
        self.redis_cluster
            .as_mut()
            .expect("started with start_on_redis_cluster")
    }

    /// Kills the Redis server (its data goes with it: there is none worth keeping).
    pub fn redis_stop(&mut self) {
        self.redis.stop();
    }

    /// Starts Redis again on the same port.
    pub async fn redis_start(&mut self) {
        assert!(self.redis.child.is_none(), "Redis is already running");
        self.redis.spawn();
        self.redis.wait_ready().await;
    }

    #[allow(dead_code)] // harness API, handy in new tests
    pub async fn redis_restart(&mut self) {
        self.redis_stop();
        self.redis_start().await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for replica in &mut self.replicas {
            if let Some(child) = replica.child.as_mut() {
                kill_now(child);
            }
            replica.child = None;
        }
        self.redis.stop();
        if let Some(rc) = self.redis_cluster.as_mut() {
            rc.stop();
        }
        if std::thread::panicking() {
            for (i, replica) in self.replicas.iter().enumerate() {
                eprintln!(
                    "---- replica {i} ({}) log, last lines ----\n{}",
                    replica.url(),
                    tail(&replica.log, 60)
                );
            }
            eprintln!("---- redis log ----\n{}", tail(&self.redis.log, 20));
        }
        harness::drop_database_blocking(&self.db_name);
    }
}
