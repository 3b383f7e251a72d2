//! A SockJS session: the state shared between the service that runs on it (through
//! [`Conn`]) and whichever transport request is currently delivering to the client.
//!
//! A polling client comes and goes between requests, so the session outlives each of
//! them: messages queue here (bounded in bytes) until the next request takes them, and the
//! session is forgotten once no request has been attached for `disconnect_delay`. One
//! receiving request at a time: a second one is told `c[2010,...]`.

use super::frame;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The session is closed or gone: nothing more can be sent on it.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("the SockJS session is closed")]
pub struct Closed;

/// The sessions of one endpoint are all in use.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("too many SockJS sessions on this endpoint")]
pub struct Full;

pub const CODE_ANOTHER_CONNECTION: u16 = 2010;
pub const CODE_INTERRUPTED: u16 = 1002;

/// What the service holds: messages from the client, and the way back.
pub struct Conn {
    /// The client's messages, in order. Ends (`None`) when the session is closed or its
    /// client is gone for good.
    pub incoming: mpsc::Receiver<String>,
    pub out: Outgoing,
}

/// The service's side of a session's outgoing queue.
pub struct Outgoing {
    session: Arc<Session>,
    send_timeout: Duration,
}

impl Outgoing {
    /// Queues one message. Waits while the queue is full (a slow client); after the send
    /// timeout, or once the session is closed, the message is refused.
    pub async fn send(&self, message: String) -> Result<(), Closed> {
        let deadline = Instant::now() + self.send_timeout;
        let mut changes = self.session.changes.subscribe();
        loop {
            changes.mark_unchanged();
            {
                let mut st = self.session.lock();
                if st.close.is_some() {
                    return Err(Closed);
                }
                // One message larger than the whole budget still goes through an empty
                // queue, or it could never be sent.
                if st.queued_bytes == 0 || st.queued_bytes + message.len() <= st.max_queued {
                    st.queued_bytes += message.len();
                    st.queue.push_back(message);
                    drop(st);
                    self.session.changed();
                    return Ok(());
                }
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Err(Closed),
            }
        }
    }

    /// Closes the session with a SockJS close frame (`c[code,"reason"]`), sent after what
    /// is already queued.
    pub fn close(&self, code: u16, reason: &str) {
        self.session.close(code, reason);
    }

    /// Turns the session's `h` frames off (or on again): a protocol with heart-beats of its
    /// own (STOMP's, once negotiated) needs no second kind, as Spring does.
    pub fn set_heartbeats(&self, on: bool) {
        self.session.lock().heartbeats = on;
    }

    pub fn is_closed(&self) -> bool {
        self.session.lock().close.is_some()
    }
}

impl Drop for Outgoing {
    /// A service that ends without closing still closes the session, so the client is
    /// told instead of polling an empty session until it times out.
    fn drop(&mut self) {
        self.session.close(1000, "Normal closure");
    }
}

#[derive(Debug)]
pub(crate) struct State {
    pub queue: VecDeque<String>,
    pub queued_bytes: usize,
    pub max_queued: usize,
    pub close: Option<(u16, String)>,
    /// `o` was sent.
    pub opened: bool,
    /// A request is delivering to the client.
    pub receiver: bool,
    /// When the last receiving request ended (or the session started).
    pub detached_at: Instant,
    pub heartbeats: bool,
    /// Dropped when the session ends, so the service's `incoming` ends.
    pub to_service: Option<mpsc::Sender<String>>,
}

#[derive(Debug)]
pub(crate) struct Session {
    /// Whom the session belongs to ([`super::Service::owner`] of its opening request):
    /// every later request must name the same.
    pub owner: String,
    state: Mutex<State>,
    /// Bumped on every change of `state`: wakes the receiving request and waiting senders.
    changes: watch::Sender<()>,
}

