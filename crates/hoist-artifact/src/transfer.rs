//! Moving releases between hosts by content: the sender offers the manifest, the
//! receiver answers with the blobs its store lacks ([`missing_blobs`]), and the sender
//! streams just those ([`write_blob_stream`] from a store, [`pack_for_transfer`] from an
//! artifact file). A redeploy where one file changed moves that file and the manifest.
//!
//! The stream is zstd-compressed; inside, `MAGIC`, then per blob `B`, the 32-byte
//! SHA-256, the length as u64 big-endian and the bytes, then `E`. The receiver
//! ([`read_blob_stream`]) checks each blob's hash before it becomes visible in its store.
//! The transport (SSH, the agent's socket) is not this module's business.
//!
//! The cheapest exchange, for a host that holds an earlier release:
//! 1. sender → receiver: [`encode_compact_manifest`] (digests shortened to 12 hex);
//! 2. receiver: [`decode_compact_manifest`], then [`CompactManifest::resolve`] with a
//!    [`BlobIndex`] of its store; on `Missing(short)`, it asks for those;
//! 3. sender → receiver: [`pack_for_transfer_short`] (or [`write_blob_stream`]);
//! 4. receiver: [`read_blob_stream`], add what came to the index, resolve again, and
//!    [`Store::put_manifest`]. Should resolution fail (a wrong guess shows as a release
//!    id mismatch), fall back to [`encode_manifest`] and [`missing_blobs`].

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::path::Path;

use crate::error::{ArtifactError, IoContext};
use crate::hash::Hash;
use crate::manifest::{CompactManifest, Limits, Manifest, SHORT_HASH_HEX};
use crate::read::{read_artifact, Sink};
use crate::store::Store;

const MAGIC: &[u8; 12] = b"HOISTBLOBS1\n";

/// The manifest as sent to a receiver: its canonical JSON, zstd-compressed (the hex
/// digests make up most of it; compression about halves it).
pub fn encode_manifest(manifest: &Manifest) -> Vec<u8> {
    zstd::encode_all(&manifest.to_json()[..], 3).expect("compressing into memory cannot fail")
}

/// Decodes and validates a manifest sent with [`encode_manifest`], refusing one whose
/// decompressed size exceeds `limits.max_manifest_bytes`.
pub fn decode_manifest(bytes: &[u8], limits: &Limits) -> Result<Manifest, ArtifactError> {
    Manifest::parse(&inflate(bytes, limits.max_manifest_bytes)?, limits)
}

/// The compact manifest as sent to a receiver, zstd-compressed.
pub fn encode_compact_manifest(manifest: &Manifest) -> Vec<u8> {
    zstd::encode_all(&manifest.to_compact_json()[..], 3)
        .expect("compressing into memory cannot fail")
}

/// Decodes a compact manifest sent with [`encode_compact_manifest`], within `limits`.
pub fn decode_compact_manifest(
    bytes: &[u8],
    limits: &Limits,
) -> Result<CompactManifest, ArtifactError> {
    CompactManifest::parse(&inflate(bytes, limits.max_manifest_bytes)?, limits)
}

fn inflate(bytes: &[u8], max: u64) -> Result<Vec<u8>, ArtifactError> {
    let mut dec = zstd::stream::read::Decoder::new(bytes).map_err(stream_err)?;
    dec.window_log_max(27).map_err(stream_err)?;
    let mut out = Vec::new();
    dec.take(max.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(stream_err)?;
    Ok(out)
}

/// The blobs of a store by digest prefix, to resolve a [`CompactManifest`].
#[derive(Debug, Default)]
pub struct BlobIndex {
    by_prefix: HashMap<String, Vec<(Hash, u64)>>,
}

impl BlobIndex {
    /// Lists every blob of `store` with its size.
    pub fn load(store: &Store) -> Result<BlobIndex, ArtifactError> {
        let mut index = BlobIndex::default();
        let blobs = store.root().join("blobs");
        for shard in std::fs::read_dir(&blobs).at(&blobs)? {
            let shard = shard.at(&blobs)?.path();
            for entry in std::fs::read_dir(&shard).at(&shard)? {
                let entry = entry.at(&shard)?;
                let Some(hash) = entry.file_name().to_str().and_then(Hash::parse) else {
                    continue;
                };
                index.insert(hash, entry.metadata().at(entry.path())?.len());
            }
        }
        Ok(index)
    }

    /// Adds one blob (e.g. just received).
    pub fn insert(&mut self, hash: Hash, size: u64) {
        let list = self
            .by_prefix
            .entry(hash.to_hex()[..SHORT_HASH_HEX].to_string())
            .or_default();
        if !list.iter().any(|(h, _)| *h == hash) {
            list.push((hash, size));
        }
    }

    /// The one blob with this prefix and size, if exactly one.
    pub fn lookup(&self, short: &str, size: u64) -> Option<Hash> {
        let mut hits = self
            .by_prefix
            .get(short)?
            .iter()
            .filter(|(_, s)| *s == size);
        match (hits.next(), hits.next()) {
            (Some((h, _)), None) => Some(*h),
            _ => None,
        }
    }
}

/// The blobs of `manifest` that `store` lacks, sorted.
pub fn missing_blobs(manifest: &Manifest, store: &Store) -> Vec<Hash> {
    store.missing(manifest)
}

/// Counts the bytes that reach the underlying writer.
struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn stream_err(e: io::Error) -> ArtifactError {
    ArtifactError::Stream(e.to_string())
}

fn encoder<W: Write>(
    out: W,
) -> Result<zstd::stream::write::Encoder<'static, Counting<W>>, ArtifactError> {
    let mut enc = zstd::stream::write::Encoder::new(
        Counting {
            inner: out,
            count: 0,
        },
        3,
    )
    .map_err(stream_err)?;
    enc.include_checksum(true).map_err(stream_err)?;
    enc.write_all(MAGIC).map_err(stream_err)?;
    Ok(enc)
}

