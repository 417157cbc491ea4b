//! The shell scripts a files host runs: POSIX `sh` with `mkdir`, `ln`, `mv`, `tar`,
//! `readlink`, `ls`, `find`, `date` (and `sqlite3` or `python3` for SQLite backups).
//! Every value is passed quoted at the top of a script, never spliced into its body.

use crate::ssh::shell_quote;

/// `NAME='value'` lines for the top of a script.
pub fn vars(pairs: &[(&str, &str)]) -> String {
    let mut s = String::from("set -eu\numask 022\n");
    for (k, v) in pairs {
        s.push_str(&format!("{k}={}\n", shell_quote(v)));
    }
    s
}

/// Helpers every script may use: `$D` is the served path's directory, `$B` its name,
/// `$S` the state directory `$B.hoist` (relative to `$D`, where each script starts).
pub const PRELUDE: &str = r#"
cd "$D"
S="$B.hoist"
die() { echo "$*" >&2; exit 3; }
# rename(2) of a new symlink over the served path: `mv -T` (GNU, busybox), else python3.
swap() {
  if mv -T "$1" "$2" 2>/dev/null; then return 0; fi
  command -v python3 >/dev/null 2>&1 || die "neither \`mv -T\` nor python3 can rename over $2"
  python3 -c 'import os,sys; os.rename(sys.argv[1], sys.argv[2])' "$1" "$2"
}
# The lock is a symlink whose target is `hoist-lock:TOKEN:EXPIRY:HOLDER`: made with one
# symlink(2) (fails when it exists) and replaced with one rename(2).
lock_info() { readlink "$S/lock" 2>/dev/null || true; }
lock_mine() {
  case "$(lock_info)" in
    "hoist-lock:$TOKEN:"*) return 0 ;;
    *) echo "the deploy lock was lost (now: $(lock_info | cut -d: -f4-))" >&2; exit 75 ;;
  esac
}
renew() {
  lock_mine
  rm -f "$S/.lock.$TOKEN"
  ln -s "hoist-lock:$TOKEN:$(( $(date +%s) + TTL )):$HOLDER" "$S/.lock.$TOKEN"
  mv -f "$S/.lock.$TOKEN" "$S/lock"
}
"#;

/// Takes the lock (or says who holds it, exit 75); a lock past its expiry is taken over.
pub const LOCK: &str = r#"
mkdir -p "$S"
now=$(date +%s)
info="hoist-lock:$TOKEN:$(( now + TTL )):$HOLDER"
if ! ln -s "$info" "$S/lock" 2>/dev/null; then
  held=$(lock_info)
  exp=$(printf '%s' "$held" | cut -d: -f3)
  case "$exp" in ''|*[!0-9]*) exp=0 ;; esac
  if [ "$exp" -gt "$now" ]; then
    echo "held by $(printf '%s' "$held" | cut -d: -f4-) for $(( exp - now ))s more" >&2
    exit 75
  fi
  rm -f "$S/.lock.$TOKEN"
  ln -s "$info" "$S/.lock.$TOKEN"
  mv -f "$S/.lock.$TOKEN" "$S/lock"
  lock_mine
  echo "took over an expired lock of $(printf '%s' "$held" | cut -d: -f4-)"
fi
# A new link a dead deploy left beside the served path is never renamed now.
for l in ".$B.hoist-link."*; do [ -L "$l" ] && rm -f "$l"; done
true
"#;

pub const UNLOCK: &str = r#"
case "$(lock_info)" in "hoist-lock:$TOKEN:"*) rm -f "$S/lock" ;; esac
rm -f "$S/.lock.$TOKEN" ".$B.hoist-link.$TOKEN"
rm -rf "$S/incoming.$TOKEN"
"#;

/// What is on the host: the served path's kind and target, the releases, the blobs.
pub const INVENTORY: &str = r#"
if [ -L "$B" ]; then echo "kind=link"; echo "target=$(readlink "$B")"
elif [ -d "$B" ]; then echo "kind=dir"
elif [ -e "$B" ]; then echo "kind=other"
else echo "kind=none"; fi
echo "lock=$(lock_info)"
echo "now=$(date +%s)"
if [ -d "$S/releases" ]; then
  for r in $(ls -1t "$S/releases"); do
    case "$r" in .*) ;; *) echo "release=$r" ;; esac
  done
fi
if [ -d "$S/blobs" ]; then
  for b in $(ls -1 "$S/blobs"); do echo "blob=$b"; done
fi
for a in $(ls -1 "$S" 2>/dev/null); do
  case "$a" in before-hoist-*) echo "aside=$a" ;; esac
