//! Unit tests of the STOMP frame codec ([`super`]).
//!
//! Kept in their own file so that `frame.rs` is the codec alone: it is the file the fuzz
//! target includes by path (`fuzz/fuzz_targets/stomp_frame.rs`), and the ~650 lines of
//! tests made up more than a third of it. They are still a child module of `frame`, so
//! they reach its private helpers as before.

use super::*;

fn decode_all(limits: Limits, input: &[u8]) -> Result<Vec<Item>, FrameError> {
    let mut d = Decoder::new(limits);
    d.feed(input).collect()
}

fn frames(input: &[u8]) -> Vec<Frame> {
    decode_all(Limits::default(), input)
        .expect("valid input")
        .into_iter()
        .filter_map(|i| match i {
            Item::Frame(f) => Some(f),
            Item::Heartbeat => None,
        })
        .collect()
}

fn one_frame(input: &[u8]) -> Frame {
    let mut f = frames(input);
    assert_eq!(f.len(), 1, "expected exactly one frame");
    f.pop().unwrap()
}

fn first_error(limits: Limits, input: &[u8]) -> FrameError {
    match decode_all(limits, input) {
        Ok(items) => panic!("expected an error, got {items:?}"),
        Err(e) => e,
    }
}

/// Feeds `input` in pieces of `sizes` (cycled) and collects the outcome.
fn decode_chunked(
    limits: Limits,
    input: &[u8],
    sizes: &[usize],
) -> (Vec<Item>, Option<FrameError>) {
    let mut d = Decoder::new(limits);
    let mut items = Vec::new();
    let mut rest = input;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        i += 1;
        let mut piece = &rest[..n];
        rest = &rest[n..];
        loop {
            match d.decode(&mut piece) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(e) => return (items, Some(e)),
            }
        }
        assert!(
            d.buffered_bytes() <= limits.max_buffered_bytes(),
            "{} > {} for {limits:?}, input {input:?}",
            d.buffered_bytes(),
            limits.max_buffered_bytes()
        );
    }
    (items, None)
}

#[test]
fn decodes_simple_send() {
    let f = one_frame(b"SEND\ndestination:/queue/a\ncontent-type:text/plain\n\nhello\0");
    assert_eq!(f.command, Command::Send);
    assert_eq!(f.header("destination"), Some("/queue/a"));
    assert_eq!(f.header("content-type"), Some("text/plain"));
    assert_eq!(f.body, b"hello");
}

#[test]
fn every_command_round_trips() {
    for c in Command::ALL {
        let frame = Frame::new(c)
            .with_header("receipt", "r-1")
            .with_header("x", "a:b\\c\r\nd")
            .with_body(&b"payload"[..]);
        let decoded = one_frame(&frame.encode());
        if c.escapes_headers() {
            assert_eq!(decoded, frame, "{c}");
        } else {
            // CONNECT/CONNECTED cannot carry CR/LF: they are sanitised.
            assert_eq!(decoded.header("x"), Some("a:b\\c  d"), "{c}");
        }
        assert_eq!(Command::from_bytes(c.as_str().as_bytes()), Some(c));
    }
    assert!(Command::Message.is_server() && Command::Send.is_client());
}

#[test]
fn round_trip_escapes_and_content_length() {
    let frame = Frame::new(Command::Message)
        .with_header("destination", "/topic/a:b")
        .with_header("we\\ird:name", "line1\nline2\r")
        .with_body(&b"bin\0ary\0"[..])
        .with_content_length();
    let wire = frame.encode();
    assert!(
        wire.starts_with(b"MESSAGE\ndestination:/topic/a\\cb\nwe\\\\ird\\cname:line1\\nline2\\r\n")
    );
    assert_eq!(frame.header("content-length"), Some("8"));
    assert_eq!(one_frame(&wire), frame);
}

