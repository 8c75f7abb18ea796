//! The engine's file I/O behind one narrow seam: files written at offsets, read back, and
//! made durable with fdatasync (a hydration's data file, a checkpoint's records). `Local` is
//! the real thing. `PowerCut` is for tests: it keeps what each file held at its last
//! completed sync and, at a chosen I/O operation, cuts the power: every write no completed
//! sync covered is dropped (or, at random, kept, as a disk may keep some), and nothing after
//! the cut reaches a file. A SIGKILL keeps the page cache; this does not, so a durability
//! claim can be tested. Must not know parts, records or objects.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One open file of the engine.
pub trait EngineFile: Send + Sync {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// `bufs` one after another from `offset`, as one write would: a stream's chunks
    /// written where they arrived, without first copying them into one buffer.
    fn write_all_vectored_at(&self, bufs: &[bytes::Bytes], offset: u64) -> io::Result<()> {
        let mut at = offset;
        for b in bufs {
            self.write_at(b, at)?;
            at += b.len() as u64;
        }
        Ok(())
    }
    /// Fills `buf` from `offset` (an error if the file ends first).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// `len` bytes from `offset` into a new buffer.
    fn read_vec(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        self.read_at(&mut buf, offset)?;
        Ok(buf)
    }
    fn sync_data(&self) -> io::Result<()>;
    /// The file itself, for the kernel to read directly (passthrough); `None` when the
    /// bytes must go through the engine.
    fn file(&self) -> Option<Arc<std::fs::File>>;
}

/// Opens the engine's files.
pub trait Storage: Send + Sync {
    /// Opens `path` for reading and writing (created with `mode` if missing), sized to
    /// `size` when given.
    fn open(&self, path: &Path, mode: u32, size: Option<u64>) -> io::Result<Arc<dyn EngineFile>>;

    /// Atomically replaces `path` with `bytes` (owner-only); with `durable`, the new file
    /// and its name survive a crash once this returns; without, a crash may leave the old
    /// file, or a torn new one.
    fn replace(&self, path: &Path, bytes: &[u8], durable: bool) -> io::Result<()>;
}

/// Files on the local filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct Local;

impl Storage for Local {
    fn open(&self, path: &Path, mode: u32, size: Option<u64>) -> io::Result<Arc<dyn EngineFile>> {
        let file = open_rw(path, mode)?;
        if let Some(size) = size {
            if file.metadata()?.len() != size {
                file.set_len(size)?;
            }
        }
        Ok(Arc::new(LocalFile(Arc::new(file))))
    }

