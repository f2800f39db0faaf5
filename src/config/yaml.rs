//! YAML with positions: the file is parsed into a tree whose every node knows its line,
//! column and config path (`clusters[0].endpoints[1].address`), and the serde types of
//! `raw` are read from that tree. So syntax, type and unknown-field errors come out in the
//! same `LINE:COL: path: message` form as the semantic errors of `validate`, and a bad
//! entry is cut out and the rest read again, so one run reports every error it can.

use std::collections::{HashMap, HashSet};

use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};

use super::ConfigError;

/// A problem at a place in a file (line and column from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub line: usize,
    pub col: usize,
    pub error: ConfigError,
}

/// One YAML node and where it is.
#[derive(Debug, Clone)]
pub struct Node {
    pub kind: Kind,
    pub line: usize,
    pub col: usize,
    /// The config path of this node (`""` for the document).
    pub path: String,
}

#[derive(Debug, Clone)]
pub enum Kind {
    /// A scalar; `plain` when unquoted (only plain scalars are numbers, booleans or null).
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

#[derive(Debug, Clone)]
pub struct Key {
    pub name: String,
    pub line: usize,
    pub col: usize,
}

/// Where each config path is in the file, for errors found after parsing.
#[derive(Debug, Clone, Default)]
pub struct Positions(HashMap<String, (usize, usize)>);

impl Positions {
    pub fn of(root: &Node) -> Self {
        let mut map = HashMap::new();
        fn walk(n: &Node, map: &mut HashMap<String, (usize, usize)>) {
            map.insert(n.path.clone(), (n.line, n.col));
            match &n.kind {
                Kind::Scalar { .. } => {}
                Kind::Seq(items) => items.iter().for_each(|i| walk(i, map)),
                Kind::Map(entries) => entries.iter().for_each(|(_, v)| walk(v, map)),
            }
        }
        walk(root, &mut map);
        Positions(map)
    }

    /// The place of `path`, or of its nearest ancestor in the file (a default value has no
    /// place of its own), or 1:1.
    pub fn find(&self, path: &str) -> (usize, usize) {
        let mut p = path;
        loop {
            if let Some(&at) = self.0.get(p) {
                return at;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return self.0.get("").copied().unwrap_or((1, 1)),
            }
        }
    }

