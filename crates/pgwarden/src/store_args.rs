//! The store flags every role shares (`--cluster-name`, `--store-*`) and
//! [`StoreArgs::open`], the one way a role gets its [`Store`].
//!
//! Each flag also comes from its `PGWARDEN_STORE_*` environment variable and,
//! for the keeper, sentinel and proxy, from their TOML file under the same
//! snake_case name. Secrets only come from files: the password file must be
//! private to its owner, as libpq demands of .pgpass.
//!
//! Opening is lazy for reachability (a role starts while etcd is down and
//! connects when it comes back) but strict for TLS and authentication: a
//! wrong CA, certificate or password will not heal by waiting, so `open`
//! asks etcd once and turns such a refusal into a one-line error and a
//! non-zero exit.

use std::path::PathBuf;

use anyhow::{anyhow, bail};
use clap::Args;
use pgwarden_core::keys;
use pgwarden_store::{Credentials, Store, StoreError, StoreOptions, TlsFiles};
use tracing::warn;

use crate::keeper::config::read_password_file;

/// Flags every role that talks to the store shares.
#[derive(Debug, Clone, Default, Args)]
pub struct StoreArgs {
    /// Name of the cluster (its keys live under /pgwarden/NAME/).
    #[arg(long, env = "PGWARDEN_CLUSTER_NAME", global = true)]
    pub cluster_name: Option<String>,
    /// Comma-separated etcd v3 endpoints (http://HOST:PORT, or https:// with --store-ca-file).
    #[arg(
        long,
        env = "PGWARDEN_STORE_ENDPOINTS",
        global = true,
        value_delimiter = ','
    )]
    pub store_endpoints: Vec<String>,
    /// PEM file of the CA that signed etcd's certificates; turns on TLS towards etcd.
    #[arg(
        long,
        env = "PGWARDEN_STORE_CA_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub store_ca_file: Option<PathBuf>,
    /// PEM client certificate for etcd (with etcd auth on, its CN is the etcd user).
    #[arg(
        long,
        env = "PGWARDEN_STORE_CERT_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub store_cert_file: Option<PathBuf>,
    /// PEM private key of --store-cert-file.
    #[arg(
        long,
        env = "PGWARDEN_STORE_KEY_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub store_key_file: Option<PathBuf>,
    /// etcd user (with etcd auth on; not needed with a client certificate).
    #[arg(long, env = "PGWARDEN_STORE_USER", global = true)]
    pub store_user: Option<String>,
    /// File holding the etcd user's password (mode 0600).
    #[arg(
        long,
        env = "PGWARDEN_STORE_PASSWORD_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub store_password_file: Option<PathBuf>,
}

impl StoreArgs {
    /// Each setting of `self`, or else of `other` (the keeper's file).
    pub fn or(self, other: StoreArgs) -> StoreArgs {
        StoreArgs {
            cluster_name: self.cluster_name.or(other.cluster_name),
            store_endpoints: if self.store_endpoints.is_empty() {
                other.store_endpoints
            } else {
                self.store_endpoints
            },
            store_ca_file: self.store_ca_file.or(other.store_ca_file),
            store_cert_file: self.store_cert_file.or(other.store_cert_file),
            store_key_file: self.store_key_file.or(other.store_key_file),
            store_user: self.store_user.or(other.store_user),
            store_password_file: self.store_password_file.or(other.store_password_file),
        }
    }

    /// Whether TLS or authentication towards etcd is configured.
    fn secured(&self) -> bool {
        self.store_ca_file.is_some() || self.store_user.is_some()
    }

    /// Validates the flags into store options; reads no network.
    fn options(&self) -> anyhow::Result<StoreOptions> {
        let tls = match (&self.store_ca_file, &self.store_cert_file, &self.store_key_file) {
            (None, None, None) => None,
            (None, _, _) => bail!(
                "--store-cert-file/--store-key-file need --store-ca-file: pass the CA that signed etcd's certificate"
            ),
            (Some(ca), cert, key) => {
                if cert.is_some() != key.is_some() {
                    bail!("--store-cert-file and --store-key-file go together: give both or neither");
                }
                Some(TlsFiles {
                    ca_file: ca.clone(),
                    cert_file: cert.clone(),
                    key_file: key.clone(),
                })
            }
        };
        let user = match (&self.store_user, &self.store_password_file) {
            (None, None) => None,
            (None, Some(_)) => {
                bail!("--store-password-file needs --store-user: pass the etcd user it belongs to")
            }
            (Some(_), None) => bail!(
                "--store-user needs --store-password-file: a file holding the etcd password (mode 0600)"
            ),
            (Some(user), Some(file)) => Some(Credentials {
                user: user.clone(),
                password: read_password_file(file)?,
                password_file: Some(file.clone()),
            }),
        };
        Ok(StoreOptions {
            tls,
            user,
            ..StoreOptions::default()
        })
    }

