//! pgwarden's control of one postgres instance.
//!
//! This crate is the keeper's hands: it renders the configuration files
//! ([`render`]), inspects data directories ([`datadir`]), runs the one-shot
//! programs (`initdb`, `pg_basebackup`, `pg_rewind`, `pg_controldata`; [`ops`]),
//! keeps the postmaster as a supervised child ([`postmaster`]) and asks it
//! questions over SQL ([`probe`]). It makes no decisions: what to do, and
//! when, is decided in `pgwarden-core`.

pub mod auto_conf;
pub mod bins;
pub mod check;
pub mod datadir;
mod error;
pub mod fence;
pub mod ops;
pub mod postmaster;
pub mod probe;
pub mod render;
pub mod tls;

pub use auto_conf::reset_managed_auto_conf;
pub use bins::{PgBins, RunAs};
pub use check::check_parameters;
pub use datadir::{inspect_data_dir, parse_controldata, ControlData, DataDirState};
pub use error::PgError;
pub use ops::{basebackup, controldata, initdb, rewind, set_standby_signal, write_file_atomic};
pub use postmaster::{running_postmaster_pid, ExitInfo, Postmaster};
pub use probe::{ConnParams, PgClient, PgStatus, ReplicationPeer};
pub use render::{
    primary_conninfo, primary_conninfo_tls, render_pg_hba, render_pg_hba_ssl, render_pg_hba_tls,
    render_postgresql_conf, slot_name, strip_managed_auto_conf, ConnTls, HbaTls, PgConf,
    StandbyConf, MANAGED_PARAMETERS,
};
pub use tls::{PgTls, PgTlsError};
