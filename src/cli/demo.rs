//! `ossmount demo`: the project's own OSS-compatible server with sample data, mounted, so a
//! newcomer sees the whole thing with one command and nothing to configure.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};

use ossmount::emulator::{Emulator, EmulatorConfig};
use ossmount::mount::MountOptions;
use ossmount::oss::{ClientConfig, Credentials, Endpoint, OssClient, OssUrl, Secret};
use ossmount::size::{human_bytes, parse_size};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Where the sample data, cache and mountpoint live (kept between runs, so a second
    /// run resumes what the first one fetched)
    #[arg(long, default_value = "ossmount-demo")]
    dir: PathBuf,
    /// Size of the big sample file
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    big_size: u64,
    /// Bandwidth cap per connection of the demo server, so parallel parts visibly help
    #[arg(long, default_value = "32MiB", value_parser = parse_size)]
    bandwidth: u64,
}

pub fn run(a: &DemoArgs, rt: &tokio::runtime::Runtime) -> Result<ExitCode> {
    let data = a.dir.join("data");
    let mnt = a.dir.join("mnt");
    let cache = a.dir.join("cache");
    std::fs::create_dir_all(&mnt).with_context(|| format!("cannot create {}", mnt.display()))?;
    let bucket = "demo-bucket";
    ossmount::sample::write_demo_bucket(&data.join(bucket), a.big_size)?;
    let mut ecfg = EmulatorConfig::new(&data, "demo-ak", "demo-secret");
    ecfg.faults.bandwidth_per_connection = a.bandwidth;
    ecfg.faults.latency_ms = 10;
    let emu = rt.block_on(Emulator::start(ecfg, "127.0.0.1:0"))?;
    let endpoint = Endpoint::parse(&emu.endpoint()).map_err(anyhow::Error::msg)?;
    let mut cfg = ClientConfig::new(endpoint);
    cfg.region = Some(emu.region().to_string());
    cfg.credentials = Some(Credentials {
        access_key_id: "demo-ak".into(),
        access_key_secret: Secret::new("demo-secret"),
        security_token: None,
    });
    cfg.retry.max_attempts = 3;
    let _guard = rt.enter();
    let client = OssClient::new(cfg)?;
    let url = OssUrl::parse(&format!("oss://{bucket}/")).map_err(anyhow::Error::msg)?;
    let mut opts = MountOptions::new(url.into(), mnt.clone(), cache.clone());
    opts.threads = 4;
    opts.max_connections = 16;
    let m = mnt.display();
    let result = ossmount::node::run_mount(&opts, Arc::new(client), rt.handle().clone(), || {
        eprintln!(
            "\nossmount demo: a local OSS-compatible server at {} ({}/s per connection) is mounted at {m}\n\n  ls -l {m} {m}/photos/2024 | head     listings only, nothing downloaded\n  time cp {m}/big/dataset.bin /tmp/      parts in parallel (from 4, more while it pays) into {}\n  getfattr -d {m}/big/dataset.bin       hydration state\n\nStop with Ctrl-C (or umount {m}); run the demo again to resume a partial file from the cache.\n",
            emu.endpoint(),
            human_bytes(a.bandwidth),
            cache.display()
        );
    });
    eprintln!("{}", emu.summary());
    rt.block_on(emu.shutdown());
    result?;
    Ok(ExitCode::SUCCESS)
}
