//! The survival journal of a mount: what the kernel may hold from this server process (inode
//! numbers, open file handles), written down so that a new server process taking over the
//! same kernel connection (the holder of issue 19 hands it the `/dev/fuse` descriptor) can
//! understand the requests the kernel keeps sending. Owns three files in a directory the
//! node gives (created 0700, files 0600; nothing secret goes in: names, keys, ETags, sizes,
//! dates and numbers, never credentials or URLs): `nodes`, `handles` and `generation`. Must
//! not know listings, the store or the kernel: `namespace` and `handles` decide what to write.
//!
//! **Only the process is survived, not the machine.** Records are written with plain
//! `pwrite`/`write` and never fsynced: bytes written reach the page cache before the call
//! returns, and the page cache survives a SIGKILL or an OOM kill of the writer. A reboot (or
//! a crash of the kernel) ends the FUSE connection itself, and with it everything the
//! journal describes, so paying for durability would buy nothing. Every record carries a
//! CRC-64 of its bytes and its own place, so a torn or garbage tail is never trusted.
//!
//! **Inode numbers are record offsets.** A node's number is the offset of its record in
//! `nodes` (the header takes the first 16 bytes, so no number meets the root's 1). Resolving
//! a number the new process does not know is then one `pread` at that offset: no index in
//! memory, however many names were journaled. The file only grows, and a resumed journal
//! appends from its length (past any torn tail), so numbers stay unique across server
//! generations. A record is written before the namespace shows its node, so before any
//! reply can carry the number; a page of a listing is one write. When a write fails (a full
//! disk), the file is extended to cover the numbers handed out anyway (a hole reads as
//! zeros and fails its check): a later generation never reuses them, and asking for them
//! gives `ESTALE` instead of another file.
//!
//! **File handles** are `generation << 44 | counter`: each server generation (counted in
//! `generation`) has its own range, so no handle the kernel holds from an earlier process,
//! file or directory, is ever issued again. `handles` holds a record per open (the handle,
//! its inode, the object version it reads), per passthrough backing id, and per release;
//! when no handle is open it is truncated to empty, so open/close churn never grows it.
//!
//! One server process writes a journal at a time: the `nodes` file is locked (`flock`) for
//! the life of the journal, and opening a journal another live process holds fails.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::crc64;
use crate::hydrate::ObjectIdentity;
use crate::store::WholeDigest;

use super::Kind;

/// Where a mount keeps its journal, and whether to take over an existing one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// A private directory of this one mount (created 0700 when missing).
    pub dir: PathBuf,
    /// Take over the journal a previous server process of the same kernel connection
    /// wrote: its inode numbers and open handles stay valid. `false` starts a new journal
    /// (a new kernel connection: nothing the old one knew can be asked for).
    pub resume: bool,
}

const NODES: &str = "nodes";
const HANDLES: &str = "handles";
const GENERATION: &str = "generation";
const NODES_MAGIC: &[u8; 8] = b"OSSMJNL1";
/// The `nodes` header: the magic and when the mount started (seconds since the epoch:
/// directories show it as their time, the same in every generation). Node numbers start here.
pub(super) const HEADER_LEN: u64 = 16;
/// Bits of a file handle that count within one generation.
const FH_GENERATION_SHIFT: u32 = 44;
/// The longest record accepted when reading (a name is at most 255 bytes, an OSS key at
/// most 1023, ETags and dates are short): anything longer is garbage.
const MAX_RECORD: usize = 8192;

const TAG_DIR: u8 = 1;
const TAG_FILE: u8 = 2;
const TAG_OPEN: u8 = 3;
const TAG_BACKING: u8 = 4;
const TAG_CLOSE: u8 = 5;
/// The kinds of an open handle's whole-object digest.
const DIGEST_CRC64NVME: u8 = 1;
const DIGEST_MD5: u8 = 2;

/// The version of a file a listing or HEAD showed when its node was journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Seen<'a> {
    pub(super) size: u64,
    pub(super) mtime: SystemTime,
    pub(super) etag: &'a str,
}

