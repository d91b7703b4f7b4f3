//! The cluster spec: the operator's policy, stored in etcd under `spec`.
//!
//! Written by `ctl init` / `ctl spec set`, read by every role. It carries a
//! `format_version` so that a newer pgwarden can refuse (or migrate) a spec it
//! does not understand instead of misreading it, and it is validated before any
//! role acts on it: a bad value is rejected with the field's name, never half
//! applied.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;

/// The spec format this build writes and understands.
pub const SPEC_FORMAT_VERSION: u32 = 1;

/// Default time-to-live of the primary lease. With renewal every third of it and
/// a fencing margin of a third, a dead primary's lease is gone within this time.
pub const DEFAULT_PRIMARY_LEASE_TTL: HumanDuration = HumanDuration::from_secs(3);
/// Default time-to-live of each keeper's report.
pub const DEFAULT_KEEPER_REPORT_TTL: HumanDuration = HumanDuration::from_secs(5);
/// Default time-to-live of the sentinel leader's election key.
pub const DEFAULT_SENTINEL_LEASE_TTL: HumanDuration = HumanDuration::from_secs(3);
/// Default time-to-live of each proxy's acknowledgement key.
pub const DEFAULT_PROXY_TTL: HumanDuration = HumanDuration::from_secs(3);
/// Default time a newly named primary has to take the primary lease before
/// it is considered failed (initdb, crash recovery or promotion take a while).
pub const DEFAULT_PROMOTION_TIMEOUT: HumanDuration = HumanDuration::from_secs(30);
/// Default time a member may be gone (no report, or unhealthy) before the
/// replication slots kept for it are dropped.
pub const DEFAULT_MEMBER_SLOTS_TTL: HumanDuration = HumanDuration::from_secs(30 * 60);
/// Default largest replay lag a standby may have and still be promoted.
pub const DEFAULT_MAX_LAG_BYTES: u64 = 16 * 1024 * 1024;
/// Bounds a TTL must lie within: below a second, a GC pause or a slow fsync on
/// etcd would cause failovers; above a minute, failover stops being automatic
/// in any useful sense.
pub const MIN_TTL_MS: u64 = 1_000;
/// See [`MIN_TTL_MS`].
pub const MAX_TTL_MS: u64 = 60_000;

/// What a keeper does when postgres dies under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnPostgresCrash {
    /// Fail over to a caught-up standby if there is one, else restart postgres.
    #[default]
    Failover,
    /// Always restart postgres in place.
    Restart,
}

/// Synchronous replication policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Asynchronous replication: a failover may lose the last commits.
    #[default]
    Off,
    /// Synchronous while a standby is available, asynchronous otherwise.
    /// NOT zero-loss: commits made while no standby was synchronous are lost
    /// if the primary then fails.
    On,
    /// Strict: no commit is acknowledged unless a synchronous standby has
    /// it; with none, commits wait. Only a synchronous standby is promoted.
    /// Zero acknowledged writes lost.
    Strict,
}

