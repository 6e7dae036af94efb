//! TLS to the broker (`mqtts://`): rustls with the aws-lc-rs provider, the broker's
//! certificate checked against a CA file or the system's roots, and optionally a client
//! certificate. This protects the broker credentials and hides the topics from the network;
//! secchan's own records need no TLS (docs/mqtt.md §9).

use super::MqttError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How to reach the broker over TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of the CA certificates the broker's certificate must chain to; `None` uses
    /// the system's roots.
    pub ca_file: Option<PathBuf>,
    /// A client certificate for brokers that require one (Mosquitto's `require_certificate`).
    pub client_cert: Option<ClientCert>,
}

/// A client certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The certificate, then any intermediates.
    pub cert_file: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

fn bad(file: &Path, what: &'static str, reason: impl ToString) -> MqttError {
    MqttError::TlsFile {
        what,
        file: file.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn certificates(
    file: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, MqttError> {
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| bad(file, what, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(file, what, e))?;
    if certs.is_empty() {
        return Err(bad(file, what, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// The rustls configuration for `tls`: reads the files now, so a bad one fails before any
/// connection.
pub(crate) fn client_config(tls: &TlsOptions) -> Result<Arc<ClientConfig>, MqttError> {
    let mut roots = RootCertStore::empty();
    match &tls.ca_file {
        Some(file) => {
            for cert in certificates(file, "CA file (--mqtt-ca)")? {
                roots
                    .add(cert)
                    .map_err(|e| bad(file, "CA file (--mqtt-ca)", e))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // A system certificate rustls cannot use is skipped, as browsers do.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(MqttError::NoSystemRoots);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match &tls.client_cert {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let chain = certificates(&c.cert_file, "client certificate (--mqtt-client-cert)")?;
            let key = PrivateKeyDer::from_pem_file(&c.key_file)
                .map_err(|e| bad(&c.key_file, "client key (--mqtt-client-key)", e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad(&c.key_file, "client key (--mqtt-client-key)", e))?
        }
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_files_are_named_in_the_error() {
        let dir = std::env::temp_dir().join(format!("secchan-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        for ca in [dir.join("missing.pem"), empty] {
            let tls = TlsOptions {
                ca_file: Some(ca.clone()),
                client_cert: None,
            };
            let err = client_config(&tls).unwrap_err().to_string();
            assert!(
                err.contains(&ca.display().to_string()) && err.contains("--mqtt-ca"),
                "{err}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