/// A node as its record has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NodeRecord {
    pub(super) ino: u64,
    pub(super) parent: u64,
    pub(super) kind: Kind,
    pub(super) name: String,
    pub(super) size: u64,
    pub(super) mtime: SystemTime,
    pub(super) etag: String,
}

/// A handle the previous process opened and had not released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HandleRecord {
    pub(super) fh: u64,
    pub(super) ino: u64,
    pub(super) identity: ObjectIdentity,
    /// The kernel's passthrough backing id the handle was opened with, if any.
    pub(super) backing: Option<u32>,
}

/// The append side of `nodes`, kept under the namespace's lock (numbers are handed out in
/// the order records are placed).
pub(super) struct NodeLog {
    file: File,
    /// Where the next record goes: the next node number.
    end: u64,
    /// Records placed but not yet written (a listing page is written in one call).
    pending: Vec<u8>,
    /// Numbers placed in `pending` are written by `flush` (a batch), else at once.
    batching: bool,
    warned: bool,
    /// The names earlier generations numbered (see `Earlier`): a name the kernel may know
    /// keeps its number in this one.
    earlier: Earlier,
}

/// The nodes earlier server processes of this connection numbered, by name: 16 bytes a
/// node (a hash of parent, kind and name, and the number), sorted; a match is confirmed by
/// reading its record. Without it a name listed again after a takeover would get a new
/// number, and the kernel would see the file it holds replaced (its cached pages dropped,
/// `stat` showing another inode).
#[derive(Default)]
struct Earlier {
    by_name: Vec<(u64, u64)>,
}

fn name_hash(parent: u64, kind: Kind, name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (parent, kind == Kind::Dir, name).hash(&mut h);
    h.finish()
}

impl Earlier {
    /// Reads every whole record of `nodes` up to the first that fails its check.
    fn read(nodes: &File, len: u64) -> Earlier {
        let mut by_name = Vec::new();
        let mut reader = std::io::BufReader::with_capacity(1 << 20, nodes);
        let mut at = HEADER_LEN;
        if std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(at)).is_err() {
            return Earlier::default();
        }
        let mut buf = Vec::new();
        while at + 4 <= len {
            let mut head = [0u8; 4];
            if std::io::Read::read_exact(&mut reader, &mut head).is_err() {
                break;
            }
            let n = u32::from_le_bytes(head) as usize;
            if !(4 + 1 + 16 + 8..=MAX_RECORD).contains(&n) {
                break;
            }
            buf.clear();
            buf.extend_from_slice(&head);
            buf.resize(n, 0);
            if std::io::Read::read_exact(&mut reader, &mut buf[4..]).is_err() {
                break;
            }
            match decode_node(&buf) {
                Some(rec) if rec.ino == at => {
                    by_name.push((name_hash(rec.parent, rec.kind, &rec.name), rec.ino))
                }
                _ => break,
            }
            at += n as u64;
        }
        by_name.sort_unstable();
        by_name.shrink_to_fit();
        Earlier { by_name }
    }
}

impl NodeLog {
    /// Places the record of a new node and returns its number; written at once unless a
    /// batch is open (then by `flush`, which must come before the namespace lock is let go).
    pub(super) fn append(
        &mut self,
        parent: u64,
        kind: Kind,
        name: &str,
        seen: Option<&Seen<'_>>,
    ) -> u64 {
        let ino = self.end + self.pending.len() as u64;
        encode_node(&mut self.pending, ino, parent, kind, name, seen);
        if !self.batching {
            self.flush();
        }
        ino
    }

    pub(super) fn begin_batch(&mut self) {
        self.batching = true;
    }

