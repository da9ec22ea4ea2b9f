//! gpushare: an OCI runtime shim and hook that let many containers share a
//! node's NVIDIA GPUs. Data flows one way: request → decision → edits →
//! apply (to the spec by the runtime, live by the hook). The rooms, from
//! the ground up, are described in the README's library map.

pub mod bpf;
pub mod bundle;
pub mod cdi;
pub mod config;
pub mod decide;
pub mod device_plugin;
pub mod driver;
pub mod edits;
pub mod error;
pub mod hook;
pub mod ids;
pub mod install;
pub mod inventory;
pub mod ledger;
pub mod live;
pub mod mps;
pub mod nri;
pub mod placement;
pub mod report;
pub mod request;
pub mod runtime_args;
pub mod serve;
pub mod shim;
pub mod simulate;
pub mod sys;
pub mod telemetry;
pub mod text;
