//! The injection webhook of the real `spoke control` binary, over HTTPS with a serving
//! certificate from `spoke ca issue --dns`, verified by the client as the API server
//! verifies it (the caBundle root and the Service's DNS name). AdmissionReviews shaped
//! like the API server's: a Pod is patched, and the patch, applied by an independent JSON
//! Patch implementation, gives exactly what `spoke inject` makes of the same Pod.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value as Json};
use support::mesh::{spoke_ok, wait_for, Mesh};
use support::{free_port, within, Proc};

const POD_REVIEW: &str = include_str!("webhook/pod-review.json");
const DEPLOYMENT_REVIEW: &str = include_str!("webhook/deployment-review.json");
const SERVICE_DNS: &str = "spoke-control.spoke-system.svc";
const CONTROL_ID: &str = "spiffe://cluster.local/ns/spoke-system/sa/spoke-control";

struct Webhook {
    port: u16,
    roots: Arc<rustls::RootCertStore>,
    _control: Proc,
    _mesh: Mesh,
}

/// A control plane with its webhook on, the serving certificate made by `spoke ca issue`.
fn start(extra: &[&str]) -> Webhook {
    let mesh = Mesh::new();
    let certs = mesh.dir.0.join("webhook");
    spoke_ok(&[
        "ca",
        "issue",
        "--ca",
        mesh.ca.to_str().unwrap(),
        "--id",
        CONTROL_ID,
        "--dns",
        SERVICE_DNS,
        "--out",
        certs.to_str().unwrap(),
    ]);
    let (cert, key) = (certs.join("cert.pem"), certs.join("key.pem"));
    // A port from `free_port` may be taken by another test's process before the control
    // plane binds it: the control plane then exits, and is started again on fresh ports.
    let mut tries = 0;
    let (control, port) = loop {
        tries += 1;
        let (cp, cs, port) = (free_port(), free_port(), free_port());
        let hook = format!("127.0.0.1:{port}");
        let mut args = vec![
            "--webhook-listen",
            &hook,
            "--webhook-cert",
            cert.to_str().unwrap(),
            "--webhook-key",
            key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut control = mesh.control_with(cp, cs, &args);
        let mut exited = false;
        wait_for("webhook listening", Duration::from_secs(30), || {
            let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            exited = !up && control.0.try_wait().ok().flatten().is_some();
            up || exited
        });
        if !exited {
            break (control, port);
        }
        assert!(tries < 3, "the control plane exited at start {tries} times");
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(mesh.ca.join("root.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    Webhook {
        port,
        roots: Arc::new(roots),
        _control: control,
        _mesh: mesh,
    }
}

impl Webhook {
    /// One HTTPS request as the API server makes it; (status, body).
    async fn call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        self.call_as(SERVICE_DNS, method, path, body).await.unwrap()
    }

    async fn call_as(
        &self,
        name: &str,
        method: &str,
        path: &str,
        body: &str,
    ) -> std::io::Result<(u16, String)> {
        let cfg = rustls::ClientConfig::builder_with_provider(spoke::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
            .await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", name)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).to_string()))
    }

    async fn review(&self, body: &str) -> Json {
        let (status, text) = self.call("POST", "/inject", body).await;
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }
}

/// `spoke inject ARGS` on one object (as YAML), parsed back to JSON.
fn spoke_inject(object: &Json, args: &[&str]) -> Json {
    let yaml = serde_saphyr::to_string(object).unwrap();
    let mut all = vec!["inject"];
    all.extend_from_slice(args);
    let out = support::spoke_with_stdin(&all, &yaml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_slice(&out.stdout).unwrap()
}

/// The patch of a review response, decoded and applied to `object`.
fn apply(response: &Json, object: &Json) -> Json {
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&raw).unwrap();
    let mut doc = object.clone();
    json_patch::patch(&mut doc, &patch).unwrap();
    doc
}

fn no_patch(review: &Json, uid: &str) {
    let r = &review["response"];
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    assert_eq!(r["uid"], uid);
    assert_eq!(r["allowed"], true);
    assert!(
        r.get("patch").is_none() && r.get("patchType").is_none(),
        "{review}"
    );
}

fn pod_review_with(change: impl FnOnce(&mut Json), uid: &str) -> String {
    let mut review: Json = serde_json::from_str(POD_REVIEW).unwrap();
    review["request"]["uid"] = uid.into();
    change(&mut review["request"]["object"]);
    review.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_is_patched_into_exactly_what_spoke_inject_makes() {
    let hook = start(&[]);
    let review = within(hook.review(POD_REVIEW)).await;
    let r = &review["response"];
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(r["allowed"], true);
    let pod: Json = serde_json::from_str::<Json>(POD_REVIEW).unwrap()["request"]["object"].clone();
    let patched = apply(r, &pod);
    assert_eq!(patched, spoke_inject(&pod, &[]));
    // The API server's defaults and the pod's own parts are still there.
    assert_eq!(
        patched["spec"]["volumes"][0]["name"],
        "kube-api-access-x2k9q"
    );
    assert_eq!(patched["spec"]["containers"][0]["name"], "web");
    assert_eq!(
        patched["metadata"]["annotations"]["spoke.dev/status"],
        "injected"
    );

    // The patch only adds: nothing of the pod is replaced or removed.
    let raw = base64::engine::general_purpose::STANDARD
        .decode(r["patch"].as_str().unwrap())
        .unwrap();
    let ops: Vec<Json> = serde_json::from_slice(&raw).unwrap();
    assert!(ops.iter().all(|o| o["op"] == "add"), "{ops:?}");

    // An injected pod (a re-sent review, or a pod made from an injected template) is left alone.
    let again = pod_review_with(|o| *o = patched.clone(), "again");
    no_patch(&within(hook.review(&again)).await, "again");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_webhook_injects_with_the_control_planes_sidecar_flags() {
    let args = [
        "--classic",
        "--image",
        "reg.example/spoke:9",
        "--init-image",
        "reg.example:5000/redirect:9",
        "--control-address",
        "cp:15010",
    ];
    let hook = start(&args);
    let review = within(hook.review(POD_REVIEW)).await;
    let pod: Json = serde_json::from_str::<Json>(POD_REVIEW).unwrap()["request"]["object"].clone();
    let patched = apply(&review["response"], &pod);
    assert_eq!(patched, spoke_inject(&pod, &args));
    let proxy = &patched["spec"]["containers"][0];
    assert_eq!(proxy["name"], "spoke-proxy");
    assert_eq!(proxy["image"], "reg.example/spoke:9");
    let init = patched["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "spoke-init")
        .unwrap();
    assert_eq!(init["image"], "reg.example:5000/redirect:9");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_webhook_derives_the_init_image_as_spoke_inject_does() {
    let args = ["--image", "reg.example:5000/mesh/spoke:9"];
    let hook = start(&args);
    let review = within(hook.review(POD_REVIEW)).await;
    let pod: Json = serde_json::from_str::<Json>(POD_REVIEW).unwrap()["request"]["object"].clone();
    let patched = apply(&review["response"], &pod);
    assert_eq!(patched, spoke_inject(&pod, &args));
    let init = &patched["spec"]["initContainers"];
    let init = init
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "spoke-init");
    assert_eq!(init.unwrap()["image"], "reg.example:5000/mesh/spoke-init:9");
}

#[tokio::test(flavor = "multi_thread")]
async fn other_kinds_and_opted_out_pods_are_allowed_without_a_patch() {
    let hook = start(&[]);
    no_patch(
        &within(hook.review(DEPLOYMENT_REVIEW)).await,
        "0df28fbd-5f5f-11e8-bc74-36e6bb280816",
    );
    let disabled = pod_review_with(
        |o| o["metadata"]["annotations"]["spoke.dev/inject"] = "disabled".into(),
        "disabled",
    );
    no_patch(&within(hook.review(&disabled)).await, "disabled");
    let labelled = pod_review_with(
        |o| o["metadata"]["labels"]["spoke.dev/inject"] = "disabled".into(),
        "labelled",
    );
    no_patch(&within(hook.review(&labelled)).await, "labelled");
    // An update of a running pod, or a subresource, is never patched.
    let mut update: Json = serde_json::from_str(&pod_review_with(|_| {}, "update")).unwrap();
    update["request"]["operation"] = "UPDATE".into();
    no_patch(&within(hook.review(&update.to_string())).await, "update");
    let mut binding: Json = serde_json::from_str(&pod_review_with(|_| {}, "binding")).unwrap();
    binding["request"]["subResource"] = "binding".into();
    no_patch(&within(hook.review(&binding.to_string())).await, "binding");
    let host = pod_review_with(|o| o["spec"]["hostNetwork"] = true.into(), "host");
    no_patch(&within(hook.review(&host)).await, "host");
    // A pod it cannot inject (no containers) is still allowed: the webhook never blocks.
    let empty = pod_review_with(|o| o["spec"]["containers"] = json!([]), "empty");
    no_patch(&within(hook.review(&empty)).await, "empty");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_are_400_with_a_clear_message() {
    let hook = start(&[]);
    let cases = [
        ("{ not json", "not an AdmissionReview"),
        (
            r#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}"#,
            "expected apiVersion admission.k8s.io/v1",
        ),
        (
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            "has no request",
        ),
        (
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"kind":{"kind":"Pod"}}}"#,
            "missing field `uid`",
        ),
    ];
    for (body, want) in cases {
        let (status, text) = within(hook.call("POST", "/inject", body)).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(want), "{body}: {text}");
    }
    assert_eq!(within(hook.call("GET", "/inject", "")).await.0, 405);
    assert_eq!(within(hook.call("POST", "/other", POD_REVIEW)).await.0, 404);
    // The serving certificate is good for the Service's DNS name only.
    let wrong = within(hook.call_as("other.example", "POST", "/inject", POD_REVIEW)).await;
    assert!(wrong.is_err(), "{wrong:?}");
}

/// `spoke control` on a fresh mesh with `args` added, expected to refuse to start: its stderr.
fn control_refused(args: &[&str]) -> String {
    let mesh = Mesh::new();
    let (cp, cs) = (free_port(), free_port());
    let out = Command::new(env!("CARGO_BIN_EXE_spoke"))
        .args([
            "control",
            "--config-dir",
            mesh.mesh.to_str().unwrap(),
            "--ca",
        ])
        .arg(&mesh.ca)
        .args([
            "--listen",
            &format!("127.0.0.1:{cp}"),
            "--stats",
            &format!("127.0.0.1:{cs}"),
        ])
        .args(args)
        .env_remove("SPOKE_INIT_IMAGE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_webhook_is_off_without_a_certificate_and_a_half_pair_is_refused() {
    let err = control_refused(&["--webhook-cert", "/nonexistent/cert.pem"]);
    assert!(err.contains("--webhook-key"), "{err}");
}

#[test]
fn a_webhook_with_a_digest_pinned_image_and_no_init_image_does_not_start() {
    let err = control_refused(&[
        "--webhook-cert",
        "/nonexistent/cert.pem",
        "--webhook-key",
        "/nonexistent/key.pem",
        "--image",
        "reg.example/spoke@sha256:0123456789abcdef",
    ]);
    assert!(err.contains("--init-image"), "{err}");
}
