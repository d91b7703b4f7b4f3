//! End-to-end alerts: a webhook receiver in the test, a command receiver,
//! a real Alertmanager (Debian's prometheus-alertmanager), a standby
//! killed and restarted with the leader sentinel killed in between, a
//! lag threshold under an oscillating load, a failover event; and the
//! generated rules file checked by promtool.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{chown, PermissionsExt};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(90);
const ALERT_WAIT: Duration = Duration::from_secs(60);

/// A webhook receiver: answers every POST with 200 and keeps the bodies.
#[derive(Clone, Default)]
struct Webhook {
    got: Arc<Mutex<Vec<Value>>>,
}

impl Webhook {
    fn start() -> (Webhook, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hook = Webhook::default();
        let got = hook.got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let l = line.trim().to_ascii_lowercase();
                    if let Some(v) = l.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if l.is_empty() {
                        break;
                    }
                }
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).is_ok() {
                    if let Ok(v) = serde_json::from_slice(&body) {
                        got.lock().unwrap().push(v);
                    }
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        (hook, port)
    }

    /// The notifications of alert `name` (and `member`, if given).
    fn of(&self, name: &str, member: Option<&str>) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|n| n["name"] == name && member.is_none_or(|m| n["member"] == m))
            .cloned()
            .collect()
    }

    fn states(&self, name: &str, member: Option<&str>) -> Vec<String> {
        self.of(name, member)
            .iter()
            .map(|n| n["state"].as_str().unwrap().to_string())
            .collect()
    }
}

/// A real Alertmanager on a free port.
struct Alertmanager {
    child: Child,
    port: u16,
}

