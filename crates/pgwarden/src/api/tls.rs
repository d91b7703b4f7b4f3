//! HTTPS for the keeper's API: `--api-cert-file`/`--api-key-file`, and with
//! `--api-client-ca-file` client certificates signed by that CA required.
//!
//! The files are read once at start-up, so a wrong path or a key that does
//! not match stops the keeper with one line instead of failing every
//! handshake later. The crypto provider is ring, the one etcd-client's TLS
//! already brings in, so the binary carries one crypto library.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{crypto, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// The API's TLS files cannot be used; each names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ApiTlsError {
    #[error("API TLS file {path} holds no usable PEM {what}: {message}; check {flag}")]
    Pem {
        path: PathBuf,
        what: &'static str,
        flag: &'static str,
        message: String,
    },
    #[error("--api-client-ca-file {path}: {message}")]
    ClientCa { path: PathBuf, message: String },
    #[error("--api-cert-file {cert} and --api-key-file {key} cannot be used together: {message}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
}

/// Builds the acceptor for the API from its PEM files.
pub fn acceptor(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: Option<&Path>,
) -> Result<TlsAcceptor, ApiTlsError> {
    fn pem<'a>(
        path: &'a Path,
        what: &'static str,
        flag: &'static str,
    ) -> impl Fn(rustls_pki_types::pem::Error) -> ApiTlsError + 'a {
        move |e| ApiTlsError::Pem {
            path: path.to_owned(),
            what,
            flag,
            message: e.to_string(),
        }
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(pem(cert_file, "certificate", "--api-cert-file"))?
        .collect::<Result<_, _>>()
        .map_err(pem(cert_file, "certificate", "--api-cert-file"))?;
    if certs.is_empty() {
        return Err(pem(cert_file, "certificate", "--api-cert-file")(
            rustls_pki_types::pem::Error::NoItemsFound,
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(pem(
        key_file,
        "private key",
        "--api-key-file",
    ))?;
    let provider = Arc::new(crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiTlsError::Config {
            cert: cert_file.to_owned(),
            key: key_file.to_owned(),
            message: e.to_string(),
        })?;
    let builder = match client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca_file).map_err(pem(
                ca_file,
                "certificate",
                "--api-client-ca-file",
            ))? {
                let cert = cert.map_err(pem(ca_file, "certificate", "--api-client-ca-file"))?;
                roots.add(cert).map_err(|e| ApiTlsError::ClientCa {
                    path: ca_file.to_owned(),
                    message: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ApiTlsError::ClientCa {
                    path: ca_file.to_owned(),
                    message: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| ApiTlsError::Config {
            cert: cert_file.to_owned(),
            key: key_file.to_owned(),
            message: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
