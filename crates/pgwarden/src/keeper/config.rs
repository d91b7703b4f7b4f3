//! The keeper's node configuration: clap flags and an optional TOML file,
//! merged into a raw form and validated into a [`KeeperConfig`].
//!
//! A flag overrides the file; the file overrides defaults. Passwords only ever
//! come from files (never flags, which show in `ps`), and a password file that
//! others can read is refused, as libpq refuses a world-readable .pgpass.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

use crate::StoreArgs;

/// Default superuser name.
pub const DEFAULT_SU_USERNAME: &str = "postgres";
/// Default HTTP API address.
pub const DEFAULT_API_LISTEN: &str = "0.0.0.0:8008";

/// `pgwarden keeper` flags. Every one may also come from `--config FILE`.
#[derive(Debug, Args, Default)]
pub struct KeeperArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// TOML file holding any of these flags (snake_case keys, e.g. data_dir = "...").
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Stable, unique name of this keeper.
    #[arg(long)]
    pub uid: Option<String>,
    /// Postgres data directory (created if missing).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address postgres listens on.
    #[arg(long)]
    pub pg_listen_address: Option<String>,
    /// Address other nodes and proxies use to reach this postgres (default: the listen address).
    #[arg(long)]
    pub pg_advertise_address: Option<String>,
    /// Port postgres listens on.
    #[arg(long)]
    pub pg_port: Option<u16>,
    /// Superuser name.
    #[arg(long)]
    pub pg_su_username: Option<String>,
    /// File holding the superuser's password.
    #[arg(long)]
    pub pg_su_password_file: Option<PathBuf>,
    /// Replication user name.
    #[arg(long)]
    pub pg_repl_username: Option<String>,
    /// File holding the replication user's password.
    #[arg(long)]
    pub pg_repl_password_file: Option<PathBuf>,
    /// Directory of the postgres binaries (default: pg_ctl on PATH, else the newest /usr/lib/postgresql/*/bin).
    #[arg(long)]
    pub pg_bin_dir: Option<PathBuf>,
    /// Address of the HTTP API.
    #[arg(long)]
    pub api_listen: Option<String>,
    /// File holding the password that state-changing HTTP API requests must
    /// present (basic auth); without it such requests are always refused.
    #[arg(long)]
    pub api_password_file: Option<PathBuf>,
    /// PEM certificate for the HTTP API: serve HTTPS (with --api-key-file).
    #[arg(long, value_name = "FILE")]
    pub api_cert_file: Option<PathBuf>,
    /// PEM private key of --api-cert-file.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// PEM CA: the HTTPS API then requires client certificates it signed.
    #[arg(long, value_name = "FILE")]
    pub api_client_ca_file: Option<PathBuf>,
    /// Put every API endpoint but the health checks (/cluster, /metrics, ...)
    /// behind the --api-password-file password.
    #[arg(long)]
    pub api_auth_reads: bool,
    /// PEM server certificate for postgres: runs postgres with ssl=on (with
    /// --pg-ssl-key-file and --pg-ssl-ca-file).
    #[arg(long, value_name = "FILE")]
    pub pg_ssl_cert_file: Option<PathBuf>,
    /// PEM private key of --pg-ssl-cert-file (mode 0600, owned by the postgres user).
    #[arg(long, value_name = "FILE")]
    pub pg_ssl_key_file: Option<PathBuf>,
    /// PEM CA that signed every node's postgres certificate: replication
    /// checks the primary against it (sslmode=verify-full).
    #[arg(long, value_name = "FILE")]
    pub pg_ssl_ca_file: Option<PathBuf>,
    /// Also run a sentinel candidate inside this keeper.
    #[arg(long)]
    pub sentinel: bool,
    /// Never promote this node.
    #[arg(long)]
    pub nofailover: bool,
}

/// The TOML file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    cluster_name: Option<String>,
    store_endpoints: Option<Vec<String>>,
    store_ca_file: Option<PathBuf>,
    store_cert_file: Option<PathBuf>,
    store_key_file: Option<PathBuf>,
    store_user: Option<String>,
    store_password_file: Option<PathBuf>,
    uid: Option<String>,
    data_dir: Option<PathBuf>,
    pg_listen_address: Option<String>,
    pg_advertise_address: Option<String>,
    pg_port: Option<u16>,
    pg_su_username: Option<String>,
    pg_su_password_file: Option<PathBuf>,
    pg_repl_username: Option<String>,
    pg_repl_password_file: Option<PathBuf>,
    pg_bin_dir: Option<PathBuf>,
    api_listen: Option<String>,
    api_password_file: Option<PathBuf>,
    api_cert_file: Option<PathBuf>,
    api_key_file: Option<PathBuf>,
    api_client_ca_file: Option<PathBuf>,
    api_auth_reads: Option<bool>,
    pg_ssl_cert_file: Option<PathBuf>,
    pg_ssl_key_file: Option<PathBuf>,
    pg_ssl_ca_file: Option<PathBuf>,
    sentinel: Option<bool>,
    nofailover: Option<bool>,
}

