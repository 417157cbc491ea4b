//! Transfers by content between two stores on disk: a one-file change moves that file's
//! bytes and the manifest; streams are checked blob by blob on arrival.

mod common;

use std::fs;

use common::*;
use hoist_artifact::transfer::{
    decode_compact_manifest, decode_manifest, encode_compact_manifest, encode_manifest,
    missing_blobs, pack_for_transfer, pack_for_transfer_short, read_blob_stream, write_blob_stream,
    BlobIndex,
};
use hoist_artifact::{build, ArtifactError, Hash, Limits, Resolved, Store};

/// Incompressible bytes, so that byte counts cannot hide behind compression.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = Hash::of(&seed.to_le_bytes());
    while out.len() < len {
        out.extend_from_slice(block.as_bytes());
        block = Hash::of(block.as_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn a_one_file_change_moves_that_file_and_the_manifest() {
    let t = hoist_testkit::tempdir();
    let src = t.path().join("src");
    for i in 0..40 {
        write(&src, &format!("lib/m{i:02}.bin"), &noise(i, 50_000), 0o644);
    }
    let remote = Store::open(&t.path().join("remote")).unwrap();
    let v1 = build(&options(&src), &t.path().join("v1.tar.zst")).unwrap();
    remote
        .ingest_artifact(fs::File::open(&v1.path).unwrap(), &Limits::default())
        .unwrap();

    let changed = noise(1000, 50_000);
    write(&src, "lib/m07.bin", &changed, 0o644);
    let v2 = build(&options(&src), &t.path().join("v2.tar.zst")).unwrap();

    // Sender → receiver: the manifest. Receiver → sender: what it lacks.
    let manifest_bytes = encode_manifest(&v2.manifest);
    let received = decode_manifest(&manifest_bytes, &Limits::default()).unwrap();
    assert_eq!(received, v2.manifest);
    let missing = missing_blobs(&received, &remote);
    assert_eq!(missing, vec![Hash::of(&changed)]);
    // Sender → receiver: just those blobs.
    let mut stream = Vec::new();
    let written = pack_for_transfer(&v2.path, &missing, &mut stream, &Limits::default()).unwrap();
    assert_eq!(written, stream.len() as u64);
    assert_eq!(
        read_blob_stream(&stream[..], &remote, &Limits::default()).unwrap(),
        missing
    );
    remote.put_manifest(&received).unwrap();
    assert!(remote.missing(&received).is_empty());
    let dest = t.path().join("rel");
    remote.materialise(&received, &dest).unwrap();
    remote.verify_tree(&received, &dest).unwrap();

    let moved = manifest_bytes.len() as u64 + written;
    let overhead = moved - changed.len() as u64 - manifest_bytes.len() as u64;
    assert!(
        written >= changed.len() as u64,
        "random bytes cannot shrink: {written}"
    );
    assert!(overhead < 256, "framing overhead {overhead} bytes");
    assert!(
        moved * 10 < v2.size,
        "moved {moved} of a {} byte artifact",
        v2.size
    );
}

#[test]
fn a_store_to_store_stream_round_trips() {
    let t = hoist_testkit::tempdir();
    let src = t.path().join("src");
    sample_tree(&src);
    let a = Store::open(&t.path().join("a")).unwrap();
    let b = Store::open(&t.path().join("b")).unwrap();
    let built = build(&options(&src), &t.path().join("x.tar.zst")).unwrap();
    let m = a
        .ingest_artifact(fs::File::open(&built.path).unwrap(), &Limits::default())
        .unwrap();
    let wanted = missing_blobs(&m, &b);
    assert_eq!(wanted.len(), 4);
    let mut stream = Vec::new();
    write_blob_stream(&a, &wanted, &mut stream).unwrap();
    read_blob_stream(&stream[..], &b, &Limits::default()).unwrap();
    assert!(missing_blobs(&m, &b).is_empty());
    assert!(b.check_blobs().unwrap().is_empty());
}

/// A stream of one blob whose bytes were altered in flight.
fn tampered_stream(store: &Store, hash: &Hash) -> Vec<u8> {
    let mut stream = Vec::new();
    write_blob_stream(store, &[*hash], &mut stream).unwrap();
    let mut raw = zstd::decode_all(&stream[..]).unwrap();
    let n = raw.len();
    raw[n - 2] ^= 0xff; // last byte of the blob, before the `E` tag
    zstd::encode_all(&raw[..], 3).unwrap()
}

#[test]
fn a_corrupted_or_truncated_stream_stores_nothing() {
    let t = hoist_testkit::tempdir();
    let a = Store::open(&t.path().join("a")).unwrap();
    let b = Store::open(&t.path().join("b")).unwrap();
    let content = noise(7, 10_000);
    let hash = Hash::of(&content);
    a.put_blob(&content[..], &hash).unwrap();

    let err =
        read_blob_stream(&tampered_stream(&a, &hash)[..], &b, &Limits::default()).unwrap_err();
    assert!(
        matches!(err, ArtifactError::BlobMismatch { expected, .. } if expected == hash),
        "{err}"
    );
    assert!(!b.has(&hash));

    let mut stream = Vec::new();
    write_blob_stream(&a, &[hash], &mut stream).unwrap();
    let cut = &stream[..stream.len() / 2];
    assert!(read_blob_stream(cut, &b, &Limits::default()).is_err());
    assert!(!b.has(&hash));

    let limits = Limits {
        max_total_bytes: 1000,
        ..Limits::default()
    };
    assert!(matches!(
        read_blob_stream(&stream[..], &b, &limits),
        Err(ArtifactError::Limit { .. })
    ));
    assert!(!b.has(&hash));
    assert_eq!(fs::read_dir(b.root().join("tmp")).unwrap().count(), 0);
}

#[test]
fn pack_for_transfer_refuses_blobs_the_artifact_does_not_hold() {
    let t = hoist_testkit::tempdir();
    let src = t.path().join("src");
    sample_tree(&src);
    let built = build(&options(&src), &t.path().join("x.tar.zst")).unwrap();
    let stranger = Hash::of(b"not in this release");
    let err =
        pack_for_transfer(&built.path, &[stranger], Vec::new(), &Limits::default()).unwrap_err();
    assert!(matches!(err, ArtifactError::MissingBlob { hash } if hash == stranger));
}

#[test]
fn a_manifest_that_inflates_past_the_limit_is_refused() {
    let entries: Vec<_> = (0..2000)
        .map(|i| dir_entry(&format!("directory-with-a-long-name-{i:05}")))
        .collect();
    let m = manifest(entries);
    let encoded = encode_manifest(&m);
    assert_eq!(decode_manifest(&encoded, &Limits::default()).unwrap(), m);
    let limits = Limits {
        max_manifest_bytes: 10_000,
        ..Limits::default()
    };
    assert!(matches!(
        decode_manifest(&encoded, &limits),
        Err(ArtifactError::Limit { .. })
    ));
}

#[test]
fn a_compact_manifest_resolves_against_the_receivers_blobs() {
    let t = hoist_testkit::tempdir();
    let src = t.path().join("src");
    for i in 0..200 {
        write(
            &src,
            &format!("lib/m{i:03}.txt"),
            format!("module {i}\n").as_bytes(),
            0o644,
        );
    }
    let remote = Store::open(&t.path().join("remote")).unwrap();
    let v1 = build(&options(&src), &t.path().join("v1.tar.zst")).unwrap();
    remote
        .ingest_artifact(fs::File::open(&v1.path).unwrap(), &Limits::default())
        .unwrap();
    let changed = noise(9, 5_000);
    write(&src, "lib/m042.txt", &changed, 0o644);
    let v2 = build(&options(&src), &t.path().join("v2.tar.zst")).unwrap();

    let compact = encode_compact_manifest(&v2.manifest);
    let full = encode_manifest(&v2.manifest);
    assert!(
        compact.len() * 2 < full.len(),
        "compact {} vs full {}",
        compact.len(),
        full.len()
    );

    let received = decode_compact_manifest(&compact, &Limits::default()).unwrap();
    assert_eq!(received.release(), v2.manifest.release().as_str());
    let mut index = BlobIndex::load(&remote).unwrap();
    let Resolved::Missing(short) = received.resolve(|s, n| index.lookup(s, n)).unwrap() else {
        panic!("the changed file cannot resolve");
    };
    assert_eq!(short, vec![Hash::of(&changed).to_hex()[..12].to_string()]);
    let mut stream = Vec::new();
    pack_for_transfer_short(&v2.path, &short, &mut stream, &Limits::default()).unwrap();
    for h in read_blob_stream(&stream[..], &remote, &Limits::default()).unwrap() {
        index.insert(h, fs::metadata(remote.blob_path(&h)).unwrap().len());
    }
    let Resolved::Complete(m) = received.resolve(|s, n| index.lookup(s, n)).unwrap() else {
        panic!("everything is here now");
    };
    assert_eq!(m, v2.manifest);
    assert!(remote.missing(&m).is_empty());
    assert!(stream.len() < changed.len() + 200);
}

#[test]
fn a_wrong_guess_in_a_compact_manifest_is_caught_by_the_release_id() {
    let t = hoist_testkit::tempdir();
    let src = t.path().join("src");
    write(&src, "a", b"alpha", 0o644);
    let v = build(&options(&src), &t.path().join("v.tar.zst")).unwrap();
    let received =
        decode_compact_manifest(&encode_compact_manifest(&v.manifest), &Limits::default()).unwrap();
    // A lookup that answers with a blob of the same prefix that is not the real one
    // (forged: a real store would need a 48-bit prefix collision).
    let real = Hash::of(b"alpha");
    let mut forged = *real.as_bytes();
    forged[31] ^= 1;
    let err = received
        .resolve(|_, _| Some(Hash::from_bytes(forged)))
        .unwrap_err();
    assert!(
        err.to_string().contains("does not match its content"),
        "{err}"
    );
    let Resolved::Complete(m) = received.resolve(|_, _| Some(real)).unwrap() else {
        panic!()
    };
    assert_eq!(m, v.manifest);
}
