//! The control socket of a running mount (`<cache>/control.sock`, owner-only, in the
//! owner-only cache directory): `ossmount prefetch` against a cache a mount holds asks the
//! mount to do the work, with the same cache, engine and connection limits, instead of being
//! refused by the cache lock; the caller shows the progress. One JSON request per
//! connection, answered by progress lines and a final report. Must not decide what to fetch
//! (that is `prefetch`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::cache::Cache;
use crate::hydrate::Progress;
use crate::prefetch::{prefetch, PrefetchReport};
use crate::store::ObjectStore;

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Prefetch {
        bucket: String,
        prefix: String,
        objects: usize,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Progress {
        bytes_present: u64,
        bytes_total: u64,
    },
    Done(PrefetchReport),
    Error(String),
}

/// Where a mount's control socket lives.
pub fn socket_path(cache_dir: &Path) -> PathBuf {
    cache_dir.join("control.sock")
}

/// Serves requests until the task is aborted. A socket left by a dead mount is replaced (the
/// caller holds the cache lock, so no live mount owns it).
pub fn serve(
    cache_dir: &Path,
    store: Arc<dyn ObjectStore>,
    cache: Arc<Cache>,
    bucket: String,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let path = socket_path(cache_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(async move {
        let on_connection = move |(conn, _)| {
            let (store, cache, bucket) = (store.clone(), cache.clone(), bucket.clone());
            tokio::spawn(async move {
                if let Err(e) = handle(conn, store, cache, &bucket).await {
                    tracing::warn!("control connection: {e}");
                }
            });
        };
        crate::net::accept_loop("control socket", || listener.accept(), on_connection).await;
    }))
}

async fn send(w: &mut (impl AsyncWriteExt + Unpin), reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).expect("replies serialise");
    line.push(b'\n');
    w.write_all(&line).await
}

async fn handle(
    conn: UnixStream,
    store: Arc<dyn ObjectStore>,
    cache: Arc<Cache>,
    bucket: &str,
) -> std::io::Result<()> {
    let (r, mut w) = conn.into_split();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    let req: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => return send(&mut w, &Reply::Error(format!("bad request: {e}"))).await,
    };
    let Request::Prefetch {
        bucket: asked,
        prefix,
        objects,
    } = req;
    if asked != bucket {
        let msg = format!("this cache belongs to a mount of bucket {bucket}, not {asked}");
        return send(&mut w, &Reply::Error(msg)).await;
    }
    tracing::info!(prefix = %prefix, "prefetch asked through the control socket");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Reply>();
    let writer = tokio::spawn(async move {
        while let Some(reply) = rx.recv().await {
            if send(&mut w, &reply).await.is_err() {
                break; // the caller went away; the prefetch goes on
            }
        }
    });
    let progress_tx = tx.clone();
    let report = prefetch(
        store,
        &cache,
        bucket,
        &prefix,
        objects,
        move |p: &Progress| {
            let _ = progress_tx.send(Reply::Progress {
                bytes_present: p.bytes_present,
                bytes_total: p.bytes_total,
            });
        },
    )
    .await;
    let _ = tx.send(match report {
        Ok(r) => Reply::Done(r),
        Err(e) => Reply::Error(e.to_string()),
    });
    drop(tx);
    let _ = writer.await;
    Ok(())
}

/// Asks the mount behind `cache_dir` to prefetch; `on_progress` sees its progress.
pub async fn request_prefetch(
    cache_dir: &Path,
    bucket: &str,
    prefix: &str,
    objects: usize,
    mut on_progress: impl FnMut(&Progress),
) -> Result<PrefetchReport, String> {
    let path = socket_path(cache_dir);
    let conn = UnixStream::connect(&path)
        .await
        .map_err(|e| format!("cannot reach the mount at {}: {e}", path.display()))?;
    let (r, mut w) = conn.into_split();
    let req = Request::Prefetch {
        bucket: bucket.into(),
        prefix: prefix.into(),
        objects,
    };
    let mut line = serde_json::to_vec(&req).expect("requests serialise");
    line.push(b'\n');
    w.write_all(&line).await.map_err(|e| e.to_string())?;
    let mut lines = BufReader::new(r).lines();
    while let Some(l) = lines.next_line().await.map_err(|e| e.to_string())? {
        match serde_json::from_str::<Reply>(&l).map_err(|e| e.to_string())? {
            Reply::Progress {
                bytes_present,
                bytes_total,
            } => on_progress(&Progress {
                bytes_present,
                bytes_total,
                ..Progress::default()
            }),
            Reply::Done(r) => return Ok(r),
            Reply::Error(e) => return Err(e),
        }
    }
    Err("the mount closed the control connection before it finished".into())
}
