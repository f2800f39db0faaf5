use http::header::{HeaderMap, HeaderValue};

use super::*;

const TID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SID: &str = "00f067aa0ba902b7";

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(
            *k,
            HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
        );
    }
    h
}

fn hex(b: &[u8]) -> String {
    Hex(b).to_string()
}

#[test]
fn w3c_traceparent() {
    let c = extract(&headers(&[("traceparent", &format!("00-{TID}-{SID}-01"))]));
    let c = c.unwrap_or_else(|| panic!("not parsed"));
    assert_eq!(c.format, Format::W3c);
    assert_eq!(c.sampled, Some(true));
    let ids = c.ids.unwrap_or_else(|| panic!("no ids"));
    assert_eq!(hex(&ids.trace), TID);
    assert_eq!(hex(&ids.span), SID);
    let c = extract(&headers(&[("traceparent", &format!("00-{TID}-{SID}-00"))]));
    assert_eq!(c.and_then(|c| c.sampled), Some(false));
    // A later version may carry more fields.
    let c = extract(&headers(&[(
        "traceparent",
        &format!("01-{TID}-{SID}-01-xyz"),
    )]));
    assert!(c.is_some());
}

#[test]
fn malformed_contexts_are_ignored() {
    for bad in [
        format!("00-{TID}-{SID}-1"),
        format!("00-{}-{SID}-01", "0".repeat(32)),
        format!("00-{TID}-{}-01", "0".repeat(16)),
        format!("ff-{TID}-{SID}-01"),
        format!("00-{TID}-{SID}-01-extra"),
        format!("00_{TID}_{SID}_01"),
        format!("00-{}-{SID}-01", "g".repeat(32)),
        "garbage".to_string(),
    ] {
        assert_eq!(extract(&headers(&[("traceparent", &bad)])), None, "{bad}");
    }
    for bad in [
        "x",
        "abc-def",
        &format!("{TID}-{SID}-2"),
        &format!("{TID}-zz"),
    ] {
        assert_eq!(extract(&headers(&[("b3", bad)])), None, "{bad}");
    }
    assert_eq!(
        extract(&headers(&[
            ("x-b3-traceid", "nothex"),
            ("x-b3-spanid", SID)
        ])),
        None
    );
    // A bad traceparent falls through to a good B3 header.
    let c = extract(&headers(&[
        ("traceparent", "junk"),
        ("b3", &format!("{TID}-{SID}-1")),
    ]));
    assert_eq!(c.map(|c| c.format), Some(Format::B3Single));
}

#[test]
fn b3_single_and_multi() {
    let c = extract(&headers(&[("b3", &format!("{TID}-{SID}-1-{SID}"))]));
    assert_eq!(
        c.map(|c| (c.format, c.sampled)),
        Some((Format::B3Single, Some(true)))
    );
    let c = extract(&headers(&[("b3", &format!("{TID}-{SID}"))]));
    assert_eq!(c.and_then(|c| c.sampled), None);
    let c = extract(&headers(&[("b3", "0")]));
    assert_eq!(c.map(|c| (c.ids, c.sampled)), Some((None, Some(false))));
    let short = &TID[16..];
    let c = extract(&headers(&[
        ("x-b3-traceid", short),
        ("x-b3-spanid", SID),
        ("x-b3-sampled", "1"),
    ]))
    .unwrap_or_else(|| panic!("not parsed"));
    assert_eq!(c.format, Format::B3Multi);
    let ids = c.ids.unwrap_or_else(|| panic!("no ids"));
    assert!(ids.short);
    assert_eq!(hex(&ids.trace), format!("{}{short}", "0".repeat(16)));
    let c = extract(&headers(&[("x-b3-flags", "1")]));
    assert_eq!(c.map(|c| c.sampled), Some(Some(true)));
}

