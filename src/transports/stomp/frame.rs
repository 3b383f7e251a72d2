//! STOMP 1.2 frame codec: an incremental, allocation-bounded decoder and an encoder.
//!
//! This module is deliberately pure and dependency-free: it knows nothing about
//! WebSockets, sessions or subscriptions. The transport feeds it the payload of each
//! WebSocket message (text or binary, the bytes are the same) and gets back complete
//! [`Frame`]s and heart-beats ([`Item`]).
//!
//! # Wire format (STOMP 1.2, section "Augmented BNF")
//!
//! ```text
//! frame   = command EOL *( header EOL ) EOL *OCTET NULL *( EOL )
//! EOL     = [CR] LF
//! header  = header-name ":" header-value
//! ```
//!
//! Why incremental: a WebSocket message may carry exactly one frame (what Spring and
//! `@stomp/stompjs` normally send), several frames back to back, or only a piece of
//! one (`stompjs` with `splitLargeFrames`, or any client that writes a stream). The
//! decoder therefore keeps the state of the frame in progress between calls and never
//! assumes message boundaries are frame boundaries.
//!
//! Why limits are checked *before* bytes are buffered: the peer is untrusted and the
//! frame in progress lives in server memory until its NUL arrives. Checking a limit
//! only after appending would let one connection grow a buffer by a whole WebSocket
//! message (megabytes) past the limit before being refused. Here every byte is
//! accounted for before it is copied, so the memory held for a frame in progress is
//! bounded by [`Limits::max_buffered_bytes`], whatever the peer sends and however it
//! is split. Checking byte by byte in a fixed order also makes the result independent
//! of the split: the same bytes give the same frames and the same error whether they
//! arrive in one message or one byte at a time (the unit tests and the fuzz target
//! assert this).
//!
//! Out of scope here, on purpose: which headers a command requires, whether a
//! command may carry a body, version negotiation and heart-beat timing. Those are
//! session rules; this layer only guarantees a well-formed, bounded frame.

use std::error::Error;
use std::fmt;

/// The bytes of one heart-beat as this codec sends it: a bare EOL between frames.
pub const HEARTBEAT: &[u8] = b"\n";

/// Length of the longest command line the decoder buffers: `UNSUBSCRIBE` (11 bytes)
/// plus an optional CR.
const MAX_COMMAND_LINE: usize = 12;

/// Whether `line` (a command line so far, without LF) can still become a command
/// line or a `\r\n` heart-beat. Checked on every byte so that garbage (an HTTP
/// request, a binary blob, a NUL) is refused at its first impossible byte instead
/// of after an EOL that might never come.
fn is_command_line_prefix(line: &[u8]) -> bool {
    match line.split_last() {
        None => true,
        // A CR must be the last byte before LF, after a complete command (or alone).
        Some((b'\r', rest)) => rest.is_empty() || Command::from_bytes(rest).is_some(),
        Some(_) => Command::ALL
            .iter()
            .any(|c| c.as_str().as_bytes().starts_with(line)),
    }
}

/// A STOMP 1.2 command: the first line of a frame.
///
/// Commands are case-sensitive on the wire (`send` is not `SEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    // Client frames.
    /// `CONNECT`: open a session (STOMP 1.0+ name).
    Connect,
    /// `STOMP`: open a session (STOMP 1.1+ name; same meaning as `CONNECT`).
    Stomp,
    /// `SEND`: publish a message to a destination.
    Send,
    /// `SUBSCRIBE`: start receiving messages from a destination.
    Subscribe,
    /// `UNSUBSCRIBE`: stop a subscription.
    Unsubscribe,
    /// `ACK`: acknowledge a message.
    Ack,
    /// `NACK`: reject a message.
    Nack,
    /// `BEGIN`: start a transaction.
    Begin,
    /// `COMMIT`: commit a transaction.
    Commit,
    /// `ABORT`: roll back a transaction.
    Abort,
    /// `DISCONNECT`: close the session gracefully.
    Disconnect,
    // Server frames.
    /// `CONNECTED`: the server accepted `CONNECT`/`STOMP`.
    Connected,
    /// `MESSAGE`: a message delivered to a subscription.
    Message,
    /// `RECEIPT`: the server processed a frame that asked for a receipt.
    Receipt,
    /// `ERROR`: something went wrong; the server closes the connection after it.
    Error,
}

