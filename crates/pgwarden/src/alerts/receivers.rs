//! Sending one notification to one receiver: a webhook (POST JSON), an
//! Alertmanager (its v2 API) or a command (environment and stdin).
//!
//! Each send either succeeds (2xx, exit 0) or fails with a one-line reason;
//! the delivery loop retries failures with backoff.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use pgwarden_core::alerts::{fmt_value, rfc3339, AlertStatus, Notification, ReceiverKind};
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// Bound on one HTTP delivery.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one run of a command receiver.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long Alertmanager keeps an event (`failover`) before it ends.
pub const EVENT_DURATION_MS: u64 = 10 * 60 * 1000;

/// Sends `n` to the receiver.
pub async fn send(kind: &ReceiverKind<'_>, n: &Notification) -> Result<(), String> {
    match kind {
        ReceiverKind::Webhook(url) => {
            let body = serde_json::to_vec(n).map_err(|e| e.to_string())?;
            post(url, body).await
        }
        ReceiverKind::Alertmanager(base) => {
            let url = format!("{}/api/v2/alerts", base.trim_end_matches('/'));
            let body = serde_json::to_vec(&[alertmanager_alert(n)]).map_err(|e| e.to_string())?;
            post(&url, body).await
        }
        ReceiverKind::Command(program) => run_command(program, n).await,
    }
}

/// One alert in Alertmanager's v2 format. Alertmanager identifies an
/// alert by its labels, so a resolve (same labels, `endsAt` set) ends the
/// firing one, and a repeated post of the same alert is merged, not
/// doubled.
pub fn alertmanager_alert(n: &Notification) -> serde_json::Value {
    let mut labels = json!({
        "alertname": n.name,
        "cluster": n.cluster,
        "severity": n.severity.as_str(),
    });
    if let Some(m) = &n.member {
        labels["member"] = json!(m);
    }
    let mut annotations = json!({
        "summary": n.summary,
        "event_id": n.id.to_string(),
        "since": n.since,
    });
    if let Some(v) = n.value {
        annotations["value"] = json!(fmt_value(v));
    }
    if let Some(t) = n.threshold {
        annotations["threshold"] = json!(fmt_value(t));
    }
    for (k, v) in [
        ("old_primary", &n.old_primary),
        ("new_primary", &n.new_primary),
        ("reason", &n.reason),
    ] {
        if let Some(v) = v {
            annotations[k] = json!(v);
        }
    }
    let mut alert = json!({
        "labels": labels,
        "annotations": annotations,
        "startsAt": n.since,
    });
    match (n.state, n.threshold) {
        (AlertStatus::Resolved, _) => alert["endsAt"] = json!(n.since),
        // An event has no resolve of its own.
        (AlertStatus::Firing, None) => {
            alert["endsAt"] = json!(rfc3339(n.since_ms + EVENT_DURATION_MS))
        }
        (AlertStatus::Firing, Some(_)) => {}
    }
    alert
}

async fn post(url: &str, body: Vec<u8>) -> Result<(), String> {
    tokio::time::timeout(HTTP_TIMEOUT, post_inner(url, body))
        .await
        .map_err(|_| format!("POST {url}: no answer within {}s", HTTP_TIMEOUT.as_secs()))?
}

async fn post_inner(url: &str, body: Vec<u8>) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url} is not an http:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect to {authority}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP to {authority}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("pgwarden/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("build the request to {url}: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = resp.status();
    let text = resp
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    if status.is_success() {
        Ok(())
    } else {
        let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        Err(format!(
            "POST {url}: HTTP {status}: {}",
            text.chars().take(200).collect::<String>()
        ))
    }
}

