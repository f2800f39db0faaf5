//! The control plane and its stream. `spoke control` starts at `run` (`serve`): its state and
//! the one `publish()` of the mesh in `state`, the discovery stream in `ads`, certificates
//! in `certify` (bootstrap tokens in `token`), `/status` in `server_stats`, the mesh
//! directory in `mesh`, Kubernetes Services in `discovery` and ServiceAccount tokens in
//! `review`. The sidecar's side is `client`; the shared protocol types are `pb`
//! (generated from `proto/` by build.rs).

pub mod ads;
pub mod cache;
pub mod certify;
pub mod client;
pub mod delta;
pub mod discovery;
pub mod held;
pub mod mesh;
pub mod resources;
pub mod review;
pub mod serve;
pub mod server_stats;
pub mod state;
pub mod token;
pub mod webhook;

pub use serve::{kube_client, run, start, Kubernetes, Options, Running, Settings, StartError};
pub use state::State;

/// Generated protobuf and gRPC code.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    pub mod ads {
        tonic::include_proto!("envoy.service.discovery.v3");
    }
    pub mod identity {
        tonic::include_proto!("spoke.v1");
    }
}

/// The one resource type Spoke sends: a workload's whole dynamic config (clusters, routes,
/// services, inbound policy, default policy) as JSON of the config file's own schema, so a
/// push is applied atomically or not at all.
pub const CONFIG_TYPE_URL: &str = "type.spoke.dev/spoke.v1.Config";

/// The default identity of the control plane's serving certificate.
pub fn control_identity(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/ns/spoke-system/sa/spoke-control")
}

impl tonic::transport::server::Connected for crate::proxy::io::Io {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}
