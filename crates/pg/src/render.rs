//! Pure rendering of the files that make a postgres instance a pgwarden member:
//! `postgresql.conf`, `pg_hba.conf`, and the `primary_conninfo` a standby
//! streams with.
//!
//! The keeper owns these files outright and rewrites them whole on every change,
//! rather than editing what is there, so that a member's configuration is a
//! function of the cluster spec and its role and nothing else. Rendering is pure
//! (no IO, no clock) so that the output is pinned by golden files.
//!
//! Three quoting dialects meet here: postgresql.conf string literals, libpq
//! `key=value` connection strings (which end up *inside* a postgresql.conf
//! literal as `primary_conninfo`), and pg_hba.conf tokens. Each has its own
//! function below.

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;

pub use pgwarden_core::spec::MANAGED_PARAMETERS;

/// Everything the managed postgresql.conf depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgConf {
    /// Addresses postgres listens on (`*` for all).
    pub listen_addresses: String,
    /// TCP port.
    pub port: u16,
    /// The keeper uid; also used as `cluster_name`, so it shows in `ps`.
    pub application_name: String,
    /// Directory for the unix socket (and its lock file).
    pub socket_dir: String,
    /// `max_wal_senders` (the caller's default is 10).
    pub max_wal_senders: u32,
    /// `max_replication_slots` (the caller's default is 10).
    pub max_replication_slots: u32,
    /// `wal_keep_size`, in megabytes.
    pub wal_keep_size_mb: u32,
    /// The operator's cluster-wide parameters. They override our defaults, except
    /// the ones in [`MANAGED_PARAMETERS`].
    pub parameters: BTreeMap<String, String>,
    /// Set on a standby: where it streams from.
    pub standby: Option<StandbyConf>,
}

/// The part of postgresql.conf only a standby has.
#[derive(Clone, PartialEq, Eq)]
pub struct StandbyConf {
    /// libpq connection string to the primary, see [`primary_conninfo`]. Holds a password.
    pub primary_conninfo: String,
    /// The physical slot on the primary reserved for this standby, see [`slot_name`].
    pub primary_slot_name: String,
}

impl fmt::Debug for StandbyConf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection string carries the replication password.
        f.debug_struct("StandbyConf")
            .field("primary_conninfo", &"<redacted>")
            .field("primary_slot_name", &self.primary_slot_name)
            .finish()
    }
}

/// True for a name postgres could accept as a parameter (`work_mem`,
/// `auto_explain.log_min_duration`); anything else would corrupt the file.
pub fn is_valid_parameter_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// True when `name` is one the keeper sets itself (case-insensitive).
pub fn is_managed_parameter(name: &str) -> bool {
    MANAGED_PARAMETERS
        .iter()
        .any(|m| m.eq_ignore_ascii_case(name))
}

/// Whether rendering skips `name` among [`PgConf::parameters`]: the
/// managed ones, except `synchronous_standby_names`, which only the keeper
/// itself puts there (on a primary; the spec cannot carry it).
fn rendering_skips(name: &str) -> bool {
    is_managed_parameter(name) && !name.eq_ignore_ascii_case("synchronous_standby_names")
}

