//! Fuzzes the unpacker on real files: inputs starting with the zstd magic go through
//! `unpack`, others through `unpack_tar` (zstd framing would stop most mutations before
//! the tar parser). Invariants: no panic; a refusal leaves nothing at all in the parent
//! directory; an accepted archive leaves exactly the tree its manifest describes.
#![no_main]

use hoist_artifact::{unpack, unpack_tar, verify_tree, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_manifest_bytes: 1 << 20,
        max_entries: 1_000,
        max_total_bytes: 16 << 20,
    };
    // tmpfs when there is one: file creation and syncfs cost next to nothing there.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("tempdir");
    let staging = dir.path().join("staging");
    let result = if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        unpack(data, &staging, &limits)
    } else {
        unpack_tar(data, &staging, &limits)
    };
    match result {
        Ok(m) => {
            verify_tree(&m, &staging, false).expect("an accepted archive unpacks to its manifest")
        }
        Err(_) => {
            let left: Vec<_> = std::fs::read_dir(dir.path()).expect("read_dir").collect();
            assert!(left.is_empty(), "a refused archive left {left:?}");
        }
    }
});
