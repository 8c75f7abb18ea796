//! The CSI node plugin (`ossmount csi`): CSI spec v1 over gRPC on a unix socket, so kubelet
//! mounts OSS volumes through ossmount. It owns the gRPC types and services generated from
//! the spec's own `csi.proto` (`proto/csi/`, by `build.rs`), the Identity and Node services,
//! turning a volume's attributes and secrets into a mount request (`volume`), and the
//! publish/unpublish rules kubelet relies on: idempotent publish (`mountinfo` tells what is
//! at the target), unpublish of a target not mounted is OK, the spec's error codes. It must
//! hold no mount logic of its own: a publish goes to a `Mounter` (the command line's, which
//! asks the node server of the node's one cache directory, as `ossmount mount` does), so the
//! mount lives in that node server and outlives this plugin. Static provisioning only: no
//! Controller service.

pub mod mountinfo;
mod server;
pub mod volume;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

pub use server::{serve, socket_path_of};
pub use volume::{InvalidVolume, VolumeMount};

/// The types and services generated from `proto/csi/csi.proto` (package `csi.v1`).
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod proto {
    tonic::include_proto!("csi.v1");
}

use proto::identity_server::Identity;
use proto::node_server::Node;

/// The driver name kubelet, the CSIDriver object and PersistentVolumes use.
pub const DRIVER_NAME: &str = "ossmount.csi.alibabacloud.com";

/// The filesystem type of every ossmount mount in mountinfo.
const FS_TYPE: &str = "fuse.ossmount";

/// What a publish asks the mounter for. Holds secrets (`volume.credentials_env`).
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub volume: VolumeMount,
    pub target: PathBuf,
}

/// Why a mounter did not mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountRefusal {
    /// The request itself is wrong (an option value): INVALID_ARGUMENT.
    Invalid(String),
    /// The mount failed (the server refused, the node could not start): the code follows
    /// the cause (`status_of_mount_failure`).
    Failed(String),
}

/// Makes a mount at `target` that outlives the plugin (the node server's).
pub trait Mounter: Send + Sync + 'static {
    fn mount(&self, req: PublishRequest)
        -> crate::store::BoxFut<'static, Result<(), MountRefusal>>;
}

/// The plugin: Identity and Node services over one mounter and one cache directory.
pub struct Plugin {
    node_id: String,
    cache_dir: PathBuf,
    mounter: Arc<dyn Mounter>,
    /// Publishes and unpublishes one at a time: each checks the target, then changes it.
    changing: tokio::sync::Mutex<()>,
}

impl Plugin {
    pub fn new(node_id: String, cache_dir: PathBuf, mounter: Arc<dyn Mounter>) -> Plugin {
        Plugin {
            node_id,
            cache_dir,
            mounter,
            changing: tokio::sync::Mutex::new(()),
        }
    }

    /// The URL of the mount the node serves at `target`, from its status file (`None` when
    /// the status does not list it).
    fn served_url(&self, target: &Path) -> Option<String> {
        let body = std::fs::read(self.cache_dir.join("status.json")).ok()?;
        let st: crate::status::MountStatusFile = serde_json::from_slice(&body).ok()?;
        let target = target.to_str()?;
        st.mounts
            .into_iter()
            .find(|m| m.id != 0 && m.mountpoint == target)
            .map(|m| m.url)
    }

