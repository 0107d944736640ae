//! Integration tests: the real conductor and the real agent over loopback HTTP, with the host
//! side replaced by the in-process simulated kernel.

mod harness;

mod auth;
mod cinder;
mod crashes;
mod database;
mod failover;
mod grow;
mod layout;
mod lifecycle;
mod lookup;
mod metrics;
mod mounts;
mod offline;
mod paths;
mod postgres;
mod protocol_doc;
mod refusals;
mod reports;
mod secrets;
mod transport;
