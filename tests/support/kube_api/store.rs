//! The test API server's storage, as etcd and the watch cache behave for a client: one
//! resourceVersion counter for every object, a bounded history of changes that watches
//! resume from (older versions are "compacted": a watch from there gets `410 Gone`), list
//! pages with `limit`/`continue`, and label/field selectors with equality terms.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde_json::{json, Value};

/// The kinds this server stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Res {
    Pods,
    Services,
    EndpointSlices,
}

impl Res {
    pub fn from_plural(group: &str, plural: &str) -> Option<Res> {
        match (group, plural) {
            ("", "pods") => Some(Res::Pods),
            ("", "services") => Some(Res::Services),
            ("discovery.k8s.io", "endpointslices") => Some(Res::EndpointSlices),
            _ => None,
        }
    }
    pub fn kind(self) -> &'static str {
        match self {
            Res::Pods => "Pod",
            Res::Services => "Service",
            Res::EndpointSlices => "EndpointSlice",
        }
    }
    pub fn api_version(self) -> &'static str {
        match self {
            Res::EndpointSlices => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }
}

/// One change, as a watch sends it.
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub res: Res,
    pub kind: &'static str,
    pub object: Value,
}

/// What a list or watch asks for.
#[derive(Default, Clone, Debug)]
pub struct Selector {
    pub namespace: Option<String>,
    pub labels: Vec<Term>,
    pub fields: Vec<Term>,
}

#[derive(Clone, Debug)]
pub enum Term {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
}

pub struct Store {
    pub rv: u64,
    /// (resource, namespace, name) -> the object as stored (with kind and apiVersion).
    objects: BTreeMap<(Res, String, String), Value>,
    pub history: Vec<Change>,
    /// Watches from a version below this get `410 Gone`.
    pub oldest: u64,
}

fn meta(o: &Value, f: &str) -> String {
    o["metadata"][f].as_str().unwrap_or_default().to_string()
}

// === impl Store ===

impl Store {
    pub fn new() -> Self {
        Store {
            rv: 100,
            objects: BTreeMap::new(),
            history: Vec::new(),
            oldest: 100,
        }
    }

    /// Creates or replaces an object; `ADDED` or `MODIFIED` to watchers.
    pub fn put(&mut self, res: Res, mut o: Value) -> Change {
        self.rv += 1;
        let key = (res, meta(&o, "namespace"), meta(&o, "name"));
        o["kind"] = json!(res.kind());
        o["apiVersion"] = json!(res.api_version());
        o["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        if o["metadata"]["uid"].is_null() {
            o["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.rv));
        }
        if o["metadata"]["creationTimestamp"].is_null() {
            o["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        let kind = if self.objects.insert(key, o.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.record(res, kind, o)
    }

    /// Deletes an object; `DELETED` (with the object at its deletion version) to watchers.
    pub fn delete(&mut self, res: Res, ns: &str, name: &str) -> Option<Change> {
        let mut o = self
            .objects
            .remove(&(res, ns.to_string(), name.to_string()))?;
        self.rv += 1;
        o["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        Some(self.record(res, "DELETED", o))
    }

    pub fn get(&self, res: Res, ns: &str, name: &str) -> Option<Value> {
        self.objects
            .get(&(res, ns.to_string(), name.to_string()))
            .cloned()
    }

    fn record(&mut self, res: Res, kind: &'static str, object: Value) -> Change {
        let c = Change {
            rv: self.rv,
            res,
            kind,
            object,
        };
        self.history.push(c.clone());
        c
    }

    /// Forgets the history: every watch or continue from before now is too old.
    pub fn compact(&mut self) {
        self.history.clear();
        self.oldest = self.rv;
    }

    /// One page of a list: `(items, continue token)`. `Err` is a too-old continue token.
    pub fn list(
        &self,
        res: Res,
        sel: &Selector,
        limit: Option<usize>,
        cont: Option<&str>,
    ) -> Result<(Vec<Value>, Option<String>), String> {
        let after = match cont {
            None => None,
            Some(c) => {
                let (rv, key) = decode_continue(c).ok_or("invalid continue token")?;
                if rv < self.oldest {
                    return Err("too old".into());
                }
                Some(key)
            }
        };
        let mut items = Vec::new();
        let mut next = None;
        for ((r, ns, name), o) in &self.objects {
            let key = format!("{ns}/{name}");
            if *r != res || after.as_ref().is_some_and(|a| key <= *a) || !sel.matches(o) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                next = items.last().map(|o: &Value| {
                    encode_continue(
                        self.rv,
                        &format!("{}/{}", meta(o, "namespace"), meta(o, "name")),
                    )
                });
                break;
            }
            items.push(o.clone());
        }
        Ok((items, next))
    }
}

fn encode_continue(rv: u64, key: &str) -> String {
    B64.encode(json!({ "v": "meta.k8s.io/v1", "rv": rv, "start": key }).to_string())
}

fn decode_continue(c: &str) -> Option<(u64, String)> {
    let v: Value = serde_json::from_slice(&B64.decode(c).ok()?).ok()?;
    Some((v["rv"].as_u64()?, v["start"].as_str()?.to_string()))
}

// === impl Selector ===

impl Selector {
    /// Parses `a=b,c!=d,e` (`==` too), the equality-based grammar.
    pub fn terms(s: &str) -> Result<Vec<Term>, String> {
        let mut out = Vec::new();
        for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            out.push(if let Some((k, v)) = t.split_once("!=") {
                Term::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                Term::Eq(k.trim().into(), v.trim().into())
            } else if t.contains(' ') || t.contains('(') {
                return Err(format!("unable to parse requirement: {t:?}"));
            } else {
                Term::Exists(t.into())
            });
        }
        Ok(out)
    }

    pub fn matches(&self, o: &Value) -> bool {
        if self
            .namespace
            .as_deref()
            .is_some_and(|n| meta(o, "namespace") != n)
        {
            return false;
        }
        let label = |k: &str| o["metadata"]["labels"][k].as_str().map(str::to_string);
        let field = |k: &str| match k {
            "metadata.name" => Some(meta(o, "name")),
            "metadata.namespace" => Some(meta(o, "namespace")),
            "spec.nodeName" => o["spec"]["nodeName"].as_str().map(str::to_string),
            "status.phase" => o["status"]["phase"].as_str().map(str::to_string),
            _ => None,
        };
        let ok = |terms: &[Term], get: &dyn Fn(&str) -> Option<String>| {
            terms.iter().all(|t| match t {
                Term::Eq(k, v) => get(k).as_deref() == Some(v.as_str()),
                Term::Ne(k, v) => get(k).as_deref() != Some(v.as_str()),
                Term::Exists(k) => get(k).is_some(),
            })
        };
        ok(&self.labels, &label) && ok(&self.fields, &field)
    }
}
