//! The command line: the argument types of every command (one file per command), how each
//! command turns its arguments into a library call, and the demo. Holds no logic worth
//! testing on its own: parsing, validation messages and wiring only.

pub mod connection;
pub mod csi;
pub mod demo;
pub mod download;
pub mod fluid;
pub mod fluid_config;
pub mod helper;
pub mod listing;
pub mod mount;
pub mod node;
pub mod prefetch;
pub mod progress;
pub mod serve;
pub mod status;
pub mod upgrade;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use connection::ConnectionArgs;

#[derive(Parser)]
#[command(
    name = "ossmount",
    version,
    about = "Mount an Alibaba Cloud OSS bucket read-only, with a resumable local cache"
)]
pub struct Cli {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// Log level (error, warn, info, debug, trace); RUST_LOG takes precedence
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// Append the log to this file (created owner-only) instead of stderr; a detached mount
    /// logs to <cache dir>/ossmount.log unless this is given
    #[arg(long, global = true)]
    pub log_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub cmd: Command,
}

impl Cli {
    /// Parses a command line (`args[0]` the program), noting which connection flags were
    /// written on it rather than taken from OSS_* variables: an `s3://` URL uses `--endpoint`
    /// and `--region` only then. Every parse of a command line (the binary's own, a CSI
    /// volume's, a Fluid mount's) goes through here.
    pub fn parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{parser::ValueSource, CommandFactory, FromArgMatches};
        let matches = Cli::command().try_get_matches_from(args)?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        let on_command_line = |id| matches.value_source(id) == Some(ValueSource::CommandLine);
        cli.conn.endpoint_on_command_line = on_command_line("endpoint");
        cli.conn.region_on_command_line = on_command_line("region");
        cli.conn.keys_on_command_line = connection::KeysOnCommandLine {
            id: on_command_line("access_key_id"),
            secret: on_command_line("access_key_secret"),
            token: on_command_line("session_token"),
        };
        Ok(cli)
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// List objects and prefixes: one decoded key per line
    Ls(listing::LsArgs),
    /// Show an object's size, ETag, Last-Modified and CRC-64
    Stat(listing::StatArgs),
    /// Download an object with parallel ranged GETs, resumable from a checkpoint (like the OSS
    /// SDKs' ResumableDownloadObject)
    Download(download::DownloadArgs),
    /// Mount a bucket (or a prefix) read-only; files are hydrated into the cache when opened
    Mount(mount::MountArgs),
    /// The fuse container of a Fluid ThinRuntime: mounts what Fluid's config names (at its
    /// targetPath, as fuse.ossmount) in the foreground, until SIGTERM
    Fluid(fluid::FluidArgs),
    /// The node server of a cache directory (started by `ossmount mount`; not for direct use)
    #[command(hide = true)]
    Node(node::NodeArgs),
    /// The Kubernetes CSI node plugin: serves CSI (spec v1) on --endpoint unix:///csi/csi.sock
    /// and mounts each volume through the node server of --cache-dir
    Csi(csi::CsiArgs),
    /// Start a local OSS-compatible server with sample data and mount it (Ctrl-C to stop)
    Demo(demo::DemoArgs),
    /// Show a cache directory: every entry's parts present, state and last use, totals
    /// against capacity, and the mount's counters (works with or without a mount)
    Status(status::StatusArgs),
    /// Replace a running node's server by the ossmount executable now on disk, without
    /// unmounting (readers wait a moment, none fails)
    Upgrade(upgrade::UpgradeArgs),
    /// Hydrate the objects under a prefix into a cache ahead of use (resumable); a later
    /// mount with the same --cache-dir serves them without requests
    Prefetch(prefetch::PrefetchArgs),
    /// Serve a directory as OSS buckets (each subdirectory is a bucket), for tests and demos.
    /// The credential it accepts is --access-key-id/--access-key-secret (default
    /// emulator-ak/emulator-secret) and its region --region (default cn-hangzhou).
    Serve(serve::ServeArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout, e.g. ossmount manpage > /usr/local/share/man/man1/ossmount.1
    Manpage,
}

/// Logs to `file` when given, else to stderr; colour only on a terminal (and not with
/// `NO_COLOR`), so a log file or a redirect never holds escape codes.
pub fn init_logging(level: Option<&str>, default: &str, file: Option<std::fs::File>) {
    use std::io::IsTerminal;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => tracing_subscriber::EnvFilter::new(v),
        _ => tracing_subscriber::EnvFilter::new(level.unwrap_or(default)),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match file {
        Some(f) => builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .init(),
        None => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder
                .with_ansi(colour)
                .with_writer(std::io::stderr)
                .init()
        }
    }
}

/// Opens (creating owner-only) a log file to append to.
pub fn open_log_file(path: &std::path::Path) -> Result<std::fs::File> {
    use anyhow::Context;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write the log file {}", path.display()))
}

/// `completions SHELL` and `manpage`: generated from the CLI definition itself.
pub fn print_generated(cmd: &Command) -> Result<ExitCode> {
    use clap::CommandFactory;
    let mut def = Cli::command();
    match cmd {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut def, "ossmount", &mut std::io::stdout());
        }
        _ => match clap_mangen::Man::new(def).render(&mut std::io::stdout()) {
            // `ossmount manpage | head` is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            r => r?,
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// The commands that run inside the async runtime from start to end.
pub async fn run_async(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Command::Ls(a) => listing::ls(&cli.conn, a).await,
        Command::Stat(a) => listing::stat(&cli.conn, a).await,
        Command::Download(a) => download::run(&cli.conn, a).await,
        Command::Status(a) => status::run(a),
        Command::Upgrade(a) => upgrade::run(a),
        Command::Prefetch(a) => prefetch::run(&cli.conn, a).await,
        Command::Serve(a) => serve::run(&cli.conn, a).await,
        Command::Completions { .. } | Command::Manpage => print_generated(&cli.cmd),
        Command::Mount(_)
        | Command::Fluid(_)
        | Command::Demo(_)
        | Command::Node(_)
        | Command::Csi(_) => {
            unreachable!("run synchronously by main")
        }
    }
}

/// Waits for SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
