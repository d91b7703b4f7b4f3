//! TLS and authentication on the store link, end to end: a real 3-member
//! etcd with TLS, `--client-cert-auth`, `--trusted-ca-file` and auth on,
//! users and roles made by scripts/etcd-roles.sh (docs/security.md), and
//! every role under its own minimal etcd user.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use common::secure::Pki;
use common::{stderr, TestCluster};
use pgwarden_store::{SecurityProblem, Store, StoreError, StoreOptions, TlsFiles};

/// A store client authenticated by one of the test's certificates.
fn store_as(c: &TestCluster, file: &str) -> Store {
    let secure = c.secure.as_ref().unwrap();
    let dir = &secure.pki.dir;
    let endpoints: Vec<String> = c.etcd.endpoint().split(',').map(str::to_owned).collect();
    let options = StoreOptions {
        tls: Some(TlsFiles {
            ca_file: secure.pki.ca.clone(),
            cert_file: Some(dir.join(format!("{file}.pem"))),
            key_file: Some(dir.join(format!("{file}-key.pem"))),
        }),
        ..StoreOptions::default()
    };
    Store::new(&endpoints, &c.name, options).unwrap()
}

/// The one line a failed command printed.
fn one_line(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let text = stderr(out);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line expected: {text}");
    assert_eq!(
        text.trim().lines().count(),
        1,
        "nothing but the error: {text}"
    );
    lines[0].to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_role_is_confined_to_its_keys_and_mistakes_are_named() {
    let c = TestCluster::secured().await;
    c.ctl_ok(&["init"]);
    let secure = c.secure.as_ref().unwrap();

    // The operator reads what it wrote, over TLS with its certificate.
    let status = c.ctl_ok(&["status", "--output", "json"]);
    assert!(status.contains("\"cluster\": \"e2e\""), "{status}");

    // A proxy may write its own acknowledgement and nothing else.
    let proxy = store_as(&c, "proxy1");
    proxy
        .put("proxies/proxy1", b"0".to_vec(), None)
        .await
        .unwrap();
    for key in ["status", "spec", "primary", "keepers/k1", "proxies/other"] {
        match proxy.put(key, b"{}".to_vec(), None).await {
            Err(StoreError::Security {
                problem: SecurityProblem::PermissionDenied { key: Some(k), .. },
                ..
            }) => assert_eq!(k, format!("/pgwarden/e2e/{key}")),
            other => panic!("proxy wrote {key}: {other:?}"),
        }
    }
    // A keeper writes its own report and the primary key, not another's
    // report or the status.
    let keeper = store_as(&c, "k1");
    keeper
        .put("keepers/k1", b"{}".to_vec(), None)
        .await
        .unwrap();
    keeper.delete("keepers/k1").await.unwrap();
    assert!(keeper
        .put("keepers/k2", b"{}".to_vec(), None)
        .await
        .is_err());
    assert!(keeper.put("status", b"{}".to_vec(), None).await.is_err());
    // The ctl command under another role's certificate is refused in one line.
    let mut cmd = c.command();
    cmd.envs(secure.cert_env("proxy1"))
        .args(["ctl", "spec", "set", "sync_mode=strict"]);
    let line = one_line(&cmd.output().unwrap());
    assert!(line.contains("permission denied"), "{line}");
    assert!(line.contains("/pgwarden/e2e/spec"), "{line}");

    // A plaintext client cannot even talk to etcd.
    let plain: Vec<String> = c
        .etcd
        .endpoint()
        .split(',')
        .map(|e| e.replace("https://", "http://"))
        .collect();
    let plain = Store::new(&plain, &c.name, StoreOptions::default()).unwrap();
    assert!(plain.put("status", b"{}".to_vec(), None).await.is_err());

    // A keeper given the wrong CA exits at once with one line naming the file
    // and the cause.
    let other_ca = Pki::new(&c.path().join("other-pki"), "other-ca");
    std::os::unix::fs::chown(&other_ca.ca, Some(c.run_as.0), Some(c.run_as.1)).unwrap();
    let mut c = c;
    c.add_keeper("k1");
    let mut cmd = c.keeper_command("k1");
    cmd.env("PGWARDEN_STORE_CA_FILE", &other_ca.ca)
        .uid(c.run_as.0)
        .gid(c.run_as.1);
    let started = Instant::now();
    let line = one_line(&cmd.output().unwrap());
    assert!(line.contains("unknown CA"), "{line}");
    assert!(line.contains(other_ca.ca.to_str().unwrap()), "{line}");
    assert!(started.elapsed() < Duration::from_secs(30));

    // A wrong password: one line naming the user and the password file.
    let wrong = c.secret_file("wrong-password", "not-the-password");
    let mut cmd = c.keeper_command("k1");
    cmd.env("PGWARDEN_STORE_USER", "pgwarden-e2e-sentinel")
        .env("PGWARDEN_STORE_PASSWORD_FILE", &wrong)
        .uid(c.run_as.0)
        .gid(c.run_as.1);
    let line = one_line(&cmd.output().unwrap());
    assert!(line.contains("authentication failed"), "{line}");
    assert!(line.contains(wrong.to_str().unwrap()), "{line}");

    // A client certificate from another CA is refused by etcd.
    other_ca.issue("intruder", "pgwarden-e2e-admin");
    let mut cmd = c.command();
    cmd.env("PGWARDEN_STORE_CA_FILE", secure_ca(&c))
        .env(
            "PGWARDEN_STORE_CERT_FILE",
            other_ca.dir.join("intruder.pem"),
        )
        .env(
            "PGWARDEN_STORE_KEY_FILE",
            other_ca.dir.join("intruder-key.pem"),
        )
        .args(["ctl", "status"]);
    let line = one_line(&cmd.output().unwrap());
    assert!(line.contains("refused the client certificate"), "{line}");
}

fn secure_ca(c: &TestCluster) -> std::path::PathBuf {
    c.secure.as_ref().unwrap().pki.ca.clone()
}

/// `curl` over HTTPS against the test CA: the status code and the body.
fn curl(ca: &std::path::Path, url: &str, password: Option<&str>) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "5", "-w", "\n%{http_code}", "--cacert"])
        .arg(ca)
        .arg(url);
    if let Some(pw) = password {
        cmd.args(["-u", &format!("pgwarden:{pw}")]);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// The keepers' extra flags: HTTPS API with their store certificate (valid
/// for 127.0.0.1), reads behind the API password.
fn api_flags(c: &TestCluster, uid: &str, password_file: &std::path::Path) -> Vec<String> {
    let dir = &c.secure.as_ref().unwrap().pki.dir;
    vec![
        format!(
            "--api-cert-file={}",
            dir.join(format!("{uid}.pem")).display()
        ),
        format!(
            "--api-key-file={}",
            dir.join(format!("{uid}-key.pem")).display()
        ),
        format!("--api-password-file={}", password_file.display()),
        "--api-auth-reads".to_owned(),
        format!(
            "--pg-ssl-cert-file={}",
            dir.join(format!("{uid}.pem")).display()
        ),
        format!(
            "--pg-ssl-key-file={}",
            dir.join(format!("{uid}-key.pem")).display()
        ),
        format!(
            "--pg-ssl-ca-file={}",
            c.secure.as_ref().unwrap().pki.ca.display()
        ),
    ]
}

/// `psql` with `sslmode=verify-full` against the test CA: whether this
/// session is encrypted, as the server sees it.
fn psql_verify_full(ca: &std::path::Path, port: u16) -> Result<String, String> {
    let conninfo = format!(
        "host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=verify-full sslrootcert={} connect_timeout=5",
        ca.display()
    );
    let out = std::process::Command::new("psql")
        .args([
            &conninfo,
            "-XAtc",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ])
        .env("PGPASSWORD", common::SU_PASSWORD)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(stderr(&out))
    }
}

