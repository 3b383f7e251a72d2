//! The hub: this replica's live connections, grouped per user into one actix actor each.
//!
//! The registry finds or starts a user's [`UserSession`] actor when a connection opens, and
//! the actor removes itself when its last connection goes, so an idle user costs nothing.
//! Events from the bus are handed to the user's actor, which fans them out to every open
//! stream, socket and waiting long-poll of that user, in every tab.
//!
//! Every queue here is bounded: the actor's mailbox, and each connection's outgoing queue.
//! A connection whose queue is full is cut off (it resumes by cursor and loses nothing); an
//! actor whose mailbox is full gets one "catch up" message and re-reads the database.

mod history;
mod presence;
mod sequencer;
mod session;

pub use history::{History, HistoryError, HistoryRead};
pub use presence::Presence;
pub use sequencer::{Live, Merged, Sequencer};

use crate::domain::{Counts, Cursor, Event, InboxChange, Seq, UserId};
use crate::metrics::{Metrics, Transport};
use actix::{Actor, Addr};
use session::{CatchUp, Deliver, Join, Leave, Shutdown, UserSession};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

/// What a connection's transport receives, already rendered where that can be shared:
/// one notification's JSON is built once, whatever the number of tabs.
#[derive(Debug, Clone)]
pub enum Frame {
    /// Notifications and counters; boxed so that a frame, and so every slot of every
    /// connection's queue, is 16 bytes rather than 64 (the queue allocates its first block
    /// of slots up front, idle or not).
    Update(Box<Update>),
    /// Notifications already sent were archived, unarchived or deleted, then the counters
    /// after it: a transport writes a `changed` event and then `unread`.
    Changed(Box<Changed>),
    /// The user's preferences changed: `{"version": N, "preferences": {...}}`, for every
    /// open settings page (a `preferences` event).
    Preferences(Arc<str>),
    /// More than the replay cap was missed: page through the REST API up to `seq`.
    Resync { seq: Seq },
    /// The connection's cursor is below the user's history floor: retention pruned seqs up
    /// to `floor` before the client saw them. Sent first, before what follows the floor, so
    /// a client knows it lost history rather than believing it has all of it.
    Truncated { floor: Seq },
    /// The connection's cursor is above the user's latest seq, `seq` (a restored database,
    /// or a client bug): nothing it waits for would ever come. Sent first; the connection
    /// then goes on live from `seq`, and the client should move its cursor down to it.
    Ahead { seq: Seq },
    /// This replica is stopping: reconnect, to another one.
    Shutdown,
    /// A database read this connection waits on (its replay, or a catch-up) failed. The
    /// actor keeps retrying, so a stream may ignore it and carry on; an answer that would
    /// otherwise say "nothing new" (long-poll's 204) must not, or the client would believe
    /// it is up to date. Sent once per failing read, not once per retry.
    Unavailable,
}

/// Notifications in seq order (none, when only the counters changed), then the user's
/// counters after them. `last` is the seq of the last notification this connection was
/// sent (or its starting cursor), which SSE uses as the event id. A replay is one update,
/// so it takes one slot of the bounded queue.
#[derive(Debug, Clone)]
pub struct Update {
    pub notifications: Vec<(Seq, Arc<str>)>,
    pub counts: Counts,
    pub last: Seq,
}

/// One inbox change as a connection gets it. `json` is the event's body, rendered once
/// for every connection of the user ([`InboxChange::to_json`]); `last` is as in [`Update`].
#[derive(Debug, Clone)]
pub struct Changed {
    pub change: Arc<InboxChange>,
    pub json: Arc<str>,
    pub counts: Counts,
    pub last: Seq,
}

impl Frame {
    pub fn update(notifications: Vec<(Seq, Arc<str>)>, counts: Counts, last: Seq) -> Self {
        Frame::Update(Box::new(Update {
            notifications,
            counts,
            last,
        }))
    }
}

/// Shared between a connection and its user's actor.
#[derive(Debug, Default)]
pub struct ConnControl {
    /// Set by the actor when the connection's queue overflowed and it was cut off.
    overflowed: AtomicBool,
}

impl ConnControl {
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HubError {
    #[error("this replica holds its maximum of {0} connections")]
    Full(usize),
    /// One user's own cap, so that a single client (a runaway loop, a leaked token) cannot
    /// take every place on the replica and lock everyone else out.
    #[error(
        "you hold the maximum of {0} open connections per user on this replica; close some first"
    )]
    UserFull(usize),
    #[error("this replica is shutting down")]
    Stopping,
    #[error("the database cannot be read, so this stream has no starting point")]
    Unavailable,
}

