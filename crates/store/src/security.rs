//! TLS and authentication towards etcd, and the one-line diagnosis of their
//! failures.
//!
//! A TLS or auth failure reaches us deep inside a chain of tonic, hyper and
//! rustls errors (or as a gRPC status from etcd), worded for the libraries'
//! authors. What an operator needs is which file or flag is wrong, so
//! [`classify`] reads the chain once, where the store layer handles it, and
//! names the cause: an unknown CA, an expired certificate, a name the
//! certificate does not cover, a client certificate etcd refused, a wrong
//! password, a permission the etcd role lacks. The raw chain goes to the
//! debug log. rustls and etcd only expose these as text, so matching on text
//! is the price; the unit tests pin the wordings of the locked versions.

use std::fmt;
use std::path::PathBuf;

use etcd_client::{Certificate, Identity, TlsOptions};

use crate::StoreError;

/// The PEM files for TLS towards etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signed etcd's server certificates.
    pub ca_file: PathBuf,
    /// Our client certificate (etcd's `--client-cert-auth`; with etcd auth on,
    /// its CN is the etcd user).
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key.
    pub key_file: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads the files into tonic's TLS settings; an unreadable file or a
    /// certificate without its key is named in the error.
    pub(crate) fn load(&self) -> Result<TlsOptions, StoreError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| StoreError::TlsFile {
                path: path.clone(),
                source,
            })
        };
        let ca = read(&self.ca_file)?;
        if !looks_like_pem(&ca, "CERTIFICATE") {
            return Err(StoreError::NotPem {
                path: self.ca_file.clone(),
                expected: "CERTIFICATE",
            });
        }
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
        match (&self.cert_file, &self.key_file) {
            (Some(cert_file), Some(key_file)) => {
                let cert = read(cert_file)?;
                if !looks_like_pem(&cert, "CERTIFICATE") {
                    return Err(StoreError::NotPem {
                        path: cert_file.clone(),
                        expected: "CERTIFICATE",
                    });
                }
                let key = read(key_file)?;
                if !looks_like_pem(&key, "PRIVATE KEY") {
                    return Err(StoreError::NotPem {
                        path: key_file.clone(),
                        expected: "PRIVATE KEY",
                    });
                }
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => return Err(StoreError::HalfIdentity),
        }
        Ok(tls)
    }
}

/// Whether `bytes` hold a PEM block whose label ends with `label`
/// (`PRIVATE KEY` also matches `RSA PRIVATE KEY` and `EC PRIVATE KEY`).
fn looks_like_pem(bytes: &[u8], label: &str) -> bool {
    String::from_utf8_lossy(bytes)
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{label}-----")))
}

/// An etcd user and password (etcd's `auth enable`).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The etcd user.
    pub user: String,
    /// Its password.
    pub password: String,
    /// Where the password came from, for error messages.
    pub password_file: Option<PathBuf>,
}

impl fmt::Debug for Credentials {
    // The password stays out of logs and panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password_file", &self.password_file)
            .finish_non_exhaustive()
    }
}

/// Why etcd and we could not agree on TLS or authentication; each names the
/// file or flag to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityProblem {
    /// etcd's certificate is not signed by our CA.
    UnknownCa {
        /// The CA file we trust.
        ca_file: PathBuf,
    },
    /// etcd's certificate has expired or is not valid yet.
    ServerCertExpired,
    /// etcd's certificate does not name the host we connected to.
    WrongName,
    /// etcd refused our client certificate (it sent a TLS alert).
    ClientCertRefused {
        /// Our certificate, when we sent one.
        cert_file: Option<PathBuf>,
        /// etcd's alert, e.g. `BadCertificate`, `CertificateRequired`.
        alert: String,
    },
    /// The endpoint answered, but not with TLS.
    NotTls,
    /// Our own certificate and key could not be used.
    BadIdentity {
        /// The library's words.
        detail: String,
    },
    /// etcd refused the user name or password.
    AuthFailed {
        /// The user.
        user: String,
        /// Where the password came from.
        password_file: Option<PathBuf>,
    },
    /// A user was given, but etcd has authentication off.
    AuthNotEnabled,
    /// etcd's auth is on and our role may not do this.
    PermissionDenied {
        /// The operation.
        op: &'static str,
        /// Who we are to etcd: the user, or "the client certificate's CN".
        who: String,
        /// The key, when known.
        key: Option<String>,
    },
}

