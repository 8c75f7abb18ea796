//! A soak run through the real kernel mount (root and /dev/fuse): for `--minutes N` (or
//! `--seconds N`), 8 reader threads check every byte they read from a seeded dataset while
//! the emulator fails about 10% of requests, objects are replaced now and then, and the
//! mount is remounted round after round with `--max-connections` between 1 and 16, half the
//! rounds ending in SIGKILL. Prints a table; exits non-zero on a wrong byte, a stale or hung
//! read, or a file not right at the end.
//!
//! `cargo build --release --bin ossmount && cargo run --release --example soak -- --minutes 10`
//! (`--seed N` replays the dataset and the schedule; `--no-replacements` leaves objects
//! alone; the test suite runs one minute: `tests/soak.rs`).

#[path = "common/mod.rs"]
mod bench;
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use bench::{arg, arg_number};
use common::soak::{run_soak, SoakOptions};

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let minutes: f64 = arg("--minutes", "10").parse().expect("minutes, a number");
    let seconds = arg_number("--seconds", (minutes * 60.0) as u64);
    let mut o = SoakOptions::new(Duration::from_secs(seconds), arg_number("--seed", 0x50AC));
    o.readers = arg_number("--readers", o.readers as u64) as usize;
    o.hang_bound = Duration::from_secs(arg_number("--hang-secs", o.hang_bound.as_secs()));
    o.replace_objects = !std::env::args().any(|a| a == "--no-replacements");
    o.verbose = true;
    let bin = common::bin();
    assert!(
        bin.exists(),
        "{} is missing: build it first with cargo build --release --bin ossmount",
        bin.display()
    );
    let r = run_soak(&o).await;
    println!();
    print!("{}", r.table());
    std::process::exit(if r.passed() { 0 } else { 1 });
}
