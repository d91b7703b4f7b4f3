//! `pgwarden demo`: a local three-node cluster on loopback for a newcomer.
//!
//! It starts what a real deployment runs, as separate processes of this same
//! binary (etcd, a sentinel, three keepers, a proxy), in a directory it owns,
//! prints how to connect (through the proxy) and a status that refreshes, and
//! on Ctrl-C stops everything it started. Run as root, it runs the keepers (and so postgres) as an
//! unprivileged OS user, because postgres refuses to run as root.

use std::fs::File;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use pgwarden_core::{keys, Spec};
use pgwarden_store::etcd_server::{free_port, EtcdCluster, EtcdServer};
use pgwarden_store::{Store, StoreOptions};
use tokio_util::sync::CancellationToken;

use crate::view;

/// Superuser password of the demo cluster (printed for the user: it is a demo).
const DEMO_SU_PASSWORD: &str = "pgwarden-demo";
/// Replication password of the demo cluster.
const DEMO_REPL_PASSWORD: &str = "pgwarden-demo-repl";
const KEEPERS: [&str; 3] = ["keeper1", "keeper2", "keeper3"];

/// `pgwarden demo` flags.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory for etcd, the data directories and the logs (created; removed at exit unless --keep).
    #[arg(long, default_value = "/tmp/pgwarden-demo")]
    pub dir: PathBuf,
    /// Keep the directory at exit.
    #[arg(long)]
    pub keep: bool,
    /// OS user to run postgres as when started as root.
    #[arg(long, default_value = "postgres")]
    pub os_user: String,
    /// Stop by itself after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
    /// etcd members to run: 1 (tuned for fast elections), or 3, 5 or 7 at
    /// etcd's default timing, as production runs it.
    #[arg(long, default_value_t = 1, value_parser = parse_etcd_members)]
    pub etcd_members: usize,
}

fn parse_etcd_members(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n @ (1 | 3 | 5 | 7)) => Ok(n),
        _ => Err(format!(
            "{value:?} is not an etcd cluster size: use 1, 3, 5 or 7 (an odd number, so that a quorum survives a member's loss)"
        )),
    }
}

/// The demo's etcd: one tuned member, or a cluster at default timing.
enum DemoEtcd {
    One(EtcdServer),
    Cluster(EtcdCluster),
}

impl DemoEtcd {
    async fn start(dir: &Path, members: usize) -> anyhow::Result<DemoEtcd> {
        Ok(if members == 1 {
            DemoEtcd::One(EtcdServer::start(dir, free_port(), free_port()).await?)
        } else {
            DemoEtcd::Cluster(EtcdCluster::start(dir, members).await?)
        })
    }

    /// The client endpoints, comma-joined.
    fn endpoints(&self) -> String {
        match self {
            DemoEtcd::One(server) => server.endpoint(),
            DemoEtcd::Cluster(cluster) => cluster.endpoints(),
        }
    }

    fn stop(&mut self) {
        match self {
            DemoEtcd::One(server) => server.stop(),
            DemoEtcd::Cluster(cluster) => cluster.stop(),
        }
    }
}

struct Children(Vec<(String, Child)>);

