//! `tidings-bench`: drives Tidings or Nchan with the same workload and measures connections,
//! memory, publish-to-receive latency, throughput, and lost or duplicated notifications.
//!
//! Scenarios: `idle`, `unicast`, `cross-replica`, `fanout`, `ingest`, `faces` (unicast over
//! SSE, gRPC or MQTT), `mqtt-drain` (the MQTT bridge's sustained rate); `report` turns the JSON
//! files they write into side-by-side tables. See `bench/run.sh` for how they are run.

mod net;
mod report;
mod scenarios;
mod stats;
mod sub;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use net::now_us;
use scenarios::{
    fanout::fanout, idle::idle, ingest::ingest, mqtt_drain::mqtt_drain, unicast::unicast,
};
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    Tidings,
    Nchan,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    Sse,
    Ws,
    Poll,
    /// Tidings' gRPC `Subscribe` (server streaming), one HTTP/2 connection per user, on
    /// `--grpc-url`.
    Grpc,
    /// The MQTT bridge: subscribers are MQTT clients of the broker at `--mqtt-url`, each
    /// connection subscribed (QoS 1) to the notification topics of up to
    /// `--mqtt-users-per-connection` users.
    Mqtt,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Ws => "ws",
            Transport::Poll => "poll",
            Transport::Grpc => "grpc",
            Transport::Mqtt => "mqtt",
        }
    }
}

#[derive(Parser)]
#[command(
    name = "tidings-bench",
    version,
    about = "Load generator: Tidings vs Nchan (idle, unicast, fan-out, ingest, cross-replica)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// N idle subscribers: server RSS per connection.
    Idle {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 15_000)]
        connections: usize,
        #[arg(long, value_enum, default_value = "sse")]
        transport: Transport,
        /// Seconds to wait after the last connection before reading RSS again.
        #[arg(long, default_value_t = 5)]
        settle: u64,
    },
    /// N online users; R notifications per second for D seconds, each to one random user.
    Unicast {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: UnicastArgs,
    },
    /// `unicast` under the name `faces`, so that runs over SSE, gRPC and MQTT (one Tidings
    /// each) make one table in the report.
    Faces {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: UnicastArgs,
    },
    /// The MQTT bridge's sustained rate: a backlog of notifications published as fast as
    /// Tidings takes them, then the time until the outbox is empty (every row PUBACKed).
    MqttDrain {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: DrainArgs,
    },
    /// `unicast` with the subscribers on `--sub-url` (replica B) and the publisher on `--url` (A).
    CrossReplica {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: UnicastArgs,
    },
    /// One notification to K online users (Nchan: K publishes at once): time until the last has it.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        recipients: usize,
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Pause between rounds.
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
        /// Nchan: keep-alive connections the K publishes are spread over.
        #[arg(long, default_value_t = 100)]
        publishers: usize,
        #[arg(long, value_enum, default_value = "sse")]
        transport: Transport,
    },
    /// Highest sustained publish rate with no subscribers: closed loop at each concurrency.
    Ingest {
        #[command(flatten)]
        common: Common,
        /// Recipients per request (Nchan: that many publishes per request).
        #[arg(long, default_value_t = 1)]
        recipients_per_request: usize,
        /// Distinct users the recipients are drawn from.
        #[arg(long, default_value_t = 10_000)]
        users: usize,
        /// Concurrent publishers; each level is run for --duration seconds.
        #[arg(long, value_delimiter = ',', default_value = "16,64,256")]
        concurrency: Vec<usize>,
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// One publish to a topic of N subscribers, K online (Nchan: K subscribers on one channel):
    /// recipients committed per second, and the time until the last online one has it.
    Topic {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: scenarios::topic::TopicArgs,
    },
    /// The Web Push sender (Tidings only): 1,000 subscriptions on a push service in this
    /// process; pushes per second sent, and publish-to-receipt latency.
    Webpush {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: scenarios::webpush::WebPushArgs,
    },
    /// One of the load-generator processes of `bench/run.sh c100k` (see scenarios/c100k.rs).
    C100kGen {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: scenarios::c100k::GenArgs,
    },
    /// Side-by-side tables (Markdown) from the JSON files the scenarios wrote.
    Report { files: Vec<PathBuf> },
}