impl Command {
    /// Every command, client frames first.
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Connected,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    /// The command as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Connected => "CONNECTED",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    /// Parses a command line (without its EOL). Exact, case-sensitive match.
    pub fn from_bytes(line: &[u8]) -> Option<Command> {
        Command::ALL
            .iter()
            .copied()
            .find(|c| c.as_str().as_bytes() == line)
    }

    /// True for frames a client sends to the server.
    pub fn is_client(self) -> bool {
        !self.is_server()
    }

    /// True for frames the server sends to a client.
    pub fn is_server(self) -> bool {
        matches!(
            self,
            Command::Connected | Command::Message | Command::Receipt | Command::Error
        )
    }

    /// Whether header names and values of this frame use the `\r \n \c \\` escapes.
    ///
    /// STOMP 1.2 exempts `CONNECT` and `CONNECTED` because they are exchanged *before*
    /// the protocol version is negotiated: a STOMP 1.0 peer does not know escaping,
    /// and a 1.0 client's `passcode` (or a server's `server` header) may legitimately
    /// contain a backslash that must arrive verbatim. `STOMP` is a 1.1+ command, so
    /// its sender already speaks escaping and it is not exempt.
    pub fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Connected)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One STOMP frame.
///
/// Headers keep their wire order and may repeat: STOMP 1.2 says that when a header
/// is repeated only the *first* occurrence is used, but the others are still part of
/// the frame (and are kept, e.g. so a relay can pass them on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The command line.
    pub command: Command,
    /// Headers in wire order, already unescaped (except for `CONNECT`/`CONNECTED`).
    pub headers: Vec<(String, String)>,
    /// The body: arbitrary octets (may contain NUL when `content-length` is set).
    pub body: Vec<u8>,
}

impl Frame {
    /// A frame with no headers and an empty body.
    pub fn new(command: Command) -> Self {
        Frame {
            command,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// The value of the *first* header called `name` (case-sensitive), as STOMP 1.2
    /// requires for repeated headers.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in wire order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Appends a header (an earlier header with the same name keeps precedence).
    pub fn push_header(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.headers.push((name.into(), value.into()));
    }

    /// Replaces every header called `name` with a single one, placed where the first
    /// one was (or at the end).
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.headers.iter().position(|(n, _)| n == name) {
            Some(i) => {
                self.headers[i].1 = value;
                let mut seen = false;
                self.headers.retain(|(n, _)| {
                    if n != name {
                        return true;
                    }
                    let keep = !seen;
                    seen = true;
                    keep
                });
            }
            None => self.headers.push((name.to_owned(), value)),
        }
    }

    /// Removes every header called `name`.
    pub fn remove_header(&mut self, name: &str) {
        self.headers.retain(|(n, _)| n != name);
    }

    /// Builder form of [`Frame::push_header`].
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.push_header(name, value);
        self
    }

    /// Builder: sets the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Builder: sets `content-length` to the body's length (replacing any existing one).
    ///
    /// STOMP 1.2 says frames with a body SHOULD carry it; it is what lets a receiver
    /// read a body containing NUL and pre-size its buffer. Use it for `MESSAGE` and
    /// `ERROR` frames whose body is not known to be NUL-free text.
    pub fn with_content_length(mut self) -> Self {
        let len = self.body.len().to_string();
        self.set_header("content-length", len);
        self
    }

