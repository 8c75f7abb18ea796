//! One minute of the soak run in CI: 8 readers checking every byte through the kernel mount,
//! faults, object replacements, remounts with 1 to 16 connections and SIGKILLs, and not one
//! wrong byte nor a hung read. For a long run: `cargo run --release --example soak --
//! --minutes 10`.

mod common;

use std::time::Duration;

use common::soak::{run_soak, SoakOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_minute_of_readers_faults_replacements_and_kills_never_gives_a_wrong_byte() {
    let mut o = SoakOptions::new(Duration::from_secs(60), 0x50AC);
    o.verbose = true;
    let r = run_soak(&o).await;
    eprintln!("{}", r.table());
    let t = &r.readers;
    assert_eq!(
        t.wrong_bytes,
        0,
        "a read returned wrong bytes:\n{}",
        r.table()
    );
    assert_eq!(
        t.wrong_reads,
        0,
        "a read was not one version, whole:\n{}",
        r.table()
    );
    assert_eq!(
        t.stale_reads,
        0,
        "a reopened file read an old version:\n{}",
        r.table()
    );
    assert_eq!(
        t.hung + r.final_reads_hung as u64,
        0,
        "a read hung:\n{}",
        r.table()
    );
    assert_eq!(r.files_exact_at_end, r.files, "{}", r.table());
    assert!(t.reads >= 500, "too few reads completed:\n{}", r.table());
    assert!(
        t.whole_file_reads > 0,
        "no whole-file read completed:\n{}",
        r.table()
    );
    assert!(r.kills >= 1, "no SIGKILL:\n{}", r.table());
    assert!(r.replacements >= 1, "no replacement:\n{}", r.table());
    assert!(r.faults_injected > 0, "no fault injected:\n{}", r.table());
}
