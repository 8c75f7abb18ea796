//! Who has read through a cache directory: the principals (endpoint and credentials'
//! identity, hashed) of every store a mount used on it, kept in `<dir>/principals` so the
//! answer survives restarts. While only one principal ever used a cache, a mount may serve a
//! cached object it saw listed without asking the server again; once several have, each
//! mount proves it may read an object (its own HEAD or GET) before it is served it from the
//! cache. Must not decide when to ask (the filesystem does).

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

pub struct Principals {
    path: PathBuf,
    known: Mutex<BTreeSet<String>>,
}

impl Principals {
    pub fn load(dir: &std::path::Path) -> Principals {
        let path = dir.join("principals");
        let known = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        Principals {
            path,
            known: Mutex::new(known),
        }
    }

    /// Records `principal` (hashed); written through before a mount of it is served.
    pub fn add(&self, principal: &str) {
        let h = hex::encode(&Sha256::digest(principal.as_bytes())[..16]);
        let mut known = self.known.lock().unwrap();
        if !known.insert(h) {
            return;
        }
        let body: String = known.iter().map(|p| format!("{p}\n")).collect();
        drop(known);
        let tmp = self.path.with_extension("tmp");
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(body.as_bytes()).and_then(|_| f.sync_all()))
            .and_then(|_| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            // Unrecorded, the next node could think it alone: treat the cache as shared.
            tracing::warn!("cannot record a principal in {}: {e}", self.path.display());
            self.known.lock().unwrap().insert("unrecorded".into());
        }
    }

    /// More than one principal has read through this cache.
    pub fn several(&self) -> bool {
        self.known.lock().unwrap().len() > 1
    }
}
