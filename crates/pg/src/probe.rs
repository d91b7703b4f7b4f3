//! Asking a running postgres what it is, over SQL.
//!
//! The keeper's view of its instance comes from one `status()` round trip per
//! tick, so that the answers (recovery state, timeline, positions) are taken at
//! the same instant. Types tokio-postgres cannot decode directly (`pg_lsn`,
//! unsigned system identifiers) are cast to text in SQL and parsed here.
//!
//! Queries carry no timeout of their own: callers bound them with
//! `tokio::time::timeout`, and TCP keepalives catch a peer that vanished.

use std::fmt;
use std::time::Duration;

use pgwarden_core::Lsn;
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row, SimpleQueryMessage};

use crate::render::parse_conninfo;
use crate::{PgError, PgTls};

/// How to reach postgres as the superuser.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnParams {
    /// Host name or address (or a unix socket directory, starting with `/`).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Role to connect as.
    pub user: String,
    /// Its password.
    pub password: String,
    /// Database, normally "postgres".
    pub dbname: String,
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
    /// TLS with verify-full (the keeper's `--pg-ssl-*` flags); `None`
    /// connects without TLS.
    pub tls: Option<PgTls>,
}

impl fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnParams")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("dbname", &self.dbname)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

/// What one `status()` round trip learns about an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgStatus {
    /// A standby (or a server still recovering after a crash).
    pub in_recovery: bool,
    /// Identifies the cluster; equal on a primary and all its standbys.
    pub system_identifier: u64,
    /// e.g. 150004.
    pub server_version_num: u32,
    /// The timeline being written (primary) or received/replayed (standby).
    pub timeline: u32,
    /// The timeline of the last checkpoint (restartpoint on a standby). A
    /// standby that never replayed a record of a newer timeline is still on
    /// this one.
    pub checkpoint_timeline: u32,
    /// Primary: `pg_current_wal_lsn()`.
    pub current_lsn: Option<Lsn>,
    /// Primary: `pg_current_wal_flush_lsn()`, the end of WAL that is durable.
    pub flush_lsn: Option<Lsn>,
    /// Standby: last WAL position received and flushed by streaming.
    pub receive_lsn: Option<Lsn>,
    /// Standby: last WAL position replayed.
    pub replay_lsn: Option<Lsn>,
    /// Standby: the WAL receiver is streaming from a primary.
    pub streaming: bool,
    /// Standby: the `primary_conninfo` setting, password removed.
    pub primary_conninfo: Option<String>,
    /// Standby: the host `primary_conninfo` points at.
    pub primary_host: Option<String>,
    /// Standby: the port `primary_conninfo` points at.
    pub primary_port: Option<u16>,
}

/// One standby connected to a primary, from `pg_stat_replication`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationPeer {
    /// The standby's application_name (its keeper uid).
    pub application_name: String,
    /// e.g. "streaming", "catchup".
    pub state: String,
    /// Last WAL position sent to it.
    pub sent_lsn: Option<Lsn>,
    /// Last WAL position it flushed.
    pub flush_lsn: Option<Lsn>,
    /// Last WAL position it replayed.
    pub replay_lsn: Option<Lsn>,
    /// "async", "sync", "potential" or "quorum".
    pub sync_state: String,
}

/// A superuser connection to one postgres instance.
#[derive(Debug)]
pub struct PgClient {
    client: tokio_postgres::Client,
}

const STATUS_SQL: &str = "\
SELECT pg_is_in_recovery(),
       (SELECT system_identifier::text FROM pg_control_system()),
       current_setting('server_version_num')::int4,
       CASE WHEN NOT pg_is_in_recovery() THEN pg_walfile_name(pg_current_wal_lsn()) END,
       (SELECT received_tli FROM pg_stat_wal_receiver),
       (SELECT timeline_id FROM pg_control_checkpoint()),
       CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_lsn()::text END,
       CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_flush_lsn()::text END,
       pg_last_wal_receive_lsn()::text,
       pg_last_wal_replay_lsn()::text,
       COALESCE((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false),
       current_setting('primary_conninfo'),
       (SELECT max(('x' || substr(name, 1, 8))::bit(32)::int4) FROM pg_ls_waldir()
         WHERE name ~ '^[0-9A-F]{8}[.]history$')";

/// Runs a connection's IO until it ends.
async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "postgres connection ended");
    }
}

