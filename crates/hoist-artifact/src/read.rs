//! The one artifact reader: decompresses, parses the tar stream, checks every entry
//! against the manifest and hands the checked bytes to a [`Sink`] (nothing, a staging
//! directory, or the blob store), all in one pass with bounded memory. Verify, unpack and
//! ingest all go through here, so what is verified is exactly what is written.
//!
//! The tar parser is our own and deliberately narrow: it accepts what `build` writes
//! (ustar or GNU headers, files, directories, symlinks, GNU long names) and refuses
//! everything else by name (hardlinks, devices, fifos, pax headers). The `tar` crate's
//! reader is not used here because it buffers long-name and pax data without a cap and
//! applies pax overrides silently; a parser this small is easier to fuzz and to trust.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

use crate::error::{ArtifactError, Refusal};
use crate::hash::Hash;
use crate::manifest::{
    check_mode, check_path, EntryKind, Limits, Manifest, MANIFEST_NAME, MAX_PATH_BYTES,
};

const BLOCK: usize = 512;

/// Zero padding accepted after the end-of-archive marker (GNU tar pads to 10 KiB).
const MAX_TRAILING_ZEROS: u64 = 64 << 10;

/// zstd's default window cap (128 MiB): frames asking for more are refused, so a crafted
/// frame cannot make the decoder allocate gigabytes.
const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// Where checked entries go. Calls come in manifest order; a file's bytes are committed
/// only after their size and SHA-256 matched the manifest. On any error the caller
/// discards whatever the sink wrote.
pub(crate) trait Sink {
    fn manifest(&mut self, _manifest: &Manifest) -> Result<(), ArtifactError> {
        Ok(())
    }
    fn dir(&mut self, path: &str, mode: u32) -> Result<(), ArtifactError>;
    fn symlink(&mut self, path: &str, target: &str) -> Result<(), ArtifactError>;
    /// Starts a file; `false` means the sink does not want the bytes (only checked).
    fn file_start(&mut self, path: &str, mode: u32, sha256: &Hash) -> Result<bool, ArtifactError>;
    fn file_data(&mut self, data: &[u8]) -> Result<(), ArtifactError>;
    fn file_commit(&mut self) -> Result<(), ArtifactError>;
}

/// A sink that keeps nothing: plain verification.
pub(crate) struct Discard;

impl Sink for Discard {
    fn dir(&mut self, _: &str, _: u32) -> Result<(), ArtifactError> {
        Ok(())
    }
    fn symlink(&mut self, _: &str, _: &str) -> Result<(), ArtifactError> {
        Ok(())
    }
    fn file_start(&mut self, _: &str, _: u32, _: &Hash) -> Result<bool, ArtifactError> {
        Ok(false)
    }
    fn file_data(&mut self, _: &[u8]) -> Result<(), ArtifactError> {
        Ok(())
    }
    fn file_commit(&mut self) -> Result<(), ArtifactError> {
        Ok(())
    }
}

/// Wraps a compressed artifact stream in a zstd decoder with the window capped.
pub(crate) fn decompress<'a, R: Read + 'a>(reader: R) -> Result<impl Read + 'a, ArtifactError> {
    let mut dec =
        zstd::stream::read::Decoder::new(reader).map_err(|source| ArtifactError::Corrupt {
            after: None,
            source,
        })?;
    dec.window_log_max(ZSTD_WINDOW_LOG_MAX)
        .map_err(|source| ArtifactError::Corrupt {
            after: None,
            source,
        })?;
    Ok(dec)
}

/// Reads a whole compressed artifact into `sink`.
pub(crate) fn read_artifact(
    reader: impl Read,
    limits: &Limits,
    sink: &mut dyn Sink,
) -> Result<Manifest, ArtifactError> {
    read_tar(decompress(reader)?, limits, sink)
}

/// A parsed tar header, long names applied.
struct Header {
    path: String,
    kind: TarKind,
    mode: u32,
    size: u64,
}

enum TarKind {
    File,
    Dir,
    Symlink(String),
}

impl TarKind {
    fn name(&self) -> &'static str {
        match self {
            TarKind::File => "file",
            TarKind::Dir => "directory",
            TarKind::Symlink(_) => "symlink",
        }
    }
}

struct TarReader<R> {
    inner: R,
    /// The last entry read whole, to say where a corrupt stream broke.
    last: Option<String>,
}

impl<R: Read> TarReader<R> {
    fn corrupt(&self, source: io::Error) -> ArtifactError {
        ArtifactError::Corrupt {
            after: self.last.clone(),
            source,
        }
    }

