//! The checkpoint: the durable record of which parts of one object version are present in a
//! data file, and each present part's CRC-64.
//!
//! Format 2 (written): a header — magic, then JSON naming the store, the object version, the
//! part size and the data file, then a SHA-256 over both — followed by one fixed 16-byte
//! record per part: the part's CRC-64 and a check tying it to this header and part number
//! (all zeros: absent). Recording a part writes its 16 bytes in place, so the cost of a
//! record is constant whatever the object's size (format 1 rewrote the whole record each
//! time). A torn or stale record fails its check and counts as absent: the part is fetched
//! again, never trusted. A new file is written whole to a temp file, fsynced and renamed.
//!
//! Format 1 (JSON with a SHA-256 over its content) is still read; the first record written
//! for it replaces it with format 2. A checkpoint that is corrupt, truncated, foreign, of
//! another format, or for another version of the object is rejected with a reason and never
//! trusted.

use std::path::Path;

use fixedbitset::FixedBitSet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod records;

pub use super::storage::sync_dir;
#[cfg(test)]
use super::storage::Local;
use super::{ObjectIdentity, PartLayout};
use crate::store::WholeDigest;
use records::record;
pub use records::RecordFile;

pub const FORMAT: &str = "ossmount-checkpoint";
/// The format written. Format 1 (JSON) is read too.
pub const VERSION: u32 = 2;
const MAGIC: &[u8; 8] = b"OSSMCKP\x02";
const RECORD: usize = 16;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    pub format: String,
    pub version: u32,
    /// Where the object lives (endpoint), so caches of different stores never mix.
    pub store: String,
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub last_modified: String,
    pub crc64: Option<u64>,
    /// The whole-object digest (S3), as `ALGORITHM:hex`; format 2 only.
    #[serde(skip)]
    pub digest: Option<WholeDigest>,
    pub part_size: u64,
    /// The file the parts are in.
    pub data_file: String,
    /// Which parts are present (durable). Format 1 writes it as one character per part,
    /// `1` present, `0` missing.
    #[serde(with = "present_as_text")]
    pub present: FixedBitSet,
    /// CRC-64 of each present part (0 for missing ones).
    pub part_crc64: Vec<u64>,
    /// Lower-case hex SHA-256 of this record serialised with an empty `checksum`.
    pub checksum: String,
}

/// See [`Checkpoint::verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Complete,
    Unverified,
    Corrupt,
    Partial,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejected {
    #[error("cannot read it: {0}")]
    Unreadable(String),
    #[error("it is not an ossmount checkpoint (or it is truncated): {0}")]
    NotJson(String),
    #[error(
        "it has format {0:?} version {1}; this ossmount reads {FORMAT:?} versions 1 and {VERSION}"
    )]
    WrongFormat(String, u32),
    #[error("its checksum does not match its content (corrupted)")]
    BadChecksum,
    #[error("its part list is inconsistent with its size and part size")]
    Inconsistent,
    #[error("it belongs to another object or store ({0})")]
    Foreign(String),
    #[error("the object changed on the server since ({0})")]
    ObjectChanged(String),
    #[error("its data file {0} is missing or has the wrong size")]
    DataFileMismatch(String),
}

/// `ALGORITHM:hex` as the header writes a `WholeDigest`.
fn parse_digest(text: &str) -> Option<WholeDigest> {
    let (algorithm, value) = text.split_once(':')?;
    match algorithm {
        "CRC64NVME" => u64::from_str_radix(value, 16)
            .ok()
            .map(WholeDigest::Crc64Nvme),
        "MD5" => {
            let mut md5 = [0u8; 16];
            hex::decode_to_slice(value, &mut md5).ok()?;
            Some(WholeDigest::Md5(md5))
        }
        _ => None,
    }
}

impl Checkpoint {
    pub fn new(store: &str, id: &ObjectIdentity, part_size: u64, data_file: &Path) -> Checkpoint {
        let parts = PartLayout::new(id.size, part_size).count();
        Checkpoint {
            format: FORMAT.into(),
            version: VERSION,
            store: store.into(),
            bucket: id.bucket.clone(),
            key: id.key.clone(),
            size: id.size,
            etag: id.etag.clone(),
            last_modified: id.last_modified.clone(),
            crc64: id.crc64,
            digest: id.digest,
            part_size,
            data_file: data_file.to_string_lossy().into_owned(),
            present: FixedBitSet::with_capacity(parts),
            part_crc64: vec![0; parts],
            checksum: String::new(),
        }
    }

