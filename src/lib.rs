//! ossmount: mount an Alibaba Cloud OSS bucket as a read-only filesystem, hydrating what is
//! read into a local cache with a resumable, part-parallel download engine.
//!
//! Layers, top down (each imports only those below it; `tests/layering.rs` checks it):
//! [`mount`] (wiring a mount), [`control`] and [`metrics`] (its sockets), [`status`] (reading
//! a cache directory), [`prefetch`], [`fs`] with `fs::fuse` (the namespace and reads; only
//! `fs::fuse` speaks fuser), [`cache`] (the cache directory), [`hydrate`] (the resumable
//! engine), [`oss`] (the client, which implements `store`), [`store`] (the `ObjectStore`
//! seam, its types and errors), and leaf helpers such as [`net`] (accepting connections) and
//! [`memory`] (the memory target and its shares).
//! Apart from them stands [`emulator`] (an OSS-compatible server for tests, demos and
//! benchmarks): no layer imports it, and it shares only `oss::sign` and formatting helpers
//! with the client.

pub mod cache;
pub mod control;
pub mod crc64;
pub mod csi;
pub mod emulator;
pub mod fs;
pub mod hydrate;
pub mod memory;
pub mod metrics;
pub mod mount;
pub mod net;
pub mod node;
pub mod oss;
pub mod prefetch;
pub mod sample;
pub mod size;
pub mod status;
pub mod store;