done
"#;

/// Receives a tar of blobs on stdin; each becomes visible under `blobs/` by a rename,
/// so a cut transfer leaves no half-written blob there.
pub const RECEIVE: &str = r#"
renew
mkdir -p "$S/blobs"
rm -rf "$S/incoming.$TOKEN"
mkdir "$S/incoming.$TOKEN"
(cd "$S/incoming.$TOKEN" && tar -xf -)
for f in $(ls -1 "$S/incoming.$TOKEN"); do
  chmod "${f##*-}" "$S/incoming.$TOKEN/$f"
  mv -f "$S/incoming.$TOKEN/$f" "$S/blobs/$f"
done
rmdir "$S/incoming.$TOKEN"
"#;

/// Switches the served path to `$T` (a path relative to `$D`): a new symlink renamed over
/// it. A plain directory there is moved aside first (never deleted). Prints the previous
/// target as `previous=…`.
pub const SWITCH: &str = r#"
renew
[ -d "$T" ] || die "the release $T is not on the host"
tmp=".$B.hoist-link.$TOKEN"
rm -f "$tmp"
ln -s "$T" "$tmp"
if [ -L "$B" ]; then
  echo "previous=$(readlink "$B")"
  [ -z "${PAUSE:-}" ] || sleep "$PAUSE"
  # A deploy given up (Ctrl-C, lock expired) while this ran must not switch now.
  lock_mine
  swap "$tmp" "$B"
elif [ -d "$B" ]; then
  aside="$S/before-hoist-$(date -u +%Y%m%dT%H%M%SZ)"
  mv "$B" "$aside"
  swap "$tmp" "$B"
  echo "previous=$aside"
  echo "moved_aside=$aside"
elif [ -e "$B" ]; then
  rm -f "$tmp"
  die "$D/$B is neither a directory nor a symlink: not touched"
else
  echo "previous="
  swap "$tmp" "$B"
fi
"#;

/// Removes the served symlink (a failed first deploy over nothing puts back nothing).
pub const UNLINK: &str = r#"
renew
[ -L "$B" ] && rm -f "$B"
"#;

/// Runs the restart command in `$R` (the release directory).
/// Web servers that watch `tmp/restart.txt` compare its times in whole seconds
/// (Passenger's file change check), so a restart in the same second as the last one
/// would go unseen and the old process keep serving: wait for the next second then.
pub const RESTART: &str = r#"
stamp="$PWD/$S/last-restart"
cd "$R"
mkdir -p tmp
now=$(date +%s)
while [ "$(cat "$stamp" 2>/dev/null)" = "$now" ]; do sleep 1; now=$(date +%s); done
sh -c "$CMD"
echo "$now" > "$stamp"
"#;

/// Keeps the newest `$KEEP` releases (never `$CUR` or `$PREV`), then the blobs no release
/// links any more.
pub const PRUNE: &str = r#"
renew
n=0
for r in $(ls -1t "$S/releases"); do
  case "$r" in .*) rm -rf "$S/releases/$r"; continue ;; esac
  n=$((n + 1))
  if [ "$n" -gt "$KEEP" ] && [ "$r" != "$CUR" ] && [ "$r" != "$PREV" ]; then
    chmod -R u+w "$S/releases/$r" 2>/dev/null || true
    rm -rf "$S/releases/$r"
    echo "pruned=$r"
  fi
done
if [ -d "$S/blobs" ]; then
  find "$S/blobs" -type f -links 1 -exec rm -f {} +
fi
"#;

/// Appends `$LINE` to the history (JSON lines).
pub const APPEND: &str = r#"
renew
printf '%s\n' "$LINE" >> "$S/history.jsonl"
"#;

/// The last history line (empty when there is none).
pub const LAST: &str = r#"
[ -f "$S/history.jsonl" ] && tail -n 1 "$S/history.jsonl" || true
"#;

/// The whole history.
pub const HISTORY: &str = r#"
[ -f "$S/history.jsonl" ] && cat "$S/history.jsonl" || true
"#;

