//! What the release ships, checked against the binary: the systemd units
//! pass `systemd-analyze verify`, every man page they point to exists, the
//! completions come from the real CLI, and the sentinel and proxy run from a
//! TOML `--config` alone, tell systemd they are ready (Type=notify) and stop
//! cleanly on SIGTERM.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const UNITS: [&str; 3] = [
    "pgwarden-keeper@.service",
    "pgwarden-sentinel.service",
    "pgwarden-proxy.service",
];

fn unit_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/systemd")
}

/// `systemd-analyze verify --root` on a root holding the host's own units
/// (for sysinit.target and friends), ours, and the binary under test at
/// /usr/bin/pgwarden, where the units' ExecStart expects it. The man pages
/// of `Documentation=` are checked by the test below instead (`--man=no`):
/// they are only installed by the .deb.
fn verify(units: &[(&str, String)]) -> Result<(), String> {
    let root = tempfile::tempdir().unwrap();
    let system = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .find(|d| Path::new(d).join("sysinit.target").exists())
        .expect("no systemd unit directory with sysinit.target");
    let copied = root.path().join("usr/lib/systemd");
    std::fs::create_dir_all(&copied).unwrap();
    let status = Command::new("cp")
        .args(["-r", system])
        .arg(&copied)
        .status()
        .unwrap();
    assert!(status.success(), "copy {system}");
    let etc = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(&etc).unwrap();
    for (name, text) in units {
        std::fs::write(etc.join(name), text).unwrap();
    }
    let usr_bin = root.path().join("usr/bin");
    std::fs::create_dir_all(&usr_bin).unwrap();
    std::fs::copy(bin(), usr_bin.join("pgwarden")).unwrap();
    let instances: Vec<String> = units
        .iter()
        .map(|(name, _)| name.replace("@.", "@node1."))
        .collect();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.path().display()))
        .args(&instances)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("exit {}: {said}", out.status))
    }
}

fn systemd_analyze_present() -> bool {
    let present = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        eprintln!("SKIPPED: systemd-analyze is not installed (./scripts/setup.sh installs it with the systemd package)");
    }
    present
}

#[test]
fn the_three_units_pass_systemd_analyze_verify() {
    if !systemd_analyze_present() {
        return;
    }
    let units: Vec<(&str, String)> = UNITS
        .iter()
        .map(|u| (*u, std::fs::read_to_string(unit_dir().join(u)).unwrap()))
        .collect();
    verify(&units).unwrap();

    // The check can fail: a misspelt key and type are reported.
    let broken = units[1]
        .1
        .replace("Type=notify", "Type=notfy")
        .replace("Restart=", "Restrt=");
    let err = verify(&[(units[1].0, broken)]).unwrap_err();
    assert!(err.contains("Restrt"), "{err}");
}

#[test]
fn units_are_notify_restart_on_failure_as_postgres_and_hardened() {
    for unit in UNITS {
        let text = std::fs::read_to_string(unit_dir().join(unit)).unwrap();
        let has = |line: &str| text.lines().any(|l| l.trim() == line);
        for line in [
            "Type=notify",
            "Restart=on-failure",
            "User=postgres",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
        ] {
            assert!(has(line), "{unit} lacks {line}");
        }
    }
    let keeper = std::fs::read_to_string(unit_dir().join(UNITS[0])).unwrap();
    assert!(keeper.contains("ReadWritePaths=/var/lib/pgwarden"));
    assert!(keeper.contains("--config /etc/pgwarden/keeper-%i.toml"));
}

#[test]
fn man_pages_exist_for_every_unit_and_completions_know_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for unit in UNITS {
        let text = std::fs::read_to_string(unit_dir().join(unit)).unwrap();
        for page in text
            .lines()
            .filter_map(|l| l.strip_prefix("Documentation=man:"))
        {
            let file = page.replace("(1)", ".1");
            assert!(dir.path().join(&file).is_file(), "{unit}: no {file}");
        }
    }
    let proxy = std::fs::read_to_string(dir.path().join("pgwarden-proxy.1")).unwrap();
    assert!(proxy.contains("config"), "pgwarden-proxy.1 lacks --config");
    assert!(
        !dir.path().join("pgwarden-fence-watchdog.1").exists(),
        "the internal fence-watchdog got a page"
    );

    let bash = Command::new(bin())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    let bash = String::from_utf8_lossy(&bash.stdout);
    assert!(bash.contains("--pg-repl-password-file") && bash.contains("switchover"));
    let zsh = Command::new(bin())
        .args(["completions", "zsh"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&zsh.stdout).starts_with("#compdef pgwarden"));
    let bad = Command::new(bin())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

/// A role started the way its unit starts it: only `--config`, and a
/// NOTIFY_SOCKET to report readiness on.
struct UnderSystemd {
    child: Child,
    socket: UnixDatagram,
    _dir: tempfile::TempDir,
}

impl UnderSystemd {
    fn start(role: &str, config: &str) -> UnderSystemd {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(format!("{role}.toml"));
        std::fs::write(&file, config).unwrap();
        let socket_path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let child = Command::new(bin())
            .args([role, "--config"])
            .arg(&file)
            .env_remove("PGWARDEN_CLUSTER_NAME")
            .env_remove("PGWARDEN_STORE_ENDPOINTS")
            .env("NOTIFY_SOCKET", &socket_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        UnderSystemd {
            child,
            socket,
            _dir: dir,
        }
    }

    fn message(&mut self) -> String {
        let mut buf = [0u8; 256];
        match self.socket.recv(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) => {
                let _ = self.child.kill();
                let mut log = String::new();
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut log)
                    .unwrap();
                panic!("no sd_notify message ({e}); the role said:\n{log}");
            }
        }
    }

    /// SIGTERM, then the exit status and what the role logged.
    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "no exit within 15 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(self.message(), "STOPPING=1");
        let mut log = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        (status, log)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_and_proxy_run_from_their_config_file_report_ready_and_stop_on_sigterm() {
    let cluster = TestCluster::initialised().await;
    let store = format!(
        "cluster_name = \"{}\"\nstore_endpoints = [\"{}\"]\n",
        cluster.name,
        cluster.etcd.endpoint()
    );

    let mut sentinel = UnderSystemd::start("sentinel", &format!("{store}id = \"unit-sentinel\"\n"));
    assert_eq!(sentinel.message(), "READY=1");

    let port = free_port();
    let mut proxy = UnderSystemd::start(
        "proxy",
        &format!("{store}listen_address = \"localhost\"\nport = {port}\nid = \"unit-proxy\"\n"),
    );
    assert_eq!(proxy.message(), "READY=1");
    // Ready means listening: a client connects at once.
    std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();

    for (role, running) in [("proxy", proxy), ("sentinel", sentinel)] {
        let (status, log) = running.terminate();
        assert!(
            status.success(),
            "{role} exited {status} on SIGTERM:\n{log}"
        );
        assert!(log.contains("shutting down"), "{role}:\n{log}");
    }
}

#[test]
fn a_bad_config_file_is_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    std::fs::write(&file, "listen_address = \"0.0.0.0\"\nprot = 5432\n").unwrap();
    let out = Command::new(bin())
        .args(["proxy", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("unknown key \"prot\""), "{err}");
}