/// A validated keeper configuration.
#[derive(Clone)]
pub struct KeeperConfig {
    pub store: StoreArgs,
    pub uid: String,
    pub data_dir: PathBuf,
    pub pg_listen_address: String,
    pub pg_advertise_address: String,
    pub pg_port: u16,
    pub su_username: String,
    pub su_password: String,
    pub su_password_file: PathBuf,
    pub repl_username: String,
    pub repl_password: String,
    pub pg_bin_dir: Option<PathBuf>,
    pub api_listen: SocketAddr,
    /// Password for state-changing HTTP API requests, when configured.
    pub api_password: Option<String>,
    /// HTTPS certificate and key of the API.
    pub api_tls: Option<(PathBuf, PathBuf)>,
    /// CA of the API's client certificates.
    pub api_client_ca_file: Option<PathBuf>,
    /// `--api-auth-reads`.
    pub api_auth_reads: bool,
    /// Postgres TLS, when configured.
    pub pg_ssl: Option<PgSsl>,
    pub sentinel: bool,
    pub nofailover: bool,
}

impl std::fmt::Debug for KeeperConfig {
    // Passwords stay out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeeperConfig")
            .field("uid", &self.uid)
            .field("data_dir", &self.data_dir)
            .field(
                "pg",
                &format_args!("{}:{}", self.pg_advertise_address, self.pg_port),
            )
            .finish_non_exhaustive()
    }
}

/// Postgres TLS: the node's certificate and key, and the CA of every node's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgSsl {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
}

/// A configuration that cannot be used; each names the field and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config file {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("missing {flag}: pass it as a flag or in --config")]
    Missing { flag: &'static str },
    #[error("invalid --uid {0:?}: use letters, digits, '-' and '_' (at most 48)")]
    BadUid(String),
    #[error("invalid --api-listen {0:?}: write ADDRESS:PORT, e.g. 0.0.0.0:8008")]
    BadApiListen(String),
    #[error("--pg-listen-address is {0}: pass --pg-advertise-address with an address other nodes can reach")]
    NeedAdvertise(String),
    #[error("password file {path} cannot be read: {source}; create it with the password on its first line and `chmod 600` it")]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "password file {path} is readable by other users (mode {mode:o}): run `chmod 600 {path}`"
    )]
    PasswordFileMode { path: PathBuf, mode: u32 },
    #[error("password file {path} is empty: put the password on its first line")]
    PasswordFileEmpty { path: PathBuf },
    #[error("--api-cert-file and --api-key-file go together: give both or neither")]
    ApiHalfTls,
    #[error("--api-client-ca-file needs HTTPS: pass --api-cert-file and --api-key-file too")]
    ApiClientCaWithoutTls,
    #[error("--api-auth-reads needs --api-password-file: the password the reads must present")]
    ApiAuthReadsWithoutPassword,
    #[error(
        "postgres TLS needs all of --pg-ssl-cert-file, --pg-ssl-key-file and --pg-ssl-ca-file"
    )]
    PgSslIncomplete,
}

