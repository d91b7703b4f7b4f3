//! The dashboard in a real browser: a headless Chromium (through
//! chromedriver) opens `/ui` on a keeper of a 3-node cluster, sees the
//! topology and the lag chart, and, without a reload, sees the failover
//! that follows the primary's host loss, with its reason. Screenshots of
//! both states go to `target/test-artifacts/`; the console must stay free
//! of errors throughout.

#![allow(clippy::unwrap_used)]

mod common;
mod webdriver;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use webdriver::Browser;

/// Generous bounds for a shared, noisy machine; the figures are printed.
const PAGE_READY: Duration = Duration::from_secs(30);
const FAILOVER: Duration = Duration::from_secs(60);

/// Records every error the page could raise, before its own scripts run.
const ERROR_HOOK: &str = r##"
window.__errors = [];
window.addEventListener("error", (e) => window.__errors.push("error: " + e.message + " at " + e.filename + ":" + e.lineno));
window.addEventListener("unhandledrejection", (e) => window.__errors.push("unhandled rejection: " + e.reason));
document.addEventListener("securitypolicyviolation", (e) => window.__errors.push("CSP violation: " + e.violatedDirective + " " + e.blockedURI));
const original = console.error.bind(console);
console.error = (...args) => { window.__errors.push("console.error: " + args.join(" ")); original(...args); };
"##;

fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.canonicalize().unwrap()
}

