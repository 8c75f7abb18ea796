//! No request before the first byte (issue 21, item 3), through the real kernel FUSE: opening
//! a file its directory's listing showed (within the metadata TTL) sends no HEAD — the first
//! part's GET, pinned to the listed ETag, tells the object's identity by its headers and its
//! body is that part's fetch — and an object changed since the listing is answered by a 412,
//! one HEAD, and the new version whole. A file never listed opens as before (its lookup's
//! HEAD). Counted by the emulator.

mod common;

use std::time::{Duration, Instant};

use common::mount::*;
use common::*;

/// Small parts, so a few MiB is several parts (a file of one part is opened by one GET of
/// the whole file, which never needed a HEAD).
const PART: u64 = MIB;
const SIZE: u64 = 3 * MIB + 12345;

fn mount_args() -> Vec<&'static str> {
    vec!["--part-size", "1MiB"]
}

/// Every name in `dir` (a listing, as `ls` makes one).
async fn ls(m: &Mount, dir: &str) -> Vec<String> {
    let dir = m.path(dir);
    fs_op(Duration::from_secs(20), move || {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    })
    .await
}

async fn read_all(m: &Mount, rel: &str) -> std::io::Result<Vec<u8>> {
    let path = m.path(rel);
    fs_op(Duration::from_secs(60), move || std::fs::read(path)).await
}

/// A request as the emulator saw it: method, byte range, status.
type Request = (String, Option<(u64, u64)>, u16);

fn requests_for(s: &Server, key: &str, from: usize) -> Vec<Request> {
    s.emu.request_log()[from..]
        .iter()
        .filter(|r| r.key == key)
        .map(|r| (r.method.clone(), r.range, r.status))
        .collect()
}

/// (a) `ls`, then a cold open and read: no HEAD, the bytes exact, and the first part asked
/// for once (the open's GET is the part's fetch, not a request beside it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listed_file_opens_without_a_head() {
    require_fuse();
    let s = Server::start().await;
    let key = "data/listed.bin";
    s.put_sample(key, 21, SIZE);
    let want = std::fs::read(s.object_path(key)).unwrap();
    let (mnt, cache) = dirs(&s, "listed");
    let mut m = Mount::start(&s, &url(), &mnt, &cache, &mount_args());

    assert_eq!(ls(&m, "data").await, vec!["listed.bin"]);
    let from = s.emu.request_log().len();
    let got = read_all(&m, key).await.unwrap();
    assert!(got == want, "the bytes read differ from the object's");
    let seen = requests_for(&s, key, from);
    let heads = seen.iter().filter(|(m, _, _)| m == "HEAD").count();
    assert_eq!(heads, 0, "a listed file was opened with a HEAD: {seen:?}");
    assert_eq!(s.emu.object_counters(BUCKET, key).head_requests, 0);
    let first_part = seen
        .iter()
        .filter(|(m, r, _)| m == "GET" && r.is_some_and(|(start, _)| start == 0))
        .count();
    assert_eq!(
        first_part, 1,
        "the first part was asked for twice: {seen:?}"
    );
    m.unmount();
}

/// (b) Replaced on the server after the listing and before the open: the open's GET pinned to
/// the listed ETag gets a 412, one HEAD tells the new version, and the read returns the new
/// version whole (never a mix of the two, never the old size).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_changed_since_its_listing_is_read_whole_in_its_new_version() {
    require_fuse();
    let s = Server::start().await;
    let key = "data/changing.bin";
    s.put_sample(key, 1, SIZE);
    let (mnt, cache) = dirs(&s, "changed");
    let mut m = Mount::start(&s, &url(), &mnt, &cache, &mount_args());

    assert_eq!(ls(&m, "data").await, vec!["changing.bin"]);
    // A new version of another size, after the listing.
    let new_size = SIZE + 2 * PART;
    s.put_sample(key, 2, new_size);
    let new = std::fs::read(s.object_path(key)).unwrap();
    let from = s.emu.request_log().len();
    let got = read_all(&m, key).await;
    let seen = requests_for(&s, key, from);
    let refused = seen.iter().filter(|(_, _, status)| *status == 412).count();
    let heads = seen.iter().filter(|(m, _, _)| m == "HEAD").count();
    assert_eq!(
        (refused, heads),
        (1, 1),
        "one 412 (the listed ETag) and one HEAD (the new version): {seen:?}"
    );
    let got = got.expect("the new version is read");
    assert_eq!(
        got.len() as u64,
        new_size,
        "read at the size the listing showed, not the new version's"
    );
    assert!(got == new, "the bytes are not the new version's");
    m.unmount();
}