    /// Writes what was placed. Runs under the namespace lock: one `pwrite` to the page cache.
    pub(super) fn flush(&mut self) {
        self.batching = false;
        if self.pending.is_empty() {
            return;
        }
        let new_end = self.end + self.pending.len() as u64;
        if let Err(e) = self.file.write_all_at(&self.pending, self.end) {
            if !self.warned {
                self.warned = true;
                tracing::warn!("writing the mount's journal failed ({e}): names listed now will not survive a restart of the server");
            }
            // Numbers already handed out must never be handed out again by a later
            // generation, which starts at the file's length: extend it (a hole, no blocks).
            if let Err(e) = self.file.set_len(new_end) {
                tracing::warn!("extending the mount's journal failed: {e}");
            }
        }
        self.end = new_end;
        self.pending.clear();
    }

    /// The newest number an earlier generation gave `name` in `parent` as `kind`, if any.
    pub(super) fn earlier(&self, parent: u64, kind: Kind, name: &str) -> Option<u64> {
        let h = name_hash(parent, kind, name);
        let by_name = &self.earlier.by_name;
        let from = by_name.partition_point(|&(k, _)| k < h);
        let to = by_name.partition_point(|&(k, _)| k <= h);
        by_name[from..to]
            .iter()
            .rev()
            .map(|&(_, ino)| ino)
            .find(|&ino| {
                read_node(&self.file, ino)
                    .is_some_and(|r| r.parent == parent && r.kind == kind && r.name == name)
            })
    }

    #[cfg(test)]
    pub(super) fn end(&self) -> u64 {
        self.end
    }
}

/// The journal of one mount: the read side of `nodes`, `handles`, and this generation.
pub(super) struct Journal {
    /// A second descriptor of `nodes` (holding the lock) for resolving numbers by `pread`.
    nodes: File,
    handles: Mutex<HandleLog>,
    generation: u64,
    resumed: bool,
    started: SystemTime,
    dir: PathBuf,
}

struct HandleLog {
    file: File,
    /// Handles open per the file (written, not released).
    open: BTreeMap<u64, ()>,
    warned: bool,
}

