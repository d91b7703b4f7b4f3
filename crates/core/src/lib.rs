//! pgwarden-core: the decisions, kept free of IO.
//!
//! Everything here is a pure function of its inputs: the sentinel's
//! [`decide`](decide::decide), the keeper's [`plan`](plan::plan), spec
//! validation. The crate has no async runtime, store client or postgres client
//! among its dependencies, so the compiler keeps it that way.

pub mod lsn;

pub use lsn::Lsn;
