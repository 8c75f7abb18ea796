//! Serving the plugin: the `unix://` endpoint (a stale socket file is removed, a live
//! plugin on it is not displaced), one tonic server with the Identity and Node services
//! routed by path, and the socket removed when the plugin ends. Other CSI services
//! (Controller, GroupController, SnapshotMetadata) answer UNIMPLEMENTED.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tonic::codegen::{http, BoxFuture, Service};

use super::proto::identity_server::IdentityServer;
use super::proto::node_server::NodeServer;
use super::Plugin;

/// The socket path of a `unix:///csi/csi.sock` endpoint (`unix:/csi/csi.sock` too).
pub fn socket_path_of(endpoint: &str) -> Result<PathBuf> {
    let Some(path) = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
    else {
        bail!(
            "--endpoint {endpoint:?} is not a unix socket: kubelet reaches CSI plugins over one, e.g. --endpoint unix:///csi/csi.sock"
        );
    };
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        bail!("--endpoint {endpoint:?} must name an absolute path, e.g. unix:///csi/csi.sock");
    }
    Ok(path)
}

/// The Identity and Node services behind one socket, routed by the gRPC path.
#[derive(Clone)]
struct CsiServices {
    identity: IdentityServer<Plugin>,
    node: NodeServer<Plugin>,
}

impl Service<http::Request<tonic::body::Body>> for CsiServices {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // Both generated services are always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let path = req.uri().path();
        if path.starts_with("/csi.v1.Identity/") {
            let mut s = self.identity.clone();
            Box::pin(async move { s.call(req).await })
        } else if path.starts_with("/csi.v1.Node/") {
            let mut s = self.node.clone();
            Box::pin(async move { s.call(req).await })
        } else {
            let status = tonic::Status::unimplemented(format!(
                "{path}: this is a node-only plugin (Identity and Node services)"
            ));
            Box::pin(async move { Ok(status.into_http()) })
        }
    }
}

/// Serves `plugin` on the `unix://` `endpoint` until `shutdown` completes, then removes the
/// socket.
pub async fn serve(
    endpoint: &str,
    plugin: Plugin,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let path = socket_path_of(endpoint)?;
    let listener = bind(&path)?;
    tracing::info!(
        "CSI plugin {} {} serving on {}",
        super::DRIVER_NAME,
        env!("CARGO_PKG_VERSION"),
        path.display()
    );
    let plugin = Arc::new(plugin);
    let services = CsiServices {
        identity: IdentityServer::from_arc(plugin.clone()),
        node: NodeServer::from_arc(plugin),
    };
    let incoming = tonic::codegen::tokio_stream::wrappers::UnixListenerStream::new(listener);
    let served = tonic::transport::Server::builder()
        .serve_with_incoming_shutdown(services, incoming, shutdown)
        .await;
    let _ = std::fs::remove_file(&path);
    served.context("the CSI gRPC server failed")?;
    tracing::info!("CSI plugin ended; its mounts stay with the node server");
    Ok(())
}

/// Binds the socket (owner-only: secrets travel through it), replacing a stale socket file
/// but never a plugin still answering on it, nor a file that is not a socket.
fn bind(path: &Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the socket's directory {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "another CSI plugin answers on {}: stop it first",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
        }
        Ok(_) => bail!(
            "{} exists and is not a socket: choose another --endpoint or remove it",
            path.display()
        ),
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} owner-only", path.display()))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unix_endpoints() {
        assert_eq!(
            socket_path_of("unix:///csi/csi.sock").unwrap(),
            Path::new("/csi/csi.sock")
        );
        assert_eq!(
            socket_path_of("unix:/csi/csi.sock").unwrap(),
            Path::new("/csi/csi.sock")
        );
        let e = socket_path_of("tcp://127.0.0.1:10000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unix:///csi/csi.sock"), "{e}");
        assert!(socket_path_of("unix://csi.sock").is_err());
    }
}