impl Journal {
    /// Opens (or starts) the journal in `cfg.dir`. With `resume`, the previous generation's
    /// nodes stay resolvable and its open handles are returned; without, any old journal
    /// there is discarded. Returns the journal, the append side of `nodes` (for the
    /// namespace) and the handles still open.
    pub(super) fn open(
        cfg: &JournalConfig,
    ) -> std::io::Result<(Journal, NodeLog, Vec<HandleRecord>)> {
        let dir = &cfg.dir;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| annotate(dir, "cannot create the journal directory", e))?;
        let open_rw = |name: &str| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(dir.join(name))
                .map_err(|e| annotate(&dir.join(name), "cannot open", e))
        };
        let nodes = open_rw(NODES)?;
        // One writer at a time: a live server holding it means this is no takeover.
        if unsafe { libc::flock(nodes.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(std::io::Error::other(format!(
                "{}: the journal is in use by another running server of this mount; stop it first",
                dir.display()
            )));
        }
        let mut resumed = false;
        let len = nodes.metadata()?.len();
        if cfg.resume && len > 0 {
            let mut magic = [0u8; 8];
            nodes.read_exact_at(&mut magic, 0)?;
            if &magic != NODES_MAGIC {
                return Err(std::io::Error::other(format!(
                    "{}: not an ossmount journal (or an unknown version); remove it, or mount without resuming",
                    dir.join(NODES).display()
                )));
            }
            resumed = true;
        }
        let previous = if resumed { read_generation(dir) } else { 0 };
        let started = if resumed {
            let mut secs = [0u8; 8];
            nodes.read_exact_at(&mut secs, 8)?;
            UNIX_EPOCH + Duration::from_secs(u64::from_le_bytes(secs))
        } else {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            nodes.set_len(0)?;
            let mut header = NODES_MAGIC.to_vec();
            header.extend_from_slice(&secs.to_le_bytes());
            nodes.write_all_at(&header, 0)?;
            UNIX_EPOCH + Duration::from_secs(secs)
        };
        let generation = previous + 1;
        write_generation(dir, generation)?;
        // Past any torn tail and any hole: no number handed out before is handed out again.
        let end = nodes.metadata()?.len().max(HEADER_LEN);
        let inherited = if resumed {
            match std::fs::read(dir.join(HANDLES)) {
                Ok(bytes) => open_handles(&bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(annotate(&dir.join(HANDLES), "cannot read", e)),
            }
        } else {
            Vec::new()
        };
        // The handles file starts over holding just the handles still open (written to a
        // temporary file and renamed, so a death now leaves the old or the new, whole).
        let mut fresh = Vec::new();
        for h in &inherited {
            encode_open(&mut fresh, h.fh, h.ino, &h.identity);
            if let Some(id) = h.backing {
                encode_backing(&mut fresh, h.fh, id);
            }
        }
        replace_file(dir, HANDLES, &fresh)?;
        let handles = OpenOptions::new()
            .append(true)
            .open(dir.join(HANDLES))
            .map_err(|e| annotate(&dir.join(HANDLES), "cannot open", e))?;
        let earlier = if resumed {
            Earlier::read(&nodes, end)
        } else {
            Earlier::default()
        };
        let log = NodeLog {
            file: nodes.try_clone()?,
            end,
            pending: Vec::new(),
            batching: false,
            warned: false,
            earlier,
        };
        let journal = Journal {
            nodes,
            handles: Mutex::new(HandleLog {
                file: handles,
                open: inherited.iter().map(|h| (h.fh, ())).collect(),
                warned: false,
            }),
            generation,
            resumed,
            started,
            dir: dir.clone(),
        };
        Ok((journal, log, inherited))
    }

    /// Whether this journal took over an earlier generation's.
    pub(super) fn resumed(&self) -> bool {
        self.resumed
    }

    /// When the mount (its first generation) started, to the second.
    pub(super) fn started(&self) -> SystemTime {
        self.started
    }

    /// This server process's generation (1 for a new journal).
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// The first file handle this generation issues.
    pub(super) fn first_fh(&self) -> u64 {
        (self.generation << FH_GENERATION_SHIFT) | 1
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The record of node `ino`, if one was written there whole.
    pub(super) fn node(&self, ino: u64) -> Option<NodeRecord> {
        read_node(&self.nodes, ino)
    }

    /// A handle was opened (before the reply that gives it to the kernel).
    pub(super) fn opened(&self, fh: u64, ino: u64, identity: &ObjectIdentity) {
        let mut buf = Vec::new();
        encode_open(&mut buf, fh, ino, identity);
        let mut log = self.handles.lock().unwrap();
        log.open.insert(fh, ());
        log.write(&buf);
    }

    /// The kernel reads handle `fh` through passthrough backing id `backing`.
    pub(super) fn backing(&self, fh: u64, backing: u32) {
        let mut buf = Vec::new();
        encode_backing(&mut buf, fh, backing);
        self.handles.lock().unwrap().write(&buf);
    }

    /// Handle `fh` was released; with none open, the file starts over empty.
    pub(super) fn closed(&self, fh: u64) {
        let mut log = self.handles.lock().unwrap();
        if log.open.remove(&fh).is_none() {
            return;
        }
        if log.open.is_empty() {
            if let Err(e) = log.file.set_len(0) {
                tracing::warn!("truncating the mount's handle journal failed: {e}");
            }
            return;
        }
        let mut buf = Vec::new();
        encode_close(&mut buf, fh);
        log.write(&buf);
    }

    #[cfg(test)]
    pub(super) fn handles_len(&self) -> u64 {
        std::fs::metadata(self.dir.join(HANDLES))
            .map(|m| m.len())
            .unwrap_or(0)
    }
}

impl HandleLog {
    fn write(&mut self, buf: &[u8]) {
        if let Err(e) = self.file.write_all(buf) {
            if !self.warned {
                self.warned = true;
                tracing::warn!("writing the mount's handle journal failed ({e}): files open now will fail to read after a restart of the server");
            }
        }
    }
}

/// The record of node `ino` in `nodes`, if one was written there whole.
fn read_node(nodes: &File, ino: u64) -> Option<NodeRecord> {
    if ino < HEADER_LEN {
        return None;
    }
    let mut len = [0u8; 4];
    nodes.read_exact_at(&mut len, ino).ok()?;
    let len = u32::from_le_bytes(len) as usize;
    if !(4 + 1 + 16 + 8..=MAX_RECORD).contains(&len) {
        return None;
    }
    let mut buf = vec![0u8; len];
    nodes.read_exact_at(&mut buf, ino).ok()?;
    let rec = decode_node(&buf)?;
    (rec.ino == ino).then_some(rec)
}

fn annotate(path: &Path, what: &str, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

fn read_generation(dir: &Path) -> u64 {
    let mut bytes = Vec::new();
    let read = File::open(dir.join(GENERATION)).and_then(|mut f| f.read_to_end(&mut bytes));
    if read.is_err() || bytes.len() != 16 {
        return 0;
    }
    let (value, crc) = bytes.split_at(8);
    if crc64::checksum(value).to_le_bytes() != crc {
        return 0;
    }
    u64::from_le_bytes(value.try_into().expect("8 bytes"))
}

/// Written to a temporary file and renamed: whole or not at all, whatever instant the
/// process dies at.
fn write_generation(dir: &Path, generation: u64) -> std::io::Result<()> {
    let mut bytes = generation.to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc64::checksum(&generation.to_le_bytes()).to_le_bytes());
    replace_file(dir, GENERATION, &bytes)
}

/// Replaces `dir/name` with `bytes` (0600): written whole to a temporary file, then renamed,
/// so a death leaves the old file or the new one, never half of one.
fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
    }
    std::fs::rename(&tmp, dir.join(name))
}

