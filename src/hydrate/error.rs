//! The engine's errors: each says which object, which part and what to do.

use std::path::PathBuf;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum HydrateError {
    #[error("{bucket}/{key} changed on the server while it was being fetched (it was ETag {etag}); its old bytes were not mixed with new ones")]
    ObjectChanged {
        bucket: String,
        key: String,
        etag: String,
    },
    #[error("CRC-64 mismatch for {bucket}/{key}: the server says {expected}, the fetched bytes give {actual}; the data was not used")]
    ChecksumMismatch {
        bucket: String,
        key: String,
        expected: u64,
        actual: u64,
    },
    #[error("{algorithm} mismatch for {bucket}/{key}: the server says {expected}, the fetched bytes give {actual}; the data was not used")]
    DigestMismatch {
        bucket: String,
        key: String,
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
    #[error("part {part} (bytes {start}-{end}) of {bucket}/{key} failed after {attempts} attempts: {source}")]
    Part {
        bucket: String,
        key: String,
        part: usize,
        start: u64,
        end: u64,
        attempts: u32,
        #[source]
        source: Box<StoreError>,
    },
    #[error("local file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("hydration of {bucket}/{key} was stopped")]
    Stopped { bucket: String, key: String },
    #[error("no room in the cache for part {part} of {bucket}/{key}: every other entry is open or the disk is full; raise --cache-size or free disk space")]
    NoSpace {
        bucket: String,
        key: String,
        part: usize,
    },
}

impl HydrateError {
    /// The store's error behind a part failure, for logs (code and request id).
    pub fn store_error(&self) -> Option<&StoreError> {
        match self {
            HydrateError::Part { source, .. } => Some(source),
            _ => None,
        }
    }

    /// The fetched bytes failed the whole-object CRC-64 or digest: none of them may be
    /// served.
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            HydrateError::ChecksumMismatch { .. } | HydrateError::DigestMismatch { .. }
        )
    }

    /// The disk (or the cache's capacity) had no room for the part.
    pub fn is_no_space(&self) -> bool {
        match self {
            HydrateError::NoSpace { .. } => true,
            HydrateError::Io { source, .. } => source.kind() == std::io::ErrorKind::StorageFull,
            _ => false,
        }
    }
}
