//! How a session meets its connection's INIT so that another process can take the same
//! connection over later, and how it does. A FUSE connection is initialized once: the kernel
//! sends INIT when it is mounted and never again. fuser answers INIT inside
//! `Session::from_fd` and refuses every other request until it has, so a successor process
//! could not serve an initialized connection through fuser as it is. Instead every session
//! here is started on one end of a socketpair: the INIT request is written into the other end
//! (read from the kernel for a new connection, or the one its predecessor saved), fuser
//! answers it there, and the answer is read back (written to the kernel for a new
//! connection, compared with the saved one for a successor: a different answer means the
//! successor would serve the connection under terms the kernel never agreed to). Then the
//! real `/dev/fuse` descriptor is `dup2`ed over the socket's number, so fuser's channel reads
//! and answers the kernel from then on. Finally a successor asks the kernel to resend the
//! requests its predecessor had read but not answered (`FUSE_NOTIFY_RESEND`, Linux 6.9+).
//! Raw FUSE bytes only; no policy, no knowledge of who holds the descriptor.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

/// The INIT exchange of one connection, kept so that a successor can replay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// The kernel's INIT request, as it was read.
    pub request: Vec<u8>,
    /// The answer the connection was initialized with.
    pub reply: Vec<u8>,
}

/// How a session meets INIT.
pub enum Init {
    /// A new connection: the kernel's INIT is read from the descriptor and answered.
    Fresh,
    /// A connection another process initialized: its INIT is replayed and the answer must be
    /// the one the kernel already has.
    TakeOver(Handshake),
}

const FUSE_IN_HEADER: usize = 40;
const FUSE_INIT: u32 = 26;
/// `fuse_out_header.error` of a notification asking the kernel to resend every request
/// read but not answered (`FUSE_NOTIFY_RESEND`).
const FUSE_NOTIFY_RESEND: i32 = 7;
/// INIT flag (in `flags2`, bit 39 of the 64): the kernel resends on request.
const FUSE_HAS_RESEND: u64 = 1 << 39;

/// Why a takeover cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum TakeOverError {
    #[error("the connection's INIT was answered differently by this version ({0}); it cannot take this connection over")]
    Incompatible(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads the kernel's INIT request from a new connection's descriptor (the kernel sends it
/// at mount).
pub fn read_init(dev: &impl AsFd) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024 + 4096];
    loop {
        match nix::unistd::read(dev.as_fd(), &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                break;
            }
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    if buf.len() < FUSE_IN_HEADER + 8 || opcode(&buf) != FUSE_INIT {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the first request of a new FUSE connection was not INIT (opcode {})",
                opcode(&buf)
            ),
        ));
    }
    Ok(buf)
}

fn opcode(msg: &[u8]) -> u32 {
    msg.get(4..8)
        .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
        .unwrap_or(0)
}

/// Whether the kernel that sent this INIT resends on request (`FUSE_HAS_RESEND`).
pub fn kernel_resends(init_request: &[u8]) -> bool {
    let word = |at: usize| {
        init_request
            .get(at..at + 4)
            .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")) as u64)
            .unwrap_or(0)
    };
    // fuse_init_in: major, minor, max_readahead, flags, flags2.
    let flags = word(FUSE_IN_HEADER + 12) | (word(FUSE_IN_HEADER + 16) << 32);
    flags & FUSE_HAS_RESEND != 0
}

/// A socketpair standing in for the connection while fuser answers INIT: one end goes to
/// `Session::from_fd`, the other (`ours`) feeds it the request and hears the answer.
pub struct Stand {
    ours: OwnedFd,
    /// The number of the end fuser owns: the connection is put behind it.
    session_fd: std::os::fd::RawFd,
    request: Vec<u8>,
}

impl Stand {
    /// The stand, and the end to give to `Session::from_fd` (the request already in it).
    pub fn new(request: Vec<u8>) -> std::io::Result<(Stand, OwnedFd)> {
        let (ours, session) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        write_whole(&ours, &request)?;
        let stand = Stand {
            ours,
            session_fd: session.as_raw_fd(),
            request,
        };
        Ok((stand, session))
    }