/// One open live connection. Dropping it leaves the hub (idempotently).
#[derive(Debug)]
pub struct Connection {
    pub rx: mpsc::Receiver<Frame>,
    pub control: Arc<ConnControl>,
    guard: ConnGuard,
}

impl Connection {
    pub fn user(&self) -> &UserId {
        &self.guard.user
    }
}

#[derive(Debug)]
struct ConnGuard {
    hub: Hub,
    user: UserId,
    id: u64,
    transport: Transport,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let inner = &self.hub.inner;
        if let Some(handle) = inner.lock().get(&self.user) {
            handle.addr.do_send(Leave { id: self.id });
        }
        if inner.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            inner.idle.notify_waiters();
        }
        inner.release_user_place(&self.user);
        inner.metrics.connection_closed(self.transport);
    }
}

#[derive(Debug, Clone)]
struct SessionHandle {
    addr: Addr<UserSession>,
    /// Joins sent but not yet handled: the actor may not stop while any are in flight.
    pending_joins: Arc<AtomicUsize>,
    /// A catch-up is queued because the mailbox was full; coalesces further ones.
    lagged: Arc<AtomicBool>,
}

#[derive(Debug, Clone)]
pub struct HubSettings {
    pub max_connections: usize,
    /// Connections one user may hold on this replica, all transports together.
    pub max_connections_per_user: usize,
    pub connection_queue: usize,
}

#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

#[derive(Debug)]
struct HubInner {
    sessions: Mutex<HashMap<UserId, SessionHandle>>,
    history: Arc<dyn History>,
    /// Told of each user's first and last connection here (the bus's subscriptions).
    presence: OnceLock<Arc<dyn Presence>>,
    metrics: Metrics,
    settings: HubSettings,
    next_id: AtomicU64,
    open: AtomicUsize,
    /// Open connections per user, counted apart from the sessions map: a session's entry
    /// lives as long as its actor, a place exactly as long as its [`Connection`].
    per_user: Mutex<HashMap<UserId, usize>>,
    /// Cancelled when the replica starts to stop: new connections are refused.
    stopping: CancellationToken,
    /// Woken when the last open connection closes, for [`Hub::drained`].
    idle: Notify,
    refusals: RefusalLog,
}

impl HubInner {
    /// The registry lock. Held only for map operations and non-blocking sends; a panic
    /// elsewhere while holding it cannot leave the map half-changed, so poison is ignored.
    fn lock(&self) -> MutexGuard<'_, HashMap<UserId, SessionHandle>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_per_user(&self) -> MutexGuard<'_, HashMap<UserId, usize>> {
        self.per_user.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one of `user`'s places, unless they hold all of them.
    fn take_user_place(&self, user: &UserId) -> bool {
        let max = self.settings.max_connections_per_user;
        let mut per_user = self.lock_per_user();
        let held = per_user.entry(user.clone()).or_insert(0);
        if *held >= max {
            return false;
        }
        *held += 1;
        true
    }

    fn release_user_place(&self, user: &UserId) {
        let mut per_user = self.lock_per_user();
        if let Some(held) = per_user.get_mut(user) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                per_user.remove(user);
            }
        }
    }

    /// Logs a refused connection as one WARN line at most every [`REFUSAL_LOG_EVERY`]:
    /// refusals come in floods (every client of a full replica retries), and a line per
    /// refusal would drown the log in what the metrics already count.
    fn log_refusal(&self, user: &UserId, error: &HubError) {
        if let Some(suppressed) = self.refusals.allow(Instant::now()) {
            tracing::warn!(
                user = user.as_str(),
                open = self.open.load(Ordering::Acquire),
                suppressed,
                "refused a connection: {error}"
            );
        }
    }
}

/// How often a refused connection is logged at most.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

/// A rate limit for one log line: at most one per [`REFUSAL_LOG_EVERY`], carrying the
/// number of lines left out since the last one.
#[derive(Debug, Default)]
struct RefusalLog {
    state: Mutex<RefusalLogState>,
}

#[derive(Debug, Default)]
struct RefusalLogState {
    last: Option<Instant>,
    suppressed: u64,
}