    /// A temp file, fsynced, renamed, and the directory fsynced.
    fn replace(&self, path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
        use std::io::Write;
        let tmp = temp_path(path);
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(bytes)?;
            if durable {
                f.sync_all()?;
            }
            std::fs::rename(&tmp, path)?;
            if durable {
                sync_dir(path)?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// Opens `path` for reading and writing, created with `mode` if missing, never truncated.
fn open_rw(path: &Path, mode: u32) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .open(path)
}

/// A temp name no other writer uses, in this process or another.
fn temp_path(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    path.with_file_name(name)
}

/// fsyncs the directory holding `path`, so a rename in it is durable.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

struct LocalFile(Arc<std::fs::File>);

impl EngineFile for LocalFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    /// One `pwritev` for all of `bufs` (more when the kernel writes less than asked).
    fn write_all_vectored_at(&self, bufs: &[bytes::Bytes], offset: u64) -> io::Result<()> {
        let mut slices: Vec<io::IoSlice<'_>> = bufs.iter().map(|b| io::IoSlice::new(b)).collect();
        let mut rest = &mut slices[..];
        let mut at = offset;
        // IOV_MAX: a longer vector is written in turns.
        const MAX_SLICES: usize = 1024;
        while !rest.is_empty() {
            let turn = rest.len().min(MAX_SLICES);
            match nix::sys::uio::pwritev(&*self.0, &rest[..turn], at as i64) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    at += n as u64;
                    io::IoSlice::advance_slices(&mut rest, n);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn read_vec(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        read_exact_uninit(&self.0, offset, len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn file(&self) -> Option<Arc<std::fs::File>> {
        Some(self.0.clone())
    }
}

/// `len` bytes at `offset` into a new buffer that is never zeroed first: the read fills it,
/// and only filled bytes ever become part of the vector.
fn read_exact_uninit(file: &std::fs::File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let filled = buf.len();
        // SAFETY: the destination is the vector's spare capacity, `len - filled` bytes past
        // its initialised part; pread writes at most that many bytes there.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.as_mut_ptr().add(filled).cast(),
                len - filled,
                (offset + filled as u64) as libc::off_t,
            )
        };
        match n {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            // SAFETY: pread initialised the `n` bytes after `filled`.
            n => unsafe { buf.set_len(filled + n as usize) },
        }
    }
    Ok(buf)
}

/// Local files with a power cut at a chosen I/O operation (`cut_at`: the operation that
/// fails, counting every write, read and sync from 1). At the cut each file goes back to
/// what it held at its last completed sync; each write since then survives with
/// probability `survive` (seeded), whole. Every operation after the cut fails with EIO.
pub struct PowerCut {
    sim: Mutex<Sim>,
}

struct Sim {
    ops: u64,
    cut_at: u64,
    cut: bool,
    survive: f64,
    rng: u64,
    files: HashMap<PathBuf, Image>,
}

/// A file's bytes as of its last completed sync, and the writes since.
struct Image {
    file: Arc<std::fs::File>,
    durable: Vec<u8>,
    pending: Vec<(u64, Vec<u8>)>,
}

impl PowerCut {
    pub fn new(cut_at: u64, survive: f64, seed: u64) -> Arc<PowerCut> {
        Arc::new(PowerCut {
            sim: Mutex::new(Sim {
                ops: 0,
                cut_at,
                cut: false,
                survive,
                rng: seed | 1,
                files: HashMap::new(),
            }),
        })
    }

    /// Whether the power was cut (the engine's files now hold what survived).
    pub fn was_cut(&self) -> bool {
        self.sim.lock().unwrap().cut
    }

    /// Operations so far (a run without a cut tells how many a cut can land among).
    pub fn ops(&self) -> u64 {
        self.sim.lock().unwrap().ops
    }

    /// Cuts the power at the `n`th I/O operation from now (the engine's next write, read or
    /// sync counts 1): the cut falls between two chosen steps of the engine, not at a time.
    pub fn cut_after(&self, n: u64) {
        let mut sim = self.sim.lock().unwrap();
        sim.cut_at = sim.ops + n.max(1);
    }

    /// Cuts the power now, if it was not cut yet.
    pub fn cut_now(&self) {
        self.sim.lock().unwrap().cut();
    }

    /// Runs one operation: counts it, cuts the power when its turn has come.
    fn op<T>(&self, path: &Path, f: impl FnOnce(&mut Image) -> io::Result<T>) -> io::Result<T> {
        let mut sim = self.sim.lock().unwrap();
        sim.count_op()?;
        let image = sim
            .files
            .get_mut(path)
            .expect("opened through this storage");
        f(image)
    }
}

impl Sim {
    /// Counts one operation and cuts the power when its turn has come; after the cut every
    /// operation fails.
    fn count_op(&mut self) -> io::Result<()> {
        self.ops += 1;
        if !self.cut && self.ops >= self.cut_at {
            self.cut();
        }
        if self.cut {
            return Err(io::Error::other("power cut (simulated)"));
        }
        Ok(())
    }

    fn next_random(&mut self) -> f64 {
        // xorshift64: enough to pick survivors, repeatable from the seed.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn cut(&mut self) {
        if self.cut {
            return;
        }
        self.cut = true;
        let survive = self.survive;
        let mut files: Vec<(PathBuf, Image)> = self.files.drain().collect();
        for (_, image) in &mut files {
            let mut bytes = std::mem::take(&mut image.durable);
            for (at, data) in std::mem::take(&mut image.pending) {
                if survive > 0.0 && self.next_random() < survive {
                    apply(&mut bytes, at, &data);
                }
            }
            // What the disk holds after the cut: no unsynced page of the page cache.
            let _ = image.file.set_len(bytes.len() as u64);
            let _ = image.file.write_all_at(&bytes, 0);
            let _ = image.file.sync_all();
            image.durable = bytes;
        }
        self.files = files.into_iter().collect();
    }
}

fn apply(bytes: &mut Vec<u8>, at: u64, data: &[u8]) {
    let end = at as usize + data.len();
    if bytes.len() < end {
        bytes.resize(end, 0);
    }
    bytes[at as usize..end].copy_from_slice(data);
}

impl Storage for Arc<PowerCut> {
    fn open(&self, path: &Path, mode: u32, size: Option<u64>) -> io::Result<Arc<dyn EngineFile>> {
        let mut sim = self.sim.lock().unwrap();
        if sim.cut {
            return Err(io::Error::other("power cut (simulated)"));
        }
        let file = open_rw(path, mode)?;
        // What is there when it is opened counts as durable: it survived the last cut, or
        // was made durable by a rename after fsync (a checkpoint's header).
        let durable = std::fs::read(path)?;
        let mut pending = Vec::new();
        if let Some(size) = size.filter(|&s| s != durable.len() as u64) {
            file.set_len(size)?;
            // A new length is not durable until a sync either.
            let mut grown = durable.clone();
            grown.resize(size as usize, 0);
            pending.push((0, grown));
        }
        let file = Arc::new(file);
        sim.files.insert(
            path.to_path_buf(),
            Image {
                file: file.clone(),
                durable,
                pending,
            },
        );
        Ok(Arc::new(SimFile {
            cut: self.clone(),
            path: path.to_path_buf(),
            file,
        }))
    }

    fn replace(&self, path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
        let mut sim = self.sim.lock().unwrap();
        sim.count_op()?;
        Local.replace(path, bytes, false)?;
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)?,
        );
        // Not durable: a crash leaves what the name held before, or the new bytes torn.
        let before = sim
            .files
            .remove(path)
            .map(|i| i.durable)
            .unwrap_or_default();
        let image = if durable {
            Image {
                file,
                durable: bytes.to_vec(),
                pending: Vec::new(),
            }
        } else {
            Image {
                file,
                durable: before,
                pending: vec![(0, bytes.to_vec())],
            }
        };
        sim.files.insert(path.to_path_buf(), image);
        Ok(())
    }
}

