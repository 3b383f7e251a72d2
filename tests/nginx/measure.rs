//! Figures for the closing note: steady publishing, delivery gaps across reconnects, what the
//! clients received, the errors they recovered from, latency percentiles.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;
use tidings_test_support::live::{Collector, PublishRun, Report};
use tokio::sync::watch;
use tokio::time::{sleep, Instant};

/// Prints a figure and appends it to `$CARGO_TARGET_TMPDIR/nginx-figures.txt`, so it can be
/// read even when cargo captured the test's output.
pub fn report_figure(line: &str) {
    println!("{line}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("nginx-figures.txt");
    if let Ok(mut f) = std::fs::File::options()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(
            f,
            "{} {line}",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
        );
    }
}

/// Lets `run` publish `per_second` notifications a second, steadily, until `stop` turns
/// true (or the run's total is reached). Returns how many it let out in all.
pub async fn pace(
    run: &PublishRun,
    total: usize,
    per_second: u64,
    mut stop: watch::Receiver<bool>,
) -> usize {
    let started = Instant::now();
    let mut allowed = 0usize;
    loop {
        let due = (started.elapsed().as_millis() as u64 * per_second / 1000) as usize + 1;
        if due > allowed {
            allowed = due.min(total);
            run.allow(allowed);
        }
        if allowed >= total || *stop.borrow() {
            return allowed;
        }
        tokio::select! {
            _ = sleep(Duration::from_millis(5)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// What [`watch_gaps`] saw of one collector.
#[derive(Debug, Clone)]
pub struct Gaps {
    pub name: String,
    /// Reconnects seen (connection count increases).
    pub reconnects: u64,
    /// The longest time between two notifications that had a reconnect between them: from
    /// the last notification on the old connection to the first on the new one.
    pub longest_reconnect_gap: Duration,
    /// The longest time between two notifications, reconnect or not.
    pub longest_gap: Duration,
}

/// Samples every collector every 2 ms until `stop` turns true: when a client's cursor moves,
/// the time since it last moved is a delivery gap, and a reconnect gap if the client
/// connected again in between. Under steady publishing this is the time a user saw nothing
/// because of the reconnect (resolution: the sampling interval plus the publishing interval).
pub async fn watch_gaps(collectors: &[Collector], mut stop: watch::Receiver<bool>) -> Vec<Gaps> {
    struct Track {
        cursor: Option<i64>,
        at: Option<Instant>,
        connects_then: u64,
        connects_seen: u64,
        gaps: Gaps,
    }
    let mut tracks: Vec<Track> = collectors
        .iter()
        .map(|c| Track {
            cursor: c.cursor(),
            at: None,
            connects_then: c.connects(),
            connects_seen: c.connects(),
            gaps: Gaps {
                name: c.name.clone(),
                reconnects: 0,
                longest_reconnect_gap: Duration::ZERO,
                longest_gap: Duration::ZERO,
            },
        })
        .collect();
    loop {
        let now = Instant::now();
        for (c, t) in collectors.iter().zip(tracks.iter_mut()) {
            let connects = c.connects();
            if connects > t.connects_seen {
                t.gaps.reconnects += connects - t.connects_seen;
                t.connects_seen = connects;
            }
            let cursor = c.cursor();
            if cursor != t.cursor {
                if let Some(at) = t.at {
                    let gap = now - at;
                    t.gaps.longest_gap = t.gaps.longest_gap.max(gap);
                    if connects > t.connects_then {
                        t.gaps.longest_reconnect_gap = t.gaps.longest_reconnect_gap.max(gap);
                    }
                }
                t.cursor = cursor;
                t.at = Some(now);
                t.connects_then = connects;
            }
        }
        if *stop.borrow() {
            return tracks.into_iter().map(|t| t.gaps).collect();
        }
        tokio::select! {
            _ = sleep(Duration::from_millis(2)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Deliveries against what was published, over the collectors' reports.
#[derive(Debug, Default)]
pub struct Tally {
    pub clients: usize,
    /// Notifications received, duplicates included.
    pub delivered: usize,
    /// Seqs of 1..=n a client never received, summed over clients.
    pub lost: usize,
    /// Seqs received more than once (each extra copy counts).
    pub duplicated: usize,
}

pub fn tally(reports: &[Report], n: i64) -> Tally {
    let mut t = Tally {
        clients: reports.len(),
        ..Tally::default()
    };
    for r in reports {
        t.delivered += r.seqs.len();
        let mut sorted = r.seqs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        t.duplicated += r.seqs.len() - sorted.len();
        let got = sorted.iter().filter(|s| (1..=n).contains(*s)).count();
        t.lost += n as usize - got;
    }
    t
}

/// Why collectors lost their connections, from their logs, grouped into kinds.
#[derive(Debug, Default)]
pub struct Errors {
    /// kind → how many times, for errors a client recovers from by reconnecting with its cursor.
    pub recoverable: BTreeMap<String, usize>,
    /// Full lines of errors that tell a client to stop (4xx, other 5xx, policy closes).
    pub unrecoverable: Vec<String>,
}

impl Errors {
    pub fn summary(&self) -> String {
        self.recoverable
            .iter()
            .map(|(k, n)| format!("{k} x{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The kind of one `lost …` / `reconnect …` line of a collector's log, and whether a client
/// can recover from it (reconnect with its cursor) without a person doing something.
fn classify(line: &str) -> Option<(String, bool)> {
    let why = line.split_once(": ").map(|(_, w)| w)?;
    if line.starts_with("reconnect from") {
        return Some((format!("reconnect ({why})"), true));
    }
    if !line.starts_with("lost ") {
        return None;
    }
    // An HTTP answer: "refused with 503: …" (SSE, WebSocket), "poll answered 503: …".
    let status = why
        .strip_prefix("refused with ")
        .or_else(|| why.strip_prefix("poll answered "))
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse::<u16>().ok());
    if let Some(status) = status {
        // 502/504: nginx had no replica to give; 503: a replica stopping or full (Retry-After).
        return Some((format!("HTTP {status}"), matches!(status, 502..=504)));
    }
    if let Some(code) = why.strip_prefix("closed ") {
        // 1001 going away, 1012 service restart, 4008 too slow (resume by cursor); none: the
        // connection just ended.
        let ok = matches!(
            code,
            "Some(1001)" | "Some(1006)" | "Some(1012)" | "Some(1013)" | "Some(4008)" | "None"
        );
        return Some((format!("WebSocket close {code}"), ok));
    }
    let kind = if why == "stream ended" {
        "SSE stream ended".to_owned()
    } else if why.contains("without a close frame") {
        "WebSocket ended without a close frame".to_owned()
    } else if why.contains("Connection refused") || why.contains("connect") {
        "connection failed".to_owned()
    } else {
        // A broken connection: reset, truncated chunk, … The first words name it.
        let short: String = why.chars().take(60).collect();
        format!("broken: {short}")
    };
    Some((kind, true))
}

pub fn errors(reports: &[Report]) -> Errors {
    let mut e = Errors::default();
    for r in reports {
        for line in &r.log {
            if let Some((kind, ok)) = classify(line) {
                if ok {
                    *e.recoverable.entry(kind).or_default() += 1;
                } else {
                    e.unrecoverable.push(format!("{}: {line}", r.name));
                }
            }
        }
    }
    e
}

/// `(p50, p99, max)` of a sample of milliseconds (nearest rank).
pub fn percentiles(samples_ms: &[f64]) -> (f64, f64, f64) {
    assert!(!samples_ms.is_empty());
    let mut ms = samples_ms.to_vec();
    ms.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        let rank = ((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len());
        ms[rank - 1]
    };
    (at(0.50), at(0.99), ms[ms.len() - 1])
}

pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
