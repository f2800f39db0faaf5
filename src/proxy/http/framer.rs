//! Strict HTTP/1 request framing, apart from any I/O so it can be tested on byte strings:
//! request heads (size and count limits, malformed lines and header values), and bodies by
//! Content-Length or chunked encoding. It refuses what hyper would tolerate or only catch
//! too late: both Content-Length and Transfer-Encoding, duplicate or malformed
//! Content-Length, obfuscated Transfer-Encoding, framing headers spelled with `_`, and bad
//! chunk sizes.

use std::time::Duration;

use bytes::BytesMut;

use crate::proxy::ErrorKind;

/// The most header slots a head is parsed with (the `max_headers` limit is capped to it).
const MAX_HEADER_SLOTS: usize = 257;

/// Limits on HTTP/1 request heads.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_request_line: usize,
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_request_line: 8 * 1024,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a request was refused: the `x-spoke-error` kind (which also gives the status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub kind: ErrorKind,
    pub detail: &'static str,
    /// Whether the refused request's head never reached hyper, so answering it is safe.
    pub clean: bool,
}

impl Verdict {
    pub fn status(&self) -> u16 {
        self.kind.status().as_u16()
    }
}

const fn bad(detail: &'static str) -> Verdict {
    Verdict {
        kind: ErrorKind::BadRequest,
        detail,
        clean: true,
    }
}

#[derive(Debug, Clone, Copy)]
enum Body {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkCrlf(u8),
    Trailers,
}

#[derive(Debug)]
enum State {
    Head,
    Body(Body),
    /// After an upgrade or CONNECT request: whether bytes that follow are HTTP/1 depends
    /// on the answer (101 or not), so they are held until the server says.
    AwaitUpgrade,
    /// After a switch of protocols: bytes are no longer HTTP/1 requests.
    Passthrough,
}

/// Checks a complete head; returns how the body is framed and whether the connection
/// leaves HTTP/1 after this request (upgrade or CONNECT).
fn check_head(req: &httparse::Request<'_, '_>) -> Result<(Option<Body>, bool), Verdict> {
    let mut cl: Option<u64> = None;
    let mut cl_count = 0;
    let mut te: Option<&[u8]> = None;
    let mut te_count = 0;
    let mut upgrade = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            cl_count += 1;
            let v = h.value;
            if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                return Err(bad("malformed content-length"));
            }
            cl = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok());
            if cl.is_none() {
                return Err(bad("malformed content-length"));
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te_count += 1;
            te = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        } else if h.name.eq_ignore_ascii_case("transfer_encoding")
            || h.name.eq_ignore_ascii_case("content_length")
        {
            // Some servers fold `_` into `-`; a framing header spelled so is a smuggling
            // attempt, not a custom header.
            return Err(bad("framing header name with an underscore"));
        }
    }
    if cl_count > 1 {
        return Err(bad("duplicate content-length"));
    }
    if cl_count > 0 && te_count > 0 {
        return Err(bad("both content-length and transfer-encoding"));
    }
    if te_count > 1 {
        return Err(bad("repeated transfer-encoding"));
    }
    let leaves = upgrade || req.method == Some("CONNECT");
    if let Some(v) = te {
        if req.version != Some(1) {
            return Err(bad("transfer-encoding in HTTP/1.0"));
        }
        if !v.eq_ignore_ascii_case(b"chunked") {
            return Err(bad("transfer-encoding other than chunked"));
        }
        return Ok((Some(Body::ChunkSize), leaves));
    }
    let body = match cl {
        Some(0) | None => None,
        Some(n) => Some(Body::Length(n)),
    };
    Ok((body, leaves))
}

/// Parses a chunk-size line (without CRLF): 1-16 hex digits, optional `;extensions`.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let size = match line.iter().position(|&b| b == b';') {
        Some(i) => &line[..i],
        None => line,
    };
    if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    if line.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(size).ok()?, 16).ok()
}