    /// Serialises the frame: command, headers, blank line, body, NUL.
    ///
    /// * EOLs are a bare LF (allowed by the spec and what Spring and stompjs send).
    /// * Header names and values are escaped (`\` `CR` `LF` `:` become `\\ \r \n \c`),
    ///   except for `CONNECT`/`CONNECTED`, which STOMP 1.2 sends unescaped (see
    ///   [`Command::escapes_headers`]). Those two frames cannot represent CR or LF at
    ///   all, nor `:` in a name, so such characters are replaced by a space (values)
    ///   or `_` (names): a mangled header beats letting a value inject extra headers.
    /// * Headers are written verbatim otherwise, `content-length` included: use
    ///   [`Frame::with_content_length`] to set it. As a safety net, if the body
    ///   contains a NUL and no `content-length` header is present, one is added,
    ///   because without it the receiver would cut the body at that NUL.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len_hint());
        self.encode_into(&mut out);
        out
    }

    /// Like [`Frame::encode`], appending to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.command.as_str().as_bytes());
        out.push(b'\n');
        let escape = self.command.escapes_headers();
        for (name, value) in &self.headers {
            if escape {
                escape_into(name, out);
                out.push(b':');
                escape_into(value, out);
            } else {
                sanitize_into(name, true, out);
                out.push(b':');
                sanitize_into(value, false, out);
            }
            out.push(b'\n');
        }
        if self.body.contains(&0) && self.header("content-length").is_none() {
            out.extend_from_slice(b"content-length:");
            out.extend_from_slice(self.body.len().to_string().as_bytes());
            out.push(b'\n');
        }
        out.push(b'\n');
        out.extend_from_slice(&self.body);
        out.push(0);
    }

    fn encoded_len_hint(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 2)
            .sum();
        self.command.as_str().len() + 1 + headers + 1 + self.body.len() + 1
    }
}

fn escape_into(s: &str, out: &mut Vec<u8>) {
    for &b in s.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b':' => out.extend_from_slice(b"\\c"),
            _ => out.push(b),
        }
    }
}

fn sanitize_into(s: &str, is_name: bool, out: &mut Vec<u8>) {
    for &b in s.as_bytes() {
        match b {
            b'\r' | b'\n' => out.push(b' '),
            b':' if is_name => out.push(b'_'),
            _ => out.push(b),
        }
    }
}

/// Size limits the decoder enforces on every frame.
///
/// All sizes are in octets as received (before unescaping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Whole frame: from the first byte of the command to the terminating NUL
    /// inclusive (heart-beat EOLs between frames are not counted).
    pub max_frame_bytes: usize,
    /// Number of header lines in one frame.
    pub max_headers: usize,
    /// One header line, without its EOL.
    pub max_header_bytes: usize,
    /// The body (also caps a declared `content-length`).
    pub max_body_bytes: usize,
}

impl Default for Limits {
    /// 64 KiB frames (Spring's default message size limit), 32 headers, 4 KiB per
    /// header line, 64 KiB body (so the frame limit is the one that binds).
    fn default() -> Self {
        Limits {
            max_frame_bytes: 64 * 1024,
            max_headers: 32,
            max_header_bytes: 4 * 1024,
            max_body_bytes: 64 * 1024,
        }
    }
}

impl Limits {
    /// Upper bound on the bytes a [`Decoder`] keeps allocated for a frame in
    /// progress (heap capacity of its buffers, excluding allocator overhead):
    ///
    /// `max_frame_bytes + max(max_header_bytes + 1, 12) + max_headers * size_of::<(String, String)>()`
    ///
    /// The frame term covers the decoded headers and the body (unescaping only
    /// shrinks, and neither buffer over-allocates past its limit); the line term is the
    /// reusable buffer of the command or header line being read (12 is the longest
    /// command line, `UNSUBSCRIBE\r`); the last term is the header
    /// table itself.
    pub fn max_buffered_bytes(&self) -> usize {
        self.max_frame_bytes
            .saturating_add(
                self.max_header_bytes
                    .saturating_add(1)
                    .max(MAX_COMMAND_LINE),
            )
            .saturating_add(
                self.max_headers
                    .saturating_mul(std::mem::size_of::<(String, String)>()),
            )
    }
}