/// The operator's policy for one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Spec {
    /// Format of this document; see [`SPEC_FORMAT_VERSION`].
    pub format_version: u32,
    /// Lifetime of the primary lease.
    pub primary_lease_ttl: HumanDuration,
    /// Lifetime of each keeper's report key.
    pub keeper_report_ttl: HumanDuration,
    /// Lifetime of the sentinel leader's election key.
    pub sentinel_lease_ttl: HumanDuration,
    /// Lifetime of each proxy's acknowledgement key.
    pub proxy_ttl: HumanDuration,
    /// Time a newly named primary has to take the primary lease.
    pub promotion_timeout: HumanDuration,
    /// Largest replay lag (bytes) a standby may have and still be promoted.
    pub max_lag_bytes: u64,
    /// No automatic failover while set.
    pub paused: bool,
    /// What to do when postgres crashes under a live keeper.
    pub on_postgres_crash: OnPostgresCrash,
    /// Re-clone a former primary when pg_rewind reports that its data
    /// cannot be rewound (connection and authentication failures are
    /// retried instead; see [`crate::rewind`]).
    pub reclone_on_rewind_failure: bool,
    /// How long a member may be gone (no report, or unhealthy) before the
    /// replication slots kept for it are dropped on every node; it stays
    /// listed as gone, and re-clones if it returns without the WAL it needs.
    pub member_slots_ttl: HumanDuration,
    /// When there is no room to keep the old data directory aside during
    /// such a re-clone, delete it instead of refusing. Off by default: the
    /// old directory may hold the only copy of commits no standby received.
    pub reclone_may_destroy_data: bool,
    /// Synchronous replication: off, on (falls back to async) or strict.
    pub sync_mode: SyncMode,
    /// How many synchronous standbys must confirm each commit.
    pub min_sync_standbys: u32,
    /// How many standbys are kept synchronous at most.
    pub max_sync_standbys: u32,
    /// Postgres parameters applied on every node.
    pub pg_parameters: BTreeMap<String, String>,
    /// Extra pg_hba.conf lines, placed before pgwarden's defaults.
    pub pg_hba: Vec<String>,
    /// Accept `trust` (no password at all) in pg_hba lines. Off by default:
    /// one such line opens the database to anyone who can reach it.
    pub pg_hba_allow_trust: bool,
    /// Accept TCP client connections only over TLS: pgwarden's own pg_hba
    /// lines become `hostssl` for clients too, not only for replication.
    /// Needs the `--pg-ssl-*` flags on every keeper; one without them keeps
    /// `host` lines (postgres without TLS cannot load `hostssl` lines, so it
    /// would not start) and logs an error each time it writes pg_hba.conf.
    pub pg_require_ssl: bool,
    /// The operator's latest switchover or manual failover request; the
    /// sentinel carries out each id once (status.handled_request).
    pub request: Option<RoleRequest>,
    /// Per-node requests (restart, re-clone) by keeper uid; each keeper
    /// carries out each id once and reports it done.
    pub node_requests: BTreeMap<String, NodeRequest>,
    /// Where alert notifications go (docs/alerts.md).
    pub alert_receivers: Vec<crate::alerts::AlertReceiver>,
    /// Threshold alerts, and overrides of the built-in ones (docs/alerts.md).
    pub alerts: Vec<crate::alerts::AlertRule>,
}

/// What an operator asked one keeper to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeAction {
    /// Restart postgres (to apply parameters that need it).
    Restart,
    /// Throw the standby's data away and clone it again from the primary.
    Reinit,
}

/// A request to one keeper, written by `ctl restart` / `ctl reinit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRequest {
    /// Unique and increasing.
    pub id: u64,
    /// What to do.
    pub action: NodeAction,
}

/// Which role change an operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// Planned: the primary is healthy; hand over with no write lost.
    Switchover,
    /// The primary is gone: promote this node.
    Failover,
}

/// A switchover or manual failover request written by `ctl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRequest {
    /// Unique and increasing (ctl uses the wall-clock milliseconds).
    pub id: u64,
    /// Switchover or failover.
    pub kind: RequestKind,
    /// The node to promote; `None` lets the sentinel choose (switchover only).
    pub to: Option<String>,
    /// Accept a target that could lose acknowledged writes.
    pub force: bool,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            format_version: SPEC_FORMAT_VERSION,
            primary_lease_ttl: DEFAULT_PRIMARY_LEASE_TTL,
            keeper_report_ttl: DEFAULT_KEEPER_REPORT_TTL,
            sentinel_lease_ttl: DEFAULT_SENTINEL_LEASE_TTL,
            proxy_ttl: DEFAULT_PROXY_TTL,
            promotion_timeout: DEFAULT_PROMOTION_TIMEOUT,
            max_lag_bytes: DEFAULT_MAX_LAG_BYTES,
            paused: false,
            on_postgres_crash: OnPostgresCrash::default(),
            reclone_on_rewind_failure: true,
            reclone_may_destroy_data: false,
            member_slots_ttl: DEFAULT_MEMBER_SLOTS_TTL,
            sync_mode: SyncMode::Off,
            min_sync_standbys: 1,
            max_sync_standbys: 1,
            pg_parameters: BTreeMap::new(),
            pg_hba: Vec::new(),
            pg_hba_allow_trust: false,
            pg_require_ssl: false,
            request: None,
            node_requests: BTreeMap::new(),
            alert_receivers: Vec::new(),
            alerts: Vec::new(),
        }
    }
}

/// Parameters pgwarden sets itself on every node; an operator value for them
/// would break replication or routing, so the spec may not carry them,
/// rendering skips them, and the keeper removes them from
/// postgresql.auto.conf (`ALTER SYSTEM`). The one list: validation, the
/// renderer and that cleaning all use it. Lowercase; postgres compares
/// names case-insensitively.
pub const MANAGED_PARAMETERS: &[&str] = &[
    "listen_addresses",
    "port",
    "wal_level",
    "hot_standby",
    "primary_conninfo",
    "primary_slot_name",
    "cluster_name",
    "unix_socket_directories",
    "wal_log_hints",
    "synchronous_standby_names",
    // Moving the data directory or the authentication files would take them
    // out of the keeper's hands.
    "data_directory",
    "hba_file",
    "ident_file",
    // Directives, not parameters: they would pull in files the keeper does
    // not manage.
    "include",
    "include_dir",
    "include_if_exists",
];