    /// Reads exactly `buf.len()` bytes; `Ok(false)` on a clean EOF before the first byte.
    fn fill(&mut self, buf: &mut [u8]) -> Result<bool, ArtifactError> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(self.corrupt(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.corrupt(e)),
            }
        }
        Ok(true)
    }

    /// Reads the next header; `None` at the end-of-archive block.
    fn next(&mut self) -> Result<Option<Header>, ArtifactError> {
        let mut long_name: Option<String> = None;
        let mut long_link: Option<String> = None;
        loop {
            let mut block = [0u8; BLOCK];
            if !self.fill(&mut block)? {
                // A tar stream must end with its zero block, else it was cut short.
                return Err(self.corrupt(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "no end-of-archive marker",
                )));
            }
            if block.iter().all(|&b| b == 0) {
                if long_name.is_some() || long_link.is_some() {
                    return Err(ArtifactError::entry(
                        "(long name)",
                        Refusal::BadHeader("long name without an entry"),
                    ));
                }
                return Ok(None);
            }
            let raw_name = header_name(&block);
            let shown = long_name
                .clone()
                .unwrap_or_else(|| String::from_utf8_lossy(&raw_name).into_owned());
            let bad = |why| ArtifactError::entry(shown.clone(), Refusal::BadHeader(why));
            let stored = octal(&block[148..156]).ok_or_else(|| bad("checksum field"))?;
            let sum: u64 = block
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        b as u64
                    }
                })
                .sum();
            if stored != sum {
                return Err(bad("checksum mismatch"));
            }
            let magic = &block[257..265];
            let ustar = magic == b"ustar\x0000";
            if !ustar && magic != b"ustar  \x00" {
                return Err(bad("not a ustar or gnu header"));
            }
            let size = number(&block[124..136]).ok_or_else(|| bad("size field"))?;
            let mode = octal(&block[100..108]).ok_or_else(|| bad("mode field"))? as u32;
            let typeflag = block[156];
            let entry_err = |r| ArtifactError::entry(shown.clone(), r);
            match typeflag {
                b'L' | b'K' => {
                    if size as usize > MAX_PATH_BYTES + 1 {
                        return Err(entry_err(Refusal::BadPath("long name over 4096 bytes")));
                    }
                    let slot = if typeflag == b'L' {
                        &mut long_name
                    } else {
                        &mut long_link
                    };
                    if slot.is_some() {
                        return Err(bad("two long names for one entry"));
                    }
                    let mut data = vec![0u8; padded(size) as usize];
                    if !self.fill(&mut data)? {
                        return Err(entry_err(Refusal::Truncated));
                    }
                    data.truncate(size as usize);
                    if data.last() == Some(&0) {
                        data.pop();
                    }
                    let text = String::from_utf8(data)
                        .map_err(|_| entry_err(Refusal::BadPath("not UTF-8")))?;
                    if text.contains('\0') {
                        return Err(entry_err(Refusal::BadPath(
                            "control character (NUL, newline, ...) in path",
                        )));
                    }
                    *slot = Some(text);
                    continue;
                }
                b'1' => return Err(entry_err(Refusal::Hardlink)),
                b'3' | b'4' => return Err(entry_err(Refusal::Device)),
                b'6' => return Err(entry_err(Refusal::Fifo)),
                b'x' | b'g' => return Err(entry_err(Refusal::PaxHeader)),
                b'0' | b'\0' | b'5' | b'2' => {}
                other => return Err(entry_err(Refusal::UnsupportedType(other as char))),
            }
            let mut name = match long_name {
                Some(n) => n,
                None => {
                    let mut n = raw_name;
                    if ustar {
                        let prefix = field(&block[345..500]);
                        if !prefix.is_empty() {
                            let mut p = prefix.to_vec();
                            p.push(b'/');
                            p.extend_from_slice(&n);
                            n = p;
                        }
                    }
                    String::from_utf8(n).map_err(|_| entry_err(Refusal::BadPath("not UTF-8")))?
                }
            };
            let kind = match typeflag {
                b'5' => {
                    if name.ends_with('/') && name.len() > 1 {
                        name.pop();
                    }
                    TarKind::Dir
                }
                b'2' => {
                    let target =
                        match long_link {
                            Some(t) => t,
                            None => String::from_utf8(field(&block[157..257]).to_vec()).map_err(
                                |_| entry_err(Refusal::BadPath("symlink target is not UTF-8")),
                            )?,
                        };
                    TarKind::Symlink(target)
                }
                _ => TarKind::File,
            };
            if !matches!(kind, TarKind::File) && size != 0 {
                return Err(ArtifactError::entry(
                    name,
                    Refusal::BadHeader("non-zero size for a directory or symlink"),
                ));
            }
            return Ok(Some(Header {
                path: name,
                kind,
                mode: mode & 0o7777,
                size,
            }));
        }
    }

    /// Streams a file's data (and padding), hashing it and passing it to `sink`.
    fn data(
        &mut self,
        path: &str,
        size: u64,
        keep: bool,
        sink: &mut dyn Sink,
    ) -> Result<Hash, ArtifactError> {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut left = size;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = match self.inner.read(&mut buf[..want]) {
                Ok(0) => return Err(ArtifactError::entry(path, Refusal::Truncated)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(ArtifactError::entry(path, Refusal::Truncated))
                }
                Err(e) => {
                    return Err(ArtifactError::Corrupt {
                        after: self.last.clone(),
                        source: e,
                    })
                }
            };
            hasher.update(&buf[..n]);
            if keep {
                sink.file_data(&buf[..n])?;
            }
            left -= n as u64;
        }
        let pad = (padded(size) - size) as usize;
        if pad > 0 && !self.fill(&mut buf[..pad])? {
            return Err(ArtifactError::entry(path, Refusal::Truncated));
        }
        Ok(Hash::from_bytes(hasher.finalize().into()))
    }
}

fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64) * BLOCK as u64
}

/// A NUL-terminated header field.
fn field(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

fn header_name(block: &[u8; BLOCK]) -> Vec<u8> {
    field(&block[..100]).to_vec()
}

/// An octal field: optional leading spaces, digits, then NUL or space padding.
fn octal(bytes: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(field(bytes)).ok()?.trim_matches(' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// A numeric field: octal, or GNU base-256 for values that do not fit (large files).
fn number(bytes: &[u8]) -> Option<u64> {
    if bytes[0] & 0x80 == 0 {
        return octal(bytes);
    }
    if bytes[0] != 0x80 {
        return None; // negative or over 2^64
    }
    let mut v: u64 = 0;
    for &b in &bytes[1..] {
        v = v.checked_mul(256)?.checked_add(b as u64)?;
    }
    Some(v)
}

/// Reads a decompressed tar stream into `sink`, checking it against its manifest.
pub(crate) fn read_tar(
    reader: impl Read,
    limits: &Limits,
    sink: &mut dyn Sink,
) -> Result<Manifest, ArtifactError> {
    let mut tar = TarReader {
        inner: reader,
        last: None,
    };
    let first = tar.next()?.ok_or_else(|| ArtifactError::ManifestNotFirst {
        found: "(empty archive)".into(),
    })?;
    if first.path != MANIFEST_NAME || !matches!(first.kind, TarKind::File) {
        return Err(ArtifactError::ManifestNotFirst { found: first.path });
    }
    if first.size > limits.max_manifest_bytes {
        return Err(ArtifactError::Limit {
            what: format!("the manifest's size ({} bytes)", first.size),
            limit: limits.max_manifest_bytes,
        });
    }
    let mut bytes = vec![0u8; padded(first.size) as usize];
    if !tar.fill(&mut bytes)? {
        return Err(ArtifactError::entry(MANIFEST_NAME, Refusal::Truncated));
    }
    bytes.truncate(first.size as usize);
    let manifest = Manifest::parse(&bytes, limits)?;
    drop(bytes);
    tar.last = Some(MANIFEST_NAME.to_string());
    sink.manifest(&manifest)?;

    let entries = manifest.entries();
    let mut next = 0usize;
    while let Some(h) = tar.next()? {
        check_path(&h.path).map_err(|r| ArtifactError::entry(&h.path, r))?;
        // The archive lists exactly the manifest's entries, in its order.
        let expected = match entries.get(next) {
            Some(e) if e.path == h.path => e,
            _ => {
                let reason =
                    match entries.binary_search_by(|e| e.path.as_bytes().cmp(h.path.as_bytes())) {
                        Ok(i) if i < next => Refusal::Duplicate,
                        Ok(_) => {
                            return Err(ArtifactError::entry(&entries[next].path, Refusal::Missing))
                        }
                        Err(_) => Refusal::NotInManifest,
                    };
                return Err(ArtifactError::entry(&h.path, reason));
            }
        };
        next += 1;
        let mismatch = |reason| ArtifactError::entry(&h.path, reason);
        match (&expected.kind, &h.kind) {
            (EntryKind::File { sha256, size, mode }, TarKind::File) => {
                check_mode(h.mode).map_err(mismatch)?;
                if h.mode != *mode {
                    return Err(mismatch(Refusal::ModeMismatch {
                        expected: *mode,
                        found: h.mode,
                    }));
                }
                if h.size != *size {
                    return Err(mismatch(Refusal::SizeMismatch {
                        expected: *size,
                        found: h.size,
                    }));
                }
                let keep = sink.file_start(&h.path, *mode, sha256)?;
                let found = tar.data(&h.path, h.size, keep, sink)?;
                if found != *sha256 {
                    return Err(mismatch(Refusal::HashMismatch {
                        expected: *sha256,
                        found,
                    }));
                }
                if keep {
                    sink.file_commit()?;
                }
            }
            (EntryKind::Dir { mode }, TarKind::Dir) => {
                check_mode(h.mode).map_err(mismatch)?;
                if h.mode != *mode {
                    return Err(mismatch(Refusal::ModeMismatch {
                        expected: *mode,
                        found: h.mode,
                    }));
                }
                sink.dir(&h.path, *mode)?;
            }
            (EntryKind::Symlink { target }, TarKind::Symlink(found)) => {
                if found != target {
                    return Err(mismatch(Refusal::TargetMismatch {
                        expected: target.clone(),
                        found: found.clone(),
                    }));
                }
                sink.symlink(&h.path, target)?;
            }
            (e, found) => {
                return Err(mismatch(Refusal::KindMismatch {
                    expected: e.name(),
                    found: found.name(),
                }));
            }
        }
        tar.last = Some(h.path);
    }
    if let Some(e) = entries.get(next) {
        return Err(ArtifactError::entry(&e.path, Refusal::Missing));
    }
    // After the end marker only zero padding may follow, and not much of it.
    let mut rest = (&mut tar.inner).take(MAX_TRAILING_ZEROS + 1);
    let mut buf = [0u8; 8192];
    let mut seen = 0u64;
    loop {
        let n = match rest.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(ArtifactError::Corrupt {
                    after: tar.last.clone(),
                    source: e,
                })
            }
        };
        seen += n as u64;
        if buf[..n].iter().any(|&b| b != 0) || seen > MAX_TRAILING_ZEROS {
            return Err(ArtifactError::TrailingData);
        }
    }
    Ok(manifest)
}

/// Checks a compressed artifact stream against its manifest without keeping anything.
pub fn verify_reader(reader: impl Read, limits: &Limits) -> Result<Manifest, ArtifactError> {
    read_artifact(reader, limits, &mut Discard)
}

/// Checks the artifact at `path` (streaming, constant memory besides the manifest).
pub fn verify(path: &std::path::Path, limits: &Limits) -> Result<Manifest, ArtifactError> {
    let file = std::fs::File::open(path).map_err(|e| ArtifactError::io(path, e))?;
    verify_reader(file, limits)
}

/// Reads only the manifest of the artifact at `path` (for `hoist inspect`), checking
/// the manifest itself but not the files.
pub fn read_manifest(path: &std::path::Path, limits: &Limits) -> Result<Manifest, ArtifactError> {
    let file = std::fs::File::open(path).map_err(|e| ArtifactError::io(path, e))?;
    let mut tar = TarReader {
        inner: decompress(file)?,
        last: None,
    };
    let first = tar.next()?.ok_or_else(|| ArtifactError::ManifestNotFirst {
        found: "(empty archive)".into(),
    })?;
    if first.path != MANIFEST_NAME || !matches!(first.kind, TarKind::File) {
        return Err(ArtifactError::ManifestNotFirst { found: first.path });
    }
    if first.size > limits.max_manifest_bytes {
        return Err(ArtifactError::Limit {
            what: format!("the manifest's size ({} bytes)", first.size),
            limit: limits.max_manifest_bytes,
        });
    }
    let mut bytes = vec![0u8; first.size as usize];
    if !tar.fill(&mut bytes)? {
        return Err(ArtifactError::entry(MANIFEST_NAME, Refusal::Truncated));
    }
    Manifest::parse(&bytes, limits)
}

/// Checks an uncompressed tar stream (the artifact after zstd). For the fuzzer, which
/// rarely gets through zstd's framing otherwise.
#[doc(hidden)]
pub fn verify_tar(reader: impl Read, limits: &Limits) -> Result<Manifest, ArtifactError> {
    read_tar(reader, limits, &mut Discard)
}