/// Why a frame was refused. Every variant is fatal for the connection: STOMP has no
/// way to resynchronise after a malformed frame, so the server sends an `ERROR`
/// frame whose `message` header is this error's [`Display`](fmt::Display) text, and
/// closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A frame whose body was delimited by `content-length` was not followed by the
    /// terminating NUL; or [`Decoder::finish`] was called (the connection ended) with
    /// a frame only partly received.
    MissingNul,
    /// The frame exceeded [`Limits::max_frame_bytes`] (before its NUL was seen).
    FrameTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body, or the declared `content-length`, exceeded [`Limits::max_body_bytes`].
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// More than [`Limits::max_headers`] header lines.
    TooManyHeaders {
        /// The limit.
        limit: usize,
    },
    /// A header line longer than [`Limits::max_header_bytes`].
    HeaderTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// A backslash in a header not followed by `r`, `n`, `c` or `\`. `escape` is the
    /// byte after the backslash, `None` if the backslash ended the name or value.
    BadEscape {
        /// The byte following the backslash.
        escape: Option<u8>,
    },
    /// The command line is not one of the 15 STOMP 1.2 commands.
    UnknownCommand,
    /// A header line that is not `name:value` (no colon, empty name, or a bare CR).
    MalformedHeader {
        /// What was wrong, for the error message.
        reason: &'static str,
    },
    /// `content-length` is not a plain non-negative decimal number.
    BadContentLength,
    /// A header name or value is not valid UTF-8.
    InvalidUtf8,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::MissingNul => f.write_str("frame not terminated by a NUL octet"),
            FrameError::FrameTooLarge { limit } => {
                write!(f, "frame exceeds the maximum size of {limit} bytes")
            }
            FrameError::BodyTooLarge { limit } => {
                write!(f, "frame body exceeds the maximum size of {limit} bytes")
            }
            FrameError::TooManyHeaders { limit } => {
                write!(f, "frame has more than {limit} headers")
            }
            FrameError::HeaderTooLong { limit } => {
                write!(f, "header line exceeds the maximum length of {limit} bytes")
            }
            FrameError::BadEscape { escape: Some(b) } if b.is_ascii_graphic() => {
                write!(
                    f,
                    "undefined escape sequence '\\{}' in header",
                    char::from(*b)
                )
            }
            FrameError::BadEscape { escape: Some(b) } => {
                write!(f, "undefined escape sequence '\\' + 0x{b:02x} in header")
            }
            FrameError::BadEscape { escape: None } => {
                f.write_str("header ends with an incomplete escape sequence")
            }
            FrameError::UnknownCommand => f.write_str("unknown STOMP command"),
            FrameError::MalformedHeader { reason } => write!(f, "malformed header: {reason}"),
            FrameError::BadContentLength => {
                f.write_str("content-length header is not a valid non-negative integer")
            }
            FrameError::InvalidUtf8 => f.write_str("header is not valid UTF-8"),
        }
    }
}

impl Error for FrameError {}

/// What the decoder produced from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A complete frame.
    Frame(Frame),
    /// One EOL (`\n` or `\r\n`) outside a frame: a heart-beat, or one of the optional
    /// EOLs after a frame's NUL (the spec makes them indistinguishable, and both prove
    /// the peer is alive).
    Heartbeat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames: EOLs are heart-beats, anything else starts a command line.
    Idle,
    /// Reading the command line into `line`.
    Command,
    /// Reading header lines into `line`.
    Headers,
    /// Reading the body (up to `content_length`, or up to the first NUL).
    Body,
    /// `content-length` bytes of body read; the next byte must be NUL.
    Terminator,
    /// An error was returned; every call returns it again until [`Decoder::reset`].
    Failed,
}

