//! What `gpushare-runtime`'s front decides before anything heavier runs,
//! in code that needs no allocation and no standard library, so the front
//! (src/bin/gpushare-runtime.rs) can start as fast as a static musl
//! program while the library tests the same code. Each reader answers
//! only what it can be sure of; anything else is the full runtime's.

pub mod args;
pub mod config;
pub mod ids;
pub mod spec;