/// A spec that cannot be used; each variant names the field and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The TOML or JSON text did not parse; the message names the field.
    #[error("malformed spec: {0}")]
    Malformed(String),
    /// Written by a newer pgwarden.
    #[error("spec format_version {found} is not supported by this pgwarden (it understands {supported}); upgrade pgwarden")]
    UnsupportedVersion {
        /// Version in the document.
        found: u32,
        /// Version this build understands.
        supported: u32,
    },
    /// A TTL outside the sane range.
    #[error("spec field {field} = {value} is out of range: use between 1s and 60s")]
    TtlOutOfRange {
        /// The field.
        field: &'static str,
        /// The value given.
        value: HumanDuration,
    },
    /// A timeout outside the sane range.
    #[error("spec field {field} = {value} is out of range: use between 1s and 10m")]
    TimeoutOutOfRange {
        /// The field.
        field: &'static str,
        /// The value given.
        value: HumanDuration,
    },
    /// min/max_sync_standbys do not make sense together.
    #[error(
        "spec fields min_sync_standbys = {min} and max_sync_standbys = {max}: need 1 <= min <= max"
    )]
    SyncCounts {
        /// min_sync_standbys.
        min: u32,
        /// max_sync_standbys.
        max: u32,
    },
    /// A postgres parameter pgwarden owns.
    #[error("spec field pg_parameters.{0} is managed by pgwarden and cannot be set")]
    ManagedParameter(String),
    /// A parameter name postgres could never accept.
    #[error("spec field pg_parameters has an invalid parameter name {0:?}: use letters, digits, '_' and '.'")]
    BadParameterName(String),
    /// A pg_hba line that does not start with a connection type.
    #[error("spec field pg_hba has an invalid entry {0:?}: each line starts with local, host, hostssl, hostnossl, hostgssenc or hostnogssenc")]
    BadHbaEntry(String),
    /// A pg_hba line with an unknown method, a bad address, or `trust`
    /// without `pg_hba_allow_trust`.
    #[error("spec field pg_hba has an invalid entry {line:?}: {why}")]
    BadHba {
        /// The line.
        line: String,
        /// What is wrong with it, and the fix.
        why: String,
    },
    /// An alert or alert receiver that cannot be used.
    #[error("spec field {field}: {why}")]
    Alert {
        /// The field, such as `alerts.standby_lag.clear_below`.
        field: String,
        /// What is wrong with it, and the fix.
        why: String,
    },
    /// A value with a line break would inject lines into postgresql.conf.
    #[error("spec field {field} has a line break in its value: values must be on one line")]
    Multiline {
        /// The field.
        field: String,
    },
}

