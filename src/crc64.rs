//! CRC-64 as OSS computes it for `x-oss-hash-crc64ecma`: the CRC-64/XZ parameterisation of the
//! ECMA-182 polynomial (reflected, init and xorout all ones), with streaming `update` and
//! zlib-style `combine` so per-part CRCs can be joined into the whole object's.
//! Pure computation; used by the client, the engine and the emulator alike.

const POLY_REFLECTED: u64 = 0xC96C_5795_D787_0F42;

/// Slice-by-8 tables: table[0] is the classic byte table.
#[allow(clippy::needless_range_loop)] // the tables are defined by index arithmetic
static TABLES: std::sync::LazyLock<[[u64; 256]; 8]> = std::sync::LazyLock::new(|| {
    let mut t = [[0u64; 256]; 8];
    for i in 0..256 {
        let mut crc = i as u64;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY_REFLECTED
            } else {
                crc >> 1
            };
        }
        t[0][i] = crc;
    }
    for i in 0..256 {
        for k in 1..8 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
        }
    }
    t
});

/// Continues `crc` (a finished CRC of the preceding bytes, 0 for none) over `data`:
/// `update(crc(A), B) == crc(A ‖ B)`.
pub fn update(crc: u64, data: &[u8]) -> u64 {
    if crc == 0 {
        // Nothing before (or bytes whose CRC is 0, which continue the same way).
        return checksum(data);
    }
    let t = &*TABLES;
    let mut c = !crc;
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let v = c ^ u64::from_le_bytes(chunk.try_into().expect("chunk of 8"));
        c = t[7][(v & 0xff) as usize]
            ^ t[6][((v >> 8) & 0xff) as usize]
            ^ t[5][((v >> 16) & 0xff) as usize]
            ^ t[4][((v >> 24) & 0xff) as usize]
            ^ t[3][((v >> 32) & 0xff) as usize]
            ^ t[2][((v >> 40) & 0xff) as usize]
            ^ t[1][((v >> 48) & 0xff) as usize]
            ^ t[0][(v >> 56) as usize];
    }
    for &b in chunks.remainder() {
        c = t[0][((c ^ b as u64) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// The CRC-64 of `data` (SIMD-accelerated: `crc-fast`, PCLMULQDQ/PMULL where the CPU has it).
pub fn checksum(data: &[u8]) -> u64 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Xz, data)
}

/// A CRC-64 computed as bytes stream in, SIMD-accelerated (`crc-fast`).
pub struct Digest(crc_fast::Digest);

impl Default for Digest {
    fn default() -> Digest {
        Digest(crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Xz))
    }
}

impl Digest {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The CRC-64 of every byte so far.
    pub fn value(&self) -> u64 {
        self.0.finalize()
    }
}

fn gf2_matrix_times(mat: &[u64; 64], mut vec: u64) -> u64 {
    let mut sum = 0;
    let mut i = 0;
    while vec != 0 {
        if vec & 1 == 1 {
            sum ^= mat[i];
        }
        vec >>= 1;
        i += 1;
    }
    sum
}

fn gf2_matrix_square(square: &mut [u64; 64], mat: &[u64; 64]) {
    for n in 0..64 {
        square[n] = gf2_matrix_times(mat, mat[n]);
    }
}

/// `crc(A ‖ B)` from `crc(A)`, `crc(B)` and `len(B)`.
pub fn combine(mut crc1: u64, crc2: u64, mut len2: u64) -> u64 {
    if len2 == 0 {
        return crc1;
    }
    let mut even = [0u64; 64];
    let mut odd = [0u64; 64];
    odd[0] = POLY_REFLECTED;
    let mut row = 1u64;
    for item in odd.iter_mut().skip(1) {
        *item = row;
        row <<= 1;
    }
    gf2_matrix_square(&mut even, &odd); // two zero bits
    gf2_matrix_square(&mut odd, &even); // four zero bits
    loop {
        gf2_matrix_square(&mut even, &odd);
        if len2 & 1 == 1 {
            crc1 = gf2_matrix_times(&even, crc1);
        }
        len2 >>= 1;
        if len2 == 0 {
            break;
        }
        gf2_matrix_square(&mut odd, &even);
        if len2 & 1 == 1 {
            crc1 = gf2_matrix_times(&odd, crc1);
        }
        len2 >>= 1;
        if len2 == 0 {
            break;
        }
    }
    crc1 ^ crc2
}

#[cfg(test)]
mod simd_tests {
    use super::*;

    #[test]
    fn the_simd_digest_agrees_with_the_table_at_every_split() {
        let data: Vec<u8> = (0..100_003u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        // The table path, continuing from a non-zero CRC.
        let mut table = update(0, &data[..1]);
        table = update(table, &data[1..]);
        assert_eq!(checksum(&data), table);
        for split in [0, 1, 7, 8, 4095, 65_536, 100_003] {
            let mut d = Digest::default();
            d.update(&data[..split]);
            d.update(&data[split..]);
            assert_eq!(d.value(), table, "split at {split}");
        }
        assert_eq!(Digest::default().value(), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value() {
        assert_eq!(checksum(b"123456789"), 0x995D_C9BB_DF19_39FA);
        assert_eq!(checksum(b""), 0);
    }

    #[test]
    fn slice_by_8_matches_bytewise_on_odd_lengths() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 256) as u8).collect();
        for len in [0, 1, 7, 8, 9, 63, 64, 65, 999] {
            let bytewise = data[..len].iter().fold(0u64, |c, &b| update(c, &[b]));
            assert_eq!(checksum(&data[..len]), bytewise, "len {len}");
        }
    }
}
