//! TLS for the keeper's own postgres connections (probes, the divergence
//! check), checked as libpq's `sslmode=verify-full` checks: the server's
//! chain must lead to the keeper's `--pg-ssl-ca-file`, and its certificate
//! must name the host connected to.
//!
//! tokio-postgres only knows `sslmode` disable/prefer/require and leaves the
//! checking to the [`MakeTlsConnect`] it is given. This one is rustls with
//! webpki's verifier (chain, validity dates, host name or IP address), over
//! ring: the crypto library the rest of the binary already carries.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::{crypto, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// The CA file cannot be used; the message names the file and the fix.
#[derive(Debug, thiserror::Error)]
#[error("--pg-ssl-ca-file {}: {message}; pass the PEM file of the CA that signed postgres' certificates", path.display())]
pub struct PgTlsError {
    path: PathBuf,
    message: String,
}

/// verify-full TLS against one CA, for [`crate::PgClient::connect`].
#[derive(Clone)]
pub struct PgTls {
    config: Arc<ClientConfig>,
}

impl PgTls {
    /// Reads the CA certificates in `ca_file` (PEM) once, so that a bad file
    /// stops the keeper at start-up rather than failing every probe.
    pub fn from_ca_file(ca_file: &Path) -> Result<PgTls, PgTlsError> {
        let fail = |message: String| PgTlsError {
            path: ca_file.to_owned(),
            message,
        };
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| fail(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(e.to_string()))?;
        if certs.is_empty() {
            return Err(fail("no PEM certificate in it".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| fail(e.to_string()))?;
        }
        let provider = Arc::new(crypto::ring::default_provider());
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| fail(e.to_string()))?;
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(e.to_string()))?
            .with_webpki_verifier(verifier)
            .with_no_client_auth();
        Ok(PgTls {
            config: Arc::new(config),
        })
    }
}

impl fmt::Debug for PgTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PgTls(verify-full)")
    }
}

/// Two copies of the same loaded configuration.
impl PartialEq for PgTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config)
    }
}

impl Eq for PgTls {}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = io::Error;

    /// `host` is what tokio-postgres connects to: a DNS name or an IP
    /// address, which the certificate must name.
    fn make_tls_connect(&mut self, host: &str) -> io::Result<PgTlsConnect> {
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{host:?} is not a host name a certificate can name: {e}"),
            )
        })?;
        Ok(PgTlsConnect {
            connector: TlsConnector::from(self.config.clone()),
            name,
        })
    }
}

/// One handshake to come, with the name the server must prove.
pub struct PgTlsConnect {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl fmt::Debug for PgTlsConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTlsConnect")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = self.connector.connect(self.name, stream).await?;
            Ok(PgTlsStream(tls))
        })
    }
}

/// A TLS session to postgres.
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> fmt::Debug for PgTlsStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PgTlsStream")
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    /// No SCRAM channel binding: the verified chain already rules out a man
    /// in the middle, and tokio-postgres falls back to plain SCRAM.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::PrivateKeyDer;
    use tokio_rustls::rustls::ServerConfig;

    /// A CA `ca.pem`, a server certificate it signed for localhost and
    /// 127.0.0.1 (`server.pem`, `server-key.pem`), and an unrelated CA
    /// `other.pem`, made by the openssl CLI.
    fn pki(dir: &Path) {
        let script = r#"set -e
ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
openssl req -x509 $ec -days 2 -subj /CN=ca -keyout ca-key.pem -out ca.pem
openssl req -x509 $ec -days 2 -subj /CN=other -keyout other-key.pem -out other.pem
openssl req $ec -subj /CN=db -keyout server-key.pem -out server.csr
printf 'basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 -extfile server.ext -out server.pem
"#;
        let out = std::process::Command::new("sh")
            .args(["-c", script])
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// One handshake over an in-memory pipe: the client checks the server
    /// against `ca` under the name `host`.
    async fn handshake(dir: &Path, ca: &str, host: &str) -> io::Result<()> {
        let certs = CertificateDer::pem_file_iter(dir.join("server.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join("server-key.pem")).unwrap();
        let server =
            ServerConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let mut tls = PgTls::from_ca_file(&dir.join(ca)).unwrap();
        let connect = MakeTlsConnect::<tokio::io::DuplexStream>::make_tls_connect(&mut tls, host)?;
        let (client, _server) = tokio::join!(
            TlsConnect::connect(connect, client_io),
            acceptor.accept(server_io)
        );
        client.map(drop)
    }

    #[tokio::test]
    async fn verify_full_checks_the_chain_and_the_host_name() {
        let tmp = tempfile::tempdir().unwrap();
        pki(tmp.path());
        let dir = tmp.path();
        handshake(dir, "ca.pem", "localhost").await.unwrap();
        handshake(dir, "ca.pem", "127.0.0.1").await.unwrap();
        let wrong_name = handshake(dir, "ca.pem", "db.example").await.unwrap_err();
        assert!(
            wrong_name.to_string().contains("not valid for name"),
            "{wrong_name}"
        );
        let wrong_ip = handshake(dir, "ca.pem", "127.0.0.2").await.unwrap_err();
        assert!(
            wrong_ip.to_string().contains("not valid for name"),
            "{wrong_ip}"
        );
        let wrong_ca = handshake(dir, "other.pem", "localhost").await.unwrap_err();
        assert!(wrong_ca.to_string().contains("UnknownIssuer"), "{wrong_ca}");
    }

    #[test]
    fn a_file_without_certificates_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let err = PgTls::from_ca_file(&ca).unwrap_err().to_string();
        assert!(
            err.contains("ca.pem") && err.contains("--pg-ssl-ca-file"),
            "{err}"
        );
        let err = PgTls::from_ca_file(&tmp.path().join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.pem"), "{err}");
    }
}
