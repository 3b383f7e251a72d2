//! `tidings-bench report FILE...`: Markdown tables, one per scenario and variant, with a column
//! per label (Tidings first, then Nchan) and the ratio of each Tidings column to each Nchan one;
//! for `faces` (one Tidings per transport), the ratio of each transport's column to SSE's; for
//! the `preferences` runs, the ratio of the run with rules to the one without.

use anyhow::{Context, Result};
use serde_json::Value;
use std::path::PathBuf;

#[derive(Clone, Copy)]
enum Unit {
    Ms,
    Kib,
    Count,
    Secs,
    /// Seconds to the hundredth, for short waits.
    Secs2,
    Float,
    /// A count where a missing figure means the peer has no such thing: "n/a".
    CountOrNa,
}

struct Row {
    name: &'static str,
    unit: Unit,
    get: fn(&Value) -> Option<f64>,
}

fn ptr(v: &Value, p: &str) -> Option<f64> {
    v.pointer(p).and_then(Value::as_f64)
}

fn rows(scenario: &str) -> Vec<Row> {
    let latency = |name, key: &'static str| Row {
        name,
        unit: Unit::Ms,
        get: match key {
            "p50" => |v| ptr(v, "/latency_us/p50"),
            "p90" => |v| ptr(v, "/latency_us/p90"),
            "p99" => |v| ptr(v, "/latency_us/p99"),
            "p999" => |v| ptr(v, "/latency_us/p999"),
            _ => |v| ptr(v, "/latency_us/max"),
        },
    };
    // What every live-delivery scenario reports first: latency, rate and the publish request.
    let delivery = || -> Vec<Row> {
        vec![
            latency("latency p50 (ms)", "p50"),
            latency("latency p90 (ms)", "p90"),
            latency("latency p99 (ms)", "p99"),
            latency("latency p99.9 (ms)", "p999"),
            latency("latency max (ms)", "max"),
            Row {
                name: "latency p99 counted from the schedule (ms)",
                unit: Unit::Ms,
                get: |v| ptr(v, "/latency_from_schedule_us/p99"),
            },
            Row {
                name: "delivered per second",
                unit: Unit::Count,
                get: |v| ptr(v, "/delivered_per_s"),
            },
            Row {
                name: "publish request p99 (ms)",
                unit: Unit::Ms,
                get: |v| ptr(v, "/publish/latency_us/p99"),
            },
        ]
    };
    let cpu = || -> Vec<Row> {
        vec![
            Row {
                name: "server CPU (cores)",
                unit: Unit::Float,
                get: |v| cpu_of(v).and_then(|c| ptr(c, "/server_cores")),
            },
            Row {
                name: "Postgres CPU, all its processes (cores)",
                unit: Unit::Float,
                get: |v| cpu_of(v).and_then(|c| ptr(c, "/named_cores/postgres")),
            },
            Row {
                name: "Redis CPU (cores)",
                unit: Unit::Float,
                get: |v| cpu_of(v).and_then(|c| ptr(c, "/named_cores/redis-server")),
            },
            Row {
                name: "load generator CPU (cores)",
                unit: Unit::Float,
                get: |v| cpu_of(v).and_then(|c| ptr(c, "/client_cores")),
            },
            Row {
                name: "whole machine busy (cores)",
                unit: Unit::Float,
                get: |v| cpu_of(v).and_then(|c| ptr(c, "/machine_busy_cores")),
            },
        ]
    };
    let loss = vec![
        Row {
            name: "lost",
            unit: Unit::Count,
            get: |v| ptr(v, "/delivery/lost"),
        },
        Row {
            name: "duplicated",
            unit: Unit::Count,
            get: |v| ptr(v, "/delivery/duplicated"),
        },
        Row {
            name: "seq gaps / backwards (Tidings)",
            unit: Unit::Count,
            get: |v| Some(ptr(v, "/delivery/seq_gaps")? + ptr(v, "/delivery/seq_backwards")?),
        },
        Row {
            name: "failed publishes",
            unit: Unit::Count,
            get: |v| ptr(v, "/publish/failed"),
        },
    ];
    match scenario {
        "idle" => vec![
            Row {
                name: "connections held",
                unit: Unit::Count,
                get: |v| ptr(v, "/rss/connections"),
            },
            Row {
                name: "server RSS per connection (KiB)",
                unit: Unit::Kib,
                get: |v| ptr(v, "/rss/bytes_per_conn"),
            },
            Row {
                name: "of which private heap, RssAnon (KiB)",
                unit: Unit::Kib,
                get: |v| ptr(v, "/rss/anon_bytes_per_conn"),
            },
            Row {
                name: "time to open all (s)",
                unit: Unit::Secs,
                get: |v| ptr(v, "/connections/connect_secs"),
            },
        ],
        "unicast" | "cross-replica" => {
            let mut r = delivery();
            r.extend([
                Row {
                    name: "server CPU per 1,000 delivered (ms)",
                    unit: Unit::Float,
                    get: |v| ptr(v, "/server_cpu_ms_per_1000"),
                },
                Row {
                    name: "connected subscribers",
                    unit: Unit::Count,
                    get: |v| ptr(v, "/connections/connected"),
                },
                Row {
                    name: "server RSS per connection (KiB)",
                    unit: Unit::Kib,
                    get: |v| ptr(v, "/rss/bytes_per_conn"),
                },
            ]);
            r.extend(loss);
            r.extend(cpu());
            r
        }
        "fanout" => {
            let mut r = vec![
                Row {
                    name: "time until the last has it, median round (ms)",
                    unit: Unit::Ms,
                    get: |v| ptr(v, "/fanout/time_to_last_us/median"),
                },
                Row {
                    name: "time until the last has it, best round (ms)",
                    unit: Unit::Ms,
                    get: |v| ptr(v, "/fanout/time_to_last_us/min"),
                },
                Row {
                    name: "time until the last has it, worst round (ms)",
                    unit: Unit::Ms,
                    get: |v| ptr(v, "/fanout/time_to_last_us/max"),
                },
                latency("delivery p50, all rounds (ms)", "p50"),
                latency("delivery p99, all rounds (ms)", "p99"),
            ];
            r.extend(loss);
            r.extend(cpu());
            r
        }
        "ingest" => {
            let mut r = vec![
                Row {
                    name: "best notifications per second",
                    unit: Unit::Count,
                    get: |v| ptr(v, "/ingest/best_notifications_per_s"),
                },
                Row {
                    name: "at concurrency",
                    unit: Unit::Count,
                    get: |v| ptr(v, "/ingest/best_concurrency"),
                },
                Row {
                    name: "requests per second at best",
                    unit: Unit::Count,
                    get: |v| best_level(v).and_then(|l| ptr(l, "/requests_per_s")),
                },
                Row {
                    name: "request p50 at best (ms)",
                    unit: Unit::Ms,
                    get: |v| best_level(v).and_then(|l| ptr(l, "/latency_us/p50")),
                },
                Row {
                    name: "request p99 at best (ms)",
                    unit: Unit::Ms,
                    get: |v| best_level(v).and_then(|l| ptr(l, "/latency_us/p99")),
                },
                Row {
                    name: "failed requests, all levels",
                    unit: Unit::Count,
                    get: |v| {
                        Some(
                            v.pointer("/ingest/levels")?
                                .as_array()?
                                .iter()
                                .filter_map(|l| l["errors"].as_f64())
                                .sum(),
                        )
                    },
                },
            ];
            r.extend(cpu());
            r
        }
        "topic" => {
            let mut r = vec![
                Row {
                    name: "topic subscribers (Nchan: one channel)",
                    unit: Unit::CountOrNa,
                    get: |v| ptr(v, "/topic/subscribers"),
                },
                Row {
                    name: "online subscribers",
                    unit: Unit::Count,
                    get: |v| ptr(v, "/topic/online"),
                },
                Row {
                    name: "publish request, median round (ms)",
                    unit: Unit::Ms,
                    get: |v| ptr(v, "/topic/publish_us/median"),
                },
                Row {
                    name: "recipients committed per second, median round",
                    unit: Unit::CountOrNa,
                    get: |v| ptr(v, "/topic/recipients_per_s/median"),
                },
                Row {
                    name: "time until the last online has it, median round (ms)",
                    unit: Unit::Ms,
                    get: |v| ptr(v, "/topic/time_to_last_us/median"),
                },
                Row {
                    name: "time until the last online has it, best round (ms)",
                    unit: Unit::Ms,
                    get: |v| ptr(v, "/topic/time_to_last_us/min"),
                },
                Row {
                    name: "time until the last online has it, worst round (ms)",
                    unit: Unit::Ms,
                    get: |v| ptr(v, "/topic/time_to_last_us/max"),
                },
                latency("delivery p50, all rounds (ms)", "p50"),
                latency("delivery p99, all rounds (ms)", "p99"),
                Row {
                    name: "server CPU per 1,000 recipients committed (ms)",
                    unit: Unit::Float,
                    get: |v| ptr(v, "/topic/server_cpu_ms_per_1000_committed"),
                },
            ];
            r.extend(loss);
            r.extend(cpu());
            r
        }
        "faces" => {
            let mut r = delivery();
            r.extend([
                Row {
                    name: "Tidings CPU per 1,000 delivered (ms)",
                    unit: Unit::Float,
                    get: |v| ptr(v, "/server_cpu_ms_per_1000"),
                },
                Row {
                    name: "Mosquitto CPU per 1,000 delivered (ms)",
                    unit: Unit::Float,
                    get: |v| ptr(v, "/broker_cpu_ms_per_1000"),
                },
                Row {
                    name: "users subscribed",
                    unit: Unit::Count,
                    get: |v| ptr(v, "/connections/connected"),
                },
                Row {
                    name: "subscriber connections",
                    unit: Unit::Count,
                    get: |v| ptr(v, "/connections/client_connections"),
                },
            ]);
            r.extend(loss);
            r.push(Row {
                name: "redelivered, dropped by seq (MQTT, at least once)",
                unit: Unit::Count,
                get: |v| ptr(v, "/delivery/redelivered_dropped"),
            });
            r.extend(cpu());
            r.insert(
                r.len() - 2,
                Row {
                    name: "Mosquitto CPU (cores)",
                    unit: Unit::Float,
                    get: |v| ptr(v, "/broker_cpu/server_cores"),
                },
            );
            r
        }
        "mqtt-drain" => vec![
            Row {
                name: "notifications in the backlog",
                unit: Unit::Count,
                get: |v| ptr(v, "/drain/accepted"),
            },
            Row {
                name: "time to publish them (s)",
                unit: Unit::Secs2,
                get: |v| ptr(v, "/drain/publish_secs"),
            },
            Row {
                name: "outbox rows left when publishing ended",
                unit: Unit::Count,
                get: |v| ptr(v, "/drain/depth_after_publish"),
            },
            Row {
                name: "broker started (s after the first publish)",
                unit: Unit::Secs2,
                get: |v| ptr(v, "/drain/broker_started_secs"),
            },
            Row {
                name: "drain began: first publish, or first PUBACK (s)",
                unit: Unit::Secs2,
                get: |v| ptr(v, "/drain/drain_from_secs"),
            },
            Row {
                name: "outbox empty (s after the first publish)",
                unit: Unit::Secs2,
                get: |v| ptr(v, "/drain/drained_secs"),
            },
            Row {
                name: "bridge rate: notifications per second from drain start to empty",
                unit: Unit::Count,
                get: |v| ptr(v, "/drain/notifications_per_s"),
            },
            Row {
                name: "outbox rows (notifications and unread counts)",
                unit: Unit::Count,
                get: |v| ptr(v, "/drain/outbox_rows"),
            },
            Row {
                name: "PUBACKed publishes per second",
                unit: Unit::Count,
                get: |v| ptr(v, "/drain/acknowledged_per_s"),
            },
            Row {
                name: "last notification at a subscriber (s)",
                unit: Unit::Secs2,
                get: |v| ptr(v, "/last_received_secs"),
            },
            Row {
                name: "received by subscribers per second",
                unit: Unit::Count,
                get: |v| ptr(v, "/received_per_s"),
            },
            Row {
                name: "lost",
                unit: Unit::Count,
                get: |v| ptr(v, "/delivery/lost"),
            },
            Row {
                name: "seq gaps / backwards",
                unit: Unit::Count,
                get: |v| Some(ptr(v, "/delivery/seq_gaps")? + ptr(v, "/delivery/seq_backwards")?),
            },
            Row {
                name: "redelivered, dropped by seq",
                unit: Unit::Count,
                get: |v| ptr(v, "/delivery/redelivered_dropped"),
            },
            Row {
                name: "Tidings CPU per 1,000 notifications (ms; publishing included unless the broker started after)",
                unit: Unit::Float,
                get: |v| ptr(v, "/server_cpu_ms_per_1000"),
            },
            Row {
                name: "Mosquitto CPU per 1,000 notifications (ms)",
                unit: Unit::Float,
                get: |v| ptr(v, "/broker_cpu_ms_per_1000"),
            },
            Row {
                name: "Tidings CPU (cores)",
                unit: Unit::Float,
                get: |v| ptr(v, "/cpu/server_cores"),
            },
            Row {
                name: "Postgres CPU, all its processes (cores)",
                unit: Unit::Float,
                get: |v| ptr(v, "/cpu/named_cores/postgres"),
            },
            Row {
                name: "Mosquitto CPU (cores)",
                unit: Unit::Float,
                get: |v| ptr(v, "/broker_cpu/server_cores"),
            },
            Row {
                name: "whole machine busy (cores)",
                unit: Unit::Float,
                get: |v| ptr(v, "/cpu/machine_busy_cores"),
            },
        ],
        "c100k" => {
            let mut r = vec![
                Row {
                    name: "connections held",
                    unit: Unit::Count,
                    get: |v| ptr(v, "/connections/connected"),
                },
                Row {
                    name: "time to open all (s)",
                    unit: Unit::Secs,
                    get: |v| ptr(v, "/connections/connect_secs"),
                },
                Row {
                    name: "server RSS per connection, all servers (KiB)",
                    unit: Unit::Kib,
                    get: |v| ptr(v, "/rss/bytes_per_conn"),
                },
                Row {
                    name: "server RSS per connection, largest replica (KiB)",
                    unit: Unit::Kib,
                    get: |v| ptr(v, "/rss/max_bytes_per_conn"),
                },
                Row {
                    name: "topic: publish request (ms)",
                    unit: Unit::Ms,
                    get: |v| ptr(v, "/topic/publish/publish_us"),
                },
                Row {
                    name: "topic: recipients committed per second",
                    unit: Unit::CountOrNa,
                    get: |v| ptr(v, "/topic/recipients_per_s"),
                },
                Row {
                    name: "topic: time until the last has it (ms)",
                    unit: Unit::Ms,
                    get: |v| ptr(v, "/topic/time_to_last_us"),
                },
                Row {
                    name: "topic: received",
                    unit: Unit::Count,
                    get: |v| ptr(v, "/topic/received"),
                },
                latency("unicast latency p50 (ms)", "p50"),
                latency("unicast latency p90 (ms)", "p90"),
                latency("unicast latency p99 (ms)", "p99"),
                latency("unicast latency p99.9 (ms)", "p999"),
                latency("unicast latency max (ms)", "max"),
                Row {
                    name: "unicast delivered per second",
                    unit: Unit::Count,
                    get: |v| ptr(v, "/delivered_per_s"),
                },
                Row {
                    name: "server CPU per 1,000 delivered (ms)",
                    unit: Unit::Float,
                    get: |v| ptr(v, "/server_cpu_ms_per_1000"),
                },
            ];
            r.extend(loss);
            r.extend(cpu());
            r
        }
        "webpush" => vec![
            Row {
                name: "subscriptions",
                unit: Unit::Count,
                get: |v| ptr(v, "/params/subscriptions"),
            },
            Row {
                name: "sustained: pushes sent per second (first publish to last receipt)",
                unit: Unit::Count,
                get: |v| ptr(v, "/sustained/pushes_per_s"),
            },
            Row {
                name: "sustained: pushes received",
                unit: Unit::Count,
                get: |v| ptr(v, "/sustained/delivery/received"),
            },
            Row {
                name: "sustained: publish→receipt p50 (ms)",
                unit: Unit::Ms,
                get: |v| ptr(v, "/sustained/delivery/latency_us/p50"),
            },
            Row {
                name: "sustained: publish→receipt p99 (ms)",
                unit: Unit::Ms,
                get: |v| ptr(v, "/sustained/delivery/latency_us/p99"),
            },
            Row {
                name: "sustained: Tidings CPU (cores)",
                unit: Unit::Float,
                get: |v| ptr(v, "/sustained/cpu/server_cores"),
            },
            Row {
                name: "sustained: Postgres CPU (cores)",
                unit: Unit::Float,
                get: |v| ptr(v, "/sustained/cpu/named_cores/postgres"),
            },
            Row {
                name: "steady: publishes per second",
                unit: Unit::Count,
                get: |v| ptr(v, "/params/rate"),
            },
            Row {
                name: "steady: publish→receipt p50 (ms)",
                unit: Unit::Ms,
                get: |v| ptr(v, "/steady/delivery/latency_us/p50"),
            },
            Row {
                name: "steady: publish→receipt p90 (ms)",
                unit: Unit::Ms,
                get: |v| ptr(v, "/steady/delivery/latency_us/p90"),
            },
            Row {
                name: "steady: publish→receipt p99 (ms)",
                unit: Unit::Ms,
                get: |v| ptr(v, "/steady/delivery/latency_us/p99"),
            },
            Row {
                name: "steady: publish→receipt max (ms)",
                unit: Unit::Ms,
                get: |v| ptr(v, "/steady/delivery/latency_us/max"),
            },
            Row {
                name: "steady: Tidings CPU (cores)",
                unit: Unit::Float,
                get: |v| ptr(v, "/steady/cpu/server_cores"),
            },
            Row {
                name: "lost, both phases",
                unit: Unit::Count,
                get: |v| {
                    Some(ptr(v, "/sustained/delivery/lost")? + ptr(v, "/steady/delivery/lost")?)
                },
            },
            Row {
                name: "duplicated, both phases",
                unit: Unit::Count,
                get: |v| {
                    Some(
                        ptr(v, "/sustained/delivery/duplicated")?
                            + ptr(v, "/steady/delivery/duplicated")?,
                    )
                },
            },
            Row {
                name: "failed publishes",
                unit: Unit::Count,
                get: |v| ptr(v, "/failed_publishes"),
            },
            Row {
                name: "malformed pushes (push service)",
                unit: Unit::Count,
                get: |v| ptr(v, "/push_service_violations"),
            },
        ],
        _ => Vec::new(),
    }
}

