//! Request path normalisation for authorization (RFC 3986 6.2.2): percent-escapes of
//! unreserved characters decoded (`%2e` is `.`), other escapes upper-cased, `.` and `..`
//! segments removed, repeated slashes merged. Rules match the normalised path and the app
//! receives it, so `/api/../admin` or `/api/%2e%2e/admin` cannot slip past a prefix rule.
//! Encoded slashes and backslashes (`%2F`, `%5C`, `\`) are refused: apps disagree on what
//! they mean, so no answer would be safe.

use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path holds an encoded slash or a backslash")]
    EncodedSlash,
    #[error("the path holds a malformed percent-escape")]
    BadEscape,
}

/// The normalised form of `path` (without its query). Borrows when the path is already
/// normal, which is every path a well-behaved client sends: no allocation then.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        // `*` (OPTIONS) and the like: nothing to normalise.
        return Ok(Cow::Borrowed(path));
    }
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path)?;
    Ok(Cow::Owned(remove_dots(&decoded)))
}

fn is_normal(path: &str) -> bool {
    if path.bytes().any(|b| b == b'%' || b == b'\\') {
        return false;
    }
    let mut segs = path.split('/').skip(1).peekable();
    while let Some(s) = segs.next() {
        let last = segs.peek().is_none();
        if s == "." || s == ".." || (s.is_empty() && !last) {
            return false;
        }
    }
    true
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes escapes of unreserved characters; keeps the rest escaped, upper-cased.
fn decode(path: &str) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => return Err(PathError::EncodedSlash),
            b'%' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let c = h << 4 | l;
                if c == b'/' || c == b'\\' {
                    return Err(PathError::EncodedSlash);
                }
                if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                    out.push(c as char);
                } else {
                    out.push('%');
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(h)]));
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(l)]));
                }
                i += 3;
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Removes `.`/`..` segments and empty ones (merged slashes); a trailing slash stays.
fn remove_dots(path: &str) -> String {
    let mut stack: Vec<&str> = Vec::new();
    let mut trailing = false;
    let mut segs = path.split('/').skip(1).peekable();
    while let Some(s) = segs.next() {
        let last = segs.peek().is_none();
        match s {
            "" | "." => trailing = last,
            ".." => {
                stack.pop();
                trailing = last;
            }
            s => {
                stack.push(s);
                trailing = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &stack {
        out.push('/');
        out.push_str(s);
    }
    if trailing || stack.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p).map(|c| c.into_owned())
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/api",
            "/api/",
            "/api/v1/x.json",
            "/a-b_c~d",
            "*",
            "/..a/b..",
            "/.well-known/x",
        ] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(n("/api/../admin").as_deref(), Ok("/admin"));
        assert_eq!(n("/api/./x").as_deref(), Ok("/api/x"));
        assert_eq!(n("/../../admin").as_deref(), Ok("/admin"));
        assert_eq!(n("//admin").as_deref(), Ok("/admin"));
        assert_eq!(n("/api//x///y").as_deref(), Ok("/api/x/y"));
        assert_eq!(n("/api/..").as_deref(), Ok("/"));
        assert_eq!(n("/api/x/..").as_deref(), Ok("/api/"));
        assert_eq!(n("/api/.").as_deref(), Ok("/api/"));
        assert_eq!(n("/a/b/../../../c/").as_deref(), Ok("/c/"));
    }

    #[test]
    fn escapes() {
        assert_eq!(n("/api/%2e%2e/admin").as_deref(), Ok("/admin"));
        assert_eq!(n("/api/%2E%2E/admin").as_deref(), Ok("/admin"));
        assert_eq!(n("/api/.%2e/admin").as_deref(), Ok("/admin"));
        assert_eq!(n("/%61dmin").as_deref(), Ok("/admin"));
        assert_eq!(n("/a%20b%3f").as_deref(), Ok("/a%20b%3F"));
        assert_eq!(n("/api%2F..%2Fadmin"), Err(PathError::EncodedSlash));
        assert_eq!(n("/api%2f..%2fadmin"), Err(PathError::EncodedSlash));
        assert_eq!(n("/api/%5c..%5cadmin"), Err(PathError::EncodedSlash));
        assert_eq!(n("/api\\..\\admin"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a%2"), Err(PathError::BadEscape));
    }
}
