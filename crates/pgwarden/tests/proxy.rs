//! End-to-end: `pgwarden proxy` in front of a real cluster.
//!
//! Clients on the proxy's port land on the primary and on its read-only port
//! on a standby; the proxy acknowledges the generation it applied; sessions
//! are cut as soon as the primary lease disappears; a restarted proxy routes
//! again; and without etcd the proxy stops routing after `proxy_ttl`.
//!
//! Failover is paused in these tests (`ctl pause`): they are about the proxy
//! following the store, not about who gets promoted.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgwarden_core::keys;
use pgwarden_store::{Store, StoreOptions};
use tokio::io::AsyncReadExt;

const CONVERGE: Duration = Duration::from_secs(90);
/// The default spec's `proxy_ttl`.
const PROXY_TTL: Duration = Duration::from_secs(3);

/// Where a session through `port` landed: (in recovery, server port).
async fn landing(port: u16) -> Result<(bool, u16), tokio_postgres::Error> {
    let client = connect(port).await?;
    let row = client
        .query_one("SELECT pg_is_in_recovery(), inet_server_port()", &[])
        .await?;
    let server_port: i32 = row.get(1);
    Ok((row.get(0), u16::try_from(server_port).unwrap()))
}

/// Waits until sessions through `port` land on the primary at `primary_port`.
async fn wait_routed(port: u16, primary_port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = landing(port).await;
        if matches!(got, Ok((false, p)) if p == primary_port) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "proxy port {port} does not reach the primary on {primary_port}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether a connection to `port` is closed by the proxy within a second,
/// without a byte. A connection relayed to postgres would stay open: postgres
/// waits for the client's startup packet.
async fn closed_promptly(port: u16) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut buf = [0u8; 8];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn store(c: &TestCluster) -> Store {
    Store::new(&[c.etcd.endpoint()], &c.name, StoreOptions::default()).unwrap()
}

/// Waits until the primary lease key is gone; returns when it was seen gone.
async fn wait_primary_key_gone(store: &Store, timeout: Duration) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        if store.get(keys::PRIMARY).await.unwrap().is_none() {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "the primary key did not disappear"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `SELECT 1` on `client` until it fails; returns when it failed.
async fn wait_cut(client: &tokio_postgres::Client, since: Instant, within: Duration) -> Instant {
    loop {
        if client.simple_query("SELECT 1").await.is_err() {
            return Instant::now();
        }
        assert!(
            since.elapsed() < within,
            "the session through the proxy was not cut within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pause(c: &TestCluster) {
    let out = c.ctl(&["pause"]);
    assert!(out.status.success(), "ctl pause: {}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_routes_to_the_primary_and_standbys_and_cuts_sessions_when_the_lease_goes() {
    let mut c = TestCluster::initialised().await;
    pause(&c);
    c.spawn_sentinel("sentinel1");
    c.spawn_keepers(&["k1", "k2", "k3"]);
    let status = c.wait_converged(2, CONVERGE).await;
    let primary = status["primary"].as_str().unwrap().to_string();
    let primary_port = c.port_of(&primary);
    let mut standby_ports: Vec<u16> = ["k1", "k2", "k3"]
        .iter()
        .filter(|u| **u != primary)
        .map(|u| c.port_of(u))
        .collect();
    standby_ports.sort();

    let (port, ro_port) = (free_port(), free_port());
    c.spawn_proxy("proxy1", port, ro_port);
    wait_routed(port, primary_port, Duration::from_secs(30)).await;

    // The read-only port alternates over both standbys.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (in_recovery, p) = landing(ro_port).await.unwrap();
        assert!(in_recovery, "read-only port landed on a primary");
        seen.push(p);
    }
    seen.sort();
    assert_eq!(seen, standby_ports);

    // ctl status shows the proxy with the generation it applied.
    let generation = c.status()["generation"].as_u64().unwrap();
    wait_for(
        "the proxy's acknowledgement",
        Duration::from_secs(10),
        || {
            let proxies = c.status()["proxies"].clone();
            (proxies == serde_json::json!([{"id": "proxy1", "generation": generation}]))
                .then_some(())
        },
    )
    .await;

    // A session opened before the primary's keeper stops is cut, and new
    // connections are closed at once while there is no primary.
    let etcd = store(&c);
    let held = connect(port).await.unwrap();
    held.simple_query("SELECT 1").await.unwrap();
    assert!(c.stop(&primary, Signal::SIGTERM).success());
    let gone = wait_primary_key_gone(&etcd, Duration::from_secs(10)).await;
    wait_cut(&held, gone, Duration::from_secs(3)).await;
    let since = Instant::now();
    while !closed_promptly(port).await {
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "new connections are not closed while there is no primary"
        );
    }
    assert!(
        c.log("proxy1").contains("does not hold the primary lease"),
        "the proxy logs why it closes connections"
    );

    c.start_keeper(&primary);
    c.wait_converged(2, CONVERGE).await;
    wait_routed(port, primary_port, Duration::from_secs(30)).await;

    // Killed and restarted, the proxy routes again.
    c.stop("proxy1", Signal::SIGKILL);
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "nothing listens once the proxy is dead"
    );
    c.spawn_proxy("proxy1", port, ro_port);
    wait_routed(port, primary_port, Duration::from_secs(30)).await;
    let generation = c.status()["generation"].as_u64().unwrap();
    wait_for(
        "the restarted proxy's acknowledgement",
        Duration::from_secs(10),
        || {
            let proxies = c.status()["proxies"].clone();
            (proxies == serde_json::json!([{"id": "proxy1", "generation": generation}]))
                .then_some(())
        },
    )
    .await;

    // The primary's keeper frozen: its lease expires and the proxy cuts the
    // session; the keeper's fencing watchdog has killed postgres by then.
    let held = connect(port).await.unwrap();
    held.simple_query("SELECT 1").await.unwrap();
    c.signal(&primary, Signal::SIGSTOP);
    let gone = wait_primary_key_gone(&etcd, Duration::from_secs(15)).await;
    let cut = wait_cut(&held, gone, Duration::from_secs(3)).await;
    let alive = match connect(primary_port).await {
        Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    };
    c.signal(&primary, Signal::SIGCONT);
    assert!(
        !alive,
        "the frozen keeper's postgres still answered after its lease expired"
    );
    eprintln!(
        "session cut {:?} after the primary key disappeared",
        cut.duration_since(gone)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_stops_routing_when_etcd_is_gone_for_proxy_ttl() {
    let mut c = TestCluster::initialised().await;
    pause(&c);
    // A primary lease much longer than proxy_ttl, so that the keeper does
    // not fence postgres while etcd is away before the proxy acts: what
    // closes connections here is the proxy.
    let out = c.ctl(&["spec", "set", "primary_lease_ttl=20s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    c.spawn_sentinel("sentinel1");
    c.spawn_keepers(&["k1"]);
    c.wait_converged(0, CONVERGE).await;
    let primary_port = c.port_of("k1");
    let (port, ro_port) = (free_port(), free_port());
    c.spawn_proxy("proxy1", port, ro_port);
    wait_routed(port, primary_port, Duration::from_secs(30)).await;

    // etcd frozen (requests hang rather than fail): the proxy keeps serving
    // for a short blip, then stops.
    let etcd_pid = Pid::from_raw(c.etcd.pid() as i32);
    let held = connect(port).await.unwrap();
    kill(etcd_pid, Signal::SIGSTOP).unwrap();
    let frozen = Instant::now();
    assert_eq!(
        landing(port).await.unwrap(),
        (false, primary_port),
        "a short blip is served"
    );
    while !closed_promptly(port).await {
        assert!(
            frozen.elapsed() < PROXY_TTL + Duration::from_secs(3),
            "still routing {:?} after etcd froze",
            frozen.elapsed()
        );
    }
    let stopped = frozen.elapsed();
    assert!(
        stopped >= Duration::from_secs(1),
        "stopped routing after only {stopped:?}"
    );
    assert!(
        held.simple_query("SELECT 1").await.is_err(),
        "open sessions are cut"
    );
    wait_for("the proxy to log why", Duration::from_secs(5), || {
        c.log("proxy1").contains("stopped routing").then_some(())
    })
    .await;
    eprintln!("routing stopped {stopped:?} after etcd froze");

    // etcd back: the proxy registers again and routes.
    kill(etcd_pid, Signal::SIGCONT).unwrap();
    wait_routed(port, primary_port, Duration::from_secs(30)).await;

    // etcd stopped for good (connections refused).
    let held = connect(port).await.unwrap();
    c.etcd.stop();
    let down = Instant::now();
    while !closed_promptly(port).await {
        assert!(
            down.elapsed() < PROXY_TTL + Duration::from_secs(3),
            "still routing {:?} after etcd stopped",
            down.elapsed()
        );
    }
    assert!(
        held.simple_query("SELECT 1").await.is_err(),
        "open sessions are cut"
    );
    eprintln!("routing stopped {:?} after etcd stopped", down.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_refuses_bad_start_up_and_closes_clients_while_there_is_no_primary() {
    let mut c = TestCluster::new().await;
    let (port, ro_port) = (free_port(), free_port());

    // Not initialised: a clear error at start-up.
    let out = run_to_exit(c.proxy_command("proxy1", port, ro_port));
    assert!(!out.status.success());
    let line = stderr(&out).lines().last().unwrap_or_default().to_string();
    assert!(
        line.starts_with("error: ")
            && line.contains("not initialised")
            && line.contains("pgwarden ctl init"),
        "{line}"
    );

    // A port in use: one line naming the address and the fix.
    let out = c.ctl(&["init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let out = run_to_exit(c.proxy_command("proxy1", port, taken_port));
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim_end(),
        format!("error: proxy address 127.0.0.1:{taken_port} is already in use by another process: stop it or pass another --read-only-port")
    );

    // No keepers, so no primary: clients are closed at once, with the reason logged.
    c.spawn_proxy("proxy1", port, ro_port);
    wait_for("the proxy to listen", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .await;
    let started = Instant::now();
    assert!(closed_promptly(port).await);
    assert!(closed_promptly(ro_port).await);
    assert!(started.elapsed() < Duration::from_secs(2));
    wait_for("the reason in the log", Duration::from_secs(10), || {
        c.log("proxy1")
            .contains("closing a new client connection")
            .then_some(())
    })
    .await;
    assert!(
        c.stop("proxy1", Signal::SIGTERM).success(),
        "clean exit on SIGTERM"
    );
}

/// Runs a command that is expected to exit, killing it after 30 s.
fn run_to_exit(mut cmd: std::process::Command) -> std::process::Output {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = done_tx.send(());
    watchdog.join().unwrap();
    out
}

/// A client through the proxy (user postgres).
async fn via_proxy(port: u16) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .password(SU_PASSWORD)
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_failover_through_the_proxy() {
    let (mut c, primary, _standbys) = TestCluster::three_nodes().await;
    let (port, ro_port) = (free_port(), free_port());
    c.spawn_proxy("proxy1", port, ro_port);
    wait_routed(port, c.port_of(&primary), Duration::from_secs(30)).await;

    // A query cancel (a CancelRequest on a new connection) passes through.
    let client = via_proxy(port).await;
    let token = client.cancel_token();
    let started = Instant::now();
    let sleeping = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = sleeping.await.unwrap().unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the cancel did not reach postgres"
    );

    // A writer through the proxy goes on across a host-loss failover: the
    // session on the old primary is cut, a new one lands on the new primary.
    let w = via_proxy(port).await;
    w.batch_execute("CREATE TABLE pw (id int PRIMARY KEY)")
        .await
        .unwrap();
    w.batch_execute("INSERT INTO pw VALUES (1)").await.unwrap();
    // Let the standbys catch up, then lose the host this session is on (the
    // primary now: on a loaded machine a failover may already have happened).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let row = w.query_one("SELECT inet_server_port()", &[]).await.unwrap();
    let on_port = u16::try_from(row.get::<_, i32>(0)).unwrap();
    let primary = c
        .keepers
        .values()
        .find(|k| k.pg_port == on_port)
        .unwrap()
        .uid
        .clone();
    let t0 = Instant::now();
    let pm = c.postmaster_pid(&primary);
    c.kill_host(&primary);
    // On a loaded machine a killed process can take a moment to be
    // scheduled and die: the property is about a dead host.
    let dead = || {
        std::fs::read_to_string(format!("/proc/{pm}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dead() {
        assert!(Instant::now() < deadline, "postmaster {pm} did not die");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = w.batch_execute("INSERT INTO pw VALUES (2)").await;
    assert!(r.is_err(), "the old session survived");
    let mut next = 2;
    let window = loop {
        if let Ok(Ok(cl)) = tokio::time::timeout(Duration::from_secs(2), async {
            let (client, conn) = tokio_postgres::Config::new()
                .host("127.0.0.1")
                .port(port)
                .user("postgres")
                .password(SU_PASSWORD)
                .dbname("postgres")
                .connect(tokio_postgres::NoTls)
                .await?;
            tokio::spawn(conn);
            Ok::<_, tokio_postgres::Error>(client)
        })
        .await
        {
            if cl
                .execute("INSERT INTO pw VALUES ($1)", &[&next])
                .await
                .is_ok()
            {
                break t0.elapsed();
            }
        }
        next += 1;
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no write through the proxy after the failover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("writes through the proxy resumed {window:?} after the primary host died");
    let (read_only, landed) = landing(port).await.unwrap();
    assert!(!read_only);
    assert_ne!(landed, c.port_of(&primary));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_proxy_holds_the_promotion_until_its_lease_expires() {
    let (mut c, primary, _standbys) = TestCluster::three_nodes().await;
    // A proxy lease that outlives the primary's, so that the wait shows.
    let out = c.ctl(&["spec", "set", "proxy_ttl=10s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (port, ro_port) = (free_port(), free_port());
    c.spawn_proxy("proxy1", port, ro_port);
    wait_routed(port, c.port_of(&primary), Duration::from_secs(30)).await;
    let etcd = store(&c);
    // The proxy freezes: it can neither cut its sessions nor acknowledge.
    c.signal("proxy1", Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let frozen_at = Instant::now();
    c.kill_host(&primary);
    // Wait for the promotion, watching the proxy's key.
    let mut proxy_key_gone = None;
    let promoted = loop {
        if proxy_key_gone.is_none() && etcd.get("proxies/proxy1").await.unwrap().is_none() {
            proxy_key_gone = Some(Instant::now());
        }
        let s = c.status();
        if let Some(p) = s["primary"].as_str() {
            if p != primary && TestCluster::member(&s, p).is_some_and(|m| m["state"] == "primary") {
                break Instant::now();
            }
        }
        assert!(
            frozen_at.elapsed() < Duration::from_secs(60),
            "no promotion"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let gone = proxy_key_gone.expect("promoted while the frozen proxy's lease was still alive");
    assert!(gone <= promoted);
    assert!(
        gone.duration_since(frozen_at) > Duration::from_secs(5),
        "the proxy's 10 s lease went early: the test shows nothing"
    );
    let history = c.status()["history"].clone();
    let waited = history
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["reason"].as_str().is_some_and(|r| r.contains("deposed")));
    assert!(
        waited,
        "the failover should have deposed first and waited: {history}"
    );
    eprintln!(
        "frozen proxy: lease gone {:?} after the freeze, promotion {:?} after",
        gone.duration_since(frozen_at),
        promoted.duration_since(frozen_at)
    );
    c.signal("proxy1", Signal::SIGCONT);
}

/// Local ports of the sockets process `pid` holds connected to `port` on
/// loopback: the proxy's connections to a postgres, read from `/proc`.
fn connections_to(pid: u32, port: u16) -> Vec<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port_of = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
            // Fields: sl, local, remote, state, ..., inode (the tenth).
            if f.len() > 9 && port_of(f[2]) == Some(port) && inodes.contains(f[9]) {
                ports.extend(port_of(f[1]));
            }
        }
    }
    ports
}

/// How many client backends of the postgres at `port` come from `client_ports`.
async fn backends_from(port: u16, client_ports: &[u16]) -> i64 {
    let probe = connect(port).await.unwrap();
    let ports: Vec<i32> = client_ports.iter().map(|p| i32::from(*p)).collect();
    probe
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
             AND pid <> pg_backend_pid() AND client_port = ANY($1)",
            &[&ports],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_never_reach_postgres_and_are_dropped_after_the_login_timeout() {
    const SILENT: usize = 200;
    const LOGIN_TIMEOUT: Duration = Duration::from_secs(3);
    let mut c = TestCluster::initialised().await;
    pause(&c);
    c.spawn_sentinel("sentinel1");
    c.spawn_keepers(&["k1"]);
    c.wait_converged(0, CONVERGE).await;
    let primary_port = c.port_of("k1");
    let (port, ro_port) = (free_port(), free_port());
    c.spawn_proxy_with("proxy1", port, ro_port, &["--client-login-timeout", "3s"]);
    wait_routed(port, primary_port, Duration::from_secs(30)).await;
    let proxy = c.pid("proxy1");
    wait_for(
        "the probe sessions to close",
        Duration::from_secs(5),
        || connections_to(proxy, primary_port).is_empty().then_some(()),
    )
    .await;

    let connected = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..SILENT {
        silent.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    // Well inside the login timeout: all held open, none relayed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let relayed = connections_to(proxy, primary_port);
    assert_eq!(
        relayed.len(),
        0,
        "{} of {SILENT} silent clients got a postgres connection",
        relayed.len()
    );
    assert_eq!(backends_from(primary_port, &relayed).await, 0);
    let mut buf = [0u8; 1];
    for s in &mut silent[..10] {
        assert!(
            tokio::time::timeout(Duration::from_millis(20), s.read(&mut buf))
                .await
                .is_err(),
            "a silent client was closed before the login timeout"
        );
    }

    // A client that speaks is served meanwhile, and reaches postgres.
    assert_eq!(landing(port).await.unwrap(), (false, primary_port));
    // Its relay closes its backend socket a moment after the client left:
    // wait for that, so that the count below is the SSL client's alone.
    wait_for(
        "the served session's backend connection to close",
        Duration::from_secs(5),
        || connections_to(proxy, primary_port).is_empty().then_some(()),
    )
    .await;
    // An SSLRequest is relayed: postgres itself answers 'S' or 'N'.
    let mut ssl = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut ssl, &[0, 0, 0, 8, 4, 210, 22, 47])
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(5), ssl.read_exact(&mut answer))
        .await
        .expect("postgres answers the SSLRequest")
        .unwrap();
    assert!(matches!(&answer, b"S" | b"N"), "{answer:?}");
    assert_eq!(connections_to(proxy, primary_port).len(), 1);
    drop(ssl);

    // Garbage gets a postgres error the client can show, and a log line.
    let mut garbage = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut garbage, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut answer))
        .await
        .expect("the garbage is answered and closed")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.first() == Some(&b'E') && text.contains("SFATAL") && text.contains("C08P01"),
        "{text:?}"
    );
    assert!(
        text.contains("invalid length of startup packet"),
        "{text:?}"
    );
    wait_for("the refusal in the log", Duration::from_secs(5), || {
        c.log("proxy1")
            .contains("refused a client's first packet, without contacting postgres")
            .then_some(())
    })
    .await;

    // The silent ones are dropped once the login timeout has passed.
    for s in &mut silent {
        let left = (connected + LOGIN_TIMEOUT + Duration::from_secs(3))
            .saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!("a silent client got {n} bytes"),
            Err(_) => panic!("a silent client is still open after the login timeout"),
        }
    }
    let dropped = connected.elapsed();
    assert!(dropped >= LOGIN_TIMEOUT, "dropped after {dropped:?}");
    assert!(connections_to(proxy, primary_port).is_empty());
    assert!(c.log("proxy1").contains("sent no first packet within 3s"));
    eprintln!(
        "{SILENT} silent clients: 0 postgres connections, all dropped {dropped:?} after connecting"
    );
}
