//! One user's actor: the user's open connections on this replica, and their cursors.

use super::history::{History, HistoryError};
use super::{Changed, ConnControl, Frame, Hub, Live, Sequencer};
use crate::domain::{Counts, Cursor, Event, InboxChange, Page, Seq, UserId};
use crate::telemetry::Chain;
use actix::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

/// More than this many missed notifications are not replayed: the client gets `resync`
/// and pages through the REST API instead.
pub const REPLAY_CAP: usize = 500;

/// The actor's mailbox bound. Past it, events are dropped and replaced by one catch-up.
const MAILBOX: usize = 1024;

/// A failed database read is retried after this long (the store may be restarting).
const READ_RETRY: Duration = Duration::from_secs(1);

#[derive(Message)]
#[rtype(result = "()")]
pub struct Join {
    pub id: u64,
    pub tx: mpsc::Sender<Frame>,
    pub cursor: Cursor,
    pub control: Arc<ConnControl>,
    /// Fired (or dropped) once the connection's first frame is queued, with whether that
    /// frame fixed the starting point (false: the read failed): see `Conn::started`.
    pub started: Option<oneshot::Sender<bool>>,
}

/// Idempotent: a connection may be reported gone more than once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub id: u64,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub Arc<Event>);

#[derive(Message)]
#[rtype(result = "()")]
pub struct CatchUp;

#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

struct Conn {
    id: u64,
    tx: mpsc::Sender<Frame>,
    control: Arc<ConnControl>,
    seq: Sequencer<(Seq, Arc<str>)>,
    /// The seq of the last notification queued to this connection, or its starting point.
    last_sent: Seq,
    /// `Some` for a connection that starts at the latest seq, until its first frame is
    /// queued: `Hub::connect` waits on it, so that the client cannot see the stream open
    /// before "from now" is fixed. Its first frame follows the read of the latest seq (live
    /// events are held until then), or is the replica's shutdown.
    started: Option<oneshot::Sender<bool>>,
    /// True until the connection's first read succeeds: only the client's own cursor can be
    /// ahead of the user's latest seq (a later read starts from what this replica delivered,
    /// and a read pool that lags must not make it look ahead).
    first_read: bool,
}

#[derive(Debug, Clone, Copy)]
enum ReadFrom {
    After(Seq),
    /// Start at the latest seq: the client wants only what is new.
    Latest,
}

pub struct UserSession {
    user: UserId,
    hub: Hub,
    history: Arc<dyn History>,
    pending_joins: Arc<AtomicUsize>,
    lagged: Arc<AtomicBool>,
    /// Usually one to three tabs: a vector beats a map at that size.
    conns: Vec<Conn>,
    /// The newest counters seen, by version.
    counts: Counts,
}

impl UserSession {
    pub fn new(
        user: UserId,
        hub: Hub,
        history: Arc<dyn History>,
        pending_joins: Arc<AtomicUsize>,
        lagged: Arc<AtomicBool>,
    ) -> Self {
        Self {
            user,
            hub,
            history,
            pending_joins,
            lagged,
            // Most users have one tab: room for one connection, not the four a first push
            // would reserve.
            conns: Vec::with_capacity(1),
            counts: Counts::default(),
        }
    }

    fn observe(&mut self, counts: Counts) -> bool {
        if counts.version > self.counts.version {
            self.counts = counts;
            true
        } else {
            false
        }
    }

    fn read(&mut self, ctx: &mut Context<Self>, id: u64, from: ReadFrom) {
        self.read_attempt(ctx, id, from, 0);
    }

    /// `attempt` counts the failed tries before this one, so a failure is reported to the
    /// connection once, not once a second for as long as the database is down.
    fn read_attempt(&mut self, ctx: &mut Context<Self>, id: u64, from: ReadFrom, attempt: u32) {
        let user = self.user.clone();
        let fut = match from {
            ReadFrom::After(after) => self.history.after(user, after, (REPLAY_CAP + 1) as u32),
            ReadFrom::Latest => self.history.latest(user),
        };
        ctx.spawn(
            fut.into_actor(self)
                .map(move |res, act, ctx| act.read_done(ctx, id, from, attempt, res)),
        );
    }

