//! Wire types for driving a host as part of a fleet: deploy leases and the transfer of
//! a release by content (offer a manifest, send the missing blobs).

use serde::{Deserialize, Serialize};

/// `POST /v1/leases/{app}`: take (or renew) the app's deploy lease for `ttl_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// Who holds it: `user@machine (pid N)`, shown to anyone refused.
    pub holder: String,
    /// A random token only the holder knows; deploys under the lease carry it.
    pub token: String,
    pub ttl_ms: i64,
    /// The addresses of the app's other hosts serving ACME names (`AppSpec::
    /// acme_peer_hosts`): the agent hands them to its proxy at once, before any host of
    /// the rollout orders a certificate, so a CA reaching this host first still
    /// validates the others' orders.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acme_peers: Vec<String>,
}

/// `POST /v1/leases/{app}/renew`: the holder's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRequest {
    pub token: String,
    pub ttl_ms: i64,
}

/// A lease as shown (the token is never shown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub app: String,
    pub holder: String,
    pub started_at_ms: i64,
    pub heartbeat_at_ms: i64,
    pub expires_at_ms: i64,
    /// False once expired: it no longer stops anyone.
    pub live: bool,
}

/// `POST /v1/releases/offer?kind=compact|full` (body: an encoded manifest): whether the
/// host can assemble the release from its store, and which blobs it lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub app: String,
    pub release: String,
    /// True when the release is now stored on the host.
    pub complete: bool,
    /// Digests of the blobs it lacks: 12-hex prefixes for a compact offer, full
    /// digests for a full one.
    pub missing: Vec<String>,
    /// The compact manifest could not be resolved unambiguously: offer the full one.
    #[serde(default)]
    pub need_full: bool,
}

/// `POST /v1/releases/blobs` (body: a blob stream): what was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobsStored {
    pub blobs: usize,
    pub bytes: u64,
}