    /// Places an error found on the parsed values.
    pub fn locate(&self, error: ConfigError) -> Located {
        let (line, col) = self.find(&error.path);
        Located { line, col, error }
    }
}

// === parsing ===

fn located(line: usize, col: usize, path: &str, message: impl Into<String>) -> Located {
    Located {
        line,
        col,
        error: ConfigError {
            path: path.to_string(),
            message: message.into(),
        },
    }
}

fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// A collection being read.
struct Open {
    node: Node,
    anchor: usize,
    /// For mappings: the key read, waiting for its value.
    key: Option<Key>,
}

/// Parses one YAML document into a tree. Errors: the syntax error (the parser cannot go on
/// past it), or every key given twice.
pub fn parse(text: &str) -> Result<Node, Vec<Located>> {
    use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle};
    let mut stack: Vec<Open> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut root: Option<Node> = None;
    let mut errors = Vec::new();
    let mut documents = 0;
    for next in Parser::new_from_str(text) {
        let (event, span) = next.map_err(|e| {
            let m = e.marker();
            vec![located(
                m.line(),
                m.col() + 1,
                "",
                format!("syntax: {}", e.info()),
            )]
        })?;
        let (line, col) = (span.start.line(), span.start.col() + 1);
        // The path a node starting here gets; `None` when it is a mapping key.
        let path = match stack.last() {
            None => Some(String::new()),
            Some(Open {
                node:
                    Node {
                        kind: Kind::Seq(items),
                        path,
                        ..
                    },
                ..
            }) => Some(format!("{path}[{}]", items.len())),
            Some(Open {
                node, key: Some(k), ..
            }) => Some(child_path(&node.path, &k.name)),
            Some(_) => None,
        };
        let done = match event {
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    return Err(vec![located(
                        line,
                        col,
                        "",
                        "a config file holds one YAML document (found a second `---`)",
                    )]);
                }
                None
            }
            Event::Scalar(v, style, anchor, _) => {
                let node = Node {
                    kind: Kind::Scalar {
                        text: v.into_owned(),
                        plain: style == ScalarStyle::Plain,
                    },
                    line,
                    col,
                    path: path.unwrap_or_default(),
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                Some(node)
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some(n) => Some(relocate(n.clone(), &path.unwrap_or_default())),
                None => return Err(vec![located(line, col, "", "alias to an unknown anchor")]),
            },
            Event::SequenceStart(_, anchor, _) | Event::MappingStart(_, anchor, _) => {
                let Some(path) = path else {
                    return Err(vec![located(
                        line,
                        col,
                        "",
                        "a mapping key must be a plain value, not a list or mapping",
                    )]);
                };
                let kind = if matches!(event, Event::SequenceStart(..)) {
                    Kind::Seq(Vec::new())
                } else {
                    Kind::Map(Vec::new())
                };
                stack.push(Open {
                    node: Node {
                        kind,
                        line,
                        col,
                        path,
                    },
                    anchor,
                    key: None,
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => stack.pop().map(|o| {
                if o.anchor > 0 {
                    anchors.insert(o.anchor, o.node.clone());
                }
                o.node
            }),
            _ => None,
        };
        let Some(node) = done else { continue };
        match stack.last_mut() {
            None => root = Some(node),
            Some(open) => match (&mut open.node.kind, open.key.take()) {
                (Kind::Seq(items), _) => items.push(node),
                (Kind::Map(_), None) => {
                    let Kind::Scalar { text, .. } = node.kind else {
                        continue;
                    };
                    open.key = Some(Key {
                        name: text,
                        line: node.line,
                        col: node.col,
                    });
                }
                (Kind::Map(entries), Some(key)) => {
                    match entries.iter().find(|(k, _)| k.name == key.name) {
                        Some((first, _)) => errors.push(located(
                            key.line,
                            key.col,
                            &node.path,
                            format!("given twice (first on line {})", first.line),
                        )),
                        None => entries.push((key, node)),
                    }
                }
                (Kind::Scalar { .. }, _) => {}
            },
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(root.unwrap_or(Node {
        kind: Kind::Map(Vec::new()),
        line: 1,
        col: 1,
        path: String::new(),
    }))
}

/// An aliased node copied to a new place: its paths follow the new place.
fn relocate(mut n: Node, path: &str) -> Node {
    n.path = path.to_string();
    match &mut n.kind {
        Kind::Scalar { .. } => {}
        Kind::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                *item = relocate(item.clone(), &format!("{path}[{i}]"));
            }
        }
        Kind::Map(entries) => {
            for (k, v) in entries.iter_mut() {
                *v = relocate(v.clone(), &child_path(path, &k.name));
            }
        }
    }
    n
}

// === reading serde types from the tree ===

/// Reads `T` from the tree, reporting every error it can: after each error the offending
/// entry is cut out and the rest read again.
pub fn decode<T: DeserializeOwned>(root: &Node) -> Result<T, Vec<Located>> {
    let mut tree = root.clone();
    let mut errors: Vec<Located> = Vec::new();
    // Entries cut out: a "missing field" for one of them repeats an error already given.
    let mut cut: HashSet<String> = HashSet::new();
    for _ in 0..200 {
        let e = match T::deserialize(De(&tree)) {
            Ok(v) if errors.is_empty() => return Ok(v),
            Ok(_) => break,
            Err(e) => e,
        };
        let at = e.at.unwrap_or((tree.line, tree.col, tree.path.clone()));
        let repeated = e
            .missing
            .is_some_and(|f| cut.contains(&child_path(&at.2, f)));
        if !repeated {
            errors.push(located(at.0, at.1, &at.2, e.message));
        }
        if at.2.is_empty() || !remove(&mut tree, &at.2) {
            break;
        }
        // `adress` (did you mean `address`?) explains the missing `address` too.
        if let (Some(s), Some(i)) = (e.suggest, at.2.rfind('.')) {
            cut.insert(child_path(&at.2[..i], s));
        } else if let Some(s) = e.suggest {
            cut.insert(s.to_string());
        }
        cut.insert(at.2);
    }
    errors.sort_by_key(|e| (e.line, e.col));
    Err(errors)
}

/// Removes the node at `path` from its parent.
fn remove(n: &mut Node, path: &str) -> bool {
    match &mut n.kind {
        Kind::Scalar { .. } => false,
        Kind::Seq(items) => {
            if let Some(i) = items.iter().position(|c| c.path == path) {
                items.remove(i);
                return true;
            }
            items.iter_mut().any(|c| remove(c, path))
        }
        Kind::Map(entries) => {
            if let Some(i) = entries.iter().position(|(_, c)| c.path == path) {
                entries.remove(i);
                return true;
            }
            entries.iter_mut().any(|(_, c)| remove(c, path))
        }
    }
}

/// A deserialization error and, once known, the place it belongs to.
#[derive(Debug)]
pub struct DeError {
    message: String,
    at: Option<(usize, usize, String)>,
    missing: Option<&'static str>,
    /// For an unknown field: the name it was probably meant to be.
    suggest: Option<&'static str>,
}

impl DeError {
    fn at(mut self, line: usize, col: usize, path: &str) -> Self {
        if self.at.is_none() {
            self.at = Some((line, col, path.to_string()));
        }
        self
    }
}

impl std::fmt::Display for DeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        DeError {
            message: msg.to_string(),
            at: None,
            missing: None,
            suggest: None,
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError {
            suggest: closest(field, expected),
            ..de::Error::custom(format!("unknown field `{field}`{}", hint(field, expected)))
        }
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        de::Error::custom(format!(
            "unknown value `{variant}`{}",
            hint(variant, expected)
        ))
    }

    fn missing_field(field: &'static str) -> Self {
        DeError {
            message: format!("missing field `{field}`"),
            at: None,
            missing: Some(field),
            suggest: None,
        }
    }
}

/// The accepted name closest to `got`, if it is a near miss.
fn closest(got: &str, expected: &'static [&'static str]) -> Option<&'static str> {
    expected
        .iter()
        .map(|e| (distance(got, e), *e))
        .min()
        .filter(|(d, e)| *d <= (e.len() / 3).max(1) || e.starts_with(got) && got.len() >= 3)
        .map(|(_, e)| e)
}

