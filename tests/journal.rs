//! The survival journal (issue 19): a server process that dies without any cleanup leaves a
//! journal from which a new process, taking over the same kernel connection, honours the
//! inode numbers and open handles the kernel holds. Two `OssFs` generations over one cache
//! directory and one journal, against the emulator (real HTTP, signed requests); each
//! generation runs on its own runtime, which is shut down with everything it ran, as a
//! SIGKILL would end them (no release, no releasedir, no unmount).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{within, Server, BUCKET, SK};
use ossmount::cache::{Cache, Capacity};
use ossmount::fs::{Attr, FsConfig, FsError, JournalConfig, OssFs, ROOT_INO};
use ossmount::hydrate::{ConnectionLimiter, FetchMode, HydrationConfig};
use ossmount::store::ObjectStore;

const BOUND: Duration = Duration::from_secs(20);
const PART: u64 = 256 << 10;
const SIZE: u64 = 4 << 20;

fn version(seed: u8) -> Vec<u8> {
    (0..SIZE)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 11)) as u8 ^ seed)
        .collect()
}

/// One server generation: a cache opened on `scratch/cache` and an `OssFs` on the journal.
fn generation(server: &Server, scratch: &Path, resume: bool) -> (Arc<OssFs>, Arc<Cache>) {
    generation_with_ttl(server, scratch, resume, Duration::from_secs(60))
}

