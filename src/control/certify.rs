//! `spoke.v1.Identity/Certify`: signs a sidecar's CSR for exactly the identity its token
//! names (a bootstrap token's subject, or a reviewed ServiceAccount token's account). A CSR may leave the identity out (it gets the token's) or name the same one;
//! asking for any other identity is refused, as is a bad or expired token.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::pb::identity::identity_server::Identity as IdentityApi;
use super::pb::identity::{CertifyRequest, CertifyResponse};
use super::state::{unix_now, State};

/// The certificate service.
pub struct Certify(pub Arc<State>);

#[tonic::async_trait]
impl IdentityApi for Certify {
    async fn certify(
        &self,
        req: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let state = &self.0;
        let req = req.into_inner();
        let fail = |kind: &'static str, status: Status| {
            state.metrics.certificates.with_label_values(&[kind]).inc();
            tracing::warn!(reason = kind, error = %status.message(), "certificate request refused");
            status
        };
        let id = super::review::authenticate(state, &req.token)
            .await
            .map_err(|e| fail("bad_token", e.status()))?;
        // The CSR may name no identity (it gets the token's) or exactly the token's.
        let csr_uris =
            csr_uris(&req.csr_pem).map_err(|e| fail("bad_csr", Status::invalid_argument(e)))?;
        if let Some(other) = csr_uris.iter().find(|u| *u != id.as_str()) {
            return Err(fail(
                "wrong_identity",
                Status::permission_denied(format!(
                    "the CSR asks for {other}, but the token is for {id}"
                )),
            ));
        }
        let chain = state
            .ca
            .sign_csr(&req.csr_pem, &id, state.cert_ttl)
            .map_err(|e| fail("bad_csr", Status::invalid_argument(e.to_string())))?;
        state
            .metrics
            .certificates
            .with_label_values(&["issued"])
            .inc();
        tracing::info!(identity = %id, ttl = ?state.cert_ttl, "certificate issued");
        Ok(Response::new(CertifyResponse {
            cert_chain_pem: chain,
            roots_pem: state.ca.root_pem().to_string(),
            not_after: (unix_now() + state.cert_ttl.as_secs()) as i64,
        }))
    }
}

fn csr_uris(pem: &str) -> Result<Vec<String>, String> {
    let der = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| format!("bad CSR PEM: {e}"))?
        .1;
    use x509_parser::prelude::FromDer;
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&der.contents)
            .map_err(|e| format!("bad CSR: {e}"))?;
    let mut out = Vec::new();
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = ext {
                for n in &san.general_names {
                    if let x509_parser::extensions::GeneralName::URI(u) = n {
                        out.push((*u).to_string());
                    }
                }
            }
        }
    }
    Ok(out)
}
