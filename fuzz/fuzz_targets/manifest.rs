//! Fuzzes the manifest parsers: any input is parsed or refused without panicking;
//! whatever is accepted re-serialises to a manifest that parses back identical, and its
//! compact form resolves back to it.
#![no_main]

use hoist_artifact::{CompactManifest, Hash, Limits, Manifest, Resolved};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_manifest_bytes: 1 << 20,
        max_entries: 10_000,
        max_total_bytes: 1 << 40,
    };
    if let Ok(m) = Manifest::parse(data, &limits) {
        let again = Manifest::parse(&m.to_json(), &limits).expect("a parsed manifest re-parses");
        assert_eq!(again, m);
        let compact =
            CompactManifest::parse(&m.to_compact_json(), &limits).expect("compact form parses");
        let full: Vec<Hash> = m.blobs();
        let lookup =
            |short: &str, _: u64| full.iter().copied().find(|h| h.to_hex().starts_with(short));
        match compact.resolve(lookup) {
            Ok(Resolved::Complete(back)) => assert_eq!(back, m),
            other => panic!("compact form did not resolve: {other:?}"),
        }
    }
    // Arbitrary input as a compact manifest, resolved with made-up digests.
    if let Ok(c) = CompactManifest::parse(data, &limits) {
        let _ = c.resolve(|short, size| {
            let mut hex = short.to_string();
            hex.push_str(&format!("{size:0>52x}")[..64 - short.len().min(64)]);
            Hash::parse(&hex)
        });
    }
});