fn frame_header(hash: &Hash, len: u64) -> [u8; 41] {
    let mut h = [0u8; 41];
    h[0] = b'B';
    h[1..33].copy_from_slice(hash.as_bytes());
    h[33..].copy_from_slice(&len.to_be_bytes());
    h
}

fn finish<W: Write>(
    mut enc: zstd::stream::write::Encoder<'static, Counting<W>>,
) -> Result<u64, ArtifactError> {
    enc.write_all(b"E").map_err(stream_err)?;
    let mut counting = enc.finish().map_err(stream_err)?;
    counting.flush().map_err(stream_err)?;
    Ok(counting.count)
}

/// Writes the blobs `hashes` from `store` as a blob stream; returns the bytes written.
pub fn write_blob_stream(
    store: &Store,
    hashes: &[Hash],
    out: impl Write,
) -> Result<u64, ArtifactError> {
    let mut enc = encoder(out)?;
    for hash in hashes {
        let mut blob = store.open_blob(hash)?;
        let len = blob.metadata().at(store.blob_path(hash))?.len();
        enc.write_all(&frame_header(hash, len))
            .map_err(stream_err)?;
        let copied = io::copy(&mut (&mut blob).take(len), &mut enc).map_err(stream_err)?;
        if copied != len {
            return Err(ArtifactError::Stream(format!(
                "blob `{hash}` shrank while being sent"
            )));
        }
    }
    finish(enc)
}

/// Sink that forwards the wanted files of an artifact into a blob stream.
struct PackSink<'a, W: Write> {
    enc: zstd::stream::write::Encoder<'static, Counting<W>>,
    wanted: Wanted,
    sizes: HashMap<Hash, u64>,
    sent: HashSet<Hash>,
    _limits: &'a Limits,
}

impl<W: Write> Sink for PackSink<'_, W> {
    fn manifest(&mut self, manifest: &Manifest) -> Result<(), ArtifactError> {
        for e in manifest.entries() {
            if let crate::manifest::EntryKind::File { sha256, size, .. } = &e.kind {
                self.sizes.insert(*sha256, *size);
            }
        }
        match &self.wanted {
            Wanted::Full(set) => {
                if let Some(h) = set.iter().find(|h| !self.sizes.contains_key(h)) {
                    return Err(ArtifactError::MissingBlob { hash: *h });
                }
            }
            Wanted::Short(set) => {
                let known: HashSet<String> = self
                    .sizes
                    .keys()
                    .map(|h| h.to_hex()[..SHORT_HASH_HEX].to_string())
                    .collect();
                if let Some(s) = set.iter().find(|s| !known.contains(*s)) {
                    return Err(ArtifactError::Stream(format!(
                        "no blob with prefix `{s}` in this release"
                    )));
                }
            }
        }
        Ok(())
    }
    fn dir(&mut self, _: &str, _: u32) -> Result<(), ArtifactError> {
        Ok(())
    }
    fn symlink(&mut self, _: &str, _: &str) -> Result<(), ArtifactError> {
        Ok(())
    }
    fn file_start(&mut self, _: &str, _: u32, sha256: &Hash) -> Result<bool, ArtifactError> {
        if !self.wanted.contains(sha256) || !self.sent.insert(*sha256) {
            return Ok(false);
        }
        self.enc
            .write_all(&frame_header(sha256, self.sizes[sha256]))
            .map_err(stream_err)?;
        Ok(true)
    }
    fn file_data(&mut self, data: &[u8]) -> Result<(), ArtifactError> {
        self.enc.write_all(data).map_err(stream_err)
    }
    fn file_commit(&mut self) -> Result<(), ArtifactError> {
        Ok(())
    }
}

