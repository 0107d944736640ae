//! tether: remote block volumes for bare-metal machines.
//!
//! - [`protocol`]: the wire contract shared by the agent and the conductor.
//! - [`agent`]: the node daemon (identity, client, reconcile, executor, reports).
//! - [`backend`]: host backends (iSCSI, RBD, mounts) behind traits, plus a simulated kernel.
//! - [`conductor`]: the reference conductor (HTTP API over SQLite).
//! - [`metrics`]: what the two metrics endpoints share.

pub mod agent;
pub mod backend;
pub mod conductor;
pub mod config;
pub mod fsutil;
pub mod journal;
pub mod metrics;
pub mod notify;
pub mod protocol;