/// An SQLite backup of `$SRC` into `$DEST` (0600) with the host's `sqlite3`, else
/// python3's `sqlite3` module; an absent source prints `absent`.
pub const BACKUP_SQLITE: &str = r#"
case "$SRC" in /*) ;; *) SRC="$S/data/$SRC" ;; esac
if [ ! -f "$SRC" ]; then echo "absent=$SRC"; exit 0; fi
mkdir -p "$(dirname "$DEST")"
umask 077
rm -f "$DEST.tmp"
if command -v sqlite3 >/dev/null 2>&1; then
  sqlite3 "$SRC" ".backup '$DEST.tmp'"
elif command -v python3 >/dev/null 2>&1; then
  python3 -c 'import sqlite3,sys
s=sqlite3.connect(sys.argv[1]); d=sqlite3.connect(sys.argv[2]); s.backup(d); d.close(); s.close()' "$SRC" "$DEST.tmp"
else
  die "neither sqlite3 nor python3 is on the host: cannot back up $SRC"
fi
mv -f "$DEST.tmp" "$DEST"
echo "file=$DEST"
echo "size=$(wc -c < "$DEST" | tr -d ' ')"
"#;

/// A directory backup of `$SRC` as a tar file.
pub const BACKUP_DIR: &str = r#"
case "$SRC" in /*) ;; *) SRC="$S/data/$SRC" ;; esac
if [ ! -d "$SRC" ]; then echo "absent=$SRC"; exit 0; fi
mkdir -p "$(dirname "$DEST")"
umask 077
tar -cf "$DEST.tmp" -C "$SRC" .
mv -f "$DEST.tmp" "$DEST"
echo "file=$DEST"
echo "size=$(wc -c < "$DEST" | tr -d ' ')"
"#;

/// Keeps the newest `$KEEP` files of backup `$NAME`.
pub const PRUNE_BACKUPS: &str = r#"
n=0
[ -d "$S/backups/$NAME" ] || exit 0
for f in $(ls -1t "$S/backups/$NAME"); do
  n=$((n + 1))
  [ "$n" -le "$KEEP" ] || rm -f "$S/backups/$NAME/$f"
done
"#;

/// Lists every backup file: `NAME/FILE SIZE`.
pub const LIST_BACKUPS: &str = r#"
[ -d "$S/backups" ] || exit 0
for n in $(ls -1 "$S/backups"); do
  for f in $(ls -1t "$S/backups/$n"); do
    echo "$n/$f $(wc -c < "$S/backups/$n/$f" | tr -d ' ')"
  done
done
"#;

/// Restores `$FILE` (under `$S/backups`) over `$SRC`: copied beside it, then renamed.
pub const RESTORE_SQLITE: &str = r#"
renew
case "$SRC" in /*) ;; *) SRC="$S/data/$SRC" ;; esac
[ -f "$S/backups/$FILE" ] || die "no backup $FILE on the host"
mkdir -p "$(dirname "$SRC")"
cp "$S/backups/$FILE" "$SRC.hoist-restore"
rm -f "$SRC-wal" "$SRC-shm" "$SRC-journal"
mv -f "$SRC.hoist-restore" "$SRC"
echo "restored=$SRC"
"#;

pub const RESTORE_DIR: &str = r#"
renew
case "$SRC" in /*) ;; *) SRC="$S/data/$SRC" ;; esac
[ -f "$S/backups/$FILE" ] || die "no backup $FILE on the host"
rm -rf "$SRC.hoist-restore"
mkdir -p "$SRC.hoist-restore"
tar -xf "$S/backups/$FILE" -C "$SRC.hoist-restore"
if [ -e "$SRC" ]; then mv "$SRC" "$SRC.hoist-old"; fi
mv "$SRC.hoist-restore" "$SRC"
rm -rf "$SRC.hoist-old"
echo "restored=$SRC"
"#;

/// Prepares the state directory and reports what the host has.
pub const SETUP: &str = r#"
for d in "$S" "$S/releases" "$S/blobs" "$S/backups" "$S/data"; do
  if [ -d "$d" ]; then echo "unchanged=$d"; else mkdir -p "$d"; echo "changed=$d"; fi
done
chmod 700 "$S/backups"
for c in sh tar mkdir ln mv readlink find; do
  command -v "$c" >/dev/null 2>&1 && echo "tool=$c" || echo "missing=$c"
done
for c in sqlite3 python3; do command -v "$c" >/dev/null 2>&1 && echo "tool=$c"; done
t="$S/.setup-probe"
rm -rf "$t" "$t.l"; mkdir "$t"; ln -s "$t" "$t.l"; ln -s "$t" "$t.m"
if swap "$t.m" "$t.l" 2>/dev/null; then echo "tool=rename"; else echo "missing=rename"; fi
rm -rf "$t" "$t.l" "$t.m"
if [ -L "$B" ]; then echo "served=link"; elif [ -d "$B" ]; then echo "served=dir";
elif [ -e "$B" ]; then echo "served=other"; else echo "served=none"; fi
"#;

/// Reads the secrets file (empty when there is none).
pub const READ_SECRETS: &str = r#"
[ -f "$S/secrets.json" ] && cat "$S/secrets.json" || true
"#;

/// Writes stdin as the secrets file, 0600, atomically.
pub const WRITE_SECRETS: &str = r#"
mkdir -p "$S"
umask 077
cat > "$S/.secrets.json.tmp"
chmod 600 "$S/.secrets.json.tmp"
mv -f "$S/.secrets.json.tmp" "$S/secrets.json"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `body` locally as a files host would (POSIX sh), in `dir`.
    fn run(dir: &std::path::Path, extra: &[(&str, &str)], body: &str) -> std::process::Output {
        let d = dir.to_str().unwrap();
        let mut all = vec![("D", d), ("B", "app")];
        all.extend_from_slice(extra);
        let text = format!("{}{PRELUDE}{body}", vars(&all));
        std::process::Command::new("sh")
            .args(["-c", &text])
            .output()
            .unwrap()
    }

    #[test]
    fn the_lock_refuses_while_it_lives_and_is_taken_over_once_expired() {
        let dir = tempfile::tempdir().unwrap();
        let who = |t: &'static str, ttl: &'static str| {
            vec![("TOKEN", t), ("HOLDER", "alice@laptop"), ("TTL", ttl)]
        };
        // A holder whose lock is already past its expiry (TTL -5).
        let o = run(dir.path(), &who("t1", "-5"), LOCK);
        assert!(o.status.success(), "{o:?}");
        let o = run(dir.path(), &who("t2", "100"), LOCK);
        assert!(o.status.success(), "an expired lock is taken over: {o:?}");
        assert!(String::from_utf8_lossy(&o.stdout)
            .contains("took over an expired lock of alice@laptop"));
        // Now t2's lives: t3 is refused with the holder named, status 75.
        let o = run(dir.path(), &who("t3", "100"), LOCK);
        assert_eq!(o.status.code(), Some(75));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("held by alice@laptop"),
            "{o:?}"
        );
        // Only its holder renews or releases it.
        let o = run(dir.path(), &who("t3", "100"), "renew\n");
        assert_eq!(o.status.code(), Some(75), "{o:?}");
        let o = run(dir.path(), &who("t3", "100"), UNLOCK);
        assert!(o.status.success());
        assert!(std::fs::symlink_metadata(dir.path().join("app.hoist/lock")).is_ok());
        let o = run(dir.path(), &who("t2", "100"), UNLOCK);
        assert!(o.status.success());
        assert!(std::fs::symlink_metadata(dir.path().join("app.hoist/lock")).is_err());
    }

    #[test]
    fn the_switch_moves_a_plain_directory_aside_and_renames_a_link_over_the_served_path() {
        let dir = tempfile::tempdir().unwrap();
        let lock = [("TOKEN", "t"), ("HOLDER", "me"), ("TTL", "100")];
        assert!(run(dir.path(), &lock, LOCK).status.success());
        std::fs::create_dir_all(dir.path().join("app")).unwrap();
        std::fs::write(dir.path().join("app/index"), "old").unwrap();
        for r in ["r1", "r2"] {
            let rel = dir.path().join(format!("app.hoist/releases/{r}"));
            std::fs::create_dir_all(&rel).unwrap();
            std::fs::write(rel.join("index"), r).unwrap();
        }
        let mut v = lock.to_vec();
        v.extend([("T", "app.hoist/releases/r1"), ("PAUSE", "")]);
        let o = run(dir.path(), &v, SWITCH);
        assert!(o.status.success(), "{o:?}");
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let aside = out
            .lines()
            .find_map(|l| l.strip_prefix("moved_aside="))
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(aside).join("index")).unwrap(),
            "old"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("app/index")).unwrap(),
            "r1"
        );
        let mut v = lock.to_vec();
        v.extend([("T", "app.hoist/releases/r2"), ("PAUSE", "")]);
        let o = run(dir.path(), &v, SWITCH);
        assert!(o.status.success(), "{o:?}");
        assert!(String::from_utf8_lossy(&o.stdout).contains("previous=app.hoist/releases/r1"));
        assert_eq!(
            std::fs::read_link(dir.path().join("app")).unwrap(),
            std::path::Path::new("app.hoist/releases/r2"),
            "a relative link"
        );
        // Without the lock nothing is switched.
        let mut v = vec![("TOKEN", "other"), ("HOLDER", "x"), ("TTL", "100")];
        v.extend([("T", "app.hoist/releases/r1"), ("PAUSE", "")]);
        assert_eq!(run(dir.path(), &v, SWITCH).status.code(), Some(75));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("app/index")).unwrap(),
            "r2"
        );
    }
}
