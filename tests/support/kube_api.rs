//! An in-process Kubernetes API server for tests (no cluster can run here). It speaks the
//! real protocol to real clients (kube-rs in `spoke control`, and kubectl): discovery
//! documents, list (`limit`/`continue`, label and field selectors, `resourceVersion` in
//! list metadata, Table output when asked), watch (`watch=1`, chunked JSON events from a
//! `resourceVersion`, BOOKMARKs, an `ERROR` event with a `410 Expired` Status for compacted
//! versions, `timeoutSeconds`) and TokenReview. Objects come from JSON fixtures in the
//! API's shapes (tests/fixtures/kube) and change at run time; a test can also compact the
//! history (410 on the next resume) or break every open watch mid-stream.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

#[path = "kube_api/http.rs"]
mod http;
#[path = "kube_api/http_table.rs"]
mod http_table;
#[path = "kube_api/review.rs"]
mod review;
#[path = "kube_api/store.rs"]
pub mod store;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::broadcast;

pub use store::Res;
use store::{Change, Store};

/// What open watches are told.
#[derive(Clone, Debug)]
pub enum Signal {
    Change(Change),
    /// End with an `ERROR` event carrying `410 Expired` (history was compacted).
    Expire,
    /// Cut the connection mid-stream, as a dying API server or load balancer does.
    Break,
}

pub struct Inner {
    pub store: Mutex<Store>,
    pub signals: broadcast::Sender<Signal>,
    /// TokenReview: token -> (username `system:serviceaccount:<ns>:<sa>`, its audiences).
    pub tokens: Mutex<HashMap<String, (String, Vec<String>)>>,
    /// Every request line served, for tests to count lists and watches.
    pub requests: Mutex<Vec<String>>,
    /// Kinds the client may not list or watch (RBAC missing): `403 Forbidden`.
    pub forbidden: Mutex<std::collections::HashSet<Res>>,
}

/// A running test API server on 127.0.0.1; stops when dropped.
pub struct KubeApi {
    pub addr: SocketAddr,
    pub inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The API server's own audience: what tokens are checked against when a TokenReview names
/// none.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// The fixtures directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kube")
}

/// Checks the lists `pods.json`, `services.json` and `endpointslices.json` in `dir` against
/// Kubernetes' own schemas (`fixtures/kube/validate.py`, strict); panics on an invalid object.
/// Without python's kubernetes-validate it says that `test` skipped the check.
pub fn check_shapes(test: &str, dir: &Path) {
    let have_schemas = std::process::Command::new("python3")
        .args(["-c", "import kubernetes_validate"])
        .status()
        .is_ok_and(|s| s.success());
    let why = "python3 with kubernetes-validate (pip install kubernetes-validate)";
    if !crate::support::need(test, why, have_schemas) {
        return;
    }
    let out = std::process::Command::new("python3")
        .arg(fixtures().join("validate.py"))
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fixture file as JSON.
pub fn fixture(name: &str) -> Value {
    let p = fixtures().join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

impl KubeApi {
    /// Starts serving the objects of the fixture lists `pods.json`, `services.json` and
    /// `endpointslices.json`.
    pub async fn start() -> KubeApi {
        let mut objects = Vec::new();
        for (res, file) in [
            (Res::Pods, "pods.json"),
            (Res::Services, "services.json"),
            (Res::EndpointSlices, "endpointslices.json"),
        ] {
            for item in fixture(file)["items"].as_array().unwrap() {
                objects.push((res, item.clone()));
            }
        }
        KubeApi::start_with(objects).await
    }

    /// Starts serving `objects` (a test's own, in the API's shapes).
    pub async fn start_with(objects: Vec<(Res, Value)>) -> KubeApi {
        let (signals, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            store: Mutex::new(Store::new()),
            signals,
            tokens: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            forbidden: Mutex::new(Default::default()),
        });
        for (res, object) in objects {
            inner.store.lock().unwrap().put(res, object);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(http::serve(listener, inner.clone()));
        KubeApi { addr, inner, task }
    }

    /// Creates or replaces an object (ADDED or MODIFIED to watchers).
    pub fn put(&self, res: Res, object: Value) {
        let c = self.inner.store.lock().unwrap().put(res, object);
        let _ = self.inner.signals.send(Signal::Change(c));
    }

    /// Changes a stored object in place (MODIFIED to watchers).
    pub fn modify(&self, res: Res, ns: &str, name: &str, f: impl FnOnce(&mut Value)) {
        let mut o = self.get(res, ns, name).expect("no such object");
        f(&mut o);
        self.put(res, o);
    }

    pub fn get(&self, res: Res, ns: &str, name: &str) -> Option<Value> {
        self.inner.store.lock().unwrap().get(res, ns, name)
    }

    /// Deletes an object (DELETED to watchers).
    pub fn delete(&self, res: Res, ns: &str, name: &str) {
        let c = self.inner.store.lock().unwrap().delete(res, ns, name);
        if let Some(c) = c {
            let _ = self.inner.signals.send(Signal::Change(c));
        }
    }

    /// Compacts the history and ends every open watch with `410 Expired`: clients must
    /// relist, as after an etcd compaction.
    pub fn expire_watches(&self) {
        self.inner.store.lock().unwrap().compact();
        let _ = self.inner.signals.send(Signal::Expire);
    }

    /// Cuts every open watch; while the clients are away, changes an object and compacts
    /// the history past it (all under the store's lock, so no resume slips in between).
    /// Their resumes get `410 Gone`; only a relist shows them the change.
    pub fn break_watches_and_lose_history(
        &self,
        res: Res,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) {
        let mut store = self.inner.store.lock().unwrap();
        let _ = self.inner.signals.send(Signal::Break);
        let mut o = store.get(res, ns, name).expect("no such object");
        f(&mut o);
        store.put(res, o);
        store.compact();
    }

    /// Cuts every open watch connection mid-stream.
    pub fn break_watches(&self) {
        let _ = self.inner.signals.send(Signal::Break);
    }

    /// Refuses (`true`) or allows again listing and watching `res`, as RBAC would.
    pub fn forbid(&self, res: Res, forbidden: bool) {
        let mut f = self.inner.forbidden.lock().unwrap();
        if forbidden {
            f.insert(res);
        } else {
            f.remove(&res);
        }
    }

    /// Makes `token` one the TokenReview authenticates as `username`, issued for the API
    /// server's own audience (as a pod's default token is).
    pub fn allow_token(&self, token: &str, username: &str) {
        self.allow_token_for(token, username, API_AUDIENCE);
    }

    /// The same for a projected token issued for `audience`.
    pub fn allow_token_for(&self, token: &str, username: &str, audience: &str) {
        self.inner.tokens.lock().unwrap().insert(
            token.to_string(),
            (username.to_string(), vec![audience.to_string()]),
        );
    }

    /// How many requests so far started with `prefix` (e.g. `GET /api/v1/pods?`) and
    /// contain `needle`.
    pub fn count(&self, prefix: &str, needle: &str) -> usize {
        self.inner
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.starts_with(prefix) && r.contains(needle))
            .count()
    }

    /// A kubeconfig for this server (plain HTTP, a bearer token that is not checked).
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let p = dir.join("kubeconfig");
        std::fs::write(
            &p,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\ncurrent-context: test\nusers:\n- name: test\n  user:\n    token: test-admin-token\n",
                self.addr
            ),
        )
        .unwrap();
        p
    }
}
