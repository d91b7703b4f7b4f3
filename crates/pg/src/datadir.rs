//! What is in a data directory, before anything is started in it.
//!
//! The keeper must tell apart a directory it may initialise (missing or empty),
//! one holding a postgres cluster (whose identity it then checks with
//! `pg_controldata`), and one holding something else, which it must never
//! touch. Parsing `pg_controldata` output is kept pure so that it is tested on
//! captured real output.

use std::io::ErrorKind;
use std::path::Path;

use pgwarden_core::Lsn;

use crate::PgError;

/// What a data directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirState {
    /// The path does not exist.
    Missing,
    /// An empty directory.
    Empty,
    /// A postgres cluster of this major version (from `PG_VERSION`).
    Postgres {
        /// e.g. 15.
        major_version: u32,
    },
    /// Not empty and not a postgres cluster: leave it alone.
    Foreign,
}

/// Looks at `path` without changing anything.
pub fn inspect_data_dir(path: &Path) -> Result<DataDirState, PgError> {
    let mut entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(DataDirState::Missing),
        Err(e) => return Err(PgError::io("list data directory", path, e)),
    };
    if entries.next().is_none() {
        return Ok(DataDirState::Empty);
    }
    let version_file = path.join("PG_VERSION");
    let text = match std::fs::read_to_string(&version_file) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(DataDirState::Foreign),
        Err(e) => return Err(PgError::io("read", version_file, e)),
    };
    let major_version = text.trim().parse().map_err(|_| PgError::Parse {
        what: "PG_VERSION",
        value: text.trim().to_string(),
    })?;
    Ok(DataDirState::Postgres { major_version })
}

/// The parts of `pg_controldata` output the keeper uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlData {
    /// Identifies the cluster: equal on a primary and every copy of it.
    pub system_identifier: u64,
    /// e.g. "in production", "shut down", "in archive recovery", "shut down in recovery".
    pub cluster_state: String,
    /// "Latest checkpoint's TimeLineID".
    pub timeline: u32,
    /// "Latest checkpoint location".
    pub checkpoint_lsn: Lsn,
    /// "Minimum recovery ending location" (0/0 unless it was a standby).
    pub min_recovery_end_lsn: Lsn,
    /// Whether data page checksums are on.
    pub data_checksums: bool,
}

/// Parses `pg_controldata` output (run under `LC_ALL=C`, the labels are translated otherwise).
pub fn parse_controldata(output: &str) -> Result<ControlData, PgError> {
    let field = |label: &'static str| -> Result<&str, PgError> {
        output
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim() == label)
            .map(|(_, value)| value.trim())
            .ok_or(PgError::Parse {
                what: label,
                value: "<missing from pg_controldata output>".into(),
            })
    };
    fn parse<T: std::str::FromStr>(what: &'static str, value: &str) -> Result<T, PgError> {
        value.parse().map_err(|_| PgError::Parse {
            what,
            value: value.to_string(),
        })
    }

    const SYSID: &str = "Database system identifier";
    const STATE: &str = "Database cluster state";
    const TLI: &str = "Latest checkpoint's TimeLineID";
    const CHECKPOINT: &str = "Latest checkpoint location";
    const MIN_RECOVERY: &str = "Minimum recovery ending location";
    const CHECKSUMS: &str = "Data page checksum version";

    Ok(ControlData {
        system_identifier: parse(SYSID, field(SYSID)?)?,
        cluster_state: field(STATE)?.to_string(),
        timeline: parse(TLI, field(TLI)?)?,
        checkpoint_lsn: parse(CHECKPOINT, field(CHECKPOINT)?)?,
        min_recovery_end_lsn: parse(MIN_RECOVERY, field(MIN_RECOVERY)?)?,
        data_checksums: parse::<u32>(CHECKSUMS, field(CHECKSUMS)?)? != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from a running PostgreSQL 15 standby.
    const STANDBY: &str = include_str!("../tests/fixtures/pg_controldata_15_standby.txt");

    #[test]
    fn parses_real_pg_controldata_output() {
        let c = parse_controldata(STANDBY).unwrap();
        assert_eq!(
            c,
            ControlData {
                system_identifier: 7710544678426005509,
                cluster_state: "in archive recovery".into(),
                timeline: 1,
                checkpoint_lsn: "0/2000060".parse().unwrap(),
                min_recovery_end_lsn: "0/2000100".parse().unwrap(),
                data_checksums: true,
            }
        );
    }

    #[test]
    fn missing_or_garbled_fields_are_errors() {
        assert!(matches!(
            parse_controldata("pg_control version number: 1300\n"),
            Err(PgError::Parse {
                what: "Database system identifier",
                ..
            })
        ));
        let garbled = STANDBY.replace("TimeLineID:       1\n", "TimeLineID:       x\n");
        assert!(matches!(
            parse_controldata(&garbled),
            Err(PgError::Parse { value, .. }) if value == "x"
        ));
    }

    #[test]
    fn classifies_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        assert_eq!(inspect_data_dir(&dir).unwrap(), DataDirState::Missing);
        std::fs::create_dir(&dir).unwrap();
        assert_eq!(inspect_data_dir(&dir).unwrap(), DataDirState::Empty);
        std::fs::write(dir.join("notes.txt"), "hi").unwrap();
        assert_eq!(inspect_data_dir(&dir).unwrap(), DataDirState::Foreign);
        std::fs::write(dir.join("PG_VERSION"), "15\n").unwrap();
        assert_eq!(
            inspect_data_dir(&dir).unwrap(),
            DataDirState::Postgres { major_version: 15 }
        );
        std::fs::write(dir.join("PG_VERSION"), "fifteen\n").unwrap();
        assert!(inspect_data_dir(&dir).is_err());
    }
}
