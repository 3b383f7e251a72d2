//! Preference rules for the `prefs` runs (issue 25): every user of a `fanout` or `ingest` run
//! gets N rules through `PUT /v1/preferences` before anything is measured, so the same
//! scenario can be run without rules and with them and the two compared in one table.
//!
//! The rules are what a settings page produces: type prefixes and exact types, mostly mutes
//! of kinds of mail a user does not want, some only for `push` or `mqtt`, and allows that
//! carve exceptions out of them. None mutes the type the bench publishes (`bench`), which one
//! rule allows explicitly, so with rules the server delivers exactly the same work and the
//! difference is the evaluation alone.

use crate::net::{self, Client, Connector, Endpoint};
use crate::{Common, Target};
use anyhow::{bail, Result};
use bytes::Bytes;
use hyper::Method;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// `PUT`s in flight at once during the set-up.
const CONCURRENCY: usize = 32;

/// Twenty realistic rules (`n` of them; past twenty, numbered copies of the mutes).
pub(crate) fn rules(n: usize) -> Vec<Value> {
    let base = [
        json!({"types": ["marketing.*"], "channels": ["all"], "action": "mute"}),
        json!({"types": ["marketing.newsletter"], "channels": ["inbox"], "action": "allow"}),
        json!({"types": ["promo.*"], "channels": ["push", "mqtt"], "action": "mute"}),
        json!({"types": ["security.*"], "channels": ["all"], "action": "allow"}),
        json!({"types": ["billing.invoice", "billing.receipt"], "channels": ["push"], "action": "allow"}),
        json!({"types": ["social.*"], "channels": ["push"], "action": "mute"}),
        json!({"types": ["social.mention"], "channels": ["push"], "action": "allow"}),
        json!({"types": ["digest.weekly"], "channels": ["mqtt"], "action": "mute"}),
        json!({"topics": ["team.random"], "channels": ["push"], "action": "mute"}),
        json!({"types": ["ci.build.*"], "channels": ["push"], "action": "mute"}),
        json!({"types": ["ci.build.failed"], "channels": ["push"], "action": "allow"}),
        json!({"types": ["bench"], "channels": ["all"], "action": "allow"}),
        json!({"types": ["calendar.*"], "channels": ["mqtt"], "action": "mute"}),
        json!({"types": ["calendar.reminder"], "channels": ["all"], "action": "allow"}),
        json!({"types": ["recommendation.*"], "channels": ["all"], "action": "mute"}),
        json!({"types": ["survey.*", "feedback.*"], "channels": ["all"], "action": "mute"}),
        json!({"types": ["shipping.*"], "channels": ["push"], "action": "allow"}),
        json!({"types": ["chat.*"], "channels": ["mqtt"], "action": "mute"}),
        json!({"types": ["chat.direct"], "channels": ["push", "mqtt"], "action": "allow"}),
        json!({"types": ["system.maintenance"], "channels": ["inbox"], "action": "mute"}),
    ];
    (0..n)
        .map(|i| {
            if i < base.len() {
                base[i].clone()
            } else {
                json!({"types": [format!("extra{i}.*")], "channels": ["all"], "action": "mute"})
            }
        })
        .collect()
}

/// Gives every one of `users` `c.preference_rules` rules (nothing for Nchan or for 0).
pub(crate) async fn apply(c: &Common, users: &[String]) -> Result<()> {
    let n = c.preference_rules.unwrap_or(0);
    if n == 0 || c.target != Target::Tidings {
        return Ok(());
    }
    let body = Bytes::from(serde_json::to_vec(&json!({ "rules": rules(n) }))?);
    let tokens = Arc::new(c.user_tokens(users)?);
    let ep = Endpoint::parse(&c.url)?;
    let connector = Arc::new(Connector::new(c.source_ips, &ep.addr));
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..CONCURRENCY {
        let mut client = Client::new(ep.clone(), connector.clone(), Duration::from_secs(60));
        let (tokens, next, body) = (tokens.clone(), next.clone(), body.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(token) = tokens.get(i) else {
                    return Ok::<_, anyhow::Error>(());
                };
                let bearer = format!("Bearer {token}");
                let req = net::request(
                    Method::PUT,
                    client.host(),
                    "/v1/preferences",
                    &[
                        ("authorization", bearer.as_str()),
                        ("content-type", "application/json"),
                    ],
                    body.clone(),
                )?;
                let reply = client.send(req).await?;
                if reply.status != 200 {
                    bail!(
                        "PUT /v1/preferences: HTTP {}: {}",
                        reply.status,
                        String::from_utf8_lossy(&reply.body)
                    );
                }
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        r??;
    }
    println!(
        "preferences: {n} rules for each of {} users in {:.1}s",
        users.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::rules;

    #[test]
    fn twenty_rules_and_none_mutes_the_bench_type() {
        let r = rules(20);
        assert_eq!(r.len(), 20);
        for rule in &r {
            let types = rule["types"].as_array().cloned().unwrap_or_default();
            if rule["action"] == "mute" {
                assert!(!types.iter().any(|t| t == "bench"), "{rule}");
            }
        }
        assert_eq!(rules(25).len(), 25);
    }
}
