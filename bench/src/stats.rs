//! Measurements: server memory from /proc, histogram summaries, the machine.

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The summed memory of the server processes, in kB as /proc reports it.
#[derive(Clone, Copy, Default, Debug)]
pub struct Rss {
    pub vm_rss: u64,
    pub anon: u64,
    pub file: u64,
    pub shmem: u64,
    /// Processes that could not be read (exited, or no permission).
    pub missing: u32,
}

pub fn rss(pids: &[u32]) -> Rss {
    let mut total = Rss::default();
    for pid in pids {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            total.missing += 1;
            continue;
        };
        for line in status.lines() {
            let mut it = line.split_whitespace();
            let (Some(key), Some(val)) = (it.next(), it.next()) else {
                continue;
            };
            let v: u64 = val.parse().unwrap_or(0);
            match key {
                "VmRSS:" => total.vm_rss += v,
                "RssAnon:" => total.anon += v,
                "RssFile:" => total.file += v,
                "RssShmem:" => total.shmem += v,
                _ => {}
            }
        }
    }
    total
}

/// Before/after memory and what each connection cost, as JSON.
pub fn rss_json(pids: &[u32], before: Rss, after: Rss, conns: u64) -> Value {
    let per = |a: u64, b: u64| {
        if conns == 0 || pids.is_empty() {
            Value::Null
        } else {
            json!(((a as f64 - b as f64) * 1024.0 / conns as f64).round())
        }
    };
    json!({
        "pids": pids,
        "before_kb": before.vm_rss,
        "after_kb": after.vm_rss,
        "anon_before_kb": before.anon,
        "anon_after_kb": after.anon,
        "shmem_before_kb": before.shmem,
        "shmem_after_kb": after.shmem,
        "connections": conns,
        "bytes_per_conn": per(after.vm_rss, before.vm_rss),
        "anon_bytes_per_conn": per(after.anon, before.anon),
        "missing_pids": after.missing,
    })
}

/// Percentiles of a microsecond histogram, as JSON (in microseconds).
pub fn hist_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": h.len(),
        "min": h.min(),
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": h.mean().round(),
    })
}

pub fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

pub fn hist_line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".into();
    }
    format!(
        "n={} p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        h.len(),
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.9)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max())
    )
}

pub fn machine() -> Value {
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse::<u64>().ok());
    let model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
        c.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1).map(|s| s.trim().to_owned()))
    });
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "mem_total_kb": mem_kb,
        "loadavg": std::fs::read_to_string("/proc/loadavg").ok().map(|s| s.trim().to_owned()),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_owned()),
    })
}

/// CPU time of the server processes, of this client, of named helper processes (Postgres,
/// Redis) and of the whole machine, at one instant.
pub struct CpuSample {
    at: std::time::Instant,
    server_ticks: u64,
    client_us: u64,
    machine_busy: u64,
    machine_total: u64,
    /// pid -> (comm, ticks) of processes whose name is in the watched list
    named: std::collections::HashMap<u32, (String, u64)>,
}

fn ticks_of(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let rest: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    // fields 14 and 15 (utime, stime) are 11 and 12 after the comm
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

pub fn cpu_sample(pids: &[u32], names: &[String]) -> CpuSample {
    let mut server_ticks = 0;
    for pid in pids {
        if let Some((_, t)) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| ticks_of(&s))
        {
            server_ticks += t;
        }
    }
    let mut named = std::collections::HashMap::new();
    if !names.is_empty() {
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if let Some((comm, t)) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| ticks_of(&s))
                {
                    if names.iter().any(|n| comm.starts_with(n.as_str())) {
                        named.insert(pid, (comm, t));
                    }
                }
            }
        }
    }
    let (mut machine_busy, mut machine_total) = (0, 0);
    if let Some(line) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().next().map(str::to_owned))
    {
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest is already in user)
        machine_total = v.iter().take(8).sum();
        machine_busy = machine_total - v.get(3).unwrap_or(&0) - v.get(4).unwrap_or(&0);
    }
    // SAFETY: getrusage only writes the struct passed to it.
    let client_us = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        (ru.ru_utime.tv_sec as u64 + ru.ru_stime.tv_sec as u64) * 1_000_000
            + ru.ru_utime.tv_usec as u64
            + ru.ru_stime.tv_usec as u64
    };
    CpuSample {
        at: std::time::Instant::now(),
        server_ticks,
        client_us,
        machine_busy,
        machine_total,
        named,
    }
}

/// CPU used between two samples, in cores (CPU seconds per wall second) and seconds.
pub fn cpu_json(a: &CpuSample, b: &CpuSample) -> Value {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let wall = (b.at - a.at).as_secs_f64().max(1e-3);
    let round = |x: f64| (x * 100.0).round() / 100.0;
    let mut named: BTreeMap<String, f64> = BTreeMap::new();
    for (pid, (comm, t1)) in &b.named {
        let t0 = a.named.get(pid).map(|(_, t)| *t).unwrap_or(0);
        *named.entry(comm.clone()).or_default() += t1.saturating_sub(t0) as f64 / hz;
    }
    let server_secs = b.server_ticks.saturating_sub(a.server_ticks) as f64 / hz;
    let machine_total = b.machine_total.saturating_sub(a.machine_total) as f64;
    let machine_busy = b.machine_busy.saturating_sub(a.machine_busy) as f64;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    json!({
        "wall_s": round(wall),
        "server_cpu_s": round(server_secs),
        "server_cores": round(server_secs / wall),
        "client_cores": round(b.client_us.saturating_sub(a.client_us) as f64 / 1e6 / wall),
        "machine_busy_cores": if machine_total > 0.0 { round(machine_busy / machine_total * cpus) } else { 0.0 },
        "machine_cores": cpus,
        "named_cores": named.into_iter().map(|(k, v)| (k, json!(round(v / wall)))).collect::<serde_json::Map<_, _>>(),
    })
}
