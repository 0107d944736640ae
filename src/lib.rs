//! tether: remote block volumes for bare-metal machines.
//!
//! - [`protocol`]: the wire contract shared by the agent and the conductor, and target validation.
//! - [`agent`]: the node daemon (lookup, long-poll, reconcile, executor, heartbeats).
//! - [`backend`]: the host side of each volume type (iSCSI, RBD) and of block devices and
//!   mounts, behind small traits, plus a simulated kernel.
//! - [`conductor`]: the reference conductor (HTTP API over SQLite).
//! - [`config`]: configuration files and the kernel command line.
//! - [`metrics`]: what the two metrics endpoints share.
//! - [`journal`], [`notify`], [`fsutil`]: journald entries, systemd notifications, private and
//!   atomic files.
//! - [`failpoints`]: crash points for the fault matrix (compiled in only for tests).
//! - `fuzzing` (hidden): the private parsers of outside input, for the fuzz targets in fuzz/.

pub mod agent;
pub mod backend;
pub mod conductor;
pub mod config;
pub mod failpoints;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod journal;
pub mod metrics;
pub mod notify;
pub mod openstack;
pub mod protocol;
