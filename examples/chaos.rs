//! A long chaos run through the real kernel mount (root and /dev/fuse): every round reads a
//! mix of files while the emulator injects 10% 503s, resets and cut bodies, SIGKILLs the
//! mount at a random moment and remounts it on the same cache; at the end every file must
//! read back byte-exact. Prints rounds, kills, faults injected and wrong bytes (must be 0).
//!
//! `cargo build --release --bin ossmount && cargo run --release --example chaos -- --rounds 200`
//! (the test suite runs 25 rounds: `tests/chaos.rs`).

#[path = "common/mod.rs"]
mod bench;
#[path = "../tests/common/mod.rs"]
mod common;

use bench::arg_number as arg;

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let rounds = arg("--rounds", 200) as usize;
    let seed = arg("--seed", 0xC4A05);
    let bin = common::bin();
    assert!(
        bin.exists(),
        "{} is missing: build it first with cargo build --release --bin ossmount",
        bin.display()
    );
    let started = std::time::Instant::now();
    let r = common::chaos::run_chaos(rounds, seed, true).await;
    println!();
    println!("| rounds | kills | faults injected | full reads | failed reads | wrong bytes | bad checkpoint records | files exact at the end |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} | {} | {} | {} | {}/{} |",
        r.rounds,
        r.kills,
        r.faults_injected,
        r.full_reads,
        r.failed_reads,
        r.wrong_bytes,
        r.bad_records,
        r.files_exact_at_end,
        r.files
    );
    println!("({:.0} s, seed {seed:#x})", started.elapsed().as_secs_f64());
    let ok = r.wrong_bytes == 0 && r.bad_records == 0 && r.files_exact_at_end == r.files;
    std::process::exit(if ok { 0 } else { 1 });
}
