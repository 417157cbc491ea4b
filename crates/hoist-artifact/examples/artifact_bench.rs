//! Benchmark for release artifacts, run by `bench/artifact.sh`: builds a ~100 MB tree of
//! mixed files and prints, against anchors measured in the same run,
//! - build throughput vs `tar cf - | zstd -3 -T1`,
//! - verify throughput vs `sha256sum` of the same files (and unpack/ingest throughput),
//! - bytes moved by a redeploy where one file changed, vs the full artifact and vs
//!   `rsync --stats` (delta transfer, as over a network; with and without `-z`).
//!
//! Figures only; nothing here passes or fails.
#![allow(clippy::print_stdout)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use hoist_artifact::transfer::{
    decode_compact_manifest, encode_compact_manifest, encode_manifest, missing_blobs,
    pack_for_transfer, pack_for_transfer_short, BlobIndex,
};
use hoist_artifact::{build, unpack, verify, BuildOptions, Limits, Resolved, Store};

const ROUNDS: usize = 3;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: fast, deterministic, good enough to defeat compression.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// Source-like text: repetitive lines with varying identifiers.
    fn text(&mut self, len: usize) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "let", "value", "return", "self", "config", "request", "handler", "=", "(", ")", "{",
            "}", ";",
        ];
        let mut out = Vec::with_capacity(len + 80);
        while out.len() < len {
            for _ in 0..(self.next() % 10 + 2) {
                out.extend_from_slice(
                    WORDS[(self.next() % WORDS.len() as u64) as usize].as_bytes(),
                );
                out.push(b' ');
            }
            out.extend_from_slice(format!("x{}\n", self.next() % 1000).as_bytes());
        }
        out.truncate(len);
        out
    }
}

/// Writes the tree; returns its total file bytes and the path of the file to change.
fn make_tree(root: &Path) -> std::io::Result<(u64, String)> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut total = 0u64;
    let mut put = |rel: &str, data: Vec<u8>| -> std::io::Result<()> {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("relative path has a parent"))?;
        total += data.len() as u64;
        fs::write(p, data)
    };
    // ~40 MB of source-like text in 2 000 files over 40 directories.
    for i in 0..2000 {
        let len = 4_000 + (rng.next() % 36_000) as usize;
        put(
            &format!("src/mod{:02}/file{i:04}.py", i % 40),
            rng.text(len),
        )?;
    }
    // ~50 MB of incompressible assets (images, fonts) in 50 files.
    for i in 0..50 {
        put(&format!("static/img/asset{i:02}.bin"), rng.bytes(1 << 20))?;
    }
    // ~10 MB of one large compressible bundle.
    put("static/js/bundle.js", rng.text(10 << 20))?;
    Ok((total, "src/mod07/file0007.py".to_string()))
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn timed(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn sh(script: &str) {
    let st = Command::new("sh")
        .arg("-c")
        .arg(script)
        .status()
        .expect("run sh");
    assert!(st.success(), "`{script}` failed");
}

fn options(root: &Path) -> BuildOptions {
    BuildOptions {
        root: root.to_path_buf(),
        app: "bench".into(),
        include: vec![],
        exclude: vec![],
        hoist_version: env!("CARGO_PKG_VERSION").into(),
        config_hash: "00".into(),
        source_date_epoch: Some(1_700_000_000),
        limits: Limits::default(),
    }
}

/// `Total bytes sent` from `rsync --stats` output.
fn rsync_sent(args: &str, from: &Path, to: &Path) -> u64 {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "rsync -a --stats --no-whole-file {args} {}/ {}/",
            from.display(),
            to.display()
        ))
        .output()
        .expect("run rsync");
    assert!(
        out.status.success(),
        "rsync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("Total bytes sent:"))
        .expect("rsync --stats output");
    line.split(':')
        .nth(1)
        .expect("a value")
        .trim()
        .replace(',', "")
        .parse()
        .expect("a number")
}