#[derive(Args, Clone)]
struct Common {
    #[arg(long, value_enum, default_value = "tidings")]
    target: Target,
    /// Base URL publishes go to (and subscribers, unless --sub-url).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Base URL subscribers connect to (cross-replica: replica B).
    #[arg(long)]
    sub_url: Option<String>,
    /// Tidings' HS256 secret, to mint user and service tokens.
    #[arg(long, env = "TIDINGS__AUTH__JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Server processes whose RSS is summed (comma-separated or repeated): the Tidings
    /// replica(s) the subscribers are on, or the nginx workers.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// More server processes whose CPU (not RSS) counts, e.g. the publishing replica.
    #[arg(long, value_delimiter = ',')]
    cpu_pid: Vec<u32>,
    /// Write the result here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Name of this column in reports (default: the target).
    #[arg(long)]
    label: Option<String>,
    /// User and channel name prefix (default: unique per run).
    #[arg(long)]
    prefix: Option<String>,
    /// Spread client sockets over this many loopback source addresses (127.0.0.2..).
    #[arg(long, default_value_t = 16)]
    source_ips: u8,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// Exit with status 3 if any notification was lost or duplicated, a seq had a gap, a
    /// publish failed, or a subscriber could not connect or was dropped.
    #[arg(long)]
    fail_on_loss: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Helper processes (by name) whose CPU use is reported too.
    #[arg(long, value_delimiter = ',', default_value = "postgres,redis-server")]
    watch_comm: Vec<String>,
    /// The MQTT broker's processes: their CPU is reported apart from the server's (by pid,
    /// not by name, so another test's Mosquitto on the same machine does not count).
    #[arg(long, value_delimiter = ',')]
    broker_pid: Vec<u32>,
    /// Tidings (`fanout`, `ingest`): before measuring, give every user this many preference
    /// rules through `PUT /v1/preferences` (see `scenarios/prefs.rs`). Given (even 0), the
    /// run's variant is marked `preferences` and the report compares each count with 0.
    #[arg(long)]
    preference_rules: Option<usize>,
    /// Tidings' gRPC listener, `http://host:port` (`--transport grpc`).
    #[arg(long)]
    grpc_url: Option<String>,
    /// The MQTT broker the bridge publishes to, `mqtt://host:port` (`--transport mqtt`).
    #[arg(long)]
    mqtt_url: Option<String>,
    /// `--transport mqtt`: user topics each MQTT connection subscribes to. One connection per
    /// user would measure Mosquitto's connection handling more than the bridge.
    #[arg(long, default_value_t = 100)]
    mqtt_users_per_connection: usize,
    /// The MQTT bridge's topic prefix (TIDINGS__MQTT__TOPIC_PREFIX).
    #[arg(long, default_value = "tidings")]
    mqtt_topic_prefix: String,
}

#[derive(Args, Clone)]
struct DrainArgs {
    /// Notifications in the backlog (rounded down to whole requests).
    #[arg(long, default_value_t = 50_000)]
    notifications: u64,
    /// Distinct recipients, each getting the same share.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Recipients per publish request: many, so that the backlog is written faster than the
    /// bridge drains it and the figure is the bridge's, not the ingest's.
    #[arg(long, default_value_t = 100)]
    recipients_per_request: usize,
    /// Publish requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// MQTT subscribers (QoS 1) to every recipient's notification topic consume the backlog
    /// while it drains; without this flag no client is subscribed.
    #[arg(long)]
    subscribe: bool,
    /// Postgres URL of Tidings' database, whose `mqtt_outbox` rows are counted (the
    /// `tidings_mqtt_outbox_depth` gauge is refreshed only every 5 s). Read with `psql`.
    #[arg(long)]
    outbox_db: String,
    /// The broker is down while the backlog is written; this shell command then starts it and
    /// prints its pid. The rate is measured from the first PUBACK to the empty outbox: the
    /// bridge's own, with no publishing beside it. Not with --subscribe.
    #[arg(long)]
    broker_up_cmd: Option<String>,
    /// Give up waiting for the outbox to empty after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

#[derive(Args, Clone)]
struct UnicastArgs {
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Notifications per second.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    #[arg(long, value_enum, default_value = "sse")]
    transport: Transport,
    /// Keep-alive publisher connections.
    #[arg(long, default_value_t = 64)]
    publishers: usize,
    /// Seconds to wait for stragglers after the last publish.
    #[arg(long, default_value_t = 10)]
    drain: u64,
    /// Seconds between the last connection and the first publish.
    #[arg(long, default_value_t = 2)]
    settle: u64,
}

impl Common {
    fn label(&self) -> String {
        self.label.clone().unwrap_or_else(|| match self.target {
            Target::Tidings => "tidings".into(),
            Target::Nchan => "nchan".into(),
        })
    }

    fn cpu_pids(&self) -> Vec<u32> {
        let mut p = self.server_pid.clone();
        p.extend(&self.cpu_pid);
        p
    }

    fn prefix(&self) -> String {
        self.prefix
            .clone()
            .unwrap_or_else(|| format!("b{:x}-", now_us() % 0xffff_ffff))
    }

