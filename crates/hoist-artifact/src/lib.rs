//! Release artifacts: build, verify, unpack safely, and the content-addressed store.
//!
//! An artifact is a zstd-compressed tar whose first entry is `hoist-release.json`, the
//! [`Manifest`] (design §5). Everything that reads an artifact goes through one reader in
//! one pass (`read`), which checks each entry against the manifest before handing its
//! bytes on: to nothing ([`verify`]), to a staging directory ([`unpack`]), or to the
//! blob store ([`Store::ingest_artifact`]). Transfers between hosts move only the blobs
//! the receiving store lacks, announced by a compact manifest ([`transfer`]).
//!
//! Code map: `manifest` (types, canonical JSON, release id, path/mode/symlink rules),
//! `read` (the one tar reader and `verify`), `unpack` (`openat2` writes beneath a
//! staging directory), `store` (blobs, manifests, materialise, gc), `transfer` (blob
//! streams), `build` (tree → artifact), `hash`, `error`.
//!
//! This crate prints nothing and knows nothing of the app file, the agent or the CLI.

mod build;
mod error;
mod hash;
mod manifest;
mod read;
mod store;
pub mod transfer;
mod unpack;

pub use build::{
    build, run_build_command, source_date_epoch_from_env, BuildError, BuildOptions, BuildOutput,
    DEFAULT_EXCLUDES,
};
pub use error::{ArtifactError, Refusal};
pub use hash::{hash_reader, Hash};
pub use manifest::{
    check_mode, check_path, BuildInfo, CompactManifest, Entry, EntryKind, Limits, Manifest,
    ReleaseId, Resolved, Summary, FORMAT, MANIFEST_NAME, SHORT_HASH_HEX,
};
pub use read::{read_manifest, verify, verify_reader, verify_tar};
pub use store::{read_only_mode, verify_tree, GcReport, MaterialiseReport, Store};
pub use unpack::{remove_tree, unpack, unpack_tar};