impl Alertmanager {
    fn start(dir: &std::path::Path) -> Alertmanager {
        let config = dir.join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n",
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("alertmanager.log")).unwrap();
        let child = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("prometheus-alertmanager (Debian package prometheus-alertmanager; scripts/setup.sh installs it)");
        Alertmanager { child, port }
    }

    /// The alerts Alertmanager holds (active ones; resolved are not listed).
    async fn alerts(&self) -> Option<Vec<Value>> {
        let r = http(self.port, "GET", "/api/v2/alerts", &[]).await.ok()?;
        (r.status == 200).then(|| r.json().as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn leader_of(c: &TestCluster, sentinels: &[&str]) -> Option<String> {
    // The last "elected leader" line among the sentinels' logs.
    sentinels
        .iter()
        .find(|s| c.log(s).contains("elected leader"))
        .map(|s| s.to_string())
}

fn api_port(c: &TestCluster, uid: &str) -> u16 {
    c.keepers[uid].api_port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_gone_failover_and_lag_are_delivered_once_to_every_receiver() {
    let (hook, hook_port) = Webhook::start();
    let c0 = TestCluster::new().await;
    let am = Alertmanager::start(c0.path());
    // The command receiver runs as the sentinel's user (postgres).
    let cmd_dir = c0.path().join("cmd");
    std::fs::create_dir(&cmd_dir).unwrap();
    chown(&cmd_dir, Some(c0.run_as.0), Some(c0.run_as.1)).unwrap();
    let script = cmd_dir.join("page-me");
    let out_file = cmd_dir.join("received");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n{{ env | grep '^PGWARDEN_ALERT_' | sort; cat; echo ---; }} >> {}\n",
            out_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = c0.path().join("spec.toml");
    std::fs::write(
        &spec,
        format!(
            r#"
[pg_parameters]
recovery_min_apply_delay = "2s"

[[alert_receivers]]
name = "hook"
webhook = "http://127.0.0.1:{hook_port}/hook"

[[alert_receivers]]
name = "am"
alertmanager = "http://127.0.0.1:{am_port}"

[[alert_receivers]]
name = "pager"
command = "{script}"

[[alerts]]
name = "member_gone"
for = "2s"

[[alerts]]
name = "replication_lag"
enabled = false

[[alerts]]
name = "lag_band"
metric = "replication_lag_bytes"
above = 307200
clear_below = 65536
receivers = ["hook"]

[[alerts]]
name = "lag_no_band"
metric = "replication_lag_bytes"
above = 307200
receivers = ["hook"]
"#,
            am_port = am.port,
            script = script.display()
        ),
    )
    .unwrap();
    let out = c0.ctl(&["init", "--spec", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut c = c0;
    c.spawn_sentinel("s1");
    wait_for("s1 to lead", CONVERGE, || leader_of(&c, &["s1"])).await;
    c.spawn_sentinel("s2");
    c.spawn_keepers(&["k1", "k2", "k3"]);
    let status = c.wait_converged(2, CONVERGE).await;
    let primary = status["primary"].as_str().unwrap().to_string();
    let standbys: Vec<String> = ["k1", "k2", "k3"]
        .iter()
        .filter(|u| **u != primary)
        .map(|u| u.to_string())
        .collect();
    let victim = standbys[0].clone();

    // A standby dies: one member_gone firing, to every receiver. (On a
    // loaded machine start-up itself may have had transitions: count from
    // here.)
    wait_for("no member_gone firing", ALERT_WAIT, || {
        let v: Value = serde_json::from_str(&c.ctl_ok(&["alerts", "--json"])).ok()?;
        let firing = v["firing"].as_array()?;
        (!firing.iter().any(|n| n["name"] == "member_gone")).then_some(())
    })
    .await;
    let seen = hook.of("member_gone", Some(&victim)).len();
    c.kill_host(&victim);
    wait_for("member_gone firing at the webhook", ALERT_WAIT, || {
        (hook.of("member_gone", Some(&victim)).len() > seen).then_some(())
    })
    .await;
    let fired = hook.of("member_gone", Some(&victim))[seen].clone();
    assert_eq!(fired["state"], "firing");
    assert_eq!(fired["cluster"], "e2e");
    assert_eq!(fired["severity"], "warning");
    assert_eq!(fired["value"], 0.0);
    assert_eq!(fired["threshold"], 1.0);
    assert!(fired["id"].as_u64().unwrap() > 0);
    assert!(fired["since"].as_str().unwrap().ends_with('Z'));
    assert!(fired["summary"].as_str().unwrap().contains(&victim));
    let in_am = poll("member_gone in Alertmanager", ALERT_WAIT, || async {
        am.alerts().await?.into_iter().find(|a| {
            a["labels"]["alertname"] == "member_gone" && a["labels"]["member"] == victim.as_str()
        })
    })
    .await;
    assert_eq!(in_am["status"]["state"], "active", "{in_am}");
    assert_eq!(in_am["labels"]["cluster"], "e2e");
    assert_eq!(
        in_am["annotations"]["event_id"],
        fired["id"].as_u64().unwrap().to_string()
    );
    wait_for("the command receiver's run", ALERT_WAIT, || {
        let text = std::fs::read_to_string(&out_file).ok()?;
        text.contains("PGWARDEN_ALERT_NAME=member_gone")
            .then_some(text)
    })
    .await;
    let text = std::fs::read_to_string(&out_file).unwrap();
    for want in [
        format!("PGWARDEN_ALERT_ID={}", fired["id"]),
        "PGWARDEN_ALERT_STATE=firing".into(),
        "PGWARDEN_ALERT_SEVERITY=warning".into(),
        "PGWARDEN_ALERT_CLUSTER=e2e".into(),
        format!("PGWARDEN_ALERT_MEMBER={victim}"),
        "PGWARDEN_ALERT_VALUE=0".into(),
        "PGWARDEN_ALERT_THRESHOLD=1".into(),
        "PGWARDEN_ALERT_SINCE=".into(),
        "PGWARDEN_ALERT_SUMMARY=e2e: member_gone on".into(),
        format!("\"id\":{}", fired["id"]),
    ] {
        assert!(
            text.contains(&want),
            "{want:?} missing from the command's input:\n{text}"
        );
    }

    // The operator views, while it fires.
    let view: Value = serde_json::from_str(&c.ctl_ok(&["alerts", "--json"])).unwrap();
    let firing = view["firing"].as_array().unwrap();
    assert!(
        firing.iter().any(|n| n["name"] == "member_gone"
            && n["member"] == victim.as_str()
            && n["id"] == fired["id"]),
        "{view:#}"
    );
    let table = c.ctl_ok(&["alerts"]);
    assert!(table.contains("member_gone"), "{table}");
    let status_text = c.ctl_ok(&["status"]);
    assert!(
        status_text.contains("alerts: 1 firing (member_gone on"),
        "{status_text}"
    );
    let api = http(api_port(&c, &primary), "GET", "/alerts", &[])
        .await
        .unwrap();
    assert_eq!(api.status, 200);
    assert_eq!(api.json()["firing"], view["firing"]);
    let metrics = http(api_port(&c, &primary), "GET", "/metrics", &[])
        .await
        .unwrap();
    let series = parse_prometheus(&metrics.body);
    assert_eq!(
        series.get(&format!(
            "pgwarden_alert_firing{{cluster=\"e2e\",alert=\"member_gone\",member=\"{victim}\"}}"
        )),
        Some(&1.0),
        "{}",
        metrics.body
    );

    // Every receiver has it: then the leader sentinel dies.
    wait_for("the outbox to drain", ALERT_WAIT, || {
        let v: Value = serde_json::from_str(&c.ctl_ok(&["alerts", "--json"])).ok()?;
        (v["undelivered"] == 0).then_some(())
    })
    .await;
    c.stop("s1", Signal::SIGKILL);
    c.start_keeper(&victim);
    wait_for("member_gone resolved at the webhook", ALERT_WAIT, || {
        (hook.states("member_gone", Some(&victim)).len() >= seen + 2).then_some(())
    })
    .await;
    assert!(c.log("s2").contains("elected leader"), "s2 took over");
    poll(
        "member_gone resolved in Alertmanager",
        ALERT_WAIT,
        || async {
            let active = am.alerts().await?;
            (!active
                .iter()
                .any(|a| a["labels"]["alertname"] == "member_gone"))
            .then_some(())
        },
    )
    .await;
    wait_for("the command receiver's second run", ALERT_WAIT, || {
        let text = std::fs::read_to_string(&out_file).ok()?;
        text.contains("PGWARDEN_ALERT_STATE=resolved").then_some(())
    })
    .await;

    // A load that keeps the lag going up and down around 1MB (the standby
    // applies WAL 2s late): the alert with a band fires once and holds.
    c.wait_converged(2, CONVERGE).await;
    let pport = c.port_of(&primary);
    let client = connect(pport).await.unwrap();
    client
        .batch_execute("CREATE TABLE load (v text)")
        .await
        .unwrap();
    // About 250kB a second in many small transactions, each replayed 2s
    // late (the delay holds replay at every commit record): the lag swings
    // between about one and two bursts, around 300kB, and never drains.
    // Kept light: the machine is shared, and a stalled etcd fences the
    // primary.
    client
        .batch_execute("SET synchronous_commit = off")
        .await
        .unwrap();
    let burst = "BEGIN; INSERT INTO load VALUES (repeat('x', 1000)); COMMIT; ".repeat(200);
    for _ in 0..20 {
        client
            .batch_execute(&burst)
            .await
            .expect("the load runs on the primary");
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    // The standby that was not restarted (its positions are the steadier).
    let steady = standbys[1].as_str();
    let band = hook.states("lag_band", Some(steady));
    let no_band = hook.states("lag_no_band", Some(steady));
    eprintln!(
        "under the oscillating load, on {steady}: lag_band {band:?}, lag_no_band {no_band:?}"
    );
    assert_eq!(band, vec!["firing"], "the band keeps it from flapping");
    wait_for(
        "lag_band resolved once the load stopped",
        ALERT_WAIT,
        || (hook.states("lag_band", Some(steady)).len() == 2).then_some(()),
    )
    .await;

    // A failover: one event with the old and the new primary.
    let failovers = hook.of("failover", None).len();
    c.kill_host(&primary);
    wait_for("a failover event", CONVERGE, || {
        (hook.of("failover", None).len() > failovers).then_some(())
    })
    .await;
    let s = c.wait_converged(1, CONVERGE).await;
    let new_primary = s["primary"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = hook.of("failover", None)[failovers..].to_vec();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["old_primary"], primary.as_str());
    assert_eq!(events[0]["new_primary"], new_primary.as_str());
    assert!(
        events[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("failover: "),
        "{}",
        events[0]
    );

    // A switchover is one event too, named as such.
    let to = standbys
        .iter()
        .find(|u| **u != new_primary)
        .unwrap()
        .as_str();
    c.wait_converged(1, CONVERGE).await;
    c.ctl_ok(&["switchover", "--to", to, "--yes"]);
    wait_for("a switchover event", CONVERGE, || {
        (hook.of("failover", None).len() > failovers + 1).then_some(())
    })
    .await;
    let events = hook.of("failover", None)[failovers..].to_vec();
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(events[1]["old_primary"], new_primary.as_str());
    assert_eq!(events[1]["new_primary"], to);
    assert!(
        events[1]["reason"]
            .as_str()
            .unwrap()
            .starts_with("switchover: "),
        "{}",
        events[1]
    );

    // No notification reached the webhook twice.
    let ids: Vec<u64> = hook
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        ids.len(),
        unique.len(),
        "a notification was delivered twice: {ids:?}"
    );
    assert_eq!(
        hook.states("member_gone", Some(&victim))[seen..],
        ["firing", "resolved"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_rules_and_mistakes_are_refused() {
    let c = TestCluster::new().await;
    let spec = c.path().join("spec.toml");
    std::fs::write(
        &spec,
        "[[alerts]]\nname = 'standby_lag'\nmetric = 'replication_lag_bytes'\nabove = 16777216\nclear_below = 8388608\nfor = '30s'\n",
    )
    .unwrap();
    for (bad, says) in [
        ("[[alerts]]\nname = 'x'\nmetric = 'nope'\nabove = 1\n", "spec field alerts.x.metric: unknown metric \"nope\""),
        ("[[alerts]]\nname = 'x'\nmetric = 'replication_lag_bytes'\nabove = 1\nclear_below = 2\n", "spec field alerts.x.clear_below: clear_below = 2 is above above = 1"),
        ("[[alerts]]\nname = 'x'\nmetric = 'replication_lag_bytes'\nabove = 1\nreceivers = ['ops']\n", "spec field alerts.x.receivers: unknown receiver \"ops\""),
    ] {
        let file = c.path().join("bad.toml");
        std::fs::write(&file, bad).unwrap();
        let out = c.ctl(&["init", "--spec", file.to_str().unwrap()]);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains(says), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    let out = c.ctl(&["init", "--spec", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rules = c.ctl_ok(&["alerts", "prometheus-rules"]);
    let file = c.path().join("rules.yml");
    std::fs::write(&file, &rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool (Debian package prometheus; scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "promtool refused the rules: {}{}\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    eprintln!("promtool check rules: {}", said.trim());
    assert!(said.contains("SUCCESS"), "{said}");
    assert!(rules.contains("- alert: standby_lag"), "{rules}");
    assert!(rules.contains("- alert: member_gone"), "{rules}");
    let none: Value = serde_json::from_str(&c.ctl_ok(&["alerts", "--json"])).unwrap();
    assert_eq!(none["firing"], serde_json::json!([]));
    assert_eq!(none["recent"], serde_json::json!([]));
}
