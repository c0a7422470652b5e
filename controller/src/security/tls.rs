//! gRPC TLS: certificates from files, or the controller's own CA made with
//! rcgen at first start (`<data_dir>/tls`), whose fingerprint the log shows
//! so that an operator can check the `ca.pem` copied to clients.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use sha2::{Digest, Sha256};
use tonic::transport::{Identity, ServerTlsConfig};

use super::{SecurityConfig, TlsMode};
use crate::ControllerError;
use fleet_durable::{create_dir, write_private, write_public};

/// What the gRPC server serves with, and what clients need to trust it.
pub struct ServerTls {
    pub config: ServerTlsConfig,
    /// PEM of the CA clients should trust ("auto" only).
    pub ca_pem: Option<String>,
    /// SHA-256 of the CA (or of the served certificate for "files"), `AA:BB:...`.
    pub fingerprint: String,
    /// The served certificate (chain) and its key, PEM: the HTTP listener serves them too.
    pub cert_pem: String,
    pub key_pem: secrecy_key::KeyPem,
}

/// A private key's PEM that never prints.
pub mod secrecy_key {
    /// Wraps the PEM; `Debug` shows nothing of it.
    #[derive(Clone)]
    pub struct KeyPem(pub String);

    impl std::fmt::Debug for KeyPem {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("<private key>")
        }
    }
}

fn io(what: &str, path: &Path, e: impl std::fmt::Display) -> ControllerError {
    ControllerError::Config(format!("{what} {}: {e}", path.display()))
}

/// Colon-separated SHA-256 of a certificate's DER bytes.
#[must_use]
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).unwrap_or_default()
}

/// The CA's subject; the same every time, so the CA can be rebuilt from its key alone.
fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, "Spark Fleet controller CA");
    p.distinguished_name.push(DnType::OrganizationName, "Spark Fleet");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    valid_always(&mut p);
    Ok(p)
}

/// Valid from 1970 to 4096: a client whose clock is off (a Pi without RTC
/// before NTP) still connects, and nothing expires unnoticed. Trust ends by
/// replacing the CA, not by a date.
fn valid_always(p: &mut CertificateParams) {
    p.not_before = rcgen::date_time_ymd(1970, 1, 1);
    p.not_after = rcgen::date_time_ymd(4096, 1, 1);
}

/// The TLS settings of the gRPC server, or `None` with `tls = "off"`.
///
/// # Errors
/// Unreadable or invalid certificate files, or a data directory it cannot write.
pub fn server_tls(cfg: &SecurityConfig, data_dir: &Path) -> Result<Option<ServerTls>, ControllerError> {
    match cfg.tls {
        TlsMode::Off => Ok(None),
        TlsMode::Files => {
            let cert = std::fs::read_to_string(&cfg.tls_cert)
                .map_err(|e| io("cannot read security.tls_cert", &cfg.tls_cert, e))?;
            let key = std::fs::read_to_string(&cfg.tls_key)
                .map_err(|e| io("cannot read security.tls_key", &cfg.tls_key, e))?;
            if !cert.contains("-----BEGIN CERTIFICATE-----") {
                return Err(io("security.tls_cert", &cfg.tls_cert, "not a PEM certificate"));
            }
            let fingerprint = fingerprint(&pem_der(&cert));
            Ok(Some(ServerTls {
                config: ServerTlsConfig::new().identity(Identity::from_pem(&cert, &key)),
                ca_pem: None,
                fingerprint,
                cert_pem: cert,
                key_pem: secrecy_key::KeyPem(key),
            }))
        }
        TlsMode::Auto => auto(cfg, &data_dir.join("tls")).map(Some),
    }
}

fn auto(cfg: &SecurityConfig, dir: &Path) -> Result<ServerTls, ControllerError> {
    let err =
        |e: rcgen::Error| ControllerError::Config(format!("making the TLS certificates in {}: {e}", dir.display()));
    create_dir(dir).map_err(|e| io("cannot create", dir, e))?;
    let (ca_key_path, ca_path) = (dir.join("ca.key"), dir.join("ca.pem"));
    let ca_key = if ca_key_path.exists() {
        let pem = std::fs::read_to_string(&ca_key_path).map_err(|e| io("cannot read", &ca_key_path, e))?;
        KeyPair::from_pem(&pem).map_err(|e| {
            io(
                "not a usable key",
                &ca_key_path,
                format!("{e}; move tls/ away to make a new CA (clients must then trust the new ca.pem)"),
            )
        })?
    } else {
        let k = KeyPair::generate().map_err(err)?;
        write_private(&ca_key_path, k.serialize_pem().as_bytes()).map_err(|e| io("cannot write", &ca_key_path, e))?;
        k
    };
    let ca_params = ca_params().map_err(err)?;
    let existing = match std::fs::read_to_string(&ca_path) {
        Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => Some(pem),
        Ok(_) => {
            // Only a crash while it was first written leaves it so (the key is
            // written first): made again from the same key and names, every
            // client that trusted it still does.
            tracing::warn!(path = %ca_path.display(), "The CA certificate is empty or damaged: made again from ca.key.");
            None
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io("cannot read", &ca_path, e)),
    };
    let ca_pem = match existing {
        Some(pem) => pem,
        None => {
            let cert = ca_params.self_signed(&ca_key).map_err(err)?;
            write_public(&ca_path, cert.pem().as_bytes()).map_err(|e| io("cannot write", &ca_path, e))?;
            cert.pem()
        }
    };
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    // A fresh server certificate every start: names follow the config, and no
    // renewal is ever missed (no wall-clock decision on a node).
    let server_key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(cfg.tls_names.clone()).map_err(err)?;
    params.distinguished_name.push(DnType::CommonName, "Spark Fleet controller");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    valid_always(&mut params);
    let server = params.signed_by(&server_key, &issuer).map_err(err)?;
    let fingerprint = fingerprint(&pem_der(&ca_pem));
    let (cert_pem, key_pem) = (server.pem(), server_key.serialize_pem());
    Ok(ServerTls {
        config: ServerTlsConfig::new().identity(Identity::from_pem(&cert_pem, &key_pem)),
        ca_pem: Some(ca_pem),
        fingerprint,
        cert_pem,
        key_pem: secrecy_key::KeyPem(key_pem),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_ca_certificate_is_made_again_from_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SecurityConfig::default();
        let first = auto(&cfg, dir.path()).unwrap();
        let key = std::fs::read(dir.path().join("ca.key")).unwrap();
        // What a power cut while the certificate was first written leaves.
        std::fs::write(dir.path().join("ca.pem"), "").unwrap();
        let second = auto(&cfg, dir.path()).unwrap();
        let pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        assert!(pem.contains("-----BEGIN CERTIFICATE-----"));
        assert_eq!(second.ca_pem.as_deref(), Some(pem.as_str()));
        assert_eq!(std::fs::read(dir.path().join("ca.key")).unwrap(), key, "the key is kept");
        assert!(first.ca_pem.is_some());
        // Same key, same subject: the public key inside both certificates is the same.
        let k = KeyPair::from_pem(&String::from_utf8(key).unwrap()).unwrap();
        let raw = k.public_key_raw();
        let holds_key = |pem: &str| pem_der(pem).windows(raw.len()).any(|w| w == raw);
        assert!(holds_key(first.ca_pem.as_deref().unwrap()) && holds_key(&pem));
    }
}
