//! Group commit for Postgres: concurrent publishes share one transaction.
//!
//! A durable commit costs a WAL flush, and one flush per request caps single-recipient
//! ingest at a few thousand per second. Here a few committer tasks each take whatever
//! publishes are queued (up to a bound), write them all in one transaction of four
//! statements (cursors, messages, inbox rows, outbox), commit once, and only then answer each request with its own outcome: every
//! request still gets its 201 only after its own rows are durable.
//!
//! The seq rule is unchanged: each user's cursor row is bumped once per batch by the number
//! of that user's notifications in it (locked in sorted order, held until commit), and the
//! seqs are handed out in queue order, so per user they are contiguous and in commit order.
//!
//! Publishes with an `Idempotency-Key` take the single-request path: their claim-or-replay
//! step must see other requests' commits, which a shared transaction would hide.

use super::postgres::{self, OutboxColumns};
use super::{Counts, Outbox, PreparedPublish, PublishCommand, PublishOutcome, StoreError};
use crate::domain::Seq;
use crate::shutdown::Shutdown;
use crate::telemetry::Chain;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex};

/// Publishes waiting for a committer; past it, publishers wait (backpressure).
const QUEUE: usize = 4096;
/// At most this many requests, and about this many rows, per transaction.
const MAX_JOBS: usize = 512;
const MAX_ROWS: usize = 8192;
/// Transactions in flight at once.
const COMMITTERS: usize = 4;

struct Job {
    cmd: PublishCommand,
    reply: oneshot::Sender<Result<PublishOutcome, StoreError>>,
}

#[derive(Debug, Clone)]
pub struct GroupCommit {
    tx: mpsc::Sender<Job>,
}

impl GroupCommit {
    /// Starts the committers. They end when `shutdown` is cancelled (after committing
    /// what is queued by then) or when the last handle is dropped; a publish after that is
    /// refused as "unavailable", never left waiting.
    /// With the outbox on, each batch also writes its outbox rows in its transaction.
    pub fn start(pool: PgPool, outbox: Outbox, shutdown: &Shutdown) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..COMMITTERS {
            shutdown.spawn(committer(
                pool.clone(),
                outbox.clone(),
                rx.clone(),
                shutdown.clone(),
            ));
        }
        Self { tx }
    }

    pub async fn publish(&self, cmd: &PublishCommand) -> Result<PublishOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            cmd: cmd.clone(),
            reply,
        };
        let closed = || StoreError::Unavailable(sqlx::Error::PoolClosed);
        self.tx.send(job).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

