//! The discovery service (xDS ADS), state-of-the-world flavour: one stream per client, authenticated by its token
//! (bootstrap or, with Kubernetes, ServiceAccount); the full current mesh on connect, every new version after, ACK/NACK and stale
//! nonces handled as in xDS, and the sidecar's row in `/status` kept up to date. Each push is
//! the whole config as one resource; sidecars use the incremental stream (`delta`) instead,
//! this one stays for xDS tooling and older sidecars.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::pb::ads::aggregated_discovery_service_server::AggregatedDiscoveryService;
use super::pb::ads::{Any, DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse};
use super::state::{lock, unix_now, Mesh, SidecarStatus, State};
use super::CONFIG_TYPE_URL;
use crate::config::Identity;

pub(super) fn bearer<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|s| s.trim().to_string())
}

fn response(mesh: &Mesh, id: Option<&Identity>) -> DiscoveryResponse {
    let view = mesh.config.workload_view(id);
    DiscoveryResponse {
        version_info: mesh.version.to_string(),
        resources: vec![Any {
            type_url: CONFIG_TYPE_URL.to_string(),
            value: serde_json::to_vec(&view).unwrap_or_default(),
        }],
        canary: false,
        type_url: CONFIG_TYPE_URL.to_string(),
        nonce: format!("{:016x}", fastrand::u64(..)),
    }
}

/// The discovery service.
pub struct Ads(pub Arc<State>);

/// A discovery stream's responses: tonic reads them from a channel the stream's task writes.
pub(super) type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

type ResponseStream = Stream<DiscoveryResponse>;

/// Runs one discovery stream on a task of its own (`serve` gets the stream's id and the
/// sending half), counted in the sidecars gauge while it lives and dropped from `/status`
/// when it ends, whichever kind of stream it is.
pub(super) fn spawn_stream<T, F, Fut>(state: Arc<State>, kind: &'static str, serve: F) -> Stream<T>
where
    T: Send + 'static,
    F: FnOnce(Arc<State>, u64, mpsc::Sender<Result<T, Status>>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), Status>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    let id = state
        .next_stream
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tokio::spawn(async move {
        state.metrics.sidecars.inc();
        if let Err(e) = serve(state.clone(), id, tx).await {
            tracing::debug!(error = %e, kind, "discovery stream ended");
        }
        lock(&state.sidecars).remove(&id);
        state.metrics.sidecars.dec();
    });
    Box::pin(ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = super::delta::DeltaStream;

    async fn delta_aggregated_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        super::delta::start(self.0.clone(), req).await
    }

    async fn stream_aggregated_resources(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let state = self.0.clone();
        let identity = match bearer(&req) {
            Some(t) => Some(
                super::review::authenticate(&state, &t)
                    .await
                    .map_err(|e| e.status())?,
            ),
            None => return Err(Status::unauthenticated("a bearer token is required")),
        };
        let mut inbound = req.into_inner();
        Ok(Response::new(spawn_stream(
            state,
            "state of the world",
            move |state, id, tx| async move {
                serve_stream(&state, id, identity, &mut inbound, tx).await
            },
        )))
    }
}

async fn serve_stream(
    state: &Arc<State>,
    id: u64,
    identity: Option<Identity>,
    inbound: &mut Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) -> Result<(), Status> {
    let mut mesh_rx = state.mesh.subscribe();
    // The first request names the node and the type it wants.
    let Some(first) = inbound.message().await? else {
        return Ok(());
    };
    if first.type_url != CONFIG_TYPE_URL {
        let _ = tx
            .send(Err(Status::invalid_argument(format!(
                "unknown type_url {:?}; this server serves {CONFIG_TYPE_URL}",
                first.type_url
            ))))
            .await;
        return Ok(());
    }
    let node_id = first.node.map(|n| n.id).unwrap_or_default();
    lock(&state.sidecars).insert(
        id,
        SidecarStatus {
            node_id: node_id.clone(),
            identity: identity.as_ref().map(|i| i.to_string()).unwrap_or_default(),
            acked_version: None,
            sent_version: None,
            last_nack: None,
            connected_since: unix_now(),
        },
    );
    tracing::info!(node = %node_id, identity = ?identity.as_ref().map(|i| i.as_str()), "sidecar connected");
    // Nothing is sent before the first complete load: a placeholder would only be refused.
    let current = loop {
        let current = mesh_rx.borrow_and_update().clone();
        if current.is_loaded() {
            break current;
        }
        tokio::select! {
            changed = mesh_rx.changed() => if changed.is_err() { return Ok(()) },
            msg = inbound.message() => if msg?.is_none() { return Ok(()) },
        }
    };
    // A new stream always gets the full current state.
    let mut nonce = send(state, id, &current, identity.as_ref(), &tx).await?;
    loop {
        tokio::select! {
            changed = mesh_rx.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let mesh = mesh_rx.borrow_and_update().clone();
                nonce = send(state, id, &mesh, identity.as_ref(), &tx).await?;
            }
            msg = inbound.message() => {
                let Some(req) = msg? else { return Ok(()) };
                if req.response_nonce != nonce {
                    // A stale nonce answers an older push: ignored, as in xDS.
                    tracing::debug!(node = %node_id, "stale nonce ignored");
                    continue;
                }
                let mut sidecars = lock(&state.sidecars);
                let Some(s) = sidecars.get_mut(&id) else { continue };
                match req.error_detail {
                    Some(err) => {
                        state.metrics.nacks.inc();
                        tracing::warn!(node = %node_id, version = %req.version_info, error = %err.message, "sidecar rejected the config (NACK)");
                        s.last_nack = Some(err.message);
                        if !req.version_info.is_empty() {
                            s.acked_version = Some(req.version_info);
                        }
                    }
                    None => {
                        state.metrics.acks.inc();
                        s.acked_version = Some(req.version_info);
                        s.last_nack = None;
                    }
                }
            }
        }
    }
}

async fn send(
    state: &State,
    id: u64,
    mesh: &Mesh,
    identity: Option<&Identity>,
    tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
) -> Result<String, Status> {
    let resp = response(mesh, identity);
    let nonce = resp.nonce.clone();
    if let Some(s) = lock(&state.sidecars).get_mut(&id) {
        s.sent_version = Some(resp.version_info.clone());
    }
    state.metrics.pushes.inc();
    state
        .metrics
        .push_bytes
        .inc_by(prost::Message::encoded_len(&resp) as u64);
    state.metrics.resources_sent.inc_by(1);
    tx.send(Ok(resp))
        .await
        .map_err(|_| Status::cancelled("stream closed"))?;
    Ok(nonce)
}