impl Session {
    pub(crate) fn new(
        owner: String,
        max_queued: usize,
        incoming: usize,
        send_timeout: Duration,
    ) -> (Arc<Session>, Conn) {
        let (tx, rx) = mpsc::channel(incoming.max(1));
        let session = Arc::new(Session {
            owner,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queued_bytes: 0,
                max_queued,
                close: None,
                opened: false,
                receiver: false,
                detached_at: Instant::now(),
                heartbeats: true,
                to_service: Some(tx),
            }),
            changes: watch::channel(()).0,
        });
        let conn = Conn {
            incoming: rx,
            out: Outgoing {
                session: session.clone(),
                send_timeout,
            },
        };
        (session, conn)
    }

    /// The state lock: held for queue operations only, never across an await. Poison is
    /// ignored: nothing holding it can leave it half-changed.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn changed(&self) {
        self.changes.send_replace(());
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<()> {
        self.changes.subscribe()
    }

    /// Closes once: the first close frame is the one every later request is told.
    pub(crate) fn close(&self, code: u16, reason: &str) {
        {
            let mut st = self.lock();
            if st.close.is_none() {
                st.close = Some((code, reason.to_owned()));
            }
            st.to_service = None;
        }
        self.changed();
    }

    /// Hands the client's messages to the service, in order; waits while the service is
    /// behind (bounded by `timeout`).
    pub(crate) async fn deliver(
        &self,
        messages: Vec<String>,
        timeout: Duration,
    ) -> Result<(), Closed> {
        let Some(tx) = self.lock().to_service.clone() else {
            return Err(Closed);
        };
        for m in messages {
            match tokio::time::timeout(timeout, tx.send(m)).await {
                Ok(Ok(())) => {}
                _ => return Err(Closed),
            }
        }
        Ok(())
    }

    /// Takes everything queued.
    pub(crate) fn take_queue(st: &mut State) -> Vec<String> {
        st.queued_bytes = 0;
        st.queue.drain(..).collect()
    }
}

/// What a receiving request writes next.
pub(crate) enum Next {
    /// A frame (without the transport's own framing).
    Frame(String),
    /// A frame, and then this request ends.
    Last(String),
}

/// A receiving request attached to a session. Detaches when dropped; dropped before it
/// finished (the client went away mid-request), it closes the session with
/// `c[1002,"Connection interrupted"]`, as sockjs-node does: messages may have been lost.
pub(crate) struct Receiver {
    pub session: Arc<Session>,
    changes: watch::Receiver<()>,
    heartbeat: Duration,
    /// Polling: one frame per request.
    polling: bool,
    finished: bool,
}

impl Receiver {
    /// Attaches to `session`, or says why not: the frame to answer with instead.
    pub(crate) fn attach(
        session: Arc<Session>,
        heartbeat: Duration,
        polling: bool,
    ) -> Result<Receiver, String> {
        {
            let mut st = session.lock();
            if st.receiver {
                return Err(frame::close(
                    CODE_ANOTHER_CONNECTION,
                    "Another connection still open",
                ));
            }
            st.receiver = true;
        }
        let changes = session.subscribe();
        Ok(Receiver {
            session,
            changes,
            heartbeat,
            polling,
            finished: false,
        })
    }

    /// The next frame to write, waiting for one (a heartbeat when idle for the heartbeat
    /// period). `None` once this request is done.
    pub(crate) async fn next(&mut self) -> Option<Next> {
        if self.finished {
            return None;
        }
        loop {
            self.changes.mark_unchanged();
            let heartbeats = {
                let mut st = self.session.lock();
                if !st.opened {
                    st.opened = true;
                    drop(st);
                    return Some(self.frame(frame::OPEN.to_owned()));
                }
                if !st.queue.is_empty() {
                    let msgs = Session::take_queue(&mut st);
                    drop(st);
                    // Senders waiting for room may go on.
                    self.session.changed();
                    self.changes.mark_unchanged();
                    return Some(self.frame(frame::messages(&msgs)));
                }
                if let Some((code, reason)) = &st.close {
                    let f = frame::close(*code, reason);
                    self.finished = true;
                    return Some(Next::Last(f));
                }
                st.heartbeats
            };
            let wait = tokio::time::timeout(self.heartbeat, self.changes.changed()).await;
            match wait {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => {
                    self.finished = true;
                    return None;
                }
                Err(_) if heartbeats => return Some(self.frame(frame::HEARTBEAT.to_owned())),
                Err(_) => continue,
            }
        }
    }

    fn frame(&mut self, f: String) -> Next {
        if self.polling {
            self.finished = true;
            Next::Last(f)
        } else {
            Next::Frame(f)
        }
    }