    /// The object version this record belongs to.
    pub fn identity(&self) -> ObjectIdentity {
        ObjectIdentity {
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            size: self.size,
            etag: self.etag.clone(),
            last_modified: self.last_modified.clone(),
            crc64: self.crc64,
            digest: self.digest,
        }
    }

    pub fn layout(&self) -> PartLayout {
        PartLayout::new(self.size, self.part_size)
    }

    pub fn is_present(&self, part: usize) -> bool {
        part < self.present.len() && self.present[part]
    }

    pub fn parts_present(&self) -> usize {
        self.present.count_ones(..)
    }

    /// The whole-object CRC-64 combined from the recorded parts' CRCs (all parts present).
    pub fn combined_crc64(&self) -> u64 {
        self.layout().combined_crc(|p| self.part_crc64[p])
    }

    /// What the record says of its object: every part present and the CRC-64 check passed
    /// (`Complete`), present but the server gave no CRC (`Unverified`), present but the check
    /// failed (`Corrupt`), or not every part present (`Partial`).
    pub fn verdict(&self) -> Verdict {
        if self.parts_present() != self.layout().count() {
            return Verdict::Partial;
        }
        match self.crc64 {
            None => Verdict::Unverified,
            Some(expected) if expected == self.combined_crc64() => Verdict::Complete,
            Some(_) => Verdict::Corrupt,
        }
    }

    pub fn bytes_present(&self) -> u64 {
        self.layout().bytes_of(&self.present)
    }

    fn compute_checksum(&self) -> String {
        let mut c = self.clone();
        c.checksum.clear();
        let body = serde_json::to_vec(&c).expect("checkpoint serialises");
        hex::encode(Sha256::digest(&body))
    }

    /// Serialised as format 1 (JSON), as earlier versions wrote it.
    pub fn to_json(&self) -> Vec<u8> {
        let mut c = self.clone();
        c.version = 1;
        c.checksum = c.compute_checksum();
        serde_json::to_vec_pretty(&c).expect("checkpoint serialises")
    }

    /// Serialised as format 2: header, then one record per part.
    pub fn to_bytes(&self) -> Vec<u8> {
        let (mut out, sum) = self.header();
        for p in 0..self.present.len() {
            out.extend_from_slice(&if self.present[p] {
                record(&sum, p, self.part_crc64[p])
            } else {
                [0; RECORD]
            });
        }
        out
    }

    /// Format 2's header and its SHA-256 (which every record's check includes).
    fn header(&self) -> (Vec<u8>, [u8; 32]) {
        let meta = serde_json::json!({
            "format": FORMAT,
            "version": VERSION,
            "store": self.store,
            "bucket": self.bucket,
            "key": self.key,
            "size": self.size,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "crc64": self.crc64,
            "digest": self.digest.map(|d| format!("{}:{}", d.algorithm(), d.hex())),
            "part_size": self.part_size,
            "data_file": self.data_file,
            "parts": self.present.len(),
        });
        let json = serde_json::to_vec(&meta).expect("header serialises");
        let mut out = Vec::with_capacity(MAGIC.len() + 4 + json.len() + 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&json);
        let sum: [u8; 32] = Sha256::digest(&out).into();
        out.extend_from_slice(&sum);
        (out, sum)
    }

