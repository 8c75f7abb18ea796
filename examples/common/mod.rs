//! What the examples share: reading `--name value` options with defaults, and a client for
//! the benchmarks' emulator.
// Each example includes this module and uses a subset of it.
#![allow(dead_code)]

/// The value after `name` on the command line, or `default`.
pub fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// The number after `name` on the command line, or `default`.
pub fn arg_number(name: &str, default: u64) -> u64 {
    arg(name, &default.to_string()).parse().expect("a number")
}

/// The credential the benchmarks' emulator accepts.
pub const BENCH_AK: &str = "bench-ak";
pub const BENCH_SK: &str = "bench-secret";

/// A client configuration for the benchmarks' emulator at `endpoint`.
pub fn bench_client_config(endpoint: &str) -> ossmount::oss::ClientConfig {
    let mut cfg =
        ossmount::oss::ClientConfig::new(ossmount::oss::Endpoint::parse(endpoint).unwrap());
    cfg.region = Some("cn-hangzhou".into());
    cfg.credentials = Some(ossmount::oss::Credentials {
        access_key_id: BENCH_AK.into(),
        access_key_secret: ossmount::oss::Secret::new(BENCH_SK),
        security_token: None,
    });
    cfg
}