/// Waits until a session through the proxy on `port` is TLS end to end.
async fn wait_psql_tls(ca: &std::path::Path, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match psql_verify_full(ca, port) {
            Ok(ssl) if ssl == "t" => return,
            other => assert!(
                Instant::now() < deadline,
                "psql sslmode=verify-full through the proxy: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// haproxy running the block of docs/haproxy.md with the `check-ssl` options
/// of its "Over HTTPS" section on every server line, rewritten to this
/// test's ports; returns it and its primary port.
fn haproxy_over_https(c: &TestCluster, ca: &std::path::Path) -> (std::process::Child, u16) {
    let doc = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/haproxy.md");
    let doc = std::fs::read_to_string(doc).unwrap();
    let block = doc
        .split("```haproxy\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .unwrap();
    let https = doc
        .split("## Over HTTPS")
        .nth(1)
        .expect("an Over HTTPS section");
    let tls_options = https
        .lines()
        .find_map(|l| l.trim().strip_prefix("server node1 "))
        .and_then(|l| l.split_once("check port 8008 "))
        .map(|(_, options)| options.to_owned())
        .expect("a check-ssl server line");
    assert!(tls_options.contains("check-ssl"), "{tls_options}");
    let tls_options = tls_options.replace("/etc/haproxy/pgwarden-ca.pem", ca.to_str().unwrap());
    let (primary, replicas, stats) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let mut cfg = String::new();
    for line in block.lines() {
        let line = match line.trim_start().strip_prefix("server node") {
            Some(rest) => {
                let n: usize = rest.split(' ').next().unwrap().parse().unwrap();
                let uid = ["k1", "k2", "k3"][n - 1];
                let k = &c.keepers[uid];
                format!(
                    "    server {uid} 127.0.0.1:{} maxconn 100 check port {} {tls_options}",
                    k.pg_port, k.api_port
                )
            }
            None => line
                .replace("*:5000", &format!("127.0.0.1:{primary}"))
                .replace("*:5001", &format!("127.0.0.1:{replicas}"))
                .replace("*:7000", &format!("127.0.0.1:{stats}")),
        };
        cfg.push_str(&line);
        cfg.push('\n');
    }
    let path = c.path().join("haproxy.cfg");
    std::fs::write(&path, &cfg).unwrap();
    let mut cmd = std::process::Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&path);
    let child = common::spawn_logged(cmd, &c.path().join("haproxy.log"), None);
    (child, primary)
}

/// Kills the primary's host and waits until a standby is writable.
async fn host_loss_failover(c: &mut TestCluster, primary: &str) -> (String, Duration) {
    let t0 = Instant::now();
    c.kill_host(primary);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for uid in c.keepers.keys().filter(|u| u.as_str() != primary) {
            if let Ok(v) =
                common::query_strings(c.port_of(uid), "SELECT (NOT pg_is_in_recovery())::text")
                    .await
            {
                if v == ["true"] {
                    return (uid.clone(), t0.elapsed());
                }
            }
        }
        assert!(Instant::now() < deadline, "no new primary within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_of_minimal_roles_over_tls_fails_over() {
    let mut c = TestCluster::secured().await;
    c.ctl_ok(&["init"]);
    let api_password = "api-secret";
    let api_file = c.secret_file("api-password", api_password);
    c.spawn_sentinel("sentinel1");
    for uid in ["k1", "k2", "k3"] {
        c.add_keeper(uid);
        let flags = api_flags(&c, uid, &api_file);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        c.start_keeper_with(uid, &flags);
    }
    let status = c.wait_converged(2, Duration::from_secs(120)).await;
    let primary = status["primary"].as_str().unwrap().to_owned();
    let (proxy_port, read_only_port) = (common::free_port(), common::free_port());
    c.spawn_proxy("proxy1", proxy_port, read_only_port);

    // Replication runs over TLS (hostssl, verify-full against the CA).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ssl = common::query_strings(
            c.port_of(&primary),
            "SELECT count(*)::text FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE s.ssl",
        )
        .await;
        if ssl.as_deref().is_ok_and(|v| v == ["2"]) {
            break;
        }
        assert!(Instant::now() < deadline, "walsenders over TLS: {ssl:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The keepers' own sessions (probes, the divergence check) use TLS too:
    // every session named "pgwarden" on the primary, and there is at least
    // its own keeper's.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let own = common::query_strings(
            c.port_of(&primary),
            "SELECT count(*) FILTER (WHERE s.ssl) || '/' || count(*) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'pgwarden'",
        )
        .await;
        let all_ssl = own
            .as_deref()
            .ok()
            .and_then(|v| v.first())
            .is_some_and(|v| {
                v.split_once('/')
                    .is_some_and(|(ssl, all)| ssl == all && all != "0")
            });
        if all_ssl {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "keeper sessions over TLS (ssl/all): {own:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ca = secure_ca(&c);
    wait_psql_tls(&ca, proxy_port).await;

    // The API over HTTPS: health checks open, the rest behind the password.
    let api =
        |uid: &str, path: &str| format!("https://127.0.0.1:{}{path}", c.keepers[uid].api_port);
    assert_eq!(curl(&ca, &api(&primary, "/primary"), None).0, 200);
    assert_eq!(curl(&ca, &api(&primary, "/cluster"), None).0, 401);
    assert_eq!(curl(&ca, &api(&primary, "/metrics"), None).0, 401);
    let (code, body) = curl(&ca, &api(&primary, "/cluster"), Some(api_password));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&primary), "{body}");

    // haproxy's health checks over HTTPS (docs/haproxy.md, check-ssl) find
    // the primary.
    let (mut haproxy, haproxy_port) = haproxy_over_https(&c, &ca);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let writable =
            common::query_strings(haproxy_port, "SELECT (NOT pg_is_in_recovery())::text").await;
        if writable.as_deref().is_ok_and(|v| v == ["true"]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "haproxy with check-ssl never routed to the primary: {writable:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = haproxy.kill();
    let _ = haproxy.wait();

    let (new_primary, took) = host_loss_failover(&mut c, &primary).await;
    eprintln!(
        "FIGURE host-loss failover with TLS and etcd auth: {new_primary} writable after {took:?}"
    );
    assert_ne!(new_primary, primary);
    let status = c.wait_converged(1, Duration::from_secs(60)).await;
    assert_eq!(status["primary"], new_primary.as_str());
    // Clients follow through the proxy, still verify-full.
    wait_psql_tls(&ca, proxy_port).await;

    // Spec pg_require_ssl: a client in clear is refused, while the keepers
    // (their own sessions over TLS) and TLS clients carry on.
    c.ctl_ok(&["spec", "set", "pg_require_ssl=true"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match common::connect(c.port_of(&new_primary)).await {
            Err(e) if format!("{e:?}").contains("no encryption") => break,
            other => assert!(
                Instant::now() < deadline,
                "a plaintext client is still let in: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = c.wait_converged(1, Duration::from_secs(60)).await;
    assert_eq!(status["primary"], new_primary.as_str());
    wait_psql_tls(&ca, proxy_port).await;
}

/// The same failover without TLS or auth, for the figure in the report.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_failover_without_tls_for_comparison() {
    let mut c = TestCluster::with_etcd_members(3).await;
    c.ctl_ok(&["init"]);
    c.spawn_sentinel("sentinel1");
    c.spawn_keepers(&["k1", "k2", "k3"]);
    let status = c.wait_converged(2, Duration::from_secs(120)).await;
    let primary = status["primary"].as_str().unwrap().to_owned();
    let (new_primary, took) = host_loss_failover(&mut c, &primary).await;
    eprintln!("FIGURE host-loss failover without TLS: {new_primary} writable after {took:?}");
    assert_ne!(new_primary, primary);
}
