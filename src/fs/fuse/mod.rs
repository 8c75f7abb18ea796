//! The only place that speaks `fuser`: translates kernel requests into `OssFs` calls and
//! replies. Anything that may wait on the network (lookup, opendir, open, read) is moved into
//! a task with its reply, so the request loop never blocks and one slow object never stalls
//! `ls`, `stat` or reads of other files. When the kernel offers FUSE passthrough, complete
//! cache entries are handed to it, so their reads run at local-disk speed without a round trip
//! through this process. No policy lives here: `fs::passthrough` decides which opens the
//! kernel may read directly, and `errno` is the one place a `FsError` becomes an errno.

use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use super::passthrough::{OpenPlan, PassthroughTable};
use super::{Attr, FsError, Kind, OssFs};
use crate::store::StoreErrorKind;

mod session;
pub mod takeover;

pub use session::{mount, FuseTuning, Held, KernelMount, MountedSession, Target, Unmounter};

pub struct FuseAdapter {
    fs: Arc<OssFs>,
    rt: tokio::runtime::Handle,
    ttl: Duration,
    passthrough_wanted: bool,
    passthrough: Arc<AtomicBool>,
    backing: Arc<Mutex<PassthroughTable<BackingId>>>,
    pub(super) tuning: FuseTuning,
    /// Tells the kernel what it caches is stale (set once the session exists).
    pub(super) notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
}

impl FuseAdapter {
    pub fn new(fs: Arc<OssFs>, rt: tokio::runtime::Handle, passthrough: bool) -> FuseAdapter {
        let ttl = fs.config().metadata_ttl;
        // Handles an earlier server process of this connection opened (a takeover): the
        // kernel's passthrough rules count them (see `passthrough`).
        let mut table = PassthroughTable::default();
        for h in fs.inherited_handles() {
            table.inherit(h.fh, h.ino, h.backing);
        }
        FuseAdapter {
            fs,
            rt,
            ttl,
            passthrough_wanted: passthrough,
            passthrough: Arc::new(AtomicBool::new(false)),
            backing: Arc::new(Mutex::new(table)),
            tuning: FuseTuning::default(),
            notifier: Arc::default(),
        }
    }
}

/// Entries offered per readdir reply (a reply buffer holds fewer; the rest come next call).
const READDIR_BATCH: usize = 512;

fn to_file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: match a.kind {
            Kind::Dir => FileType::Directory,
            Kind::File => FileType::RegularFile,
        },
        perm: a.perm,
        nlink: if a.kind == Kind::Dir { 2 } else { 1 },
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 1 << 20,
        flags: 0,
    }
}

