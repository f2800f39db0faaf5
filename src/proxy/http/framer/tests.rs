//! Framing checks on byte strings: what passes untouched, what is refused and how much of
//! a pipelined stream survives a refusal.

use super::*;

fn run(chunks: &[&[u8]]) -> (Vec<u8>, Option<Verdict>) {
    let mut f = Framer::new(Limits::default());
    let mut out = Vec::new();
    for c in chunks {
        if let Err(v) = f.push(c) {
            out.extend_from_slice(&f.take(usize::MAX));
            return (out, Some(v));
        }
        out.extend_from_slice(&f.take(usize::MAX));
    }
    (out, None)
}

#[test]
fn good_requests_pass_unchanged() {
    let reqs: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nhost: a\r\n\r\n",
        b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello",
        b"POST /c HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nx-trailer: t\r\n\r\n",
        b"\r\nGET /after-blank HTTP/1.1\r\nhost: a\r\n\r\n",
    ];
    let all: Vec<u8> = reqs.concat();
    assert_eq!(run(&[&all]), (all.clone(), None));
    // Byte by byte, too.
    let bytes: Vec<&[u8]> = all.chunks(1).collect();
    assert_eq!(run(&bytes), (all.clone(), None));
}

#[test]
fn smuggling_shapes_are_refused_before_release() {
    for (req, detail) in [
        (&b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"[..], "both content-length and transfer-encoding"),
        (b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ncontent-length: 4\r\n\r\nabcd", "duplicate content-length"),
        (b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: +4\r\n\r\nabcd", "malformed content-length"),
        (b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 4, 4\r\n\r\nabcd", "malformed content-length"),
        (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: xchunked\r\n\r\n", "transfer-encoding other than chunked"),
        (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked, identity\r\n\r\n", "transfer-encoding other than chunked"),
        (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n", "repeated transfer-encoding"),
        (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhi\r\n0\r\n\r\n", "bad chunk size"),
        (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n-1\r\n", "bad chunk size"),
        (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhiXX", "chunk data not followed by CRLF"),
        (b"POST / HTTP/1.0\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n", "transfer-encoding in HTTP/1.0"),
    ] {
        let (out, v) = run(&[req]);
        let v = v.unwrap_or_else(|| panic!("accepted {:?}", String::from_utf8_lossy(req)));
        assert_eq!((v.status(), v.detail, v.clean), (400, detail, true));
        assert!(out.is_empty(), "released {:?}", String::from_utf8_lossy(&out));
    }
}

#[test]
fn control_bytes_in_headers_are_refused() {
    for req in [
        &b"GET / HTTP/1.1\r\nhost: a\r\nx: a\0b\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nhost: a\r\nx: a\rb\r\n\r\n",
        b"GET /\0 HTTP/1.1\r\nhost: a\r\n\r\n",
        b"G@T / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
    ] {
        let (out, v) = run(&[req]);
        assert_eq!(
            v.map(|v| v.status()),
            Some(400),
            "{:?}",
            String::from_utf8_lossy(req)
        );
        assert!(out.is_empty());
    }
}

#[test]
fn size_limits() {
    let many: String = (0..101).map(|i| format!("x-h{i}: v\r\n")).collect();
    let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
    assert_eq!(run(&[req.as_bytes()]).1.map(|v| v.status()), Some(431));
    let big = format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "a".repeat(70 * 1024));
    assert_eq!(run(&[big.as_bytes()]).1.map(|v| v.status()), Some(431));
    let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(9 * 1024));
    assert_eq!(run(&[long.as_bytes()]).1.map(|v| v.status()), Some(414));
    // 100 headers is fine.
    let ok: String = (0..99).map(|i| format!("x-h{i}: v\r\n")).collect();
    let req = format!("GET / HTTP/1.1\r\nhost: a\r\n{ok}\r\n");
    assert_eq!(run(&[req.as_bytes()]).1, None);
}

#[test]
fn a_bad_request_after_good_ones_keeps_the_good_ones() {
    let good = b"GET /1 HTTP/1.1\r\nhost: a\r\n\r\n";
    let bad =
        b"POST /2 HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
    let (out, v) = run(&[&[&good[..], &bad[..]].concat()]);
    assert_eq!(out, good);
    assert!(v.unwrap().clean);
}

#[test]
fn a_bad_chunk_after_the_head_was_handed_out_is_not_clean() {
    let head = b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n";
    let (out, v) = run(&[head, b"5\r\nhello\r\n", b"zz\r\n"]);
    assert!(out.starts_with(head));
    let v = v.unwrap();
    assert_eq!((v.status(), v.clean), (400, false));
}

#[test]
fn upgrade_holds_what_follows_until_answered() {
    let head = b"GET /ws HTTP/1.1\r\nhost: a\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n";
    let frames = b"\x81\x05hello-binary-frames\r\n\r\n";
    // Switched: the held bytes and everything after pass unchecked.
    let mut f = Framer::new(Limits::default());
    f.push(&[&head[..], &frames[..]].concat()).unwrap();
    assert_eq!(&f.take(usize::MAX)[..], &head[..]);
    assert!(f.awaiting_upgrade());
    f.resolve_upgrade(true).unwrap();
    f.push(b"more raw bytes").unwrap();
    assert_eq!(
        &f.take(usize::MAX)[..],
        &[&frames[..], b"more raw bytes"].concat()[..]
    );

    // Not switched (an h2c upgrade stripped by the proxy): the next request on the
    // connection is checked as ever, so a smuggling shape after it is still refused.
    let h2c = b"GET / HTTP/1.1\r\nhost: a\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n";
    let good = b"GET /next HTTP/1.1\r\nhost: a\r\n\r\n";
    let bad = b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
    let mut f = Framer::new(Limits::default());
    f.push(&[&h2c[..], &good[..]].concat()).unwrap();
    assert_eq!(&f.take(usize::MAX)[..], &h2c[..]);
    f.resolve_upgrade(false).unwrap();
    assert_eq!(&f.take(usize::MAX)[..], &good[..]);
    let v = f.push(bad).unwrap_err();
    assert_eq!(v.detail, "both content-length and transfer-encoding");
}
