//! Kubernetes service discovery for `spoke control --kubernetes`: one watcher each for
//! Services, EndpointSlices (discovery.k8s.io/v1) and Pods, into one in-memory copy of
//! what matters; a change is debounced and the whole Kubernetes view is rebuilt (`view`)
//! and handed to `State::set_kube`, whose `publish()` merges it with the directory.
//!
//! A watch that fails (a broken connection, `410 Gone`, a refused list) is restarted with
//! a fresh list after a backoff, and counted in `spoke_control_kube_relists_total`. Until
//! the fresh list completes the last good objects stay: sidecars keep what they have.

pub mod view;

use std::fmt::Debug;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio_stream::StreamExt;

use super::state::{lock, State};
use view::Objects;

/// How long a burst of changes is gathered before one rebuild and push.
pub const DEBOUNCE: Duration = Duration::from_millis(50);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// One watched kind: where its objects go in `Objects`.
trait Tracked: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + 'static {
    /// The `resource` label of the relist counter.
    const LABEL: &'static str;
    fn put(self, o: &mut Objects, key: String);
    fn remove(o: &mut Objects, key: &str);
    fn clear(o: &mut Objects);
}

impl Tracked for Service {
    const LABEL: &'static str = "services";
    fn put(self, o: &mut Objects, key: String) {
        o.services.insert(key, self);
    }
    fn remove(o: &mut Objects, key: &str) {
        o.services.remove(key);
    }
    fn clear(o: &mut Objects) {
        o.services.clear();
    }
}

impl Tracked for EndpointSlice {
    const LABEL: &'static str = "endpointslices";
    fn put(self, o: &mut Objects, key: String) {
        o.slices.insert(key, self);
    }
    fn remove(o: &mut Objects, key: &str) {
        o.slices.remove(key);
    }
    fn clear(o: &mut Objects) {
        o.slices.clear();
    }
}

impl Tracked for Pod {
    const LABEL: &'static str = "pods";
    /// Only the ServiceAccount is kept: a pod object is large and nothing else is used.
    fn put(self, o: &mut Objects, key: String) {
        let sa = self
            .spec
            .and_then(|s| s.service_account_name)
            .unwrap_or_else(|| "default".to_string());
        o.pods.insert(key, sa);
    }
    fn remove(o: &mut Objects, key: &str) {
        o.pods.remove(key);
    }
    fn clear(o: &mut Objects) {
        o.pods.clear();
    }
}

/// What the watchers share with the builder.
struct Shared {
    objects: Mutex<Objects>,
    /// Which kinds have completed their first list; nothing is published before all have.
    synced: Mutex<[bool; 3]>,
    changed: Notify,
}

/// Starts the watchers and the builder; they run until the handles are aborted.
pub fn spawn(
    client: kube::Client,
    trust_domain: String,
    state: Arc<State>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let shared = Arc::new(Shared {
        objects: Mutex::new(Objects::default()),
        synced: Mutex::new([false; 3]),
        changed: Notify::new(),
    });
    vec![
        tokio::spawn(watch_kind::<Service>(
            Api::all(client.clone()),
            0,
            shared.clone(),
            state.clone(),
        )),
        tokio::spawn(watch_kind::<EndpointSlice>(
            Api::all(client.clone()),
            1,
            shared.clone(),
            state.clone(),
        )),
        tokio::spawn(watch_kind::<Pod>(
            Api::all(client),
            2,
            shared.clone(),
            state.clone(),
        )),
        tokio::spawn(build_loop(shared, trust_domain, state)),
    ]
}

fn key<K: Resource>(o: &K) -> String {
    format!(
        "{}/{}",
        o.meta().namespace.as_deref().unwrap_or(""),
        o.meta().name.as_deref().unwrap_or("")
    )
}

/// Lists and watches one kind forever; any error ends the watch and a new list follows.
async fn watch_kind<K: Tracked>(api: Api<K>, slot: usize, shared: Arc<Shared>, state: Arc<State>) {
    let mut backoff = BACKOFF_MIN;
    let mut listed_before = false;
    loop {
        if listed_before {
            if let Some(m) = &state.metrics.kube {
                m.relists.with_label_values(&[K::LABEL]).inc();
            }
            tracing::info!(resource = K::LABEL, "relisting");
        }
        let mut stream = pin!(watcher::watcher(api.clone(), watcher::Config::default()));
        let mut buffer: Vec<K> = Vec::new();
        let (error, forbidden) = loop {
            let ev = match stream.next().await {
                Some(Ok(ev)) => ev,
                Some(Err(e)) => break (e.to_string(), is_forbidden(&e)),
                None => break ("the watch stream ended".to_string(), false),
            };
            match ev {
                Event::Init => buffer.clear(),
                Event::InitApply(o) => buffer.push(o),
                Event::InitDone => {
                    let mut objects = lock(&shared.objects);
                    K::clear(&mut objects);
                    for o in buffer.drain(..) {
                        let k = key(&o);
                        o.put(&mut objects, k);
                    }
                    drop(objects);
                    lock(&shared.synced)[slot] = true;
                    backoff = BACKOFF_MIN;
                    tracing::debug!(resource = K::LABEL, "listed");
                    shared.changed.notify_one();
                }
                Event::Apply(o) => {
                    let k = key(&o);
                    tracing::debug!(resource = K::LABEL, name = %o.name_any(), "changed");
                    o.put(&mut lock(&shared.objects), k);
                    shared.changed.notify_one();
                }
                Event::Delete(o) => {
                    K::remove(&mut lock(&shared.objects), &key(&o));
                    shared.changed.notify_one();
                }
            }
        };
        if let Some(m) = &state.metrics.kube {
            m.watch_errors.with_label_values(&[K::LABEL]).inc();
        }
        if forbidden {
            // An operator must act: the ServiceAccount lacks the RBAC rules (README).
            tracing::error!(resource = K::LABEL, error = %error, retry_in = ?backoff, "kubernetes refused to list or watch: grant get/list/watch on it; keeping the last good objects");
        } else {
            tracing::warn!(resource = K::LABEL, error = %error, retry_in = ?backoff, "kubernetes watch failed; keeping the last good objects");
        }
        // A failure before the first list also counts as "listed before" from here on, so
        // the next attempt is counted as the relist it is.
        listed_before = true;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Whether the API server said 403: missing RBAC, which no retry will fix by itself.
fn is_forbidden(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 403,
        watcher::Error::WatchError(s) => s.code == 403,
        _ => false,
    }
}

/// Rebuilds the Kubernetes view after each burst of changes, once every kind is listed.
async fn build_loop(shared: Arc<Shared>, trust_domain: String, state: Arc<State>) {
    loop {
        shared.changed.notified().await;
        tokio::time::sleep(DEBOUNCE).await;
        if !lock(&shared.synced).iter().all(|s| *s) {
            continue;
        }
        let view = view::build(&lock(&shared.objects), &trust_domain);
        tracing::debug!(
            clusters = view.clusters.len(),
            services = view.services.len(),
            "kubernetes view rebuilt"
        );
        state.set_kube(view);
    }
}
