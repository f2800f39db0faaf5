//! `spoke status` and `spoke diagnose` against a real control plane and sidecars (as
//! processes): a synced sidecar, a NACKed config, and a certificate that expires while the
//! proxy runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use spoke::ca::IssueOptions;
use support::mesh::*;
use support::pki::*;
use support::*;

fn spoke(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spoke"))
        .args(args)
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).to_string();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn diagnose(admin: u16) -> (i32, String) {
    spoke(&["diagnose", "--admin", &format!("127.0.0.1:{admin}")])
}

#[test]
fn status_and_diagnose_follow_a_sidecar_through_a_nack() {
    let m = Mesh::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let backend = rt.block_on(echo());
    m.write(&format!(
        "clusters: [ {{ name: backend, endpoints: [ {{ address: \"{backend}\" }} ] }} ]\n"
    ));
    let (cp, cs, lp, ap, sp) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let _control = m.control(cp, cs);
    let cfg = m.dir.0.join("web.yaml");
    std::fs::write(
        &cfg,
        format!(
            "node: {{ id: web-0 }}\nadmin: {{ address: 127.0.0.1:{ap} }}\nstats: {{ address: 127.0.0.1:{sp} }}\n\
             control: {{ address: 127.0.0.1:{cp}, token_file: \"{}\", roots: \"{}\" }}\n\
             listeners: [ {{ name: out, address: 127.0.0.1:{lp}, protocol: tcp, cluster: backend }} ]\n",
            m.token.display(),
            m.ca.join("root.pem").display()
        ),
    )
    .unwrap();
    let _proxy = spawn_spoke(&["proxy", "--config", cfg.to_str().unwrap()], false);
    wait_for("sidecar ready", Duration::from_secs(15), || {
        get(sp, "/ready").is_some_and(|r| r.0 == 200)
    });
    wait_for("ACK", Duration::from_secs(5), || acked(cs, WEB) == "1");

    let (code, table) = spoke(&["status", "--control", &format!("http://127.0.0.1:{cs}")]);
    assert_eq!(code, 0, "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("web-0"))
        .expect(&table);
    assert!(table.starts_with("mesh config version 1\nNODE"), "{table}");
    assert!(row.contains(WEB) && row.contains("SYNCED"), "{table}");
    let (code, report) = diagnose(ap);
    assert_eq!(code, 0, "{report}");
    for want in [
        "[ok]   ready",
        "[ok]   1 listeners bound: out 127.0.0.1:",
        &format!("[ok]   certificate {WEB} valid"),
        "[ok]   trust bundle: 1 roots, none expired",
        &format!("[ok]   control plane 127.0.0.1:{cp} connected"),
        "[ok]   in sync: version 1 applied",
    ] {
        assert!(report.contains(want), "{want:?} in\n{report}");
    }

    // A push the sidecar must refuse: its listener's cluster is gone.
    m.write("clusters: [ { name: other, endpoints: [] } ]\n");
    wait_for("NACK", Duration::from_secs(10), || {
        !status(cs)["sidecars"][0]["last_nack"].is_null()
    });
    let (code, table) = spoke(&["status", "--control", &format!("127.0.0.1:{cs}")]);
    assert_eq!(code, 0);
    let row = table
        .lines()
        .find(|l| l.starts_with("web-0"))
        .expect(&table);
    assert!(row.contains("NACKED"), "{table}");
    assert!(
        row.contains("cluster \"backend\" is not defined"),
        "{table}"
    );
    let (code, report) = diagnose(ap);
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains("[FAIL] last push (version 2) rejected: listeners[0].cluster"),
        "{report}"
    );
    assert!(report.contains("serving version 1"), "{report}");

    // Nothing to ask: exit 1 with the reason.
    let (code, out) = spoke(&["status", "--control", &format!("127.0.0.1:{}", free_port())]);
    assert_eq!(code, 1);
    assert!(out.contains("cannot reach"), "{out}");
}

#[test]
fn diagnose_fails_an_expired_certificate() {
    let pki = Pki::new("cluster.local");
    let files = pki.issue_custom("web", &IssueOptions::workload(WEB, Duration::from_secs(3)));
    let (ap, sp) = (free_port(), free_port());
    let cfg = pki.dir.0.join("proxy.yaml");
    std::fs::write(
        &cfg,
        format!(
            "admin: {{ address: 127.0.0.1:{ap} }}\nstats: {{ address: 127.0.0.1:{sp} }}\n{}",
            files.yaml("")
        ),
    )
    .unwrap();
    let _proxy = spawn_spoke(&["proxy", "--config", cfg.to_str().unwrap()], false);
    wait_for("ready", Duration::from_secs(10), || {
        get(sp, "/ready").is_some_and(|r| r.0 == 200)
    });
    let (code, report) = diagnose(ap);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("[ok]   static config static-"), "{report}");
    std::thread::sleep(Duration::from_secs(4));
    let (code, report) = diagnose(ap);
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains(&format!("[FAIL] certificate {WEB} expired")),
        "{report}"
    );
    // Nothing listens: one failed line, exit 1.
    let (code, report) = diagnose(free_port());
    assert_eq!(code, 1);
    assert!(
        report.starts_with("[FAIL] admin server: cannot reach"),
        "{report}"
    );
}