impl Children {
    fn stop_all(&mut self) {
        for (_, child) in &self.0 {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        for (name, child) in &mut self.0 {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if std::time::Instant::now() > deadline => {
                        eprintln!("{name} did not stop in time: killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
        self.0.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Runs the demo until Ctrl-C (or `--duration`).
pub async fn run(args: DemoArgs, cancel: CancellationToken) -> anyhow::Result<()> {
    let run_as = if nix::unistd::geteuid().is_root() {
        let user = nix::unistd::User::from_name(&args.os_user)
            .context("look up the OS user")?
            .with_context(|| format!("OS user {:?} does not exist: create it (`useradd --system {}`) or pass --os-user", args.os_user, args.os_user))?;
        Some((user.uid.as_raw(), user.gid.as_raw()))
    } else {
        None
    };
    if args.dir.exists()
        && std::fs::read_dir(&args.dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "demo directory {} is not empty: remove it or pass another --dir",
            args.dir.display()
        );
    }
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    std::fs::set_permissions(&args.dir, std::fs::Permissions::from_mode(0o755))?;
    let result = run_in(&args, run_as, &cancel).await;
    if !args.keep {
        let _ = std::fs::remove_dir_all(&args.dir);
    } else {
        println!("kept {}", args.dir.display());
    }
    result
}

async fn run_in(
    args: &DemoArgs,
    run_as: Option<(u32, u32)>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let dir = &args.dir;
    let etcd_dir = dir.join("etcd");
    std::fs::create_dir_all(&etcd_dir)?;
    let mut etcd = DemoEtcd::start(&etcd_dir, args.etcd_members).await?;
    let endpoint = etcd.endpoints();
    let cluster = "demo";
    let endpoints: Vec<String> = endpoint.split(',').map(String::from).collect();
    let store = Store::new(&endpoints, cluster, StoreOptions::default())?;
    store
        .create(keys::SPEC, Spec::default().to_json(), None)
        .await
        .context("initialise the demo cluster")?;

    let su_file = secret_file(dir, "su-password", DEMO_SU_PASSWORD, run_as)?;
    let repl_file = secret_file(dir, "repl-password", DEMO_REPL_PASSWORD, run_as)?;
    let exe = runnable_exe(dir, run_as)?;
    let common = |cmd: &mut Command| {
        cmd.env("PGWARDEN_CLUSTER_NAME", cluster)
            .env("PGWARDEN_STORE_ENDPOINTS", &endpoint);
    };
    let mut children = Children(Vec::new());
    let mut sentinel = Command::new(&exe);
    sentinel.arg("sentinel").arg("--id").arg("sentinel1");
    common(&mut sentinel);
    children.0.push((
        "sentinel".into(),
        spawn_logged(sentinel, &dir.join("sentinel.log"), run_as)?,
    ));
    for uid in KEEPERS {
        let (pg_port, api_port) = (free_port(), free_port());
        let mut k = Command::new(&exe);
        k.arg("keeper")
            .args(["--uid", uid, "--pg-listen-address", "127.0.0.1"])
            .args([
                "--pg-port",
                &pg_port.to_string(),
                "--api-listen",
                &format!("127.0.0.1:{api_port}"),
            ])
            .arg("--data-dir")
            .arg(dir.join(uid).join("data"))
            .arg("--pg-su-password-file")
            .arg(&su_file)
            .args(["--pg-repl-username", "replicator"])
            .arg("--pg-repl-password-file")
            .arg(&repl_file);
        common(&mut k);
        let home = dir.join(uid);
        std::fs::create_dir_all(&home)?;
        if let Some((uid, gid)) = run_as {
            chown(&home, Some(uid), Some(gid))?;
        }
        children.0.push((
            uid.to_string(),
            spawn_logged(k, &dir.join(format!("{uid}.log")), run_as)?,
        ));
    }
    let proxy_port = free_port();
    let mut proxy = Command::new(&exe);
    proxy
        .args(["proxy", "--id", "proxy1", "--listen-address", "127.0.0.1"])
        .args(["--port", &proxy_port.to_string()]);
    common(&mut proxy);
    children.0.push((
        "proxy".into(),
        spawn_logged(proxy, &dir.join("proxy.log"), run_as)?,
    ));
    let banner = format!(
        "pgwarden demo: cluster {cluster:?}, etcd at {endpoint}, logs in {}\n\
         connect through the proxy, which follows the primary (whichever node it is):\n  \
         psql \"host=127.0.0.1 port={proxy_port} user=postgres password={DEMO_SU_PASSWORD} dbname=postgres\"\n\
         inspect: pgwarden ctl status --cluster-name {cluster} --store-endpoints {endpoint}\n\
         Ctrl-C stops everything.\n",
        dir.display()
    );
    println!("{banner}");
    let stop_at = args
        .duration
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        let table = match view::load(&store).await {
            Ok(snap) => crate::read_model::table(cluster, &snap),
            Err(e) => format!("cannot read the cluster: {e}\n"),
        };
        if interactive {
            print!("\x1b[2J\x1b[H{banner}\n{table}");
        } else {
            println!("{table}");
        }
        for (name, child) in &mut children.0 {
            if let Ok(Some(status)) = child.try_wait() {
                println!(
                    "{name} exited ({status}); see {}",
                    dir.join(format!("{name}.log")).display()
                );
            }
        }
        let sleep = tokio::time::sleep(Duration::from_secs(2));
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = sleep => {}
        }
        if stop_at.is_some_and(|t| tokio::time::Instant::now() >= t) {
            break;
        }
    }
    println!("stopping the demo cluster...");
    tokio::task::spawn_blocking(move || children.stop_all()).await?;
    etcd.stop();
    println!("stopped");
    Ok(())
}

/// The path of this binary that the keepers' user can execute: when running
/// as root from a checkout under /root, a copy inside the demo directory.
fn runnable_exe(dir: &Path, run_as: Option<(u32, u32)>) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("find the pgwarden binary")?;
    if run_as.is_none() {
        return Ok(exe);
    }
    let copy = dir.join("pgwarden");
    std::fs::copy(&exe, &copy)
        .with_context(|| format!("copy {} to {}", exe.display(), copy.display()))?;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))?;
    Ok(copy)
}

/// Writes a password file only its user can read.
fn secret_file(
    dir: &Path,
    name: &str,
    secret: &str,
    run_as: Option<(u32, u32)>,
) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n"))
        .with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    if let Some((uid, gid)) = run_as {
        chown(&path, Some(uid), Some(gid))?;
    }
    Ok(path)
}

fn spawn_logged(mut cmd: Command, log: &Path, run_as: Option<(u32, u32)>) -> anyhow::Result<Child> {
    let file = File::create(log).with_context(|| format!("create {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    if let Some((uid, gid)) = run_as {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(gid);
    }
    cmd.spawn()
        .with_context(|| format!("start {:?}", cmd.get_program()))
}