struct SimFile {
    cut: Arc<PowerCut>,
    path: PathBuf,
    file: Arc<std::fs::File>,
}

impl EngineFile for SimFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.cut.op(&self.path, |image| {
            self.file.write_all_at(buf, offset)?;
            image.pending.push((offset, buf.to_vec()));
            Ok(())
        })
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.cut
            .op(&self.path, |_| self.file.read_exact_at(buf, offset))
    }

    fn sync_data(&self) -> io::Result<()> {
        self.cut.op(&self.path, |image| {
            for (at, data) in std::mem::take(&mut image.pending) {
                apply(&mut image.durable, at, &data);
            }
            let len = self.file.metadata()?.len() as usize;
            image.durable.resize(len, 0);
            Ok(())
        })
    }

    fn file(&self) -> Option<Arc<std::fs::File>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_power_cut_keeps_synced_writes_and_drops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let cut = PowerCut::new(5, 0.0, 1);
        let f = cut.open(&path, 0o600, Some(8)).unwrap();
        f.write_at(b"ab", 0).unwrap(); // op 1
        f.sync_data().unwrap(); // op 2: "ab" and the length are durable
        f.write_at(b"cd", 2).unwrap(); // op 3
        let mut got = [0u8; 4];
        f.read_at(&mut got, 0).unwrap(); // op 4: the page cache has it
        assert_eq!(&got, b"abcd");
        assert!(f.sync_data().is_err(), "op 5 is the cut");
        assert!(f.write_at(b"x", 0).is_err(), "nothing after the cut");
        assert_eq!(std::fs::read(&path).unwrap(), b"ab\0\0\0\0\0\0");
        assert!(cut.was_cut());
    }
}
