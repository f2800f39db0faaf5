//! The incremental discovery stream (Delta xDS, `DeltaAggregatedResources`), what sidecars
//! speak: per stream the control plane keeps the resources (name -> version) the sidecar
//! has ACKed, and sends only the resources of the current mesh version whose version differs,
//! and the names of those that are gone. One push is in flight at a time: a change that
//! comes meanwhile is sent, folded with any later ones, when the push is ACKed or NACKed.
//! A NACK leaves the ACKed set as it was (the sidecar keeps its last good config) and that
//! version is not sent again; the next mesh version is sent against the ACKed set.

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::pb::ads::{Any, DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use super::resources::Increment;
use super::state::{lock, unix_now, Mesh, SidecarStatus, State};
use super::CONFIG_TYPE_URL;
use crate::config::Identity;

/// The response stream of `DeltaAggregatedResources`.
pub type DeltaStream = super::ads::Stream<DeltaDiscoveryResponse>;

type Tx = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

/// One push waiting for its ACK or NACK.
struct Pending {
    nonce: String,
    version: u64,
    inc: Increment,
}

/// What one stream knows about its sidecar.
struct Peer {
    stream: u64,
    node_id: String,
    identity: Option<Identity>,
    /// The resources the sidecar has ACKed, name -> version.
    known: HashMap<String, String>,
    /// The mesh version `known` is exactly, when it is.
    known_at: Option<u64>,
    pending: Option<Pending>,
    /// The last version the sidecar refused: not sent again.
    refused: Option<u64>,
}

/// Accepts a stream: authenticates its token and spawns its task.
pub async fn start(
    state: Arc<State>,
    req: Request<Streaming<DeltaDiscoveryRequest>>,
) -> Result<Response<DeltaStream>, Status> {
    let Some(token) = super::ads::bearer(&req) else {
        return Err(Status::unauthenticated("a bearer token is required"));
    };
    let identity = super::review::authenticate(&state, &token)
        .await
        .map_err(|e| e.status())?;
    let mut inbound = req.into_inner();
    Ok(Response::new(super::ads::spawn_stream(
        state,
        "incremental",
        move |state, id, tx| async move { serve(&state, id, identity, &mut inbound, tx).await },
    )))
}

async fn serve(
    state: &Arc<State>,
    stream: u64,
    identity: Identity,
    inbound: &mut Streaming<DeltaDiscoveryRequest>,
    tx: Tx,
) -> Result<(), Status> {
    let mut mesh_rx = state.mesh.subscribe();
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
    let mut peer = Peer {
        stream,
        node_id: first.node.map(|n| n.id).unwrap_or_default(),
        identity: Some(identity),
        known: first.initial_resource_versions,
        known_at: None,
        pending: None,
        refused: None,
    };
    lock(&state.sidecars).insert(
        stream,
        SidecarStatus {
            node_id: peer.node_id.clone(),
            identity: peer
                .identity
                .as_ref()
                .map(|i| i.to_string())
                .unwrap_or_default(),
            acked_version: None,
            sent_version: None,
            last_nack: None,
            connected_since: unix_now(),
        },
    );
    tracing::info!(node = %peer.node_id, identity = ?peer.identity.as_ref().map(|i| i.as_str()), held = peer.known.len(), "sidecar connected (incremental)");
    // Nothing is sent before the first complete load, as on the state-of-the-world stream.
    while !mesh_rx.borrow_and_update().is_loaded() {
        tokio::select! {
            changed = mesh_rx.changed() => if changed.is_err() { return Ok(()) },
            msg = inbound.message() => if msg?.is_none() { return Ok(()) },
        }
    }
    let mesh = mesh_rx.borrow_and_update().clone();
    peer.push(state, &mesh, &tx).await?;
    loop {
        tokio::select! {
            changed = mesh_rx.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let mesh = mesh_rx.borrow_and_update().clone();
                if peer.pending.is_none() {
                    peer.push(state, &mesh, &tx).await?;
                }
            }
            msg = inbound.message() => {
                let Some(req) = msg? else { return Ok(()) };
                if peer.answer(state, req) {
                    let mesh = mesh_rx.borrow_and_update().clone();
                    peer.push(state, &mesh, &tx).await?;
                }
            }
        }
    }
}

// === impl Peer ===

impl Peer {
    /// Sends what the sidecar lacks of `mesh`, unless it has it or refused it.
    async fn push(&mut self, state: &State, mesh: &Mesh, tx: &Tx) -> Result<(), Status> {
        if self.known_at == Some(mesh.version) || self.refused.is_some_and(|v| v >= mesh.version) {
            return Ok(());
        }
        let view = mesh
            .resources
            .view(&mesh.config.rest, self.identity.as_ref());
        let inc = mesh.resources.increment(&self.known, self.known_at, view);
        let resp = DeltaDiscoveryResponse {
            system_version_info: mesh.version.to_string(),
            resources: inc
                .resources
                .iter()
                .map(|e| Resource {
                    version: e.version.clone(),
                    resource: Some(Any {
                        type_url: e.type_url.to_string(),
                        value: e.body.to_vec(),
                    }),
                    name: e.name.clone(),
                    aliases: Vec::new(),
                })
                .collect(),
            type_url: CONFIG_TYPE_URL.to_string(),
            nonce: format!("{:016x}", fastrand::u64(..)),
            removed_resources: inc.removed.clone(),
        };
        let bytes = resp.encoded_len();
        state.metrics.pushes.inc();
        state.metrics.push_bytes.inc_by(bytes as u64);
        state
            .metrics
            .resources_sent
            .inc_by((inc.resources.len() + inc.removed.len()) as u64);
        tracing::debug!(node = %self.node_id, version = mesh.version, resources = inc.resources.len(), removed = inc.removed.len(), bytes, "incremental push");
        if let Some(s) = lock(&state.sidecars).get_mut(&self.stream) {
            s.sent_version = Some(resp.system_version_info.clone());
        }
        self.pending = Some(Pending {
            nonce: resp.nonce.clone(),
            version: mesh.version,
            inc,
        });
        tx.send(Ok(resp))
            .await
            .map_err(|_| Status::cancelled("stream closed"))
    }

    /// Takes an ACK or NACK; true when the push it answers is settled and the next one may go.
    fn answer(&mut self, state: &State, req: DeltaDiscoveryRequest) -> bool {
        let Some(p) = self
            .pending
            .take_if(|p| !req.response_nonce.is_empty() && p.nonce == req.response_nonce)
        else {
            tracing::debug!(node = %self.node_id, "stale nonce ignored");
            return false;
        };
        let mut sidecars = lock(&state.sidecars);
        let status = sidecars.get_mut(&self.stream);
        match req.error_detail {
            Some(err) => {
                state.metrics.nacks.inc();
                tracing::warn!(node = %self.node_id, version = p.version, error = %err.message, "sidecar rejected the config (NACK)");
                self.refused = Some(p.version);
                if let Some(s) = status {
                    s.last_nack = Some(err.message);
                }
            }
            None => {
                state.metrics.acks.inc();
                for e in &p.inc.resources {
                    self.known.insert(e.name.clone(), e.version.clone());
                }
                for n in &p.inc.removed {
                    self.known.remove(n);
                }
                self.known_at = Some(p.version);
                if let Some(s) = status {
                    s.acked_version = Some(p.version.to_string());
                    s.last_nack = None;
                }
            }
        }
        true
    }
}