impl KeeperArgs {
    /// Merges flags over the file and validates the result.
    pub fn into_config(self) -> Result<KeeperConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
                        path: path.clone(),
                        source,
                    })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::ParseFile {
                    path: path.clone(),
                    message: e
                        .to_string()
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" "),
                })?
            }
            None => FileConfig::default(),
        };
        let store = self.store.or(StoreArgs {
            cluster_name: file.cluster_name,
            store_endpoints: file.store_endpoints.unwrap_or_default(),
            store_ca_file: file.store_ca_file,
            store_cert_file: file.store_cert_file,
            store_key_file: file.store_key_file,
            store_user: file.store_user,
            store_password_file: file.store_password_file,
        });
        let uid = self
            .uid
            .or(file.uid)
            .ok_or(ConfigError::Missing { flag: "--uid" })?;
        if !pgwarden_core::keys::valid_uid(&uid) {
            return Err(ConfigError::BadUid(uid));
        }
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .ok_or(ConfigError::Missing { flag: "--data-dir" })?;
        let data_dir = std::path::absolute(&data_dir).unwrap_or(data_dir);
        let pg_listen_address =
            self.pg_listen_address
                .or(file.pg_listen_address)
                .ok_or(ConfigError::Missing {
                    flag: "--pg-listen-address",
                })?;
        let pg_advertise_address = match self.pg_advertise_address.or(file.pg_advertise_address) {
            Some(a) => a,
            None if matches!(pg_listen_address.as_str(), "*" | "0.0.0.0" | "::" | "") => {
                return Err(ConfigError::NeedAdvertise(pg_listen_address));
            }
            None => pg_listen_address
                .split(',')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string(),
        };
        let pg_port = self
            .pg_port
            .or(file.pg_port)
            .ok_or(ConfigError::Missing { flag: "--pg-port" })?;
        let su_password_file = self
            .pg_su_password_file
            .or(file.pg_su_password_file)
            .ok_or(ConfigError::Missing {
                flag: "--pg-su-password-file",
            })?;
        let repl_password_file = self
            .pg_repl_password_file
            .or(file.pg_repl_password_file)
            .ok_or(ConfigError::Missing {
                flag: "--pg-repl-password-file",
            })?;
        let repl_username =
            self.pg_repl_username
                .or(file.pg_repl_username)
                .ok_or(ConfigError::Missing {
                    flag: "--pg-repl-username",
                })?;
        let api = self
            .api_listen
            .or(file.api_listen)
            .unwrap_or_else(|| DEFAULT_API_LISTEN.to_string());
        let api_listen = api
            .parse()
            .map_err(|_| ConfigError::BadApiListen(api.clone()))?;
        let api_password = self
            .api_password_file
            .or(file.api_password_file)
            .map(|path| read_password_file(&path))
            .transpose()?;
        let api_tls = match (
            self.api_cert_file.or(file.api_cert_file),
            self.api_key_file.or(file.api_key_file),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(ConfigError::ApiHalfTls),
        };
        let api_client_ca_file = self.api_client_ca_file.or(file.api_client_ca_file);
        if api_client_ca_file.is_some() && api_tls.is_none() {
            return Err(ConfigError::ApiClientCaWithoutTls);
        }
        let api_auth_reads = self.api_auth_reads || file.api_auth_reads.unwrap_or(false);
        if api_auth_reads && api_password.is_none() {
            return Err(ConfigError::ApiAuthReadsWithoutPassword);
        }
        let pg_ssl = match (
            self.pg_ssl_cert_file.or(file.pg_ssl_cert_file),
            self.pg_ssl_key_file.or(file.pg_ssl_key_file),
            self.pg_ssl_ca_file.or(file.pg_ssl_ca_file),
        ) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => {
                // postgres resolves relative paths against the data directory.
                let abs = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
                Some(PgSsl {
                    cert_file: abs(cert),
                    key_file: abs(key),
                    ca_file: abs(ca),
                })
            }
            _ => return Err(ConfigError::PgSslIncomplete),
        };
        Ok(KeeperConfig {
            store,
            uid,
            data_dir,
            pg_listen_address,
            pg_advertise_address,
            pg_port,
            su_username: self
                .pg_su_username
                .or(file.pg_su_username)
                .unwrap_or_else(|| DEFAULT_SU_USERNAME.into()),
            su_password: read_password_file(&su_password_file)?,
            su_password_file: std::path::absolute(&su_password_file).unwrap_or(su_password_file),
            repl_username,
            repl_password: read_password_file(&repl_password_file)?,
            pg_bin_dir: self.pg_bin_dir.or(file.pg_bin_dir),
            api_listen,
            api_password,
            api_tls,
            api_client_ca_file,
            api_auth_reads,
            pg_ssl,
            sentinel: self.sentinel || file.sentinel.unwrap_or(false),
            nofailover: self.nofailover || file.nofailover.unwrap_or(false),
        })
    }
}

