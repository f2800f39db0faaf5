//! The webhook's answer is a JSON Patch (RFC 6902) from the pod as the API server sent it
//! to the pod as `spoke inject` makes it. Injection only adds, so the diff is small and
//! exact: new keys are `add`s, new list items are `add`s at their final index (so the
//! API server inserts rather than replaces, and parts another webhook added stay), and
//! anything else that differs is replaced whole.

use serde_json::json;

use super::value::Value;

/// Escapes a key for a JSON Pointer (`~` and `/`, as in `prometheus.io~1scrape`).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn op(kind: &str, path: &str, value: &Value) -> serde_json::Value {
    json!({ "op": kind, "path": path, "value": value })
}

/// The operations that turn `old` into `new`.
pub fn diff(old: &Value, new: &Value) -> Vec<serde_json::Value> {
    let mut ops = Vec::new();
    diff_at("", old, new, &mut ops);
    ops
}

fn diff_at(path: &str, old: &Value, new: &Value, ops: &mut Vec<serde_json::Value>) {
    if old == new {
        return;
    }
    match (old, new) {
        (Value::Map(a), Value::Map(b)) => {
            for (k, vb) in b {
                let at = format!("{path}/{}", escape(k));
                match a.iter().find(|(ka, _)| ka == k) {
                    Some((_, va)) => diff_at(&at, va, vb, ops),
                    None => ops.push(op("add", &at, vb)),
                }
            }
            for (k, _) in a.iter().filter(|(k, _)| !b.iter().any(|(kb, _)| kb == k)) {
                ops.push(json!({ "op": "remove", "path": format!("{path}/{}", escape(k)) }));
            }
        }
        (Value::Seq(a), Value::Seq(b)) if is_subsequence(a, b) => {
            // Walking `new` in order, every item that is not the next old one is inserted
            // at its own index: after each add, the list up to there already equals `new`.
            let mut next = 0;
            for (i, item) in b.iter().enumerate() {
                if next < a.len() && a[next] == *item {
                    next += 1;
                } else {
                    ops.push(op("add", &format!("{path}/{i}"), item));
                }
            }
        }
        _ => ops.push(op("replace", path, new)),
    }
}

fn is_subsequence(a: &[Value], b: &[Value]) -> bool {
    let mut it = b.iter();
    a.iter().all(|x| it.any(|y| y == x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Value {
        serde_saphyr::from_str(s).unwrap_or(Value::Null)
    }

    #[test]
    fn additions_become_adds_at_their_final_place() {
        let old =
            yaml("metadata: { annotations: { a: b } }\nspec: { containers: [ { name: app } ] }\n");
        let new = yaml(
            "metadata: { annotations: { a: b, prometheus.io/scrape: \"true\" } }\n\
             spec: { containers: [ { name: p }, { name: app }, { name: q } ], volumes: [] }\n",
        );
        let ops = diff(&old, &new);
        let text = serde_json::to_string(&ops).unwrap_or_default();
        assert_eq!(
            text,
            r#"[{"op":"add","path":"/metadata/annotations/prometheus.io~1scrape","value":"true"},{"op":"add","path":"/spec/containers/0","value":{"name":"p"}},{"op":"add","path":"/spec/containers/2","value":{"name":"q"}},{"op":"add","path":"/spec/volumes","value":[]}]"#
        );
    }

    #[test]
    fn other_changes_replace_or_remove() {
        let ops = diff(&yaml("a: [1, 2]\nb: 1\n"), &yaml("a: [2, 1]\n"));
        let text = serde_json::to_string(&ops).unwrap_or_default();
        assert_eq!(
            text,
            r#"[{"op":"replace","path":"/a","value":[2,1]},{"op":"remove","path":"/b"}]"#
        );
    }
}
