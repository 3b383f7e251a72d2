//! One streaming response shared by SSE, NDJSON and the iframe stream: the same cursor
//! rules, heartbeat, token expiry, slow-client cut-off and shutdown, in three wire formats.

use crate::domain::{Counts, Seq};
use crate::hub::{Connection, Frame};
use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpResponse, HttpResponseBuilder};
use futures_util::Stream;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Interval, Sleep};

/// Frames rendered into one chunk at most, so a burst goes out in few writes.
const CHUNK: usize = 16 * 1024;

/// How one kind of stream writes each event.
pub trait Format: Unpin {
    /// Written once, first.
    fn open(&self, out: &mut String);
    fn notification(&self, out: &mut String, seq: Seq, json: &str);
    /// `last`: the seq of the last notification this stream delivered (or its cursor).
    fn unread(&self, out: &mut String, counts: &Counts, last: Seq);
    /// Notifications were archived, unarchived or deleted: `json` is
    /// `{"change","ids","seqs","unread","seq"}`. An `unread` follows it.
    fn changed(&self, out: &mut String, json: &str);
    /// The user's preferences changed (`{"version": N, "preferences": {...}}`).
    fn preferences(&self, out: &mut String, json: &str);
    fn resync(&self, out: &mut String, seq: Seq);
    /// Seqs up to `floor` were pruned before the client saw them; what follows starts at
    /// the oldest kept notification.
    fn truncated(&self, out: &mut String, floor: Seq);
    /// The cursor was above the user's latest seq, `seq`: the stream goes on live from it.
    fn ahead(&self, out: &mut String, seq: Seq);
    fn token_expired(&self, out: &mut String);
    /// The replica is stopping, or the stream must be reopened: tell the client to come back soon.
    fn reconnect(&self, out: &mut String);
    fn ping(&self, out: &mut String);
}

/// The start of every stream response: never cached, never buffered by a proxy (nginx
/// honours `X-Accel-Buffering`), so each event reaches the client as it is written.
pub fn stream_response(content_type: &'static str) -> HttpResponseBuilder {
    let mut builder = HttpResponse::Ok();
    builder
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"));
    builder
}

/// When a token's `exp` (Unix seconds) passes, as a timer deadline.
pub fn expiry_instant(exp: i64) -> Instant {
    let left = exp - chrono::Utc::now().timestamp();
    Instant::now() + Duration::from_secs(left.clamp(0, 10 * 365 * 86_400) as u64)
}

/// The response body: polls the connection's queue, the heartbeat and the token's expiry.
/// A hand-written stream rather than an async block, to keep an idle connection small.
pub struct EventStream<F: Format> {
    format: F,
    conn: Connection,
    opened: bool,
    done: bool,
    /// The user's latest seq as last told: what a `resync` points to.
    counts_seq: Seq,
    ping: Interval,
    expiry: Pin<Box<Sleep>>,
}

impl<F: Format> EventStream<F> {
    pub fn new(format: F, conn: Connection, heartbeat: Duration, expires_at: i64) -> Self {
        Self {
            format,
            conn,
            opened: false,
            done: false,
            counts_seq: Seq::ZERO,
            ping: tokio::time::interval_at(Instant::now() + heartbeat, heartbeat),
            expiry: Box::pin(tokio::time::sleep_until(expiry_instant(expires_at))),
        }
    }

    fn finish(
        &mut self,
        mut out: String,
        last: impl FnOnce(&F, &mut String),
    ) -> Poll<Option<Result<Bytes, Infallible>>> {
        self.done = true;
        last(&self.format, &mut out);
        Poll::Ready(Some(Ok(Bytes::from(out))))
    }

    fn write(&mut self, out: &mut String, frame: &Frame) {
        match frame {
            Frame::Update(u) => {
                for (seq, json) in &u.notifications {
                    self.format.notification(out, *seq, json);
                }
                self.counts_seq = u.counts.seq;
                self.format.unread(out, &u.counts, u.last);
            }
            Frame::Changed(c) => {
                self.format.changed(out, &c.json);
                self.counts_seq = c.counts.seq;
                self.format.unread(out, &c.counts, c.last);
            }
            Frame::Preferences(json) => self.format.preferences(out, json),
            Frame::Resync { seq } => {
                self.counts_seq = *seq;
                self.format.resync(out, *seq);
            }
            Frame::Truncated { floor } => self.format.truncated(out, *floor),
            Frame::Ahead { seq } => {
                self.counts_seq = *seq;
                self.format.ahead(out, *seq);
            }
            // The hub retries the read; the stream carries on when it succeeds.
            Frame::Shutdown | Frame::Unavailable => {}
        }
    }
}

impl<F: Format> Stream for EventStream<F> {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let mut out = String::new();
        if !this.opened {
            this.opened = true;
            this.format.open(&mut out);
        }
        if this.conn.control.overflowed() {
            // Cut off for reading too slowly: say where to resume, if it can still be written.
            let seq = this.counts_seq;
            return this.finish(out, |f, o| f.resync(o, seq));
        }
        if this.expiry.as_mut().poll(cx).is_ready() {
            return this.finish(out, |f, o| f.token_expired(o));
        }
        loop {
            match this.conn.rx.poll_recv(cx) {
                Poll::Ready(Some(Frame::Shutdown)) => {
                    return this.finish(out, |f, o| f.reconnect(o))
                }
                Poll::Ready(Some(frame)) => {
                    this.write(&mut out, &frame);
                    if out.len() >= CHUNK {
                        break;
                    }
                }
                Poll::Ready(None) => {
                    if !out.is_empty() {
                        break;
                    }
                    if this.conn.control.overflowed() {
                        let seq = this.counts_seq;
                        return this.finish(out, |f, o| f.resync(o, seq));
                    }
                    // The session went away (it restarted): end so the client resumes.
                    return this.finish(out, |f, o| f.reconnect(o));
                }
                Poll::Pending => break,
            }
        }
        if out.is_empty() && this.ping.poll_tick(cx).is_ready() {
            this.format.ping(&mut out);
        }
        if out.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(Some(Ok(Bytes::from(out))))
        }
    }
}
