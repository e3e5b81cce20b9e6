//! SHA-256 whose running state can be written down and picked up again, so that a chunked upload
//! is hashed once, chunk by chunk, by whichever request (or process) receives the next chunk.
//!
//! The compression function is `sha2`'s (SHA-NI or AVX2 where the CPU has them); this type only
//! keeps the state, the partial block and the length, and pads at the end as FIPS 180-4 says.

use sha2::digest::generic_array::{typenum::U64, GenericArray};

const INIT: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumableSha256 {
    state: [u32; 8],
    /// Bytes hashed so far, including those waiting in `buf`.
    len: u64,
    buf: [u8; 64],
    buf_len: usize,
}

impl Default for ResumableSha256 {
    fn default() -> Self {
        Self {
            state: INIT,
            len: 0,
            buf: [0; 64],
            buf_len: 0,
        }
    }
}

fn compress(state: &mut [u32; 8], data: &[u8]) {
    debug_assert_eq!(data.len() % 64, 0);
    // SAFETY: `GenericArray<u8, U64>` is `#[repr(transparent)]` over `[u8; 64]` (generic-array
    // 0.14): 64 bytes with alignment 1, so the first `len / 64 * 64` bytes of `data` are exactly
    // `len / 64` of them; the borrow of `data` outlives the slice and the memory is only read.
    let blocks: &[GenericArray<u8, U64>] =
        unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<GenericArray<u8, U64>>(), data.len() / 64) };
    sha2::compress256(state, blocks);
}

impl ResumableSha256 {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.buf_len > 0 {
            let take = (64 - self.buf_len).min(data.len());
            self.buf[self.buf_len..self.buf_len + take].copy_from_slice(&data[..take]);
            self.buf_len += take;
            data = &data[take..];
            if self.buf_len < 64 {
                return;
            }
            let block = self.buf;
            compress(&mut self.state, &block);
            self.buf_len = 0;
        }
        let whole = data.len() / 64 * 64;
        if whole > 0 {
            compress(&mut self.state, &data[..whole]);
        }
        let rest = &data[whole..];
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buf_len = rest.len();
    }

    pub fn finalize(&self) -> [u8; 32] {
        let mut state = self.state;
        let mut tail = [0u8; 128];
        tail[..self.buf_len].copy_from_slice(&self.buf[..self.buf_len]);
        tail[self.buf_len] = 0x80;
        let n = if self.buf_len < 56 { 64 } else { 128 };
        tail[n - 8..n].copy_from_slice(&(self.len.wrapping_mul(8)).to_be_bytes());
        compress(&mut state, &tail[..n]);
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    /// The state as one line of text: `sha256 <len> <8 words in hex> <partial block in hex>`.
    pub fn to_text(&self) -> String {
        let words: String = self.state.iter().map(|w| format!("{w:08x}")).collect();
        format!(
            "sha256 {} {} {}",
            self.len,
            words,
            hex::encode(&self.buf[..self.buf_len])
        )
    }

    /// Reads [`Self::to_text`] back; `None` for anything else, however slightly off.
    pub fn from_text(s: &str) -> Option<Self> {
        let mut it = s.trim_end_matches('\n').split(' ');
        if it.next()? != "sha256" {
            return None;
        }
        let len: u64 = it.next()?.parse().ok()?;
        let words = it.next()?;
        let partial = it.next().unwrap_or("");
        if it.next().is_some() || words.len() != 64 {
            return None;
        }
        let mut state = [0u32; 8];
        for (i, w) in state.iter_mut().enumerate() {
            *w = u32::from_str_radix(words.get(i * 8..i * 8 + 8)?, 16).ok()?;
        }
        let partial = hex::decode(partial).ok()?;
        if partial.len() >= 64 || partial.len() as u64 != len % 64 {
            return None;
        }
        let mut buf = [0u8; 64];
        buf[..partial.len()].copy_from_slice(&partial);
        Some(Self {
            state,
            len,
            buf,
            buf_len: partial.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn matches_sha256_for_every_split_and_survives_text() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for total in [0usize, 1, 55, 56, 63, 64, 65, 119, 120, 128, 500, 1000] {
            let want: [u8; 32] = Sha256::digest(&data[..total]).into();
            for split in [0usize, 1, 3, 63, 64, 65, 127, 300] {
                let split = split.min(total);
                let mut h = ResumableSha256::new();
                h.update(&data[..split]);
                let text = h.to_text();
                let mut h2 = ResumableSha256::from_text(&text).expect("own text parses");
                assert_eq!(h2, h);
                // feed the rest in odd pieces
                for piece in data[split..total].chunks(37) {
                    h2.update(piece);
                }
                assert_eq!(h2.len(), total as u64);
                assert_eq!(h2.finalize(), want, "total {total} split {split}");
            }
        }
    }

    #[test]
    fn rejects_damaged_text() {
        let mut h = ResumableSha256::new();
        h.update(b"hello world, a partial block");
        let t = h.to_text();
        assert!(ResumableSha256::from_text(&t).is_some());
        assert!(
            ResumableSha256::from_text(&t[..t.len() - 2]).is_none(),
            "partial block shorter than len says"
        );
        assert!(ResumableSha256::from_text(&t.replacen("sha256", "sha512", 1)).is_none());
        assert!(ResumableSha256::from_text("").is_none());
        assert!(ResumableSha256::from_text(&"\0".repeat(100)).is_none());
        assert!(ResumableSha256::from_text(&format!("{t} extra")).is_none());
    }
}
