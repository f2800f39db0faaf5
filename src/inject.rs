//! `spoke inject`: adds the sidecar to Kubernetes manifests offline, and the same change
//! for the control plane's admission webhook. A YAML stream of any number of documents
//! (and `kind: List`) goes in; each Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet,
//! Job and CronJob gets the proxy and its `spoke redirect` init step (`sidecar`; the step
//! runs its own image, `image`), at the pod template of its kind (`kinds`); everything else
//! comes out exactly as it went in (`stream`). The whole output is built in memory, so bad
//! input writes nothing.

pub mod image;
pub mod kinds;
pub mod patch;
pub mod sidecar;
pub mod stream;
pub mod value;

use kinds::Outcome;
use value::Value;

/// What the injected parts are made of (flags of `spoke inject` and `spoke control`).
#[derive(Debug, Clone)]
pub struct Options {
    /// The proxy's image (the distroless runtime image).
    pub image: String,
    /// The init step's image (`spoke redirect` needs iptables): see `image::init_image`.
    pub init_image: String,
    /// The control plane's address as the sidecars dial it.
    pub control: String,
    /// A regular container instead of a native sidecar (clusters before 1.29).
    pub classic: bool,
}

/// The injected stream and what the user should be told (skipped objects).
#[derive(Debug)]
pub struct Output {
    pub text: String,
    pub notes: Vec<String>,
}

/// Bad input, named by its document (1-based, blank documents not counted).
#[derive(Debug, thiserror::Error)]
#[error("document {doc}: {message}")]
pub struct InjectError {
    pub doc: usize,
    pub message: String,
}

/// Injects every workload of a YAML stream.
pub fn inject_yaml(text: &str, opts: &Options) -> Result<Output, InjectError> {
    let pieces = stream::split(text);
    let mut notes = Vec::new();
    let mut texts: Vec<Option<String>> = Vec::with_capacity(pieces.len());
    let mut doc = 0;
    for piece in &pieces {
        if piece.is_blank() {
            texts.push(None);
            continue;
        }
        doc += 1;
        let fail = |message: String| InjectError { doc, message };
        let mut value = stream::parse(piece).map_err(fail)?;
        let changed = inject_document(&mut value, opts, &mut |note| {
            notes.push(format!("document {doc}: {note}"))
        })
        .map_err(fail)?;
        texts.push(if changed {
            Some(stream::emit(&value).map_err(fail)?)
        } else {
            None
        });
    }
    let text = stream::join(pieces.iter().zip(&texts).map(|(p, t)| {
        (
            p.separator.as_str(),
            t.as_deref().unwrap_or(p.text.as_str()),
        )
    }));
    Ok(Output { text, notes })
}

/// Checks that `value` is a Kubernetes object: a mapping with string `apiVersion` and `kind`.
fn check_object(value: &Value) -> Result<&str, String> {
    let found = match value {
        Value::Map(_) => None,
        Value::Seq(_) => Some("a list"),
        Value::Null => Some("an empty value"),
        _ => Some("a scalar"),
    };
    if let Some(found) = found {
        return Err(format!(
            "not a Kubernetes object (a mapping with apiVersion and kind): found {found}"
        ));
    }
    for field in ["apiVersion", "kind"] {
        match value.get(field) {
            Some(Value::String(s)) if !s.is_empty() => {}
            Some(_) => {
                return Err(format!(
                    "not a Kubernetes object: `{field}` is not a string"
                ))
            }
            None => return Err(format!("not a Kubernetes object: no `{field}`")),
        }
    }
    Ok(value.get("kind").and_then(Value::as_str).unwrap_or(""))
}

/// Injects one document (an object or a `List` of them); whether anything changed.
fn inject_document(
    value: &mut Value,
    opts: &Options,
    note: &mut dyn FnMut(String),
) -> Result<bool, String> {
    if check_object(value)? != "List" {
        return inject_one(value, opts, note);
    }
    let mut changed = false;
    match value.get_mut("items") {
        None | Some(Value::Null) => {}
        Some(Value::Seq(items)) => {
            for (i, item) in items.iter_mut().enumerate() {
                let at = |e: String| format!("items[{i}]: {e}");
                check_object(item).map_err(at)?;
                changed |= inject_one(item, opts, &mut |n| note(format!("items[{i}]: {n}")))
                    .map_err(at)?;
            }
        }
        Some(_) => return Err("a List's `items` must be a list".into()),
    }
    Ok(changed)
}

fn inject_one(
    value: &mut Value,
    opts: &Options,
    note: &mut dyn FnMut(String),
) -> Result<bool, String> {
    match kinds::inject_object(value, opts)? {
        Outcome::Injected => Ok(true),
        Outcome::Untouched => Ok(false),
        Outcome::Skipped(why) => {
            note(why);
            Ok(false)
        }
    }
}

/// The webhook's injection: a Pod as the API server sent it, injected as `spoke inject`
/// would inject it, or unchanged with the outcome saying why.
pub fn inject_pod(pod: &Value, opts: &Options) -> Result<(Value, Outcome), String> {
    let mut out = pod.clone();
    let outcome = kinds::inject_template(&mut out, opts)?;
    Ok((out, outcome))
}