/// `; did you mean `address`?` for a near miss, else the list of what is accepted.
fn hint(got: &str, expected: &'static [&'static str]) -> String {
    match (closest(got, expected), expected.len()) {
        (Some(e), _) => format!("; did you mean `{e}`?"),
        (None, 0) => String::new(),
        _ => format!(
            "; expected one of {}",
            expected
                .iter()
                .map(|e| format!("`{e}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Levenshtein distance (names here are short).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

struct De<'a>(&'a Node);

impl<'a> De<'a> {
    fn scalar(&self) -> Option<(&'a str, bool)> {
        match &self.0.kind {
            Kind::Scalar { text, plain } => Some((text.as_str(), *plain)),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(
            self.scalar(),
            Some(("" | "~" | "null" | "Null" | "NULL", true))
        )
    }

    fn unexpected(&self) -> de::Unexpected<'a> {
        match &self.0.kind {
            _ if self.is_null() => de::Unexpected::Unit,
            Kind::Scalar { text, .. } => de::Unexpected::Str(text),
            Kind::Seq(_) => de::Unexpected::Seq,
            Kind::Map(_) => de::Unexpected::Map,
        }
    }

    fn number<V: Visitor<'a>>(self, v: V) -> Result<V::Value, DeError> {
        let text = self.scalar().map(|s| s.0).unwrap_or_default();
        if let Ok(n) = text.parse::<u64>() {
            v.visit_u64(n)
        } else if let Ok(n) = text.parse::<i64>() {
            v.visit_i64(n)
        } else if let Ok(f) = text.parse::<f64>() {
            v.visit_f64(f)
        } else {
            Err(de::Error::invalid_type(self.unexpected(), &v))
        }
    }
}

macro_rules! numbers {
    ($($m:ident)*) => {$(
        fn $m<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
            self.number(v)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for De<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.0.kind {
            _ if self.is_null() => v.visit_unit(),
            Kind::Scalar { text, plain: true } => match text.as_str() {
                "true" | "True" | "TRUE" => v.visit_bool(true),
                "false" | "False" | "FALSE" => v.visit_bool(false),
                t if t.parse::<f64>().is_ok() && !t.contains(':') => self.number(v),
                t => v.visit_str(t),
            },
            Kind::Scalar { text, .. } => v.visit_str(text),
            Kind::Seq(_) => self.deserialize_seq(v),
            Kind::Map(_) => self.deserialize_map(v),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.scalar() {
            Some(("true" | "True" | "TRUE", true)) => v.visit_bool(true),
            Some(("false" | "False" | "FALSE", true)) => v.visit_bool(false),
            _ => Err(de::Error::invalid_type(self.unexpected(), &v)),
        }
    }

    numbers!(deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_u8
        deserialize_u16 deserialize_u32 deserialize_u64 deserialize_f32 deserialize_f64);

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.scalar() {
            // A value written without quotes (`min_version: 1.3`) is still text here.
            Some((text, _)) if !self.is_null() => v.visit_str(text),
            _ => Err(de::Error::invalid_type(self.unexpected(), &v)),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if self.is_null() {
            v.visit_none()
        } else {
            v.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if self.is_null() {
            v.visit_unit()
        } else {
            Err(de::Error::invalid_type(self.unexpected(), &v))
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.0.kind {
            Kind::Seq(items) => v.visit_seq(Items(items.iter())),
            // `inbound:` with nothing after it: an empty list.
            _ if self.is_null() => v.visit_seq(Items([].iter())),
            _ => Err(de::Error::invalid_type(self.unexpected(), &v)),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.0.kind {
            Kind::Map(entries) => v.visit_map(Entries {
                iter: entries.iter(),
                value: None,
            }),
            _ if self.is_null() => v.visit_map(Entries {
                iter: [].iter(),
                value: None,
            }),
            _ => Err(de::Error::invalid_type(self.unexpected(), &v)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(v)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        match self.scalar() {
            Some((text, _)) => v.visit_enum(text.into_deserializer()),
            None => Err(de::Error::invalid_type(self.unexpected(), &v)),
        }
    }

    serde::forward_to_deserialize_any! {
        bytes byte_buf unit_struct tuple tuple_struct ignored_any
    }
}

struct Items<'a>(std::slice::Iter<'a, Node>);

impl<'de> de::SeqAccess<'de> for Items<'de> {
    type Error = DeError;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some(n) = self.0.next() else {
            return Ok(None);
        };
        seed.deserialize(De(n))
            .map(Some)
            .map_err(|e| e.at(n.line, n.col, &n.path))
    }
}

struct Entries<'a> {
    iter: std::slice::Iter<'a, (Key, Node)>,
    value: Option<&'a Node>,
}

impl<'de> de::MapAccess<'de> for Entries<'de> {
    type Error = DeError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((k, v)) = self.iter.next() else {
            return Ok(None);
        };
        self.value = Some(v);
        let key: de::value::StrDeserializer<'_, DeError> = k.name.as_str().into_deserializer();
        seed.deserialize(key)
            .map(Some)
            .map_err(|e| e.at(k.line, k.col, &v.path))
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DeError> {
        let n = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("a value without a key"))?;
        seed.deserialize(De(n))
            .map_err(|e| e.at(n.line, n.col, &n.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::raw;

    fn errors(text: &str) -> Vec<String> {
        let tree = match parse(text) {
            Ok(t) => t,
            Err(e) => return e.iter().map(show).collect(),
        };
        match decode::<raw::File>(&tree) {
            Ok(_) => vec![],
            Err(e) => e.iter().map(show).collect(),
        }
    }

    fn show(l: &Located) -> String {
        format!("{}:{}: {}", l.line, l.col, l.error)
    }

    #[test]
    fn every_structural_error_with_its_place() {
        let e = errors(
            "listeners:\n  - name: l\n    adress: 127.0.0.1:1\n    protocol: htp\nclusters:\n  - { name: c, connect_attempts: many }\nlisterners: []\n",
        );
        assert_eq!(
            e,
            vec![
                "3:5: listeners[0].adress: unknown field `adress`; did you mean `address`?",
                "4:15: listeners[0].protocol: unknown value `htp`; did you mean `http`?",
                "6:34: clusters[0].connect_attempts: invalid type: string \"many\", expected u32",
                "7:1: listerners: unknown field `listerners`; did you mean `listeners`?",
            ]
        );
    }

    #[test]
    fn duplicate_keys_and_syntax_errors() {
        assert_eq!(
            errors("admin: {}\nadmin: {}\n"),
            vec!["2:1: admin: given twice (first on line 1)"]
        );
        let e = errors("listeners: [ { name: l\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("syntax:"), "{e:?}");
    }

    #[test]
    fn plain_values_read_as_the_field_wants() {
        let tree = parse(
            "tls: { cert: a, key: b, roots: c, min_version: 1.3 }\ndrain_timeout: 5s\nlisteners:\n",
        )
        .unwrap();
        let f: raw::File = decode(&tree).unwrap();
        assert_eq!(f.tls.unwrap().min_version.as_deref(), Some("1.3"));
        assert!(f.listeners.is_empty());
    }

    #[test]
    fn positions_fall_back_to_the_nearest_ancestor() {
        let tree = parse("clusters:\n  - name: c\n    endpoints: [ { address: x } ]\n").unwrap();
        let p = Positions::of(&tree);
        assert_eq!(p.find("clusters[0].endpoints[0].address"), (3, 29));
        assert_eq!(p.find("clusters[0].connect_timeout"), (2, 5));
        assert_eq!(p.find("admin.address"), (1, 1));
    }
}
