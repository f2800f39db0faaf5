//! The mesh PKI (`spoke ca`): a root CA and workload certificates whose only SAN is a SPIFFE
//! URI, made with rcgen. Used by the CLI, by the control plane to sign CSRs, and by tests to
//! make per-test PKIs (including deliberately broken certificates).

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::config::Identity;

/// Root certificates live this long unless told otherwise (10 years).
pub const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Workload certificates: 24 hours.
pub const WORKLOAD_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Certificates start this far in the past, to absorb clock skew between pods.
const BACKDATE: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{0} exists; pass --force to overwrite")]
    Exists(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

/// A loaded or freshly made certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
    key_pem: String,
    trust_domain: String,
}

/// A workload's certificate chain and private key, PEM encoded.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Knobs for unusual certificates (tests use them to make bad ones).
pub struct IssueOptions {
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    pub is_ca: bool,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl IssueOptions {
    /// A normal workload certificate for `id`, valid from now for `validity`.
    pub fn workload(id: &str, validity: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        IssueOptions {
            uris: vec![id.to_string()],
            dns: vec![],
            is_ca: false,
            not_before: now - BACKDATE,
            not_after: now + validity,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `text` to `path`, refusing to overwrite unless `force`; keys get mode 0600.
pub fn write_file(path: &Path, text: &str, secret: bool, force: bool) -> Result<(), CaError> {
    if path.exists() && !force {
        return Err(CaError::Exists(path.display().to_string()));
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io_err(path))?;
    #[cfg(unix)]
    if secret {
        // `mode` applies only on create; an overwritten file gets tightened too.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err(path))?;
    }
    f.write_all(text.as_bytes()).map_err(io_err(path))
}

fn validate_trust_domain(td: &str) -> Result<(), CaError> {
    Identity::parse(&format!("spiffe://{td}/x"))
        .map(|_| ())
        .map_err(|_| CaError::Invalid(format!("{td:?} is not a trust domain (a-z 0-9 . - _)")))
}

fn uri_san(s: &str) -> Result<SanType, CaError> {
    Ok(SanType::URI(s.try_into().map_err(|_| {
        CaError::Invalid(format!("{s:?} is not an ASCII URI"))
    })?))
}

// === impl Ca ===

impl Ca {
    /// Makes a new root: ECDSA P-256, CA:TRUE, with the trust domain as its URI SAN.
    pub fn new(trust_domain: &str, validity: Duration) -> Result<Ca, CaError> {
        validate_trust_domain(trust_domain)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "spoke");
        // A per-root suffix keeps two roots of one trust domain apart, so a certificate
        // from the other one is reported as an unknown issuer, not a bad signature.
        let tag: String = key
            .public_key_raw()
            .iter()
            .rev()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect();
        dn.push(
            DnType::CommonName,
            format!("spoke root CA for {trust_domain} ({tag})"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![uri_san(&format!("spiffe://{trust_domain}"))?];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + validity;
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Ca {
            issuer: Issuer::new(params, key),
            root_pem: cert.pem(),
            key_pem,
            trust_domain: trust_domain.to_string(),
        })
    }

    /// Loads `root.pem` and `root.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Ca, CaError> {
        let cert_path = dir.join("root.pem");
        let key_path = dir.join("root.key");
        let root_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| CaError::Invalid(format!("{}: {e}", key_path.display())))?;
        let der = CertificateDer::from_pem_slice(root_pem.as_bytes())
            .ok()
            .ok_or_else(|| CaError::Invalid(format!("{}: no certificate", cert_path.display())))?;
        let trust_domain = crate::tls::verify::uri_sans(&der)
            .ok()
            .and_then(|uris| {
                uris.into_iter()
                    .find_map(|u| u.strip_prefix("spiffe://").map(|td| td.to_string()))
            })
            .ok_or_else(|| {
                CaError::Invalid(format!(
                    "{}: the root has no spiffe://<trust-domain> URI SAN",
                    cert_path.display()
                ))
            })?;
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(|e| CaError::Invalid(format!("{}: {e}", cert_path.display())))?;
        Ok(Ca {
            issuer,
            root_pem,
            key_pem,
            trust_domain,
        })
    }

    /// Writes `root.pem` and `root.key` (0600) into `dir`.
    pub fn save(&self, dir: &Path, force: bool) -> Result<(), CaError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        for f in ["root.pem", "root.key"] {
            if dir.join(f).exists() && !force {
                return Err(CaError::Exists(dir.join(f).display().to_string()));
            }
        }
        write_file(&dir.join("root.pem"), &self.root_pem, false, force)?;
        write_file(&dir.join("root.key"), &self.key_pem, true, force)
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Issues a workload certificate for `id` with a fresh P-256 key.
    pub fn issue(&self, id: &Identity, validity: Duration) -> Result<Issued, CaError> {
        self.issue_with_dns(id, validity, &[])
    }

    /// As `issue`, with DNS names beside the SPIFFE ID: a serving certificate for clients
    /// that check a host name (the API server calling the injection webhook).
    pub fn issue_with_dns(
        &self,
        id: &Identity,
        validity: Duration,
        dns: &[String],
    ) -> Result<Issued, CaError> {
        if id.trust_domain() != self.trust_domain {
            return Err(CaError::Invalid(format!(
                "{id} is not in this CA's trust domain {}",
                self.trust_domain
            )));
        }
        let mut opts = IssueOptions::workload(id.as_str(), validity);
        opts.dns = dns.to_vec();
        self.issue_custom(&opts)
    }

    /// Issues whatever `opts` says, with no checks (tests make broken certificates so).
    pub fn issue_custom(&self, opts: &IssueOptions) -> Result<Issued, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = self.leaf_params(opts)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a CSR for `id`: the certificate carries `id` as its only SAN whatever the CSR
    /// asked for, so a CSR can never widen what its token allows.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        id: &Identity,
        validity: Duration,
    ) -> Result<String, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::Invalid(format!("bad CSR: {e}")))?;
        let params = self.leaf_params(&IssueOptions::workload(id.as_str(), validity))?;
        let signed = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)?;
        Ok(signed.pem())
    }

    fn leaf_params(&self, opts: &IssueOptions) -> Result<CertificateParams, CaError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "spoke");
        params.distinguished_name = dn;
        params.subject_alt_names = opts
            .uris
            .iter()
            .map(|u| uri_san(u))
            .collect::<Result<_, _>>()?;
        for d in &opts.dns {
            params.subject_alt_names.push(SanType::DnsName(
                d.as_str()
                    .try_into()
                    .map_err(|_| CaError::Invalid(format!("{d:?} is not a DNS name")))?,
            ));
        }
        if opts.is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
        } else {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = opts.not_before;
        params.not_after = opts.not_after;
        Ok(params)
    }
}

/// `spoke ca issue`: writes `cert.pem`, `key.pem` (0600) and `root.pem` into `out`.
pub fn issue_to_dir(
    ca: &Ca,
    id: &Identity,
    validity: Duration,
    dns: &[String],
    out: &Path,
    force: bool,
) -> Result<(), CaError> {
    fs::create_dir_all(out).map_err(io_err(out))?;
    for f in ["cert.pem", "key.pem", "root.pem"] {
        if out.join(f).exists() && !force {
            return Err(CaError::Exists(out.join(f).display().to_string()));
        }
    }
    let issued = ca.issue_with_dns(id, validity, dns)?;
    write_file(&out.join("cert.pem"), &issued.cert_pem, false, force)?;
    write_file(&out.join("key.pem"), &issued.key_pem, true, force)?;
    write_file(&out.join("root.pem"), ca.root_pem(), false, force)
}