    fn users(&self, prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}u{i}")).collect()
    }

    fn secret(&self) -> Result<&str> {
        match self.secret.as_deref() {
            Some(s) => Ok(s),
            None => bail!("--target tidings needs --secret or TIDINGS__AUTH__JWT_SECRET"),
        }
    }

    fn user_tokens(&self, users: &[String]) -> Result<Vec<String>> {
        match self.target {
            Target::Nchan => Ok(vec![String::new(); users.len()]),
            Target::Tidings => {
                let secret = self.secret()?;
                users.iter().map(|u| net::mint(secret, u, None)).collect()
            }
        }
    }

    fn service_token(&self) -> Result<String> {
        match self.target {
            Target::Nchan => Ok(String::new()),
            Target::Tidings => net::mint(self.secret()?, "bench", Some("notifications:publish")),
        }
    }

    fn header(
        &self,
        scenario: &str,
        variant: &str,
        params: Value,
    ) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("scenario".into(), json!(scenario));
        match self.preference_rules {
            Some(n) => {
                m.insert("variant".into(), json!(format!("{variant}, preferences")));
                m.insert("preference_rules".into(), json!(n));
            }
            None => {
                m.insert("variant".into(), json!(variant));
            }
        }
        m.insert(
            "target".into(),
            json!(match self.target {
                Target::Tidings => "tidings",
                Target::Nchan => "nchan",
            }),
        );
        m.insert("label".into(), json!(self.label()));
        m.insert("url".into(), json!(self.url));
        m.insert("sub_url".into(), json!(self.sub_url));
        m.insert("params".into(), params);
        m.insert("finished_unix".into(), json!(now_us() / 1_000_000));
        m.insert("machine".into(), stats::machine());
        // The command line, without a secret given with --secret.
        let mut args: Vec<String> = std::env::args().collect();
        for i in 0..args.len() {
            if args[i] == "--secret" && i + 1 < args.len() {
                args[i + 1] = "…".into();
            } else if args[i].starts_with("--secret=") {
                args[i] = "--secret=…".into();
            }
        }
        m.insert("command".into(), json!(args.join(" ")));
        m
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Cmd::Report { files } = &cli.cmd {
        return report::print(files);
    }
    let nofile = net::raise_nofile();
    eprintln!("open-file limit: {nofile}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (common, result) = rt.block_on(async {
        match cli.cmd {
            Cmd::Idle {
                common,
                connections,
                transport,
                settle,
            } => {
                let r = idle(&common, connections, transport, settle).await;
                (common, r)
            }
            Cmd::Unicast { common, args } => {
                let r = unicast(&common, &args, "unicast").await;
                (common, r)
            }
            Cmd::Faces { common, args } => {
                let r = unicast(&common, &args, "faces").await;
                (common, r)
            }
            Cmd::MqttDrain { common, args } => {
                let r = mqtt_drain(&common, &args).await;
                (common, r)
            }
            Cmd::CrossReplica { common, args } => {
                let r = if common.sub_url.is_none() {
                    Err(anyhow::anyhow!(
                        "cross-replica needs --sub-url (replica B) besides --url (replica A)"
                    ))
                } else {
                    unicast(&common, &args, "cross-replica").await
                };
                (common, r)
            }
            Cmd::Fanout {
                common,
                recipients,
                rounds,
                interval_ms,
                publishers,
                transport,
            } => {
                let r = fanout(
                    &common,
                    recipients,
                    rounds,
                    interval_ms,
                    publishers,
                    transport,
                )
                .await;
                (common, r)
            }
            Cmd::Ingest {
                common,
                recipients_per_request,
                users,
                concurrency,
                duration,
            } => {
                let r = ingest(
                    &common,
                    recipients_per_request,
                    users,
                    &concurrency,
                    duration,
                )
                .await;
                (common, r)
            }
            Cmd::Topic { common, args } => {
                let r = scenarios::topic::topic(&common, &args).await;
                (common, r)
            }
            Cmd::Webpush { common, args } => {
                let r = scenarios::webpush::webpush(&common, &args).await;
                (common, r)
            }
            Cmd::C100kGen { common, args } => {
                let r = scenarios::c100k::c100k_gen(&common, &args).await;
                (common, r)
            }
            Cmd::Report { .. } => unreachable!(),
        }
    });
    // Do not wait for thousands of socket tasks to notice the end.
    rt.shutdown_background();
    let (value, ok) = result?;
    if let Some(path) = &common.json {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).ok();
        }
        std::fs::write(path, serde_json::to_string_pretty(&value)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if common.fail_on_loss && !ok {
        eprintln!("FAIL: notifications were lost or duplicated, or requests failed (see above)");
        std::process::exit(3);
    }
    Ok(())
}