    fn parse_v2(bytes: &[u8]) -> Result<Checkpoint, Rejected> {
        let truncated = || Rejected::NotJson("the header is truncated".into());
        let len_at = MAGIC.len();
        let json_len = u32::from_le_bytes(
            bytes
                .get(len_at..len_at + 4)
                .ok_or_else(truncated)?
                .try_into()
                .unwrap(),
        ) as usize;
        let json_end = len_at + 4 + json_len;
        let sum: [u8; 32] = bytes
            .get(json_end..json_end + 32)
            .ok_or_else(truncated)?
            .try_into()
            .unwrap();
        if <[u8; 32]>::from(Sha256::digest(&bytes[..json_end])) != sum {
            return Err(Rejected::BadChecksum);
        }
        let meta: serde_json::Value = serde_json::from_slice(&bytes[len_at + 4..json_end])
            .map_err(|e| Rejected::NotJson(e.to_string()))?;
        let format = meta["format"].as_str().unwrap_or("").to_string();
        let version = meta["version"].as_u64().unwrap_or(0) as u32;
        if format != FORMAT || version != VERSION {
            return Err(Rejected::WrongFormat(format, version));
        }
        let text = |k: &str| {
            meta[k]
                .as_str()
                .map(str::to_string)
                .ok_or(Rejected::Inconsistent)
        };
        let number = |k: &str| meta[k].as_u64().ok_or(Rejected::Inconsistent);
        let mut c = Checkpoint {
            format,
            version,
            store: text("store")?,
            bucket: text("bucket")?,
            key: text("key")?,
            size: number("size")?,
            etag: text("etag")?,
            last_modified: text("last_modified")?,
            crc64: meta["crc64"].as_u64(),
            digest: match meta["digest"].as_str() {
                None => None,
                Some(text) => Some(parse_digest(text).ok_or(Rejected::Inconsistent)?),
            },
            part_size: number("part_size")?,
            data_file: text("data_file")?,
            present: FixedBitSet::new(),
            part_crc64: Vec::new(),
            checksum: hex::encode(sum),
        };
        let parts = number("parts")? as usize;
        if c.part_size == 0 || c.layout().count() != parts {
            return Err(Rejected::Inconsistent);
        }
        let records = bytes
            .get(json_end + 32..)
            .filter(|r| r.len() == parts * RECORD)
            .ok_or(Rejected::Inconsistent)?;
        c.present = FixedBitSet::with_capacity(parts);
        c.part_crc64 = vec![0; parts];
        for (p, r) in records.chunks_exact(RECORD).enumerate() {
            let crc = u64::from_le_bytes(r[..8].try_into().unwrap());
            // A record that fails its check (torn, or never written) is an absent part.
            if r != [0; RECORD] && r == record(&sum, p, crc) {
                c.present.insert(p);
                c.part_crc64[p] = crc;
            }
        }
        Ok(c)
    }

    /// Parses either format and checks self-consistency (format, checksums, part list);
    /// says why not.
    pub fn parse(bytes: &[u8]) -> Result<Checkpoint, Rejected> {
        if bytes.starts_with(MAGIC) {
            return Checkpoint::parse_v2(bytes);
        }
        Checkpoint::parse_v1(bytes)
    }

    /// Format 1: JSON with the present parts as text and a SHA-256 over the content.
    fn parse_v1(bytes: &[u8]) -> Result<Checkpoint, Rejected> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| Rejected::NotJson(e.to_string()))?;
        let format = value["format"].as_str().unwrap_or("").to_string();
        let version = value["version"].as_u64().unwrap_or(0) as u32;
        if format != FORMAT || version != 1 {
            return Err(Rejected::WrongFormat(format, version));
        }
        let c: Checkpoint =
            serde_json::from_value(value).map_err(|e| Rejected::NotJson(e.to_string()))?;
        if c.checksum != c.compute_checksum() {
            return Err(Rejected::BadChecksum);
        }
        let parts = if c.part_size == 0 {
            usize::MAX
        } else {
            c.layout().count()
        };
        if c.present.len() != parts || c.part_crc64.len() != parts {
            return Err(Rejected::Inconsistent);
        }
        Ok(c)
    }

    pub fn load(path: &Path) -> Result<Checkpoint, Rejected> {
        let bytes = std::fs::read(path).map_err(|e| Rejected::Unreadable(e.to_string()))?;
        Checkpoint::parse(&bytes)
    }

    /// Whether this record describes exactly `id` from `store` in `data_file`.
    pub fn check_identity(
        &self,
        store: &str,
        id: &ObjectIdentity,
        data_file: &Path,
    ) -> Result<(), Rejected> {
        if self.store != store || self.bucket != id.bucket || self.key != id.key {
            return Err(Rejected::Foreign(format!(
                "{}/{}/{}",
                self.store, self.bucket, self.key
            )));
        }
        if self.size != id.size
            || self.etag != id.etag
            || self.last_modified != id.last_modified
            || self.crc64 != id.crc64
            || self.digest != id.digest
        {
            return Err(Rejected::ObjectChanged(format!(
                "was {} bytes, ETag {}, now {} bytes, ETag {}",
                self.size, self.etag, id.size, id.etag
            )));
        }
        if Path::new(&self.data_file) != data_file {
            return Err(Rejected::Foreign(format!("data file {}", self.data_file)));
        }
        match std::fs::metadata(data_file) {
            Ok(m) if m.len() == self.size => Ok(()),
            _ => Err(Rejected::DataFileMismatch(self.data_file.clone())),
        }
    }

    /// Atomically replaces the checkpoint at `path`: temp file, fsync, rename, fsync dir.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        self.save_with(path, true)
    }

    /// Like `save`; without `durable` the record is not fsynced: a crash may then lose it (an
    /// empty or torn record fails its checksum and is discarded, and the parts are fetched
    /// again), never make it claim bytes that are not there. For objects of one part, whose
    /// record is cheaper to lose than to sync.
    pub fn save_with(&self, path: &Path, durable: bool) -> std::io::Result<()> {
        use super::storage::Storage;
        super::storage::Local.replace(path, &self.to_bytes(), durable)
    }
}

