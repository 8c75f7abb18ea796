//! The cache's unit tests: naming, the rebuild at start, the directory lock, and that one
//! entry's slow file I/O stalls no other entry.

use super::*;
use std::time::Duration;

#[test]
fn entry_names_are_hashes_not_keys() {
    let n = Cache::entry_name("http://e", "b", "../../etc/passwd");
    assert_eq!(n.len(), 32);
    assert!(n.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(n, Cache::entry_name("http://e", "b", "../../etc/passwd2"));
    assert_ne!(
        Cache::entry_name("http://e", "ab", "c"),
        Cache::entry_name("http://e", "a", "bc")
    );
}

fn fake_entry(entries: &Path, key: &str, present: &str, age_secs: u64) -> String {
    let id = ObjectIdentity {
        bucket: "b".into(),
        key: key.into(),
        size: 3 * 4096,
        etag: "\"E\"".into(),
        last_modified: "Wed, 01 Jan 2025 00:00:00 GMT".into(),
        crc64: None,
        digest: None,
    };
    let name = Cache::entry_name("http://127.0.0.1:1", "b", key);
    let data = entries.join(format!("{name}.data"));
    std::fs::write(&data, vec![0u8; 3 * 4096]).unwrap();
    let mut c = Checkpoint::new("http://127.0.0.1:1", &id, 4096, &data);
    c.present = crate::hydrate::checkpoint::parse_present(present).unwrap();
    let ckpt = entries.join(format!("{name}.ckpt"));
    c.save(&ckpt).unwrap();
    let t = SystemTime::now() - std::time::Duration::from_secs(age_secs);
    File::options()
        .write(true)
        .open(&ckpt)
        .unwrap()
        .set_modified(t)
        .unwrap();
    name
}

#[tokio::test]
async fn start_cleans_crash_leftovers_and_rebuilds_the_lru_order() {
    let dir = tempfile::tempdir().unwrap();
    let entries = dir.path().join("entries");
    std::fs::create_dir_all(&entries).unwrap();
    let old = fake_entry(&entries, "old", "111", 300);
    let new = fake_entry(&entries, "new", "100", 10);
    let mid = fake_entry(&entries, "mid", "110", 100);
    // An interrupted eviction (data without checkpoint), a temp checkpoint, a corrupt one.
    std::fs::write(entries.join("deadbeef.data"), b"orphan").unwrap();
    std::fs::write(entries.join("x.ckpt.tmp-123"), b"{").unwrap();
    std::fs::write(entries.join("bad.ckpt"), b"not json").unwrap();
    std::fs::write(entries.join("bad.data"), b"x").unwrap();
    let store: Arc<dyn ObjectStore> = crate::store::memory::MemoryStore::new("http://127.0.0.1:1");
    let cache = Cache::open(
        dir.path(),
        store,
        HydrationConfig {
            part_size: 4096,
            ..Default::default()
        },
        ConnectionLimiter::new(1, 0),
        Capacity::unlimited(),
    )
    .unwrap();
    let order: Vec<String> = cache
        .entries_lru_first()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(order, vec!["old", "mid", "new"]);
    let mut left: Vec<String> = std::fs::read_dir(&entries)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut want: Vec<String> = [&old, &new, &mid]
        .iter()
        .flat_map(|n| [format!("{n}.ckpt"), format!("{n}.data")])
        .collect();
    want.sort();
    assert_eq!(left, want);
    // 6 present blocks, three records, the fixed overhead.
    let records: u64 = cache.entries_lru_first().iter().map(|e| e.charged).sum();
    assert_eq!(cache.used_bytes(), records + FIXED_OVERHEAD);
    assert!(records >= 6 * 4096);
}

#[test]
fn a_second_lock_is_refused_with_the_holder_pid() {
    let dir = tempfile::tempdir().unwrap();
    let _held = dir::lock_dir(dir.path()).unwrap();
    let err = dir::lock_dir(dir.path()).unwrap_err().to_string();
    // flock is per open file description, so the same process is refused too.
    assert!(err.contains("in use by another ossmount process"), "{err}");
    assert!(err.contains(&std::process::id().to_string()), "{err}");
}

/// Which file operation of the gated file waits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Open,
    Replace,
}

/// Local files, except that one operation on one file waits at a gate until the test opens
/// it: a disk that is slow for one entry. The wait is bounded (60 s), so code that never
/// gets past cannot hang the run; `OpenOnDrop` opens it when a test fails.
struct Gated {
    target: PathBuf,
    op: Op,
    /// (operations that reached the gate, gate open)
    state: std::sync::Mutex<(usize, bool)>,
    cv: std::sync::Condvar,
}

impl Gated {
    fn new(target: PathBuf, op: Op) -> Arc<Gated> {
        Arc::new(Gated {
            target,
            op,
            state: Default::default(),
            cv: Default::default(),
        })
    }

    fn pass(&self, path: &Path, op: Op) {
        if path != self.target || op != self.op {
            return;
        }
        let mut st = self.state.lock().unwrap();
        st.0 += 1;
        self.cv.notify_all();
        let _ = self
            .cv
            .wait_timeout_while(st, Duration::from_secs(60), |st| !st.1)
            .unwrap();
    }

