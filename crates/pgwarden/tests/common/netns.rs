//! Network namespaces for the fault-injection suite: one namespace per host.
//!
//! Every host of a test cluster (etcd, each sentinel, each keeper with its
//! postgres, the proxy together with the test's own client) gets a network
//! namespace of its own with one address, `10.77.<net>.<n>/24` on an
//! interface named `eth0`. The other end of each veth pair is enslaved to a
//! bridge that lives in one more namespace, the hub. Nothing is attached to
//! the root namespace and no namespace has a default route, so no packet of
//! a test can leave the machine, and tests running at the same time each get
//! a separate, unconnected network (their namespace names differ: they carry
//! the test process's pid and a counter).
//!
//! Faults are iptables rules in the faulty host's namespace, in a chain of our
//! own (`PWFAULT`, jumped to from INPUT and OUTPUT), so a partition drops
//! packets in both directions from one side and healing is one flush. Rules
//! match the peer's address or the `eth0` interface, never `lo`, so a host
//! always reaches itself: the writability poller connects to each postgres
//! from inside that postgres' namespace, where no partition can hide it.
//!
//! The test process talks to a host by creating sockets inside its namespace:
//! [`Net::socket`] creates one on a short-lived thread that first entered the
//! namespace (a socket stays in the namespace it was created in, whichever
//! thread uses it later), and [`Net::block_on`] runs a whole tokio runtime
//! whose threads all live in one namespace (threads inherit the namespace of
//! the thread that spawns them), so that ordinary clients (etcd, postgres
//! through the proxy) just work.
//!
//! Teardown is a drop guard that kills whatever still runs in the namespaces
//! (only processes this test started can be there) and deletes them. A run
//! that crashed leaves namespaces named after a pid that no longer exists;
//! the first network created by a later test process removes them.

pub mod cluster;
pub mod scenarios;
pub mod watch;
pub mod workload;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Every namespace this suite creates starts with this.
pub const PREFIX: &str = "pwf-";
/// The iptables chain holding a host's fault rules.
const CHAIN: &str = "PWFAULT";

/// One host: a namespace and its address.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
}

/// A private network of hosts joined by a bridge; deleted on drop.
#[derive(Debug)]
pub struct Net {
    tag: String,
    hub: String,
    hosts: BTreeMap<String, Host>,
}

