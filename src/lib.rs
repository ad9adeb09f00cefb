//! executioner: a declarative job orchestrator. Pipelines of shell jobs (a DAG with retries,
//! timeouts, layered environment, checks and notifications) declared as Kubernetes-style manifests,
//! run in the foreground (`executioner run`) or reconciled from a watched folder (`executioner
//! controller`).
//!
//! The binary is a thin shell over [`cli::run`]; every other module is library code that returns
//! errors and never prints or exits.

pub mod cli;
pub mod config;
pub mod controller;
pub mod dag;
pub mod engine;
pub mod env;
pub mod error_chain;
pub mod failpoint;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod notify;
pub mod process;
pub mod revision;
pub mod schedule;
pub mod scheduler;
pub mod spec;
pub mod state_dir;
pub mod status;
pub mod store;
pub mod tls;
pub mod validate;
pub mod views;
pub mod worker;
