//! The `ossmount` command: parse, set up logging, start the runtime, hand
//! over to the command in `cli`. Wiring only; the work lives in the library.

mod cli;

use std::process::ExitCode;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().collect();
    if cli::helper::is_helper_call(&args[1..]) {
        // Run by mount(8) / mount.fuse3: SOURCE MOUNTPOINT -o OPTIONS.
        match cli::helper::translate(&args[1..]) {
            Ok(rest) => args.splice(1.., rest).for_each(drop),
            Err(e) => {
                eprintln!("ossmount: error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let secret_in_argv = args[1..]
        .iter()
        .any(|a| a == "--access-key-secret" || a.starts_with("--access-key-secret="));
    let cli = match Cli::parse_args(&args) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let default = match &cli.cmd {
        Command::Node(_) | Command::Demo(_) | Command::Fluid(_) | Command::Csi(_) => "info",
        Command::Mount(m) if m.foreground => "info",
        _ => "warn",
    };
    let file = match cli.log_file.as_deref().map(cli::open_log_file).transpose() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ossmount: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    cli::init_logging(cli.log_level.as_deref(), default, file);
    if secret_in_argv {
        tracing::warn!("--access-key-secret on the command line is visible to every user in `ps` and in shell history; prefer OSS_ACCESS_KEY_SECRET in the environment");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ossmount: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.cmd {
        Command::Mount(ref m) => {
            let log = cli::node::NodeLog {
                level: cli.log_level.as_deref(),
                file: cli.log_file.as_deref(),
            };
            cli::mount::run(&cli.conn, m, &rt, &log)
        }
        Command::Fluid(ref f) => {
            let log = cli::node::NodeLog {
                level: cli.log_level.as_deref(),
                file: cli.log_file.as_deref(),
            };
            cli::fluid::run(f, &rt, &log)
        }
        Command::Csi(ref c) => {
            let log = cli::node::NodeLog {
                level: cli.log_level.as_deref(),
                file: cli.log_file.as_deref(),
            };
            cli::csi::run(&cli.conn, c, &rt, &log)
        }
        Command::Node(ref n) => cli::node::run(n, &rt),
        Command::Demo(ref d) => cli::demo::run(d, &rt),
        _ => rt.block_on(cli::run_async(cli)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ossmount: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
