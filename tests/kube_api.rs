//! The test Kubernetes API server (`support/kube_api.rs`) checked by parties no one here
//! wrote: kubectl lists (tables, paging with `continue`, label and field selectors) and
//! watches through it, and its fixtures validate against Kubernetes' own schemas.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/kube_api.rs"]
mod kube_api;
mod support;

use std::process::Command;
use std::time::Duration;

use kube_api::{KubeApi, Res};
use serde_json::json;
use support::mesh::wait_for;
use support::pki::TempDir;
use support::{have, http_blocking, need};

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", kubeconfig.parent().unwrap())
        .args(["--request-timeout=10s"])
        .args(args)
        .output()
        .expect("kubectl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn kubectl_lists_and_watches_through_the_test_server() {
    if !need(
        "kubectl_lists_and_watches_through_the_test_server",
        "kubectl",
        have("kubectl"),
    ) {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(KubeApi::start());
    let dir = TempDir::new("kubectl");
    let kc = api.kubeconfig(&dir.0);

    let (ok, out, err) = kubectl(&kc, &["get", "pods", "-A"]);
    assert!(ok, "{err}");
    assert!(out.contains("NAMESPACE"), "{out}");
    assert!(
        out.contains("backend-5d8c7b9f4-abcde") && out.contains("coredns-668d6bf9bc-k2x8z"),
        "{out}"
    );
    let (ok, out, err) = kubectl(&kc, &["get", "svc"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("backend") && out.contains("10.96.0.20"),
        "{out}"
    );
    assert!(!out.contains("kube-dns"), "namespace default only: {out}");
    // Paging: kubectl asks for 1 item at a time and follows `continue`.
    let (ok, out, err) = kubectl(&kc, &["get", "pods", "-A", "--chunk-size=1", "-o", "name"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(api.count("GET /api/v1/pods", "continue=") >= 3);
    // Selectors.
    let (ok, out, err) = kubectl(&kc, &["get", "pods", "-l", "app=backend", "-o", "name"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    let (ok, out, err) = kubectl(
        &kc,
        &[
            "get",
            "pods",
            "-A",
            "--field-selector",
            "metadata.namespace=kube-system",
            "-o",
            "name",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "pod/coredns-668d6bf9bc-k2x8z", "{out}");

    // A watch, bounded: kubectl prints the list, then the slice added meanwhile.
    let watch = Command::new("timeout")
        .args([
            "4",
            "kubectl",
            "--request-timeout=0",
            "get",
            "endpointslices",
            "--watch",
        ])
        .env("KUBECONFIG", &kc)
        .env("HOME", &dir.0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("kubectl watching", Duration::from_secs(5), || {
        api.count(
            "GET /apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            "watch=",
        ) > 0
    });
    let mut slice = kube_api::fixture("endpointslices.json")["items"][0].clone();
    slice["metadata"]["name"] = json!("backend-new01");
    api.put(Res::EndpointSlices, slice);
    let out = watch.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // The table kubectl prints from the server's Table rows: the list, then the added slice.
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("ADDRESSTYPE"),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("backend-x7k2p") && l.contains("10.244.1.7")),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("backend-new01")),
        "{text}"
    );
}

#[test]
fn fixtures_are_valid_objects_of_the_kubernetes_api() {
    kube_api::check_shapes(
        "fixtures_are_valid_objects_of_the_kubernetes_api",
        &kube_api::fixtures(),
    );
}

/// What kubectl and kube-rs never show on a healthy run: a `continue` token or a watch from
/// a version older than the compacted history is answered `410` (an HTTP status for the list,
/// an `ERROR` event with a `Status` for the watch), which is what makes clients relist.
#[test]
fn compacted_versions_are_gone_for_lists_and_watches() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(KubeApi::start());
    let port = api.addr.port();
    let (code, body) = http_blocking(port, "GET", "/api/v1/pods?limit=1").unwrap();
    assert_eq!(code, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let cont = page["metadata"]["continue"].as_str().unwrap().to_string();
    let rv = page["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, _) = http_blocking(
        port,
        "GET",
        &format!("/api/v1/pods?limit=1&continue={cont}"),
    )
    .unwrap();
    assert_eq!(code, 200);
    // A change, then the history is compacted past it.
    api.modify(Res::Pods, "default", "web-6f9d8c7b5-klmno", |p| {
        p["metadata"]["labels"]["tier"] = json!("front");
    });
    api.expire_watches();
    let (code, body) = http_blocking(
        port,
        "GET",
        &format!("/api/v1/pods?limit=1&continue={cont}"),
    )
    .unwrap();
    assert_eq!(code, 410, "{body}");
    assert!(body.contains("\"reason\":\"Expired\""), "{body}");
    let (code, body) = http_blocking(
        port,
        "GET",
        &format!("/api/v1/pods?watch=1&resourceVersion={rv}&timeoutSeconds=1"),
    )
    .unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains("\"type\":\"ERROR\"") && body.contains("\"code\":410"),
        "{body}"
    );
    // A label selector (URL-encoded, as clients send it) filters the list.
    let (code, body) =
        http_blocking(port, "GET", "/api/v1/pods?labelSelector=tier%3Dfront").unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains("web-6f9d8c7b5-klmno") && !body.contains("backend-"),
        "{body}"
    );
}