#[test]
fn encoder_adds_content_length_when_body_has_nul() {
    let frame = Frame::new(Command::Error).with_body(&b"a\0b"[..]);
    let wire = frame.encode();
    assert_eq!(wire, b"ERROR\ncontent-length:3\n\na\0b\0");
    assert_eq!(one_frame(&wire).body, b"a\0b");
}

#[test]
fn with_content_length_replaces_existing() {
    let f = Frame::new(Command::Send)
        .with_header("content-length", "99")
        .with_header("a", "1")
        .with_header("content-length", "98")
        .with_body(&b"xy"[..])
        .with_content_length();
    assert_eq!(
        f.headers,
        vec![
            ("content-length".to_owned(), "2".to_owned()),
            ("a".to_owned(), "1".to_owned())
        ]
    );
    let mut g = f.clone();
    g.remove_header("content-length");
    assert_eq!(g.header("content-length"), None);
}

#[test]
fn connect_headers_are_not_unescaped() {
    let f =
        one_frame(b"CONNECT\naccept-version:1.2\nhost:h\nlogin:a\\nb\npasscode:p\\c\\t:x\n\n\0");
    assert_eq!(f.header("login"), Some("a\\nb"));
    assert_eq!(f.header("passcode"), Some("p\\c\\t:x"));
    let f = one_frame(b"CONNECTED\nserver:srv\\1\n\n\0");
    assert_eq!(f.header("server"), Some("srv\\1"));
    // ...but STOMP (1.1+ only) is escaped like any other frame.
    let f = one_frame(b"STOMP\nlogin:a\\cb\n\n\0");
    assert_eq!(f.header("login"), Some("a:b"));
}

#[test]
fn connected_encoding_is_verbatim() {
    let f = Frame::new(Command::Connected)
        .with_header("version", "1.2")
        .with_header("server", "tidings\\1:0");
    assert_eq!(
        f.encode(),
        b"CONNECTED\nversion:1.2\nserver:tidings\\1:0\n\n\0"
    );
}