impl Spec {
    /// Parses a spec from TOML (the format of `ctl init --spec FILE`) and validates it.
    pub fn from_toml(text: &str) -> Result<Spec, SpecError> {
        let spec: Spec =
            toml::from_str(text).map_err(|e| SpecError::Malformed(one_line(&e.to_string())))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Parses a spec from the JSON stored in etcd and validates it.
    pub fn from_json(bytes: &[u8]) -> Result<Spec, SpecError> {
        // Check the version first so that a newer spec is reported as such,
        // not as an unknown field.
        #[derive(Deserialize)]
        struct Version {
            format_version: Option<u32>,
        }
        if let Ok(Version {
            format_version: Some(v),
        }) = serde_json::from_slice::<Version>(bytes)
        {
            if v > SPEC_FORMAT_VERSION {
                return Err(SpecError::UnsupportedVersion {
                    found: v,
                    supported: SPEC_FORMAT_VERSION,
                });
            }
        }
        let spec: Spec =
            serde_json::from_slice(bytes).map_err(|e| SpecError::Malformed(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// The JSON stored in etcd.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings, numbers and maps with string keys always serializes.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// The TOML shown by `ctl spec show`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.format_version > SPEC_FORMAT_VERSION || self.format_version == 0 {
            return Err(SpecError::UnsupportedVersion {
                found: self.format_version,
                supported: SPEC_FORMAT_VERSION,
            });
        }
        for (field, value) in [
            ("primary_lease_ttl", self.primary_lease_ttl),
            ("keeper_report_ttl", self.keeper_report_ttl),
            ("sentinel_lease_ttl", self.sentinel_lease_ttl),
            ("proxy_ttl", self.proxy_ttl),
        ] {
            if !(MIN_TTL_MS..=MAX_TTL_MS).contains(&value.as_millis()) {
                return Err(SpecError::TtlOutOfRange { field, value });
            }
        }
        if !(MIN_TTL_MS..=600_000).contains(&self.promotion_timeout.as_millis()) {
            return Err(SpecError::TimeoutOutOfRange {
                field: "promotion_timeout",
                value: self.promotion_timeout,
            });
        }
        if self.min_sync_standbys == 0 || self.max_sync_standbys < self.min_sync_standbys {
            return Err(SpecError::SyncCounts {
                min: self.min_sync_standbys,
                max: self.max_sync_standbys,
            });
        }
        for (name, value) in &self.pg_parameters {
            let lower = name.to_ascii_lowercase();
            if MANAGED_PARAMETERS.contains(&lower.as_str()) {
                return Err(SpecError::ManagedParameter(name.clone()));
            }
            let name_ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                && name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            if !name_ok {
                return Err(SpecError::BadParameterName(name.clone()));
            }
            if value.contains(['\n', '\r']) {
                return Err(SpecError::Multiline {
                    field: format!("pg_parameters.{name}"),
                });
            }
        }
        const HBA_TYPES: &[&str] = &[
            "local",
            "host",
            "hostssl",
            "hostnossl",
            "hostgssenc",
            "hostnogssenc",
        ];
        for line in &self.pg_hba {
            if line.contains(['\n', '\r']) {
                return Err(SpecError::Multiline {
                    field: "pg_hba".into(),
                });
            }
            let first = line.split_whitespace().next().unwrap_or("");
            if !HBA_TYPES.contains(&first) || line.split_whitespace().count() < 4 {
                return Err(SpecError::BadHbaEntry(line.clone()));
            }
            check_hba_line(line, self.pg_hba_allow_trust).map_err(|why| SpecError::BadHba {
                line: line.clone(),
                why,
            })?;
        }
        crate::alerts::definitions(self)?;
        Ok(())
    }
}

/// Authentication methods postgres 15 accepts in pg_hba.conf.
const HBA_METHODS: &[&str] = &[
    "trust",
    "reject",
    "scram-sha-256",
    "md5",
    "password",
    "gss",
    "sspi",
    "ident",
    "peer",
    "pam",
    "ldap",
    "radius",
    "cert",
];

/// Checks the address and the method of one pg_hba line (its type and
/// field count already are).
fn check_hba_line(line: &str, allow_trust: bool) -> Result<(), String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let method_at = if fields[0] == "local" {
        3
    } else {
        let address = fields[3];
        match address.split_once('/') {
            Some((ip, bits)) => {
                let ip: std::net::IpAddr = ip
                    .parse()
                    .map_err(|_| format!("address {address:?} is not IP/prefix"))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                match bits.parse::<u8>() {
                    Ok(b) if b <= max => 4,
                    _ => {
                        return Err(format!(
                            "address {address:?} has a prefix length outside 0..={max}"
                        ))
                    }
                }
            }
            None if address.parse::<std::net::IpAddr>().is_ok() => {
                let mask = fields.get(4).copied().unwrap_or("");
                if mask.parse::<std::net::IpAddr>().is_err() {
                    return Err(format!(
                        "address {address:?} needs a /prefix or a netmask after it"
                    ));
                }
                5
            }
            None => {
                let name_ok = address
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
                if !name_ok || address.is_empty() {
                    return Err(format!("address {address:?} is neither all, samehost, samenet, an IP range nor a host name"));
                }
                4
            }
        }
    };
    let method = fields.get(method_at).copied().unwrap_or("");
    if !HBA_METHODS.contains(&method) {
        return Err(format!(
            "unknown authentication method {method:?}: use one of {}",
            HBA_METHODS.join(", ")
        ));
    }
    if method == "trust" && !allow_trust {
        return Err("method trust lets anyone who can connect in without a password: use scram-sha-256, or set pg_hba_allow_trust = true if you really mean it".into());
    }
    Ok(())
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_is_valid_and_round_trips() {
        let spec = Spec::default();
        spec.validate().unwrap();
        assert_eq!(Spec::from_json(&spec.to_json()).unwrap(), spec);
        assert_eq!(Spec::from_toml(&spec.to_toml()).unwrap(), spec);
    }

    #[test]
    fn toml_fills_defaults_for_missing_fields() {
        let spec =
            Spec::from_toml("max_lag_bytes = 1024\n[pg_parameters]\nwork_mem = '64MB'\n").unwrap();
        assert_eq!(spec.max_lag_bytes, 1024);
        assert_eq!(spec.pg_parameters["work_mem"], "64MB");
        assert_eq!(spec.primary_lease_ttl, DEFAULT_PRIMARY_LEASE_TTL);
    }

    #[test]
    fn malformed_toml_names_the_field() {
        let err = Spec::from_toml("max_lag_bytes = 'lots'\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_lag_bytes"), "{err}");
        let err = Spec::from_toml("no_such_field = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no_such_field"), "{err}");
        let err = Spec::from_toml("primary_lease_ttl = '3'\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("primary_lease_ttl") || err.contains("invalid duration"),
            "{err}"
        );
    }

    #[test]
    fn ttl_out_of_range_is_refused() {
        let err = Spec::from_toml("primary_lease_ttl = '100ms'\n").unwrap_err();
        assert_eq!(
            err,
            SpecError::TtlOutOfRange {
                field: "primary_lease_ttl",
                value: HumanDuration::from_millis(100)
            }
        );
        assert!(Spec::from_toml("proxy_ttl = '2m'\n").is_err());
    }

    #[test]
    fn managed_and_malformed_parameters_are_refused() {
        let err = Spec::from_toml("[pg_parameters]\nport = '5433'\n").unwrap_err();
        assert_eq!(err, SpecError::ManagedParameter("port".into()));
        let err = Spec::from_toml("[pg_parameters]\n'work mem' = '1'\n").unwrap_err();
        assert_eq!(err, SpecError::BadParameterName("work mem".into()));
        let err = Spec::from_toml("[pg_parameters]\nwork_mem = \"1\\nport=1\"\n").unwrap_err();
        assert!(matches!(err, SpecError::Multiline { .. }));
    }

    #[test]
    fn every_managed_parameter_is_refused() {
        for name in MANAGED_PARAMETERS {
            let err = Spec::from_toml(&format!("[pg_parameters]\n{name} = 'x'\n")).unwrap_err();
            assert_eq!(err, SpecError::ManagedParameter(name.to_string()), "{name}");
        }
    }

    #[test]
    fn pg_require_ssl_is_off_unless_asked_for() {
        assert!(!Spec::from_toml("").unwrap().pg_require_ssl);
        assert!(
            Spec::from_toml("pg_require_ssl = true\n")
                .unwrap()
                .pg_require_ssl
        );
        assert!(Spec::from_toml("pg_require_ssl = 'yes'\n").is_err());
    }

    #[test]
    fn hba_entries_are_checked() {
        assert!(Spec::from_toml("pg_hba = ['host all all 10.0.0.0/8 scram-sha-256']\n").is_ok());
        let err = Spec::from_toml("pg_hba = ['allow everyone']\n").unwrap_err();
        assert_eq!(err, SpecError::BadHbaEntry("allow everyone".into()));
        for ok in [
            "local all all peer",
            "host all all 10.0.0.0/8 scram-sha-256",
            "hostssl all all ::1/128 cert clientcert=verify-full",
            "host all all 192.168.1.0 255.255.255.0 md5",
            "host all all samenet scram-sha-256",
            "host all all .example.com scram-sha-256",
        ] {
            assert!(
                Spec::from_toml(&format!("pg_hba = ['{ok}']\n")).is_ok(),
                "{ok}"
            );
        }
        for (bad, says) in [
            ("host all all 0.0.0.0/0 trust", "pg_hba_allow_trust"),
            ("local all all trust", "pg_hba_allow_trust"),
            ("host all all 10.0.0.0/40 md5", "prefix length"),
            ("host all all 10.0.0.1 md5", "netmask"),
            (
                "host all all 10.0.0.0/8 letmein",
                "unknown authentication method",
            ),
            ("host all all bad!host md5", "host name"),
        ] {
            let err = Spec::from_toml(&format!("pg_hba = ['{bad}']\n")).unwrap_err();
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
        let trusted = "pg_hba = ['host all all 10.0.0.0/8 trust']\npg_hba_allow_trust = true\n";
        assert!(Spec::from_toml(trusted).is_ok());
    }

    #[test]
    fn newer_format_is_reported_as_such() {
        let err = Spec::from_json(br#"{"format_version": 9, "shiny_new_field": 1}"#).unwrap_err();
        assert_eq!(
            err,
            SpecError::UnsupportedVersion {
                found: 9,
                supported: SPEC_FORMAT_VERSION
            }
        );
    }
}