impl RefusalLog {
    /// `Some(suppressed)` when a line may be written now, `None` when it is left out.
    fn allow(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.last {
            Some(last) if now.saturating_duration_since(last) < REFUSAL_LOG_EVERY => {
                s.suppressed += 1;
                None
            }
            _ => {
                s.last = Some(now);
                Some(std::mem::take(&mut s.suppressed))
            }
        }
    }
}

impl Hub {
    pub fn new(
        history: Arc<dyn History>,
        metrics: Metrics,
        settings: HubSettings,
        stopping: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(HubInner {
                sessions: Mutex::new(HashMap::new()),
                history,
                presence: OnceLock::new(),
                metrics,
                settings,
                next_id: AtomicU64::new(1),
                open: AtomicUsize::new(0),
                per_user: Mutex::new(HashMap::new()),
                stopping,
                idle: Notify::new(),
                refusals: RefusalLog::default(),
            }),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Sets who is told when a user's first connection arrives here and when the last one
    /// goes; set once, at startup, before connections are accepted. Users already online are
    /// reported to it at once.
    pub fn set_presence(&self, presence: Arc<dyn Presence>) {
        let sessions = self.inner.lock();
        if self.inner.presence.set(presence.clone()).is_ok() {
            for user in sessions.keys() {
                presence.joined(user);
            }
        }
    }

    /// Open connections on this replica.
    pub fn open_connections(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// Users with a live actor on this replica.
    pub fn online_users(&self) -> usize {
        self.inner.lock().len()
    }

    /// Registers a connection for `user`, then replays from `cursor`.
    ///
    /// Registration happens before the actor reads the backlog, so an event that commits
    /// while the backlog is read is either in the read or arrives live (and is merged by
    /// seq): it cannot fall between the two. Must be called on an actix arbiter (a request
    /// handler), where a new actor can start.
    ///
    /// With [`Cursor::Live`] this returns only once the actor has read the latest seq and
    /// queued the connection's first frame, so a transport, which shows the client the
    /// stream open (headers, an opening, a 101, a RECEIPT) after this returns, never shows
    /// it before "from now" is fixed. Otherwise a notification committed between the client
    /// seeing the stream open and that read would count as "before now": never sent, and
    /// never replayed either, as the client's cursor starts past it. With a cursor there is
    /// nothing to wait for: where the stream starts is the client's own.
    pub async fn connect(
        &self,
        user: &UserId,
        cursor: Cursor,
        transport: Transport,
    ) -> Result<Connection, HubError> {
        self.take_places(user).inspect_err(|e| {
            if *e != HubError::Stopping {
                self.inner.log_refusal(user, e);
            }
        })?;
        let (conn, started) = self.register(user, cursor, transport);
        if let Some(started) = started {
            // An error only means the actor dropped the connection (it was cut, or the
            // replica is stopping): the transport then sees its queue closed, as it would.
            if let Ok(false) = started.await {
                // "From now" could not be fixed (the database cannot be read): opening the
                // stream anyway would let a notification that commits meanwhile be skipped.
                return Err(HubError::Unavailable);
            }
        }
        Ok(conn)
    }

    /// Takes one of the replica's places and one of the user's, or neither.
    fn take_places(&self, user: &UserId) -> Result<(), HubError> {
        let inner = &self.inner;
        if inner.stopping.is_cancelled() {
            return Err(HubError::Stopping);
        }
        if !inner.take_user_place(user) {
            return Err(HubError::UserFull(inner.settings.max_connections_per_user));
        }
        let max = inner.settings.max_connections;
        if inner
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            inner.release_user_place(user);
            return Err(HubError::Full(max));
        }
        Ok(())
    }

    /// Joins a connection whose places are taken to the user's session; for a
    /// [`Cursor::Live`] one, also returns the receiver that fires once its starting point
    /// is fixed.
    fn register(
        &self,
        user: &UserId,
        cursor: Cursor,
        transport: Transport,
    ) -> (Connection, Option<oneshot::Receiver<bool>>) {
        let inner = &self.inner;
        inner.metrics.connection_opened(transport);
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(inner.settings.connection_queue);
        let control = Arc::new(ConnControl::default());
        let (started_tx, started) = match cursor {
            Cursor::Live => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            Cursor::After(_) => (None, None),
        };
        {
            let mut sessions = inner.lock();
            let handle = match sessions.get(user) {
                Some(h) if h.addr.connected() => h.clone(),
                _ => {
                    let handle = self.start_session(user);
                    sessions.insert(user.clone(), handle.clone());
                    if let Some(presence) = inner.presence.get() {
                        presence.joined(user);
                    }
                    handle
                }
            };
            handle.pending_joins.fetch_add(1, Ordering::AcqRel);
            handle.addr.do_send(Join {
                id,
                tx,
                cursor,
                control: control.clone(),
                started: started_tx,
            });
        }
        let conn = Connection {
            rx,
            control,
            guard: ConnGuard {
                hub: self.clone(),
                user: user.clone(),
                id,
                transport,
            },
        };
        (conn, started)
    }

    fn start_session(&self, user: &UserId) -> SessionHandle {
        let pending_joins = Arc::new(AtomicUsize::new(0));
        let lagged = Arc::new(AtomicBool::new(false));
        let addr = UserSession::new(
            user.clone(),
            self.clone(),
            self.inner.history.clone(),
            pending_joins.clone(),
            lagged.clone(),
        )
        .start();
        SessionHandle {
            addr,
            pending_joins,
            lagged,
        }
    }

    /// Called by a session whose last connection left. Removes it from the registry unless
    /// a join is on its way to it; returns whether it may stop.
    fn release(&self, user: &UserId, pending_joins: &Arc<AtomicUsize>) -> bool {
        let mut sessions = self.inner.lock();
        if pending_joins.load(Ordering::Acquire) > 0 {
            return false;
        }
        if sessions
            .get(user)
            .is_some_and(|h| Arc::ptr_eq(&h.pending_joins, pending_joins))
        {
            sessions.remove(user);
            if let Some(presence) = self.inner.presence.get() {
                presence.left(user);
            }
        }
        true
    }

    /// Hands one event to its user's actor, if the user is online here.
    pub fn dispatch(&self, event: Arc<Event>) {
        let Some(user) = event.user() else {
            self.catch_up_all();
            return;
        };
        let handle = match self.inner.lock().get(user) {
            Some(h) => h.clone(),
            None => return,
        };
        if let Err(e) = handle.addr.try_send(Deliver(event)) {
            if matches!(e, actix::dev::SendError::Full(_))
                && !handle.lagged.swap(true, Ordering::AcqRel)
            {
                // The mailbox is full: drop the event and have the actor re-read the
                // database instead, once, however many more events are dropped meanwhile.
                handle.addr.do_send(CatchUp);
            }
        }
    }

    /// The user's session (if online here) re-reads the database from each connection's last
    /// delivered seq: the bus has just confirmed (or renewed) its subscription to the user's
    /// events, and whatever committed before that is only in the database.
    pub fn catch_up(&self, user: &UserId) {
        let handle = match self.inner.lock().get(user) {
            Some(h) => h.clone(),
            None => return,
        };
        if !handle.lagged.swap(true, Ordering::AcqRel) {
            handle.addr.do_send(CatchUp);
        }
    }

    /// Every session re-reads the database from each connection's last delivered seq:
    /// after the bus was down, events may have been missed.
    pub fn catch_up_all(&self) {
        let handles: Vec<SessionHandle> = self.inner.lock().values().cloned().collect();
        for h in handles {
            if !h.lagged.swap(true, Ordering::AcqRel) {
                h.addr.do_send(CatchUp);
            }
        }
    }

    /// Resolves once no connection is open: after [`Hub::shutdown`], when every stream has
    /// written its "reconnect elsewhere" and closed. Callers bound the wait.
    pub async fn drained(&self) {
        loop {
            let idle = self.inner.idle.notified();
            if self.open_connections() == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Refuses new connections and tells every open one to reconnect elsewhere.
    pub fn shutdown(&self) {
        self.inner.stopping.cancel();
        let handles: Vec<SessionHandle> = self.inner.lock().values().cloned().collect();
        for h in handles {
            h.addr.do_send(Shutdown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_at_most_once_a_second_with_the_count_left_out() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        assert_eq!(log.allow(t0), Some(0));
        assert_eq!(log.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(log.allow(t0 + Duration::from_millis(999)), None);
        assert_eq!(log.allow(t0 + Duration::from_millis(1000)), Some(2));
        assert_eq!(log.allow(t0 + Duration::from_millis(1500)), None);
        assert_eq!(log.allow(t0 + Duration::from_secs(5)), Some(1));
    }
}