fn main() {
    let base = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let work = tempfile::Builder::new()
        .prefix("hoist-artifact-bench-")
        .tempdir_in(base)
        .expect("tempdir");
    let w = work.path();
    let tree = w.join("tree");
    let (bytes, changed) = make_tree(&tree).expect("write the tree");
    let files = walkdir::WalkDir::new(&tree)
        .into_iter()
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_type().is_file()))
        .count();
    println!(
        "tree: {files} files, {:.1} MB (text, random assets, one bundle), {ROUNDS} rounds, median",
        bytes as f64 / 1e6
    );
    println!();

    // Build.
    let (mut ours, mut anchor) = (Vec::new(), Vec::new());
    let mut size = 0;
    for r in 0..ROUNDS {
        let out = w.join(format!("b{r}.tar.zst"));
        ours.push(mbps(
            bytes,
            timed(|| size = build(&options(&tree), &out).expect("build").size),
        ));
        let t = w.join(format!("t{r}.tar.zst"));
        anchor.push(mbps(
            bytes,
            timed(|| {
                sh(&format!(
                    "tar cf - -C {} . | zstd -3 -T1 -q -o {}",
                    tree.display(),
                    t.display()
                ))
            }),
        ));
        if r > 0 {
            fs::remove_file(out).ok();
            fs::remove_file(t).ok();
        }
    }
    let tar_size = fs::metadata(w.join("t0.tar.zst"))
        .expect("tar output")
        .len();
    let artifact = w.join("b0.tar.zst");
    println!("{:<44} {:>10} {:>14}", "operation", "MB/s", "anchor MB/s");
    println!(
        "{:<44} {:>10.0} {:>14.0}",
        "hoist build  vs  tar cf - | zstd -3 -T1",
        median(ours),
        median(anchor)
    );
    println!(
        "{:<44} {:>10} {:>14}",
        "  output size (MB)",
        format!("{:.1}", size as f64 / 1e6),
        format!("{:.1}", tar_size as f64 / 1e6)
    );

    // Verify.
    let (mut ours, mut anchor) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        ours.push(mbps(
            bytes,
            timed(|| drop(verify(&artifact, &Limits::default()).expect("verify"))),
        ));
        anchor.push(mbps(
            bytes,
            timed(|| {
                sh(&format!(
                    "find {} -type f -print0 | xargs -0 sha256sum > /dev/null",
                    tree.display()
                ))
            }),
        ));
    }
    println!(
        "{:<44} {:>10.0} {:>14.0}",
        "hoist verify  vs  sha256sum of the files",
        median(ours),
        median(anchor)
    );

    // Unpack and ingest (no anchor of their own: compare with verify above).
    let mut ours = Vec::new();
    for r in 0..ROUNDS {
        let dest = w.join(format!("u{r}"));
        let f = fs::File::open(&artifact).expect("artifact");
        ours.push(mbps(
            bytes,
            timed(|| drop(unpack(f, &dest, &Limits::default()).expect("unpack"))),
        ));
        hoist_artifact::remove_tree(&dest).expect("cleanup");
    }
    let mut anchor = Vec::new();
    for r in 0..ROUNDS {
        let dest = w.join(format!("x{r}"));
        fs::create_dir(&dest).expect("mkdir");
        anchor.push(mbps(
            bytes,
            timed(|| {
                sh(&format!(
                    "zstd -dc -q {} | tar xf - -C {}",
                    artifact.display(),
                    dest.display()
                ))
            }),
        ));
        fs::remove_dir_all(&dest).ok();
    }
    println!(
        "{:<44} {:>10.0} {:>14.0}",
        "hoist unpack  vs  zstd -dc | tar xf -",
        median(ours),
        median(anchor)
    );
    let store = Store::open(&w.join("store")).expect("store");
    let t = timed(|| {
        drop(
            store
                .ingest_artifact(
                    fs::File::open(&artifact).expect("artifact"),
                    &Limits::default(),
                )
                .expect("ingest"),
        )
    });
    println!(
        "{:<44} {:>10.0} {:>14}",
        "hoist store ingest (first, all blobs new)",
        mbps(bytes, t),
        "-"
    );
    let v1 = store
        .manifest(&store.releases().expect("releases")[0])
        .expect("manifest");
    let rel = w.join("rel1");
    let t = timed(|| {
        store.materialise(&v1, &rel).expect("materialise");
    });
    println!(
        "{:<44} {:>10} {:>14}",
        "hoist materialise (hardlinks), ms",
        format!("{:.0}", t * 1e3),
        "-"
    );
    println!();

    // One-file change: what a redeploy moves.
    let mirror = w.join("mirror");
    rsync_sent("", &tree, &mirror); // the receiver already has v1
    let mut rng = Rng(42);
    let new_content = rng.text(
        fs::metadata(tree.join(&changed))
            .expect("changed file")
            .len() as usize,
    );
    let changed_len = new_content.len() as u64;
    fs::write(tree.join(&changed), new_content).expect("change one file");
    let v2 = build(&options(&tree), &w.join("v2.tar.zst")).expect("build v2");
    // Full manifest + the blobs the receiver lacks.
    let manifest = encode_manifest(&v2.manifest);
    let missing = missing_blobs(&v2.manifest, &store);
    let blobs =
        pack_for_transfer(&v2.path, &missing, std::io::sink(), &Limits::default()).expect("pack");
    let full_moved = manifest.len() as u64 + blobs;
    // Compact manifest (short digests, resolved against the receiver's blobs) + blobs.
    let compact = encode_compact_manifest(&v2.manifest);
    let received = decode_compact_manifest(&compact, &Limits::default()).expect("decode");
    let index = BlobIndex::load(&store).expect("index");
    let short = match received
        .resolve(|s, n| index.lookup(s, n))
        .expect("resolve")
    {
        Resolved::Missing(short) => short,
        Resolved::Complete(_) => Vec::new(),
    };
    let short_blobs =
        pack_for_transfer_short(&v2.path, &short, std::io::sink(), &Limits::default())
            .expect("pack");
    let hoist_moved = compact.len() as u64 + short_blobs;
    let mirror_z = w.join("mirror-z");
    sh(&format!(
        "cp -a {} {}",
        mirror.display(),
        mirror_z.display()
    ));
    let rsync = rsync_sent("", &tree, &mirror);
    let rsync_z = rsync_sent("-z", &tree, &mirror_z);
    let pct = |b: u64| format!("{:.2} %", b as f64 * 100.0 / bytes as f64);
    println!(
        "one-file change (`{changed}`, {changed_len} bytes, {} blob(s) missing on the receiver)",
        missing.len()
    );
    println!("{:<44} {:>12} {:>10}", "transfer", "bytes", "of tree");
    println!(
        "{:<44} {:>12} {:>10}",
        "hoist: compact manifest + missing blobs",
        hoist_moved,
        pct(hoist_moved)
    );
    println!(
        "{:<44} {:>12} {:>10}",
        "  of which the compact manifest",
        compact.len(),
        pct(compact.len() as u64)
    );
    println!(
        "{:<44} {:>12} {:>10}",
        "hoist: full manifest + missing blobs",
        full_moved,
        pct(full_moved)
    );
    println!(
        "{:<44} {:>12} {:>10}",
        "full artifact",
        v2.size,
        pct(v2.size)
    );
    println!(
        "{:<44} {:>12} {:>10}",
        "rsync --stats (delta, total bytes sent)",
        rsync,
        pct(rsync)
    );
    println!(
        "{:<44} {:>12} {:>10}",
        "rsync -z --stats (delta + compression)",
        rsync_z,
        pct(rsync_z)
    );
}