// Records: u32 length (of the whole record), u8 tag, the fields, and a CRC-64 of everything
// before it. Little-endian; strings as u16 length and bytes.

fn put_str(buf: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    buf.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    buf.extend_from_slice(bytes);
}

fn put_time(buf: &mut Vec<u8>, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    buf.extend_from_slice(&d.as_secs().to_le_bytes());
    buf.extend_from_slice(&d.subsec_nanos().to_le_bytes());
}

/// Opens a record at the end of `buf`; `seal` fills its length and appends its checksum.
fn begin(buf: &mut Vec<u8>, tag: u8) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 4]);
    buf.push(tag);
    start
}

fn seal(buf: &mut Vec<u8>, start: usize) {
    let len = (buf.len() - start + 8) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let crc = crc64::checksum(&buf[start..]);
    buf.extend_from_slice(&crc.to_le_bytes());
}

fn encode_node(
    buf: &mut Vec<u8>,
    ino: u64,
    parent: u64,
    kind: Kind,
    name: &str,
    seen: Option<&Seen<'_>>,
) {
    let tag = if kind == Kind::Dir { TAG_DIR } else { TAG_FILE };
    let start = begin(buf, tag);
    buf.extend_from_slice(&ino.to_le_bytes());
    buf.extend_from_slice(&parent.to_le_bytes());
    put_str(buf, name);
    if kind == Kind::File {
        let unseen = Seen {
            size: 0,
            mtime: UNIX_EPOCH,
            etag: "",
        };
        let seen = seen.unwrap_or(&unseen);
        buf.extend_from_slice(&seen.size.to_le_bytes());
        put_time(buf, seen.mtime);
        put_str(buf, seen.etag);
    }
    seal(buf, start);
}

fn encode_open(buf: &mut Vec<u8>, fh: u64, ino: u64, id: &ObjectIdentity) {
    let start = begin(buf, TAG_OPEN);
    buf.extend_from_slice(&fh.to_le_bytes());
    buf.extend_from_slice(&ino.to_le_bytes());
    put_str(buf, &id.bucket);
    put_str(buf, &id.key);
    buf.extend_from_slice(&id.size.to_le_bytes());
    put_str(buf, &id.etag);
    put_str(buf, &id.last_modified);
    match id.crc64 {
        Some(crc) => {
            buf.push(1);
            buf.extend_from_slice(&crc.to_le_bytes());
        }
        None => buf.push(0),
    }
    // Optional (a record of an earlier version ends before it).
    match id.digest {
        Some(WholeDigest::Crc64Nvme(crc)) => {
            buf.push(DIGEST_CRC64NVME);
            buf.extend_from_slice(&crc.to_le_bytes());
        }
        Some(WholeDigest::Md5(md5)) => {
            buf.push(DIGEST_MD5);
            buf.extend_from_slice(&md5);
        }
        None => {}
    }
    seal(buf, start);
}