/// The one place a filesystem error becomes an errno.
fn errno(e: &FsError) -> Errno {
    match e {
        FsError::NotFound => Errno::ENOENT,
        FsError::NotADirectory => Errno::ENOTDIR,
        FsError::IsADirectory => Errno::EISDIR,
        FsError::BadHandle => Errno::EBADF,
        FsError::PassthroughBusy => Errno::EBUSY,
        FsError::Stale | FsError::UnknownInode(_) => Errno::ESTALE,
        FsError::Store { source, .. } => match source.kind {
            StoreErrorKind::NotFound => Errno::ENOENT,
            StoreErrorKind::AccessDenied => Errno::EACCES,
            _ => Errno::EIO,
        },
        FsError::Hydrate(e) if e.is_no_space() => Errno::ENOSPC,
        FsError::Hydrate(e) => match e.store_error().map(|s| s.kind) {
            Some(StoreErrorKind::AccessDenied) => Errno::EACCES,
            Some(StoreErrorKind::NotFound) => Errno::ENOENT,
            _ => Errno::EIO,
        },
        FsError::ObjectChanged
        | FsError::Cache(_)
        | FsError::NoCrc { .. }
        | FsError::Deadline(_) => Errno::EIO,
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(self.tuning.max_readahead);
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_background(self.tuning.max_background);
        // readdirplus: `ls -l` gets every entry's attributes with the listing, no lookups.
        let _ = config.add_capabilities(
            fuser::InitFlags::FUSE_DO_READDIRPLUS | fuser::InitFlags::FUSE_READDIRPLUS_AUTO,
        );
        if self.passthrough_wanted {
            let granted = config
                .add_capabilities(fuser::InitFlags::FUSE_PASSTHROUGH)
                .is_ok()
                && config.set_max_stack_depth(1).is_ok();
            self.passthrough.store(granted, Ordering::Relaxed);
            if granted {
                tracing::info!(
                    "FUSE passthrough on: complete files are read by the kernel directly"
                );
            } else {
                tracing::info!(
                    "this kernel offers no FUSE passthrough; every read goes through ossmount"
                );
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str().map(str::to_string) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let fs = self.fs.clone();
        let ttl = self.ttl;
        self.rt.spawn(async move {
            match fs.lookup(parent.0, &name).await {
                Ok(a) => reply.entry(&ttl, &to_file_attr(&a), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&self.ttl, &to_file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            reply.error(Errno::EROFS);
            return;
        }
        let fs = self.fs.clone();
        let passthrough = self.passthrough.load(Ordering::Relaxed);
        let backing = self.backing.clone();
        let notifier = self.notifier.clone();
        self.rt.spawn(async move {
            let o = match fs.open(ino.0).await {
                Ok(o) => o,
                Err(e) => return reply.error(errno(&e)),
            };
            // Another version than the kernel knew: its cached size is stale (a larger new
            // version would read short, a smaller one past its end) and goes before the
            // handle exists; the pages go with the open (no FOPEN_KEEP_CACHE).
            if o.version_changed {
                if let Some(n) = notifier.get() {
                    if let Err(e) = n.inval_inode(ino, -1, 0) {
                        tracing::debug!(
                            ino = ino.0,
                            "invalidating the inode's attributes failed: {e}"
                        );
                    }
                }
            }
            let mut table = backing.lock().unwrap();
            // Backing ids of an earlier server process nothing uses now: closed (a
            // `BackingId` closes its id when dropped).
            for raw in table.take_unadopted() {
                // SAFETY: the id was registered on this connection by the earlier process,
                // is closed nowhere else, and nothing holds it any more.
                drop(unsafe { reply.wrap_backing(raw) });
            }
            let file = o.complete_file.as_ref().filter(|_| passthrough);
            let mut plan = table.plan(ino.0, file.is_some());
            let mut created = None;
            if let (OpenPlan::CreateBacking, Some(file)) = (&plan, file) {
                plan = match reply.open_backing(&**file) {
                    Ok(id) if fs.journaling() => {
                        // Its number is journaled: a later process must reuse it.
                        let raw = id.into_raw();
                        created = Some(raw);
                        // SAFETY: just registered on this connection; owned from here on.
                        OpenPlan::Share(Arc::new(unsafe { reply.wrap_backing(raw) }))
                    }
                    Ok(id) => OpenPlan::Share(Arc::new(id)),
                    Err(e) => {
                        tracing::debug!("passthrough refused, serving reads: {e}");
                        table.fallback(ino.0)
                    }
                };
            }
            if let OpenPlan::Adopt(raw) = plan {
                // SAFETY: registered on this connection by the earlier process for this
                // inode; the table owns it from here on and closes it once, when the last
                // handle of the inode is released.
                let id = Arc::new(unsafe { reply.wrap_backing(raw) });
                table.adopt(ino.0, id.clone());
                created = Some(raw);
                plan = OpenPlan::Share(id);
            }
            match plan {
                OpenPlan::Share(id) => {
                    if let Some(raw) = created {
                        table.set_raw(ino.0, raw);
                    }
                    if let Some(raw) = table.raw_of(ino.0) {
                        fs.note_passthrough(o.fh, raw);
                    }
                    table.record_passthrough(o.fh, ino.0, id.clone());
                    drop(table);
                    fs.stats.passthrough_opens.fetch_add(1, Ordering::Relaxed);
                    // The kernel reads the backing file's own page cache here; it refuses
                    // FOPEN_KEEP_CACHE with passthrough.
                    return reply.opened_passthrough(FileHandle(o.fh), FopenFlags::empty(), &id);
                }
                OpenPlan::Busy => {
                    drop(table);
                    fs.release(o.fh);
                    return reply.error(errno(&FsError::PassthroughBusy));
                }
                OpenPlan::ServeDirect => {
                    // Beside an earlier process's passthrough open: the kernel allows only
                    // direct I/O (no page cache) next to it.
                    table.record_served_direct(o.fh);
                    drop(table);
                    return reply.opened(FileHandle(o.fh), FopenFlags::FOPEN_DIRECT_IO);
                }
                OpenPlan::Serve | OpenPlan::CreateBacking | OpenPlan::Adopt(_) => {
                    table.record_served(o.fh, ino.0)
                }
            }
            drop(table);
            let flags = if o.keep_cache {
                FopenFlags::FOPEN_KEEP_CACHE
            } else {
                FopenFlags::empty()
            };
            reply.opened(FileHandle(o.fh), flags)
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.read(fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.backing.lock().unwrap().release(fh.0);
        let _rt = self.rt.enter(); // release may hand work to the runtime
        self.fs.release(fh.0);
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        // Waits for the listing's pages: off the FUSE thread.
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.readdir_in(ino.0, fh.0, offset, READDIR_BATCH).await {
                Ok(entries) => {
                    for (next, e) in entries {
                        let kind = match e.kind {
                            Kind::Dir => FileType::Directory,
                            Kind::File => FileType::RegularFile,
                        };
                        if reply.add(INodeNo(e.ino), next, kind, &e.name) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: fuser::ReplyDirectoryPlus,
    ) {
        let (fs, ttl) = (self.fs.clone(), self.ttl);
        self.rt.spawn(async move {
            match fs.readdirplus_in(ino.0, fh.0, offset, READDIR_BATCH).await {
                Ok(entries) => {
                    for (next, e, attr) in entries {
                        if reply.add(
                            INodeNo(e.ino),
                            next,
                            &e.name,
                            &ttl,
                            &to_file_attr(&attr),
                            Generation(0),
                        ) {
                            break;
                        }
                        // The kernel now holds a reference, as after a lookup ("." and ".."
                        // aside).
                        if e.name != "." && e.name != ".." {
                            fs.remember(e.ino);
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // A read-only view with no meaningful capacity: report zero free space.
        reply.statfs(0, 0, 0, 0, 0, 1 << 20, 255, 1 << 20);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name.to_str().unwrap_or("");
        let value = self.fs.xattr(ino.0, name);
        match value {
            // No ACLs, no security labels: "not supported" (not "no such attribute") lets
            // tools stop asking — `ls -l` then makes no getxattr round trips per entry
            // (coreutils remembers the answer per device).
            None if name.starts_with("system.") || name.starts_with("security.") => {
                reply.error(Errno::ENOTSUP)
            }
            None => reply.error(Errno::NO_XATTR),
            Some(v) if size == 0 => reply.size(v.len() as u32),
            Some(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Some(v) => reply.data(&v),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let mut buf = Vec::new();
        for name in self.fs.xattr_names(ino.0) {
            buf.extend_from_slice(name.as_bytes());
            buf.push(0);
        }
        if size == 0 {
            reply.size(buf.len() as u32);
        } else if buf.len() > size as usize {
            reply.error(Errno::ERANGE);
        } else {
            reply.data(&buf);
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        if mask.contains(fuser::AccessFlags::W_OK) {
            reply.error(Errno::EROFS);
        } else {
            reply.ok();
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _np: INodeNo,
        _nn: &OsStr,
        _f: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _f: i32,
        reply: fuser::ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }
}
