//! Bootstrap tokens: `v1.<payload>.<mac>`, where the payload (base64url JSON) names one
//! SPIFFE identity and an expiry, and the MAC is HMAC-SHA256 with a key kept beside the CA
//! (`DIR/token.key`). A token proves which identity a sidecar may get a certificate for;
//! it never widens to another one.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;

use crate::config::Identity;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature is not valid")]
    BadSignature,
    #[error("token expired at unix time {0}")]
    Expired(u64),
    #[error("token names an invalid identity: {0}")]
    BadIdentity(String),
}

impl TokenError {
    pub fn kind(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired(_) => "expired",
            TokenError::BadIdentity(_) => "bad_identity",
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// The token signing key.
pub struct TokenKey(hmac::Key);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenKey {
    /// Loads `DIR/token.key`, making it (32 random bytes, mode 0600) if absent.
    pub fn load_or_create(ca_dir: &Path) -> Result<Self, String> {
        let path = ca_dir.join("token.key");
        let raw = match std::fs::read_to_string(&path) {
            Ok(s) => B64
                .decode(s.trim())
                .map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = [0u8; 32];
                aws_lc_rs::rand::fill(&mut k).map_err(|_| "no randomness".to_string())?;
                crate::ca::write_file(&path, &B64.encode(k), true, false)
                    .map_err(|e| e.to_string())?;
                k.to_vec()
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        if raw.len() < 16 {
            return Err(format!("{}: key too short", path.display()));
        }
        Ok(TokenKey(hmac::Key::new(hmac::HMAC_SHA256, &raw)))
    }

    pub fn from_bytes(raw: &[u8]) -> Self {
        TokenKey(hmac::Key::new(hmac::HMAC_SHA256, raw))
    }

    /// A token for `id`, valid for `ttl`.
    pub fn issue(&self, id: &Identity, ttl: Duration) -> String {
        let claims = Claims {
            sub: id.to_string(),
            exp: now() + ttl.as_secs(),
        };
        let payload = B64.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let mac = hmac::sign(&self.0, payload.as_bytes());
        format!("v1.{payload}.{}", B64.encode(mac.as_ref()))
    }

    /// The identity a valid, unexpired token names.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let mut parts = token.trim().split('.');
        let (Some("v1"), Some(payload), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let mac = B64.decode(mac).map_err(|_| TokenError::Malformed)?;
        hmac::verify(&self.0, payload.as_bytes(), &mac).map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = B64
            .decode(payload)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.exp < now() {
            return Err(TokenError::Expired(claims.exp));
        }
        Identity::parse(&claims.sub).map_err(TokenError::BadIdentity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let k = TokenKey::from_bytes(&[7u8; 32]);
        let id = Identity::parse("spiffe://cluster.local/ns/default/sa/web").unwrap();
        let t = k.issue(&id, Duration::from_secs(60));
        assert_eq!(k.verify(&t), Ok(id.clone()));
        let other = TokenKey::from_bytes(&[8u8; 32]);
        assert_eq!(other.verify(&t), Err(TokenError::BadSignature));
        // Tampering with the payload breaks the MAC.
        let forged = t.replacen("v1.", "v1.x", 1);
        assert!(k.verify(&forged).is_err());
        assert_eq!(k.verify("nonsense"), Err(TokenError::Malformed));
        let expired = {
            let claims = Claims {
                sub: id.to_string(),
                exp: 1,
            };
            let payload = B64.encode(serde_json::to_vec(&claims).unwrap());
            let mac = hmac::sign(&k.0, payload.as_bytes());
            format!("v1.{payload}.{}", B64.encode(mac.as_ref()))
        };
        assert_eq!(k.verify(&expired), Err(TokenError::Expired(1)));
    }
}