    /// After fuser has answered: checks or forwards the answer, then puts the connection
    /// `dev` behind the number fuser reads and answers on.
    pub fn connect(self, init: &Init, dev: &OwnedFd) -> Result<Handshake, TakeOverError> {
        let session_fd = self.session_fd;
        let mut buf = vec![0u8; 4096];
        let n = nix::unistd::read(self.ours.as_fd(), &mut buf).map_err(std::io::Error::from)?;
        buf.truncate(n);
        let reply = buf;
        match init {
            Init::Fresh => write_whole(dev, &reply)?,
            Init::TakeOver(h) if h.reply != reply => {
                return Err(TakeOverError::Incompatible(format!(
                    "{} bytes, {} differ",
                    reply.len(),
                    reply.iter().zip(&h.reply).filter(|(a, b)| a != b).count()
                        + reply.len().abs_diff(h.reply.len())
                )))
            }
            Init::TakeOver(_) => {}
        }
        // SAFETY: `session_fd` is the live number fuser's channel owns; dup3 atomically
        // makes it refer to the connection instead of the socket (which closes).
        let r = unsafe { libc::dup3(dev.as_raw_fd(), session_fd, libc::O_CLOEXEC) };
        if r < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(Handshake {
            request: self.request,
            reply,
        })
    }
}

/// Asks the kernel to resend every request of this connection that was read but not
/// answered (by a process that died): they come again, marked, to whoever reads now.
pub fn request_resend(dev: &impl AsFd) -> std::io::Result<()> {
    let mut msg = [0u8; 16];
    msg[0..4].copy_from_slice(&16u32.to_ne_bytes());
    msg[4..8].copy_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    write_whole(dev, &msg)
}

fn write_whole(fd: &impl AsFd, msg: &[u8]) -> std::io::Result<()> {
    let n = nix::unistd::write(fd.as_fd(), msg)?;
    if n != msg.len() {
        return Err(std::io::Error::other(format!(
            "short write of a FUSE message ({n} of {})",
            msg.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init_request(flags: u32, flags2: u32) -> Vec<u8> {
        let mut m = vec![0u8; FUSE_IN_HEADER + 64];
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[4..8].copy_from_slice(&FUSE_INIT.to_ne_bytes());
        m[FUSE_IN_HEADER + 12..FUSE_IN_HEADER + 16].copy_from_slice(&flags.to_ne_bytes());
        m[FUSE_IN_HEADER + 16..FUSE_IN_HEADER + 20].copy_from_slice(&flags2.to_ne_bytes());
        m
    }

    #[test]
    fn resend_support_is_bit_39_of_the_init_flags() {
        assert!(kernel_resends(&init_request(0, 1 << 7)));
        assert!(!kernel_resends(&init_request(u32::MAX, !(1 << 7))));
        assert!(!kernel_resends(&[0u8; 10]));
    }

    #[test]
    fn a_stand_hands_the_request_over_and_forwards_or_checks_the_answer() {
        let request = init_request(1, 2);
        let (stand, session) = Stand::new(request.clone()).unwrap();
        let mut got = vec![0u8; 4096];
        let n = nix::unistd::read(session.as_fd(), &mut got).unwrap();
        assert_eq!(&got[..n], &request[..]);
        write_whole(&session, b"answer").unwrap();
        // The "connection": a pipe whose read end shows what was forwarded.
        let (r, w) = nix::unistd::pipe().unwrap();
        let target = session;
        let h = stand.connect(&Init::Fresh, &w).unwrap();
        assert_eq!(h.reply, b"answer");
        let n = nix::unistd::read(r.as_fd(), &mut got).unwrap();
        assert_eq!(&got[..n], b"answer");
        // The number now refers to the connection: writes through it reach the pipe.
        nix::unistd::write(target.as_fd(), b"x").unwrap();
        let n = nix::unistd::read(r.as_fd(), &mut got).unwrap();
        assert_eq!(&got[..n], b"x");

        let (stand, session) = Stand::new(request.clone()).unwrap();
        write_whole(&session, b"answeR").unwrap();
        let err = stand.connect(&Init::TakeOver(h), &w).unwrap_err();
        assert!(matches!(err, TakeOverError::Incompatible(_)), "{err}");
        assert!(err.to_string().contains("1 differ"), "{err}");
    }
}