/// The environment a command receiver gets (docs/alerts.md lists it).
pub fn command_env(n: &Notification) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("PGWARDEN_ALERT_ID", n.id.to_string()),
        ("PGWARDEN_ALERT_NAME", n.name.clone()),
        ("PGWARDEN_ALERT_STATE", n.state.as_str().to_string()),
        ("PGWARDEN_ALERT_SEVERITY", n.severity.as_str().to_string()),
        ("PGWARDEN_ALERT_CLUSTER", n.cluster.clone()),
        (
            "PGWARDEN_ALERT_MEMBER",
            n.member.clone().unwrap_or_default(),
        ),
        (
            "PGWARDEN_ALERT_VALUE",
            n.value.map(fmt_value).unwrap_or_default(),
        ),
        (
            "PGWARDEN_ALERT_THRESHOLD",
            n.threshold.map(fmt_value).unwrap_or_default(),
        ),
        ("PGWARDEN_ALERT_SINCE", n.since.clone()),
        ("PGWARDEN_ALERT_SUMMARY", n.summary.clone()),
    ];
    for (k, v) in [
        ("PGWARDEN_ALERT_OLD_PRIMARY", &n.old_primary),
        ("PGWARDEN_ALERT_NEW_PRIMARY", &n.new_primary),
        ("PGWARDEN_ALERT_REASON", &n.reason),
    ] {
        env.push((k, v.clone().unwrap_or_default()));
    }
    env
}

async fn run_command(program: &str, n: &Notification) -> Result<(), String> {
    let body = serde_json::to_vec(n).map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(program)
        .envs(command_env(n))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("run {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A program that does not read stdin is fine.
        let _ = stdin.write_all(&body).await;
        let _ = stdin.write_all(b"\n").await;
    }
    match tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output()).await {
        Err(_) => Err(format!(
            "{program} did not exit within {}s",
            COMMAND_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => Err(format!("wait for {program}: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let line = err.lines().last().unwrap_or("").trim().to_string();
            Err(format!("{program} failed ({}): {line}", out.status))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_core::alerts::Severity;

    fn notification(state: AlertStatus) -> Notification {
        Notification {
            id: 7,
            name: "member_gone".into(),
            state,
            severity: Severity::Warning,
            cluster: "c".into(),
            member: Some("k2".into()),
            value: Some(0.0),
            threshold: Some(1.0),
            since: rfc3339(1_800_000_000_000),
            since_ms: 1_800_000_000_000,
            summary: "c: member_gone on k2 firing".into(),
            old_primary: None,
            new_primary: None,
            reason: None,
        }
    }

    #[test]
    fn alertmanager_gets_labels_annotations_and_ends_on_resolve() {
        let firing = alertmanager_alert(&notification(AlertStatus::Firing));
        assert_eq!(
            firing["labels"],
            json!({"alertname": "member_gone", "cluster": "c", "severity": "warning", "member": "k2"})
        );
        assert_eq!(firing["annotations"]["event_id"], "7");
        assert_eq!(firing["annotations"]["value"], "0");
        assert_eq!(firing["startsAt"], "2027-01-15T08:00:00.000Z");
        assert!(firing.get("endsAt").is_none(), "{firing}");
        let resolved = alertmanager_alert(&notification(AlertStatus::Resolved));
        assert_eq!(resolved["endsAt"], resolved["startsAt"]);
        let mut event = notification(AlertStatus::Firing);
        event.threshold = None;
        let event = alertmanager_alert(&event);
        assert_eq!(event["endsAt"], "2027-01-15T08:10:00.000Z");
    }

    #[test]
    fn the_command_environment_has_every_field() {
        let env = command_env(&notification(AlertStatus::Resolved));
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PGWARDEN_ALERT_ID"), Some("7"));
        assert_eq!(get("PGWARDEN_ALERT_STATE"), Some("resolved"));
        assert_eq!(get("PGWARDEN_ALERT_MEMBER"), Some("k2"));
        assert_eq!(get("PGWARDEN_ALERT_THRESHOLD"), Some("1"));
        assert_eq!(get("PGWARDEN_ALERT_NEW_PRIMARY"), Some(""));
        assert_eq!(env.len(), 13);
    }
}