fn generation_with_ttl(
    server: &Server,
    scratch: &Path,
    resume: bool,
    metadata_ttl: Duration,
) -> (Arc<OssFs>, Arc<Cache>) {
    let store: Arc<dyn ObjectStore> = Arc::new(server.client());
    let hydration = HydrationConfig {
        part_size: PART,
        // Only what is read is fetched: the rest is left for the next generation.
        mode: FetchMode::OnDemand,
        readahead_parts: 0,
        ..Default::default()
    };
    let cache = Cache::open(
        &scratch.join("cache"),
        store.clone(),
        hydration,
        ConnectionLimiter::new(4, 1),
        Capacity::unlimited(),
    )
    .unwrap();
    let cache = Arc::new(cache);
    let cfg = FsConfig {
        bucket: BUCKET.into(),
        prefix: String::new(),
        metadata_ttl,
        uid: 0,
        gid: 0,
        file_mode: 0o444,
        dir_mode: 0o555,
        require_crc: false,
        read_deadline: Duration::from_secs(10),
        direct_memory: ossmount::fs::DEFAULT_DIRECT_MEMORY,
        journal: Some(JournalConfig {
            dir: scratch.join("journal"),
            resume,
        }),
    };
    let fs = OssFs::try_new(cfg, store, cache.clone()).unwrap();
    (Arc::new(fs), cache)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// What the first generation left the kernel holding.
struct Held {
    a: Attr,
    b: Attr,
    c: Attr,
    fh: u64,
    dir_fh: u64,
}

#[test]
fn a_new_server_process_honours_the_inodes_and_handles_of_the_one_that_died() {
    let server_rt = runtime();
    let server = server_rt.block_on(Server::start());
    let old = version(0);
    server.put("a/b/c.bin", &old);
    server.put("a/b/d.txt", b"d");
    server.put("a/e.txt", b"e");
    let scratch = server.scratch.path().to_path_buf();

    // Generation 1: looks up a/b/c.bin, reads part of it, lists half of a/b; then dies.
    let rt = runtime();
    let (fs, cache) = generation(&server, &scratch, false);
    let held = rt.block_on(within(BOUND, "generation 1", async {
        assert_eq!(fs.server_generation(), Some(1));
        let a = fs.lookup(ROOT_INO, "a").await.unwrap();
        let b = fs.lookup(a.ino, "b").await.unwrap();
        let c = fs.lookup(b.ino, "c.bin").await.unwrap();
        let opened = fs.open(c.ino).await.unwrap();
        // As the adapter does for a passthrough open (the kernel's id is kept).
        fs.note_passthrough(opened.fh, 7);
        let first = fs.read(opened.fh, 0, 300_000).await.unwrap();
        assert!(first == old[..300_000], "generation 1 read wrong bytes");
        let dir_fh = fs.opendir(b.ino).await.unwrap();
        let listed = fs.readdirplus(dir_fh, 0, 3).await.unwrap();
        let names: Vec<&str> = listed.iter().map(|(_, e, _)| e.name.as_str()).collect();
        assert_eq!(names, vec![".", "..", "c.bin"]);
        assert_eq!(listed[2].0, 3, "the offset after c.bin");
        Held {
            a,
            b,
            c,
            fh: opened.fh,
            dir_fh,
        }
    }));
    // SIGKILL: the runtime and every task on it end, nothing is released.
    drop(rt);
    drop((fs, cache));

    // Generation 2 takes over the same journal.
    let rt = runtime();
    let (fs, cache) = generation(&server, &scratch, true);
    rt.block_on(within(BOUND, "generation 2", async {
        assert_eq!(fs.server_generation(), Some(2));
        let inherited = fs.inherited_handles();
        assert_eq!(inherited.len(), 1);
        assert_eq!(
            (inherited[0].fh, inherited[0].ino, inherited[0].backing),
            (held.fh, held.c.ino, Some(7))
        );
        // The kernel's numbers mean what they meant.
        assert_eq!(fs.getattr(held.c.ino).unwrap(), held.c);
        assert_eq!(fs.getattr(held.a.ino).unwrap(), held.a);
        assert_eq!(fs.getattr(held.b.ino).unwrap(), held.b);
        let d = fs.lookup(held.b.ino, "d.txt").await.unwrap();
        assert_eq!(d.size, 1);
        // Names lead to the numbers taken over, and new names get new numbers.
        assert_eq!(fs.lookup(held.a.ino, "b").await.unwrap().ino, held.b.ino);
        assert_eq!(fs.lookup(ROOT_INO, "a").await.unwrap().ino, held.a.ino);
        let e = fs.lookup(held.a.ino, "e.txt").await.unwrap();
        for old_ino in [held.a.ino, held.b.ino, held.c.ino] {
            assert_ne!(e.ino, old_ino);
            assert_ne!(d.ino, old_ino);
        }
        // The open handle continues byte-exact.
        let next = fs.read(held.fh, 300_000, 300_000).await.unwrap();
        assert!(
            next == old[300_000..600_000],
            "the old handle read wrong bytes"
        );
        // The directory handle continues where the kernel was.
        let rest = fs
            .readdirplus_in(held.b.ino, held.dir_fh, 3, 100)
            .await
            .unwrap();
        let names: Vec<&str> = rest.iter().map(|(_, e, _)| e.name.as_str()).collect();
        assert_eq!(names, vec!["d.txt"]);
        assert_eq!(rest[0].1.ino, d.ino);
        fs.releasedir(held.dir_fh);
        // An unknown number is stale, not another file.
        assert!(matches!(
            fs.getattr(987_654_321),
            Err(FsError::UnknownInode(987_654_321))
        ));
        assert!(matches!(
            fs.open(987_654_321).await,
            Err(FsError::UnknownInode(_))
        ));

        // The object is overwritten: the old handle never gets the new bytes.
        let new = version(0x5a);
        server.put("a/b/c.bin", &new);
        // Parts cached before (by either generation) may still be served; any other part
        // fails as a live handle's read does when its object changes.
        let mut changed = 0;
        for (offset, len) in [(300_000, 300_000), (0, 300_000), (2_000_000, 100_000)] {
            match fs.read(held.fh, offset, len).await {
                Ok(bytes) => assert!(
                    bytes == old[offset as usize..offset as usize + len as usize],
                    "the old handle read bytes of another version at {offset}"
                ),
                // The part that met the change fails with it; the entry is then discarded
                // and its hydration stopped, which later reads of missing parts report.
                Err(FsError::Hydrate(e)) => {
                    let e = e.to_string();
                    assert!(
                        e.contains("changed on the server") || e.contains("was stopped"),
                        "{e}"
                    );
                    changed += 1;
                }
                Err(other) => panic!("unexpected error at {offset}: {other}"),
            }
        }
        assert!(
            changed > 0,
            "a part never fetched cannot be the old version's"
        );
        fs.release(held.fh);
        // No handle open: the handle journal is empty.
        assert_eq!(
            std::fs::metadata(scratch.join("journal/handles"))
                .unwrap()
                .len(),
            0
        );
        // A new open of the same inode reads the new version.
        let reopened = fs.open(held.c.ino).await.unwrap();
        let fresh = fs.read(reopened.fh, 0, 4096).await.unwrap();
        assert!(fresh == new[..4096], "the new open reads the new version");
        fs.release(reopened.fh);
    }));
    drop(rt);
    drop((fs, cache));

    // Nothing secret was written.
    for entry in std::fs::read_dir(scratch.join("journal")).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(SK), "{} holds the secret", path.display());
        assert!(!text.contains("http"), "{} holds a URL", path.display());
    }
}