/// The CPU figures of a run; for ingest, those of the best concurrency level.
fn cpu_of(v: &Value) -> Option<&Value> {
    match v.get("cpu") {
        Some(c) => Some(c),
        None => best_level(v).and_then(|l| l.get("cpu")),
    }
}

fn best_level(v: &Value) -> Option<&Value> {
    let best = v.pointer("/ingest/best_concurrency")?.as_u64()?;
    v.pointer("/ingest/levels")?
        .as_array()?
        .iter()
        .find(|l| l["concurrency"].as_u64() == Some(best))
}

fn fmt(unit: Unit, x: Option<f64>) -> String {
    match x {
        None if matches!(unit, Unit::CountOrNa) => "n/a".into(),
        None => "–".into(),
        Some(x) => match unit {
            Unit::Ms => format!("{:.2}", x / 1000.0),
            Unit::Kib => format!("{:.1}", x / 1024.0),
            Unit::Count => format!("{x:.0}"),
            Unit::Secs => format!("{x:.1}"),
            Unit::Secs2 => format!("{x:.2}"),
            Unit::Float => format!("{x:.2}"),
            Unit::CountOrNa => format!("{x:.0}"),
        },
    }
}

pub fn print(files: &[PathBuf]) -> Result<()> {
    let mut docs = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", f.display()))?;
        docs.push(v);
    }
    let order = [
        "idle",
        "unicast",
        "fanout",
        "topic",
        "ingest",
        "cross-replica",
        "faces",
        "mqtt-drain",
        "webpush",
        "c100k",
    ];
    let mut groups: Vec<(String, String)> = Vec::new();
    for d in &docs {
        let key = (
            d["scenario"].as_str().unwrap_or("?").to_owned(),
            d["variant"].as_str().unwrap_or("").to_owned(),
        );
        if !groups.contains(&key) {
            groups.push(key);
        }
    }
    groups.sort_by_key(|(s, v)| {
        (
            order.iter().position(|o| o == s).unwrap_or(order.len()),
            v.clone(),
        )
    });
    for (scenario, variant) in groups {
        let mut cols: Vec<&Value> = docs
            .iter()
            .filter(|d| d["scenario"] == scenario.as_str() && d["variant"] == variant.as_str())
            .collect();
        cols.sort_by_key(|d| {
            (
                d["target"] != "tidings",
                d["label"].as_str().unwrap_or("").to_owned(),
            )
        });
        // The ratio columns: each Tidings column ÷ each Nchan one; for `faces`, each transport
        // ÷ SSE, in the order SSE, gRPC, MQTT.
        let (tidings, nchan): (Vec<&Value>, Vec<&Value>) = if scenario == "faces" {
            let rank = |d: &Value| match d["transport"].as_str() {
                Some("sse") => 0,
                Some("grpc") => 1,
                Some("mqtt") => 2,
                _ => 3,
            };
            cols.sort_by_key(|d| rank(d));
            cols.iter().copied().partition(|d| d["transport"] != "sse")
        } else if cols.iter().all(|d| d.get("preference_rules").is_some()) {
            // The `prefs` runs: each count of rules ÷ none, in the order of the counts.
            cols.sort_by_key(|d| d["preference_rules"].as_u64());
            cols.iter()
                .copied()
                .partition(|d| d["preference_rules"].as_u64() != Some(0))
        } else {
            (
                cols.iter()
                    .copied()
                    .filter(|d| d["target"] == "tidings")
                    .collect(),
                cols.iter()
                    .copied()
                    .filter(|d| d["target"] == "nchan")
                    .collect(),
            )
        };
        let label = |d: &Value| d["label"].as_str().unwrap_or("?").to_owned();
        println!("### {scenario} ({variant})\n");
        // The parameters every column shares; one that differs between columns (the MQTT
        // users per connection, the broker of a drain run) is told by the column's label.
        if let Some(Value::Object(first)) = cols.first().map(|d| &d["params"]) {
            let shared: serde_json::Map<String, Value> = first
                .iter()
                .filter(|(k, v)| cols.iter().all(|d| d["params"].get(k.as_str()) == Some(*v)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            println!("parameters: `{}`\n", Value::Object(shared));
        }
        let mut head = vec!["metric".to_owned()];
        head.extend(cols.iter().map(|d| label(d)));
        for t in &tidings {
            for n in &nchan {
                head.push(format!("{} ÷ {}", label(t), label(n)));
            }
        }
        println!("| {} |", head.join(" | "));
        println!(
            "|{}",
            head.iter()
                .enumerate()
                .map(|(i, _)| if i == 0 { " --- |" } else { " ---: |" })
                .collect::<String>()
        );
        for row in rows(&scenario) {
            let mut cells = vec![row.name.to_owned()];
            cells.extend(cols.iter().map(|d| fmt(row.unit, (row.get)(d))));
            for t in &tidings {
                for n in &nchan {
                    let want = !matches!(row.unit, Unit::Count) || row.name.contains("per second");
                    cells.push(match ((row.get)(t), (row.get)(n)) {
                        (Some(a), Some(b)) if want && b != 0.0 => format!("{:.2}×", a / b),
                        _ => String::new(),
                    });
                }
            }
            println!("| {} |", cells.join(" | "));
        }
        println!();
    }
    Ok(())
}