#[test]
fn inject_keeps_the_format_with_this_hop_as_parent() {
    let trace = [0xab; 16];
    let span = [0x11; 8];
    let parent = [0x22; 8];
    let mut h = HeaderMap::new();
    inject(&mut h, Format::W3c, &trace, false, &span, Some(&parent));
    assert_eq!(
        h["traceparent"],
        format!("00-{}-{}-01", "ab".repeat(16), "11".repeat(8)).as_str()
    );
    let mut h = HeaderMap::new();
    inject(&mut h, Format::B3Single, &trace, true, &span, None);
    assert_eq!(
        h["b3"],
        format!("{}-{}-1", "ab".repeat(8), "11".repeat(8)).as_str()
    );
    let mut h = headers(&[("x-b3-sampled", "0")]);
    inject(&mut h, Format::B3Multi, &trace, false, &span, Some(&parent));
    assert_eq!(h["x-b3-traceid"], "ab".repeat(16).as_str());
    assert_eq!(h["x-b3-spanid"], "11".repeat(8).as_str());
    assert_eq!(h["x-b3-parentspanid"], "22".repeat(8).as_str());
    assert_eq!(h["x-b3-sampled"], "1");
    // What was injected reads back as the same context.
    let c = extract(&h).unwrap_or_else(|| panic!("not parsed"));
    assert_eq!(c.ids.map(|i| i.span), Some(span));
}

#[test]
fn every_byte_is_read_as_hex_only_if_it_is_a_hex_digit() {
    for c in 0..=255u8 {
        let digit = c.is_ascii_hexdigit();
        // In the trace id, the span id and the flags.
        let mut t = format!("00-{TID}-{SID}-01").into_bytes();
        for at in [3, 40, 54] {
            let mut v = t.clone();
            v[at] = c;
            let got = parse_traceparent(&v);
            assert_eq!(got.is_some(), digit, "byte {c:#04x} at {at}");
        }
        t[3] = c;
        if digit {
            // TID starts `4b`: the first byte becomes `<c>b`.
            let want = u8::from_str_radix(&format!("{}b", c as char), 16).unwrap_or(0);
            let got = parse_traceparent(&t)
                .and_then(|c| c.ids)
                .map(|i| i.trace[0]);
            assert_eq!(got, Some(want));
        }
    }
    assert_eq!(decode_byte(b"fF"), Some(0xff));
    assert_eq!(decode_byte(b"f"), None);
    assert_eq!(decode::<2>(b"0A0b"), Some([0x0a, 0x0b]));
}

#[test]
fn the_request_path_scan_finds_what_get_would() {
    let mut h = headers(&[
        ("host", "backend"),
        ("tracestate", "a=1,b=2"),
        ("x-spoke-trace", "FORCE"),
        ("traceparent", &format!("00-{TID}-{SID}-01")),
    ]);
    let found = Found::scan(h.iter_mut());
    assert_eq!(found.force(), (true, true));
    assert_eq!(found.state(), "a=1,b=2");
    assert_eq!(found.incoming(), extract(&h));
    let h = headers(&[
        ("x-spoke-trace", "maybe"),
        ("b3", &format!("{TID}-{SID}-1")),
    ]);
    let found = Found::scan(h.iter());
    assert_eq!(found.force(), (true, false));
    assert_eq!(found.state(), "");
    assert_eq!(found.incoming().map(|c| c.format), Some(Format::B3Single));
    assert_eq!(Found::scan(HeaderMap::new().iter()).force(), (false, false));
}

#[test]
fn a_single_incoming_traceparent_is_replaced_where_it_is() {
    let (trace, span) = ([0xab; 16], [0x11; 8]);
    let want = format!("00-{}-{}-01", "ab".repeat(16), "11".repeat(8));
    let mut h = headers(&[
        ("host", "backend"),
        ("traceparent", &format!("00-{TID}-{SID}-01")),
        ("accept", "*/*"),
    ]);
    let names: Vec<_> = h.keys().cloned().collect();
    assert!(Found::scan(h.iter_mut()).replace_traceparent(&trace, &span));
    assert_eq!(h["traceparent"], want.as_str());
    assert!(
        h["traceparent"].is_sensitive(),
        "kept out of the HPACK table"
    );
    assert_eq!(h.keys().cloned().collect::<Vec<_>>(), names, "same place");
    // None came: it is for `inject` to insert.
    let mut h = headers(&[("host", "backend")]);
    assert!(!Found::scan(h.iter_mut()).replace_traceparent(&trace, &span));
    // Two came: replacing the first would leave the other; `inject` replaces both.
    let mut h = headers(&[("traceparent", &format!("00-{TID}-{SID}-01"))]);
    h.append("traceparent", HeaderValue::from_static("junk"));
    assert!(!Found::scan(h.iter_mut()).replace_traceparent(&trace, &span));
    inject(&mut h, Format::W3c, &trace, false, &span, None);
    let all: Vec<_> = h.get_all("traceparent").iter().collect();
    assert_eq!(all, [want.as_str()]);
}
