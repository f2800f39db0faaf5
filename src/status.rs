//! `spoke status` and `spoke diagnose`: the operator's two questions from a terminal.
//! `status` asks the control plane (`/status` on its stats address) how every sidecar
//! stands, as a table like `istioctl proxy-status`; `diagnose` asks one sidecar's admin
//! server and prints a `linkerd check`-style pass/fail line per check.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// A GET over plain HTTP/1.1 to `addr` (`host:port`, or a `http://host:port` URL).
pub fn get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let host = addr
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut s =
        TcpStream::connect(host.as_str()).map_err(|e| format!("cannot reach {host}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{host}: {e}"))?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)
        .map_err(|e| format!("{host}: {e}"))?;
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{host}: not an HTTP answer"))?;
    let body = buf.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    Ok((status, body.to_string()))
}

fn get_json(addr: &str, path: &str) -> Result<Value, String> {
    let (status, body) = get(addr, path)?;
    if status != 200 {
        return Err(format!("{path}: HTTP {status}: {}", body.trim()));
    }
    serde_json::from_str(&body).map_err(|e| format!("{path}: {e}"))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The `spoke status` table, from the control plane's `/status` document.
pub fn status_table(doc: &Value) -> String {
    let mut rows = vec![[
        "NODE",
        "IDENTITY",
        "SENT",
        "ACKED",
        "SYNC",
        "CONNECTED",
        "LAST NACK",
    ]
    .map(String::from)];
    let now = unix_now();
    for s in doc["sidecars"].as_array().into_iter().flatten() {
        let (sent, acked) = (text(&s["sent_version"]), text(&s["acked_version"]));
        let sync = match (&s["last_nack"], sent == acked) {
            (Value::String(_), _) => "NACKED",
            (_, true) if sent != "-" => "SYNCED",
            _ => "STALE",
        };
        let since = s["connected_since"].as_i64().map(|t| now - t).unwrap_or(0);
        rows.push([
            text(&s["node_id"]),
            text(&s["identity"]),
            sent,
            acked,
            sync.to_string(),
            format!("{since}s ago"),
            text(&s["last_nack"]),
        ]);
    }
    let mut widths = [0usize; 7];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = format!(
        "mesh config version {}{}\n",
        text(&doc["version"]),
        match &doc["config_error"] {
            Value::Array(e) => format!(
                " (the directory has errors; serving the last good: {})",
                e.iter().map(text).collect::<Vec<_>>().join("; ")
            ),
            _ => String::new(),
        }
    );
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 6 {
                    c.clone()
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `spoke status --control ADDR`: exit 0 with the table, 1 if the control plane cannot
/// be asked.
pub fn status(control: &str, json: bool) -> Result<String, String> {
    let doc = get_json(control, "/status")?;
    Ok(if json {
        format!("{doc}\n")
    } else {
        status_table(&doc)
    })
}

/// One diagnose line.
pub struct Check {
    pub ok: bool,
    pub line: String,
}

fn pass(line: impl Into<String>) -> Check {
    Check {
        ok: true,
        line: line.into(),
    }
}

fn fail(line: impl Into<String>) -> Check {
    Check {
        ok: false,
        line: line.into(),
    }
}

/// `spoke diagnose --admin ADDR`: every check of one sidecar; it is healthy when all pass.
pub fn diagnose(admin: &str) -> Vec<Check> {
    let mut out = Vec::new();
    let info = match get_json(admin, "/server_info") {
        Ok(v) => v,
        Err(e) => return vec![fail(format!("admin server: {e}"))],
    };
    out.push(pass(format!(
        "admin server answers (spoke {}, node {:?}, up {}s)",
        text(&info["version"]),
        text(&info["node_id"]),
        text(&info["uptime_seconds"])
    )));
    match info["state"].as_str() {
        Some("ready") => out.push(pass("ready")),
        other => out.push(fail(format!("not ready: {}", other.unwrap_or("?")))),
    }
    match get_json(admin, "/listeners") {
        Ok(Value::Array(l)) => {
            let names: Vec<String> = l
                .iter()
                .map(|l| format!("{} {}", text(&l["name"]), text(&l["address"])))
                .collect();
            let active = l.iter().all(|l| l["state"] == "active");
            let line = format!("{} listeners bound: {}", l.len(), names.join(", "));
            out.push(if active {
                pass(line)
            } else {
                fail(format!("{line} (draining)"))
            });
        }
        Ok(_) | Err(_) => out.push(fail("listeners: /listeners did not answer")),
    }
    out.extend(certificate_checks(admin, &info));
    out.extend(control_checks(&info));
    out
}

fn certificate_checks(admin: &str, info: &Value) -> Vec<Check> {
    let certs = match get_json(admin, "/certs") {
        Ok(c) => c,
        Err(e) => return vec![fail(format!("certificate: {e}"))],
    };
    let w = &certs["workload"];
    let mut out = Vec::new();
    let now = unix_now();
    if w.is_null() {
        if info["control"].is_null() {
            out.push(pass("no workload certificate (plaintext only)"));
        } else {
            out.push(fail("no workload certificate from the control plane yet"));
        }
        return out;
    }
    let not_after = w["not_after"].as_i64().unwrap_or(0);
    let id = text(&w["identity"]);
    if not_after <= now {
        out.push(fail(format!(
            "certificate {id} expired {}s ago (serial {})",
            now - not_after,
            text(&w["serial"])
        )));
    } else {
        let left = not_after - now;
        out.push(pass(format!(
            "certificate {id} valid, {} days {}h left (serial {}, from {})",
            left / 86_400,
            left % 86_400 / 3600,
            text(&w["serial"]),
            text(&w["source"])
        )));
    }
    let roots = certs["roots"].as_array().cloned().unwrap_or_default();
    let expired = roots
        .iter()
        .filter(|r| r["not_after"].as_i64().unwrap_or(0) <= now)
        .count();
    if roots.is_empty() || expired > 0 {
        out.push(fail(format!(
            "trust bundle: {} roots, {expired} expired",
            roots.len()
        )));
    } else {
        out.push(pass(format!(
            "trust bundle: {} roots, none expired",
            roots.len()
        )));
    }
    out
}

fn control_checks(info: &Value) -> Vec<Check> {
    if info["control"].is_null() {
        return vec![pass(format!(
            "static config {} (no control plane)",
            text(&info["config_version"])
        ))];
    }
    let addr = text(&info["control"]);
    let mut out = vec![if info["control_connected"] == true {
        pass(format!("control plane {addr} connected"))
    } else {
        fail(format!("control plane {addr} not connected"))
    }];
    let last = &info["last_update"];
    match last["result"].as_str() {
        Some("applied") => out.push(pass(format!(
            "in sync: version {} applied",
            text(&last["version"])
        ))),
        Some(_) => out.push(fail(format!(
            "last push (version {}) rejected: {}; serving version {}",
            text(&last["version"]),
            text(&last["error"]),
            text(&info["config_version"])
        ))),
        None => out.push(fail("no config received from the control plane yet")),
    }
    out
}