    /// Waits (bounded) until `n` operations reached the gate.
    fn reached(&self, n: usize, bound: Duration) -> bool {
        let st = self.state.lock().unwrap();
        let (st, _) = self
            .cv
            .wait_timeout_while(st, bound, |st| st.0 < n)
            .unwrap();
        st.0 >= n
    }

    fn open(&self) {
        self.set_open(true);
    }

    /// Opens or closes the gate.
    fn set_open(&self, open: bool) {
        self.state.lock().unwrap().1 = open;
        self.cv.notify_all();
    }
}

impl crate::hydrate::storage::Storage for Gated {
    fn open(
        &self,
        path: &Path,
        mode: u32,
        size: Option<u64>,
    ) -> std::io::Result<Arc<dyn crate::hydrate::storage::EngineFile>> {
        self.pass(path, Op::Open);
        crate::hydrate::storage::Local.open(path, mode, size)
    }

    fn replace(&self, path: &Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
        self.pass(path, Op::Replace);
        crate::hydrate::storage::Local.replace(path, bytes, durable)
    }
}

struct OpenOnDrop(Arc<Gated>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

const LOC: &str = "http://127.0.0.1:1";

/// A cache over a memory store holding `slow` and `fast` (three 4 KiB parts each), whose
/// files go through `gate`; and the two objects' identities.
async fn gated_cache(
    dir: &Path,
    gated: impl FnOnce(&Path) -> Arc<Gated>,
) -> (Arc<Cache>, Arc<Gated>, ObjectIdentity, ObjectIdentity) {
    let store = crate::store::memory::MemoryStore::new(LOC);
    store.put("b", "slow", vec![1u8; 3 * 4096]);
    store.put("b", "fast", vec![2u8; 3 * 4096]);
    let mut ids = Vec::new();
    for key in ["slow", "fast"] {
        let meta = store.head("b", key).await.unwrap();
        ids.push(ObjectIdentity::from_meta("b", key, &meta));
    }
    let gate = gated(&dir.join("entries"));
    let cache = Cache::open(
        dir,
        store,
        HydrationConfig {
            part_size: 4096,
            storage: gate.clone(),
            ..Default::default()
        },
        ConnectionLimiter::new(4, 0),
        Capacity::unlimited(),
    )
    .unwrap();
    let fast = ids.pop().unwrap();
    (Arc::new(cache), gate, ids.pop().unwrap(), fast)
}

fn files_of(entries: &Path, key: &str) -> (PathBuf, PathBuf) {
    entry_files(entries, &Cache::entry_name(LOC, "b", key))
}

/// Another entry is opened, hydrated (a space reservation before each of its parts), closed
/// and reaped, and the bytes in use are read, all within a bound.
async fn other_work_goes_on(cache: &Arc<Cache>, fast: &ObjectIdentity, while_: &str) {
    let work = async {
        let (c, id) = (cache.clone(), fast.clone());
        let h = tokio::task::spawn_blocking(move || c.open_entry(&id))
            .await
            .unwrap()
            .unwrap();
        h.wait_complete().await.unwrap();
        let (c, id) = (cache.clone(), fast.clone());
        tokio::task::spawn_blocking(move || {
            c.close_entry(&id);
            c.reap();
            c.used_bytes()
        })
        .await
        .unwrap()
    };
    let used = tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .unwrap_or_else(|_| {
            panic!("opening, hydrating and closing another entry waited for {while_}")
        });
    assert!(used >= 3 * 4096, "the other entry's parts were reserved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_create_of_one_entry_stalls_no_other_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, gate, slow, fast) =
        gated_cache(dir.path(), |e| Gated::new(files_of(e, "slow").1, Op::Open)).await;
    let _open_at_exit = OpenOnDrop(gate.clone());
    // Two opens of the slow entry: the second waits for the first, and they share one
    // hydration (one data file opened).
    let opens: Vec<_> = (0..2)
        .map(|_| {
            let (c, id) = (cache.clone(), slow.clone());
            tokio::task::spawn_blocking(move || c.open_entry(&id))
        })
        .collect();
    assert!(
        gate.reached(1, Duration::from_secs(10)),
        "the open of `slow` never reached its data file"
    );
    other_work_goes_on(&cache, &fast, "the slow entry's data file to be created").await;
    gate.open();
    for open in opens {
        let h = tokio::time::timeout(Duration::from_secs(10), open)
            .await
            .expect("the slow entry opens once its file is there")
            .unwrap()
            .unwrap();
        h.wait_complete().await.unwrap();
    }
    assert_eq!(gate.state.lock().unwrap().0, 1, "one hydration, one open");
    assert_eq!(cache.active().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_checkpoint_write_of_a_discarded_entry_stalls_no_other_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, gate, slow, fast) = gated_cache(dir.path(), |e| {
        Gated::new(files_of(e, "slow").0, Op::Replace)
    })
    .await;
    let _open_at_exit = OpenOnDrop(gate.clone());
    let (c, id) = (cache.clone(), slow.clone());
    let h = tokio::task::spawn_blocking(move || c.open_entry(&id))
        .await
        .unwrap()
        .unwrap();
    // Its first record waits at the gate, holding the hydration's record lock: stopping it
    // (as a discard does) waits too.
    assert!(
        gate.reached(1, Duration::from_secs(10)),
        "the slow entry never wrote its checkpoint"
    );
    let (c, id) = (cache.clone(), slow.clone());
    let discard = tokio::task::spawn_blocking(move || c.discard(&id));
    // Until the discard has taken the entry out of the index (or holds the index lock).
    let name = Cache::entry_name(LOC, "b", "slow");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match cache.shared.index.try_lock() {
            Ok(idx) if idx.active.contains_key(&name) => {}
            _ => break,
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the discard never began"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    other_work_goes_on(&cache, &fast, "the slow entry's checkpoint write").await;
    gate.open();
    tokio::time::timeout(Duration::from_secs(10), discard)
        .await
        .expect("the discard ends once the write is done")
        .unwrap();
    drop(h);
    let (ckpt, data) = files_of(&dir.path().join("entries"), "slow");
    assert!(
        !ckpt.exists() && !data.exists(),
        "the discarded entry is gone"
    );
}

#[test]
fn a_reservation_looks_at_the_entries_it_evicts_not_at_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    const N: usize = 100_000;
    let entry = |i: usize| IndexEntry {
        bucket: "b".into(),
        key: format!("k{i}"),
        size: 8192,
        charged: 8192,
    };
    // Least recently used first; the older half is open (never evicted, and formerly
    // passed over one by one at every eviction).
    let mut lru = lru::LruCache::unbounded();
    for i in 0..N {
        lru.put(format!("e{i}"), entry(i));
    }
    let used = N as u64 * 8192;
    let mut idx = Index::new(lru, used);
    for i in 0..N / 2 {
        idx.opened(&format!("e{i}"));
    }
    idx.examined = 0;
    let shared = Shared {
        entries: dir.path().to_path_buf(),
        capacity: Capacity {
            max_bytes: used,
            min_free_disk: 0,
        },
        part_size: 4096,
        index: Mutex::new(idx),
        released: Default::default(),
        stats: CacheStats::default(),
    };
    let id = ObjectIdentity {
        bucket: "b".into(),
        key: "new".into(),
        size: 3 * 4096,
        etag: "\"E\"".into(),
        last_modified: "Wed, 01 Jan 2025 00:00:00 GMT".into(),
        crc64: None,
        digest: None,
    };
    assert!(shared.reserve("new", &id, 3 * 4096));
    let evictions = shared
        .stats
        .evictions
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(evictions, 2, "two 8 KiB entries make room for 12 KiB");
    let idx = shared.index.lock().unwrap();
    assert!(
        idx.examined <= 2 * evictions + 2,
        "a reservation that evicted {evictions} of {N} entries looked at {}",
        idx.examined
    );
    // The oldest unopened entries went, and the bytes add up.
    let order = idx.lru_first();
    assert_eq!(order.len(), N - 1);
    assert_eq!(order[0].key, format!("k{}", N / 2 + 2));
    let charged: u64 = order.iter().map(|e| e.charged).sum();
    assert_eq!(idx.used, charged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_being_opened_is_never_evicted_under_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, gate, slow, fast) =
        gated_cache(dir.path(), |e| Gated::new(files_of(e, "slow").1, Op::Open)).await;
    let _open_at_exit = OpenOnDrop(gate.clone());
    // A complete entry that no handle has open: the least recently used.
    gate.open();
    let (c, id) = (cache.clone(), slow.clone());
    let h = tokio::task::spawn_blocking(move || c.open_entry(&id))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), h.wait_complete())
        .await
        .expect("the entry hydrates")
        .unwrap();
    cache.close_entry(&slow);
    drop(h);
    // Opened again, its data file slow to open: the entry is claimed meanwhile.
    gate.set_open(false);
    let (c, id) = (cache.clone(), slow.clone());
    let reopen = tokio::task::spawn_blocking(move || c.open_entry(&id));
    assert!(
        gate.reached(2, Duration::from_secs(10)),
        "the reopen never reached the data file"
    );
    // Another entry asks for more room than evicting it could make: it is refused without
    // touching the entry being opened.
    let name = Cache::entry_name(LOC, "b", "fast");
    assert!(!cache.shared.reserve(&name, &fast, u64::MAX / 2));
    let evictions = cache
        .stats()
        .evictions
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(evictions, 0, "the entry being opened was evicted");
    gate.open();
    let h = tokio::time::timeout(Duration::from_secs(10), reopen)
        .await
        .expect("the reopen ends once its file is open")
        .unwrap()
        .unwrap();
    assert!(h.is_complete(), "the reopen resumed the whole entry");
    let (ckpt, data) = files_of(&dir.path().join("entries"), "slow");
    assert!(ckpt.exists() && data.exists());
}