/// Incremental STOMP 1.2 decoder for one connection.
///
/// Feed it the bytes of each WebSocket message in order:
///
/// ```ignore
/// let mut input: &[u8] = &message;
/// while let Some(item) = decoder.decode(&mut input)? {
///     match item {
///         Item::Frame(frame) => handle(frame),
///         Item::Heartbeat => {} // any received byte already proves liveness
///     }
/// }
/// // `input` is now empty; a partial frame, if any, is kept for the next message.
/// ```
///
/// Errors are sticky: once a call fails, every later call returns the same error
/// (STOMP cannot resynchronise; the connection must be closed) until
/// [`Decoder::reset`].
///
/// Memory: the decoder copies only the frame in progress, never more than
/// [`Limits::max_buffered_bytes`] (the input slice is the caller's).
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    state: State,
    error: Option<FrameError>,
    /// Raw bytes of the command or header line being read (without LF).
    line: Vec<u8>,
    command: Option<Command>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    content_length: Option<usize>,
    /// Raw bytes of the current frame consumed so far.
    frame_bytes: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(Limits::default())
    }
}

impl Decoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            state: State::Idle,
            error: None,
            line: Vec::new(),
            command: None,
            headers: Vec::new(),
            body: Vec::new(),
            content_length: None,
            frame_bytes: 0,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Consumes bytes from the front of `input` until one item is complete, and
    /// returns it with `input` advanced past it. Returns `Ok(None)` once `input` is
    /// empty, keeping any partial frame for the next call.
    ///
    /// On error, `input` is left somewhere inside the offending frame; the decoder is
    /// failed (see [`Decoder`]).
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Item>, FrameError> {
        if let Some(err) = &self.error {
            return Err(err.clone());
        }
        match self.step(input) {
            Ok(item) => Ok(item),
            Err(err) => {
                self.fail();
                self.error = Some(err.clone());
                Err(err)
            }
        }
    }

    /// Iterator over the items in `input` (all of it is consumed unless an error
    /// occurs; the error is the iterator's last element).
    pub fn feed<'d, 'i>(&'d mut self, input: &'i [u8]) -> Feed<'d, 'i> {
        Feed {
            decoder: self,
            input,
            done: false,
        }
    }

    /// Tells the decoder the stream ended (the WebSocket closed). Returns
    /// [`FrameError::MissingNul`] if a frame was only partly received.
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(err) = &self.error {
            return Err(err.clone());
        }
        if self.in_frame() {
            Err(FrameError::MissingNul)
        } else {
            Ok(())
        }
    }

    /// True while a frame has been started but not completed.
    pub fn in_frame(&self) -> bool {
        matches!(
            self.state,
            State::Command | State::Headers | State::Body | State::Terminator
        )
    }

    /// Forgets any partial frame and any error.
    pub fn reset(&mut self) {
        self.fail();
        self.state = State::Idle;
        self.error = None;
    }

    /// Heap bytes currently reserved by the decoder's buffers. Always at most
    /// [`Limits::max_buffered_bytes`]; exposed so tests and metrics can check it.
    pub fn buffered_bytes(&self) -> usize {
        let strings: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.capacity() + v.capacity())
            .sum();
        self.line.capacity()
            + self.body.capacity()
            + strings
            + self.headers.capacity() * std::mem::size_of::<(String, String)>()
    }

    /// Drops the partial frame's buffers (used on error and reset).
    fn fail(&mut self) {
        self.state = State::Failed;
        self.line = Vec::new();
        self.headers = Vec::new();
        self.body = Vec::new();
        self.command = None;
        self.content_length = None;
        self.frame_bytes = 0;
    }

    fn step(&mut self, input: &mut &[u8]) -> Result<Option<Item>, FrameError> {
        loop {
            let Some(&first) = input.first() else {
                return Ok(None);
            };
            match self.state {
                State::Failed => unreachable!("decode() returns the stored error first"),
                State::Idle => {
                    if first == b'\n' {
                        *input = &input[1..];
                        return Ok(Some(Item::Heartbeat));
                    }
                    // Anything else starts a command line; "\r\n" is recognised as a
                    // heart-beat when that line turns out to be empty.
                    self.state = State::Command;
                    self.frame_bytes = 0;
                }
                State::Command | State::Headers => {
                    if let Some(item) = self.read_line(input)? {
                        return Ok(Some(item));
                    }
                }
                State::Body => {
                    if let Some(frame) = self.read_body(input)? {
                        return Ok(Some(Item::Frame(frame)));
                    }
                }
                State::Terminator => {
                    if first != 0 {
                        return Err(FrameError::MissingNul);
                    }
                    *input = &input[1..];
                    self.frame_bytes += 1;
                    return Ok(Some(Item::Frame(self.take_frame()?)));
                }
            }
        }
    }

    /// Reads (part of) a command or header line. Returns an item only for a bare
    /// `\r\n` between frames (a heart-beat).
    ///
    /// Limits are checked byte by byte, in a fixed order, *before* the bytes are
    /// copied. Besides bounding memory, this makes the outcome independent of how
    /// the input is split: the same bytes always give the same frames and the same
    /// error, whether they arrive in one WebSocket message or one byte at a time.
    fn read_line(&mut self, input: &mut &[u8]) -> Result<Option<Item>, FrameError> {
        let command = self.state == State::Command;
        let max_line = self.limits.max_header_bytes;
        let mut newline = None;
        for (k, &b) in input.iter().enumerate() {
            if command {
                // The frame size is checked once the command line ends: it is at most
                // MAX_COMMAND_LINE bytes and may yet turn out to be a "\r\n" heart-beat.
                if b == b'\n' {
                    newline = Some(k);
                    break;
                }
                if self.line.len() >= MAX_COMMAND_LINE {
                    return Err(FrameError::UnknownCommand);
                }
                extend_capped(&mut self.line, &[b], MAX_COMMAND_LINE);
                if !is_command_line_prefix(&self.line) {
                    return Err(FrameError::UnknownCommand);
                }
                continue;
            }
            // Position of `b` in the line and in the frame.
            let p = self.line.len() + k;
            let fb = self.frame_bytes + k;
            if fb >= self.limits.max_frame_bytes {
                return Err(FrameError::FrameTooLarge {
                    limit: self.limits.max_frame_bytes,
                });
            }
            if b == b'\n' {
                newline = Some(k);
                break;
            }
            // Refuse the header one too many as soon as its first byte shows it is
            // a header and not the blank line that ends the header block.
            if p == 0 && b != b'\r' && self.headers.len() >= self.limits.max_headers {
                return Err(FrameError::TooManyHeaders {
                    limit: self.limits.max_headers,
                });
            }
            // A line may take one byte more than the limit only if that byte is the
            // CR of a CRLF whose LF has not arrived yet.
            if p > max_line || (p == max_line && b != b'\r') {
                return Err(FrameError::HeaderTooLong { limit: max_line });
            }
        }

        let chunk_len = newline.unwrap_or(input.len());
        if !command {
            // The command line was copied byte by byte above.
            extend_capped(&mut self.line, &input[..chunk_len], max_line + 1);
        }
        let consumed = chunk_len + usize::from(newline.is_some());
        self.frame_bytes += consumed;
        *input = &input[consumed..];
        if newline.is_none() {
            return Ok(None);
        }

        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        if command {
            if self.line.is_empty() {
                // "\r\n" between frames.
                self.state = State::Idle;
                self.frame_bytes = 0;
                return Ok(Some(Item::Heartbeat));
            }
            let command = Command::from_bytes(&self.line).ok_or(FrameError::UnknownCommand)?;
            self.check_frame_size(0)?;
            self.command = Some(command);
            self.line.clear();
            self.state = State::Headers;
            return Ok(None);
        }

        if self.line.is_empty() {
            self.end_headers()?;
        } else {
            self.parse_header()?;
            self.line.clear();
        }
        Ok(None)
    }

    /// Parses `self.line` (a complete, non-empty header line without EOL).
    fn parse_header(&mut self) -> Result<(), FrameError> {
        if self.headers.len() >= self.limits.max_headers {
            return Err(FrameError::TooManyHeaders {
                limit: self.limits.max_headers,
            });
        }
        let line = &self.line[..];
        if line.contains(&b'\r') {
            return Err(FrameError::MalformedHeader {
                reason: "bare CR in header line",
            });
        }
        // Escaped colons are `\c`, so the first raw colon always separates the name
        // from the value; later raw colons belong to the value (STOMP 1.2 permits
        // them there, and CONNECT frames rely on it, e.g. `host:example.com:61613`).
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(FrameError::MalformedHeader {
                reason: "missing ':' separator",
            })?;
        if colon == 0 {
            return Err(FrameError::MalformedHeader {
                reason: "empty header name",
            });
        }
        let escape = self.command.is_none_or(|c| c.escapes_headers());
        let name = decode_header_text(&line[..colon], escape)?;
        let value = decode_header_text(&line[colon + 1..], escape)?;
        if self.headers.len() == self.headers.capacity() {
            let target = (self.headers.capacity() * 2)
                .max(4)
                .min(self.limits.max_headers)
                .max(self.headers.len() + 1);
            self.headers.reserve_exact(target - self.headers.len());
        }
        self.headers.push((name, value));
        Ok(())
    }

    /// Blank line seen: works out how the body is delimited.
    fn end_headers(&mut self) -> Result<(), FrameError> {
        // Only the first content-length counts (repeated headers: first wins).
        let declared = self
            .headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.as_str());
        self.content_length = None;
        self.state = State::Body;
        if let Some(value) = declared {
            let len = parse_content_length(value)?;
            if len > self.limits.max_body_bytes as u64 {
                return Err(FrameError::BodyTooLarge {
                    limit: self.limits.max_body_bytes,
                });
            }
            let len = len as usize;
            // Body plus NUL must fit: refuse now rather than after buffering it.
            self.check_frame_size(len.saturating_add(1))?;
            self.body.reserve_exact(len);
            self.content_length = Some(len);
            if len == 0 {
                self.state = State::Terminator;
            }
        }
        Ok(())
    }

    fn read_body(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, FrameError> {
        if let Some(len) = self.content_length {
            let take = (len - self.body.len()).min(input.len());
            // Within limits: checked against the declared length in end_headers.
            self.body.extend_from_slice(&input[..take]);
            self.frame_bytes += take;
            *input = &input[take..];
            if self.body.len() == len {
                self.state = State::Terminator;
            }
            return Ok(None);
        }

        // Same per-byte semantics as header lines, computed per chunk: a byte at
        // offset `k` of `input` overflows the frame if `k >= room_frame` (checked
        // first), and a non-NUL byte overflows the body if `k >= room_body`.
        let room_frame = self.limits.max_frame_bytes - self.frame_bytes;
        let room_body = self.limits.max_body_bytes - self.body.len();
        let first_bad = room_frame.min(room_body);
        let window = &input[..input.len().min(room_frame)];
        let nul = window.iter().position(|&b| b == 0);
        let chunk_len = nul.unwrap_or(input.len());
        if chunk_len > first_bad {
            return Err(if first_bad == room_frame {
                FrameError::FrameTooLarge {
                    limit: self.limits.max_frame_bytes,
                }
            } else {
                FrameError::BodyTooLarge {
                    limit: self.limits.max_body_bytes,
                }
            });
        }
        // Never reserve more than the body may still grow to, so that headers plus
        // body capacity stay within the frame limit.
        let cap = self.limits.max_body_bytes.min(self.body.len() + room_frame);
        extend_capped(&mut self.body, &input[..chunk_len], cap);
        let consumed = chunk_len + usize::from(nul.is_some());
        self.frame_bytes += consumed;
        *input = &input[consumed..];
        nul.map(|_| self.take_frame()).transpose()
    }

    fn check_frame_size(&self, more: usize) -> Result<(), FrameError> {
        if self.frame_bytes.saturating_add(more) > self.limits.max_frame_bytes {
            Err(FrameError::FrameTooLarge {
                limit: self.limits.max_frame_bytes,
            })
        } else {
            Ok(())
        }
    }

    /// Hands over the frame just completed. A body is only ever read after a command line,
    /// so the command is always there; should that ever not hold, the frame is reported as
    /// malformed rather than taking the process down.
    fn take_frame(&mut self) -> Result<Frame, FrameError> {
        self.state = State::Idle;
        self.frame_bytes = 0;
        self.content_length = None;
        self.line.clear();
        let command = self.command.take().ok_or(FrameError::UnknownCommand)?;
        Ok(Frame {
            command,
            headers: std::mem::take(&mut self.headers),
            body: std::mem::take(&mut self.body),
        })
    }
}