#[test]
fn a_journal_of_another_connection_is_not_resumed_by_a_fresh_mount() {
    let server_rt = runtime();
    let server = server_rt.block_on(Server::start());
    server.put("x/y.txt", b"y");
    let scratch = server.scratch.path().to_path_buf();
    let rt = runtime();
    let (fs, cache) = generation(&server, &scratch, false);
    let y = rt.block_on(within(BOUND, "generation 1", async {
        let x = fs.lookup(ROOT_INO, "x").await.unwrap();
        fs.lookup(x.ino, "y.txt").await.unwrap()
    }));
    drop(rt);
    drop((fs, cache));
    // A new mount (a new kernel connection) starts afresh: old numbers mean nothing.
    let rt = runtime();
    let (fs, _cache) = generation(&server, &scratch, false);
    assert_eq!(fs.server_generation(), Some(1));
    assert!(matches!(fs.getattr(y.ino), Err(FsError::UnknownInode(_))));
    drop(rt);
}

/// A new version opened beside an open handle of the old one gets a new inode number
/// (`renumber`): both numbers, and both handles, survive the server.
#[test]
fn both_versions_of_a_renumbered_file_survive_the_server() {
    let server_rt = runtime();
    let server = server_rt.block_on(Server::start());
    let (old, new) = (version(1), version(2));
    server.put("v.bin", &old);
    let scratch = server.scratch.path().to_path_buf();
    let rt = runtime();
    // No metadata TTL: every open asks the server for the version.
    let (fs, cache) = generation_with_ttl(&server, &scratch, false, Duration::ZERO);
    let (old_ino, old_fh, new_ino, new_fh) = rt.block_on(within(BOUND, "generation 1", async {
        let v = fs.lookup(ROOT_INO, "v.bin").await.unwrap();
        let old_fh = fs.open(v.ino).await.unwrap().fh;
        assert!(fs.read(old_fh, 0, 1000).await.unwrap() == old[..1000]);
        server.put("v.bin", &new);
        assert!(matches!(fs.open(v.ino).await, Err(FsError::Stale)));
        let v2 = fs.lookup(ROOT_INO, "v.bin").await.unwrap();
        assert_ne!(v2.ino, v.ino, "the new version has a number of its own");
        let new_fh = fs.open(v2.ino).await.unwrap().fh;
        assert!(fs.read(new_fh, 0, 1000).await.unwrap() == new[..1000]);
        (v.ino, old_fh, v2.ino, new_fh)
    }));
    drop(rt);
    drop((fs, cache));

    let rt = runtime();
    let (fs, _cache) = generation_with_ttl(&server, &scratch, true, Duration::ZERO);
    rt.block_on(within(BOUND, "generation 2", async {
        assert_eq!(fs.getattr(old_ino).unwrap().ino, old_ino);
        assert_eq!(fs.getattr(new_ino).unwrap().ino, new_ino);
        let more = fs.read(new_fh, 1000, 1000).await.unwrap();
        assert!(
            more == new[1000..2000],
            "the new version's handle continues"
        );
        match fs.read(old_fh, 1000, 1000).await {
            Ok(bytes) => assert!(
                bytes == old[1000..2000],
                "the old handle read the new version"
            ),
            Err(FsError::Hydrate(e)) => {
                let e = e.to_string();
                assert!(
                    e.contains("changed on the server") || e.contains("was stopped"),
                    "{e}"
                );
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
        fs.release(old_fh);
        fs.release(new_fh);
    }));
    drop(rt);
}
