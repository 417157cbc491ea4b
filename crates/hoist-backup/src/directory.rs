//! A directory: a tar.zst of a path under the app's data dir, and a restore that unpacks
//! beside the target and swaps it in. An archive entry that could land outside the
//! target (an absolute path, `..`, a link pointing out, a device) is refused before
//! anything is replaced.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::file::{self, Sealed};
use crate::{BackupError, Checked, Result};

const LEVEL: i32 = 3;

/// Archives `source` (a directory) to `dest`, sealed.
pub fn backup(source: &Path, dest: &Path) -> Result<Sealed> {
    let partial = file::partial_path(dest);
    archive(source, file::create_private(&partial)?, &partial)?;
    file::seal(&partial, dest)
}

/// Writes the tar.zst of `source` to `out` (`shown` names `out` in errors).
pub(crate) fn archive(source: &Path, out: impl std::io::Write, shown: &Path) -> Result<()> {
    if !source.is_dir() {
        return Err(BackupError::Missing {
            path: source.to_path_buf(),
        });
    }
    let enc = zstd::Encoder::new(out, LEVEL).map_err(BackupError::io(shown))?;
    let mut tar = tar::Builder::new(enc);
    // Links are archived as links: following one could pull in files from outside.
    tar.follow_symlinks(false);
    // Entry by entry (tar's own walk loses the path in its errors): a file the reader
    // may not open is named.
    let mut stack = vec![(source.to_path_buf(), PathBuf::from("."))];
    while let Some((dir, rel)) = stack.pop() {
        tar.append_path_with_name(&dir, &rel)
            .map_err(BackupError::io(&dir))?;
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(BackupError::io(&dir))?
            .collect::<std::io::Result<_>>()
            .map_err(BackupError::io(&dir))?;
        entries.sort_by_key(|e| e.file_name());
        let mut subdirs = Vec::new();
        for e in entries {
            let path = e.path();
            let name = rel.join(e.file_name());
            if e.file_type().map_err(BackupError::io(&path))?.is_dir() {
                subdirs.push((path, name));
            } else {
                tar.append_path_with_name(&path, &name)
                    .map_err(BackupError::io(&path))?;
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    let enc = tar.into_inner().map_err(BackupError::io(shown))?;
    enc.finish().map_err(BackupError::io(shown))?;
    Ok(())
}

/// Replaces the directory `target` with the archive's content. Unpacked first into a
/// sibling directory; the swap is two renames.
pub fn restore(archive: &Path, target: &Path) -> Result<Checked> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dir".into());
    let staging = target.with_file_name(format!(".{name}.restore"));
    let old = target.with_file_name(format!(".{name}.old"));
    let _ = std::fs::remove_dir_all(&staging);
    let _ = std::fs::remove_dir_all(&old);
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(BackupError::io(dir))?;
    }
    let owner = crate::file::Owner::of_target(target);
    let checked = match unpack(archive, &staging).and_then(|c| {
        // The directory stays the app's: every entry gets the owner of the one it replaces.
        if let Some(o) = owner {
            o.apply_tree(&staging)?;
        }
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if target.exists() {
        std::fs::rename(target, &old).map_err(BackupError::io(target))?;
    }
    std::fs::rename(&staging, target).map_err(BackupError::io(target))?;
    file::sync_dir(target)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(checked)
}

/// Unpacks into `scratch/verify` and counts what came out.
pub fn verify(archive: &Path, scratch: &Path) -> Result<Checked> {
    unpack(archive, &scratch.join("verify"))
}

/// Unpacks `archive` into `into` (created), refusing unsafe entries.
fn unpack(archive: &Path, into: &Path) -> Result<Checked> {
    std::fs::create_dir_all(into).map_err(BackupError::io(into))?;
    let f = std::fs::File::open(archive).map_err(BackupError::io(archive))?;
    let dec = zstd::Decoder::new(f).map_err(BackupError::io(archive))?;
    let mut tar = tar::Archive::new(dec);
    tar.set_preserve_permissions(true);
    let mut files = BTreeMap::<String, u64>::new();
    let mut bytes = 0u64;
    for entry in tar.entries().map_err(BackupError::io(archive))? {
        let mut entry = entry.map_err(BackupError::io(archive))?;
        let path = entry.path().map_err(BackupError::io(archive))?.into_owned();
        let shown = path.display().to_string();
        let rel = safe_relative(&path).ok_or_else(|| BackupError::Entry {
            entry: shown.clone(),
            reason: "its path leaves the target".into(),
        })?;
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Regular | tar::EntryType::Directory => {}
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(BackupError::io(archive))?
                    .unwrap_or_default();
                // A link may point within the archive's own tree, never out of it.
                let base = rel.parent().unwrap_or(Path::new(""));
                if !link_stays_inside(base, &link) {
                    return Err(BackupError::Entry {
                        entry: shown,
                        reason: format!("its link `{}` points outside", link.display()),
                    });
                }
            }
            other => {
                return Err(BackupError::Entry {
                    entry: shown,
                    reason: format!("entries of type {other:?} are not restored"),
                })
            }
        }
        if kind == tar::EntryType::Regular {
            bytes += entry.header().size().unwrap_or(0);
            let top = rel
                .components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .unwrap_or_default();
            *files.entry(top).or_default() += 1;
        }
        if rel.as_os_str().is_empty() {
            continue;
        }
        // `unpack_in` refuses paths through links as well: a second line of defence.
        let inside = entry.unpack_in(into).map_err(BackupError::io(into))?;
        if !inside {
            return Err(BackupError::Entry {
                entry: shown,
                reason: "its path leaves the target".into(),
            });
        }
    }
    let n: u64 = files.values().sum();
    Ok(Checked {
        summary: format!("{n} files, {bytes} bytes"),
        tables: files,
    })
}

/// The entry's path without `.` components, or None if it is absolute or has `..`.
fn safe_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

fn link_stays_inside(base: &Path, link: &Path) -> bool {
    let mut depth = base.components().count() as i64;
    for c in link.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restored directory stays the app's (a root agent restores it).
    #[test]
    fn a_restore_keeps_the_directorys_owner() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("uploads");
        std::fs::create_dir_all(live.join("sub")).unwrap();
        std::fs::write(live.join("sub/a.txt"), "a").unwrap();
        let b = dir.path().join("b.tar.zst");
        backup(&live, &b).unwrap();
        for p in [live.clone(), live.join("sub"), live.join("sub/a.txt")] {
            std::os::unix::fs::chown(&p, Some(4242), Some(4343)).unwrap();
        }
        restore(&b, &live).unwrap();
        for p in [live.clone(), live.join("sub"), live.join("sub/a.txt")] {
            let m = std::fs::metadata(&p).unwrap();
            assert_eq!((m.uid(), m.gid()), (4242, 4343), "{}", p.display());
        }
    }

    #[test]
    fn round_trip_replaces_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("uploads");
        std::fs::create_dir_all(src.join("a/b")).unwrap();
        std::fs::write(src.join("a/b/one.txt"), "one").unwrap();
        std::fs::write(src.join("two.txt"), "two").unwrap();
        std::os::unix::fs::symlink("a/b/one.txt", src.join("link")).unwrap();
        let s = backup(&src, &dir.path().join("u.tar.zst")).unwrap();
        std::fs::write(src.join("two.txt"), "changed").unwrap();
        std::fs::write(src.join("three.txt"), "new").unwrap();
        let c = restore(&s.path, &src).unwrap();
        assert_eq!(c.tables.values().sum::<u64>(), 2);
        assert_eq!(std::fs::read_to_string(src.join("two.txt")).unwrap(), "two");
        assert_eq!(std::fs::read_to_string(src.join("link")).unwrap(), "one");
        assert!(!src.join("three.txt").exists());
        assert!(!dir.path().join(".uploads.restore").exists());
        assert!(!dir.path().join(".uploads.old").exists());
    }

    fn archive_with(dir: &Path, build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> PathBuf {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let raw = b.into_inner().unwrap();
        let path = dir.join("evil.tar.zst");
        std::fs::write(&path, zstd::encode_all(&raw[..], 3).unwrap()).unwrap();
        path
    }

    fn raw_header(name: &[u8], kind: tar::EntryType, link: Option<&[u8]>) -> tar::Header {
        let mut h = tar::Header::new_old();
        // Written as raw bytes: `set_path` itself refuses `..`, an archive need not.
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
        }
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o644);
        h.set_cksum();
        h
    }

    #[test]
    fn escaping_entries_are_refused_and_the_target_kept() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("data");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(target.join("keep.txt"), "keep").unwrap();
        type Case<'a> = (&'a [u8], tar::EntryType, Option<&'a [u8]>);
        let cases: Vec<Case> = vec![
            (b"../evil.txt", tar::EntryType::Regular, None),
            (b"/tmp/evil.txt", tar::EntryType::Regular, None),
            (b"ln", tar::EntryType::Symlink, Some(b"/etc")),
            (b"a/ln", tar::EntryType::Symlink, Some(b"../../x")),
            (b"dev", tar::EntryType::Char, None),
        ];
        for (name, kind, link) in cases {
            let archive = archive_with(dir.path(), |b| {
                b.append(&raw_header(name, kind, link), &[][..]).unwrap();
            });
            let err = restore(&archive, &target).unwrap_err();
            assert!(
                matches!(err, BackupError::Entry { .. }),
                "{}: {err}",
                String::from_utf8_lossy(name)
            );
            assert_eq!(
                std::fs::read_to_string(target.join("keep.txt")).unwrap(),
                "keep"
            );
        }
        assert!(!dir.path().join("evil.txt").exists());
    }
}
