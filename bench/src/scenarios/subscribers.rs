//! Opening and closing the subscribers of a scenario, and what they report.

use crate::net::{Connector, Endpoint};
use crate::sub::{self, Ctx, Faces, MqttBroker, SubResult};
use crate::{Common, Transport};
use anyhow::Result;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) struct Subs {
    pub(super) ctx: Arc<Ctx>,
    /// One task per user, or (MQTT) per connection subscribed for many users.
    pub(super) handles: Vec<tokio::task::JoinHandle<Vec<SubResult>>>,
    pub(super) connect_secs: f64,
}

pub(super) async fn open_subs(
    c: &Common,
    transport: Transport,
    users: &[String],
    tokens: &[String],
    rounds: usize,
) -> Result<Subs> {
    let ep = Endpoint::parse(c.sub_url.as_deref().unwrap_or(&c.url))?;
    let connector = Arc::new(Connector::new(c.source_ips, &ep.addr));
    let faces = Faces {
        grpc: c.grpc_url.as_deref().map(Endpoint::parse).transpose()?,
        mqtt: c
            .mqtt_url
            .as_deref()
            .map(|u| MqttBroker::parse(u, &c.mqtt_topic_prefix))
            .transpose()?,
    };
    let ctx = Arc::new(
        Ctx::new(
            c.target,
            transport,
            ep,
            connector,
            c.connect_concurrency,
            rounds,
            users.len(),
        )
        .with_faces(faces),
    );
    let t0 = Instant::now();
    let handles = if transport == Transport::Mqtt {
        let per = c.mqtt_users_per_connection.max(1);
        users
            .chunks(per)
            .enumerate()
            .map(|(k, chunk)| {
                tokio::spawn(sub::run_mqtt(ctx.clone(), (k * per) as u32, chunk.to_vec()))
            })
            .collect()
    } else {
        users
            .iter()
            .zip(tokens)
            .enumerate()
            .map(|(i, (name, token))| {
                let (ctx, name, token) = (ctx.clone(), name.clone(), token.clone());
                tokio::spawn(async move { vec![sub::run(ctx, i as u32, name, token).await] })
            })
            .collect()
    };
    let n = users.len() as u64;
    let mut shown = Instant::now();
    loop {
        let ok = ctx.connected.load(Ordering::Relaxed);
        let failed = ctx.failed.load(Ordering::Relaxed);
        if ok + failed >= n {
            break;
        }
        if t0.elapsed() > Duration::from_secs(300) {
            eprintln!("giving up waiting for connections after 300 s");
            break;
        }
        if shown.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "  connecting: {ok}/{n} connected, {failed} failed ({:.1}s)",
                t0.elapsed().as_secs_f64()
            );
            shown = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    let subs = Subs {
        ctx,
        handles,
        connect_secs,
    };
    println!(
        "subscribers: {}/{} connected over {}, {} failed, in {:.1}s",
        subs.ctx.connected.load(Ordering::Relaxed),
        n,
        transport.name(),
        subs.ctx.failed.load(Ordering::Relaxed),
        connect_secs
    );
    print_errors(&subs.ctx);
    Ok(subs)
}

pub(super) fn print_errors(ctx: &Ctx) {
    let errors = ctx.errors.lock().unwrap();
    for e in errors.iter().take(5) {
        eprintln!("  error: {e}");
    }
}

pub(super) async fn close_subs(subs: Subs) -> Vec<SubResult> {
    subs.ctx.cancel.cancel();
    let mut out = Vec::with_capacity(subs.handles.len());
    for h in subs.handles {
        if let Ok(r) = h.await {
            out.extend(r);
        }
    }
    out
}

pub(super) fn connections_json(subs: &Subs, requested: usize) -> Value {
    json!({
        "requested": requested,
        "connected": subs.ctx.connected.load(Ordering::Relaxed),
        "failed": subs.ctx.failed.load(Ordering::Relaxed),
        "dropped": subs.ctx.dropped.load(Ordering::Relaxed),
        "poll_errors": subs.ctx.poll_errors.load(Ordering::Relaxed),
        "client_connections": subs.handles.len(),
        "connect_secs": (subs.connect_secs * 100.0).round() / 100.0,
    })
}
