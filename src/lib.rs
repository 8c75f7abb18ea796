//! ossmount: mount an Alibaba Cloud OSS bucket as a read-only filesystem, hydrating what is
//! read into a local cache with a resumable, part-parallel download engine.
//!
//! Layers, bottom up: [`oss`] (the client and signer), [`store`] (the `ObjectStore` seam the
//! engine talks to), [`hydrate`] (the resumable engine), [`cache`] (the cache directory),
//! [`fs`] (the namespace and reads, with the fuser adapter in `fs::fuse`), and [`emulator`] (an
//! OSS-compatible server for tests, demos and benchmarks).

pub mod cache;
pub mod config;
pub mod crc64;
pub mod emulator;
pub mod fs;
pub mod hydrate;
pub mod mount;
pub mod oss;
pub mod prefetch;
pub mod progress;
pub mod sample;
pub mod size;
pub mod status;
pub mod store;
