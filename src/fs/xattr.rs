//! Extended attributes that show a file's cache state (`getfattr -d`): hydration progress,
//! complete/partial/none, and the ETag. Read-only; must not start hydrations.

use super::{Kind, OssFs};

impl OssFs {
    /// Extended attributes of a file: `user.ossmount.hydration` ("37/128 parts"),
    /// `user.ossmount.cached` (complete, unverified, partial, none) and `user.ossmount.etag`.
    pub fn xattr(&self, ino: u64, name: &str) -> Option<Vec<u8>> {
        self.resolve(ino).ok()?;
        let (key, etag) = {
            let ns = self.ns.lock().unwrap();
            let n = ns.nodes.get(&ino).filter(|n| n.kind == Kind::File)?;
            (ns.key_of(ino)?, n.etag.to_string())
        };
        let state = self.cache.entry_state(&self.cfg.bucket, &key);
        let value = match name {
            "user.ossmount.etag" => etag,
            "user.ossmount.hydration" => match &state {
                Some(s) => format!("{}/{} parts", s.parts_present, s.parts_total),
                None => "0 parts".to_string(),
            },
            "user.ossmount.cached" => match &state {
                Some(s) if s.verified => "complete".into(),
                // Every byte is here, but the server gave no CRC-64 to check them against.
                Some(s) if s.complete => "unverified".into(),
                Some(s) if s.parts_present > 0 => "partial".into(),
                _ => "none".into(),
            },
            _ => return None,
        };
        Some(value.into_bytes())
    }

    pub fn xattr_names(&self, ino: u64) -> Vec<&'static str> {
        let _ = self.resolve(ino);
        let is_file = self
            .ns
            .lock()
            .unwrap()
            .nodes
            .get(&ino)
            .is_some_and(|n| n.kind == Kind::File);
        if is_file {
            vec![
                "user.ossmount.cached",
                "user.ossmount.etag",
                "user.ossmount.hydration",
            ]
        } else {
            vec![]
        }
    }
}