    async fn publish(&self, req: proto::NodePublishVolumeRequest) -> Result<(), Status> {
        if req.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id is missing"));
        }
        if req.target_path.is_empty() {
            return Err(Status::invalid_argument("target_path is missing"));
        }
        let target = PathBuf::from(&req.target_path);
        if !target.is_absolute() {
            return Err(Status::invalid_argument(format!(
                "target_path {} is not absolute",
                req.target_path
            )));
        }
        let capability = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("volume_capability is missing"))?;
        let mount_flags = match &capability.access_type {
            Some(proto::volume_capability::AccessType::Mount(m)) => m.mount_flags.clone(),
            Some(proto::volume_capability::AccessType::Block(_)) => {
                return Err(Status::invalid_argument(
                    "ossmount volumes are filesystems: use volumeMode Filesystem, not Block",
                ))
            }
            None => Vec::new(),
        };
        let context: BTreeMap<String, String> = req.volume_context.clone().into_iter().collect();
        let secrets: BTreeMap<String, String> = req.secrets.clone().into_iter().collect();
        let volume = volume::volume_mount(&context, &mount_flags, &secrets)
            .map_err(|e| Status::invalid_argument(e.0))?;
        let _one_at_a_time = self.changing.lock().await;
        if let Some(at) = mountinfo::top_mount(&target) {
            if at.fs_type != FS_TYPE {
                return Err(Status::already_exists(format!(
                    "{} already holds a {} mount of {}, not this volume",
                    target.display(),
                    at.fs_type,
                    at.source
                )));
            }
            // A mount whose server is gone answers ENOTCONN: detach it and mount afresh.
            if let Err(e) = std::fs::metadata(&target) {
                tracing::warn!(
                    "{} is a dead ossmount mount ({e}): detaching it before publishing {}",
                    target.display(),
                    req.volume_id
                );
                detach(&target)?;
            } else {
                let same_bucket = at.source == format!("ossmount:{}", volume.bucket);
                let served = self.served_url(&target);
                if same_bucket && served.as_deref().is_none_or(|u| u == volume.source) {
                    tracing::info!(
                        "volume {} is already published at {}",
                        req.volume_id,
                        target.display()
                    );
                    return Ok(());
                }
                return Err(Status::already_exists(format!(
                    "{} already serves {}, not volume {} ({})",
                    target.display(),
                    served.unwrap_or(at.source),
                    req.volume_id,
                    volume.source
                )));
            }
        }
        std::fs::create_dir_all(&target)
            .map_err(|e| Status::internal(format!("cannot create {}: {e}", target.display())))?;
        let started = Instant::now();
        let source = volume.source.clone();
        let asked = PublishRequest {
            volume,
            target: target.clone(),
        };
        match self.mounter.mount(asked).await {
            Ok(()) => {}
            Err(MountRefusal::Invalid(msg)) => return Err(Status::invalid_argument(msg)),
            Err(MountRefusal::Failed(msg)) => return Err(status_of_mount_failure(&msg)),
        }
        match mountinfo::top_mount(&target) {
            Some(at) if at.fs_type == FS_TYPE => {}
            other => {
                return Err(Status::internal(format!(
                    "the node server reported {} mounted, but mountinfo shows {other:?} there",
                    target.display()
                )))
            }
        }
        tracing::info!(
            "published volume {} ({source}) at {} in {} ms",
            req.volume_id,
            target.display(),
            started.elapsed().as_millis()
        );
        Ok(())
    }

    async fn unpublish(&self, req: proto::NodeUnpublishVolumeRequest) -> Result<(), Status> {
        if req.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id is missing"));
        }
        if req.target_path.is_empty() {
            return Err(Status::invalid_argument("target_path is missing"));
        }
        let target = PathBuf::from(&req.target_path);
        if !target.is_absolute() {
            return Err(Status::invalid_argument(format!(
                "target_path {} is not absolute",
                req.target_path
            )));
        }
        let _one_at_a_time = self.changing.lock().await;
        // Only ossmount's mounts are taken down; a stacked one (an earlier publish) too.
        for _ in 0..8 {
            match mountinfo::top_mount(&target) {
                Some(at) if at.fs_type == FS_TYPE => unmount(&target)?,
                Some(at) => {
                    return Err(Status::failed_precondition(format!(
                        "{} holds a {} mount of {}, not ossmount's: not unmounting it",
                        target.display(),
                        at.fs_type,
                        at.source
                    )))
                }
                None => break,
            }
        }
        match std::fs::remove_dir(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Status::internal(format!(
                    "cannot remove {} after unmounting: {e}",
                    target.display()
                )))
            }
        }
        tracing::info!(
            "unpublished volume {} from {}",
            req.volume_id,
            target.display()
        );
        Ok(())
    }
}

/// Unmounts `target`; a busy mount (a file still open after its pod ended) is detached, as
/// `umount -l` does, and ends in the node server once its files close.
fn unmount(target: &Path) -> Result<(), Status> {
    use nix::mount::{umount2, MntFlags};
    match umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => {
            tracing::warn!("{} is busy: detaching it", target.display());
            detach(target)
        }
        Err(e) => Err(Status::internal(format!(
            "cannot unmount {}: {e}",
            target.display()
        ))),
    }
}

