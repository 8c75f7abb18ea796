//! The kernel side of a mount this process makes itself: open `/dev/fuse`, mount(2) it with
//! type `fuse.ossmount` (so `/proc/self/mountinfo` names the filesystem, which is what
//! supervisors, fstab tools and CSI drivers check), and unmount it when asked or when the
//! mount is dropped. fuser's own mount says only `fuse`. Needs the privilege to mount
//! (root); without it the caller falls back to fuser's mount through fusermount3. Must not
//! speak the FUSE protocol (fuser does, on the descriptor returned here).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};

/// The type the kernel shows for every ossmount mount.
pub const FS_TYPE: &str = "fuse.ossmount";

/// A FUSE mount this process made. `unmount` (or drop) unmounts it, unless the kernel has
/// already ended its connection (someone ran `umount`): then the mount point may hold
/// another mount by now, which must not be touched.
#[derive(Debug)]
pub struct OwnMount {
    target: CString,
    /// The kernel's id of this mount (`/proc/self/mountinfo`): an unmount goes ahead only
    /// while the top mount at `target` is still this one, never another mounted over or in
    /// its place after a lazy `umount -l`.
    mount_id: Option<u64>,
    /// A duplicate of the session's descriptor, to ask the kernel whether the connection
    /// still lives.
    device: OwnedFd,
    done: bool,
}

/// Mounts a fresh `/dev/fuse` on `target` read-only as `fuse.ossmount` from `source`.
/// Returns the descriptor to serve and the mount, or `None` without the privilege to mount.
pub fn mount(
    target: &Path,
    source: &str,
    allow_other: bool,
) -> std::io::Result<Option<(OwnedFd, OwnMount)>> {
    let target = target.canonicalize()?;
    let root_mode = nix::sys::stat::stat(&target)?.st_mode & libc::S_IFMT;
    let device = OwnedFd::from(
        std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/fuse")?,
    );
    let mut data = format!(
        "fd={},rootmode={root_mode:o},user_id={},group_id={},default_permissions",
        device.as_raw_fd(),
        nix::unistd::getuid(),
        nix::unistd::getgid()
    );
    if allow_other {
        data.push_str(",allow_other");
    }
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME;
    match nix::mount::mount(
        Some(source),
        &target,
        Some(FS_TYPE),
        flags,
        Some(data.as_str()),
    ) {
        Ok(()) => {}
        Err(nix::errno::Errno::EPERM) => return Ok(None),
        Err(e) => {
            return Err(std::io::Error::other(format!(
                "mount(2) of {} failed: {e}",
                target.display()
            )))
        }
    }
    let own = OwnMount {
        mount_id: top_mount_id(&target),
        target: CString::new(target.as_os_str().as_bytes())?,
        device: device.try_clone()?,
        done: false,
    };
    Ok(Some((device, own)))
}

impl OwnMount {
    /// A mount a predecessor process made, taken over with its connection `device`: this
    /// process unmounts it from now on.
    pub fn adopt(
        target: &Path,
        mount_id: Option<u64>,
        device: OwnedFd,
    ) -> std::io::Result<OwnMount> {
        Ok(OwnMount {
            mount_id,
            target: CString::new(target.as_os_str().as_bytes())?,
            device,
            done: false,
        })
    }

    /// Where it is mounted (canonical).
    pub fn target(&self) -> &Path {
        Path::new(std::ffi::OsStr::from_bytes(self.target.as_bytes()))
    }

    /// The kernel's id of this mount, for a successor to adopt it by.
    pub fn kernel_mount_id(&self) -> Option<u64> {
        self.mount_id
    }

    /// Whether there is nothing of ours left to unmount at the target.
    fn gone(&self) -> bool {
        let path = Path::new(std::ffi::OsStr::from_bytes(self.target.as_bytes()));
        self.done
            || !connected(&self.device)
            || (self.mount_id.is_some() && top_mount_id(path) != self.mount_id)
    }

    /// Unmounts (a plain umount: busy files make it fail, as `umount` does), once.
    pub fn unmount(&mut self) -> std::io::Result<()> {
        if self.gone() {
            self.done = true;
            return Ok(());
        }
        nix::mount::umount2(self.target.as_c_str(), MntFlags::empty())?;
        self.done = true;
        Ok(())
    }
}

impl OwnMount {
    /// Detaches (MNT_DETACH): gone from the namespace now, ended once its files close.
    pub fn detach(&mut self) -> std::io::Result<()> {
        if self.gone() {
            self.done = true;
            return Ok(());
        }
        nix::mount::umount2(self.target.as_c_str(), MntFlags::MNT_DETACH)?;
        self.done = true;
        Ok(())
    }
}

impl Drop for OwnMount {
    fn drop(&mut self) {
        if !self.gone() {
            // The process is ending without an unmount (an error after mounting): detach,
            // so no dead mount is left behind.
            let _ = nix::mount::umount2(self.target.as_c_str(), MntFlags::MNT_DETACH);
        }
    }
}

/// Whether the kernel still serves the connection: after an unmount `/dev/fuse` reports an
/// error on poll.
pub(crate) fn connected(device: &OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(device.as_fd(), PollFlags::empty())];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => !fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLNVAL)),
        Err(_) => true,
    }
}

/// The id of the top mount at `target` (the last line of `/proc/self/mountinfo` naming it).
fn top_mount_id(target: &Path) -> Option<u64> {
    let want = target.to_str()?;
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(want))
        .and_then(|l| l.split(' ').next())
        .and_then(|id| id.parse().ok())
}
