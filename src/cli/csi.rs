//! `ossmount csi`: the CSI node plugin's command line, and its mounter: a volume's mount
//! (source, `-o` options, credential environment from `ossmount::csi::volume`) becomes the
//! same `ossmount mount` arguments and the same request to the node server of `--cache-dir`
//! that `ossmount mount` sends (`mount::ask_node`), so every volume of the node shares one
//! node server and one cache, and the mounts outlive this process. Wiring only.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Result};

use ossmount::csi::{MountRefusal, Mounter, Plugin, PublishRequest};

use super::connection::ConnectionArgs;
use super::node::NodeLog;
use super::{Cli, Command};

#[derive(clap::Args)]
pub struct CsiArgs {
    /// This node's name as kubelet knows it (NodeGetInfo), e.g. from the pod's spec.nodeName
    #[arg(long, env = "CSI_NODE_ID")]
    node_id: String,
    /// The node's one cache directory, shared by every volume and pod on it (local disk)
    #[arg(long)]
    cache_dir: PathBuf,
}

/// Mounts through the node server of the plugin's cache directory.
struct NodeMounter {
    cache_dir: PathBuf,
    log_level: Option<String>,
    log_file: Option<PathBuf>,
}

impl Mounter for NodeMounter {
    fn mount(
        &self,
        req: PublishRequest,
    ) -> ossmount::store::BoxFut<'static, Result<(), MountRefusal>> {
        let (cache_dir, level, file) = (
            self.cache_dir.clone(),
            self.log_level.clone(),
            self.log_file.clone(),
        );
        Box::pin(async move {
            // The volume's options as a mount helper call, parsed as `ossmount mount`
            // parses them: the same validation and messages.
            let mut call = vec![
                req.volume.source.clone(),
                req.target.display().to_string(),
                "-o".to_string(),
                format!("cache_dir={}", cache_dir.display()),
            ];
            for o in &req.volume.options {
                call.extend(["-o".to_string(), o.clone()]);
            }
            // Pods run as any uid (runAsNonRoot ones too): a volume is theirs, not root's.
            if !req.volume.options.iter().any(|o| o == "allow_other") {
                call.extend(["-o".to_string(), "allow_other".to_string()]);
            }
            let argv = super::helper::translate(&call).map_err(MountRefusal::Invalid)?;
            let cli = Cli::parse_args(std::iter::once("ossmount".to_string()).chain(argv))
                .map_err(|e| MountRefusal::Invalid(e.to_string().trim().to_string()))?;
            let Command::Mount(m) = cli.cmd else {
                unreachable!("a helper call is a mount")
            };
            let mut conn = cli.conn;
            // Credentials come from the volume's secrets (as the chain's environment, so
            // never on a command line) or, without them, from this plugin's own chain
            // (its OSS_* variables, RRSA, the ECS role...; for S3 its AWS_* ones, IRSA...).
            let mut env = super::mount::chain_environment(&req.volume.source);
            if !req.volume.credentials_env.is_empty() {
                // The volume's own keys: no other source of the plugin's (its key files, its
                // OSS_* variables) may win over them.
                conn.access_key_id = None;
                conn.access_key_secret = None;
                conn.session_token = None;
                conn.keys_on_command_line = Default::default();
                conn.credentials_dir = None;
                conn.access_key_id_file = None;
                conn.access_key_secret_file = None;
                conn.session_token_file = None;
                env.retain(|k, _| !is_credential(k));
                env.extend(req.volume.credentials_env.clone());
            }
            let log = NodeLog {
                level: level.as_deref(),
                file: file.as_deref(),
            };
            let (_, joined) = super::mount::ask_node(&conn, &m, env, &log)
                .await
                .map_err(|e| MountRefusal::Failed(format!("{e:#}")))?;
            // Node-wide settings this volume asked for otherwise than the node runs with.
            for note in &joined.notes {
                tracing::warn!("{}: {note}", req.target.display());
            }
            Ok(())
        })
    }
}

/// Variables of the credential chain's first step, replaced by a volume's secrets.
fn is_credential(var: &str) -> bool {
    matches!(
        var,
        "OSS_ACCESS_KEY_ID"
            | "OSS_ACCESS_KEY_SECRET"
            | "OSS_SESSION_TOKEN"
            | "ALIBABA_CLOUD_ACCESS_KEY_ID"
            | "ALIBABA_CLOUD_ACCESS_KEY_SECRET"
            | "ALIBABA_CLOUD_SECURITY_TOKEN"
            | "AWS_ACCESS_KEY_ID"
            | "AWS_SECRET_ACCESS_KEY"
            | "AWS_SESSION_TOKEN"
    )
}

/// `ossmount csi --endpoint unix:///csi/csi.sock --node-id N --cache-dir DIR`: serves until
/// SIGTERM or SIGINT, then removes its socket; the mounts stay with the node server.
pub fn run(
    conn: &ConnectionArgs,
    args: &CsiArgs,
    rt: &tokio::runtime::Runtime,
    log: &NodeLog<'_>,
) -> Result<ExitCode> {
    // `--endpoint` is the global flag: for this command, the plugin's socket.
    let Some(endpoint) = conn.endpoint.as_deref() else {
        bail!("ossmount csi needs --endpoint unix:///csi/csi.sock (the socket kubelet's registrar names)");
    };
    ossmount::csi::socket_path_of(endpoint)?;
    if args.node_id.trim().is_empty() {
        bail!("--node-id is empty: pass the node's name (spec.nodeName)");
    }
    let cache_dir = std::path::absolute(&args.cache_dir)?;
    ossmount::cache::private_dir(&cache_dir)?;
    let mounter = NodeMounter {
        cache_dir: cache_dir.clone(),
        log_level: log.level.map(str::to_string),
        log_file: log.file.map(PathBuf::from),
    };
    let plugin = Plugin::new(args.node_id.clone(), cache_dir, Arc::new(mounter));
    rt.block_on(ossmount::csi::serve(
        endpoint,
        plugin,
        super::wait_for_signal(),
    ))?;
    Ok(ExitCode::SUCCESS)
}
