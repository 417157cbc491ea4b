//! SHA-256 digests: the content address of every file and blob, and readers/writers
//! that hash the bytes passing through them. No I/O of its own.

use std::fmt;
use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

/// A SHA-256 digest, shown and parsed as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hash([u8; 32]);

impl Hash {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Hash {
        Hash(Sha256::digest(bytes).into())
    }

    /// Parses 64 lowercase hex digits; `None` for anything else (uppercase is refused so
    /// that one digest has exactly one spelling in manifests and blob names).
    pub fn parse(text: &str) -> Option<Hash> {
        if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(Hash(out))
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Builds a digest from its raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Hash {
        Hash(bytes)
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

/// A writer that hashes and counts everything written through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    pub(crate) written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    pub(crate) fn finish(self) -> (W, Hash, u64) {
        (
            self.inner,
            Hash(self.hasher.finalize().into()),
            self.written,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes everything `reader` yields, returning the digest and the byte count.
pub fn hash_reader(mut reader: impl Read) -> io::Result<(Hash, u64)> {
    let mut w = HashingWriter::new(io::sink());
    io::copy(&mut reader, &mut w)?;
    let (_, hash, n) = w.finish();
    Ok((hash, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_and_refuses_other_spellings() {
        let h = Hash::of(b"hoist");
        assert_eq!(Hash::parse(&h.to_hex()), Some(h));
        assert_eq!(Hash::parse(&h.to_hex().to_uppercase()), None);
        assert_eq!(Hash::parse(&h.to_hex()[..63]), None);
        assert_eq!(Hash::parse("zz"), None);
    }

    #[test]
    fn hash_reader_matches_sha256sum_of_known_input() {
        // sha256("abc") from FIPS 180-2.
        let (h, n) = hash_reader(&b"abc"[..]).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
