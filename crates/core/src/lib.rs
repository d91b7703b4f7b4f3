//! pgwarden-core: the decisions, kept free of IO.
//!
//! Everything here is a pure function of its inputs: the sentinel's
//! [`decide`](decide::decide), the keeper's [`plan`](plan::plan), spec
//! validation. The crate has no async runtime, store client or postgres client
//! among its dependencies, so the compiler keeps it that way.

pub mod alerts;
pub mod decide;
pub mod duration;
pub mod keeper;
pub mod keys;
pub mod lag_history;
pub mod lsn;
pub mod plan;
pub mod report;
pub mod rewind;
pub mod route;
pub mod spec;
pub mod startup;
pub mod status;
pub mod timeline;
pub mod timing;

pub use decide::{decide, ClusterView, Decision, Reason};
pub use duration::HumanDuration;
pub use lsn::Lsn;
pub use plan::{plan, Observed, PgAction, PlanError};
pub use report::{ErrorKind, KeeperReport, ObservedRole};
pub use spec::{Spec, SpecError};
pub use status::{Assignment, Status};
