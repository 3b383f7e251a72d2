//! STOMP heart-beat negotiation (STOMP 1.2, "Heart-beating").
//!
//! `CONNECT` carries `heart-beat: cx,cy`: the client can send a heart-beat every `cx` ms
//! (0: it cannot), and wants to receive one every `cy` ms (0: it does not want any).
//! `CONNECTED` answers with the server's `sx,sy` in the same sense. Then, by the spec:
//!
//! * server to client: none if `sx` or `cy` is 0, else every `max(sx, cy)` ms;
//! * client to server: none if `cx` or `sy` is 0, else every `max(cx, sy)` ms.
//!
//! Both sides compute the same two numbers from the two headers, so nothing more needs
//! to be exchanged.
//!
//! What the server offers, and why:
//!
//! * `sx` is [`MIN_INTERVAL`]: the server can send as often as that, so it honours the
//!   client's own `cy` (a client asking for 500 ms gets 500 ms) instead of imposing its
//!   configured heartbeat on clients that need faster liveness detection. The floor keeps a
//!   client from making the server write thousands of heart-beats a second.
//! * `sy` is the configured heartbeat (`TIDINGS__SERVER__HEARTBEAT_SECONDS`): how often
//!   the server wants proof of life. Incoming heart-beats cost the server reads, so it asks
//!   for no more than its own keep-alive period, and a dead client is still found within
//!   about twice that.
//!
//! A client that stays silent (no frame, no EOL) for more than [`TOLERANCE`] times the
//! negotiated client-to-server interval is dropped: the spec leaves the margin to the
//! implementation, and twice the interval absorbs one late timer and network jitter
//! without keeping a dead peer for long.

use std::time::Duration;

/// The fastest the server sends heart-beats, whatever the client asks for.
pub const MIN_INTERVAL: Duration = Duration::from_millis(250);

/// Intervals above a day are treated as a day: the numbers come from the client, and a
/// timer deadline must not overflow.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// How many negotiated client-to-server intervals of silence are tolerated.
pub const TOLERANCE: u32 = 2;

/// The two numbers of a `heart-beat` header, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeartBeat {
    /// The sender can send a heart-beat this often (0: never).
    pub send_ms: u64,
    /// The sender wants to receive a heart-beat this often (0: not at all).
    pub recv_ms: u64,
}

impl HeartBeat {
    /// Parses `cx,cy`. An absent header means `0,0` (the spec's default).
    ///
    /// Strict, like the codec's `content-length`: two runs of ASCII digits around one
    /// comma, nothing else, so that a typo is reported instead of silently turning
    /// heart-beating off. Absurdly long numbers saturate (and are clamped later).
    pub fn parse(header: Option<&str>) -> Result<HeartBeat, &'static str> {
        let Some(value) = header else {
            return Ok(HeartBeat::default());
        };
        let (send, recv) = value
            .split_once(',')
            .ok_or("heart-beat must be two numbers of milliseconds, such as 10000,10000")?;
        let number = |s: &str| -> Result<u64, &'static str> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err("heart-beat must be two numbers of milliseconds, such as 10000,10000");
            }
            Ok(s.bytes().fold(0u64, |acc, b| {
                acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
            }))
        };
        Ok(HeartBeat {
            send_ms: number(send)?,
            recv_ms: number(recv)?,
        })
    }

    /// The header value, `send,recv`.
    pub fn header(self) -> String {
        format!("{},{}", self.send_ms, self.recv_ms)
    }
}

/// The server's side of the negotiation for a configured keep-alive period.
pub fn server_offer(configured: Duration) -> HeartBeat {
    HeartBeat {
        send_ms: millis(MIN_INTERVAL),
        recv_ms: millis(configured.clamp(MIN_INTERVAL, MAX_INTERVAL)),
    }
}

/// What the two offers add up to, from the server's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The server sends a heart-beat at least this often (`None`: never).
    pub send: Option<Duration>,
    /// The client promised to send something at least this often (`None`: no promise).
    pub recv: Option<Duration>,
}

impl Negotiated {
    /// No heart-beating at all (STOMP 1.0, or both sides declined).
    pub const NONE: Negotiated = Negotiated {
        send: None,
        recv: None,
    };