/// Which blobs a pack wants: by full digest, or by short prefix (compact manifests).
enum Wanted {
    Full(HashSet<Hash>),
    Short(HashSet<String>),
}

impl Wanted {
    fn contains(&self, hash: &Hash) -> bool {
        match self {
            Wanted::Full(set) => set.contains(hash),
            Wanted::Short(set) => set.contains(&hash.to_hex()[..SHORT_HASH_HEX]),
        }
    }
}

/// Writes the blobs `wanted` taken from the artifact at `artifact` (which is verified
/// whole on the way) as a blob stream; returns the bytes written. For a CLI that holds
/// an artifact file and no store.
pub fn pack_for_transfer(
    artifact: &Path,
    wanted: &[Hash],
    out: impl Write,
    limits: &Limits,
) -> Result<u64, ArtifactError> {
    pack(
        artifact,
        Wanted::Full(wanted.iter().copied().collect()),
        out,
        limits,
    )
}

/// [`pack_for_transfer`] for the short digests a [`CompactManifest`] left unresolved:
/// every blob of the artifact whose digest starts with one of them.
pub fn pack_for_transfer_short(
    artifact: &Path,
    wanted: &[String],
    out: impl Write,
    limits: &Limits,
) -> Result<u64, ArtifactError> {
    pack(
        artifact,
        Wanted::Short(wanted.iter().cloned().collect()),
        out,
        limits,
    )
}

fn pack(
    artifact: &Path,
    wanted: Wanted,
    out: impl Write,
    limits: &Limits,
) -> Result<u64, ArtifactError> {
    let file = std::fs::File::open(artifact).at(artifact)?;
    let mut sink = PackSink {
        enc: encoder(out)?,
        wanted,
        sizes: HashMap::new(),
        sent: HashSet::new(),
        _limits: limits,
    };
    read_artifact(file, limits, &mut sink)?;
    finish(sink.enc)
}

/// A reader that fails instead of ending early.
struct Exact<'a, R> {
    inner: &'a mut R,
    left: u64,
}

impl<R: Read> Read for Exact<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "blob stream ends inside a blob",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Reads a blob stream into `store`, checking every blob's hash before it becomes
/// visible, and at most `limits.max_total_bytes` of blob data and `limits.max_entries`
/// blobs. Returns the hashes received.
pub fn read_blob_stream(
    input: impl Read,
    store: &Store,
    limits: &Limits,
) -> Result<Vec<Hash>, ArtifactError> {
    let mut dec = zstd::stream::read::Decoder::new(input).map_err(stream_err)?;
    dec.window_log_max(27).map_err(stream_err)?;
    let mut magic = [0u8; 12];
    dec.read_exact(&mut magic).map_err(stream_err)?;
    if &magic != MAGIC {
        return Err(ArtifactError::Stream("not a hoist blob stream".into()));
    }
    let mut got = Vec::new();
    let mut total: u64 = 0;
    loop {
        let mut tag = [0u8; 1];
        dec.read_exact(&mut tag).map_err(stream_err)?;
        match tag[0] {
            b'E' => break,
            b'B' => {}
            other => {
                return Err(ArtifactError::Stream(format!(
                    "unexpected frame tag `{:#04x}`",
                    other
                )))
            }
        }
        let mut head = [0u8; 40];
        dec.read_exact(&mut head).map_err(stream_err)?;
        let hash = Hash::from_bytes(head[..32].try_into().expect("32 bytes"));
        let len = u64::from_be_bytes(head[32..].try_into().expect("8 bytes"));
        total = total.saturating_add(len);
        if total > limits.max_total_bytes {
            return Err(ArtifactError::Limit {
                what: format!("blob data ({total} bytes)"),
                limit: limits.max_total_bytes,
            });
        }
        if got.len() >= limits.max_entries {
            return Err(ArtifactError::Limit {
                what: "the number of blobs".into(),
                limit: limits.max_entries as u64,
            });
        }
        store.put_blob(
            Exact {
                inner: &mut dec,
                left: len,
            },
            &hash,
        )?;
        got.push(hash);
    }
    let mut rest = [0u8; 1];
    if dec.read(&mut rest).map_err(stream_err)? != 0 {
        return Err(ArtifactError::Stream(
            "data after the end of the stream".into(),
        ));
    }
    Ok(got)
}
