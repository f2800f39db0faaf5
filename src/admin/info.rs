//! The admin server's read-only introspection: `/certs` (the workload certificate and the
//! trust bundle), `/server_info` (version, uptime, config version, workers), `/listeners`
//! (bound addresses and state), and the config dump, as JSON of what the proxy uses or as
//! a YAML file `spoke proxy` accepts.

use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};

use super::AdminState;

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Subject, serial and validity of one certificate.
fn describe(der: &CertificateDer<'_>) -> Value {
    match x509_parser::parse_x509_certificate(der.as_ref()) {
        Ok((_, c)) => {
            let not_after = c.validity().not_after.timestamp();
            json!({
                "subject": c.subject().to_string(),
                "serial": c.raw_serial_as_string(),
                "not_before": c.validity().not_before.timestamp(),
                "not_after": not_after,
                "days_left": (not_after - unix_now()) / 86_400,
            })
        }
        Err(e) => json!({ "error": e.to_string() }),
    }
}

/// `/certs`: the workload certificate (SPIFFE ID, serial, validity, days left, where it
/// came from) and the roots' subjects; `null` when the proxy has none (yet).
pub fn certs(state: &AdminState) -> Value {
    let snap = state.shared.snapshot.load();
    let source = if snap.config.tls.is_some() {
        "files"
    } else {
        "control"
    };
    let Some(c) = state.shared.tls.as_ref().and_then(|s| s.current()) else {
        return json!({ "workload": null, "roots": [] });
    };
    let mut workload = c.chain.first().map(describe).unwrap_or(Value::Null);
    if let Some(w) = workload.as_object_mut() {
        w.insert("identity".into(), c.identity.as_str().into());
        w.insert("source".into(), source.into());
        w.insert("chain_length".into(), c.chain.len().into());
    }
    json!({
        "workload": workload,
        "roots": c.roots.iter().map(describe).collect::<Vec<_>>(),
    })
}

/// `/server_info`.
pub fn server_info(state: &AdminState) -> Value {
    let snap = state.shared.snapshot.load();
    let workers = tokio::runtime::Handle::try_current()
        .map(|h| h.metrics().num_workers())
        .unwrap_or(0);
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "node_id": snap.config.node.id,
        "uptime_seconds": state.started.elapsed().as_secs(),
        "config_version": snap.version,
        "workers": workers,
        "state": if state.drain.is_draining() {
            "draining"
        } else if state.shared.readiness.is_ready() {
            "ready"
        } else {
            state.shared.readiness.reason()
        },
        "control": snap.config.control.as_ref().map(|c| c.address.clone()),
        "control_connected": snap.config.control.as_ref().map(|_| state.shared.metrics.control_connected.get() == 1),
        "last_update": *state.shared.last_update.lock().unwrap_or_else(|p| p.into_inner()),
    })
}

/// `/listeners`: each listener's name, bound address, protocol, direction and state.
pub fn listeners(state: &AdminState) -> Value {
    let listening = if state.drain.is_draining() {
        "draining"
    } else {
        "active"
    };
    let list: Vec<Value> = state
        .listeners
        .iter()
        .map(|(l, addr)| {
            json!({
                "name": l.name,
                "address": addr.to_string(),
                "configured_address": l.address.to_string(),
                "protocol": l.protocol,
                "direction": l.direction_str(),
                "state": listening,
            })
        })
        .collect();
    Value::Array(list)
}

/// The JSON dump: the effective config with every default filled in, without what the
/// running proxy does not use (the mesh's `workloads`, an empty `services`, the hash key of
/// clusters that do not hash).
pub fn config_dump(state: &AdminState) -> Value {
    let snap = state.shared.snapshot.load_full();
    let mut value = serde_json::to_value(&*snap.config).unwrap_or_default();
    if let Some(obj) = value.as_object_mut() {
        obj.remove("workloads");
        if obj
            .get("services")
            .is_some_and(|s| s.as_array().is_some_and(|a| a.is_empty()))
        {
            obj.remove("services");
        }
        if let Some(Value::Array(clusters)) = obj.get_mut("clusters") {
            for (c, cfg) in clusters.iter_mut().zip(&snap.config.clusters) {
                if let Some(c) = c.as_object_mut() {
                    // The hash key means something only to ring_hash.
                    if cfg.lb != crate::config::Lb::RingHash {
                        c.remove("hash_on");
                    }
                }
            }
        }
        obj.insert("version".into(), snap.version.clone().into());
    }
    value
}

/// `/config_dump?format=yaml`: the config the proxy runs (its file, with what the control
/// plane pushed merged in) as a YAML file `spoke proxy --config` accepts.
pub fn config_yaml(state: &AdminState) -> String {
    let snap = state.shared.snapshot.load_full();
    let value = serde_json::to_value(&snap.config.raw).unwrap_or_default();
    let mut out = format!(
        "# spoke config dump: version {}\n",
        snap.version.replace('\n', " ")
    );
    yaml(&value, 0, &mut out);
    out
}

/// A small block-style YAML writer for JSON values. Strings are written as JSON strings,
/// which are valid YAML double-quoted scalars, so nothing needs YAML escaping rules.
fn yaml(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                out.push_str(&format!("{pad}{k}:"));
                inline_or_block(v, indent, out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for item in a {
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        // The first key on the dash line, the rest under it.
                        let mut first = String::new();
                        yaml(item, indent + 2, &mut first);
                        out.push_str(&format!("{pad}- {}", first.trim_start()));
                    }
                    _ => {
                        out.push_str(&format!("{pad}-"));
                        inline_or_block(item, indent, out);
                    }
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

fn inline_or_block(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            yaml(v, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            yaml(v, indent + 2, out);
        }
        other => out.push_str(&format!(" {}\n", scalar(other))),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_of_a_config_reads_back_the_same() {
        let text = "node: { id: \"a: b\" }\nlisteners:\n  - { name: l, address: 127.0.0.1:0, protocol: tcp, cluster: c, upgrades: [] }\nclusters:\n  - name: c\n    endpoints: [ { address: 127.0.0.1:1, weight: 2 } ]\nroutes:\n  - match: { path_prefix: /, headers: [ { name: x, present: true } ] }\n    cluster: c\n    retry: { on: [ \"503\", reset ] }\n";
        let raw = crate::config::parse_yaml(text).unwrap();
        let mut out = String::new();
        yaml(&serde_json::to_value(&raw).unwrap(), 0, &mut out);
        let back = crate::config::parse_yaml(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert_eq!(back, raw, "{out}");
    }
}
