//! Detaching a mount from the terminal: fork, let the parent wait until the child reports the
//! mount is up (exit 0) or the child dies first (exit with its code, after it printed its error
//! to the terminal). System calls through `nix`; no mount logic here.

use std::os::fd::OwnedFd;

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, pipe, read, setsid, write, ForkResult};

/// The child's end of the readiness report.
pub struct Detached(OwnedFd);

/// Forks. Returns in the child only; the parent exits once the child reports or dies.
/// Must be called before any thread exists (before the async runtime starts).
pub fn detach() -> std::io::Result<Detached> {
    let (parent_end, child_end) = pipe()?;
    // SAFETY: no other thread exists yet, so the child may do anything after fork.
    match unsafe { fork() }? {
        ForkResult::Child => {
            drop(parent_end);
            setsid()?;
            Ok(Detached(child_end))
        }
        ForkResult::Parent { child } => {
            drop(child_end);
            let mut buf = [0u8; 2];
            if matches!(read(&parent_end, &mut buf), Ok(2)) && &buf == b"ok" {
                std::process::exit(0);
            }
            let code = match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, 0)) => 1,
                Ok(WaitStatus::Exited(_, code)) => code,
                _ => 1,
            };
            std::process::exit(code);
        }
    }
}

impl Detached {
    /// Once mounted: tell the parent, and let go of the terminal.
    pub fn report_mounted(self) {
        let _ = write(&self.0, b"ok");
        drop(self.0);
        if let Ok(null) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        {
            let _ = nix::unistd::dup2_stdin(&null);
            let _ = nix::unistd::dup2_stdout(&null);
            let _ = nix::unistd::dup2_stderr(&null);
        }
    }
}