impl fmt::Display for SecurityProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecurityProblem::UnknownCa { ca_file } => write!(
                f,
                "TLS: etcd's certificate is not signed by the CA in {} (unknown CA); pass the CA that signed etcd's --cert-file as --store-ca-file",
                ca_file.display()
            ),
            SecurityProblem::ServerCertExpired => write!(
                f,
                "TLS: etcd's certificate has expired or is not valid yet; renew etcd's --cert-file (and check this host's clock)"
            ),
            SecurityProblem::WrongName => write!(
                f,
                "TLS: etcd's certificate is not valid for this host name; use an endpoint name or address listed in the certificate's subjectAltName"
            ),
            SecurityProblem::ClientCertRefused { cert_file: None, alert } => write!(
                f,
                "TLS: etcd requires a client certificate ({alert}); pass --store-cert-file and --store-key-file"
            ),
            SecurityProblem::ClientCertRefused {
                cert_file: Some(cert),
                alert,
            } => write!(
                f,
                "TLS: etcd refused the client certificate {} ({alert}); check that it is not expired and is signed by the CA in etcd's --trusted-ca-file",
                cert.display()
            ),
            SecurityProblem::NotTls => write!(
                f,
                "TLS: the endpoint does not speak TLS; use an http:// endpoint without --store-ca-file, or enable TLS on etcd"
            ),
            SecurityProblem::BadIdentity { detail } => write!(
                f,
                "TLS: the client certificate or key cannot be used ({detail}); check --store-cert-file and --store-key-file"
            ),
            SecurityProblem::AuthFailed {
                user,
                password_file,
            } => match password_file {
                Some(file) => write!(
                    f,
                    "authentication failed for etcd user {user:?} (wrong user or password); check --store-user and the password in {}",
                    file.display()
                ),
                None => write!(
                    f,
                    "authentication failed for etcd user {user:?} (wrong user or password); check --store-user and --store-password-file"
                ),
            },
            SecurityProblem::AuthNotEnabled => write!(
                f,
                "a user was given but etcd has authentication off; drop --store-user, or run `etcdctl auth enable`"
            ),
            SecurityProblem::PermissionDenied { op, who, key } => {
                write!(f, "permission denied: {who} may not {op}")?;
                if let Some(key) = key {
                    write!(f, " {key}")?;
                }
                write!(
                    f,
                    "; grant its etcd role that key range (see docs/security.md)"
                )
            }
        }
    }
}

/// Who we are to etcd, for messages.
pub(crate) fn who(user: Option<&Credentials>, tls: Option<&TlsFiles>) -> String {
    match (user, tls.and_then(|t| t.cert_file.as_ref())) {
        (Some(c), _) => format!("etcd user {:?}", c.user),
        (None, Some(cert)) => format!("the etcd user named by the CN of {}", cert.display()),
        (None, None) => "this client".to_owned(),
    }
}

