//! The cursor: many concurrent publishers to one user, and a reader that follows
//! `after=<cursor>` sees every seq exactly once, with no hole, ever.

use crate::helpers::{sample, seqs, service_token, spawn_app, user_token, Backend};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const PUBLISHERS: usize = 8;
const TOTAL: usize = 500;

async fn concurrent_publishers_leave_no_hole(b: Backend) {
    let app = Arc::new(spawn_app(b).await);
    let done = Arc::new(AtomicBool::new(false));

    let reader = {
        let app = app.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let token = user_token("alice");
            let mut cursor = 0i64;
            let mut seen = Vec::with_capacity(TOTAL);
            loop {
                let finished = done.load(Ordering::SeqCst);
                let (status, page) = app
                    .get(
                        &token,
                        &format!("/v1/notifications?after={cursor}&limit=200"),
                    )
                    .await;
                assert_eq!(status, 200, "{page}");
                for seq in seqs(&page) {
                    // The heart of it: the next seq the reader sees is always cursor + 1.
                    assert_eq!(seq, cursor + 1, "hole or duplicate after {cursor}");
                    cursor = seq;
                    seen.push(seq);
                }
                if finished && seqs(&page).is_empty() {
                    return seen;
                }
            }
        })
    };

    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let app = app.clone();
            tokio::spawn(async move {
                let token = service_token("billing");
                let mut n = TOTAL / PUBLISHERS + usize::from(p < TOTAL % PUBLISHERS);
                while n > 0 {
                    // Mix single- and multi-recipient publishes, so locks are taken in many orders.
                    let body = if n % 3 == 0 {
                        sample(&["bob", "alice", "carol"])
                    } else {
                        sample(&["alice"])
                    };
                    let resp = app.publish_raw(&token, &body, None).await;
                    assert_eq!(resp.status(), 201);
                    n -= 1;
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.expect("publisher");
    }
    done.store(true, Ordering::SeqCst);
    let seen = reader.await.expect("reader");
    assert_eq!(seen, (1..=TOTAL as i64).collect::<Vec<_>>());
    assert_eq!(app.unread("alice").await["unread"], TOTAL as i64);
}

crate::both_backends!(concurrent_publishers_leave_no_hole);