/// The page's errors: the hook's, and chromedriver's console log at level
/// SEVERE, except the one absence the page expects (`/alerts` answering 404
/// before the alerts endpoint exists, which Chromium logs as a failed
/// resource).
async fn page_errors(b: &Browser) -> Vec<String> {
    let mut errors: Vec<String> = b
        .execute("return window.__errors || ['the error hook is missing'];")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect();
    for entry in b.console_log().await {
        let message = entry["message"].as_str().unwrap_or_default();
        let expected_absence = message.contains("/alerts") && message.contains("404");
        if entry["level"] == "SEVERE" && !expected_absence {
            errors.push(format!("console: {message}"));
        }
    }
    errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_cluster_and_a_failover_live() {
    let (mut c, primary, standbys) = TestCluster::three_nodes().await;
    // Watch from a standby: it outlives the primary's host.
    let observer = standbys[0].clone();
    let api = c.keepers[&observer].api_port;

    // The page and its data, over plain HTTP first.
    let page = http(api, "GET", "/ui", &[]).await.unwrap();
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("script-src 'self'"));
    let data = http(api, "GET", "/ui/data", &[]).await.unwrap().json();
    assert_eq!(data["served_by"], observer.as_str());
    assert_eq!(data["status"]["primary"], primary.as_str());
    for s in &standbys {
        assert_eq!(data["upstreams"][s], primary.as_str(), "{data}");
    }
    let bad = http(api, "GET", "/ui/data?since=soon", &[]).await.unwrap();
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("invalid since"), "{}", bad.body);
    let alerts_exist = http(api, "GET", "/alerts", &[]).await.unwrap().status != 404;

    let url = format!("http://127.0.0.1:{api}/ui");
    let b = Browser::open(c.path(), 1280, 1700, ERROR_HOOK, &url).await;

    // 1. The primary and both standbys, each with an arrow to the primary.
    let seen = b
        .wait_for(
            "the primary and two standbys in the topology",
            PAGE_READY,
            &format!(
                r##"const p = document.getElementById("primary-uid").textContent;
                const nodes = [...document.querySelectorAll("#topology g.node")].map((g) => g.dataset.uid + ":" + g.dataset.role);
                const arrows = [...document.querySelectorAll("#topology line.edge")].map((l) => l.dataset.from + ">" + l.dataset.to);
                return p === {primary:?} && nodes.length === 3 ? {{ primary: p, nodes, arrows }} : null;"##
            ),
        )
        .await;
    eprintln!("topology: {seen}");
    let nodes: Vec<&str> = seen["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let arrows: Vec<&str> = seen["arrows"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        nodes.contains(&format!("{primary}:primary").as_str()),
        "{nodes:?}"
    );
    for s in &standbys {
        assert!(
            nodes.contains(&format!("{s}:standby").as_str()),
            "{nodes:?}"
        );
        assert!(
            arrows.contains(&format!("{s}>{primary}").as_str()),
            "{arrows:?}"
        );
    }

    // Synchronous standbys are marked, and a paused cluster says so.
    c.ctl_ok(&["spec", "set", "sync_mode=on"]);
    let marked = b
        .wait_for(
            "a synchronous standby marked in the topology",
            PAGE_READY,
            r##"const g = [...document.querySelectorAll("#topology g.node")].filter((g) => g.querySelector(".badge"));
            const edges = document.querySelectorAll("#topology line.edge.sync").length;
            return g.length >= 1 && edges === g.length ? g.map((x) => x.dataset.uid) : null;"##,
        )
        .await;
    eprintln!("synchronous standbys marked: {marked}");
    for uid in marked.as_array().unwrap() {
        assert!(standbys.iter().any(|s| s == uid), "{marked}");
    }
    c.ctl_ok(&["pause"]);
    b.wait_for(
        "the paused banner",
        PAGE_READY,
        r##"return [...document.querySelectorAll("#banners .banner")].some((x) => x.textContent.startsWith("Paused"));"##,
    )
    .await;
    c.ctl_ok(&["resume"]);
    b.wait_for(
        "the paused banner to go",
        PAGE_READY,
        r##"return ![...document.querySelectorAll("#banners .banner")].some((x) => x.textContent.startsWith("Paused"));"##,
    )
    .await;

    // 2. The lag chart draws a line of several points per standby (under
    // some writes, so that the lag has a chance to show).
    let writer = connect(c.port_of(&primary)).await.unwrap();
    writer
        .batch_execute("CREATE TABLE ui_load (id int, pad text)")
        .await
        .unwrap();
    for _ in 0..20 {
        writer
            .batch_execute(
                "INSERT INTO ui_load SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g",
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(writer);
    let lines = b
        .wait_for(
            "the lag chart to draw points for both standbys",
            PAGE_READY,
            r##"const paths = [...document.querySelectorAll("#lag-chart path.series")];
            const points = Object.fromEntries(paths.map((p) => [p.dataset.uid, Number(p.dataset.points)]));
            return paths.length >= 2 && paths.every((p) => Number(p.dataset.points) >= 5) ? points : null;"##,
        )
        .await;
    eprintln!("lag chart points per standby: {lines}");
    for s in &standbys {
        assert!(lines[s].as_u64().unwrap() >= 5, "{lines}");
    }
    let panel_hidden = b
        .execute(r##"return document.getElementById("alerts-panel").hidden;"##)
        .await;
    assert_eq!(
        panel_hidden,
        json!(!alerts_exist),
        "the alerts panel shows exactly when /alerts exists"
    );

    let before = artifacts().join("ui-before.png");
    b.screenshot(&before).await;
    eprintln!("screenshot before the failover: {}", before.display());
    b.execute("window.__sameDocument = 'before the failover'; return true;")
        .await;

    // 3. The primary's host dies; the page follows without a reload.
    let t0 = Instant::now();
    c.kill_host(&primary);
    let after = b
        .wait_for(
            "a new primary and its promotion in the decisions",
            FAILOVER,
            &format!(
                r##"const p = document.getElementById("primary-uid").textContent;
                if (p === {primary:?} || p === "none" || p === "-") return null;
                const promoted = [...document.querySelectorAll("#decisions li")].find((li) =>
                    li.querySelector(".change") && li.querySelector(".change").textContent.endsWith("→ " + p));
                if (!promoted) return null;
                return {{ primary: p, change: promoted.querySelector(".change").textContent,
                          reason: promoted.querySelector(".reason").textContent,
                          generation: Number(promoted.dataset.generation), seen_ms: Date.now() }};"##
            ),
        )
        .await;
    let took = t0.elapsed();
    let new_primary = after["primary"].as_str().unwrap().to_string();
    assert!(standbys.contains(&new_primary), "{after}");
    assert!(!after["reason"].as_str().unwrap().is_empty(), "{after}");
    assert_eq!(
        b.execute("return window.__sameDocument || null;").await,
        "before the failover",
        "the page reloaded"
    );
    // How long after the sentinel's decision the page showed it (wall
    // clocks of one machine).
    let status = c.status();
    let decided_ms = status["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["generation"] == after["generation"])
        .and_then(|h| h["at_ms"].as_u64())
        .unwrap();
    let seen_ms = after["seen_ms"].as_u64().unwrap();
    eprintln!(
        "the page showed {new_primary} as primary {took:?} after the host loss, {} ms after the decision (generation {}: {} — {})",
        seen_ms.saturating_sub(decided_ms),
        after["generation"],
        after["change"].as_str().unwrap(),
        after["reason"].as_str().unwrap()
    );
    // The screenshot shows the settled state: the new primary writable,
    // the old one's report gone with its lease.
    b.wait_for(
        "the new primary writable and the old primary gone",
        FAILOVER,
        &format!(
            r##"const row = (uid) => document.querySelector("#members tr[data-uid='" + uid + "']");
            const state = (uid) => row(uid) && row(uid).children[2].textContent;
            return state({new_primary:?}) === "primary" && state({primary:?}) === "gone";"##
        ),
    )
    .await;
    let after_png = artifacts().join("ui-after.png");
    b.screenshot(&after_png).await;
    eprintln!("screenshot after the failover: {}", after_png.display());

    // The same page at a phone's width (no sideways scrolling) and in the
    // dark theme.
    b.command(
        "POST",
        "/window/rect",
        Some(json!({"width": 390, "height": 844})),
    )
    .await;
    b.command(
        "POST",
        "/goog/cdp/execute",
        Some(json!({"cmd": "Emulation.setEmulatedMedia", "params": {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}})),
    )
    .await;
    let fits = b
        .wait_for(
            "the page to fit a phone's width",
            Duration::from_secs(10),
            r##"const chart = document.getElementById("lag-chart").viewBox.baseVal.width;
            return window.innerWidth <= 500 && chart <= 500 && document.documentElement.scrollWidth <= window.innerWidth + 1
                ? [window.innerWidth, document.documentElement.scrollWidth, chart] : null;"##,
        )
        .await;
    eprintln!("phone width: viewport, page, lag chart widths {fits}");
    let dark = b
        .execute("return getComputedStyle(document.body).backgroundColor;")
        .await;
    assert_eq!(dark, "rgb(17, 20, 24)", "the dark theme's background");
    let phone = artifacts().join("ui-phone-dark.png");
    b.screenshot(&phone).await;
    eprintln!("screenshot at phone width, dark theme: {}", phone.display());

    let errors = page_errors(&b).await;
    assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
}