    /// How long the client may stay silent before it is dropped.
    pub fn silence_limit(&self) -> Option<Duration> {
        self.recv.map(|r| r * TOLERANCE)
    }
}

/// The spec's rule, applied to the client's and the server's headers.
pub fn negotiate(client: HeartBeat, server: HeartBeat) -> Negotiated {
    let one_way = |can_send: u64, wants: u64| -> Option<Duration> {
        if can_send == 0 || wants == 0 {
            return None;
        }
        let ms = can_send.max(wants);
        Some(Duration::from_millis(ms).min(MAX_INTERVAL))
    };
    Negotiated {
        send: one_way(server.send_ms, client.recv_ms),
        recv: one_way(client.send_ms, server.recv_ms),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(send_ms: u64, recv_ms: u64) -> HeartBeat {
        HeartBeat { send_ms, recv_ms }
    }

    #[test]
    fn parses_the_header() {
        assert_eq!(HeartBeat::parse(None), Ok(hb(0, 0)));
        assert_eq!(HeartBeat::parse(Some("0,0")), Ok(hb(0, 0)));
        assert_eq!(HeartBeat::parse(Some("10000,500")), Ok(hb(10_000, 500)));
        assert_eq!(
            HeartBeat::parse(Some("99999999999999999999999,1")),
            Ok(hb(u64::MAX, 1))
        );
        for bad in [
            "", "1", "1,", ",1", "1,2,3", "-1,0", " 1,0", "1 ,0", "a,b", "1;2",
        ] {
            assert!(HeartBeat::parse(Some(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(hb(250, 15_000).header(), "250,15000");
    }

    #[test]
    fn the_server_honours_fast_client_requests_down_to_the_floor() {
        let server = server_offer(Duration::from_secs(15));
        assert_eq!(server, hb(250, 15_000));
        // The client wants a heart-beat every 500 ms: it gets exactly that.
        let n = negotiate(hb(500, 500), server);
        assert_eq!(n.send, Some(Duration::from_millis(500)));
        // The client offers 500 ms but the server asks for no more than every 15 s.
        assert_eq!(n.recv, Some(Duration::from_secs(15)));
        assert_eq!(n.silence_limit(), Some(Duration::from_secs(30)));
        // Asking for 1 ms gets the floor.
        let n = negotiate(hb(1, 1), server);
        assert_eq!(n.send, Some(MIN_INTERVAL));
    }

    #[test]
    fn a_short_configured_heartbeat_is_used_for_the_client_direction() {
        let server = server_offer(Duration::from_secs(1));
        let n = negotiate(hb(500, 500), server);
        assert_eq!(n.send, Some(Duration::from_millis(500)));
        assert_eq!(n.recv, Some(Duration::from_secs(1)));
        assert_eq!(n.silence_limit(), Some(Duration::from_secs(2)));
        // A configured zero still asks for something: the floor.
        assert_eq!(server_offer(Duration::ZERO), hb(250, 250));
    }

    #[test]
    fn zero_on_either_side_turns_a_direction_off() {
        let server = server_offer(Duration::from_secs(15));
        assert_eq!(negotiate(hb(0, 0), server), Negotiated::NONE);
        let n = negotiate(hb(0, 10_000), server);
        assert_eq!(n.send, Some(Duration::from_secs(10)));
        assert_eq!(n.recv, None);
        assert_eq!(n.silence_limit(), None);
        let n = negotiate(hb(10_000, 0), server);
        assert_eq!(n.send, None);
        assert_eq!(n.recv, Some(Duration::from_secs(15)));
        // And on the server's side, symmetrically.
        let n = negotiate(hb(10_000, 10_000), hb(0, 0));
        assert_eq!(n, Negotiated::NONE);
    }

    #[test]
    fn the_slower_side_wins_and_huge_values_are_clamped() {
        let n = negotiate(hb(60_000, 60_000), hb(1_000, 1_000));
        assert_eq!(n.send, Some(Duration::from_secs(60)));
        assert_eq!(n.recv, Some(Duration::from_secs(60)));
        let n = negotiate(hb(u64::MAX, u64::MAX), hb(1, 1));
        assert_eq!(n.send, Some(MAX_INTERVAL));
        assert_eq!(n.recv, Some(MAX_INTERVAL));
        assert!(n.silence_limit().is_some());
    }
}