    fn read_done(
        &mut self,
        ctx: &mut Context<Self>,
        id: u64,
        from: ReadFrom,
        attempt: u32,
        res: Result<Page, HistoryError>,
    ) {
        let page = match res {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(user = %self.user, error = %Chain(e.as_ref()), "replay read failed; retrying");
                // The connection hears of it (a long-poll must not answer "nothing new"
                // when it could not look); streams ignore it and get the retry's result.
                if attempt == 0 && !self.push(id, Frame::Unavailable) {
                    self.forget_cut(ctx);
                    return;
                }
                ctx.run_later(READ_RETRY, move |act, ctx| {
                    if act.conns.iter().any(|c| c.id == id) {
                        act.read_attempt(ctx, id, from, attempt.saturating_add(1));
                    }
                });
                return;
            }
        };
        self.observe(page.counts);
        let counts = self.counts;
        let Some(conn) = self.conns.iter_mut().find(|c| c.id == id) else {
            return;
        };
        let mut resync = None;
        let first_read = std::mem::take(&mut conn.first_read);
        // Below the floor, the replay starts at the oldest kept notification, and the
        // connection hears so first. Above the latest seq, it goes on live from the latest
        // seq, and hears so first too.
        let first = match from {
            ReadFrom::After(after) if page.truncated(after) => {
                conn.last_sent = conn.last_sent.max(page.floor);
                Some(Frame::Truncated { floor: page.floor })
            }
            ReadFrom::After(after) if first_read && page.ahead(after) => {
                conn.seq.rewind(page.counts.seq);
                conn.last_sent = page.counts.seq;
                Some(Frame::Ahead {
                    seq: page.counts.seq,
                })
            }
            _ => None,
        };
        let merged = match from {
            ReadFrom::Latest => {
                conn.last_sent = page.counts.seq;
                conn.seq.finish_read(Vec::new(), Some(page.counts.seq))
            }
            ReadFrom::After(_) if page.notifications.len() > REPLAY_CAP => {
                resync = Some(Frame::Resync {
                    seq: page.counts.seq,
                });
                conn.seq.finish_read(Vec::new(), Some(page.counts.seq))
            }
            ReadFrom::After(_) => {
                let rows = page
                    .notifications
                    .iter()
                    .map(|n| (n.seq, (n.seq, render(n))))
                    .collect();
                // At most REPLAY_CAP rows of a limit of one more: the page holds every seq
                // up to the counters' seq that was not deleted (nor pruned below the floor).
                let merged = conn.seq.finish_read(rows, Some(page.counts.seq));
                // Past deleted seqs at the end too, so a client resuming from it does not
                // ask for them again.
                conn.last_sent = conn.seq.delivered();
                merged
            }
        };
        if let Some((seq, _)) = merged.deliver.last() {
            conn.last_sent = conn.last_sent.max(*seq);
        }
        let update = Frame::update(merged.deliver, counts, conn.last_sent);
        let again = merged.again;
        let sent = first.is_none_or(|t| self.push(id, t))
            && resync.is_none_or(|r| self.push(id, r))
            && self.push(id, update);
        if !sent {
            self.forget_cut(ctx);
        } else if let Some(after) = again {
            self.read(ctx, id, ReadFrom::After(after));
        }
    }

    /// Queues a frame without waiting. A full queue means the client does not read: it is
    /// cut off (its stream says `resync` if it still can, and it resumes by cursor).
    /// Returns false when the connection is gone or was cut.
    fn push(&mut self, id: u64, frame: Frame) -> bool {
        let Some(conn) = self.conns.iter_mut().find(|c| c.id == id) else {
            return false;
        };
        // A first frame that says the read failed did not fix a starting point.
        let fixed = !matches!(frame, Frame::Unavailable);
        let sent = conn.tx.try_send(frame);
        if let Some(started) = conn.started.take() {
            let _ = started.send(fixed);
        }
        match sent {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                conn.control.overflowed.store(true, Ordering::Release);
                self.hub.metrics().slow_consumers.inc();
                tracing::info!(user = %self.user, "cut off a connection that does not read fast enough");
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// Drops connections that were cut or closed; their streams see the queue close.
    fn forget_cut(&mut self, ctx: &mut Context<Self>) {
        self.conns
            .retain(|c| !c.tx.is_closed() && !c.control.overflowed());
        self.stop_if_idle(ctx);
    }

    fn stop_if_idle(&mut self, ctx: &mut Context<Self>) {
        if self.conns.is_empty() && self.hub.release(&self.user, &self.pending_joins) {
            ctx.stop();
        }
    }
}

/// One notification's JSON, built once and shared by every connection it goes to.
fn render(n: &crate::domain::Notification) -> Arc<str> {
    serde_json::to_string(n).unwrap_or_default().into()
}

impl Actor for UserSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX);
    }
}

impl Handler<Join> for UserSession {
    type Result = ();

    fn handle(&mut self, msg: Join, ctx: &mut Context<Self>) {
        self.pending_joins.fetch_sub(1, Ordering::AcqRel);
        let (start, from) = match msg.cursor {
            Cursor::After(after) => (after, ReadFrom::After(after)),
            Cursor::Live => (Seq::ZERO, ReadFrom::Latest),
        };
        self.conns.push(Conn {
            id: msg.id,
            tx: msg.tx,
            control: msg.control,
            seq: Sequencer::reading_from(start),
            last_sent: start,
            started: msg.started,
            first_read: true,
        });
        self.read(ctx, msg.id, from);
    }
}