impl PgClient {
    /// Connects as `application_name` "pgwarden" and drives the connection on
    /// a spawned task (so this needs a tokio runtime). With `p.tls`, the
    /// server must speak TLS and prove its name (`sslmode=verify-full`);
    /// without, no TLS at all.
    pub async fn connect(p: &ConnParams) -> Result<PgClient, PgError> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&p.host)
            .port(p.port)
            .user(&p.user)
            .password(&p.password)
            .dbname(&p.dbname)
            .application_name("pgwarden")
            // The keeper's own statements (roles, slots, checkpoints) must
            // never wait for a synchronous standby: in strict mode with none
            // left, that would wedge the keeper itself.
            .options("-c synchronous_commit=local")
            .connect_timeout(p.connect_timeout)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3);
        let client = match &p.tls {
            Some(tls) => {
                cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
                let (client, connection) = cfg
                    .connect(tls.clone())
                    .await
                    .map_err(PgError::sql("connect to postgres over TLS"))?;
                tokio::spawn(drive(connection));
                client
            }
            None => {
                let (client, connection) = cfg
                    .connect(NoTls)
                    .await
                    .map_err(PgError::sql("connect to postgres"))?;
                tokio::spawn(drive(connection));
                client
            }
        };
        Ok(PgClient { client })
    }

    /// The instance's role, identity and WAL positions, in one round trip.
    pub async fn status(&self) -> Result<PgStatus, PgError> {
        const OP: &str = "query postgres status";
        let row = self
            .client
            .query_one(STATUS_SQL, &[])
            .await
            .map_err(PgError::sql(OP))?;
        let get_text = |i| -> Result<Option<String>, PgError> {
            row.try_get::<_, Option<String>>(i)
                .map_err(PgError::sql(OP))
        };
        let get_i32 = |i| -> Result<Option<i32>, PgError> {
            row.try_get::<_, Option<i32>>(i).map_err(PgError::sql(OP))
        };
        let in_recovery: bool = row.try_get(0).map_err(PgError::sql(OP))?;
        let sysid_text = get_text(1)?.unwrap_or_default();
        let system_identifier = sysid_text.parse().map_err(|_| PgError::Parse {
            what: "system identifier",
            value: sysid_text.clone(),
        })?;
        let version = get_i32(2)?.unwrap_or_default();
        let server_version_num = u32::try_from(version).map_err(|_| PgError::Parse {
            what: "server_version_num",
            value: version.to_string(),
        })?;
        // A standby's timeline: the highest of what its WAL receiver got, its
        // last checkpoint's, and the newest timeline history file it holds.
        // The receiver's value vanishes when the upstream dies, and the
        // checkpoint's lags until the next restartpoint; the history file
        // stays once the standby switched to the new timeline.
        let timeline = match get_text(3)? {
            Some(walfile) => timeline_of_walfile(&walfile)?,
            None => {
                let tlis = [get_i32(4)?, get_i32(5)?, get_i32(12)?];
                let max = tlis.into_iter().flatten().max().unwrap_or(0);
                u32::try_from(max).map_err(|_| PgError::Parse {
                    what: "timeline",
                    value: max.to_string(),
                })?
            }
        };
        let primary_conninfo = get_text(11)?.filter(|s| !s.trim().is_empty());
        let pairs = primary_conninfo.as_deref().map(parse_conninfo);
        let value_of = |key: &str| {
            pairs
                .as_ref()
                .and_then(|p| p.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()))
        };
        let checkpoint_timeline = get_i32(5)?.and_then(|t| u32::try_from(t).ok()).unwrap_or(0);
        Ok(PgStatus {
            in_recovery,
            system_identifier,
            server_version_num,
            timeline,
            checkpoint_timeline,
            current_lsn: parse_lsn("current WAL LSN", get_text(6)?)?,
            flush_lsn: parse_lsn("flushed WAL LSN", get_text(7)?)?,
            receive_lsn: parse_lsn("received WAL LSN", get_text(8)?)?,
            replay_lsn: parse_lsn("replayed WAL LSN", get_text(9)?)?,
            streaming: row.try_get(10).map_err(PgError::sql(OP))?,
            primary_host: value_of("host"),
            primary_port: value_of("port").and_then(|p| p.parse().ok()),
            primary_conninfo: pairs.as_ref().map(|p| redacted_conninfo(p)),
        })
    }

    /// The text of the history file of `timeline` in this instance's
    /// `pg_wal`; `None` when it has none (timeline 1 never has one).
    pub async fn timeline_history(&self, timeline: u32) -> Result<Option<String>, PgError> {
        let path = format!("pg_wal/{timeline:08X}.history");
        let row = self
            .client
            .query_one("SELECT pg_read_file($1, 0, 1048576, true)", &[&path])
            .await
            .map_err(PgError::sql("read a timeline history file"))?;
        row.try_get(0)
            .map_err(PgError::sql("read a timeline history file"))
    }

    /// The newest timeline of the WAL segment files in `pg_wal` (history
    /// files aside): the timeline this instance received or wrote WAL on
    /// last. A standby that fetched a newer timeline's history but could not
    /// follow it has no segment of that timeline.
    pub async fn wal_segment_timeline(&self) -> Result<Option<u32>, PgError> {
        const OP: &str = "list the WAL segment files";
        let row = self
            .client
            .query_one(
                "SELECT max(('x' || substr(name, 1, 8))::bit(32)::int4) FROM pg_ls_waldir() \
                 WHERE name ~ '^[0-9A-F]{24}$'",
                &[],
            )
            .await
            .map_err(PgError::sql(OP))?;
        let tli: Option<i32> = row.try_get(0).map_err(PgError::sql(OP))?;
        Ok(tli.and_then(|t| u32::try_from(t).ok()))
    }

    /// Names of the physical replication slots.
    pub async fn replication_slots(&self) -> Result<Vec<String>, PgError> {
        const OP: &str = "list replication slots";
        let rows = self
            .client
            .query(
                "SELECT slot_name::text FROM pg_replication_slots \
                 WHERE slot_type = 'physical' ORDER BY 1",
                &[],
            )
            .await
            .map_err(PgError::sql(OP))?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(PgError::sql(OP)))
            .collect()
    }

    /// WAL bytes each replication slot holds back: from its restart point
    /// to the current write (primary) or receive (standby) position. Slots
    /// that retain nothing yet are left out.
    pub async fn slot_retained_wal(&self) -> Result<Vec<(String, u64)>, PgError> {
        const OP: &str = "query pg_replication_slots";
        let rows = self
            .client
            .query(
                "SELECT slot_name::text, ((CASE WHEN pg_is_in_recovery() \
                 THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END) \
                 - restart_lsn)::bigint FROM pg_replication_slots \
                 WHERE restart_lsn IS NOT NULL ORDER BY 1",
                &[],
            )
            .await
            .map_err(PgError::sql(OP))?;
        let mut out = Vec::new();
        for r in &rows {
            let name: String = r.try_get(0).map_err(PgError::sql(OP))?;
            let bytes: Option<i64> = r.try_get(1).map_err(PgError::sql(OP))?;
            if let Some(b) = bytes.and_then(|b| u64::try_from(b).ok()) {
                out.push((name, b));
            }
        }
        Ok(out)
    }

    /// Creates a physical slot; an existing slot of that name is fine. With
    /// `reserve` it retains WAL from now on, without only from its first use
    /// (a slot a standby makes ahead of a promotion).
    pub async fn create_physical_slot(&self, name: &str, reserve: bool) -> Result<(), PgError> {
        let created = self
            .client
            .execute(
                "SELECT pg_create_physical_replication_slot($1::text::name, $2)",
                &[&name, &reserve],
            )
            .await;
        match created {
            Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => Ok(()),
            other => other
                .map(drop)
                .map_err(PgError::sql("create replication slot")),
        }
    }

    /// Drops a slot; a missing one is fine, one in use by a standby is an error.
    pub async fn drop_slot(&self, name: &str) -> Result<(), PgError> {
        let dropped = self
            .client
            .execute("SELECT pg_drop_replication_slot($1::text::name)", &[&name])
            .await;
        match dropped {
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => Ok(()),
            Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => Err(PgError::SlotActive {
                name: name.to_string(),
                source: e,
            }),
            other => other
                .map(drop)
                .map_err(PgError::sql("drop replication slot")),
        }
    }

    /// Makes sure the replication role exists with this password.
    ///
    /// The password is hashed here (SCRAM-SHA-256) so that only its verifier
    /// reaches the server, and with it any statement log.
    pub async fn ensure_replication_role(&self, name: &str, password: &str) -> Result<(), PgError> {
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let options = format!("LOGIN REPLICATION PASSWORD {}", quote_literal(&verifier));
        let exists: bool = self
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1::text)",
                &[&name],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(PgError::sql("look up replication role"))?;
        let ident = quote_ident(name);
        if !exists {
            let created = self
                .client
                .batch_execute(&format!("CREATE ROLE {ident} {options}"))
                .await;
            match created {
                // Someone else created it meanwhile: set the password below.
                Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => {}
                other => return other.map_err(PgError::sql("create replication role")),
            }
        }
        self.client
            .batch_execute(&format!("ALTER ROLE {ident} {options}"))
            .await
            .map_err(PgError::sql("set replication role password"))
    }

    /// Promotes a standby, waiting up to 30 s for it to finish.
    pub async fn promote(&self) -> Result<(), PgError> {
        const OP: &str = "promote";
        let done: bool = self
            .client
            .query_one("SELECT pg_promote(true, 30)", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(PgError::sql(OP))?;
        if done {
            Ok(())
        } else {
            Err(PgError::PromoteTimedOut)
        }
    }

    /// The standbys streaming from this primary.
    pub async fn replication_stats(&self) -> Result<Vec<ReplicationPeer>, PgError> {
        const OP: &str = "query pg_stat_replication";
        let rows = self
            .client
            .query(
                "SELECT application_name, state, sent_lsn::text, flush_lsn::text, \
                 replay_lsn::text, sync_state FROM pg_stat_replication ORDER BY 1",
                &[],
            )
            .await
            .map_err(PgError::sql(OP))?;
        rows.iter().map(replication_peer).collect()
    }

    /// Runs one statement; returns the number of rows it affected.
    pub async fn execute(&self, sql: &str) -> Result<u64, PgError> {
        self.client
            .execute(sql, &[])
            .await
            .map_err(PgError::sql("execute statement"))
    }

    /// The first column of the first row as text (any type), or `None` for no
    /// row or NULL.
    pub async fn query_one_string(&self, sql: &str) -> Result<Option<String>, PgError> {
        let messages = self
            .client
            .simple_query(sql)
            .await
            .map_err(PgError::sql("run query"))?;
        for message in messages {
            if let SimpleQueryMessage::Row(row) = message {
                let value = row.try_get(0).map_err(PgError::sql("run query"))?;
                return Ok(value.map(str::to_string));
            }
        }
        Ok(None)
    }
}

