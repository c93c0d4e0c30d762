//! compox: a server that runs data-processing algorithms written in Python and reports their
//! results, wire-compatible with Compox 3.2.0. See `docs/architecture.md`.

pub mod actors;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod deploy;
pub mod errors;
pub mod http;
pub mod logging;
pub mod records;
pub mod server;
pub mod storage;
pub mod worker;
