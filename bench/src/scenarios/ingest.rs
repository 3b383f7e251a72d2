//! `ingest`: the highest durable publish rate, at rising publisher concurrency.

use super::publishing::{accepted, publish};
use crate::net::{now_us, Client, Connector, Endpoint};
use crate::stats::{cpu_json, cpu_sample, hist_json, hist_line};
use crate::sub;
use crate::{Common, Target};
use anyhow::Result;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

pub(crate) async fn ingest(
    c: &Common,
    per_request: usize,
    n_users: usize,
    levels: &[usize],
    duration: u64,
) -> Result<(Value, bool)> {
    let prefix = c.prefix();
    let users = Arc::new(c.users(&prefix, n_users.max(per_request)));
    super::prefs::apply(c, &users).await?;
    let ep = Endpoint::parse(&c.url)?;
    let connector = Arc::new(Connector::new(c.source_ips, &ep.addr));
    let bearer = Arc::new(format!("Bearer {}", c.service_token()?));
    let warmup = Duration::from_secs((duration / 5).max(1));
    let mut out_levels = Vec::new();
    let mut best = (0.0f64, 0usize);
    let mut any_error = false;
    for (li, &conc) in levels.iter().enumerate() {
        let latency = Arc::new(Mutex::new(sub::histogram()));
        let done = Arc::new(AtomicU64::new(0));
        let statuses = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
        let start = Instant::now();
        let measure_from = start + warmup;
        let cpu_at_start = tokio::spawn({
            let (pids, names) = (c.cpu_pids(), c.watch_comm.clone());
            async move {
                tokio::time::sleep_until(measure_from.into()).await;
                cpu_sample(&pids, &names)
            }
        });
        let deadline = start + Duration::from_secs(duration) + warmup;
        let mut tasks = JoinSet::new();
        for w in 0..conc {
            let (ep, connector, bearer, users, latency, done, statuses) = (
                ep.clone(),
                connector.clone(),
                bearer.clone(),
                users.clone(),
                latency.clone(),
                done.clone(),
                statuses.clone(),
            );
            let target = c.target;
            let seed = c.seed ^ ((li as u64) << 32) ^ w as u64;
            tasks.spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut client = Client::new(ep, connector, Duration::from_secs(30));
                let mut m = (w as u64) << 40;
                while Instant::now() < deadline {
                    let idx = rand::seq::index::sample(&mut rng, users.len(), per_request);
                    let names: Vec<&str> = idx.iter().map(|i| users[i].as_str()).collect();
                    let t = Instant::now();
                    let mut status = Ok(0);
                    match target {
                        Target::Tidings => {
                            let now = now_us();
                            status =
                                publish(target, &mut client, &bearer, &names, m, now, now).await;
                        }
                        Target::Nchan => {
                            for name in &names {
                                let now = now_us();
                                status =
                                    publish(target, &mut client, "", &[name], m, now, now).await;
                                if !matches!(status, Ok(s) if accepted(s)) {
                                    break;
                                }
                            }
                        }
                    }
                    m += 1;
                    let end = Instant::now();
                    let ok = matches!(status, Ok(s) if accepted(s));
                    if end >= measure_from && end <= deadline {
                        *statuses
                            .lock()
                            .unwrap()
                            .entry(match &status {
                                Ok(s) => s.to_string(),
                                Err(e) => format!("error: {e:#}"),
                            })
                            .or_default() += 1;
                        if ok {
                            done.fetch_add(1, Ordering::Relaxed);
                            let _ = latency
                                .lock()
                                .unwrap()
                                .record((end - t).as_micros().max(1) as u64);
                        }
                    }
                    if !ok {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            });
        }
        let cpu0 = cpu_at_start.await?;
        while tasks.join_next().await.is_some() {}
        let cpu = cpu_json(&cpu0, &cpu_sample(&c.cpu_pids(), &c.watch_comm));
        let secs = duration as f64;
        let requests = done.load(Ordering::Relaxed);
        let rps = requests as f64 / secs;
        let nps = rps * per_request as f64;
        let lat = latency.lock().unwrap().clone();
        let statuses = statuses.lock().unwrap().clone();
        let errors: u64 = statuses
            .iter()
            .filter(|(k, _)| k.as_str() != "201" && k.as_str() != "202")
            .map(|(_, v)| v)
            .sum();
        any_error |= errors > 0;
        println!(
            "[{}] ingest x{per_request} at concurrency {conc}: {rps:.0} requests/s = {nps:.0} notifications/s; errors {errors}; request {}",
            c.label(),
            hist_line(&lat)
        );
        if errors > 0 {
            println!("  statuses {statuses:?}");
        }
        if nps > best.0 {
            best = (nps, conc);
        }
        out_levels.push(json!({
            "concurrency": conc, "requests_per_s": rps.round(), "notifications_per_s": nps.round(),
            "errors": errors, "statuses": statuses, "latency_us": hist_json(&lat), "cpu": cpu,
        }));
        // Let the server settle between levels.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut out = c.header(
        "ingest",
        &format!("x{per_request}"),
        json!({"recipients_per_request": per_request, "users": n_users,
               "concurrency": levels, "duration_s": duration, "warmup_s": warmup.as_secs()}),
    );
    out.insert(
        "ingest".into(),
        json!({
            "best_notifications_per_s": best.0.round(),
            "best_concurrency": best.1,
            "levels": out_levels,
        }),
    );
    out.insert("ok".into(), json!(!any_error));
    println!(
        "[{}] ingest x{per_request}: best {:.0} notifications/s at concurrency {}",
        c.label(),
        best.0,
        best.1
    );
    Ok((Value::Object(out), !any_error))
}
