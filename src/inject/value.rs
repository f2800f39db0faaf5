//! An untyped YAML/JSON value whose mappings keep their keys in input order, so a manifest
//! that `spoke inject` rewrites comes out in the order its author wrote it. It is read and
//! written through serde, which lets one type serve both the YAML of `spoke inject`
//! (serde-saphyr) and the JSON of the admission webhook (serde_json).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// A YAML/JSON value; a mapping is a list of (key, value) pairs in input order.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    String(String),
    Seq(Vec<Value>),
    Map(Vec<(String, Value)>),
}

// === impl Value ===

impl Value {
    /// An empty mapping.
    pub fn map() -> Value {
        Value::Map(Vec::new())
    }

    pub fn str(s: impl Into<String>) -> Value {
        Value::String(s.into())
    }

    /// The value under `key` of a mapping.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(pairs) => pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        match self {
            Value::Map(pairs) => pairs.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value at a path of mapping keys.
    pub fn at(&self, path: &[&str]) -> Option<&Value> {
        path.iter().try_fold(self, |v, k| v.get(k))
    }

    pub fn at_mut(&mut self, path: &[&str]) -> Option<&mut Value> {
        path.iter().try_fold(self, |v, k| v.get_mut(k))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_map(&self) -> bool {
        matches!(self, Value::Map(_))
    }

    /// Sets `key` of a mapping: replaced in place if present, appended otherwise (so the
    /// keys already there keep their order). No effect on a value that is not a mapping.
    pub fn set(&mut self, key: &str, value: Value) {
        if let Value::Map(pairs) = self {
            match pairs.iter_mut().find(|(k, _)| k == key) {
                Some((_, v)) => *v = value,
                None => pairs.push((key.to_string(), value)),
            }
        }
    }

    /// The mapping under `key`, made (appended) if missing or null. `None` if `self` is not
    /// a mapping or `key` holds something else than a mapping.
    pub fn map_entry(&mut self, key: &str) -> Option<&mut Value> {
        self.entry(key, Value::map(), Value::is_map)
    }

    /// The sequence under `key`, made (appended) if missing or null.
    pub fn seq_entry(&mut self, key: &str) -> Option<&mut Vec<Value>> {
        match self.entry(key, Value::Seq(Vec::new()), |v| matches!(v, Value::Seq(_)))? {
            Value::Seq(items) => Some(items),
            _ => None,
        }
    }

    fn entry(&mut self, key: &str, empty: Value, fits: fn(&Value) -> bool) -> Option<&mut Value> {
        if !self.is_map() {
            return None;
        }
        match self.get(key) {
            None | Some(Value::Null) => self.set(key, empty),
            Some(v) if fits(v) => {}
            Some(_) => return None,
        }
        self.get_mut(key)
    }
}

/// Builds a mapping from pairs: `obj([("name", Value::str("x"))])`.
pub fn obj<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Map(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

// === impl Serialize, Deserialize ===

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::UInt(u) => s.serialize_u64(*u),
            Value::Float(f) => s.serialize_f64(*f),
            Value::String(t) => s.serialize_str(t),
            Value::Seq(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for i in items {
                    seq.serialize_element(i)?;
                }
                seq.end()
            }
            Value::Map(pairs) => {
                let mut map = s.serialize_map(Some(pairs.len()))?;
                for (k, v) in pairs {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::UInt(v), Value::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut pairs: Vec<(String, Value)> = Vec::new();
        while let Some(k) = map.next_key::<Key>()? {
            if pairs.iter().any(|(have, _)| *have == k.0) {
                return Err(de::Error::custom(format!("duplicate key `{}`", k.0)));
            }
            pairs.push((k.0, map.next_value()?));
        }
        Ok(Value::Map(pairs))
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

/// A mapping key: Kubernetes keys are strings, but YAML allows `8080:` or `true:`; those
/// are kept as their text.
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Key(s)),
            Value::Int(i) => Ok(Key(i.to_string())),
            Value::UInt(u) => Ok(Key(u.to_string())),
            Value::Float(f) => Ok(Key(f.to_string())),
            Value::Bool(b) => Ok(Key(b.to_string())),
            Value::Null => Ok(Key("null".into())),
            _ => Err(de::Error::custom("a mapping key must be a scalar")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_order_through_yaml_and_json() {
        let v: Value = serde_saphyr::from_str("z: 1\na: [x, 2.5, true, null]\nm: { q: 1, b: 2 }\n")
            .unwrap_or(Value::Null);
        let Value::Map(pairs) = &v else {
            panic!("{v:?}")
        };
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["z", "a", "m"]);
        let json = serde_json::to_string(&v).unwrap_or_default();
        assert_eq!(json, r#"{"z":1,"a":["x",2.5,true,null],"m":{"q":1,"b":2}}"#);
        let back: Value = serde_json::from_str(&json).unwrap_or(Value::Null);
        assert_eq!(back, v);
    }

    #[test]
    fn strings_that_look_like_other_types_stay_strings() {
        let v: Value = serde_saphyr::from_str("a: \"15020\"\nb: \"true\"\nc: \"yes\"\nd: 'null'\n")
            .unwrap_or(Value::Null);
        let text = serde_saphyr::to_string(&v).unwrap_or_default();
        let back: Value = serde_saphyr::from_str(&text).unwrap_or(Value::Null);
        assert_eq!(back, v, "{text}");
        assert_eq!(v.get("a"), Some(&Value::str("15020")));
    }
}