impl Handler<Leave> for UserSession {
    type Result = ();

    fn handle(&mut self, msg: Leave, ctx: &mut Context<Self>) {
        self.conns.retain(|c| c.id != msg.id);
        self.stop_if_idle(ctx);
    }
}

impl Handler<Deliver> for UserSession {
    type Result = ();

    fn handle(&mut self, Deliver(event): Deliver, ctx: &mut Context<Self>) {
        match &*event {
            Event::Notification {
                notification,
                counts,
                committed_at_us,
                ..
            } => {
                self.observe(*counts);
                let counts = self.counts;
                let json = render(notification);
                let seq = notification.seq;
                let mut reads = Vec::new();
                let mut frames = Vec::new();
                for conn in &mut self.conns {
                    match conn.seq.on_live(seq, (seq, json.clone())) {
                        Live::Deliver(item) => {
                            conn.last_sent = seq;
                            frames.push((conn.id, Frame::update(vec![item], counts, seq)));
                        }
                        Live::Drop => {}
                        Live::CatchUp { after } => reads.push((conn.id, after)),
                    }
                }
                let delivered = frames.len();
                let mut cut = false;
                for (id, frame) in frames {
                    cut |= !self.push(id, frame);
                }
                if delivered > 0 {
                    let metrics = self.hub.metrics();
                    metrics.delivered.inc_by(delivered as u64);
                    let now = chrono::Utc::now().timestamp_micros();
                    let latency = (now - committed_at_us).max(0) as f64 / 1e6;
                    for _ in 0..delivered {
                        metrics.latency.observe(latency);
                    }
                }
                for (id, after) in reads {
                    self.read(ctx, id, ReadFrom::After(after));
                }
                if cut {
                    self.forget_cut(ctx);
                }
            }
            Event::Counts { counts, .. } => {
                if !self.observe(*counts) {
                    return;
                }
                let counts = self.counts;
                let targets: Vec<(u64, Seq)> = self
                    .conns
                    .iter()
                    .filter(|c| !c.seq.is_reading())
                    .map(|c| (c.id, c.last_sent))
                    .collect();
                let mut cut = false;
                for (id, last) in targets {
                    cut |= !self.push(id, Frame::update(Vec::new(), counts, last));
                }
                if cut {
                    self.forget_cut(ctx);
                }
            }
            Event::Changed { change, counts, .. } => {
                // Sent even when the counters are not newer than the ones seen (a change
                // that arrives after a later publish's counters): the list still changes.
                self.observe(*counts);
                let counts = self.counts;
                let change: Arc<InboxChange> = Arc::new((**change).clone());
                let json: Arc<str> = change.to_json(&counts).into();
                // Every connection, even one whose replay read is in flight: the change
                // may concern notifications it was sent before, and a client ignores ids
                // it does not hold.
                let targets: Vec<(u64, Seq)> =
                    self.conns.iter().map(|c| (c.id, c.last_sent)).collect();
                let mut cut = false;
                for (id, last) in targets {
                    let frame = Frame::Changed(Box::new(Changed {
                        change: change.clone(),
                        json: json.clone(),
                        counts,
                        last,
                    }));
                    cut |= !self.push(id, frame);
                }
                if cut {
                    self.forget_cut(ctx);
                }
            }
            Event::Preferences {
                version, document, ..
            } => {
                let json: Arc<str> =
                    serde_json::json!({"version": version, "preferences": document})
                        .to_string()
                        .into();
                let ids: Vec<u64> = self.conns.iter().map(|c| c.id).collect();
                let mut cut = false;
                for id in ids {
                    cut |= !self.push(id, Frame::Preferences(json.clone()));
                }
                if cut {
                    self.forget_cut(ctx);
                }
            }
            Event::CatchUp => self.handle(CatchUp, ctx),
        }
    }
}

impl Handler<CatchUp> for UserSession {
    type Result = ();

    fn handle(&mut self, _: CatchUp, ctx: &mut Context<Self>) {
        self.lagged.store(false, Ordering::Release);
        let reads: Vec<(u64, Seq)> = self
            .conns
            .iter_mut()
            .filter_map(|c| c.seq.start_read().map(|after| (c.id, after)))
            .collect();
        for (id, after) in reads {
            self.read(ctx, id, ReadFrom::After(after));
        }
    }
}

impl Handler<Shutdown> for UserSession {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        let ids: Vec<u64> = self.conns.iter().map(|c| c.id).collect();
        for id in ids {
            self.push(id, Frame::Shutdown);
        }
        self.forget_cut(ctx);
    }
}