#[test]
fn multiple_frames_and_heartbeats_in_one_buffer() {
    let input = b"\n\r\nSEND\ndestination:/a\n\none\0\n\nSUBSCRIBE\r\nid:0\r\ndestination:/b\r\n\r\n\0\r\n\nDISCONNECT\n\n\0";
    let items = decode_all(Limits::default(), input).unwrap();
    let kinds: Vec<&str> = items
        .iter()
        .map(|i| match i {
            Item::Heartbeat => "hb",
            Item::Frame(f) => f.command.as_str(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "hb",
            "hb",
            "SEND",
            "hb",
            "hb",
            "SUBSCRIBE",
            "hb",
            "hb",
            "DISCONNECT"
        ]
    );
    let Item::Frame(sub) = &items[5] else {
        unreachable!()
    };
    assert_eq!(sub.header("id"), Some("0"));
    assert_eq!(sub.header("destination"), Some("/b"));
}

#[test]
fn crlf_line_endings() {
    let f = one_frame(b"SEND\r\ndestination:/a\r\nx:y\r\n\r\nbody\r\n\0\r\n");
    assert_eq!(f.command, Command::Send);
    assert_eq!(f.header("x"), Some("y"));
    assert_eq!(f.body, b"body\r\n");
}

#[test]
fn split_at_every_byte_boundary() {
    let input: &[u8] = b"\r\nSEND\r\ndestination:/q\\c1\r\ncontent-length:5\r\n\r\na\0b\0c\0\n\
MESSAGE\nsubscription:0\nmessage-id:7\ndestination:/q\n\nhi\0\r\n";
    let (whole, err) = decode_chunked(Limits::default(), input, &[input.len()]);
    assert!(err.is_none());
    assert_eq!(whole.len(), 5);
    // Byte by byte.
    let (bytes, err) = decode_chunked(Limits::default(), input, &[1]);
    assert!(err.is_none());
    assert_eq!(bytes, whole);
    // Every split point into two pieces.
    for split in 1..input.len() {
        let mut d = Decoder::default();
        let mut items: Vec<Item> = d.feed(&input[..split]).collect::<Result<_, _>>().unwrap();
        items.extend(d.feed(&input[split..]).map(Result::unwrap));
        assert_eq!(items, whole, "split at {split}");
        assert!(d.finish().is_ok());
    }
}

#[test]
fn content_length_allows_embedded_nul() {
    let f = one_frame(b"SEND\ndestination:/a\ncontent-length:4\n\n\0\0x\0\0");
    assert_eq!(f.body, b"\0\0x\0");
    let f = one_frame(b"SEND\ncontent-length:0\n\n\0");
    assert!(f.body.is_empty());
}

#[test]
fn repeated_headers_first_wins() {
    let f = one_frame(b"MESSAGE\nfoo:first\nfoo:second\ncontent-length:1\ncontent-length:5\n\nx\0");
    assert_eq!(f.header("foo"), Some("first"));
    assert_eq!(
        f.header_values("foo").collect::<Vec<_>>(),
        ["first", "second"]
    );
    assert_eq!(f.body, b"x");
    assert_eq!(f.headers.len(), 4);
}

#[test]
fn header_value_details() {
    let f = one_frame(b"SEND\nempty:\n sp : v :w\nk:\\\\\\r\\n\\c\n\n\0");
    assert_eq!(f.header("empty"), Some(""));
    assert_eq!(f.header(" sp "), Some(" v :w"));
    assert_eq!(f.header("k"), Some("\\\r\n:"));
}

#[test]
fn partial_frame_and_finish() {
    let mut d = Decoder::default();
    assert!(d.feed(b"SEND\ndest").next().is_none());
    assert!(d.in_frame());
    assert_eq!(d.finish(), Err(FrameError::MissingNul));
    d.reset();
    assert!(d.finish().is_ok());
}

// ---- malformed classes ----

#[test]
fn error_missing_nul_after_content_length() {
    let e = first_error(Limits::default(), b"SEND\ncontent-length:2\n\nabX");
    assert_eq!(e, FrameError::MissingNul);
    assert_eq!(e.to_string(), "frame not terminated by a NUL octet");
}

#[test]
fn error_oversized_frame() {
    let limits = Limits {
        max_frame_bytes: 64,
        ..Limits::default()
    };
    // No NUL ever: refused once 64 bytes have been seen, not buffered beyond.
    let mut input = b"SEND\ndestination:/a\n\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 10_000));
    let (_, err) = decode_chunked(limits, &input, &[7]);
    assert_eq!(err, Some(FrameError::FrameTooLarge { limit: 64 }));
    // Declared content-length that cannot fit is refused before reading the body.
    let e = first_error(limits, b"SEND\ncontent-length:60\n\n");
    assert_eq!(e, FrameError::FrameTooLarge { limit: 64 });
    // Headers count too.
    let mut big = b"SEND\n".to_vec();
    for i in 0..10 {
        big.extend_from_slice(format!("h{i}:{}\n", "v".repeat(10)).as_bytes());
    }
    let e = first_error(limits, &big);
    assert_eq!(e, FrameError::FrameTooLarge { limit: 64 });
    // Exactly at the limit is fine.
    let exact = b"SEND\n\n"
        .iter()
        .copied()
        .chain(std::iter::repeat_n(b'y', 57))
        .chain([0])
        .collect::<Vec<u8>>();
    assert_eq!(exact.len(), 64);
    assert_eq!(decode_all(limits, &exact).unwrap().len(), 1);
}

#[test]
fn error_body_too_large() {
    let limits = Limits {
        max_body_bytes: 4,
        ..Limits::default()
    };
    assert_eq!(
        first_error(limits, b"SEND\n\n12345\0"),
        FrameError::BodyTooLarge { limit: 4 }
    );
    assert_eq!(
        first_error(limits, b"SEND\ncontent-length:5\n\n"),
        FrameError::BodyTooLarge { limit: 4 }
    );
    assert_eq!(
        first_error(
            limits,
            b"SEND\ncontent-length:99999999999999999999999999\n\n"
        ),
        FrameError::BodyTooLarge { limit: 4 }
    );
    assert_eq!(decode_all(limits, b"SEND\n\n1234\0").unwrap().len(), 1);
}

#[test]
fn error_too_many_headers() {
    let limits = Limits {
        max_headers: 2,
        ..Limits::default()
    };
    assert_eq!(
        decode_all(limits, b"SEND\na:1\nb:2\n\n\0").unwrap().len(),
        1
    );
    let e = first_error(limits, b"SEND\na:1\nb:2\nc");
    assert_eq!(e, FrameError::TooManyHeaders { limit: 2 });
    let e = first_error(limits, b"SEND\r\na:1\r\nb:2\r\n\rc:3\r\n");
    assert_eq!(e, FrameError::TooManyHeaders { limit: 2 });
}

#[test]
fn error_header_too_long() {
    let limits = Limits {
        max_header_bytes: 8,
        ..Limits::default()
    };
    // 8 bytes is fine, with LF or CRLF, even when the CR arrives alone.
    assert_eq!(
        decode_all(limits, b"SEND\nabc:1234\n\n\0").unwrap().len(),
        1
    );
    let (items, err) = decode_chunked(limits, b"SEND\r\nabc:1234\r\n\r\n\0", &[1]);
    assert!(err.is_none());
    assert_eq!(items.len(), 1);
    // 9 bytes is refused before the EOL arrives.
    let e = first_error(limits, b"SEND\nabc:12345");
    assert_eq!(e, FrameError::HeaderTooLong { limit: 8 });
    let (_, err) = decode_chunked(limits, b"SEND\nabc:12345", &[1]);
    assert_eq!(err, Some(FrameError::HeaderTooLong { limit: 8 }));
}

#[test]
fn error_bad_escape() {
    let e = first_error(Limits::default(), b"SEND\nfoo:a\\tb\n\n\0");
    assert_eq!(e, FrameError::BadEscape { escape: Some(b't') });
    assert_eq!(e.to_string(), "undefined escape sequence '\\t' in header");
    let e = first_error(Limits::default(), b"SEND\nfoo\\:b\n\n\0");
    assert_eq!(e, FrameError::BadEscape { escape: None });
    let e = first_error(Limits::default(), b"SEND\nfoo:b\\\n\n\0");
    assert_eq!(e, FrameError::BadEscape { escape: None });
}

#[test]
fn error_unknown_command() {
    for input in [
        &b"FOO\n\n\0"[..],
        b"send\n\n\0",
        b"GET / HTTP/1.1\r\n",
        b"SEND \n\n\0",
        b"\0",
        b"\r\r\n",
    ] {
        assert_eq!(
            first_error(Limits::default(), input),
            FrameError::UnknownCommand,
            "{input:?}"
        );
    }
    // A long garbage line is refused without waiting for its EOL.
    let (_, err) = decode_chunked(Limits::default(), &[b'A'; 100], &[1]);
    assert_eq!(err, Some(FrameError::UnknownCommand));
}

#[test]
fn error_malformed_header() {
    for input in [
        &b"SEND\nnocolon\n\n\0"[..],
        b"SEND\n:v\n\n\0",
        b"SEND\na\rb:c\n\n\0",
    ] {
        assert!(matches!(
            first_error(Limits::default(), input),
            FrameError::MalformedHeader { .. }
        ));
    }
    assert_eq!(
        first_error(Limits::default(), b"SEND\nnocolon\n").to_string(),
        "malformed header: missing ':' separator"
    );
}

#[test]
fn error_bad_content_length() {
    for v in ["abc", "-1", "+1", " 1", "1 ", "", "0x10", "1.0"] {
        let input = format!("SEND\ncontent-length:{v}\n\nx\0");
        assert_eq!(
            first_error(Limits::default(), input.as_bytes()),
            FrameError::BadContentLength,
            "{v:?}"
        );
    }
}

#[test]
fn error_invalid_utf8() {
    assert_eq!(
        first_error(Limits::default(), b"SEND\nk:\xff\xfe\n\n\0"),
        FrameError::InvalidUtf8
    );
    // Bodies are octets: no UTF-8 requirement.
    assert_eq!(one_frame(b"SEND\n\n\xff\0").body, b"\xff");
}

#[test]
fn errors_are_sticky_until_reset() {
    let mut d = Decoder::default();
    let mut input: &[u8] = b"BOGUS\n\n\0";
    assert_eq!(d.decode(&mut input), Err(FrameError::UnknownCommand));
    let mut ok: &[u8] = b"SEND\n\n\0";
    assert_eq!(d.decode(&mut ok), Err(FrameError::UnknownCommand));
    assert_eq!(d.finish(), Err(FrameError::UnknownCommand));
    assert_eq!(d.buffered_bytes(), 0);
    d.reset();
    assert!(matches!(d.decode(&mut ok), Ok(Some(Item::Frame(_)))));
}

#[test]
fn error_messages_are_single_line() {
    let all = [
        FrameError::MissingNul,
        FrameError::FrameTooLarge { limit: 1 },
        FrameError::BodyTooLarge { limit: 1 },
        FrameError::TooManyHeaders { limit: 1 },
        FrameError::HeaderTooLong { limit: 1 },
        FrameError::BadEscape {
            escape: Some(b'\n'),
        },
        FrameError::BadEscape { escape: Some(b't') },
        FrameError::BadEscape { escape: None },
        FrameError::UnknownCommand,
        FrameError::MalformedHeader { reason: "x" },
        FrameError::BadContentLength,
        FrameError::InvalidUtf8,
    ];
    for e in all {
        let m = e.to_string();
        assert!(!m.is_empty() && !m.contains(['\n', '\r', '\0']), "{m:?}");
        // Usable as an ERROR frame's message header.
        let f = Frame::new(Command::Error).with_header("message", m.clone());
        assert_eq!(one_frame(&f.encode()).header("message"), Some(m.as_str()));
    }
}

// ---- property-style ----

/// SplitMix64: tiny, deterministic, good enough to drive a fuzz loop.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn pick<'a>(rng: &mut Rng, from: &[&'a [u8]]) -> &'a [u8] {
    from[rng.below(from.len())]
}

