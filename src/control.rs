//! The control plane and its stream: `spoke control` (mesh config from a directory, the
//! discovery stream, the CA) in `server`, the sidecar's side in `client`, the shared
//! protocol types in `pb` (generated from `proto/` by build.rs), tokens and the mesh config.

pub mod certify;
pub mod client;
pub mod mesh;
pub mod server;
pub mod server_stats;
pub mod token;
pub mod webhook;

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