/// postgresql.auto.conf (what `ALTER SYSTEM` writes) without the lines that
/// set managed parameters, which it would otherwise override behind
/// pgwarden's back; and the names removed.
pub fn strip_managed_auto_conf(text: &str) -> (String, Vec<String>) {
    let mut removed = Vec::new();
    let mut out = String::new();
    for line in text.lines() {
        let name = line.split(['=', ' ', '\t']).next().unwrap_or("").trim();
        if !line.trim_start().starts_with('#') && is_managed_parameter(name) {
            removed.push(name.to_lowercase());
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    (out, removed)
}

/// Renders postgresql.conf: our settings, then the operator's, then (on a
/// standby) where to stream from.
///
/// Operator parameters that are managed or have an invalid name are skipped
/// (spec validation is where they are rejected with an explanation); an
/// operator parameter replaces our default of the same name.
pub fn render_postgresql_conf(c: &PgConf) -> String {
    let overridden = |name: &str| c.parameters.keys().any(|k| k.eq_ignore_ascii_case(name));
    let mut out = String::from(
        "# Managed by pgwarden: this file is rewritten on every change, edits are lost.\n\
         # Set cluster-wide parameters in the cluster spec instead.\n\n",
    );

    let owned: [(&str, String); 5] = [
        ("listen_addresses", conf_quote(&c.listen_addresses)),
        ("port", c.port.to_string()),
        ("cluster_name", conf_quote(&c.application_name)),
        ("unix_socket_directories", conf_quote(&c.socket_dir)),
        ("wal_level", "replica".into()),
    ];
    for (name, value) in owned {
        let _ = writeln!(out, "{name} = {value}");
    }
    let _ = writeln!(out, "hot_standby = on");

    let defaults: [(&str, String); 7] = [
        // pg_rewind needs hint bits in the WAL (data checksums would do too, but
        // a data directory from elsewhere may lack them).
        ("wal_log_hints", "on".into()),
        ("max_wal_senders", c.max_wal_senders.to_string()),
        ("max_replication_slots", c.max_replication_slots.to_string()),
        (
            "wal_keep_size",
            conf_quote(&format!("{}MB", c.wal_keep_size_mb)),
        ),
        ("hot_standby_feedback", "on".into()),
        // postgres writes to stderr, which the keeper relays into its own log.
        ("logging_collector", "off".into()),
        ("log_destination", conf_quote("stderr")),
    ];
    for (name, value) in defaults.iter().filter(|(n, _)| !overridden(n)) {
        let _ = writeln!(out, "{name} = {value}");
    }

    let operator: Vec<_> = c
        .parameters
        .iter()
        .filter(|(k, _)| is_valid_parameter_name(k) && !rendering_skips(k))
        .collect();
    if !operator.is_empty() {
        out.push_str("\n# Cluster-wide parameters from the cluster spec.\n");
        for (name, value) in operator {
            let _ = writeln!(out, "{name} = {}", conf_quote(value));
        }
    }

    if let Some(s) = &c.standby {
        out.push_str("\n# Standby: stream from the primary.\n");
        let _ = writeln!(
            out,
            "primary_conninfo = {}",
            conf_quote(&s.primary_conninfo)
        );
        let _ = writeln!(
            out,
            "primary_slot_name = {}",
            conf_quote(&s.primary_slot_name)
        );
    }
    out
}

/// Renders pg_hba.conf: password (SCRAM) authentication everywhere, with the
/// operator's entries first so they can restrict before our catch-all lines.
///
/// Local connections use scram-sha-256 too, not `peer`: peer breaks as soon as
/// the OS user differs from the database superuser's name.
pub fn render_pg_hba(extra_entries: &[String], superuser: &str, repl_user: &str) -> String {
    render_pg_hba_ssl(extra_entries, superuser, repl_user, false)
}

/// [`render_pg_hba`], with replication allowed only over TLS (`hostssl`)
/// when `replication_ssl`: with postgres TLS on, a standby or pg_basebackup
/// that would send the replication password in clear is refused.
pub fn render_pg_hba_ssl(
    extra_entries: &[String],
    superuser: &str,
    repl_user: &str,
    replication_ssl: bool,
) -> String {
    let tls = if replication_ssl {
        HbaTls::Replication
    } else {
        HbaTls::Off
    };
    render_pg_hba_tls(extra_entries, superuser, repl_user, tls)
}

/// Which of pgwarden's own pg_hba lines accept only TLS connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HbaTls {
    /// `host` everywhere: TLS is allowed, not required (postgres TLS off).
    Off,
    /// `hostssl` for replication, `host` for clients (postgres TLS on).
    Replication,
    /// `hostssl` for replication and clients (spec `pg_require_ssl`).
    All,
}

/// [`render_pg_hba`] with the `hostssl` lines `tls` asks for. Local (unix
/// socket) connections cannot use TLS and keep their `local` line; the
/// operator's entries are written as given.
pub fn render_pg_hba_tls(
    extra_entries: &[String],
    superuser: &str,
    repl_user: &str,
    tls: HbaTls,
) -> String {
    let mut out = String::from(
        "# Managed by pgwarden: this file is rewritten on every change, edits are lost.\n\
         # Add entries through the cluster spec instead.\n\
         # TYPE  DATABASE  USER  ADDRESS  METHOD\n\n",
    );
    let _ = writeln!(
        out,
        "# Everyone authenticates with a password, the superuser {} too.",
        hba_quote(superuser)
    );
    out.push_str("local all all scram-sha-256\n");
    if !extra_entries.is_empty() {
        out.push_str("\n# From the cluster spec.\n");
        for entry in extra_entries {
            let _ = writeln!(out, "{entry}");
        }
    }
    out.push('\n');
    let repl = hba_quote(repl_user);
    let (repl_kind, client_kind) = match tls {
        HbaTls::Off => ("host", "host"),
        HbaTls::Replication => ("hostssl", "host"),
        HbaTls::All => ("hostssl", "hostssl"),
    };
    let _ = writeln!(
        out,
        "{repl_kind} replication {repl} 0.0.0.0/0 scram-sha-256"
    );
    let _ = writeln!(out, "{repl_kind} replication {repl} ::/0 scram-sha-256");
    let _ = writeln!(out, "{client_kind} all all 0.0.0.0/0 scram-sha-256");
    let _ = writeln!(out, "{client_kind} all all ::/0 scram-sha-256");
    out
}

/// The libpq connection string a standby uses to stream from `host:port`.
///
/// Short timeouts and TCP keepalives make a dead primary noticed within seconds
/// rather than after the kernel's two-hour keepalive default.
pub fn primary_conninfo(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    application_name: &str,
) -> String {
    primary_conninfo_tls(host, port, user, password, application_name, None)
}

/// The TLS files of a libpq connection: the CA the server's certificate is
/// checked against, and our own certificate and key.
#[derive(Debug, Clone, Copy)]
pub struct ConnTls<'a> {
    /// `sslrootcert`.
    pub root_cert: &'a str,
    /// `sslcert`.
    pub cert: &'a str,
    /// `sslkey`.
    pub key: &'a str,
}

