//! Where each workload kind keeps its pod template, which objects are left alone (other
//! kinds, already injected, `spoke.dev/inject: disabled`, `hostNetwork: true`), and the
//! placement of the injected containers inside a pod spec.

use super::sidecar::{self, INIT_NAME, PROXY_NAME, STATUS};
use super::value::Value;
use super::Options;

/// The opt-out: `spoke.dev/inject: disabled` as an annotation or label, on the object or
/// on its pod template.
pub const INJECT: &str = "spoke.dev/inject";

/// What happened to one object.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    /// Left unchanged, with the reason for the user (on stderr).
    Skipped(String),
    /// Not a workload, or already injected: unchanged, nothing to say.
    Untouched,
}

/// The path from an object to its pod template, for the kinds that have one.
pub fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            Some(&["spec", "template"])
        }
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

fn disabled(object: &Value) -> bool {
    ["annotations", "labels"].iter().any(|part| {
        object
            .at(&["metadata", part, INJECT])
            .and_then(Value::as_str)
            .is_some_and(|v| v.eq_ignore_ascii_case("disabled"))
    })
}

/// `Kind name` for messages.
pub fn describe(object: &Value) -> String {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("?");
    match object.at(&["metadata", "name"]).and_then(Value::as_str) {
        Some(name) => format!("{kind} {name}"),
        None => kind.to_string(),
    }
}

/// Injects one Kubernetes object in place. `Err` for a workload without a usable pod
/// template (that object could not be applied either).
pub fn inject_object(object: &mut Value, opts: &Options) -> Result<Outcome, String> {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
    let Some(path) = template_path(kind) else {
        return Ok(Outcome::Untouched);
    };
    let what = describe(object);
    if disabled(object) {
        return Ok(Outcome::Skipped(format!(
            "{what}: {INJECT}: disabled; left unchanged"
        )));
    }
    let where_ = if path.is_empty() {
        String::from("the object")
    } else {
        path.join(".")
    };
    let template = object
        .at_mut(path)
        .filter(|t| t.is_map())
        .ok_or_else(|| format!("{what}: no pod template at {where_}"))?;
    inject_template(template, opts).map_err(|e| format!("{what}: {e}"))
}

/// Injects a pod template (a Pod, or the `template` of a workload): `metadata` + `spec`.
pub fn inject_template(template: &mut Value, opts: &Options) -> Result<Outcome, String> {
    if template.at(&["metadata", "annotations", STATUS]).is_some() {
        return Ok(Outcome::Untouched);
    }
    if disabled(template) {
        return Ok(Outcome::Skipped(format!(
            "pod template: {INJECT}: disabled; left unchanged"
        )));
    }
    let spec = template
        .get("spec")
        .filter(|s| s.is_map())
        .ok_or("no pod spec")?;
    if spec.get("hostNetwork") == Some(&Value::Bool(true)) {
        return Ok(Outcome::Skipped(
            "hostNetwork: true (capture would redirect the node's traffic); left unchanged".into(),
        ));
    }
    if !matches!(spec.get("containers"), Some(Value::Seq(c)) if !c.is_empty()) {
        return Err("the pod spec has no containers".into());
    }
    let named = |list: &str| match spec.get(list) {
        Some(Value::Seq(items)) => items.iter().any(|c| {
            let n = c.get("name").and_then(Value::as_str);
            n == Some(PROXY_NAME) || n == Some(INIT_NAME)
        }),
        _ => false,
    };
    if named("containers") || named("initContainers") {
        return Ok(Outcome::Skipped(format!(
            "already has a container named {PROXY_NAME} or {INIT_NAME} but no {STATUS} annotation; left unchanged"
        )));
    }
    if template.get("metadata").is_none() {
        if let Value::Map(pairs) = template {
            pairs.insert(0, ("metadata".into(), Value::map()));
        }
    }
    let annotations = template
        .map_entry("metadata")
        .and_then(|m| m.map_entry("annotations"))
        .ok_or("metadata.annotations is not a mapping")?;
    let init = sidecar::init_container(opts, Some(annotations));
    sidecar::annotate(annotations, opts);
    let spec = template.map_entry("spec").ok_or("no pod spec")?;
    place(spec, init, sidecar::proxy_container(opts), opts.classic)?;
    let volumes = spec
        .seq_entry("volumes")
        .ok_or("spec.volumes is not a list")?;
    volumes.extend(sidecar::volumes());
    Ok(Outcome::Injected)
}

/// Native: `[spoke-init, spoke-proxy, <the pod's init containers>]`: the rules go in first,
/// the proxy comes up next, so the pod's own init containers already have the mesh.
/// Classic: `spoke-init` runs last of the init containers (the pod's own ones run before
/// any capture, as no proxy runs yet), and the proxy is the first container.
fn place(spec: &mut Value, init: Value, proxy: Value, classic: bool) -> Result<(), String> {
    let inits = spec
        .seq_entry("initContainers")
        .ok_or("spec.initContainers is not a list")?;
    if classic {
        inits.push(init);
        spec.seq_entry("containers")
            .ok_or("spec.containers is not a list")?
            .insert(0, proxy);
    } else {
        inits.insert(0, proxy);
        inits.insert(0, init);
    }
    Ok(())
}