fn replication_peer(row: &Row) -> Result<ReplicationPeer, PgError> {
    const OP: &str = "query pg_stat_replication";
    let text = |i| -> Result<Option<String>, PgError> {
        row.try_get::<_, Option<String>>(i)
            .map_err(PgError::sql(OP))
    };
    Ok(ReplicationPeer {
        application_name: text(0)?.unwrap_or_default(),
        state: text(1)?.unwrap_or_default(),
        sent_lsn: parse_lsn("sent LSN", text(2)?)?,
        flush_lsn: parse_lsn("flush LSN", text(3)?)?,
        replay_lsn: parse_lsn("replay LSN", text(4)?)?,
        sync_state: text(5)?.unwrap_or_default(),
    })
}

fn parse_lsn(what: &'static str, text: Option<String>) -> Result<Option<Lsn>, PgError> {
    text.map(|t| t.parse().map_err(|_| PgError::Parse { what, value: t }))
        .transpose()
}

/// The timeline is the first 8 hex digits of a WAL file name.
fn timeline_of_walfile(name: &str) -> Result<u32, PgError> {
    name.get(..8)
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .ok_or_else(|| PgError::Parse {
            what: "WAL file name",
            value: name.to_string(),
        })
}

/// A conninfo without its password, for reports and logs.
fn redacted_conninfo(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .filter(|(k, _)| k != "password")
        .map(|(k, v)| format!("{k}={}", crate::render::conninfo_quote(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A SQL identifier, always double-quoted (so case and odd characters survive).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal that reads the same whatever `standard_conforming_strings` is.
fn quote_literal(value: &str) -> String {
    let doubled = value.replace('\'', "''");
    if value.contains('\\') {
        format!("E'{}'", doubled.replace('\\', "\\\\"))
    } else {
        format!("'{doubled}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_comes_from_the_wal_file_name() {
        assert_eq!(timeline_of_walfile("000000030000000000000007").unwrap(), 3);
        assert_eq!(timeline_of_walfile("0000001A0000000000000007").unwrap(), 26);
        assert!(timeline_of_walfile("xyz").is_err());
    }

    #[test]
    fn quoting_is_injection_safe() {
        assert_eq!(quote_ident("repl"), "\"repl\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\'b"), r"E'a\\''b'");
    }

    #[test]
    fn conninfo_report_has_no_password() {
        let ci = crate::render::primary_conninfo("h", 5432, "repl", "s3cr'et", "b");
        let redacted = redacted_conninfo(&parse_conninfo(&ci));
        assert!(!redacted.contains("s3cr"), "{redacted}");
        assert!(redacted.starts_with("host=h port=5432 user=repl application_name=b"));
    }

    #[test]
    fn conn_params_debug_hides_the_password() {
        let p = ConnParams {
            host: "h".into(),
            port: 1,
            user: "u".into(),
            password: "hunter2".into(),
            dbname: "postgres".into(),
            connect_timeout: Duration::from_secs(1),
            tls: None,
        };
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}
