//! SPIFFE identities (`spiffe://<trust-domain>/<path>`) and the allow-list patterns built
//! from them.

use std::fmt;

/// A parsed SPIFFE ID. Kept as the original string (shared, so a clone on the request path
/// is a reference count, not an allocation) plus the trust-domain boundary, so comparisons
/// are plain string compares.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    uri: std::sync::Arc<str>,
    td_end: usize,
}

impl Identity {
    /// Parses `spiffe://td/path`; the trust domain is lowercase letters, digits, `.-_`, and
    /// the path is non-empty segments of the same plus uppercase.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{s:?} is not a SPIFFE ID ({why})");
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("must start with spiffe://"))?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if td.is_empty() {
            return Err(bad("empty trust domain"));
        }
        if !td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(bad("trust domain may hold only a-z 0-9 . - _"));
        }
        if path.is_empty() || path == "/" {
            return Err(bad("a workload ID needs a path"));
        }
        for seg in path[1..].split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(bad("empty, . or .. path segment"));
            }
            if !seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                return Err(bad("path may hold only a-z A-Z 0-9 . - _"));
            }
        }
        Ok(Identity {
            uri: std::sync::Arc::from(s),
            td_end: "spiffe://".len() + td.len(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.uri
    }

    pub fn trust_domain(&self) -> &str {
        &self.uri["spiffe://".len()..self.td_end]
    }

    /// The path after the trust domain, starting with `/`.
    pub fn path(&self) -> &str {
        &self.uri[self.td_end..]
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

/// One entry of an inbound port's `allow` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowRule {
    Exact(Identity),
    /// `spiffe://td/ns/<ns>/*`: every identity of that namespace; holds the prefix up to
    /// and including the last `/`.
    Prefix(String),
}

impl AllowRule {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(base) = s.strip_suffix("/*") {
            // Validate the prefix as if it named an identity, then keep it with its slash.
            let id = Identity::parse(base)?;
            let segs: Vec<&str> = id.path()[1..].split('/').collect();
            if segs.len() != 2 || segs[0] != "ns" {
                return Err(format!(
                    "{s:?} is not an allowed pattern (wildcards take the form spiffe://<td>/ns/<namespace>/*)"
                ));
            }
            return Ok(AllowRule::Prefix(format!("{base}/")));
        }
        Identity::parse(s).map(AllowRule::Exact)
    }

    pub fn matches(&self, id: &Identity) -> bool {
        match self {
            AllowRule::Exact(want) => want == id,
            AllowRule::Prefix(p) => id.as_str().starts_with(p.as_str()),
        }
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowRule::Exact(id) => id.fmt(f),
            AllowRule::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

impl serde::Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri)
    }
}

impl serde::Serialize for AllowRule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_workload_ids() {
        let id = Identity::parse("spiffe://cluster.local/ns/default/sa/web")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/default/sa/web");
    }

    #[test]
    fn rejects_bad_ids() {
        for bad in [
            "http://cluster.local/ns/a",
            "spiffe://",
            "spiffe:///ns/a",
            "spiffe://Cluster.local/ns/a",
            "spiffe://cluster.local",
            "spiffe://cluster.local/",
            "spiffe://cluster.local/ns//a",
            "spiffe://cluster.local/ns/../a",
            "spiffe://cluster.local/ns/a b",
        ] {
            assert!(Identity::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn namespace_wildcards() {
        let rule = AllowRule::parse("spiffe://td/ns/prod/*").unwrap_or_else(|e| panic!("{e}"));
        let yes = Identity::parse("spiffe://td/ns/prod/sa/a").unwrap_or_else(|e| panic!("{e}"));
        let no =
            Identity::parse("spiffe://td/ns/production/sa/a").unwrap_or_else(|e| panic!("{e}"));
        assert!(rule.matches(&yes));
        assert!(!rule.matches(&no));
        assert!(AllowRule::parse("spiffe://td/*").is_err());
        assert!(AllowRule::parse("spiffe://td/ns/a/sa/*").is_err());
    }
}
