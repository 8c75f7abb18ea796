//! Streaming an object's bytes under the faults: the bandwidth cap per connection, stalls,
//! truncated bodies and connection resets.

use std::io::Read;
use std::io::Seek;
use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::response::Ctx;
use super::{bump, ConnCtx, State};

/// What one GET body sends: `[start, end)` of `path`, cut at `cut.0` (by a reset when
/// `cut.1`) if a fault was rolled.
pub(super) struct BodyPlan {
    pub(super) path: PathBuf,
    /// The version the answer's headers named: the file opened must still be it.
    pub(super) etag: String,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) cut: Option<(u64, bool)>,
}

pub(super) async fn stream_file(
    state: &Arc<State>,
    conn: &ConnCtx,
    ctx: &Ctx,
    plan: BodyPlan,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> std::io::Result<()> {
    let BodyPlan {
        path,
        etag,
        start,
        end,
        cut,
    } = plan;
    let _streaming = Streaming::begin(state, ctx);
    let mut file = std::fs::File::open(&path)?;
    // Replaced (renamed over) since its headers were decided: its bytes are another
    // version's. A real server never mixes them; the answer breaks off instead.
    if super::objects::etag_of(&file.metadata()?) != etag {
        return Err(std::io::Error::other(
            "the object was replaced while it was being answered",
        ));
    }
    file.seek(SeekFrom::Start(start))?;
    let mut pos = start;
    while pos < end {
        let (rate, link_rate) = {
            let f = state.faults.lock().unwrap();
            (f.bandwidth_per_connection, f.bandwidth_total)
        };
        let chunk_cap: u64 = match [rate, link_rate].into_iter().filter(|&r| r > 0).min() {
            Some(r) => (r / 50).clamp(4096, 256 << 10),
            None => 256 << 10,
        };
        let mut want = chunk_cap.min(end - pos);
        if let Some((at, _)) = cut {
            if pos >= at {
                let (_, reset) = cut.expect("cut");
                if reset {
                    // SO_LINGER 0 turns the close into a RST, as a dropped connection would.
                    let linger = libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    };
                    // SAFETY: fd belongs to this live connection; setsockopt only reads `linger`.
                    unsafe {
                        libc::setsockopt(
                            conn.fd,
                            libc::SOL_SOCKET,
                            libc::SO_LINGER,
                            &linger as *const libc::linger as *const libc::c_void,
                            std::mem::size_of::<libc::linger>() as libc::socklen_t,
                        );
                    }
                }
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "injected cut",
                ));
            }
            want = want.min(at - pos).max(1);
        }
        let mut buf = vec![0u8; want as usize];
        file.read_exact(&mut buf)?;
        if rate > 0 {
            tokio::time::sleep_until(take_turn(&conn.next_free, want, rate).into()).await;
        }
        if link_rate > 0 {
            // One queue for every connection: together they never pass the link's width.
            tokio::time::sleep_until(take_turn(&state.link_free, want, link_rate).into()).await;
        }
        if tx.send(Ok(Bytes::from(buf))).await.is_err() {
            return Ok(()); // the client went away
        }
        bump(state, ctx, |c| c.body_bytes += want);
        pos += want;
    }
    Ok(())
}

/// Books `bytes` at `rate` bytes/s on a queue whose next free instant is `next_free`;
/// returns when they may be sent.
fn take_turn(next_free: &std::sync::Mutex<Instant>, bytes: u64, rate: u64) -> Instant {
    let mut nf = next_free.lock().unwrap();
    let begin = (*nf).max(Instant::now());
    *nf = begin + Duration::from_secs_f64(bytes as f64 / rate as f64);
    *nf
}

/// One GET body in flight: counted while it streams, for `Counters::peak_concurrent_bodies`.
struct Streaming<'a> {
    state: &'a State,
    object: String,
}

impl<'a> Streaming<'a> {
    fn begin(state: &'a State, ctx: &Ctx) -> Self {
        let object = format!("{}/{}", ctx.bucket, ctx.key);
        let (all, this) = {
            let mut g = state.streaming.lock().unwrap();
            g.0 += 1;
            let this = g.1.entry(object.clone()).or_default();
            *this += 1;
            let this = *this;
            (g.0, this)
        };
        let mut s = state.stats.lock().unwrap();
        s.total.peak_concurrent_bodies = s.total.peak_concurrent_bodies.max(all);
        let c = s.objects.entry(object.clone()).or_default();
        c.peak_concurrent_bodies = c.peak_concurrent_bodies.max(this);
        Streaming { state, object }
    }
}

impl Drop for Streaming<'_> {
    fn drop(&mut self) {
        let mut g = self.state.streaming.lock().unwrap();
        g.0 -= 1;
        if let Some(n) = g.1.get_mut(&self.object) {
            *n -= 1;
            if *n == 0 {
                g.1.remove(&self.object);
            }
        }
    }
}