    /// The store client for these flags. Fails with one line on missing or
    /// bad settings and, when TLS or auth is configured, on a TLS or
    /// authentication failure against etcd; an unreachable etcd is not an
    /// error here (the role retries).
    pub async fn open(&self) -> anyhow::Result<Store> {
        let cluster = self.cluster_name.as_deref().ok_or_else(|| {
            anyhow!("no cluster name: pass --cluster-name NAME or set PGWARDEN_CLUSTER_NAME")
        })?;
        if !keys::valid_uid(cluster) {
            bail!(
                "invalid cluster name {cluster:?}: use letters, digits, '-' and '_' (at most 48)"
            );
        }
        if self.store_endpoints.is_empty() {
            bail!("no etcd endpoints: pass --store-endpoints http://HOST:2379[,...] or set PGWARDEN_STORE_ENDPOINTS");
        }
        let store = Store::new(&self.store_endpoints, cluster, self.options()?)?;
        if self.secured() {
            check_access(&store).await?;
        }
        Ok(store)
    }
}

/// How many times [`check_access`] asks before carrying on.
const ACCESS_CHECK_ATTEMPTS: u32 = 3;

/// Asks etcd once for something every role may read (the spec, see
/// docs/security.md) and fails on a TLS or auth refusal. With TLS 1.3 etcd
/// verifies our certificate after the handshake, so its refusal can first
/// show as a dropped connection: a few attempts see the alert itself.
async fn check_access(store: &Store) -> anyhow::Result<()> {
    let mut attempt = 1;
    loop {
        match store.get(keys::SPEC).await {
            Ok(_) => return Ok(()),
            Err(e @ StoreError::Security { .. }) => return Err(e.into()),
            Err(e) if attempt >= ACCESS_CHECK_ATTEMPTS => {
                warn!(error = %e, "etcd not reachable yet; carrying on");
                return Ok(());
            }
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> StoreArgs {
        StoreArgs {
            cluster_name: Some("c".into()),
            store_endpoints: vec!["https://etcd:2379".into()],
            ..StoreArgs::default()
        }
    }

    fn error(args: StoreArgs) -> String {
        args.options().unwrap_err().to_string()
    }

    #[test]
    fn half_given_settings_are_refused_with_the_missing_flag() {
        let cert_only = StoreArgs {
            store_cert_file: Some("/c.pem".into()),
            store_key_file: Some("/k.pem".into()),
            ..args()
        };
        assert!(error(cert_only).contains("need --store-ca-file"));
        let no_key = StoreArgs {
            store_ca_file: Some("/ca.pem".into()),
            store_cert_file: Some("/c.pem".into()),
            ..args()
        };
        assert!(error(no_key).contains("go together"));
        let no_password = StoreArgs {
            store_user: Some("u".into()),
            ..args()
        };
        assert!(error(no_password).contains("--store-password-file"));
        let no_user = StoreArgs {
            store_password_file: Some("/p".into()),
            ..args()
        };
        assert!(error(no_user).contains("needs --store-user"));
    }

    #[tokio::test]
    async fn an_https_endpoint_without_a_ca_is_refused() {
        let err = args().open().await.unwrap_err().to_string();
        assert!(err.contains("--store-ca-file"), "{err}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = StoreArgs {
            store_user: Some("file".into()),
            store_ca_file: Some("/file-ca.pem".into()),
            ..StoreArgs::default()
        };
        let flags = StoreArgs {
            store_user: Some("flag".into()),
            ..args()
        };
        let merged = flags.or(file);
        assert_eq!(merged.store_user.as_deref(), Some("flag"));
        assert_eq!(merged.store_ca_file, Some("/file-ca.pem".into()));
    }
}
