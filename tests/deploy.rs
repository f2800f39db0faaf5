//! What `deploy/` ships is valid: `deploy/validate.sh` (every manifest and the injected
//! example app against the Kubernetes schemas in strict mode, the Prometheus config with
//! promtool), the mesh ConfigMap as `spoke control` would load it, and the manifests
//! agreeing with the code (webhook path, injected annotation the scrape config keeps, the
//! images the webhook injects).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value as Json;
use support::pki::TempDir;
use support::{have, need};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(p: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(p)).unwrap()
}

fn docs(p: &str) -> Vec<Json> {
    serde_saphyr::from_multiple::<Json>(&read(p)).unwrap()
}

#[test]
fn validate_sh_passes() {
    let kv = Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok();
    if !need(
        "validate_sh_passes",
        "kubernetes-validate (pip install kubernetes-validate)",
        kv,
    ) || !need(
        "validate_sh_passes",
        "promtool (apt-get install prometheus)",
        have("promtool"),
    ) {
        return;
    }
    let out = Command::new("bash")
        .arg(Path::new(ROOT).join("deploy/validate.sh"))
        .env("SPOKE", env!("CARGO_BIN_EXE_spoke"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("deploy/validate.sh: ok"), "{text}");
}

#[test]
fn the_mesh_configmap_is_a_valid_control_plane_directory() {
    let cm = &docs("deploy/20-mesh-config.yaml")[0];
    let dir = TempDir::new("deploy-mesh");
    let data = cm["data"].as_object().unwrap();
    assert!(!data.is_empty());
    for (name, text) in data {
        std::fs::write(dir.0.join(name), text.as_str().unwrap()).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_spoke"))
        .args(["check", "--mesh"])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn manifests_agree_with_the_code() {
    // The webhook configuration calls the path the webhook serves, through the Service
    // port that reaches --webhook-listen.
    let hooks = &docs("deploy/40-webhook.yaml")[0]["webhooks"];
    for h in hooks.as_array().unwrap() {
        assert_eq!(
            h["clientConfig"]["service"]["path"],
            spoke::control::webhook::PATH
        );
        assert_eq!(h["failurePolicy"], "Ignore");
        assert_eq!(h["admissionReviewVersions"], serde_json::json!(["v1"]));
    }
    let control = docs("deploy/30-control.yaml");
    let svc = control.iter().find(|d| d["kind"] == "Service").unwrap();
    let port = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == 443)
        .unwrap();
    assert_eq!(port["targetPort"], 15017);
    // The webhook injects the control plane's own (distroless) image as the proxy, and the
    // init image `spoke inject` would derive from it for the init step.
    let deploy = control.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    let env = |name: &str| {
        let vars = container["env"].as_array().unwrap();
        let var = vars.iter().find(|e| e["name"] == name);
        var.unwrap_or_else(|| panic!("no {name}"))["value"].clone()
    };
    assert_eq!(env("SPOKE_IMAGE"), container["image"]);
    let image = container["image"].as_str().unwrap();
    let init = spoke::inject::image::derive_init(image).unwrap();
    assert_eq!(env("SPOKE_INIT_IMAGE"), init.as_str());
    // The scrape config keeps pods by the annotation injection sets.
    let prom = read("deploy/prometheus/prometheus.yml");
    assert!(prom.contains("__meta_kubernetes_pod_annotation_spoke_dev_status"));
    assert_eq!(spoke::inject::sidecar::STATUS, "spoke.dev/status");
    // The example namespace asks for injection with the label the webhook selects on.
    let app = docs("deploy/example/app.yaml");
    let ns = app.iter().find(|d| d["kind"] == "Namespace").unwrap();
    assert_eq!(ns["metadata"]["labels"]["spoke.dev/inject"], "enabled");
}