impl Net {
    /// Creates the hub and one namespace per host name (names are at most
    /// 15 characters: each becomes the bridge port's interface name).
    pub fn new(names: &[&str]) -> Net {
        static CLEANED: Once = Once::new();
        CLEANED.call_once(remove_stale);
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{PREFIX}{}-{n}", std::process::id());
        // The subnet only makes logs readable: the networks are disjoint anyway.
        let subnet = u8::try_from(n % 250).unwrap();
        let hub = format!("{tag}-hub");
        let mut net = Net {
            tag,
            hub: hub.clone(),
            hosts: BTreeMap::new(),
        };
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "set", "lo", "up"]);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        for (i, name) in names.iter().enumerate() {
            assert!(name.len() <= 15, "host name {name} too long");
            let ns = format!("{}-{name}", net.tag);
            let addr = Ipv4Addr::new(10, 77, subnet, u8::try_from(i + 2).unwrap());
            ip(&["netns", "add", &ns]);
            // Registered at once, so that a failure below still deletes it.
            net.hosts.insert(
                name.to_string(),
                Host {
                    name: name.to_string(),
                    ns: ns.clone(),
                    ip: addr,
                },
            );
            ip(&[
                "-n", &hub, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            ip(&["-n", &hub, "link", "set", name, "master", "br0"]);
            ip(&["-n", &hub, "link", "set", name, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            for args in [
                vec!["-N", CHAIN],
                vec!["-I", "INPUT", "-j", CHAIN],
                vec!["-I", "OUTPUT", "-j", CHAIN],
            ] {
                run_ok(
                    Command::new("ip")
                        .args(["netns", "exec", &ns, "iptables", "-w"])
                        .args(args),
                );
            }
        }
        net
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .get(name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    pub fn ip(&self, name: &str) -> Ipv4Addr {
        self.host(name).ip
    }

    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.values()
    }

    /// `program` run inside `host`'s namespace, as root.
    pub fn command(&self, host: &str, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host(host).ns, program]);
        cmd
    }

    /// `program` run inside `host`'s namespace as the OS user `user`.
    /// `ip netns exec` needs root, so the switch happens after it, in
    /// `setpriv`, which then execs the program: the pid of the child is the
    /// program's own pid, so signals reach it directly.
    pub fn command_as(&self, host: &str, user: &str, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host(host).ns, "setpriv"])
            .arg(format!("--reuid={user}"))
            .arg(format!("--regid={user}"))
            .args(["--init-groups", program]);
        cmd
    }

    /// Drops every packet between `host` and each of `peers`, both ways.
    pub async fn cut(&self, host: &str, peers: &[&str]) {
        for peer in peers {
            let peer_ip = self.ip(peer).to_string();
            self.iptables(host, &["-A", CHAIN, "-s", &peer_ip, "-j", "DROP"])
                .await;
            self.iptables(host, &["-A", CHAIN, "-d", &peer_ip, "-j", "DROP"])
                .await;
        }
    }

    /// Drops every packet in or out of `host`'s network interface: the host
    /// still reaches itself over loopback, nobody else.
    pub async fn cut_all(&self, host: &str) {
        self.iptables(host, &["-A", CHAIN, "-i", "eth0", "-j", "DROP"])
            .await;
        self.iptables(host, &["-A", CHAIN, "-o", "eth0", "-j", "DROP"])
            .await;
    }

    /// Removes every fault rule of `host`.
    pub async fn heal(&self, host: &str) {
        self.iptables(host, &["-F", CHAIN]).await;
    }

    pub async fn heal_all(&self) {
        let names: Vec<String> = self.hosts.keys().cloned().collect();
        for name in names {
            self.heal(&name).await;
        }
    }

    async fn iptables(&self, host: &str, args: &[&str]) {
        let out = tokio::process::Command::from(self.command(host, "iptables"))
            .arg("-w")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "iptables {args:?} in {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A new, unbound TCP socket inside `host`'s namespace.
    pub fn socket(&self, host: &str) -> std::io::Result<tokio::net::TcpSocket> {
        let ns = self.host(host).ns.clone();
        std::thread::spawn(move || {
            enter(&ns)?;
            tokio::net::TcpSocket::new_v4()
        })
        .join()
        .expect("socket thread panicked")
    }

    /// Runs `f` to completion on a two-worker tokio runtime whose threads all
    /// live in `host`'s namespace; a panic in `f` is resumed here.
    pub fn block_on<F>(&self, host: &str, f: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let ns = self.host(host).ns.clone();
        let thread = std::thread::spawn(move || {
            enter(&ns).unwrap();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(f)
        });
        match thread.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    fn namespaces(&self) -> Vec<String> {
        let mut all: Vec<String> = self.hosts.values().map(|h| h.ns.clone()).collect();
        all.push(self.hub.clone());
        all
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.namespaces() {
            delete_namespace(&ns);
        }
    }
}

/// Moves the calling thread into the namespace `ns`.
pub fn enter(ns: &str) -> std::io::Result<()> {
    let file = std::fs::File::open(format!("/run/netns/{ns}"))?;
    nix::sched::setns(file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

/// Kills what still runs in `ns` (processes a test started there) and
/// deletes the namespace.
fn delete_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "delete", ns])
        .stderr(Stdio::null())
        .status();
}

/// Removes namespaces left by a test process that no longer runs.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing namespace {name} left by a crashed run (pid {pid})");
            delete_namespace(name);
        }
    }
}

fn ip(args: &[&str]) {
    run_ok(Command::new("ip").args(args));
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
