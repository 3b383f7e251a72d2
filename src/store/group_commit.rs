//! Group commit for Postgres: concurrent publishes share one transaction.
//!
//! A durable commit costs a WAL flush, and one flush per request caps single-recipient
//! ingest at a few thousand per second. Here a few committer tasks each take whatever
//! publishes are queued (up to a bound), write them all in one transaction (one statement
//! without the outbox; cursors, messages, inbox rows and outbox rows with it), commit once,
//! and only then answer each request with its own outcome: every request still gets its 201
//! only after its own rows are durable.
//!
//! The seq rule is unchanged: each user's cursor row is bumped once per batch by the number
//! of that user's notifications in it (locked in sorted order, held until commit), and the
//! seqs are handed out in queue order, so per user they are contiguous and in commit order.
//!
//! Publishes with an `Idempotency-Key` take the single-request path: their claim-or-replay
//! step must see other requests' commits, which a shared transaction would hide.
//!
//! ## Preferences (issue 25), without a read per batch
//! Each recipient's mute rules must be the ones in force when the batch commits, but a read
//! before the statement would add a round trip to every publish, and a read inside it would
//! use the statement's snapshot, older than the cursor row locks it waits for. So the batch
//! is planned from this replica's [`PrefsCache`] (one lookup per recipient per batch), and
//! the statement checks the guess: it locks every recipient's cursor row (muted ones too,
//! bumped by 0), which returns the row's latest `prefs_version`, the version a `PUT` writes
//! while holding the same lock. If any differs from the version the batch was planned with,
//! the statement fails as a whole (nothing is written), the batch's preferences are read
//! (one query) and the batch planned and sent again. A user with no preferences has a NULL
//! version and no cache entry, so the common case costs one array parameter and a join.

use super::pg_rows::{self, OutboxColumns};
use super::preferences::{pg_record_all_holds, pg_refresh};
use super::{
    Counts, Outbox, PrefsCache, PreparedPublish, PublishCommand, PublishOutcome, StoreError,
};
use crate::domain::Preferences;
use crate::domain::{IdKey, Seq};
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
/// Times a batch is planned again after its preferences changed under it. `PUT`s are human
/// actions, so a second attempt nearly always succeeds; past this, a 503 and a retry.
const PREFS_ATTEMPTS: usize = 4;

/// The version and rules each recipient of a batch was planned with (users without
/// preferences are absent: version NULL).
type Guess = HashMap<String, (i64, Arc<Preferences>)>;

struct Job {
    cmd: PublishCommand,
    reply: oneshot::Sender<Result<PublishOutcome, StoreError>>,
}

#[derive(Debug, Clone)]
pub struct GroupCommit {
    tx: mpsc::Sender<Job>,
    prefs: Arc<PrefsCache>,
}