/// The error and all its causes, joined, for matching and for the debug log.
pub(crate) fn chain_text(err: &etcd_client::Error) -> String {
    let mut text = err.to_string();
    if let etcd_client::Error::GRpcStatus(status) = err {
        text.push_str(": ");
        text.push_str(status.message());
    }
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Names the TLS or auth failure in `err`, if it is one.
pub(crate) fn classify(
    err: &etcd_client::Error,
    op: &'static str,
    user: Option<&Credentials>,
    tls: Option<&TlsFiles>,
) -> Option<SecurityProblem> {
    classify_text(&chain_text(err), op, user, tls)
}

fn classify_text(
    text: &str,
    op: &'static str,
    user: Option<&Credentials>,
    tls: Option<&TlsFiles>,
) -> Option<SecurityProblem> {
    let has = |needle: &str| text.contains(needle);
    if has("invalid peer certificate") {
        if has("UnknownIssuer") || has("BadSignature") {
            return tls.map(|t| SecurityProblem::UnknownCa {
                ca_file: t.ca_file.clone(),
            });
        }
        if has("xpired") || has("NotValidYet") {
            return Some(SecurityProblem::ServerCertExpired);
        }
        if has("NotValidForName") || has("not valid for name") {
            return Some(SecurityProblem::WrongName);
        }
    }
    if let Some(at) = text.find("received fatal alert: ") {
        let alert = text[at + "received fatal alert: ".len()..]
            .split(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap_or_default()
            .to_owned();
        return Some(SecurityProblem::ClientCertRefused {
            cert_file: tls.and_then(|t| t.cert_file.clone()),
            alert,
        });
    }
    if has("received corrupt message") || has("InvalidContentType") {
        return Some(SecurityProblem::NotTls);
    }
    if has("private key") && (has("invalid") || has("no ") || has("mismatch")) {
        return Some(SecurityProblem::BadIdentity {
            detail: text.rsplit(": ").next().unwrap_or(text).to_owned(),
        });
    }
    if has("authentication failed, invalid user ID or password") {
        return user.map(|c| SecurityProblem::AuthFailed {
            user: c.user.clone(),
            password_file: c.password_file.clone(),
        });
    }
    if has("authentication is not enabled") {
        return Some(SecurityProblem::AuthNotEnabled);
    }
    if has("etcdserver: permission denied") || has("user name is empty") {
        return Some(SecurityProblem::PermissionDenied {
            op,
            who: who(user, tls),
            key: None,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> TlsFiles {
        TlsFiles {
            ca_file: "/etc/pgwarden/ca.pem".into(),
            cert_file: Some("/etc/pgwarden/keeper.pem".into()),
            key_file: Some("/etc/pgwarden/keeper-key.pem".into()),
        }
    }

    fn classified(text: &str) -> Option<SecurityProblem> {
        let user = Credentials {
            user: "keeper".into(),
            password: "x".into(),
            password_file: Some("/etc/pgwarden/etcd-password".into()),
        };
        classify_text(text, "put", Some(&user), Some(&tls()))
    }

    #[test]
    fn rustls_wordings_name_the_certificate_problem() {
        assert_eq!(
            classified("transport error: invalid peer certificate: UnknownIssuer"),
            Some(SecurityProblem::UnknownCa {
                ca_file: "/etc/pgwarden/ca.pem".into()
            })
        );
        assert_eq!(
            classified("invalid peer certificate: certificate expired: verification time 1 (UNIX), but certificate is not valid after 0 (1 seconds ago)"),
            Some(SecurityProblem::ServerCertExpired)
        );
        assert_eq!(
            classified("invalid peer certificate: certificate not valid for name \"etcd\"; certificate is only valid for DnsName(\"x\")"),
            Some(SecurityProblem::WrongName)
        );
        assert_eq!(
            classified("transport error: received fatal alert: BadCertificate"),
            Some(SecurityProblem::ClientCertRefused {
                cert_file: Some("/etc/pgwarden/keeper.pem".into()),
                alert: "BadCertificate".into()
            })
        );
        assert_eq!(
            classified("received corrupt message of type InvalidContentType"),
            Some(SecurityProblem::NotTls)
        );
    }

    #[test]
    fn etcd_answers_name_the_auth_problem() {
        let wrong = classified(
            "grpc request error: status: InvalidArgument: etcdserver: authentication failed, invalid user ID or password",
        )
        .unwrap();
        assert_eq!(
            wrong.to_string(),
            "authentication failed for etcd user \"keeper\" (wrong user or password); check --store-user and the password in /etc/pgwarden/etcd-password"
        );
        let denied = classified("status: PermissionDenied: etcdserver: permission denied").unwrap();
        assert_eq!(
            denied.to_string(),
            "permission denied: etcd user \"keeper\" may not put; grant its etcd role that key range (see docs/security.md)"
        );
        assert_eq!(classified("transport error: connection refused"), None);
    }

    #[test]
    fn pem_files_are_recognised_by_their_label() {
        assert!(looks_like_pem(
            b"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
            "CERTIFICATE"
        ));
        assert!(looks_like_pem(
            b"-----BEGIN EC PRIVATE KEY-----\n",
            "PRIVATE KEY"
        ));
        assert!(!looks_like_pem(b"secret\n", "CERTIFICATE"));
    }
}