/// Random input biased towards STOMP syntax so that deep states are reached:
/// mostly-valid frames with a few random mutations, or a soup of tokens.
fn random_input(rng: &mut Rng) -> Vec<u8> {
    const COMMANDS: &[&[u8]] = &[
        b"SEND",
        b"CONNECT",
        b"STOMP",
        b"MESSAGE",
        b"CONNECTED",
        b"SUBSCRIBE",
        b"ERROR",
        b"ACK",
        b"SENDX",
        b"",
    ];
    const TEXT: &[&[u8]] = &[
        b"",
        b"dest",
        b"/queue/a",
        b"a:b",
        b"\\\\",
        b"\\n",
        b"\\c",
        b"\\r",
        b"\\t",
        b"\\",
        b"\xff",
        b"\xc3\xa9",
        b"\r",
        b"content-length",
        b"x",
    ];
    const EOLS: &[&[u8]] = &[b"\n", b"\n", b"\r\n", b"\r"];
    const TOKENS: &[&[u8]] = &[
        b"SEND",
        b"CONNECT",
        b"MESSAGE",
        b"\n",
        b"\r\n",
        b"\r",
        b":",
        b"\0",
        b"\\",
        b"\\n",
        b"\\c",
        b"\\t",
        b"content-length:",
        b"content-length:3",
        b"dest",
        b"x",
        b"\xff",
        b"\n\n",
        b"0",
        b"12",
    ];
    let mut out = Vec::new();
    if rng.below(3) == 0 {
        for _ in 0..rng.below(40) {
            out.extend_from_slice(pick(rng, TOKENS));
        }
    } else {
        for _ in 0..1 + rng.below(3) {
            for _ in 0..rng.below(3) {
                out.extend_from_slice(pick(rng, EOLS));
            }
            out.extend_from_slice(pick(rng, COMMANDS));
            out.extend_from_slice(pick(rng, EOLS));
            let body: Vec<u8> = (0..rng.below(12))
                .map(|_| [b'a', 0, b'\n', 0xff][rng.below(4)])
                .collect();
            for _ in 0..rng.below(5) {
                if rng.below(4) == 0 {
                    let len = body.len() + rng.below(3) - 1.min(body.len());
                    out.extend_from_slice(format!("content-length:{len}").as_bytes());
                } else {
                    out.extend_from_slice(pick(rng, TEXT));
                    out.push(b':');
                    out.extend_from_slice(pick(rng, TEXT));
                }
                out.extend_from_slice(pick(rng, EOLS));
            }
            out.extend_from_slice(pick(rng, EOLS));
            out.extend_from_slice(&body);
            out.push(0);
        }
        for _ in 0..rng.below(3) {
            if out.is_empty() {
                break;
            }
            let at = rng.below(out.len());
            match rng.below(3) {
                0 => out[at] = rng.next() as u8,
                1 => out.insert(at, rng.next() as u8),
                _ => {
                    out.remove(at);
                }
            }
        }
    }
    out
}