impl GroupCommit {
    /// Starts the committers. They end when `shutdown` is cancelled (after committing
    /// what is queued by then) or when the last handle is dropped; a publish after that is
    /// refused as "unavailable", never left waiting.
    /// With the outbox on, each batch also writes its outbox rows in its transaction.
    pub fn start(pool: PgPool, outbox: Outbox, ids: IdKey, shutdown: &Shutdown) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let prefs = Arc::new(PrefsCache::default());
        for _ in 0..COMMITTERS {
            shutdown.spawn(committer(
                pool.clone(),
                outbox.clone(),
                ids.clone(),
                prefs.clone(),
                rx.clone(),
                shutdown.clone(),
            ));
        }
        Self { tx, prefs }
    }

    /// The preferences the committers plan with (a `PUT` on this replica updates it).
    pub fn prefs(&self) -> &PrefsCache {
        &self.prefs
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
    ids: IdKey,
    prefs: Arc<PrefsCache>,
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
        let with_outbox = outbox.is_on();
        let mut result = Err(StoreError::StalePreferences);
        let mut retried_deadlock = false;
        let mut attempts = 0;
        while attempts < PREFS_ATTEMPTS {
            attempts += 1;
            let (prepared, guess) = plan_batch(&jobs, &ids, &prefs);
            result = commit(&pool, &prepared, &guess, &outbox).await;
            if !retried_deadlock
                && matches!(&result, Err(StoreError::Database(sqlx::Error::Database(e))) if matches!(e.code().as_deref(), Some("40P01" | "40001")))
            {
                retried_deadlock = true;
                result = commit(&pool, &prepared, &guess, &outbox).await;
            }
            if !matches!(result, Err(StoreError::StalePreferences)) {
                break;
            }
            // A `PUT` committed since this replica last read these users' preferences.
            let users = distinct_recipients(&prepared);
            if let Err(e) = pg_refresh(&pool, &prefs, &users).await {
                result = Err(e);
                break;
            }
        }
        if let Err(StoreError::StalePreferences) = result {
            result = Err(StoreError::Unavailable(sqlx::Error::Protocol(
                "the recipients' preferences kept changing during the commit".into(),
            )));
        }
        if result.is_ok() && with_outbox {
            outbox.poke();
        }
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

/// Prepares every publish of the batch and mutes the recipients whose cached preferences
/// say so. Returns the guess it planned with, which the commit statement checks.
fn plan_batch<'j>(
    jobs: &'j [Job],
    ids: &'j IdKey,
    prefs: &PrefsCache,
) -> (Vec<PreparedPublish<'j>>, Guess) {
    let mut prepared: Vec<PreparedPublish<'j>> = jobs
        .iter()
        .map(|j| PreparedPublish::new(&j.cmd, ids))
        .collect();
    let guess = prefs.snapshot(
        prepared
            .iter()
            .flat_map(|p| p.rows.iter().map(|(u, _)| u.as_str())),
    );
    if !guess.is_empty() {
        for p in &mut prepared {
            p.mute(|u| guess.get(u).map(|(_, p)| p.clone()));
        }
    }
    (prepared, guess)
}

