//! The chaos run, short enough for CI (25 rounds): faults injected, the mount SIGKILLed each
//! round and remounted on the same cache, and not one wrong byte. For a long run:
//! `cargo run --release --example chaos -- --rounds 200`.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_and_faults_every_round_and_never_a_wrong_byte() {
    let r = common::chaos::run_chaos(25, 0xC4A05, false).await;
    eprintln!("{r:?}");
    assert_eq!(r.rounds, 25);
    assert_eq!(r.kills, 25);
    assert!(r.faults_injected > 0, "the run injected no faults: {r:?}");
    assert!(r.full_reads > 0, "no read completed in any round: {r:?}");
    assert_eq!(r.wrong_bytes, 0, "a read returned wrong bytes: {r:?}");
    assert_eq!(r.bad_records, 0, "a checkpoint recorded wrong bytes: {r:?}");
    assert_eq!(r.files_exact_at_end, r.files, "{r:?}");
}
