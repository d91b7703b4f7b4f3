//! Golden files for everything pgwarden writes into a data directory.
//!
//! A change to the rendered configuration shows up as a diff of
//! `tests/golden/*` in review. After an intended change, rewrite them with
//! `UPDATE_GOLDEN=1 cargo test -p pgwarden-pg --test golden`.

// Helpers outside #[test] functions panic on failure too: that is how a test fails.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use pgwarden_pg::{
    primary_conninfo, render_pg_hba, render_pg_hba_tls, render_postgresql_conf, slot_name, HbaTls,
    PgConf, StandbyConf,
};

fn check(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    assert!(
        expected == actual,
        "{name} differs from its golden file; if intended, rerun with UPDATE_GOLDEN=1\n\
         --- expected\n{expected}\n--- actual\n{actual}"
    );
}

/// A password exercising every quoting layer: conninfo inside a conf literal.
const AWKWARD_PASSWORD: &str = r"p@ss w'rd\1";

fn conf(standby: Option<StandbyConf>) -> PgConf {
    let mut parameters = BTreeMap::new();
    parameters.insert("shared_buffers".to_string(), "256MB".to_string());
    parameters.insert("max_connections".to_string(), "200".to_string());
    parameters.insert(
        "log_line_prefix".to_string(),
        "%m [%p] %q%u@%d ".to_string(),
    );
    parameters.insert("search_path".to_string(), r#""$user", public"#.to_string());
    // Ours to set: rendered from PgConf, never from here.
    parameters.insert("port".to_string(), "1".to_string());
    parameters.insert("primary_conninfo".to_string(), "host=evil".to_string());
    PgConf {
        listen_addresses: "*".to_string(),
        port: 5433,
        application_name: "keeper-b".to_string(),
        socket_dir: "/run/pgwarden".to_string(),
        max_wal_senders: 10,
        max_replication_slots: 10,
        wal_keep_size_mb: 256,
        parameters,
        standby,
    }
}

fn standby_conninfo() -> String {
    primary_conninfo("10.0.0.1", 5432, "replicator", AWKWARD_PASSWORD, "keeper-b")
}

#[test]
fn primary_postgresql_conf() {
    check(
        "primary.postgresql.conf",
        &render_postgresql_conf(&conf(None)),
    );
}

#[test]
fn standby_postgresql_conf() {
    let standby = StandbyConf {
        primary_conninfo: standby_conninfo(),
        primary_slot_name: slot_name("keeper-b"),
    };
    check(
        "standby.postgresql.conf",
        &render_postgresql_conf(&conf(Some(standby))),
    );
}

#[test]
fn pg_hba_conf() {
    let extra = vec![
        "hostssl all app 10.1.0.0/16 scram-sha-256".to_string(),
        "host all all 192.0.2.0/24 reject".to_string(),
    ];
    check(
        "pg_hba.conf",
        &render_pg_hba(&extra, "postgres", "replicator"),
    );
}

/// Spec `pg_require_ssl`: every TCP line of pgwarden's is `hostssl`, the
/// operator's lines and the unix socket line stay as they are.
#[test]
fn pg_hba_conf_require_ssl() {
    let extra = vec!["host all all 192.0.2.0/24 reject".to_string()];
    check(
        "pg_hba.require_ssl.conf",
        &render_pg_hba_tls(&extra, "postgres", "replicator", HbaTls::All),
    );
}

#[test]
fn primary_conninfo_text() {
    check("primary_conninfo.txt", &format!("{}\n", standby_conninfo()));
}