fn distinct_recipients<'b>(batch: &'b [PreparedPublish<'_>]) -> Vec<&'b str> {
    let mut users: Vec<&str> = batch
        .iter()
        .flat_map(|p| p.recipients().map(|u| u.as_str()))
        .collect();
    users.sort_unstable();
    users.dedup();
    users
}

/// The same error for every request of a failed batch (sqlx errors cannot be cloned).
/// The copies keep the whole cause chain as text, so each request's log line still says why.
fn replicate(e: &StoreError) -> StoreError {
    let message = Chain(e).to_string();
    match e {
        StoreError::Unavailable(_) => StoreError::Unavailable(sqlx::Error::Protocol(message)),
        StoreError::PreconditionFailed { current } => {
            StoreError::PreconditionFailed { current: *current }
        }
        _ => StoreError::Database(sqlx::Error::Protocol(message)),
    }
}

/// Writes every prepared publish in one transaction; outcomes in the same order.
///
/// Without the outbox the whole batch is one statement in its own implicit transaction: one
/// round trip to Postgres instead of five (BEGIN, cursors, messages, inbox, COMMIT). With
/// five, Postgres spent 60 % of a publish transaction waiting for Tidings' next statement
/// while holding the batch's cursor row locks; with one, 5 %, and the WAL flush is nearly all
/// that is left (`bench/RESULTS.md`, issue 15). With the outbox on, its rows need the seqs the
/// cursors hand out, so that path keeps its statements in one explicit transaction.
async fn commit(
    pool: &PgPool,
    batch: &[PreparedPublish<'_>],
    guess: &Guess,
    outbox: &Outbox,
) -> Result<Vec<PublishOutcome>, StoreError> {
    let plan = Plan::new(batch);
    if outbox.is_on() {
        commit_with_outbox(pool, batch, &plan, guess, outbox).await
    } else {
        commit_in_one_statement(pool, batch, &plan, guess).await
    }
}

/// How many notifications each user gets in a batch, in lock (sorted) order. Muted
/// recipients are in it with 0: their cursor row is locked too, to check their preferences'
/// version (see the module's doc).
struct Plan<'b> {
    per_user: BTreeMap<&'b str, i64>,
}

impl<'b> Plan<'b> {
    fn new(batch: &'b [PreparedPublish<'_>]) -> Self {
        let mut per_user: BTreeMap<&str, i64> = BTreeMap::new();
        for prep in batch {
            for (user, _) in &prep.rows {
                *per_user.entry(user.as_str()).or_default() += 1;
            }
            for (user, _) in &prep.muted {
                per_user.entry(user.as_str()).or_default();
            }
        }
        Self { per_user }
    }

    fn users(&self) -> Vec<&'b str> {
        self.per_user.keys().copied().collect()
    }

    /// The preferences version each user (in `users()` order) was planned with.
    fn expected(&self, guess: &Guess) -> Vec<Option<i64>> {
        self.per_user
            .keys()
            .map(|u| guess.get(*u).map(|(v, _)| *v))
            .collect()
    }

    fn counts(&self) -> Vec<i64> {
        self.per_user.values().copied().collect()
    }

    /// Hands out each user's counters in batch order, from the counters after the whole
    /// batch (`after`), calling `row` for every recipient with its message and counters.
    /// Returns each publish's counters per recipient. Both paths use it, and the one-statement
    /// path's SQL computes the same seqs from the same `behind` (see `OneStatement`).
    fn hand_out(
        &self,
        batch: &[PreparedPublish<'_>],
        after: &HashMap<String, Counts>,
        messages: &[i64],
        mut row: impl FnMut(&PreparedPublish<'_>, &str, u32, i64, Counts) -> Result<(), StoreError>,
    ) -> Result<Vec<Vec<Counts>>, StoreError> {
        let mut handed: HashMap<&str, i64> = HashMap::with_capacity(self.per_user.len());
        let mut per_job: Vec<Vec<Counts>> = Vec::with_capacity(batch.len());
        for (prep, &message) in batch.iter().zip(messages) {
            let mut bumped = Vec::with_capacity(prep.rows.len());
            for (user, ordinal) in &prep.rows {
                let user = user.as_str();
                let k = self.per_user.get(user).copied().unwrap_or(0);
                let total = after.get(user).ok_or_else(|| {
                    StoreError::Database(sqlx::Error::Protocol(format!(
                        "no cursor returned for {user}"
                    )))
                })?;
                let n = handed.entry(user).or_default();
                *n += 1;
                // This user's n-th notification of the batch: the counters right after it.
                let behind = k - *n;
                let counts = Counts {
                    seq: total.seq.plus(-behind),
                    unread: total.unread - behind,
                    version: total.version - behind,
                };
                row(prep, user, *ordinal, message, counts)?;
                bumped.push(counts);
            }
            per_job.push(bumped);
        }
        Ok(per_job)
    }
}

fn outcomes(
    batch: &[PreparedPublish<'_>],
    per_job: Vec<Vec<Counts>>,
    messages: Vec<i64>,
) -> Result<Vec<PublishOutcome>, StoreError> {
    batch
        .iter()
        .zip(per_job)
        .zip(messages)
        .map(|((prep, bumped), message)| prep.outcome(message, &bumped))
        .collect()
}

fn protocol(message: String) -> StoreError {
    StoreError::Database(sqlx::Error::Protocol(message))
}

/// The batch as one statement: data-modifying CTEs bump the cursors, insert the messages and
/// the inbox rows, and the statement returns the cursors after the batch, the message ids and
/// how many inbox rows went in. Each inbox row's seq is its user's `last_seq` after the batch
/// minus `behind`, the number of that user's rows after it in batch order: the same seqs
/// `Plan::hand_out` gives the answers.
async fn commit_in_one_statement(
    pool: &PgPool,
    batch: &[PreparedPublish<'_>],
    plan: &Plan<'_>,
    guess: &Guess,
) -> Result<Vec<PublishOutcome>, StoreError> {
    let messages = Messages::new(batch);
    let mut rows = OneStatement::default();
    let mut seen: HashMap<&str, i64> = HashMap::with_capacity(plan.per_user.len());
    // Publishes every recipient muted have no message: positions count the others.
    for (position, prep) in (1i64..).zip(batch.iter().filter(|p| !p.rows.is_empty())) {
        for (user, ordinal) in &prep.rows {
            let k = plan.per_user.get(user.as_str()).copied().unwrap_or(0);
            let n = seen.entry(user.as_str()).or_default();
            *n += 1;
            rows.users.push(user.as_str());
            rows.messages.push(position);
            rows.behind.push(k - *n);
            rows.ordinals.push(pg_rows::ordinal(*ordinal)?);
        }
    }
    let returned = sqlx::query(
        "WITH cur AS (
           INSERT INTO user_cursors (user_id, last_seq, unread, version)
           SELECT u, k, k, k FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS t(u, k, ord) ORDER BY ord
           ON CONFLICT (user_id) DO UPDATE
             SET last_seq = user_cursors.last_seq + EXCLUDED.last_seq,
                 unread = user_cursors.unread + EXCLUDED.unread,
                 version = user_cursors.version + EXCLUDED.version
           RETURNING user_id, last_seq, unread, version, prefs_version
         ), stale AS (
           -- How many recipients' preferences changed since the batch was planned.
           SELECT count(*) AS n
           FROM cur JOIN unnest($1::text[], $15::bigint[]) AS e(u, v) ON e.u = cur.user_id
           WHERE cur.prefs_version IS DISTINCT FROM e.v
         ), msg AS (
           INSERT INTO messages (service, type, title, body, data, link, created_at, topic)
           SELECT sv, ty, ti, b, d::jsonb, l, c, tp
           FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                       $9::timestamptz[], $10::text[]) WITH ORDINALITY AS t(sv, ty, ti, b, d, l, c, tp, ord)
           ORDER BY ord
           RETURNING id
         ), ids AS (
           SELECT id, row_number() OVER (ORDER BY id) AS position FROM msg
         ), ins AS (
           INSERT INTO inbox (user_id, seq, message_id, ordinal)
           SELECT r.u, cur.last_seq - r.behind, ids.id, r.o
           FROM unnest($11::text[], $12::bigint[], $13::bigint[], $14::int[]) AS r(u, m, behind, o)
           JOIN cur ON cur.user_id = r.u
           JOIN ids ON ids.position = r.m
           RETURNING 1
         )
         SELECT user_id, last_seq, unread, version, NULL::bigint FROM cur
         UNION ALL SELECT NULL, NULL, NULL, NULL, id FROM msg
         UNION ALL SELECT NULL, count(*), NULL, NULL, NULL FROM ins
         -- Any: fail the whole statement (division by zero, 22012), so nothing is written.
         UNION ALL SELECT NULL, NULL, NULL, NULL, n / 0 FROM stale WHERE n > 0",
    )
    .bind(plan.users())
    .bind(plan.counts())
    .bind(&messages.services)
    .bind(&messages.kinds)
    .bind(&messages.titles)
    .bind(&messages.bodies)
    .bind(&messages.data)
    .bind(&messages.links)
    .bind(&messages.created)
    .bind(&messages.topics)
    .bind(&rows.users)
    .bind(&rows.messages)
    .bind(&rows.behind)
    .bind(&rows.ordinals)
    .bind(plan.expected(guess))
    .fetch_all(pool)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("22012") => {
            StoreError::StalePreferences
        }
        _ => StoreError::from(e),
    })?;

    let mut after: HashMap<String, Counts> = HashMap::with_capacity(plan.per_user.len());
    let mut ids: Vec<i64> = Vec::with_capacity(batch.len());
    let mut inserted: Option<i64> = None;
    for r in &returned {
        if let Some(user) = r.try_get::<Option<String>, _>(0)? {
            let counts = Counts {
                seq: r.try_get(1)?,
                unread: r.try_get(2)?,
                version: r.try_get(3)?,
            };
            after.insert(user, counts);
        } else if let Some(id) = r.try_get::<Option<i64>, _>(4)? {
            ids.push(id);
        } else {
            inserted = r.try_get(1)?;
        }
    }
    // The joins drop nothing unless a cursor or message went missing; say so rather than
    // answer for rows that were not written (the statement committed, so this is a bug).
    if ids.len() != messages.kinds.len() || inserted != i64::try_from(rows.users.len()).ok() {
        return Err(protocol(format!(
            "{} messages and {} inbox rows written, {} returned and {:?} inserted",
            messages.kinds.len(),
            rows.users.len(),
            ids.len(),
            inserted
        )));
    }
    ids.sort_unstable();
    let ids = spread(batch, ids);
    let per_job = plan.hand_out(batch, &after, &ids, |_, _, _, _, _| Ok(()))?;
    outcomes(batch, per_job, ids)
}

