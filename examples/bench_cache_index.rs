//! How long a mount's cache takes to open on a directory with many entries: the LRU index is
//! rebuilt from every checkpoint at start.
//!
//! `cargo run --release --example bench_cache_index [-- --entries 10000 --parts 128 --rounds 5]`

mod common;
use common::arg;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use ossmount::cache::{Cache, Capacity};
use ossmount::hydrate::{Checkpoint, ConnectionLimiter, HydrationConfig, ObjectIdentity};
use ossmount::oss::OssClient;
use ossmount::store::ObjectStore;

const LOCATION: &str = "http://127.0.0.1:1";

fn populate(entries: &Path, n: usize, parts: usize) {
    std::fs::create_dir_all(entries).unwrap();
    let part_size = 8u64 << 20;
    for i in 0..n {
        let key = format!("data/shard-{i:06}.bin");
        let id = ObjectIdentity {
            bucket: "bench".into(),
            key: key.clone(),
            size: parts as u64 * part_size,
            etag: format!("\"{i:032X}\""),
            last_modified: "Wed, 01 Jan 2025 00:00:00 GMT".into(),
            crc64: Some(i as u64),
            digest: None,
        };
        let name = Cache::entry_name(LOCATION, "bench", &key);
        let data = entries.join(format!("{name}.data"));
        // Sparse: the index reads checkpoints, not data.
        std::fs::File::create(&data)
            .unwrap()
            .set_len(id.size)
            .unwrap();
        let mut c = Checkpoint::new(LOCATION, &id, part_size, &data);
        for p in (0..parts).step_by(3) {
            c.present.insert(p);
        }
        std::fs::write(entries.join(format!("{name}.ckpt")), c.to_json()).unwrap();
    }
}

fn main() {
    let n: usize = arg("--entries", "10000").parse().unwrap();
    let parts: usize = arg("--parts", "128").parse().unwrap();
    let rounds: usize = arg("--rounds", "5").parse().unwrap();
    let dir = std::path::PathBuf::from(arg("--dir", "target/bench-cache-index"));
    let _ = std::fs::remove_dir_all(&dir);
    let t = Instant::now();
    populate(&dir.join("entries"), n, parts);
    eprintln!("wrote {n} entries in {:.1}s", t.elapsed().as_secs_f64());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    // Never called: opening the cache only reads the checkpoints.
    let store: Arc<dyn ObjectStore> =
        Arc::new(OssClient::new(common::bench_client_config(LOCATION)).unwrap());
    let mut times = Vec::new();
    for _ in 0..rounds {
        // The checkpoints are in the page cache: this is a restart right after an unmount.
        let t = Instant::now();
        let cache = Cache::open(
            &dir,
            store.clone(),
            HydrationConfig::default(),
            ConnectionLimiter::new(8, 2),
            Capacity::unlimited(),
        )
        .unwrap();
        times.push(t.elapsed().as_secs_f64());
        assert_eq!(cache.entries_lru_first().len(), n);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("| entries | parts each | median open | min | max |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {n} | {parts} | {:.0} ms | {:.0} ms | {:.0} ms |",
        times[times.len() / 2] * 1000.0,
        times[0] * 1000.0,
        times[times.len() - 1] * 1000.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}