/// [`primary_conninfo`]; with `tls`, TLS is required and the primary's
/// certificate is checked against the CA and against `host`
/// (`sslmode=verify-full`), so a man in the middle cannot obtain the
/// replication password. Naming our own certificate also keeps libpq from
/// looking in a `~/.postgresql` the postgres user may not be able to read.
pub fn primary_conninfo_tls(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    application_name: &str,
    tls: Option<ConnTls<'_>>,
) -> String {
    let port = port.to_string();
    let sslmode = if tls.is_some() {
        "verify-full"
    } else {
        "prefer"
    };
    let mut pairs = vec![
        ("host", host),
        ("port", port.as_str()),
        ("user", user),
        ("password", password),
        ("application_name", application_name),
        ("sslmode", sslmode),
        ("connect_timeout", "2"),
        ("keepalives", "1"),
        ("keepalives_idle", "5"),
        ("keepalives_interval", "2"),
        ("keepalives_count", "3"),
    ];
    if let Some(tls) = tls {
        pairs.extend([
            ("sslrootcert", tls.root_cert),
            ("sslcert", tls.cert),
            ("sslkey", tls.key),
        ]);
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", conninfo_quote(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

pub use pgwarden_core::plan::slot_name;

/// Splits a libpq `key=value` connection string into its pairs, undoing
/// [`primary_conninfo`]'s quoting. Malformed text yields what could be read.
pub fn parse_conninfo(s: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        if key.is_empty() {
            return pairs;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return pairs;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// A postgresql.conf string literal: single quotes, `'` doubled, backslashes
/// and line breaks escaped (the config lexer does not allow a raw newline).
pub fn conf_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A libpq connection-string value: bare when that is unambiguous, else single
/// quotes with `\` and `'` backslash-escaped.
pub fn conninfo_quote(value: &str) -> String {
    let needs_quotes = value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\');
    if !needs_quotes {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\\' || c == '\'' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// A pg_hba.conf role token: bare when it is a plain lowercase name that is not
/// a keyword, else double-quoted (a quoted keyword loses its special meaning).
fn hba_quote(role: &str) -> String {
    const KEYWORDS: &[&str] = &["all", "sameuser", "samerole", "samegroup", "replication"];
    let plain = !role.is_empty()
        && role
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !KEYWORDS.contains(&role);
    if plain {
        role.to_string()
    } else {
        format!("\"{}\"", role.replace('"', "\"\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_quote_doubles_quotes_and_escapes_backslashes() {
        assert_eq!(conf_quote("plain"), "'plain'");
        assert_eq!(conf_quote(""), "''");
        assert_eq!(conf_quote(r"it's a\b"), r"'it''s a\\b'");
        assert_eq!(conf_quote("two\nlines"), r"'two\nlines'");
    }

    #[test]
    fn conninfo_quotes_only_when_needed() {
        assert_eq!(conninfo_quote("10.0.0.1"), "10.0.0.1");
        assert_eq!(conninfo_quote(""), "''");
        assert_eq!(conninfo_quote(r"p' w\d"), r"'p\' w\\d'");
    }

    #[test]
    fn awkward_password_survives_conninfo_and_conf_quoting() {
        let password = r"se'cr et\x";
        let ci = primary_conninfo("db-1", 5433, "repl", password, "keeper-b");
        assert!(ci.contains(r"password='se\'cr et\\x'"), "{ci}");
        let pairs = parse_conninfo(&ci);
        assert!(pairs.contains(&("password".into(), password.into())));
        assert!(pairs.contains(&("port".into(), "5433".into())));
        assert!(pairs.contains(&("keepalives_count".into(), "3".into())));
        // Inside postgresql.conf, a second layer of quoting applies.
        let line = format!("primary_conninfo = {}", conf_quote(&ci));
        assert!(line.contains(r"password=''se\\''cr et\\\\x''"), "{line}");
    }

    #[test]
    fn parse_conninfo_reads_bare_and_quoted_values() {
        let pairs = parse_conninfo(" host = h1  port=5432 password='a b' user=x\\ y");
        assert_eq!(
            pairs,
            vec![
                ("host".to_string(), "h1".to_string()),
                ("port".into(), "5432".into()),
                ("password".into(), "a b".into()),
                ("user".into(), "x y".into()),
            ]
        );
        assert!(parse_conninfo("").is_empty());
    }

    #[test]
    fn slot_names_are_valid_for_postgres() {
        assert_eq!(slot_name("keeper-1"), "pgwarden_keeper_1");
        assert_eq!(slot_name("Node.A"), "pgwarden_node_a");
        assert_eq!(slot_name(""), "pgwarden_");
        assert_eq!(slot_name("é"), "pgwarden__");
        let long = slot_name(&"x".repeat(100));
        assert_eq!(long.len(), 63);
        assert!(long.starts_with("pgwarden_xxx"));
        for uid in ["a b", "ÄÖÜ-ß", "日本", &"é".repeat(40)] {
            let s = slot_name(uid);
            assert!(s.len() <= 63);
            assert!(s
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        }
    }

    #[test]
    fn alter_system_cannot_override_managed_parameters() {
        let auto = "# Do not edit this file manually!\n\
                    # It will be overwritten by the ALTER SYSTEM command.\n\
                    work_mem = '64MB'\n\
                    port = '6000'\n\
                    Primary_Conninfo = 'host=evil'\n\
                    synchronous_standby_names = ''\n";
        let (kept, removed) = strip_managed_auto_conf(auto);
        assert_eq!(
            removed,
            ["port", "primary_conninfo", "synchronous_standby_names"]
        );
        assert!(kept.contains("work_mem = '64MB'"));
        assert!(kept.starts_with("# Do not edit"));
        assert!(!kept.contains("port") && !kept.contains("evil"));
        let (same, none) = strip_managed_auto_conf("work_mem = '1MB'\n");
        assert_eq!((same.as_str(), none.len()), ("work_mem = '1MB'\n", 0));
    }

    #[test]
    fn managed_and_invalid_parameters_are_skipped() {
        let mut parameters = BTreeMap::new();
        parameters.insert("Port".to_string(), "1".to_string());
        parameters.insert("include".to_string(), "/etc/evil".to_string());
        parameters.insert("bad name".to_string(), "x".to_string());
        parameters.insert("hot_standby_feedback".to_string(), "off".to_string());
        parameters.insert("work_mem".to_string(), "64MB".to_string());
        let conf = render_postgresql_conf(&PgConf {
            listen_addresses: "*".into(),
            port: 5432,
            application_name: "a".into(),
            socket_dir: "/tmp".into(),
            max_wal_senders: 10,
            max_replication_slots: 10,
            wal_keep_size_mb: 128,
            parameters,
            standby: None,
        });
        assert!(conf.contains("\nport = 5432\n"));
        assert!(!conf.contains("Port"));
        assert!(!conf.contains("include"));
        assert!(!conf.contains("bad name"));
        assert!(conf.contains("work_mem = '64MB'"));
        assert_eq!(conf.matches("hot_standby_feedback").count(), 1);
        assert!(conf.contains("hot_standby_feedback = 'off'"));
    }

    #[test]
    fn hba_quotes_keywords_and_odd_role_names() {
        assert_eq!(hba_quote("replicator"), "replicator");
        assert_eq!(hba_quote("replication"), "\"replication\"");
        assert_eq!(hba_quote("Repl User"), "\"Repl User\"");
    }

    #[test]
    fn standby_conf_debug_hides_the_password() {
        let s = StandbyConf {
            primary_conninfo: primary_conninfo("h", 1, "u", "hunter2", "a"),
            primary_slot_name: "pgwarden_a".into(),
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn require_ssl_makes_every_tcp_line_hostssl() {
        let hba = render_pg_hba_tls(&[], "postgres", "repl", HbaTls::All);
        let tcp: Vec<&str> = hba
            .lines()
            .filter(|l| l.contains("0.0.0.0/0") || l.contains("::/0"))
            .collect();
        assert_eq!(tcp.len(), 4, "{hba}");
        assert!(tcp.iter().all(|l| l.starts_with("hostssl ")), "{hba}");
        assert!(hba.contains("\nlocal all all scram-sha-256\n"), "{hba}");
        let repl_only = render_pg_hba_tls(&[], "postgres", "repl", HbaTls::Replication);
        assert!(repl_only.contains("\nhost all all 0.0.0.0/0 scram-sha-256\n"));
        assert_eq!(repl_only, render_pg_hba_ssl(&[], "postgres", "repl", true));
    }

    #[test]
    fn tls_makes_replication_verify_full_and_hostssl() {
        let tls = ConnTls {
            root_cert: "/etc/pg/ca.pem",
            cert: "/etc/pg/k1.pem",
            key: "/etc/pg/k1-key.pem",
        };
        let ci = primary_conninfo_tls("db-1", 5432, "repl", "pw", "k2", Some(tls));
        let pairs = parse_conninfo(&ci);
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("sslmode"), Some("verify-full"));
        assert_eq!(get("sslrootcert"), Some("/etc/pg/ca.pem"));
        assert_eq!(get("sslcert"), Some("/etc/pg/k1.pem"));
        assert_eq!(get("sslkey"), Some("/etc/pg/k1-key.pem"));
        let plain = primary_conninfo("db-1", 5432, "repl", "pw", "k2");
        assert!(plain.contains("sslmode=prefer") && !plain.contains("sslrootcert"));

        let hba = render_pg_hba_ssl(&[], "postgres", "repl", true);
        assert!(hba.contains("hostssl replication repl 0.0.0.0/0 scram-sha-256"));
        assert!(!hba.contains("\nhost replication"));
        assert_eq!(
            render_pg_hba(&[], "postgres", "repl"),
            render_pg_hba_ssl(&[], "postgres", "repl", false)
        );
    }
}
