//! A secured test cluster: a 3-member etcd with TLS, `--client-cert-auth`
//! and auth enabled through scripts/etcd-roles.sh (the recipe of
//! docs/security.md), certificates made by the openssl CLI for the test, and
//! every role started under its own minimal etcd user.

use std::collections::BTreeMap;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use pgwarden_store::etcd_server::{EtcdCluster, ServerTls};

use super::{TestCluster, TestEtcd};

/// The keepers and proxies the roles are made for.
pub const KEEPERS: &str = "k1,k2,k3";
pub const PROXIES: &str = "proxy1";
pub const SENTINEL_PASSWORD: &str = "sentinel-secret";

/// A test CA in a directory, issuing certificates with openssl.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    ca_key: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// A fresh CA named `name` under `dir`.
    pub fn new(dir: &Path, name: &str) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let ca = dir.join(format!("{name}.pem"));
        let ca_key = dir.join(format!("{name}-key.pem"));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            ca_key.to_str().unwrap(),
            "-out",
            ca.to_str().unwrap(),
        ]);
        Pki {
            dir: dir.to_owned(),
            ca,
            ca_key,
        }
    }

    /// A certificate `<file>.pem` / `<file>-key.pem` with `cn`, valid for
    /// 127.0.0.1 and localhost, for servers and clients alike.
    pub fn issue(&self, file: &str, cn: &str) -> (PathBuf, PathBuf) {
        let cert = self.dir.join(format!("{file}.pem"));
        let key = self.dir.join(format!("{file}-key.pem"));
        let csr = self.dir.join(format!("{file}.csr"));
        let ext = self.dir.join(format!("{file}.ext"));
        std::fs::write(
            &ext,
            "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            csr.to_str().unwrap(),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            self.ca.to_str().unwrap(),
            "-CAkey",
            self.ca_key.to_str().unwrap(),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            ext.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]);
        (cert, key)
    }
}

/// The TLS material of a secured cluster and each role's store flags.
#[derive(Debug)]
pub struct Secure {
    pub pki: Pki,
    pub root: (PathBuf, PathBuf),
    /// Store flags (as environment variables) per process name: `ctl`,
    /// `sentinel`, each keeper uid, each proxy id.
    pub env: BTreeMap<String, Vec<(String, String)>>,
}

impl Secure {
    /// The environment of a client authenticated by the certificate `file`.
    pub fn cert_env(&self, file: &str) -> Vec<(String, String)> {
        let dir = &self.pki.dir;
        vec![
            env("PGWARDEN_STORE_CA_FILE", &self.pki.ca),
            env("PGWARDEN_STORE_CERT_FILE", &dir.join(format!("{file}.pem"))),
            env(
                "PGWARDEN_STORE_KEY_FILE",
                &dir.join(format!("{file}-key.pem")),
            ),
        ]
    }

    /// etcdctl as etcd's root user.
    pub fn etcdctl(&self, endpoints: &str) -> Command {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .env("ETCDCTL_ENDPOINTS", endpoints)
            .env("ETCDCTL_CACERT", &self.pki.ca)
            .env("ETCDCTL_CERT", &self.root.0)
            .env("ETCDCTL_KEY", &self.root.1);
        cmd
    }
}

fn env(name: &str, path: &Path) -> (String, String) {
    (name.to_owned(), path.to_string_lossy().into_owned())
}

impl TestCluster {
    /// A 3-member etcd with TLS, client certificates and auth on, users and
    /// roles made by scripts/etcd-roles.sh; cluster not initialised.
    pub async fn secured() -> TestCluster {
        let run_as = super::postgres_user();
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-e2e-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let pki = Pki::new(&dir.path().join("pki"), "test-ca");
        let cluster_name = "e2e".to_string();
        let server = pki.issue("etcd-server", "etcd");
        let root = pki.issue("root", "root");
        let name = format!("pgwarden-{cluster_name}");
        let mut envs = BTreeMap::new();
        let admin = format!("{name}-admin");
        pki.issue("ctl", &admin);
        let sentinel = format!("{name}-sentinel");
        pki.issue("sentinel", &sentinel);
        for uid in KEEPERS.split(',') {
            pki.issue(uid, &format!("{name}-keeper-{uid}"));
        }
        for id in PROXIES.split(',') {
            pki.issue(id, &format!("{name}-proxy-{id}"));
        }
        // Keepers and sentinels run as the postgres user.
        for entry in std::fs::read_dir(&pki.dir).unwrap() {
            let path = entry.unwrap().path();
            chown(&path, Some(run_as.0), Some(run_as.1)).unwrap();
        }
        let tls = ServerTls {
            ca_file: pki.ca.clone(),
            cert_file: server.0,
            key_file: server.1,
            client_cert_file: root.0.clone(),
            client_key_file: root.1.clone(),
        };
        let etcd_dir = dir.path().join("etcd");
        std::fs::create_dir_all(&etcd_dir).unwrap();
        let hosts = vec!["127.0.0.1".to_string(); 3];
        let etcd = EtcdCluster::start_secured(&etcd_dir, &hosts, None, Some(&tls))
            .await
            .unwrap();
        let etcd = TestEtcd::Three(etcd);
        let su_file = super::secret(dir.path(), "su-password", super::SU_PASSWORD, run_as);
        let repl_file = super::secret(dir.path(), "repl-password", super::REPL_PASSWORD, run_as);
        let mut c = TestCluster {
            dir,
            etcd,
            name: cluster_name,
            run_as,
            su_file,
            repl_file,
            keepers: BTreeMap::new(),
            children: BTreeMap::new(),
            secure: None,
        };
        let mut secure = Secure {
            pki,
            root,
            env: BTreeMap::new(),
        };
        let password_file = c.secret_file("sentinel-etcd-password", SENTINEL_PASSWORD);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/etcd-roles.sh");
        let out = Command::new("sh")
            .arg(&script)
            .args([c.name.as_str(), KEEPERS, PROXIES])
            .env("SENTINEL_PASSWORD_FILE", &password_file)
            .envs(
                secure
                    .etcdctl(&c.etcd.endpoint())
                    .get_envs()
                    .filter_map(|(k, v)| Some((k, v?))),
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "etcd-roles.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        envs.insert("ctl".to_owned(), secure.cert_env("ctl"));
        // The sentinel shows the password flavour: a certificate for TLS,
        // the user and password for etcd's auth.
        let mut sentinel_env = secure.cert_env("sentinel");
        sentinel_env.push(("PGWARDEN_STORE_USER".to_owned(), sentinel));
        sentinel_env.push(env("PGWARDEN_STORE_PASSWORD_FILE", &password_file));
        envs.insert("sentinel".to_owned(), sentinel_env);
        for uid in KEEPERS.split(',').chain(PROXIES.split(',')) {
            envs.insert(uid.to_owned(), secure.cert_env(uid));
        }
        secure.env = envs;
        c.secure = Some(secure);
        c
    }
}