fn detach(target: &Path) -> Result<(), Status> {
    nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| Status::internal(format!("cannot detach {}: {e}", target.display())))
}

/// The service's error codes that mean the credentials are not accepted.
const DENIED_CODES: &[&str] = &[
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidSecurityToken",
    "SecurityTokenExpired",
    "InvalidArgument: Credential",
];

/// The spec's code for a failed mount, from its message (which carries the service's
/// error code, e.g. `Failed with error code: InvalidAccessKeyId; ...`).
pub fn status_of_mount_failure(msg: &str) -> Status {
    if DENIED_CODES.iter().any(|c| msg.contains(c)) {
        Status::permission_denied(msg)
    } else if msg.contains("NoSuchBucket") {
        Status::not_found(msg)
    } else if msg.contains("cannot tell the region") || msg.contains("no endpoint") {
        Status::invalid_argument(msg)
    } else {
        Status::internal(msg)
    }
}

#[tonic::async_trait]
impl Identity for Plugin {
    async fn get_plugin_info(
        &self,
        _: Request<proto::GetPluginInfoRequest>,
    ) -> Result<Response<proto::GetPluginInfoResponse>, Status> {
        Ok(Response::new(proto::GetPluginInfoResponse {
            name: DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: Default::default(),
        }))
    }

    /// A node-only plugin: no Controller service, no topology, so no capability to declare.
    async fn get_plugin_capabilities(
        &self,
        _: Request<proto::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<proto::GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(proto::GetPluginCapabilitiesResponse {
            capabilities: Vec::new(),
        }))
    }

    async fn probe(
        &self,
        _: Request<proto::ProbeRequest>,
    ) -> Result<Response<proto::ProbeResponse>, Status> {
        Ok(Response::new(proto::ProbeResponse { ready: Some(true) }))
    }
}

#[tonic::async_trait]
impl Node for Plugin {
    async fn node_stage_volume(
        &self,
        _: Request<proto::NodeStageVolumeRequest>,
    ) -> Result<Response<proto::NodeStageVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "no STAGE_UNSTAGE_VOLUME: volumes are published directly",
        ))
    }

    async fn node_unstage_volume(
        &self,
        _: Request<proto::NodeUnstageVolumeRequest>,
    ) -> Result<Response<proto::NodeUnstageVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "no STAGE_UNSTAGE_VOLUME: volumes are published directly",
        ))
    }

    async fn node_publish_volume(
        &self,
        req: Request<proto::NodePublishVolumeRequest>,
    ) -> Result<Response<proto::NodePublishVolumeResponse>, Status> {
        self.publish(req.into_inner()).await?;
        Ok(Response::new(proto::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<proto::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<proto::NodeUnpublishVolumeResponse>, Status> {
        self.unpublish(req.into_inner()).await?;
        Ok(Response::new(proto::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        _: Request<proto::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<proto::NodeGetVolumeStatsResponse>, Status> {
        Err(Status::unimplemented("no GET_VOLUME_STATS"))
    }

    async fn node_expand_volume(
        &self,
        _: Request<proto::NodeExpandVolumeRequest>,
    ) -> Result<Response<proto::NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented("OSS volumes have no size to expand"))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<proto::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<proto::NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(proto::NodeGetCapabilitiesResponse {
            capabilities: Vec::new(),
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<proto::NodeGetInfoRequest>,
    ) -> Result<Response<proto::NodeGetInfoResponse>, Status> {
        Ok(Response::new(proto::NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_failures_get_the_specs_codes() {
        let denied = status_of_mount_failure(
            "cannot list oss://b/ (checked before mounting): Failed with error code: InvalidAccessKeyId; Error info: ...",
        );
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("InvalidAccessKeyId"));
        assert_eq!(
            status_of_mount_failure("Failed with error code: SignatureDoesNotMatch").code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            status_of_mount_failure("Failed with error code: NoSuchBucket").code(),
            tonic::Code::NotFound
        );
        assert_eq!(
            status_of_mount_failure("connection refused").code(),
            tonic::Code::Internal
        );
    }
}
