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

/// The comma-separated list after `name` on the command line, or `default`.
pub fn list(name: &str, default: &str) -> Vec<String> {
    arg(name, default)
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// One emulated link: a cap per connection, and one for the whole link (0: none).
pub struct Shape {
    pub name: &'static str,
    pub per_connection: u64,
    pub link: u64,
}

/// The links `--shapes` names (`per-connection`: 24 MB/s per connection, no link cap;
/// `link`: 25 MB/s per connection and 125 MB/s in all), their caps from `--per-connection`,
/// `--link-per-connection` and `--link`.
pub fn shapes() -> Vec<Shape> {
    let size = |name: &str, default: &str| {
        ossmount::size::parse_size(&arg(name, default)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    list("--shapes", "per-connection,link")
        .iter()
        .map(|n| match n.as_str() {
            "per-connection" => Shape {
                name: "per-connection",
                per_connection: size("--per-connection", "24MB"),
                link: 0,
            },
            "link" => Shape {
                name: "link",
                per_connection: size("--link-per-connection", "25MB"),
                link: size("--link", "125MB"),
            },
            _ => panic!("--shapes: {n} is not one of per-connection, link"),
        })
        .collect()
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
