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

pub struct RedisServer {
    pub port: u16,
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub log: PathBuf,
}

impl RedisServer {
    pub fn spawn(&mut self) {
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
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("redis-server must be installed for the multi-process tests");
        self.child = Some(child);
    }

    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + REDIS_WITHIN;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "redis-server on port {} exited with {status}:\n{}",
                        self.port,
                        tail(&self.log, 20)
                    );
                }
            }
            if self.ping().await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer within {REDIS_WITHIN:?}:\n{}",
                self.port,
                tail(&self.log, 20)
            );
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