async fn committer(
    pool: PgPool,
    outbox: Outbox,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    shutdown: Shutdown,
) {
    let mut jobs: Vec<Job> = Vec::with_capacity(MAX_JOBS);
    loop {
        {
            // Whoever holds the queue takes a batch, then lets the next committer take one
            // while this batch commits.
            let mut rx = rx.lock().await;
            let next = tokio::select! {
                biased;
                job = rx.recv() => job,
                // Stopping: the server has drained, so what is queued is all there will be.
                () = shutdown.cancelled() => rx.try_recv().ok(),
            };
            let Some(first) = next else { return };
            let mut rows = first.cmd.notification.recipients.len();
            jobs.push(first);
            while jobs.len() < MAX_JOBS && rows < MAX_ROWS {
                match rx.try_recv() {
                    Ok(job) => {
                        rows += job.cmd.notification.recipients.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
        }
        let prepared: Vec<PreparedPublish<'_>> =
            jobs.iter().map(|j| PreparedPublish::new(&j.cmd)).collect();
        let with_outbox = outbox.is_on();
        let mut result = commit(&pool, &prepared, with_outbox).await;
        if matches!(&result, Err(StoreError::Database(sqlx::Error::Database(e))) if matches!(e.code().as_deref(), Some("40P01" | "40001")))
        {
            result = commit(&pool, &prepared, with_outbox).await;
        }
        if result.is_ok() && with_outbox {
            outbox.poke();
        }
        drop(prepared);
        match result {
            Ok(outcomes) => {
                for (job, outcome) in jobs.drain(..).zip(outcomes) {
                    let _ = job.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                if jobs.len() > 1 {
                    tracing::warn!(error = %Chain(&e), requests = jobs.len(), "a group commit failed");
                }
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(replicate(&e)));
                }
            }
        }
    }
}

/// The same error for every request of a failed batch (sqlx errors cannot be cloned).
/// The copies keep the whole cause chain as text, so each request's log line still says why.
fn replicate(e: &StoreError) -> StoreError {
    let message = Chain(e).to_string();
    match e {
        StoreError::Unavailable(_) => StoreError::Unavailable(sqlx::Error::Protocol(message)),
        _ => StoreError::Database(sqlx::Error::Protocol(message)),
    }
}

/// Writes every prepared publish in one transaction; outcomes in the same order.
async fn commit(
    pool: &PgPool,
    batch: &[PreparedPublish<'_>],
    with_outbox: bool,
) -> Result<Vec<PublishOutcome>, StoreError> {
    // How many notifications each user gets in this batch, in lock (sorted) order.
    let mut per_user: BTreeMap<&str, i64> = BTreeMap::new();
    for prep in batch {
        for (user, _) in &prep.rows {
            *per_user.entry(user.as_str()).or_default() += 1;
        }
    }
    let users: Vec<&str> = per_user.keys().copied().collect();
    let ks: Vec<i64> = per_user.values().copied().collect();

    let mut tx = pool.begin().await?;
    let bumped = sqlx::query(
        "INSERT INTO user_cursors (user_id, last_seq, unread, version)
         SELECT u, k, k, k FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS t(u, k, ord) ORDER BY ord
         ON CONFLICT (user_id) DO UPDATE
           SET last_seq = user_cursors.last_seq + EXCLUDED.last_seq,
               unread = user_cursors.unread + EXCLUDED.unread,
               version = user_cursors.version + EXCLUDED.version
         RETURNING user_id, last_seq, unread, version",
    )
    .bind(&users)
    .bind(&ks)
    .fetch_all(&mut *tx)
    .await?;
    // Per user: the counters after the whole batch, and how many of its seqs are handed out.
    let mut after: HashMap<String, (Counts, i64)> = HashMap::with_capacity(bumped.len());
    for r in &bumped {
        let counts = Counts {
            seq: r.try_get(1)?,
            unread: r.try_get(2)?,
            version: r.try_get(3)?,
        };
        after.insert(r.try_get(0)?, (counts, 0));
    }

    let messages = Messages::new(batch).insert(&mut tx).await?;

    let mut per_job: Vec<Vec<Counts>> = Vec::with_capacity(batch.len());
    let mut inbox = Inbox::default();
    // In batch order: per user, seq order.
    let mut outbox = OutboxColumns::default();
    for (prep, &message) in batch.iter().zip(&messages) {
        let mut bumped = Vec::with_capacity(prep.rows.len());
        for (user, ordinal) in &prep.rows {
            let k = per_user.get(user.as_str()).copied().unwrap_or(0);
            let (total, handed) = after.get_mut(user.as_str()).ok_or_else(|| {
                StoreError::Database(sqlx::Error::Protocol(format!(
                    "no cursor returned for {user}"
                )))
            })?;
            *handed += 1;
            // This user's i-th notification of the batch: the counters as they were right after it.
            let behind = k - *handed;
            let counts = Counts {
                seq: total.seq.plus(-behind),
                unread: total.unread - behind,
                version: total.version - behind,
            };
            bumped.push(counts);
            inbox.users.push(user.as_str().to_owned());
            inbox.seqs.push(counts.seq);
            inbox.messages.push(message);
            inbox.ordinals.push(postgres::ordinal(*ordinal)?);
            if with_outbox {
                let id = PreparedPublish::id(message, *ordinal, counts.seq)?;
                outbox.push_delivery(user.as_str(), &prep.notification(id, counts.seq), &counts);
            }
        }
        per_job.push(bumped);
    }
    inbox.insert(&mut tx).await?;
    outbox.insert(&mut tx).await?;
    tx.commit().await?;
    batch
        .iter()
        .zip(per_job)
        .zip(messages)
        .map(|((prep, bumped), message)| prep.outcome(message, &bumped))
        .collect()
}

/// The messages of a batch, one per publish, column by column for one `unnest` insert.
#[derive(Default)]
struct Messages {
    services: Vec<String>,
    kinds: Vec<String>,
    titles: Vec<String>,
    bodies: Vec<Option<String>>,
    data: Vec<Option<String>>,
    links: Vec<Option<String>>,
    created: Vec<DateTime<Utc>>,
    topics: Vec<Option<String>>,
}

impl Messages {
    fn new(batch: &[PreparedPublish<'_>]) -> Self {
        let mut m = Self::default();
        for prep in batch {
            let n = &prep.cmd.notification;
            m.services.push(prep.cmd.service.clone());
            m.kinds.push(n.kind.as_str().to_owned());
            m.titles.push(n.title.as_str().to_owned());
            m.bodies
                .push(n.body.as_ref().map(|b| b.as_str().to_owned()));
            m.data.push(prep.data_json());
            m.links.push(n.link.as_ref().map(|l| l.as_str().to_owned()));
            m.created.push(prep.created_at);
            m.topics
                .push(n.topic.as_ref().map(|t| t.as_str().to_owned()));
        }
        m
    }

    /// Inserts them in batch order and returns their ids in that order. The identity column
    /// takes its values as the rows are inserted, in the `ORDER BY ord` of the select, so the
    /// returned ids sorted ascending are the ids of the publishes in order.
    async fn insert(&self, tx: &mut sqlx::PgConnection) -> Result<Vec<i64>, StoreError> {
        let mut ids: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO messages (service, type, title, body, data, link, created_at, topic)
             SELECT sv, ty, ti, b, d::jsonb, l, c, tp
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::timestamptz[], $8::text[]) WITH ORDINALITY AS t(sv, ty, ti, b, d, l, c, tp, ord)
             ORDER BY ord
             RETURNING id",
        )
        .bind(&self.services)
        .bind(&self.kinds)
        .bind(&self.titles)
        .bind(&self.bodies)
        .bind(&self.data)
        .bind(&self.links)
        .bind(&self.created)
        .bind(&self.topics)
        .fetch_all(tx)
        .await?;
        if ids.len() != self.kinds.len() {
            return Err(StoreError::Database(sqlx::Error::Protocol(format!(
                "{} messages inserted, {} returned",
                self.kinds.len(),
                ids.len()
            ))));
        }
        ids.sort_unstable();
        Ok(ids)
    }
}

/// The inbox rows of a batch, column by column, for one `unnest` insert.
#[derive(Default)]
struct Inbox {
    users: Vec<String>,
    seqs: Vec<Seq>,
    messages: Vec<i64>,
    ordinals: Vec<i32>,
}

impl Inbox {
    async fn insert(&self, tx: &mut sqlx::PgConnection) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO inbox (user_id, seq, message_id, ordinal)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::int[])",
        )
        .bind(&self.users)
        .bind(&self.seqs)
        .bind(&self.messages)
        .bind(&self.ordinals)
        .execute(tx)
        .await?;
        Ok(())
    }
}
