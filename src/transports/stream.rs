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
use tokio::time::{Instant, Sleep};

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

/// What a connection's timer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// A heartbeat is due.
    Ping,
    /// The token's `exp` has passed (said again on every poll after).
    Expired,
}

/// A connection's heartbeat and its token's expiry, on one timer.
///
/// Why one: an idle connection holds its timers for its whole life, and every tokio `Sleep`
/// is an allocation of its own (an `Interval` holds one too). Two per connection were the
/// last 100 bytes between an idle WebSocket and issue 27's 5 KiB (`bench/run.sh idle`).
/// Missed beats are skipped, not sent in a burst.
pub struct Timers {
    sleep: Pin<Box<Sleep>>,
    period: Duration,
    next_ping: Instant,
    expires: Instant,
}

impl Timers {
    pub fn new(heartbeat: Duration, expires_at: i64) -> Self {
        // A zero period would never move the next beat forward.
        let period = heartbeat.max(Duration::from_millis(1));
        let next_ping = Instant::now() + period;
        let expires = expiry_instant(expires_at);
        Self {
            sleep: Box::pin(tokio::time::sleep_until(next_ping.min(expires))),
            period,
            next_ping,
            expires,
        }
    }

    /// `Ready` when a beat is due or the token expired; registers for the next otherwise.
    pub fn poll_tick(&mut self, cx: &mut Context<'_>) -> Poll<Tick> {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            if now >= self.expires {
                return Poll::Ready(Tick::Expired);
            }
            let due = now >= self.next_ping;
            while self.next_ping <= now {
                self.next_ping += self.period;
            }
            self.sleep.as_mut().reset(self.next_ping.min(self.expires));
            if due {
                return Poll::Ready(Tick::Ping);
            }
        }
    }
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
    timers: Timers,
}

impl<F: Format> EventStream<F> {
    pub fn new(format: F, conn: Connection, heartbeat: Duration, expires_at: i64) -> Self {
        Self {
            format,
            conn,
            opened: false,
            done: false,
            counts_seq: Seq::ZERO,
            timers: Timers::new(heartbeat, expires_at),
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
        let tick = this.timers.poll_tick(cx);
        if tick == Poll::Ready(Tick::Expired) {
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
        // Anything written is as good as a heartbeat.
        if out.is_empty() && tick == Poll::Ready(Tick::Ping) {
            this.format.ping(&mut out);
        }
        if out.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(Some(Ok(Bytes::from(out))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test(start_paused = true)]
    async fn one_timer_beats_then_says_the_token_expired() {
        let start = Instant::now();
        let mut t = Timers::new(Duration::from_secs(10), chrono::Utc::now().timestamp() + 25);
        assert_eq!(poll_fn(|cx| t.poll_tick(cx)).await, Tick::Ping);
        assert_eq!(start.elapsed().as_secs(), 10);
        assert_eq!(poll_fn(|cx| t.poll_tick(cx)).await, Tick::Ping);
        assert_eq!(start.elapsed().as_secs(), 20);
        assert_eq!(poll_fn(|cx| t.poll_tick(cx)).await, Tick::Expired);
        assert!((24..=25).contains(&start.elapsed().as_secs()));
        // And on every poll after.
        assert_eq!(poll_fn(|cx| t.poll_tick(cx)).await, Tick::Expired);
    }

    #[tokio::test(start_paused = true)]
    async fn missed_beats_are_skipped_not_sent_in_a_burst() {
        let start = Instant::now();
        let mut t = Timers::new(
            Duration::from_secs(10),
            chrono::Utc::now().timestamp() + 3600,
        );
        tokio::time::advance(Duration::from_secs(35)).await;
        assert_eq!(poll_fn(|cx| t.poll_tick(cx)).await, Tick::Ping);
        // The next beat is at 40 s, not the missed ones at 20 and 30 s.
        assert_eq!(poll_fn(|cx| t.poll_tick(cx)).await, Tick::Ping);
        assert_eq!(start.elapsed().as_secs(), 40);
    }
}