/// The inbox rows of a one-statement batch before their seqs are known: the publish's
/// position in the batch (1-based) and how many of the user's rows come after it.
#[derive(Default)]
struct OneStatement<'b> {
    users: Vec<&'b str>,
    messages: Vec<i64>,
    behind: Vec<i64>,
    ordinals: Vec<i32>,
}

/// The batch in one explicit transaction of four statements, the outbox rows with it.
async fn commit_with_outbox(
    pool: &PgPool,
    batch: &[PreparedPublish<'_>],
    plan: &Plan<'_>,
    guess: &Guess,
    with: &Outbox,
) -> Result<Vec<PublishOutcome>, StoreError> {
    let mut tx = pool.begin().await?;
    let bumped = sqlx::query(
        "INSERT INTO user_cursors (user_id, last_seq, unread, version)
         SELECT u, k, k, k FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS t(u, k, ord) ORDER BY ord
         ON CONFLICT (user_id) DO UPDATE
           SET last_seq = user_cursors.last_seq + EXCLUDED.last_seq,
               unread = user_cursors.unread + EXCLUDED.unread,
               version = user_cursors.version + EXCLUDED.version
         RETURNING user_id, last_seq, unread, version, prefs_version",
    )
    .bind(plan.users())
    .bind(plan.counts())
    .fetch_all(&mut *tx)
    .await?;
    let mut after: HashMap<String, Counts> = HashMap::with_capacity(bumped.len());
    for r in &bumped {
        // The preferences version in force under the lock; dropping `tx` rolls back.
        let user: &str = r.try_get(0)?;
        let version: Option<i64> = r.try_get(4)?;
        if version != guess.get(user).map(|(v, _)| *v) {
            return Err(StoreError::StalePreferences);
        }
        let counts = Counts {
            seq: r.try_get(1)?,
            unread: r.try_get(2)?,
            version: r.try_get(3)?,
        };
        after.insert(r.try_get(0)?, counts);
    }

    let messages = spread(batch, Messages::new(batch).insert(&mut tx).await?);
    let mut inbox = Inbox::default();
    // In batch order: per user, seq order.
    let mut outbox = OutboxColumns::default();
    let per_job = plan.hand_out(
        batch,
        &after,
        &messages,
        |prep, user, ordinal, message, counts| {
            inbox.users.push(user.to_owned());
            inbox.seqs.push(counts.seq);
            inbox.messages.push(message);
            inbox.ordinals.push(pg_rows::ordinal(ordinal)?);
            let id = PreparedPublish::id(prep.key, message, ordinal, counts.seq)?;
            let n = prep.notification(id, counts.seq);
            for (channel, kind, payload) in prep.outbox_rows(user, &n, &counts) {
                outbox.push_on(channel, user, kind, payload);
            }
            Ok(())
        },
    )?;
    inbox.insert(&mut tx).await?;
    outbox.insert(&mut tx, with).await?;
    // Quiet hours: the recipients held back get a hold instead of outbox rows.
    pg_record_all_holds(&mut tx, with, batch.iter()).await?;
    tx.commit().await?;
    outcomes(batch, per_job, messages)
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

/// The message id of every publish of a batch, from the ids of those that have one in batch
/// order: 0 for a publish every recipient muted (it has no row to refer to it).
fn spread(batch: &[PreparedPublish<'_>], ids: Vec<i64>) -> Vec<i64> {
    let mut ids = ids.into_iter();
    batch
        .iter()
        .map(|p| {
            if p.rows.is_empty() {
                0
            } else {
                ids.next().unwrap_or(0)
            }
        })
        .collect()
}

impl Messages {
    /// Publishes that every recipient muted get no message: no row without copies.
    fn new(batch: &[PreparedPublish<'_>]) -> Self {
        let mut m = Self::default();
        for prep in batch.iter().filter(|p| !p.rows.is_empty()) {
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
            return Err(protocol(format!(
                "{} messages inserted, {} returned",
                self.kinds.len(),
                ids.len()
            )));
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