/// (c) A file never listed (opened by path right after the mount) opens as before: the
/// lookup's probe HEAD tells the identity and the open sends no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_never_listed_opens_by_its_lookup() {
    require_fuse();
    let s = Server::start().await;
    let key = "data/unlisted.bin";
    s.put_sample(key, 3, SIZE);
    let want = std::fs::read(s.object_path(key)).unwrap();
    let (mnt, cache) = dirs(&s, "unlisted");
    let mut m = Mount::start(&s, &url(), &mnt, &cache, &mount_args());

    let from = s.emu.request_log().len();
    let got = read_all(&m, key).await.unwrap();
    assert!(got == want, "the bytes read differ from the object's");
    let seen = requests_for(&s, key, from);
    let heads = seen.iter().filter(|(m, _, _)| m == "HEAD").count();
    assert_eq!(heads, 1, "the probe's HEAD, and no other: {seen:?}");
    m.unmount();
}

/// (d) A listed file opened for its footer only (`--hydrate read`: no worker comes to the
/// first part): the open's GET of the first part, answered and unread, is dropped within its
/// grace while the file is still open, so it holds no connection for the handle's life. The
/// footer's bytes are exact and no HEAD was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unread_first_part_get_is_dropped_while_the_file_stays_open() {
    require_fuse();
    let s = Server::start().await;
    let key = "data/footer.bin";
    // Two 4 MiB parts and a short last one: the footer is all in the last part.
    let size = 8 * MIB + 12345;
    s.put_sample(key, 4, size);
    let want = std::fs::read(s.object_path(key)).unwrap();
    let (mnt, cache) = dirs(&s, "footer");
    let mut m = Mount::start(
        &s,
        &url(),
        &mnt,
        &cache,
        &["--part-size", "4MiB", "--hydrate", "read"],
    );
    assert_eq!(ls(&m, "data").await, vec!["footer.bin"]);
    // Slow enough that the first part's 4 MiB cannot have been sent whole in the wait below.
    s.emu
        .update_faults(|f| f.bandwidth_per_connection = 256 * 1024);
    let from = s.emu.request_log().len();
    let path = m.path(key);
    let (file, footer) = fs_op(Duration::from_secs(30), move || {
        let f = std::fs::File::open(path).unwrap();
        let mut footer = vec![0u8; 4096];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut footer, size - 4096).unwrap();
        (f, footer)
    })
    .await;
    assert!(
        footer[..] == want[(size - 4096) as usize..],
        "the footer's bytes differ from the object's"
    );
    let deadline = Instant::now() + Duration::from_secs(8);
    while s.emu.bodies_streaming(BUCKET, key) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dropped = s.emu.bodies_streaming(BUCKET, key) == 0;
    let seen = requests_for(&s, key, from);
    s.emu.update_faults(|f| f.bandwidth_per_connection = 0);
    assert!(
        dropped,
        "a GET of {key} still streams with the file open and idle (the open's unread GET \
         held): {seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|(m, _, _)| m == "HEAD").count(),
        0,
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(m, r, _)| m == "GET" && r.is_some_and(|(start, _)| start == 0)),
        "the open asked for the first part: {seen:?}"
    );
    drop(file);
    m.unmount();
}

/// (e) An answer to the open's ranged GET without the whole object's CRC-64 (OSS sends it on
/// 206s; a proxy may drop it): one HEAD tells the identity, so a file is never opened as
/// unverified, nor as another version than a HEAD would name, for want of a header. The
/// GET's body is still the first part's fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ranged_answer_without_a_crc_is_completed_by_one_head() {
    require_fuse();
    let s = Server::start().await;
    let key = "data/proxied.bin";
    s.put_sample(key, 5, SIZE);
    let want = std::fs::read(s.object_path(key)).unwrap();
    let (mnt, cache) = dirs(&s, "proxied");
    let mut m = Mount::start(&s, &url(), &mnt, &cache, &mount_args());
    assert_eq!(ls(&m, "data").await, vec!["proxied.bin"]);
    s.emu
        .update_faults(|f| f.no_crc_on_ranges = vec![format!("{BUCKET}/{key}")]);
    let from = s.emu.request_log().len();
    let got = read_all(&m, key).await.unwrap();
    assert!(got == want, "the bytes read differ from the object's");
    let seen = requests_for(&s, key, from);
    assert_eq!(
        seen.iter().filter(|(m, _, _)| m == "HEAD").count(),
        1,
        "{seen:?}"
    );
    let first_part = seen
        .iter()
        .filter(|(m, r, _)| m == "GET" && r.is_some_and(|(start, _)| start == 0))
        .count();
    assert_eq!(first_part, 1, "the first part asked for twice: {seen:?}");
    // The last read returns with the bytes; the verdict is recorded just after.
    let path = m.path(key);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut cached = getxattr(&path, "user.ossmount.cached");
    while cached.as_deref() != Some("complete") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        cached = getxattr(&path, "user.ossmount.cached");
    }
    assert_eq!(
        cached.as_deref(),
        Some("complete"),
        "the HEAD's CRC-64 verifies the object"
    );
    m.unmount();
}