#[test]
fn random_bytes_never_panic_and_chunking_is_irrelevant() {
    let mut rng = Rng(0x5EED);
    let mut frames_seen = 0;
    let mut errors_seen = std::collections::HashSet::new();
    for round in 0..20_000 {
        let input = random_input(&mut rng);
        let limits = if round % 3 == 0 {
            Limits {
                max_frame_bytes: 1 + rng.below(64),
                max_headers: rng.below(4),
                max_header_bytes: rng.below(16),
                max_body_bytes: rng.below(32),
            }
        } else {
            Limits::default()
        };
        let whole = decode_chunked(limits, &input, &[usize::MAX]);
        let sizes: Vec<usize> = (0..4).map(|_| 1 + rng.below(7)).collect();
        let split = decode_chunked(limits, &input, &sizes);
        assert_eq!(whole, split, "input {input:?}");
        if let Some(e) = &whole.1 {
            errors_seen.insert(std::mem::discriminant(e));
        }
        for item in &whole.0 {
            if let Item::Frame(f) = item {
                frames_seen += 1;
                let again = decode_all(Limits::default(), &f.encode()).unwrap();
                assert_eq!(again, vec![Item::Frame(f.clone())], "round-trip of {f:?}");
            }
        }
    }
    assert!(
        frames_seen > 1_000,
        "generator too weak: {frames_seen} frames"
    );
    // Every error class is reached (MissingNul via finish() excepted).
    assert_eq!(
        errors_seen.len(),
        10,
        "error classes reached: {}",
        errors_seen.len()
    );
}

#[test]
fn memory_stays_bounded_under_byte_by_byte_attack() {
    let limits = Limits::default();
    // Many headers, each just under the line limit, then an endless body.
    let mut input = b"SEND\n".to_vec();
    for i in 0..limits.max_headers {
        input.extend_from_slice(format!("h{i}:").as_bytes());
        input.extend(std::iter::repeat_n(b'v', 1000));
        input.push(b'\n');
    }
    input.push(b'\n');
    input.extend(std::iter::repeat_n(b'b', 100_000));
    let (_, err) = decode_chunked(limits, &input, &[1, 3, 1000]);
    assert_eq!(
        err,
        Some(FrameError::FrameTooLarge {
            limit: limits.max_frame_bytes
        })
    );
}
