//! `idle`: N subscribers that only hold their connections; the server's RSS per connection.

use super::subscribers::{close_subs, connections_json, open_subs};
use crate::stats::{rss, rss_json};
use crate::{Common, Transport};
use anyhow::Result;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::Duration;

pub(crate) async fn idle(
    c: &Common,
    n: usize,
    transport: Transport,
    settle: u64,
) -> Result<(Value, bool)> {
    let prefix = c.prefix();
    let users = c.users(&prefix, n);
    let tokens = c.user_tokens(&users)?;
    let before = rss(&c.server_pid);
    let subs = open_subs(c, transport, &users, &tokens, 0).await?;
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let after = rss(&c.server_pid);
    let conns =
        subs.ctx.connected.load(Ordering::Relaxed) - subs.ctx.dropped.load(Ordering::Relaxed);
    let rss_v = rss_json(&c.server_pid, before, after, conns);
    println!(
        "[{}] idle {}: {} connections held; server RSS {} kB -> {} kB: {} bytes/connection ({} anon)",
        c.label(),
        transport.name(),
        conns,
        before.vm_rss,
        after.vm_rss,
        rss_v["bytes_per_conn"],
        rss_v["anon_bytes_per_conn"],
    );
    let mut out = c.header(
        "idle",
        transport.name(),
        json!({"connections": n, "transport": transport.name(), "settle_s": settle}),
    );
    out.insert("connections".into(), connections_json(&subs, n));
    out.insert("rss".into(), rss_v);
    let all = conns == n as u64;
    close_subs(subs).await;
    Ok((Value::Object(out), all))
}