    /// Ends the request normally (a streaming response reached its byte limit).
    pub(crate) fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let interrupted = {
            let mut st = self.session.lock();
            st.receiver = false;
            st.detached_at = Instant::now();
            !self.finished && st.close.is_none()
        };
        if interrupted {
            self.session
                .close(CODE_INTERRUPTED, "Connection interrupted");
        } else {
            self.session.changed();
        }
    }
}

/// The sessions of one endpoint, by `server/session` id. Bounded; each session is forgotten
/// `disconnect_delay` after its last receiving request ended.
#[derive(Debug)]
pub(crate) struct Registry {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    max: usize,
}

impl Registry {
    pub(crate) fn new(max: usize) -> Arc<Registry> {
        Arc::new(Registry {
            sessions: Mutex::new(HashMap::new()),
            max,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.lock().get(id).cloned()
    }

    /// Forgets `session` (its service refused it).
    pub(crate) fn remove(&self, id: &str, session: &Arc<Session>) {
        let mut map = self.lock();
        if map.get(id).is_some_and(|s| Arc::ptr_eq(s, session)) {
            map.remove(id);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Registers a new session under `id` unless one is there (a race of two first
    /// requests): then that one is returned and `Ok(None)` says this one was not used.
    pub(crate) fn insert(
        self: &Arc<Self>,
        id: &str,
        session: Arc<Session>,
        disconnect_delay: Duration,
    ) -> Result<Option<Arc<Session>>, Full> {
        {
            let mut map = self.lock();
            if let Some(existing) = map.get(id) {
                return Ok(Some(existing.clone()));
            }
            if map.len() >= self.max {
                return Err(Full);
            }
            map.insert(id.to_owned(), session.clone());
        }
        let registry = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            registry.reap(id, session, disconnect_delay).await;
        });
        Ok(None)
    }

    /// Forgets `session` once it has had no receiving request for `delay`; its service
    /// sees `incoming` end.
    async fn reap(&self, id: String, session: Arc<Session>, delay: Duration) {
        let mut changes = session.subscribe();
        loop {
            changes.mark_unchanged();
            let wake = {
                let st = session.lock();
                if st.receiver {
                    None
                } else {
                    Some(st.detached_at + delay)
                }
            };
            match wake {
                Some(at) if Instant::now() >= at => break,
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, changes.changed()).await;
                }
                None => {
                    let _ = changes.changed().await;
                }
            }
        }
        self.remove(&id, &session);
        session.close(CODE_INTERRUPTED, "Connection interrupted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_makes_the_service_wait_then_refuses() {
        let (session, conn) = Session::new("alice".into(), 10, 4, Duration::from_millis(50));
        conn.out.send("0123456789".into()).await.expect("fits");
        // Full: waits for the client to take the queue, then gives up.
        assert_eq!(conn.out.send("x".into()).await, Err(Closed));
        let mut rx = Receiver::attach(session.clone(), Duration::from_secs(5), true)
            .unwrap_or_else(|_| panic!("attach"));
        assert!(matches!(rx.next().await, Some(Next::Last(f)) if f == "o"));
        drop(rx);
        let mut rx = Receiver::attach(session.clone(), Duration::from_secs(5), true)
            .unwrap_or_else(|_| panic!("attach"));
        assert!(matches!(rx.next().await, Some(Next::Last(f)) if f == "a[\"0123456789\"]"));
        conn.out.send("y".into()).await.expect("room again");
    }

    #[tokio::test]
    async fn one_receiver_at_a_time_and_an_interrupted_one_closes() {
        let (session, mut conn) = Session::new("alice".into(), 1024, 4, Duration::from_millis(50));
        let first = Receiver::attach(session.clone(), Duration::from_secs(5), false)
            .unwrap_or_else(|_| panic!("attach"));
        match Receiver::attach(session.clone(), Duration::from_secs(5), false) {
            Err(f) => assert_eq!(f, r#"c[2010,"Another connection still open"]"#),
            Ok(_) => panic!("a second receiver was attached"),
        }
        // Dropped before it finished: the client went away mid-request.
        drop(first);
        assert_eq!(
            session.lock().close,
            Some((CODE_INTERRUPTED, "Connection interrupted".to_owned()))
        );
        assert_eq!(conn.incoming.recv().await, None, "the service sees the end");
    }
}
