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
mod tests {
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
        assert!(wire.starts_with(
            b"MESSAGE\ndestination:/topic/a\\cb\nwe\\\\ird\\cname:line1\\nline2\\r\n"
        ));
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
        let f = one_frame(
            b"CONNECT\naccept-version:1.2\nhost:h\nlogin:a\\nb\npasscode:p\\c\\t:x\n\n\0",
        );
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
        let f =
            one_frame(b"MESSAGE\nfoo:first\nfoo:second\ncontent-length:1\ncontent-length:5\n\nx\0");
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
}
