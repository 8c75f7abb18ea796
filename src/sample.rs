//! Deterministic sample data from a seed, for tests, the demo and benchmarks: the same seed
//! always gives the same bytes, so nothing large is ever committed.

use std::io::Write;
use std::path::Path;

/// Fills `buf` with the stream for `seed` starting at byte `offset` of that stream.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    // Each 8-byte word is a hash of (seed, word index): any offset is cheap to start from.
    let mut word = offset / 8;
    let mut skip = (offset % 8) as usize;
    let mut i = 0;
    while i < buf.len() {
        let bytes = splitmix(seed ^ word.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes();
        let take = (8 - skip).min(buf.len() - i);
        buf[i..i + take].copy_from_slice(&bytes[skip..skip + take]);
        i += take;
        skip = 0;
        word += 1;
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    fill(seed, 0, &mut v);
    v
}

/// Writes `len` bytes of the stream for `seed` to `path` (creating parent directories).
pub fn write_file(path: &Path, seed: u64, len: u64) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        fill(seed, off, &mut buf[..n]);
        f.write_all(&buf[..n])?;
        off += n as u64;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// The demo's bucket: a README, nested folders of small files and one big file. Files that
/// already exist with the right size are kept (a second demo run resumes, not regenerates).
pub fn write_demo_bucket(root: &Path, big_size: u64) -> std::io::Result<()> {
    let mut files: Vec<(String, u64)> = vec![
        ("README.txt".into(), 0),
        ("big/dataset.bin".into(), big_size),
    ];
    for year in [2023, 2024] {
        for i in 0..100u64 {
            files.push((format!("photos/{year}/img-{i:04}.jpg"), 20_000 + i * 517));
        }
    }
    for i in 0..50u64 {
        files.push((format!("logs/app/{:02}/events.log", i), 4096 + i * 100));
    }
    for (i, (name, size)) in files.iter().enumerate() {
        let path = root.join(name);
        if name == "README.txt" {
            if !path.exists() {
                std::fs::create_dir_all(root)?;
                std::fs::write(&path, "Sample data served by `ossmount demo`.\n")?;
            }
            continue;
        }
        if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(*size) {
            if *size > (64 << 20) {
                eprintln!(
                    "writing the {} sample file {name} (once)...",
                    crate::size::human_bytes(*size)
                );
            }
            write_file(&path, 1000 + i as u64, *size)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_offset_continues_the_same_stream() {
        let whole = bytes(7, 100);
        let mut tail = vec![0; 37];
        fill(7, 63, &mut tail);
        assert_eq!(&whole[63..], &tail[..]);
        assert_ne!(bytes(8, 100), whole);
    }
}
