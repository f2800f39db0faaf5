//! Who a sidecar is, from the token it presents: a bootstrap token (`token`, HMAC, for
//! sidecars run from files) or, with `--kubernetes`, the pod's projected ServiceAccount
//! token, checked by the API server with a TokenReview (authentication.k8s.io/v1). The
//! review's `status.user.username`, `system:serviceaccount:<ns>:<sa>`, becomes
//! `spiffe://<trust domain>/ns/<ns>/sa/<sa>`: the only identity that token can get.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::Api;

use super::state::State;
use super::token::TokenError;
use crate::config::Identity;

/// Why a token was refused. `kind()` labels `spoke_control_auth_failures_total`.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the API server did not authenticate the ServiceAccount token{}", .0.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    Rejected(Option<String>),
    #[error("the token belongs to {0:?}, not to a ServiceAccount")]
    NotServiceAccount(String),
    #[error("cannot ask the API server to review the token: {0}")]
    Review(String),
}

impl AuthError {
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::Token(e) => e.kind(),
            AuthError::Rejected(_) => "review_rejected",
            AuthError::NotServiceAccount(_) => "not_service_account",
            AuthError::Review(_) => "review_failed",
        }
    }

    /// The gRPC answer. A failed review is the control plane's trouble, not the
    /// sidecar's: `unavailable`, which it retries; anything else is `unauthenticated`.
    pub fn status(&self) -> tonic::Status {
        match self {
            AuthError::Review(_) => tonic::Status::unavailable(self.to_string()),
            _ => tonic::Status::unauthenticated(self.to_string()),
        }
    }
}

/// Asks the API server about ServiceAccount tokens.
pub struct TokenReviewer {
    api: Api<TokenReview>,
    trust_domain: String,
    audience: Option<String>,
}

impl TokenReviewer {
    /// With `audience`, only tokens issued for it are accepted (a token meant for Spoke
    /// then cannot be replayed against the API server, nor the API server's against Spoke).
    pub fn new(client: kube::Client, trust_domain: &str, audience: Option<String>) -> Self {
        TokenReviewer {
            api: Api::all(client),
            trust_domain: trust_domain.to_string(),
            audience,
        }
    }

    /// The identity of a ServiceAccount token the API server authenticates.
    pub async fn review(&self, token: &str) -> Result<Identity, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: self.audience.clone().map(|a| vec![a]),
            },
            ..Default::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Review(e.to_string()))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(AuthError::Rejected(status.error.filter(|e| !e.is_empty())));
        }
        // The API says: with audiences asked for, check the ones the token was found valid for.
        if let Some(want) = &self.audience {
            if !status.audiences.iter().flatten().any(|a| a == want) {
                return Err(AuthError::Rejected(Some(format!(
                    "the token is not for the audience {want:?}"
                ))));
            }
        }
        let user = status.user.and_then(|u| u.username).unwrap_or_default();
        service_account_identity(&user, &self.trust_domain)
    }
}

/// `system:serviceaccount:<ns>:<sa>` as a SPIFFE ID in `trust_domain`.
pub fn service_account_identity(username: &str, trust_domain: &str) -> Result<Identity, AuthError> {
    let not_sa = || AuthError::NotServiceAccount(username.to_string());
    let rest = username
        .strip_prefix("system:serviceaccount:")
        .ok_or_else(not_sa)?;
    let (ns, sa) = rest.split_once(':').ok_or_else(not_sa)?;
    if ns.is_empty() || sa.is_empty() || sa.contains(':') {
        return Err(not_sa());
    }
    Identity::parse(&super::discovery::view::identity(trust_domain, ns, sa))
        .map_err(|e| AuthError::NotServiceAccount(format!("{username}: {e}")))
}

/// The identity a presented token proves. Bootstrap tokens (`v1.…`) are checked locally;
/// anything else goes to a TokenReview when Kubernetes is on.
pub async fn authenticate(state: &State, token: &str) -> Result<Identity, AuthError> {
    let token = token.trim();
    let result = match &state.reviewer {
        Some(r) if !token.starts_with("v1.") => {
            let r = r.review(token).await;
            if let Some(m) = &state.metrics.kube {
                let label = match &r {
                    Ok(_) => "authenticated",
                    Err(AuthError::Review(_)) => "error",
                    Err(_) => "rejected",
                };
                m.token_reviews.with_label_values(&[label]).inc();
            }
            r
        }
        _ => state.tokens.verify(token).map_err(AuthError::from),
    };
    if let Err(e) = &result {
        state
            .metrics
            .auth_failures
            .with_label_values(&[e.kind()])
            .inc();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_usernames_map_to_spiffe_ids() {
        let id =
            service_account_identity("system:serviceaccount:default:web", "cluster.local").unwrap();
        assert_eq!(id.as_str(), "spiffe://cluster.local/ns/default/sa/web");
        for bad in [
            "admin",
            "system:serviceaccount:default",
            "system:serviceaccount::web",
            "system:serviceaccount:a:b:c",
            "system:node:n1",
        ] {
            assert!(
                service_account_identity(bad, "cluster.local").is_err(),
                "{bad}"
            );
        }
    }
}