/// Iterator returned by [`Decoder::feed`].
#[derive(Debug)]
pub struct Feed<'d, 'i> {
    decoder: &'d mut Decoder,
    input: &'i [u8],
    done: bool,
}

impl Feed<'_, '_> {
    /// The input not consumed yet (empty after the iterator is exhausted, unless it
    /// stopped on an error).
    pub fn remaining(&self) -> &[u8] {
        self.input
    }
}

impl Iterator for Feed<'_, '_> {
    type Item = Result<Item, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.decoder.decode(&mut self.input) {
            Ok(Some(item)) => Some(Ok(item)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(err) => {
                self.done = true;
                Some(Err(err))
            }
        }
    }
}

/// Appends `data` to `v` without letting the capacity pass `cap` (the usual
/// doubling growth could otherwise reserve up to twice the limit).
fn extend_capped(v: &mut Vec<u8>, data: &[u8], cap: usize) {
    let needed = v.len() + data.len();
    debug_assert!(needed <= cap, "limit checks must run before buffering");
    if needed > v.capacity() {
        let target = v.capacity().saturating_mul(2).max(64).min(cap).max(needed);
        v.reserve_exact(target - v.len());
    }
    v.extend_from_slice(data);
}

/// Unescapes (if `escape`) and UTF-8-validates a header name or value.
fn decode_header_text(raw: &[u8], escape: bool) -> Result<String, FrameError> {
    let bytes = if escape && raw.contains(&b'\\') {
        let mut out = Vec::with_capacity(raw.len());
        let mut iter = raw.iter();
        while let Some(&b) = iter.next() {
            if b != b'\\' {
                out.push(b);
                continue;
            }
            // STOMP 1.2: "Undefined escape sequences such as \t MUST be treated as a
            // fatal protocol error." Guessing would let two parties read the same
            // header differently.
            out.push(match iter.next() {
                Some(b'r') => b'\r',
                Some(b'n') => b'\n',
                Some(b'c') => b':',
                Some(b'\\') => b'\\',
                other => {
                    return Err(FrameError::BadEscape {
                        escape: other.copied(),
                    })
                }
            });
        }
        out
    } else {
        raw.to_vec()
    };
    String::from_utf8(bytes).map_err(|_| FrameError::InvalidUtf8)
}

/// Strict `content-length`: ASCII digits only (no sign, no spaces: STOMP 1.2 does
/// not trim header values). Returns a saturated value for absurdly long numbers so
/// that they are reported as too large rather than malformed.
fn parse_content_length(value: &str) -> Result<u64, FrameError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FrameError::BadContentLength);
    }
    Ok(value.bytes().fold(0u64, |acc, b| {
        acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

#[cfg(test)]
// An explicit path: the fuzz target includes this file with `#[path]`, which makes rustc
// resolve a bare `mod tests;` next to it (`stomp/tests.rs`) instead of in `frame/`. The
// explicit path is relative to this file's directory either way.
#[path = "frame/tests.rs"]
mod tests;