fn encode_backing(buf: &mut Vec<u8>, fh: u64, backing: u32) {
    let start = begin(buf, TAG_BACKING);
    buf.extend_from_slice(&fh.to_le_bytes());
    buf.extend_from_slice(&backing.to_le_bytes());
    seal(buf, start);
}

fn encode_close(buf: &mut Vec<u8>, fh: u64) {
    let start = begin(buf, TAG_CLOSE);
    buf.extend_from_slice(&fh.to_le_bytes());
    seal(buf, start);
}

/// Reads fields of one checked record.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<String> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().ok()?) as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
    fn time(&mut self) -> Option<SystemTime> {
        let secs = self.u64()?;
        let nanos = self.u32()?;
        UNIX_EPOCH.checked_add(Duration::new(secs, nanos.min(999_999_999)))
    }
}

/// The checked record at the start of `bytes`: its tag, its fields, and its length.
fn checked(bytes: &[u8]) -> Option<(u8, Fields<'_>, usize)> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    if !(4 + 1 + 8..=MAX_RECORD).contains(&len) || bytes.len() < len {
        return None;
    }
    let (body, crc) = bytes[..len].split_at(len - 8);
    if crc64::checksum(body).to_le_bytes() != crc {
        return None;
    }
    Some((body[4], Fields { rest: &body[5..] }, len))
}

fn decode_node(bytes: &[u8]) -> Option<NodeRecord> {
    let (tag, mut f, _) = checked(bytes)?;
    let kind = match tag {
        TAG_DIR => Kind::Dir,
        TAG_FILE => Kind::File,
        _ => return None,
    };
    let ino = f.u64()?;
    let parent = f.u64()?;
    let name = f.str()?;
    let (size, mtime, etag) = if kind == Kind::File {
        (f.u64()?, f.time()?, f.str()?)
    } else {
        (0, UNIX_EPOCH, String::new())
    };
    Some(NodeRecord {
        ino,
        parent,
        kind,
        name,
        size,
        mtime,
        etag,
    })
}