/// The framing state machine, apart from any I/O so it can be tested on byte strings.
#[derive(Debug)]
pub struct Framer {
    state: State,
    /// Bytes of the current head (or chunk line) not yet validated.
    pending: BytesMut,
    /// Validated bytes hyper may read.
    pub(super) ready: BytesMut,
    /// Where in `ready` the request being checked starts, while none of it has been
    /// handed out; a violation rolls `ready` back to it.
    mark: Option<usize>,
    /// Whether a head has begun (starts the slowloris timer).
    head_started: bool,
    /// After this request's body, stop checking (upgrade or CONNECT).
    leave_after_body: bool,
    pub(super) limits: Limits,
}

impl Framer {
    pub fn new(limits: Limits) -> Self {
        Framer {
            state: State::Head,
            pending: BytesMut::new(),
            ready: BytesMut::new(),
            mark: None,
            head_started: false,
            leave_after_body: false,
            limits,
        }
    }

    fn end_of_request(&mut self) {
        self.mark = None;
        self.state = if self.leave_after_body {
            State::AwaitUpgrade
        } else {
            State::Head
        };
    }

    /// Waiting to learn whether the last request switched protocols.
    pub fn awaiting_upgrade(&self) -> bool {
        matches!(self.state, State::AwaitUpgrade)
    }

    /// The server's answer to the upgrade (or CONNECT) request: switched, and the held
    /// bytes and all that follows pass unchecked; or not, and checking resumes with them
    /// (a refused `Upgrade: h2c` leaves a keep-alive HTTP/1.1 connection still guarded).
    pub fn resolve_upgrade(&mut self, switched: bool) -> Result<(), Verdict> {
        if !self.awaiting_upgrade() {
            return Ok(());
        }
        self.leave_after_body = false;
        let held = self.pending.split().freeze();
        if switched {
            self.state = State::Passthrough;
            self.ready.extend_from_slice(&held);
            Ok(())
        } else {
            self.state = State::Head;
            self.push(&held)
        }
    }

    /// Validates `input` and queues the good bytes. On a violation, drops the offending
    /// request if none of it was handed out yet (`clean`), and stops checking.
    pub fn push(&mut self, input: &[u8]) -> Result<(), Verdict> {
        let before = self.ready.len();
        match self.process(input) {
            Ok(()) => Ok(()),
            Err(mut v) => {
                match self.mark {
                    Some(m) => self.ready.truncate(m),
                    None => {
                        self.ready.truncate(before);
                        v.clean = false;
                    }
                }
                self.state = State::Passthrough;
                Err(v)
            }
        }
    }