/// Parses format 1's present string (`"0110"`); `None` for any other character.
pub fn parse_present(text: &str) -> Option<FixedBitSet> {
    let mut bits = FixedBitSet::with_capacity(text.len());
    for (i, ch) in text.bytes().enumerate() {
        match ch {
            b'1' => bits.insert(i),
            b'0' => {}
            _ => return None,
        }
    }
    Some(bits)
}

/// Format 1 keeps the present bitmap as text, so checksums of existing records still match.
mod present_as_text {
    use fixedbitset::FixedBitSet;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bits: &FixedBitSet, s: S) -> Result<S::Ok, S::Error> {
        let text: String = (0..bits.len())
            .map(|i| if bits[i] { '1' } else { '0' })
            .collect();
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FixedBitSet, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_present(&text)
            .ok_or_else(|| serde::de::Error::custom("present may hold only 0 and 1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn id() -> ObjectIdentity {
        ObjectIdentity {
            bucket: "b".into(),
            key: "k".into(),
            size: 25,
            etag: "\"E\"".into(),
            last_modified: "Wed, 01 Jan 2025 00:00:00 GMT".into(),
            crc64: Some(7),
            digest: None,
        }
    }

    #[test]
    fn round_trips_and_detects_tampering() {
        let mut c = Checkpoint::new("http://x", &id(), 10, Path::new("/tmp/d"));
        c.present = parse_present("101").unwrap();
        c.part_crc64 = vec![1, 0, 3];
        let json = c.to_json();
        let back = Checkpoint::parse(&json).unwrap();
        assert_eq!(back.present, parse_present("101").unwrap());
        assert_eq!(back.parts_present(), 2);
        assert_eq!(back.bytes_present(), 15);
        let tampered = String::from_utf8(json.clone())
            .unwrap()
            .replace("\"101\"", "\"111\"");
        assert_eq!(
            Checkpoint::parse(tampered.as_bytes()),
            Err(Rejected::BadChecksum)
        );
        assert!(matches!(
            Checkpoint::parse(&json[..json.len() / 2]),
            Err(Rejected::NotJson(_))
        ));
        assert!(matches!(
            Checkpoint::parse(b"garbage"),
            Err(Rejected::NotJson(_))
        ));
        let other = String::from_utf8(json)
            .unwrap()
            .replace("\"version\": 1", "\"version\": 9");
        assert!(matches!(
            Checkpoint::parse(other.as_bytes()),
            Err(Rejected::WrongFormat(_, 9))
        ));
    }

    #[test]
    fn format_2_records_parts_in_place_and_ignores_torn_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.ckpt");
        let c = Checkpoint::new("http://x", &id(), 10, Path::new("/tmp/d"));
        let mut file = RecordFile::create(&c, &path, true, &Local).unwrap();
        let empty_len = std::fs::metadata(&path).unwrap().len();
        file.set(0, Some(11)).unwrap();
        file.set(2, Some(33)).unwrap();
        file.sync().unwrap();
        // Records are written in place: the file does not grow.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), empty_len);
        let back = Checkpoint::load(&path).unwrap();
        assert_eq!(back.version, 2);
        assert_eq!(back.present, parse_present("101").unwrap());
        assert_eq!(back.part_crc64, vec![11, 0, 33]);
        assert_eq!(back.identity(), id());
        // A part found bad is recorded absent again.
        file.set(2, None).unwrap();
        assert_eq!(
            Checkpoint::load(&path).unwrap().present,
            parse_present("100").unwrap()
        );
        // A torn record (half written) and a record copied from another part are absent.
        let mut bytes = std::fs::read(&path).unwrap();
        let records_at = bytes.len() - 3 * RECORD;
        bytes[records_at + 12] ^= 0xFF;
        let (first, rest) = bytes[records_at..].split_at_mut(RECORD);
        rest[RECORD..2 * RECORD].copy_from_slice(first);
        let c2 = Checkpoint::parse(&bytes).unwrap();
        assert_eq!(c2.parts_present(), 0, "{:?}", c2.present);
        // A changed header is rejected; so is a truncated record list.
        let mut tampered = std::fs::read(&path).unwrap();
        tampered[MAGIC.len() + 10] ^= 1;
        assert_eq!(Checkpoint::parse(&tampered), Err(Rejected::BadChecksum));
        let whole = std::fs::read(&path).unwrap();
        assert_eq!(
            Checkpoint::parse(&whole[..whole.len() - 1]),
            Err(Rejected::Inconsistent)
        );
        assert!(matches!(
            Checkpoint::parse(&whole[..MAGIC.len() + 2]),
            Err(Rejected::NotJson(_))
        ));
        // A format-1 record still reads, with the same content.
        let mut v1 = back.clone();
        v1.present = parse_present("101").unwrap();
        let old = Checkpoint::parse(&v1.to_json()).unwrap();
        assert_eq!(
            (old.version, old.present, old.part_crc64),
            (1, v1.present, v1.part_crc64)
        );
    }

    /// An S3 object's whole-object digest is kept in the header and must match at resume,
    /// as the CRC-64 must; a header without one (an OSS object, or an earlier version's)
    /// reads as none.
    #[test]
    fn a_whole_object_digest_round_trips_and_must_match() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d");
        std::fs::write(&data, vec![0u8; 25]).unwrap();
        for digest in [
            WholeDigest::Md5(*b"0123456789abcdef"),
            WholeDigest::Crc64Nvme(0xae8b_1486_0a79_9888),
        ] {
            let mut s3 = id();
            s3.crc64 = None;
            s3.digest = Some(digest);
            let path = dir.path().join(format!("{}.ckpt", digest.algorithm()));
            let c = Checkpoint::new("s3+http://x", &s3, 10, &data);
            let mut file = RecordFile::create(&c, &path, true, &Local).unwrap();
            file.set(1, Some(5)).unwrap();
            file.sync().unwrap();
            let back = Checkpoint::load(&path).unwrap();
            assert_eq!(back.identity(), s3);
            assert_eq!(back.check_identity("s3+http://x", &s3, &data), Ok(()));
            let mut other = s3.clone();
            other.digest = Some(WholeDigest::Crc64Nvme(1));
            assert!(matches!(
                back.check_identity("s3+http://x", &other, &data),
                Err(Rejected::ObjectChanged(_))
            ));
        }
        let path = dir.path().join("oss.ckpt");
        let c = Checkpoint::new("http://x", &id(), 10, &data);
        RecordFile::create(&c, &path, true, &Local).unwrap();
        assert_eq!(Checkpoint::load(&path).unwrap().digest, None);
    }

    #[test]
    fn identity_must_match_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d");
        std::fs::write(&data, vec![0u8; 25]).unwrap();
        let c = Checkpoint::new("http://x", &id(), 10, &data);
        assert_eq!(c.check_identity("http://x", &id(), &data), Ok(()));
        let mut changed = id();
        changed.etag = "\"F\"".into();
        assert!(matches!(
            c.check_identity("http://x", &changed, &data),
            Err(Rejected::ObjectChanged(_))
        ));
        let mut other = id();
        other.key = "k2".into();
        assert!(matches!(
            c.check_identity("http://x", &other, &data),
            Err(Rejected::Foreign(_))
        ));
        assert!(matches!(
            c.check_identity("http://y", &id(), &data),
            Err(Rejected::Foreign(_))
        ));
        std::fs::write(&data, b"short").unwrap();
        assert!(matches!(
            c.check_identity("http://x", &id(), &data),
            Err(Rejected::DataFileMismatch(_))
        ));
    }
}