/// The handles a `handles` file leaves open, in the order they were opened; reading stops
/// at the first record that fails its check (a torn or garbage tail).
fn open_handles(mut bytes: &[u8]) -> Vec<HandleRecord> {
    let mut open: BTreeMap<u64, HandleRecord> = BTreeMap::new();
    while let Some((tag, mut f, len)) = checked(bytes) {
        bytes = &bytes[len..];
        let Some(fh) = f.u64() else { break };
        match tag {
            TAG_OPEN => {
                let record = (|| {
                    let ino = f.u64()?;
                    let bucket = f.str()?;
                    let key = f.str()?;
                    let size = f.u64()?;
                    let etag = f.str()?;
                    let last_modified = f.str()?;
                    let crc64 = match f.u8()? {
                        1 => Some(f.u64()?),
                        _ => None,
                    };
                    let digest = match f.u8() {
                        Some(DIGEST_CRC64NVME) => Some(WholeDigest::Crc64Nvme(f.u64()?)),
                        Some(DIGEST_MD5) => Some(WholeDigest::Md5(f.take(16)?.try_into().ok()?)),
                        _ => None,
                    };
                    Some(HandleRecord {
                        fh,
                        ino,
                        identity: ObjectIdentity {
                            bucket,
                            key,
                            size,
                            etag,
                            last_modified,
                            crc64,
                            digest,
                        },
                        backing: None,
                    })
                })();
                let Some(record) = record else { break };
                open.insert(fh, record);
            }
            TAG_BACKING => {
                let Some(id) = f.u32() else { break };
                if let Some(h) = open.get_mut(&fh) {
                    h.backing = Some(id);
                }
            }
            TAG_CLOSE => {
                open.remove(&fh);
            }
            _ => break,
        }
    }
    open.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(key: &str, etag: &str) -> ObjectIdentity {
        ObjectIdentity {
            bucket: "b".into(),
            key: key.into(),
            size: 1234,
            etag: etag.into(),
            last_modified: "Tue, 01 Dec 2026 10:00:00 GMT".into(),
            crc64: Some(42),
            digest: None,
        }
    }

    fn cfg(dir: &Path, resume: bool) -> JournalConfig {
        JournalConfig {
            dir: dir.join("j"),
            resume,
        }
    }

    #[test]
    fn nodes_and_handles_come_back_as_written() {
        let tmp = tempfile::tempdir().unwrap();
        let (j, mut log, inherited) = Journal::open(&cfg(tmp.path(), true)).unwrap();
        assert!(inherited.is_empty() && !j.resumed());
        let mtime = UNIX_EPOCH + Duration::new(1_700_000_000, 123);
        let a = log.append(1, Kind::Dir, "a", None);
        log.begin_batch();
        let b = log.append(a, Kind::Dir, "b", None);
        let c = log.append(
            b,
            Kind::File,
            "c.bin",
            Some(&Seen {
                size: 99,
                mtime,
                etag: "\"E1\"",
            }),
        );
        // A batch is written only by its flush.
        assert_eq!(j.node(c), None);
        log.flush();
        assert_eq!(a, HEADER_LEN);
        let fh = j.first_fh();
        j.opened(fh, c, &id("a/b/c.bin", "\"E1\""));
        j.backing(fh, 7);
        j.opened(fh + 1, c, &id("a/b/c.bin", "\"E1\""));
        j.closed(fh + 1);
        let generation = j.generation();
        // The process dies: its descriptors close (the journal has no cleanup to skip).
        drop((j, log));

        let (j, log, inherited) = Journal::open(&cfg(tmp.path(), true)).unwrap();
        assert!(j.resumed());
        assert_eq!(j.generation(), generation + 1);
        assert!(
            j.first_fh() > fh + 1,
            "handle numbers continue past the old ones"
        );
        let rec = j.node(c).unwrap();
        assert_eq!(
            (rec.parent, rec.kind, rec.name.as_str(), rec.size, rec.mtime),
            (b, Kind::File, "c.bin", 99, mtime)
        );
        assert_eq!(rec.etag, "\"E1\"");
        assert_eq!(j.node(a).unwrap().name, "a");
        assert_eq!(j.node(b).unwrap().parent, a);
        assert_eq!(j.node(a + 1), None, "not a record's start");
        assert_eq!(j.node(1), None);
        let mut log = log;
        let next = log.append(1, Kind::Dir, "new", None);
        assert!(
            next > c,
            "a number of the new generation ({next}) reuses an old one"
        );
        assert_eq!(j.node(next).unwrap().name, "new");
        assert_eq!(
            inherited,
            vec![HandleRecord {
                fh,
                ino: c,
                identity: id("a/b/c.bin", "\"E1\""),
                backing: Some(7),
            }]
        );
    }

    /// An open handle's whole-object digest (S3) comes back with it; a record without one (an
    /// OSS object, or one an earlier version wrote) reads as none.
    #[test]
    fn an_open_handles_digest_comes_back_with_it() {
        let with = |digest| {
            let mut id = id("k", "\"E\"");
            id.crc64 = None;
            id.digest = digest;
            id
        };
        let ids = [
            with(Some(WholeDigest::Md5(*b"0123456789abcdef"))),
            with(Some(WholeDigest::Crc64Nvme(0xae8b_1486_0a79_9888))),
            with(None),
            id("k", "\"E\""),
        ];
        let mut buf = Vec::new();
        for (fh, id) in ids.iter().enumerate() {
            encode_open(&mut buf, fh as u64, 10 + fh as u64, id);
        }
        let back = open_handles(&buf);
        let mut got: Vec<_> = back.iter().map(|h| (h.fh, h.identity.clone())).collect();
        got.sort_by_key(|(fh, _)| *fh);
        let want: Vec<_> = ids
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, id)| (i as u64, id))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_torn_or_garbage_tail_is_ignored_and_numbers_continue_past_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (j, mut log, _) = Journal::open(&cfg(tmp.path(), false)).unwrap();
        let a = log.append(1, Kind::Dir, "a", None);
        let b = log.append(a, Kind::Dir, "bb", None);
        let fh = j.first_fh();
        j.opened(fh, a, &id("x", "\"1\""));
        j.opened(fh + 1, b, &id("y", "\"2\""));
        let end = log.end();
        drop((j, log));
        let dir = tmp.path().join("j");
        // `b`'s record torn in the middle, then garbage after it.
        let nodes = OpenOptions::new()
            .write(true)
            .open(dir.join(NODES))
            .unwrap();
        nodes.set_len(end - 5).unwrap();
        nodes.write_all_at(&[0xAB; 37], end - 5).unwrap();
        let handles_len = std::fs::metadata(dir.join(HANDLES)).unwrap().len();
        let handles = OpenOptions::new()
            .write(true)
            .open(dir.join(HANDLES))
            .unwrap();
        handles.set_len(handles_len - 3).unwrap();
        let mut garbage = OpenOptions::new()
            .append(true)
            .open(dir.join(HANDLES))
            .unwrap();
        garbage
            .write_all(b"\x30\0\0\0\x03garbage that is not a record")
            .unwrap();

        let (j, mut log, inherited) = Journal::open(&cfg(tmp.path(), true)).unwrap();
        assert_eq!(j.node(a).unwrap().name, "a");
        assert_eq!(j.node(b), None, "a torn record is never trusted");
        assert_eq!(inherited.len(), 1, "the torn open is not inherited");
        assert_eq!(inherited[0].fh, fh);
        let c = log.append(1, Kind::Dir, "c", None);
        assert!(c >= end - 5 + 37, "a new number ({c}) reuses a torn one");
        assert_eq!(j.node(c).unwrap().name, "c");
    }

    #[test]
    fn the_handle_journal_starts_over_when_no_handle_is_open() {
        let tmp = tempfile::tempdir().unwrap();
        let (j, _log, _) = Journal::open(&cfg(tmp.path(), false)).unwrap();
        let fh = j.first_fh();
        for round in 0..1000 {
            j.opened(fh + 2 * round, 20, &id("k", "\"e\""));
            j.opened(fh + 2 * round + 1, 20, &id("k", "\"e\""));
            j.closed(fh + 2 * round);
            assert!(j.handles_len() > 0);
            j.closed(fh + 2 * round + 1);
            assert_eq!(j.handles_len(), 0, "round {round}");
        }
        j.closed(fh); // twice: nothing
        assert_eq!(j.handles_len(), 0);
    }

    #[test]
    fn a_fresh_journal_forgets_the_old_one_and_a_live_one_cannot_be_taken() {
        let tmp = tempfile::tempdir().unwrap();
        let (j, mut log, _) = Journal::open(&cfg(tmp.path(), false)).unwrap();
        let a = log.append(1, Kind::Dir, "a", None);
        j.opened(j.first_fh(), a, &id("k", "\"e\""));
        let err = Journal::open(&cfg(tmp.path(), true)).err().unwrap();
        assert!(err.to_string().contains("in use"), "{err}");
        drop((j, log));
        let (j, _, inherited) = Journal::open(&cfg(tmp.path(), false)).unwrap();
        assert!(inherited.is_empty() && j.node(a).is_none() && !j.resumed());
        let mode = |n: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(tmp.path().join("j").join(n))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(NODES), 0o600);
        assert_eq!(mode(HANDLES), 0o600);
        assert_eq!(mode(GENERATION), 0o600);
        assert_eq!(mode(""), 0o700);
    }
}
