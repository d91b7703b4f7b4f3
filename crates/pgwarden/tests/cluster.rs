//! End-to-end: three keepers and a sentinel bring up one primary and two
//! streaming standbys, and keepers restarted with SIGTERM take their roles
//! back without re-cloning.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

const CONVERGE: Duration = Duration::from_secs(90);

/// Reads rows on `port` until `want` rows are visible or the deadline passes.
async fn wait_rows(port: u16, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(rows) = query_strings(port, "SELECT v FROM e2e ORDER BY id").await {
            if rows.len() == want {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "port {port} did not show {want} rows in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_keepers_give_one_primary_and_two_streaming_standbys() {
    let mut c = TestCluster::initialised().await;
    c.spawn_sentinel("sentinel1");
    c.spawn_keepers(&["k1", "k2", "k3"]);
    let status = c.wait_converged(2, CONVERGE).await;

    // The contract's JSON fields.
    for field in [
        "cluster",
        "generation",
        "primary",
        "paused",
        "members",
        "proxies",
    ] {
        assert!(
            status.get(field).is_some(),
            "ctl status json lacks {field}: {status}"
        );
    }
    assert_eq!(status["cluster"], "e2e");
    assert_eq!(status["paused"], false);
    assert!(status["generation"].as_u64().unwrap() >= 2);
    for m in status["members"].as_array().unwrap() {
        for field in [
            "uid",
            "role",
            "healthy",
            "timeline",
            "lsn",
            "lag_bytes",
            "api_url",
        ] {
            assert!(m.get(field).is_some(), "member lacks {field}: {m}");
        }
        assert_eq!(m["timeline"], 1);
    }
    let primary = status["primary"].as_str().unwrap().to_string();
    let standbys: Vec<String> = ["k1", "k2", "k3"]
        .iter()
        .filter(|u| **u != primary)
        .map(|u| u.to_string())
        .collect();
    let pport = c.port_of(&primary);

    // Both standbys stream, each through its own slot.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let streaming = query_strings(
            pport,
            "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' ORDER BY 1",
        )
        .await
        .unwrap();
        if streaming == standbys {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pg_stat_replication shows {streaming:?}, want {standbys:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let slots = query_strings(
        pport,
        "SELECT slot_name::text FROM pg_replication_slots WHERE active ORDER BY 1",
    )
    .await
    .unwrap();
    assert_eq!(
        slots,
        standbys
            .iter()
            .map(|s| format!("pgwarden_{s}"))
            .collect::<Vec<_>>()
    );

    // Rows written on the primary are read on both standbys.
    let p = connect(pport).await.unwrap();
    p.batch_execute("CREATE TABLE e2e (id serial PRIMARY KEY, v text); INSERT INTO e2e (v) VALUES ('one'), ('two');")
        .await
        .unwrap();
    for s in &standbys {
        wait_rows(c.port_of(s), 2).await;
    }
    // Standbys refuse writes.
    for s in &standbys {
        let err = connect(c.port_of(s))
            .await
            .unwrap()
            .batch_execute("INSERT INTO e2e (v) VALUES ('no')")
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
            "{err}"
        );
    }
    // Data checksums are on (pg_rewind will need them).
    assert_eq!(
        query_strings(pport, "SELECT current_setting('data_checksums')")
            .await
            .unwrap(),
        vec!["on"]
    );

    // A second init is refused and changes nothing.
    let spec_before = c.ctl(&["spec", "show"]).stdout;
    let out = c.ctl(&["init"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(c.ctl(&["spec", "show"]).stdout, spec_before);
    assert_eq!(c.status()["generation"], status["generation"]);

    // A standby keeper stopped with SIGTERM comes back streaming, without re-cloning.
    let s = standbys[0].clone();
    let marker = c.keepers[&s].data_dir.join("pgwarden-e2e-marker");
    std::fs::write(&marker, "not re-cloned").unwrap();
    assert!(
        c.stop(&s, Signal::SIGTERM).success(),
        "keeper should exit 0 on SIGTERM"
    );
    assert!(
        connect(c.port_of(&s)).await.is_err(),
        "the keeper's postgres stops with it"
    );
    p.batch_execute("INSERT INTO e2e (v) VALUES ('three')")
        .await
        .unwrap();
    c.start_keeper(&s);
    c.wait_converged(2, CONVERGE).await;
    wait_rows(c.port_of(&s), 3).await;
    assert!(marker.exists(), "standby data directory was replaced");
    assert_eq!(
        c.log(&s).matches("cloning from").count(),
        1,
        "the standby cloned again"
    );

    // The primary's keeper stopped: its lease goes with it, a standby is
    // promoted, and the old primary comes back as a standby through pg_rewind.
    c.stop(&primary, Signal::SIGTERM);
    let promoted = wait_for("a new primary", CONVERGE, || {
        let s = c.status();
        let p = s["primary"].as_str()?.to_string();
        let m = TestCluster::member(&s, &p)?;
        (p != primary && m["state"] == "primary").then_some(p)
    })
    .await;
    let np = connect(c.port_of(&promoted)).await.unwrap();
    np.batch_execute("INSERT INTO e2e (v) VALUES ('four')")
        .await
        .unwrap();
    c.start_keeper(&primary);
    let after = c.wait_converged(2, CONVERGE).await;
    assert_eq!(after["primary"], promoted.as_str());
    assert_eq!(
        c.log(&primary).matches("initdb").count(),
        1,
        "the old primary ran initdb again"
    );
    assert!(
        c.log(&primary).contains("pg_rewind"),
        "the old primary must rejoin through pg_rewind"
    );
    for uid in ["k1", "k2", "k3"] {
        wait_rows(c.port_of(uid), 4).await;
    }
}
