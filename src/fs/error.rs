//! What can go wrong in the filesystem, typed, so a reader of the code (and of the log) sees
//! the cause; `fs::fuse` alone turns it into an errno. Must not choose errno values itself.

use std::sync::Arc;

use crate::hydrate::HydrateError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("no such open handle")]
    BadHandle,
    /// The store failed (after its retries): listing, HEAD or a direct read.
    #[error("{context}: {source}")]
    Store {
        context: String,
        #[source]
        source: StoreError,
    },
    /// The object changed on the server while a handle was reading it.
    #[error("the object changed while it was being read")]
    ObjectChanged,
    /// The parts a read needs could not be fetched.
    #[error("{0}")]
    Hydrate(Arc<HydrateError>),
    /// The cache entry could not be opened or read.
    #[error("cache: {0}")]
    Cache(String),
    /// A new version was opened while an old one is open through the kernel's passthrough.
    #[error("an older version of this file is open through passthrough")]
    PassthroughBusy,
    /// The file has a new version under a new inode number: the kernel looks it up again.
    #[error("the object has a new version; look it up again")]
    Stale,
    /// An inode number neither this server process nor the mount's journal knows (the
    /// kernel holds it from an earlier process whose journal did not keep it).
    #[error("inode {0} is unknown to this server and to the mount's journal; look it up again")]
    UnknownInode(u64),
    /// `--require-crc` and nothing to verify the object by.
    #[error("{bucket}/{key}: {why}, and --require-crc refuses objects that cannot be verified")]
    NoCrc {
        bucket: String,
        key: String,
        why: &'static str,
    },
    /// A read waited longer than `--read-deadline`.
    #[error("the read waited longer than its deadline ({0:?}) for its bytes")]
    Deadline(std::time::Duration),
}

impl FsError {
    pub(crate) fn store(context: impl Into<String>, source: StoreError) -> FsError {
        let context = context.into();
        tracing::warn!(
            code = source.code().unwrap_or(""),
            request_id = source.request_id().unwrap_or(""),
            "{context}: {source}"
        );
        FsError::Store { context, source }
    }
}