    /// Hands out up to `max` validated bytes.
    pub fn take(&mut self, max: usize) -> bytes::Bytes {
        let n = self.ready.len().min(max);
        self.mark = match self.mark {
            Some(m) if n <= m => Some(m - n),
            _ => None,
        };
        self.ready.split_to(n).freeze()
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    pub fn in_partial_head(&self) -> bool {
        self.head_started && matches!(self.state, State::Head)
    }

    fn process(&mut self, mut input: &[u8]) -> Result<(), Verdict> {
        while !input.is_empty() {
            match &mut self.state {
                State::Passthrough => {
                    self.ready.extend_from_slice(input);
                    return Ok(());
                }
                State::AwaitUpgrade => {
                    // The guard stops reading while waiting; this is what came with the
                    // request's last bytes.
                    self.pending.extend_from_slice(input);
                    return Ok(());
                }
                State::Head => {
                    if self.pending.is_empty() {
                        // Blank lines between requests are allowed (RFC 9112 2.2).
                        let skip = input
                            .iter()
                            .take_while(|&&b| b == b'\r' || b == b'\n')
                            .count();
                        self.ready.extend_from_slice(&input[..skip]);
                        input = &input[skip..];
                        if input.is_empty() {
                            return Ok(());
                        }
                        self.mark = Some(self.ready.len());
                        self.head_started = true;
                    }
                    self.pending.extend_from_slice(input);
                    let rest = self.parse_head()?;
                    if let Some(rest) = rest {
                        self.process(&rest)?;
                    }
                    return Ok(());
                }
                State::Body(Body::Length(left)) => {
                    let n = (*left).min(input.len() as u64) as usize;
                    *left -= n as u64;
                    let done = *left == 0;
                    self.ready.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if done {
                        self.end_of_request();
                    }
                }
                State::Body(Body::ChunkSize) | State::Body(Body::Trailers) => {
                    let Some(nl) = input.iter().position(|&b| b == b'\n') else {
                        self.pending.extend_from_slice(input);
                        if self.pending.len() > 4096 {
                            return Err(bad("chunk line too long"));
                        }
                        return Ok(());
                    };
                    self.pending.extend_from_slice(&input[..=nl]);
                    input = &input[nl + 1..];
                    let line = self.pending.split().freeze();
                    let Some(body) = line.strip_suffix(b"\r\n") else {
                        return Err(bad("chunk line without CRLF"));
                    };
                    if matches!(self.state, State::Body(Body::Trailers)) {
                        if body.is_empty() {
                            self.ready.extend_from_slice(&line);
                            self.end_of_request();
                            continue;
                        }
                        if body.contains(&0) || body.contains(&b'\r') || !body.contains(&b':') {
                            return Err(bad("malformed trailer"));
                        }
                    } else {
                        self.state = match chunk_size(body) {
                            None => return Err(bad("bad chunk size")),
                            Some(0) => State::Body(Body::Trailers),
                            Some(n) => State::Body(Body::ChunkData(n)),
                        };
                    }
                    self.ready.extend_from_slice(&line);
                }
                State::Body(Body::ChunkData(left)) => {
                    let n = (*left).min(input.len() as u64) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = State::Body(Body::ChunkCrlf(0));
                    }
                    self.ready.extend_from_slice(&input[..n]);
                    input = &input[n..];
                }
                State::Body(Body::ChunkCrlf(seen)) => {
                    if input[0] != b"\r\n"[*seen as usize] {
                        return Err(bad("chunk data not followed by CRLF"));
                    }
                    *seen += 1;
                    if *seen == 2 {
                        self.state = State::Body(Body::ChunkSize);
                    }
                    self.ready.extend_from_slice(&input[..1]);
                    input = &input[1..];
                }
            }
        }
        Ok(())
    }

    /// Parses the pending head; on completion queues it and returns what followed.
    fn parse_head(&mut self) -> Result<Option<bytes::Bytes>, Verdict> {
        let too_large = Verdict {
            kind: ErrorKind::HeadersTooLarge,
            detail: "header block too large",
            clean: true,
        };
        let too_many = Verdict {
            kind: ErrorKind::TooManyHeaders,
            detail: "too many headers",
            clean: true,
        };
        let line_len = self
            .pending
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(self.pending.len());
        if line_len > self.limits.max_request_line {
            return Err(Verdict {
                kind: ErrorKind::UriTooLong,
                detail: "request line too long",
                clean: true,
            });
        }
        // On the stack: no allocation per request. One slot more than the limit tells
        // "exactly at the limit" from "over it".
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADER_SLOTS];
        let n = (self.limits.max_headers + 1).min(MAX_HEADER_SLOTS);
        let mut req = httparse::Request::new(&mut slots[..n]);
        match req.parse(&self.pending) {
            Ok(httparse::Status::Partial) => {
                if self.pending.len() > self.limits.max_header_bytes {
                    return Err(too_large);
                }
                Ok(None)
            }
            Ok(httparse::Status::Complete(len)) => {
                if len > self.limits.max_header_bytes {
                    return Err(too_large);
                }
                if req.headers.len() > self.limits.max_headers {
                    return Err(too_many);
                }
                let (body, leaves) = check_head(&req)?;
                let rest = self.pending.split_off(len).freeze();
                self.ready.extend_from_slice(&self.pending);
                self.pending.clear();
                self.head_started = false;
                self.leave_after_body = leaves;
                match body {
                    Some(b) => self.state = State::Body(b),
                    None => self.end_of_request(),
                }
                Ok(Some(rest))
            }
            Err(httparse::Error::TooManyHeaders) => Err(too_many),
            Err(_) => Err(bad("malformed request head")),
        }
    }
}

#[cfg(test)]
mod tests;
