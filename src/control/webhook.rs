//! The injection webhook of `spoke control`: HTTPS (`POST /inject`) taking an
//! `admission.k8s.io/v1` AdmissionReview and answering with a JSON Patch that makes the
//! pod exactly what `spoke inject` makes of it. It never refuses a pod: anything it does
//! not inject (another kind, a disabled or host-network pod, a pod it cannot read) is
//! allowed unchanged, so the webhook can only add the mesh, never block a workload.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use crate::inject::kinds::Outcome;
use crate::inject::value::Value;
use crate::inject::{self, Options};

/// The API server sends whole objects; a pod with large annotations stays well below this.
const MAX_BODY: usize = 8 << 20;
pub const PATH: &str = "/inject";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: String,
    kind: String,
    request: Option<ReviewRequest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewRequest {
    uid: String,
    kind: Option<Gvk>,
    object: Option<Value>,
    namespace: Option<String>,
    operation: Option<String>,
    sub_resource: Option<String>,
}

#[derive(Deserialize)]
struct Gvk {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

/// Why a review could not be read (answered with 400).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadReview(String);

/// Answers one AdmissionReview (the request body); the response body on success.
pub fn review(body: &[u8], opts: &Options) -> Result<serde_json::Value, BadReview> {
    let r: Review = serde_json::from_slice(body)
        .map_err(|e| BadReview(format!("not an AdmissionReview: {e}")))?;
    if r.api_version != "admission.k8s.io/v1" || r.kind != "AdmissionReview" {
        return Err(BadReview(format!(
            "expected apiVersion admission.k8s.io/v1, kind AdmissionReview; got {} {}",
            r.api_version, r.kind
        )));
    }
    let req = r
        .request
        .ok_or_else(|| BadReview("the AdmissionReview has no request".into()))?;
    let mut response = serde_json::json!({ "uid": req.uid, "allowed": true });
    // Only a pod being created: a running pod's spec cannot take new containers, and a
    // subresource (binding, ephemeral containers) is not the pod itself.
    let is_pod = req
        .kind
        .as_ref()
        .is_some_and(|k| k.group.is_empty() && k.kind == "Pod")
        && req.operation.as_deref().is_none_or(|op| op == "CREATE")
        && req.sub_resource.as_deref().is_none_or(str::is_empty);
    let ns = req.namespace.as_deref().unwrap_or("");
    match (is_pod, req.object) {
        (false, _) => {
            tracing::debug!(uid = %req.uid, "webhook: not a pod creation; allowed unchanged")
        }
        (true, None) => tracing::warn!(uid = %req.uid, "webhook: pod review without an object"),
        (true, Some(pod)) => match inject::inject_pod(&pod, opts) {
            Ok((new, Outcome::Injected)) => {
                let ops = inject::patch::diff(&pod, &new);
                let text = serde_json::to_vec(&ops).unwrap_or_default();
                response["patchType"] = "JSONPatch".into();
                response["patch"] = base64::engine::general_purpose::STANDARD
                    .encode(text)
                    .into();
                tracing::info!(namespace = %ns, pod = %pod_name(&pod), "webhook: sidecar injected");
            }
            Ok((_, Outcome::Skipped(why))) => {
                tracing::info!(namespace = %ns, pod = %pod_name(&pod), reason = %why, "webhook: not injected")
            }
            Ok((_, Outcome::Untouched)) => {}
            Err(e) => {
                tracing::warn!(namespace = %ns, pod = %pod_name(&pod), error = %e, "webhook: cannot inject; allowed unchanged")
            }
        },
    }
    Ok(serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
}

fn pod_name(pod: &Value) -> String {
    let meta = |k| pod.at(&["metadata", k]).and_then(Value::as_str);
    meta("name")
        .or(meta("generateName"))
        .unwrap_or("?")
        .to_string()
}

/// The webhook's TLS config from PEM files (a chain, leaf first, and its key).
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("--webhook-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("--webhook-cert {}: no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--webhook-key {}: {e}", key.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("webhook certificate: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn reply(status: StatusCode, ctype: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    r
}

async fn handle(req: Request<Incoming>, opts: Arc<Options>) -> Response<Full<Bytes>> {
    let text = |status, msg: String| reply(status, "text/plain", (msg + "\n").into_bytes());
    if req.uri().path() != PATH {
        return text(
            StatusCode::NOT_FOUND,
            format!("not found: the webhook is POST {PATH}"),
        );
    }
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, format!("{PATH} takes POST"));
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            )
        }
    };
    match review(&body, &opts) {
        Ok(doc) => reply(
            StatusCode::OK,
            "application/json",
            serde_json::to_vec(&doc).unwrap_or_default(),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "webhook: bad request");
            text(StatusCode::BAD_REQUEST, e.to_string())
        }
    }
}

/// Serves the webhook on `listener` until the task is dropped. A failed handshake is
/// logged and never ends the loop.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    opts: Options,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let opts = Arc::new(opts);
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "webhook accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, opts) = (acceptor.clone(), opts.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(sock))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    return tracing::debug!(peer = %peer, error = %e, "webhook TLS handshake failed")
                }
                Err(_) => return tracing::debug!(peer = %peer, "webhook TLS handshake timed out"),
            };
            let svc = hyper::service::service_fn(move |req| {
                let opts = opts.clone();
                async move { Ok::<_, Infallible>(handle(req, opts).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}
