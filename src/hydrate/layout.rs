//! Part layout and object identity: how an object of `size` bytes splits into parts of
//! PartSize, which parts hold a byte range, and the one version (size, ETag, Last-Modified,
//! CRC-64 or whole-object digest) every part request is pinned to. Pure: no I/O.

use std::ops::Range;

use crate::store::{ObjectMeta, WholeDigest};

/// The largest part size accepted (the object-store limit for one part).
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// Refuses a PartSize the store cannot serve, with the flag to change.
pub fn validate_part_size(part_size: u64) -> Result<(), String> {
    if part_size == 0 || part_size > MAX_PART_SIZE {
        return Err(format!(
            "part size {part_size} is out of range: use 1 byte to 5 GiB (e.g. --part-size 8MiB)"
        ));
    }
    Ok(())
}

/// Refuses a ParallelThreadCount that cannot work, with the flag to change.
pub fn validate_threads(threads: usize) -> Result<(), String> {
    if threads == 0 || threads > 256 {
        return Err(format!(
            "thread count {threads} is out of range: use 1 to 256 (e.g. --threads 3)"
        ));
    }
    Ok(())
}

/// One version of one object: what a checkpoint and every part request are pinned to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectIdentity {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub last_modified: String,
    pub crc64: Option<u64>,
    /// A whole-object checksum the parts' CRC-64s cannot be folded into (S3), checked by
    /// reading the object back once every byte is in.
    pub digest: Option<WholeDigest>,
}

impl ObjectIdentity {
    pub fn from_meta(bucket: &str, key: &str, meta: &ObjectMeta) -> ObjectIdentity {
        ObjectIdentity {
            bucket: bucket.into(),
            key: key.into(),
            size: meta.size,
            etag: meta.etag.clone(),
            last_modified: meta.last_modified.clone(),
            crc64: meta.crc64,
            digest: meta.digest,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartLayout {
    pub size: u64,
    pub part_size: u64,
}

impl PartLayout {
    pub fn new(size: u64, part_size: u64) -> PartLayout {
        PartLayout {
            size,
            part_size: part_size.max(1),
        }
    }

    pub fn count(&self) -> usize {
        self.size.div_ceil(self.part_size) as usize
    }

    pub fn range(&self, part: usize) -> Range<u64> {
        let start = part as u64 * self.part_size;
        start..(start + self.part_size).min(self.size)
    }

    /// The parts that hold any byte of `range` (clamped to the object).
    pub fn parts_for(&self, range: Range<u64>) -> Range<usize> {
        let end = range.end.min(self.size);
        if range.start >= end {
            return 0..0;
        }
        (range.start / self.part_size) as usize..end.div_ceil(self.part_size) as usize
    }

    pub fn len_of(&self, part: usize) -> u64 {
        let r = self.range(part);
        r.end - r.start
    }

    /// Bytes in the parts of `parts` (a set of part numbers).
    pub fn bytes_of(&self, parts: &fixedbitset::FixedBitSet) -> u64 {
        parts
            .ones()
            .filter(|&p| p < self.count())
            .map(|p| self.len_of(p))
            .sum()
    }

    /// The whole object's CRC-64 from every part's, in order: the one place the parts'
    /// CRCs are folded into the object's.
    pub fn combined_crc(&self, crc_of_part: impl Fn(usize) -> u64) -> u64 {
        (0..self.count()).fold(0u64, |acc, p| {
            crate::crc64::combine(acc, crc_of_part(p), self.len_of(p))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_covers_every_byte_once() {
        let l = PartLayout::new(25, 10);
        assert_eq!(l.count(), 3);
        assert_eq!(l.range(2), 20..25);
        assert_eq!(l.parts_for(0..1), 0..1);
        assert_eq!(l.parts_for(9..11), 0..2);
        assert_eq!(l.parts_for(20..100), 2..3);
        assert_eq!(l.parts_for(25..30), 0..0);
        assert_eq!(PartLayout::new(0, 10).count(), 0);
        assert_eq!(PartLayout::new(30, 10).count(), 3);
    }
}
