//! The mount's counters: what the filesystem counts itself (`FsStats`), and `MountCounters`,
//! the snapshot of every layer's counters for the log and `status`. Must not write files.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde::{Deserialize, Serialize};

use super::OssFs;

/// Counters for a mount, for logs and status.
#[derive(Debug)]
pub struct FsStats {
    /// Directory listings (each may take several pages).
    pub listings: AtomicU64,
    pub heads: AtomicU64,
    /// Opens of small files answered by one GET (headers and body) instead of a HEAD.
    pub small_gets: AtomicU64,
    pub opens: AtomicU64,
    pub reads: AtomicU64,
    pub read_bytes: AtomicU64,
    pub read_errors: AtomicU64,
    /// Reads whose bytes were all present when they arrived.
    pub cache_hits: AtomicU64,
    /// Reads that had to wait for parts.
    pub cache_misses: AtomicU64,
    /// Reads served by direct ranged GETs (objects larger than the cache).
    pub direct_reads: AtomicU64,
    /// Opens of complete files handed to the kernel (FUSE passthrough): their reads never
    /// reach ossmount and are not counted in `reads`.
    pub passthrough_opens: AtomicU64,
    /// Seconds a read that had to wait for parts waited (for metrics).
    pub demand_wait: Histogram,
}

impl Default for FsStats {
    fn default() -> Self {
        FsStats {
            listings: AtomicU64::default(),
            heads: AtomicU64::default(),
            small_gets: AtomicU64::default(),
            opens: AtomicU64::default(),
            reads: AtomicU64::default(),
            read_bytes: AtomicU64::default(),
            read_errors: AtomicU64::default(),
            cache_hits: AtomicU64::default(),
            cache_misses: AtomicU64::default(),
            direct_reads: AtomicU64::default(),
            passthrough_opens: AtomicU64::default(),
            // 1 ms to about 33 s.
            demand_wait: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountCounters {
    pub part_requests: u64,
    pub part_retries: u64,
    /// GETs started inside a part already streaming, for a read far ahead of its stream.
    #[serde(default)]
    pub part_splits: u64,
    pub bytes_fetched: u64,
    pub listings: u64,
    pub heads: u64,
    /// Small files opened with one GET (headers and body) instead of a HEAD.
    #[serde(default)]
    pub small_gets: u64,
    pub opens: u64,
    pub reads: u64,
    pub bytes_served: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub direct_reads: u64,
    #[serde(default)]
    pub passthrough_opens: u64,
    pub read_errors: u64,
    pub evictions: u64,
    /// Objects whose bytes failed the whole-object CRC-64 (never served; discarded).
    #[serde(default)]
    pub crc_mismatches: u64,
    /// Cached parts that failed their CRC-64 re-check after a restart (fetched again).
    #[serde(default)]
    pub parts_failed_check: u64,
    /// Cached parts read back against their CRC-64 (once per entry and mount life).
    #[serde(default)]
    pub parts_checked: u64,
    /// Cached listings let go before their TTL to keep within the node's memory target.
    #[serde(default)]
    pub listings_dropped_for_memory: u64,
}

impl MountCounters {
    /// Several mounts of one node together: what each filesystem counts is added up; the
    /// engine's and the cache's counters are the node's, shared, so taken once.
    pub fn total<'a>(each: impl IntoIterator<Item = &'a MountCounters>) -> MountCounters {
        let mut t = MountCounters::default();
        for (i, c) in each.into_iter().enumerate() {
            if i == 0 {
                t = c.clone();
                continue;
            }
            t.listings += c.listings;
            t.heads += c.heads;
            t.small_gets += c.small_gets;
            t.opens += c.opens;
            t.reads += c.reads;
            t.bytes_served += c.bytes_served;
            t.cache_hits += c.cache_hits;
            t.cache_misses += c.cache_misses;
            t.direct_reads += c.direct_reads;
            t.passthrough_opens += c.passthrough_opens;
            t.read_errors += c.read_errors;
            t.listings_dropped_for_memory += c.listings_dropped_for_memory;
            // The engine's (parts, bytes fetched, CRC checks) and the cache's (evictions)
            // grow over the node's life: the latest snapshot holds the most.
            t.part_requests = t.part_requests.max(c.part_requests);
            t.part_retries = t.part_retries.max(c.part_retries);
            t.part_splits = t.part_splits.max(c.part_splits);
            t.bytes_fetched = t.bytes_fetched.max(c.bytes_fetched);
            t.evictions = t.evictions.max(c.evictions);
            t.crc_mismatches = t.crc_mismatches.max(c.crc_mismatches);
            t.parts_failed_check = t.parts_failed_check.max(c.parts_failed_check);
            t.parts_checked = t.parts_checked.max(c.parts_checked);
        }
        t
    }
}

impl OssFs {
    pub fn stats_line(&self) -> String {
        let c = self.counters();
        format!(
            "{} part requests ({} retries, {} splits), {} bytes fetched, {} listings, {} HEADs, {} small-file GETs, {} opens ({} passthrough), {} reads ({} bytes served; {} hits, {} misses, {} direct), {} read errors, {} evictions, {} CRC-64 mismatches, {} cached parts checked ({} failed)",
            c.part_requests, c.part_retries, c.part_splits, c.bytes_fetched, c.listings, c.heads, c.small_gets, c.opens, c.passthrough_opens, c.reads, c.bytes_served, c.cache_hits, c.cache_misses, c.direct_reads, c.read_errors, c.evictions, c.crc_mismatches, c.parts_checked, c.parts_failed_check
        )
    }

    /// Every counter of the mount, for logs and `status`.
    pub fn counters(&self) -> MountCounters {
        let s = &self.stats;
        let e = self.cache.engine_stats();
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MountCounters {
            part_requests: l(&e.part_requests),
            part_retries: l(&e.part_retries),
            part_splits: l(&e.part_splits),
            bytes_fetched: l(&e.bytes_fetched),
            listings: l(&s.listings),
            heads: l(&s.heads),
            small_gets: l(&s.small_gets),
            opens: l(&s.opens),
            reads: l(&s.reads),
            bytes_served: l(&s.read_bytes),
            cache_hits: l(&s.cache_hits),
            cache_misses: l(&s.cache_misses),
            direct_reads: l(&s.direct_reads),
            passthrough_opens: l(&s.passthrough_opens),
            read_errors: l(&s.read_errors),
            evictions: l(&self.cache.stats().evictions),
            crc_mismatches: l(&e.crc_mismatches),
            parts_failed_check: l(&e.parts_failed_check),
            parts_checked: l(&e.parts_checked),
            listings_dropped_for_memory: self.listings_dropped_for_memory(),
        }
    }
}
