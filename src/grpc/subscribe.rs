//! The `Subscribe` server stream: one hub connection written out as protobuf events, with
//! the same rules as the other live transports (replay then live by seq, the bounded queue
//! and its slow-client cut-off, token expiry, shutdown). Unlike SSE it has no retry field:
//! every ending is a status carrying `resume-after`, the cursor to subscribe again with.

use super::convert;
use super::proto::{self, event};
use super::status::{GrpcError, StreamEnd};
use crate::domain::{Notification, Seq};
use crate::hub::{Connection, Frame};
use futures_util::Stream;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tonic::Status;

/// A hand-written stream rather than a task and a channel: no second queue to bound, and
/// dropping it (the client went away) leaves the hub at once.
pub struct SubscribeStream {
    conn: Connection,
    /// Events of the frame being written out; at most one hub frame's worth.
    pending: VecDeque<proto::Event>,
    /// The seq of the last notification handed to the client (or its cursor): where it
    /// resumes when the stream ends.
    last: Seq,
    expiry: Pin<Box<Sleep>>,
    done: bool,
}

impl SubscribeStream {
    pub fn new(conn: Connection, start: Seq, expires_at: i64) -> Self {
        let left = expires_at - chrono::Utc::now().timestamp();
        let expiry = Instant::now() + Duration::from_secs(left.clamp(0, 10 * 365 * 86_400) as u64);
        Self {
            conn,
            pending: VecDeque::new(),
            last: start,
            expiry: Box::pin(tokio::time::sleep_until(expiry)),
            done: false,
        }
    }

    fn end(&mut self, reason: StreamEnd) -> Poll<Option<Result<proto::Event, Status>>> {
        self.done = true;
        self.pending.clear();
        Poll::Ready(Some(Err(GrpcError::StreamEnd {
            reason,
            resume_after: self.last,
        }
        .into())))
    }

    /// Queues a hub frame's events; false when a notification (or a preferences document)
    /// cannot be read back.
    fn write(&mut self, frame: Frame) -> bool {
        match frame {
            Frame::Update(update) => {
                for (seq, json) in &update.notifications {
                    match serde_json::from_str::<Notification>(json) {
                        Ok(n) => self.pending.push_back(proto::Event {
                            event: Some(event::Event::Notification(convert::notification(&n))),
                        }),
                        Err(e) => {
                            tracing::error!(%seq, error = %e, "a delivered notification is not readable");
                            return false;
                        }
                    }
                }
                self.pending.push_back(proto::Event {
                    event: Some(event::Event::Unread(convert::counts(&update.counts))),
                });
                self.last = update.last;
            }
            Frame::Changed(c) => {
                self.pending.push_back(proto::Event {
                    event: Some(event::Event::Changed(convert::changed(&c.change))),
                });
                self.pending.push_back(proto::Event {
                    event: Some(event::Event::Unread(convert::counts(&c.counts))),
                });
            }
            Frame::Resync { seq } => {
                self.pending.push_back(proto::Event {
                    event: Some(event::Event::Resync(proto::Resync { seq: seq.get() })),
                });
                // The stream goes on live after `seq`; the client pages up to it.
                self.last = seq;
            }
            Frame::Truncated { floor } => {
                self.pending.push_back(proto::Event {
                    event: Some(event::Event::Truncated(proto::Truncated {
                        floor: floor.get(),
                    })),
                });
                self.last = self.last.max(floor);
            }
            Frame::Ahead { seq } => {
                self.pending.push_back(proto::Event {
                    event: Some(event::Event::Ahead(proto::Ahead { seq: seq.get() })),
                });
                // The stream goes on live after `seq`: a resume starts there.
                self.last = seq;
            }
            Frame::Preferences(json) => match convert::preferences(&json) {
                Ok(p) => self.pending.push_back(proto::Event {
                    event: Some(event::Event::Preferences(p)),
                }),
                Err(e) => {
                    tracing::error!(error = %e, "a preferences event is not readable");
                    return false;
                }
            },
            // A catch-up read failed: the session retries and the stream goes on.
            Frame::Shutdown | Frame::Unavailable => {}
        }
        true
    }
}

impl Stream for SubscribeStream {
    type Item = Result<proto::Event, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(event) = this.pending.pop_front() {
            return Poll::Ready(Some(Ok(event)));
        }
        if this.conn.control.overflowed() {
            return this.end(StreamEnd::TooSlow);
        }
        if this.expiry.as_mut().poll(cx).is_ready() {
            return this.end(StreamEnd::TokenExpired);
        }
        match this.conn.rx.poll_recv(cx) {
            Poll::Ready(Some(Frame::Shutdown)) => this.end(StreamEnd::Shutdown),
            Poll::Ready(Some(frame)) => {
                if !this.write(frame) {
                    return this.end(StreamEnd::Encoding);
                }
                match this.pending.pop_front() {
                    Some(event) => Poll::Ready(Some(Ok(event))),
                    None => {
                        // Nothing to write for this frame: poll again for the next one.
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                }
            }
            Poll::Ready(None) if this.conn.control.overflowed() => this.end(StreamEnd::TooSlow),
            // The session went away (it restarted): end so the client resumes.
            Poll::Ready(None) => this.end(StreamEnd::Reset),
            Poll::Pending => Poll::Pending,
        }
    }
}