/// Reads the first line of a password file that only its owner can read.
pub fn read_password_file(path: &Path) -> Result<String, ConfigError> {
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::PasswordFile {
        path: path.into(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::PasswordFileMode {
            path: path.into(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::PasswordFile {
        path: path.into(),
        source,
    })?;
    let password = text.lines().next().unwrap_or("").to_string();
    if password.is_empty() {
        return Err(ConfigError::PasswordFileEmpty { path: path.into() });
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn password_file(dir: &Path, name: &str, mode: u32, content: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn args(dir: &Path) -> KeeperArgs {
        KeeperArgs {
            uid: Some("k1".into()),
            data_dir: Some(dir.join("data")),
            pg_listen_address: Some("127.0.0.1".into()),
            pg_port: Some(5432),
            pg_su_password_file: Some(password_file(dir, "su", 0o600, "secret\n")),
            pg_repl_username: Some("repl".into()),
            pg_repl_password_file: Some(password_file(dir, "repl", 0o400, "r'pass\\\n")),
            ..KeeperArgs::default()
        }
    }

    #[test]
    fn store_tls_and_api_settings_come_from_the_file_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keeper.toml");
        std::fs::write(
            &file,
            "store_ca_file = \"/etc/pgwarden/ca.pem\"\nstore_user = \"keeper\"\napi_cert_file = \"/c.pem\"\napi_key_file = \"/k.pem\"\n",
        )
        .unwrap();
        let c = KeeperArgs {
            config: Some(file.clone()),
            ..args(dir.path())
        }
        .into_config()
        .unwrap();
        assert_eq!(
            c.store.store_ca_file.as_deref(),
            Some(Path::new("/etc/pgwarden/ca.pem"))
        );
        assert_eq!(c.store.store_user.as_deref(), Some("keeper"));
        assert_eq!(c.api_tls, Some(("/c.pem".into(), "/k.pem".into())));
        let half = KeeperArgs {
            api_cert_file: Some("/c.pem".into()),
            ..args(dir.path())
        };
        assert!(matches!(half.into_config(), Err(ConfigError::ApiHalfTls)));
        let reads = KeeperArgs {
            api_auth_reads: true,
            ..args(dir.path())
        };
        assert!(matches!(
            reads.into_config(),
            Err(ConfigError::ApiAuthReadsWithoutPassword)
        ));
    }

    #[test]
    fn flags_validate_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let c = args(dir.path()).into_config().unwrap();
        assert_eq!(c.su_username, "postgres");
        assert_eq!(c.su_password, "secret");
        assert_eq!(c.repl_password, "r'pass\\");
        assert_eq!(c.pg_advertise_address, "127.0.0.1");
        assert_eq!(c.api_listen.to_string(), "0.0.0.0:8008");
        assert_eq!(c.api_password, None);
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn file_supplies_what_flags_do_not_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keeper.toml");
        std::fs::write(&file, "uid = 'from-file'\npg_port = 6000\napi_listen = '127.0.0.1:9000'\ncluster_name = 'c'\n").unwrap();
        let a = KeeperArgs {
            config: Some(file),
            uid: None,
            ..args(dir.path())
        };
        let c = a.into_config().unwrap();
        assert_eq!(c.uid, "from-file");
        assert_eq!(c.pg_port, 5432, "the flag wins over the file");
        assert_eq!(c.api_listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.store.cluster_name.as_deref(), Some("c"));
    }

    #[test]
    fn api_password_comes_from_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let pw = password_file(dir.path(), "api", 0o600, "api-secret\n");
        let file = dir.path().join("keeper.toml");
        std::fs::write(&file, format!("api_password_file = {:?}\n", pw)).unwrap();
        let c = KeeperArgs {
            config: Some(file),
            ..args(dir.path())
        }
        .into_config()
        .unwrap();
        assert_eq!(c.api_password.as_deref(), Some("api-secret"));
        assert!(!format!("{c:?}").contains("api-secret"));
    }

    #[test]
    fn bad_inputs_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let err = |a: KeeperArgs| a.into_config().unwrap_err().to_string();
        assert_eq!(
            err(KeeperArgs {
                uid: None,
                ..args(dir.path())
            }),
            "missing --uid: pass it as a flag or in --config"
        );
        assert!(err(KeeperArgs {
            uid: Some("a/b".into()),
            ..args(dir.path())
        })
        .contains("invalid --uid"));
        let open = password_file(dir.path(), "open", 0o644, "x\n");
        let e = err(KeeperArgs {
            pg_su_password_file: Some(open),
            ..args(dir.path())
        });
        assert!(
            e.contains("readable by other users") && e.contains("chmod 600"),
            "{e}"
        );
        let e = err(KeeperArgs {
            pg_su_password_file: Some(dir.path().join("nope")),
            ..args(dir.path())
        });
        assert!(e.contains("cannot be read"), "{e}");
        let empty = password_file(dir.path(), "empty", 0o600, "");
        assert!(err(KeeperArgs {
            pg_su_password_file: Some(empty),
            ..args(dir.path())
        })
        .contains("is empty"));
        let e = err(KeeperArgs {
            pg_listen_address: Some("0.0.0.0".into()),
            ..args(dir.path())
        });
        assert!(e.contains("--pg-advertise-address"), "{e}");
        let e = err(KeeperArgs {
            api_listen: Some("8008".into()),
            ..args(dir.path())
        });
        assert!(e.contains("--api-listen"), "{e}");
        let open_api = password_file(dir.path(), "api-open", 0o640, "x\n");
        let e = err(KeeperArgs {
            api_password_file: Some(open_api),
            ..args(dir.path())
        });
        assert!(e.contains("api-open") && e.contains("chmod 600"), "{e}");
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "pg_prot = 1\n").unwrap();
        let e = err(KeeperArgs {
            config: Some(file),
            ..args(dir.path())
        });
        assert!(e.contains("pg_prot"), "{e}");
    }
}
