//! `ossmount serve`: the emulator as a standalone server, for tests, demos and trying clients.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use ossmount::emulator::{Emulator, EmulatorConfig, Faults};
use ossmount::size::{parse_duration, parse_size};

use super::connection::ConnectionArgs;

#[derive(clap::Args)]
pub struct ServeArgs {
    #[arg(long)]
    root: PathBuf,
    #[arg(long, default_value = "127.0.0.1:9000")]
    addr: String,
    /// Serve unsigned requests too
    #[arg(long)]
    allow_anonymous: bool,
    /// Added latency per request, e.g. 20ms
    #[arg(long, value_parser = parse_duration)]
    latency: Option<std::time::Duration>,
    /// Bandwidth cap per connection, e.g. 16MiB (per second)
    #[arg(long, value_parser = parse_size)]
    bandwidth: Option<u64>,
    /// Bandwidth cap across all connections (the link's width), e.g. 120MiB (per second)
    #[arg(long, value_parser = parse_size)]
    link_bandwidth: Option<u64>,
    /// Fraction of requests answered with 503
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Fraction of GET bodies cut by a connection reset
    #[arg(long, default_value_t = 0.0)]
    reset_rate: f64,
    /// Fraction of GET bodies that end early
    #[arg(long, default_value_t = 0.0)]
    truncate_rate: f64,
}

pub async fn run(conn: &ConnectionArgs, a: ServeArgs) -> Result<ExitCode> {
    // The server takes its one credential and region from the same options the clients use
    // (--access-key-id, --access-key-secret, --region or OSS_* variables).
    let mut cfg = EmulatorConfig::new(
        &a.root,
        conn.access_key_id.as_deref().unwrap_or("emulator-ak"),
        conn.access_key_secret
            .as_deref()
            .unwrap_or("emulator-secret"),
    );
    cfg.region = conn.region.clone().unwrap_or_else(|| "cn-hangzhou".into());
    cfg.allow_anonymous = a.allow_anonymous;
    cfg.faults = Faults {
        latency_ms: a.latency.map(|d| d.as_millis() as u64).unwrap_or(0),
        bandwidth_per_connection: a.bandwidth.unwrap_or(0),
        bandwidth_total: a.link_bandwidth.unwrap_or(0),
        error_rate: a.error_rate,
        reset_rate: a.reset_rate,
        truncate_rate: a.truncate_rate,
        ..Faults::default()
    };
    let emu = Emulator::start(cfg, &a.addr)
        .await
        .with_context(|| format!("cannot serve {} on {}", a.root.display(), a.addr))?;
    eprintln!(
        "serving {} at {} (region {}); Ctrl-C to stop",
        a.root.display(),
        emu.endpoint(),
        emu.region()
    );
    super::wait_for_signal().await;
    eprintln!("{}", emu.summary());
    for (name, c) in emu.object_report() {
        eprintln!(
            "  {name}: {} requests, {} body bytes",
            c.requests, c.body_bytes
        );
    }
    emu.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
