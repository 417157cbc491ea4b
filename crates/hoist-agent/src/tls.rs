//! Certificates of the web services with `tls`: files on the host are read and checked
//! (readable, PEM, key matching, not expired, covering every domain) at `hoist plan`, at
//! the deploy's preflight and whenever routes are sent; ACME certificates live in
//! `<root>/acme/certs/` (0600) with their last issuance or renewal result. A route
//! is sent with its TLS settings only once the proxy holds a certificate for each of its
//! domains, so a route never goes live on HTTPS (or redirects there) without one.
//!
//! Renewal runs from housekeeping: at two thirds of a certificate's lifetime (plus up to
//! a thirtieth of it as jitter, so many certificates do not renew at once), retried with
//! backoff after a failure; the old certificate serves until the new one is in, and a
//! failure is an event, never an outage.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use hoist_core::spec::{AcmeSpec, AppSpec, HttpSpec, TlsSpec};
use hoist_protocol::agent::{CertAttempt, CertStatus};
use hoist_protocol::proxy::{self as wire, Request, TlsRequest};
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use crate::Agent;

/// What a certificate says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertMeta {
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub issuer: String,
}

/// Reads the leaf of a PEM chain.
pub(crate) fn inspect(cert_pem: &str) -> Result<CertMeta, String> {
    let der = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()
        .ok_or_else(|| "no certificate in it".to_string())?
        .map_err(|e| format!("not PEM: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    let validity = cert.validity();
    Ok(CertMeta {
        names,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        issuer: cert.issuer().to_string(),
    })
}

/// Whether a certificate name covers `domain` (a wildcard covers one label).
fn covers(names: &[String], domain: &str) -> bool {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    names.iter().any(|n| {
        n == &domain
            || n.strip_prefix("*.").is_some_and(|base| {
                domain
                    .split_once('.')
                    .is_some_and(|(first, rest)| !first.is_empty() && rest == base)
            })
    })
}

/// A certificate file that cannot serve, named.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CertError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("`{path}` is not a PEM certificate: {message}")]
    BadCert { path: String, message: String },
    #[error("`{path}` is not a PEM private key: {message}")]
    BadKey { path: String, message: String },
    #[error("the key `{key}` does not belong to the certificate `{cert}`")]
    Mismatch { cert: String, key: String },
    #[error("the certificate `{path}` expired at {when}")]
    Expired { path: String, when: String },
    #[error("the certificate `{path}` does not cover `{domain}` (it names {names})")]
    NotCovered {
        path: String,
        domain: String,
        names: String,
    },
}

/// A checked certificate and key, ready for the proxy.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    pub cert_pem: String,
    pub key_pem: String,
    pub meta: CertMeta,
}

fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| secs.to_string())
}

fn now_secs() -> i64 {
    hoist_state::now_ms() / 1000
}

/// Reads and checks `tls = { cert, key }` for `domains`.
pub(crate) fn load_files(cert: &str, key: &str, domains: &[String]) -> Result<Loaded, CertError> {
    let read = |path: &str| {
        std::fs::read_to_string(path).map_err(|source| CertError::Read {
            path: path.to_string(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let meta = inspect(&cert_pem).map_err(|message| CertError::BadCert {
        path: cert.to_string(),
        message,
    })?;
    let chain: Vec<rustls_pki_types::CertificateDer<'static>> =
        rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| CertError::BadCert {
                path: cert.to_string(),
                message: e.to_string(),
            })?;
    let private =
        rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            CertError::BadKey {
                path: key.to_string(),
                message: e.to_string(),
            }
        })?;
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    match rustls::sign::CertifiedKey::from_der(chain, private, &provider) {
        Ok(_) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(CertError::Mismatch {
                cert: cert.to_string(),
                key: key.to_string(),
            })
        }
        Err(e) => {
            return Err(CertError::BadKey {
                path: key.to_string(),
                message: e.to_string(),
            })
        }
    }
    if meta.not_after <= now_secs() {
        return Err(CertError::Expired {
            path: cert.to_string(),
            when: rfc3339(meta.not_after),
        });
    }
    if let Some(d) = domains.iter().find(|d| !covers(&meta.names, d)) {
        return Err(CertError::NotCovered {
            path: cert.to_string(),
            domain: d.clone(),
            names: if meta.names.is_empty() {
                "no DNS name".into()
            } else {
                meta.names
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        });
    }
    Ok(Loaded {
        cert_pem,
        key_pem,
        meta,
    })
}

/// One issuance or renewal attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Attempt {
    pub at_ms: i64,
    pub ok: bool,
    pub message: String,
}

/// An ACME certificate as the agent keeps it (0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub domains: Vec<String>,
    pub directory: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub not_before: i64,
    pub not_after: i64,
    /// When to renew (unix seconds): two thirds of the lifetime plus jitter.
    pub renew_at: i64,
    #[serde(default)]
    pub last: Option<Attempt>,
    /// After a failure: not before this (unix seconds).
    #[serde(default)]
    pub retry_at: Option<i64>,
    #[serde(default)]
    pub failures: u32,
}

/// The renewal time of a certificate valid from `not_before` to `not_after`.
pub(crate) fn renew_at(not_before: i64, not_after: i64) -> i64 {
    let life = (not_after - not_before).max(1);
    let mut r = [0u8; 8];
    let _ = getrandom::fill(&mut r);
    let jitter = (u64::from_le_bytes(r) % (life as u64 / 30 + 1)) as i64;
    not_before + life * 2 / 3 + jitter
}

/// The wait after `failures` failed attempts: 1 min doubling to 6 h, but never past a
/// tenth of the time left (a short-lived certificate is retried sooner), at least 5 s.
pub(crate) fn retry_delay(failures: u32, left: i64) -> i64 {
    let backoff = 60i64
        .saturating_mul(1 << failures.min(12).saturating_sub(1))
        .min(6 * 3600);
    backoff.min(left / 10).max(5)
}

/// When a failed renewal is tried again (unix seconds): the usual backoff, and never
/// before the CA's `Retry-After` (`ca_retry_at`) when it gave one. A `rateLimited`
/// answer without one waits at least an hour, bounded by a quarter of the time left.
pub(crate) fn next_try(
    now: i64,
    failures: u32,
    left: i64,
    ca_retry_at: Option<i64>,
    rate_limited: bool,
) -> i64 {
    let mut at = now + retry_delay(failures, left);
    match ca_retry_at {
        Some(t) => at = at.max(t),
        None if rate_limited => at = at.max(now + (left / 4).min(3600)),
        None => {}
    }
    at
}

fn unix_secs(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64 + i64::from(d.subsec_nanos() > 0))
}

/// What the agent remembers of the TLS side.
#[derive(Debug, Default)]
pub(crate) struct Keeper {
    /// Domain → the certificate PEM last handed to the proxy.
    sent: Mutex<HashMap<String, String>>,
    /// Issuance and renewal run one at a time (one ACME account, one proxy).
    pub busy: tokio::sync::Mutex<()>,
    /// The domain lists whose issuance or renewal is running or waiting for `busy`.
    renewing: Mutex<std::collections::HashSet<Vec<String>>>,
    /// When certificate files were last read again (see `refresh_file_certs`).
    files_checked: Mutex<Option<std::time::Instant>>,
    /// What ACME CAs said about their rate limits (see `acme.rs`).
    pub rate_limits: std::sync::Arc<crate::acme::RateLimits>,
    /// App → the HTTP-01 peers last handed to the proxy (see `Agent::send_acme_peers`).
    pub acme_peers_sent: Mutex<HashMap<String, Vec<String>>>,
}

/// How often certificate files are read again, so a file replaced on the host (by
/// certbot, by hand) is served without a deploy.
const FILE_RECHECK: std::time::Duration = std::time::Duration::from_secs(15);

/// Marks an issuance or renewal of some domains as going on, until dropped.
struct Renewing<'a> {
    keeper: &'a Keeper,
    domains: Vec<String>,
}

impl<'a> Renewing<'a> {
    fn mark(keeper: &'a Keeper, domains: &[String]) -> Renewing<'a> {
        keeper
            .renewing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(domains.to_vec());
        Renewing {
            keeper,
            domains: domains.to_vec(),
        }
    }
}

impl Drop for Renewing<'_> {
    fn drop(&mut self) {
        self.keeper
            .renewing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.domains);
    }
}

impl Keeper {
    pub fn forget_sent(&self) {
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.acme_peers_sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl Agent {
    pub(crate) fn acme_dir(&self) -> PathBuf {
        self.paths.root.join("acme")
    }

    /// `<first domain>-<hash of all>.json`: readable in a listing, and two services
    /// whose domain lists share a first name never share a file.
    fn stored_path(&self, domains: &[String]) -> PathBuf {
        use sha2::Digest;
        let name = domains.first().map_or("none", |d| d.as_str());
        let hash = hex::encode(&sha2::Sha256::digest(domains.join(",").as_bytes())[..4]);
        self.acme_dir()
            .join("certs")
            .join(format!("{name}-{hash}.json"))
    }

    /// The ACME certificate kept for exactly `domains`, if any.
    pub(crate) fn acme_stored(&self, domains: &[String]) -> Option<Stored> {
        let data = std::fs::read(self.stored_path(domains)).ok()?;
        let stored: Stored = serde_json::from_slice(&data).ok()?;
        (stored.domains == domains).then_some(stored)
    }

    pub(crate) fn save_stored(&self, stored: &Stored) -> std::io::Result<()> {
        let path = self.stored_path(&stored.domains);
        mkdir_private(path.parent().expect("has a parent"))?;
        let data = serde_json::to_vec_pretty(stored).map_err(std::io::Error::other)?;
        crate::paths::write_atomic(&path, &data, 0o600)
    }

    /// The certificate a service would serve now: its files (checked), or its ACME
    /// certificate when one is kept. `Ok(None)`: ACME, not issued yet.
    pub(crate) fn current_cert(&self, http: &HttpSpec) -> Result<Option<wire::Cert>, String> {
        match &http.tls {
            None => Ok(None),
            Some(TlsSpec::File { cert, key }) => {
                let loaded = load_files(cert, key, &http.domains).map_err(|e| e.to_string())?;
                Ok(Some(wire::Cert {
                    domains: http.domains.clone(),
                    cert_pem: loaded.cert_pem,
                    key_pem: loaded.key_pem,
                    source: "file".into(),
                }))
            }
            Some(TlsSpec::Acme) => Ok(self.acme_stored(&http.domains).map(|s| wire::Cert {
                domains: s.domains,
                cert_pem: s.cert_pem,
                key_pem: s.key_pem,
                source: "acme".into(),
            })),
        }
    }

    /// Hands `cert` to the proxy unless it already has it.
    pub(crate) async fn send_cert(&self, cert: wire::Cert) -> Result<(), String> {
        let Some(proxy) = &self.proxy else {
            return Err("this agent runs no proxy".into());
        };
        let fresh = {
            let sent = self.tls.sent.lock().unwrap_or_else(|e| e.into_inner());
            cert.domains
                .iter()
                .any(|d| sent.get(d) != Some(&cert.cert_pem))
        };
        if !fresh {
            return Ok(());
        }
        proxy
            .request(Request::Tls {
                request: TlsRequest::SetCert { cert: cert.clone() },
            })
            .await
            .map_err(|e| format!("the proxy did not take the certificate: {e}"))?;
        let mut sent = self.tls.sent.lock().unwrap_or_else(|e| e.into_inner());
        for d in &cert.domains {
            sent.insert(d.clone(), cert.cert_pem.clone());
        }
        Ok(())
    }

    /// The TLS settings of each web service of `spec` whose certificate the proxy now
    /// holds (sending it first when needed); services without one are left out.
    pub(crate) async fn route_tls(&self, spec: &AppSpec) -> HashMap<String, wire::RouteTls> {
        let mut out = HashMap::new();
        self.share_acme_peers(spec).await;
        if self.config.https.is_none() {
            return out;
        }
        for (name, svc) in &spec.services {
            let Some(http) = svc.http.as_ref().filter(|h| h.tls.is_some()) else {
                continue;
            };
            let cert = match self.current_cert(http) {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) => {
                    // The proxy keeps the certificate it has (if any): a file that went
                    // bad after the deploy does not take the route off HTTPS.
                    tracing::warn!(app = %spec.app, service = %name, error = %e, "certificate not usable; the proxy keeps what it has");
                    let sent = self.tls.sent.lock().unwrap_or_else(|e| e.into_inner());
                    if !http.domains.iter().all(|d| sent.contains_key(d)) {
                        continue;
                    }
                    out.insert(name.clone(), route_settings(http));
                    continue;
                }
            };
            match self.send_cert(cert).await {
                Ok(()) => {
                    out.insert(name.clone(), route_settings(http));
                }
                Err(e) => {
                    tracing::warn!(app = %spec.app, service = %name, error = %e, "certificate not sent")
                }
            }
        }
        out
    }

    /// What `hoist certs` shows for the apps this host runs.
    pub(crate) fn cert_statuses(&self) -> Vec<CertStatus> {
        let specs: Vec<std::sync::Arc<AppSpec>> =
            self.rt().specs.values().map(|(_, s)| s.clone()).collect();
        let sent = self
            .tls
            .sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut out = Vec::new();
        for spec in specs {
            for (name, svc) in &spec.services {
                let Some(http) = svc.http.as_ref() else {
                    continue;
                };
                let Some(tls) = &http.tls else { continue };
                let (source, meta, last, problem) = match tls {
                    TlsSpec::File { cert, key } => match load_files(cert, key, &http.domains) {
                        Ok(l) => (format!("file `{cert}`"), Some(l.meta), None, None),
                        Err(e) => {
                            let meta = std::fs::read_to_string(cert)
                                .ok()
                                .and_then(|p| inspect(&p).ok());
                            (format!("file `{cert}`"), meta, None, Some(e.to_string()))
                        }
                    },
                    TlsSpec::Acme => match self.acme_stored(&http.domains) {
                        Some(s) => {
                            let meta = inspect(&s.cert_pem).ok();
                            let problem = s
                                .last
                                .as_ref()
                                .filter(|a| !a.ok)
                                .map(|a| format!("the last renewal failed: {}", a.message));
                            ("acme".to_string(), meta, s.last.clone(), problem)
                        }
                        None => (
                            "acme".to_string(),
                            None,
                            None,
                            Some("not issued yet".to_string()),
                        ),
                    },
                };
                let renewing = matches!(tls, TlsSpec::Acme)
                    && self
                        .tls
                        .renewing
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains(&http.domains);
                for d in &http.domains {
                    out.push(CertStatus {
                        domain: d.clone(),
                        app: spec.app.clone(),
                        service: name.clone(),
                        source: source.clone(),
                        issuer: meta.as_ref().map(|m| m.issuer.clone()),
                        not_before: meta.as_ref().map(|m| rfc3339(m.not_before)),
                        not_after: meta.as_ref().map(|m| rfc3339(m.not_after)),
                        serving: sent.contains_key(d),
                        renewing,
                        last: last.as_ref().map(|a| CertAttempt {
                            at: rfc3339(a.at_ms / 1000),
                            ok: a.ok,
                            message: a.message.clone(),
                        }),
                        problem: problem.clone(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.domain.cmp(&b.domain));
        out
    }

    /// Issues the ACME certificates `spec` needs and does not have (the deploy's
    /// preflight: before the route goes live on HTTPS).
    pub(crate) async fn ensure_acme(&self, spec: &AppSpec) -> Result<Vec<String>, String> {
        // Before the order: a CA reaching another host of these names is relayed back.
        self.share_acme_peers(spec).await;
        let mut issued = Vec::new();
        for svc in spec.services.values() {
            let Some(http) = svc.http.as_ref() else {
                continue;
            };
            if http.tls != Some(TlsSpec::Acme) || self.acme_stored(&http.domains).is_some() {
                continue;
            }
            self.issue(&spec.acme, &http.domains, None).await?;
            issued.push(http.domains.join(", "));
        }
        Ok(issued)
    }

    /// Issues (or renews) the certificate of `domains` and hands it to the proxy;
    /// records the attempt either way. The old certificate serves until then.
    pub(crate) async fn issue(
        &self,
        acme: &AcmeSpec,
        domains: &[String],
        old: Option<Stored>,
    ) -> Result<(), String> {
        let _renewing = Renewing::mark(&self.tls, domains);
        let _busy = self.tls.busy.lock().await;
        let result = crate::acme::issue(self, acme, domains).await;
        let (result, ca_retry_at) = match result {
            Ok(done) => (Ok(done), None),
            Err(f) => (Err(f.message), f.retry_after.map(unix_secs)),
        };
        let now_ms = hoist_state::now_ms();
        match result {
            Ok((cert_pem, key_pem)) => {
                let meta = inspect(&cert_pem)?;
                let stored = Stored {
                    domains: domains.to_vec(),
                    directory: acme.directory.clone(),
                    cert_pem: cert_pem.clone(),
                    key_pem: key_pem.clone(),
                    not_before: meta.not_before,
                    not_after: meta.not_after,
                    renew_at: renew_at(meta.not_before, meta.not_after),
                    last: Some(Attempt {
                        at_ms: now_ms,
                        ok: true,
                        message: format!(
                            "{} until {}",
                            if old.is_some() { "renewed" } else { "issued" },
                            rfc3339(meta.not_after)
                        ),
                    }),
                    retry_at: None,
                    failures: 0,
                };
                self.save_stored(&stored)
                    .map_err(|e| format!("cannot keep the certificate: {e}"))?;
                self.send_cert(wire::Cert {
                    domains: domains.to_vec(),
                    cert_pem,
                    key_pem,
                    source: "acme".into(),
                })
                .await?;
                self.event(
                    None,
                    if old.is_some() {
                        "cert.renewed"
                    } else {
                        "cert.issued"
                    },
                    domains.first().map(|d| d.as_str()),
                    &format!(
                        "certificate for {} valid until {}",
                        domains.join(", "),
                        rfc3339(meta.not_after)
                    ),
                );
                Ok(())
            }
            Err(e) => {
                if let Some(mut stored) = old {
                    stored.failures += 1;
                    let left = stored.not_after - now_secs();
                    stored.retry_at = Some(next_try(
                        now_secs(),
                        stored.failures,
                        left,
                        ca_retry_at,
                        e.contains("rateLimited"),
                    ));
                    stored.last = Some(Attempt {
                        at_ms: now_ms,
                        ok: false,
                        message: e.clone(),
                    });
                    if let Err(err) = self.save_stored(&stored) {
                        tracing::warn!(error = %err, "cannot record the renewal failure");
                    }
                    self.event(
                        None,
                        "cert.renew_failed",
                        domains.first().map(|d| d.as_str()),
                        &format!(
                            "renewal of {} failed (the current certificate serves until {}; next try in {} s): {e}",
                            domains.join(", "),
                            rfc3339(stored.not_after),
                            stored.retry_at.unwrap_or(0) - now_secs()
                        ),
                    );
                } else {
                    self.event(
                        None,
                        "cert.issue_failed",
                        domains.first().map(|d| d.as_str()),
                        &format!("issuance for {} failed: {e}", domains.join(", ")),
                    );
                }
                Err(e)
            }
        }
    }

    /// Reads certificate files again every [`FILE_RECHECK`] (from housekeeping): a
    /// changed and valid file is handed to the proxy, which serves it from the next
    /// handshake on; a file that went bad is logged and the proxy keeps what it has.
    pub(crate) async fn refresh_file_certs(&self) {
        {
            let mut last = self
                .tls
                .files_checked
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let now = std::time::Instant::now();
            if last.is_some_and(|t| now.duration_since(t) < FILE_RECHECK) {
                return;
            }
            *last = Some(now);
        }
        let apps: Vec<String> = self
            .rt()
            .specs
            .iter()
            .filter(|(_, (_, spec))| {
                spec.services.values().any(|s| {
                    s.http
                        .as_ref()
                        .is_some_and(|h| matches!(h.tls, Some(TlsSpec::File { .. })))
                })
            })
            .map(|(app, _)| app.clone())
            .collect();
        for app in apps {
            self.sync_routes(&app).await;
        }
    }

    /// Renews the ACME certificates that are due (called from housekeeping); each
    /// renewal runs in its own task so housekeeping never waits on a CA.
    pub(crate) fn renew_due(self: &std::sync::Arc<Self>) {
        if self.tls.busy.try_lock().is_err() {
            return;
        }
        let specs: Vec<std::sync::Arc<AppSpec>> =
            self.rt().specs.values().map(|(_, s)| s.clone()).collect();
        let now = now_secs();
        for spec in specs {
            for svc in spec.services.values() {
                let Some(http) = svc.http.as_ref() else {
                    continue;
                };
                if http.tls != Some(TlsSpec::Acme) {
                    continue;
                }
                let Some(stored) = self.acme_stored(&http.domains) else {
                    continue;
                };
                let due = now >= stored.renew_at && stored.retry_at.is_none_or(|t| now >= t);
                if !due {
                    continue;
                }
                let agent = self.clone();
                let acme = spec.acme.clone();
                let domains = http.domains.clone();
                tokio::spawn(async move {
                    tracing::info!(domains = ?domains, "renewing certificate");
                    if let Err(e) = agent.issue(&acme, &domains, Some(stored)).await {
                        tracing::warn!(domains = ?domains, error = %e, "renewal failed; the current certificate keeps serving");
                    }
                });
                // One at a time: the next is picked up on a later pass.
                return;
            }
        }
    }
}

fn route_settings(http: &HttpSpec) -> wire::RouteTls {
    wire::RouteTls {
        redirect_https: http.redirect_https,
        hsts_secs: http.hsts.map(|d| d.as_secs()),
    }
}

pub(crate) fn mkdir_private(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

impl Agent {
    /// What `hoist plan` says of each service with `tls`: (ok, detail).
    pub(crate) fn plan_tls(&self, spec: &AppSpec) -> Vec<(bool, String)> {
        let mut out = Vec::new();
        for (name, svc) in &spec.services {
            let Some(http) = svc.http.as_ref() else {
                continue;
            };
            let Some(tls) = &http.tls else { continue };
            if self.config.https.is_none() {
                out.push((false, format!(
                    "service `{name}` has `tls`, but this agent has no HTTPS listener (start it with `--https ADDR`, or `https = \"0.0.0.0:443\"` in the host config)"
                )));
                continue;
            }
            let domains = http.domains.join(", ");
            out.push(match tls {
                TlsSpec::File { cert, key } => match load_files(cert, key, &http.domains) {
                    Ok(l) => (
                        true,
                        format!(
                            "service `{name}`: certificate `{cert}` for {domains}, valid until {}",
                            rfc3339(l.meta.not_after)
                        ),
                    ),
                    Err(e) => (false, format!("service `{name}`: {e}")),
                },
                TlsSpec::Acme => match self.acme_stored(&http.domains) {
                    Some(s) => (
                        true,
                        format!(
                            "service `{name}`: ACME certificate for {domains} held, valid until {}",
                            rfc3339(s.not_after)
                        ),
                    ),
                    None => (
                        true,
                        format!(
                            "service `{name}`: a certificate for {domains} will be requested from `{}` before the route serves HTTPS",
                            spec.acme.directory
                        ),
                    ),
                },
            });
        }
        out
    }

    /// The deploy's preflight for TLS: certificate files are checked and ACME
    /// certificates that are missing are issued, all before anything starts; returns
    /// what to tell the operator.
    pub(crate) async fn preflight_tls(&self, spec: &AppSpec) -> Result<Vec<String>, String> {
        let mut notes = Vec::new();
        for (ok, detail) in self.plan_tls(spec) {
            if !ok {
                return Err(detail);
            }
            notes.push(detail);
        }
        for issued in self.ensure_acme(spec).await? {
            notes.push(format!("certificate issued for {issued}"));
        }
        Ok(notes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_exact_and_one_label_wildcards() {
        let names = vec!["a.example.com".to_string(), "*.b.example.com".to_string()];
        assert!(covers(&names, "A.example.com."));
        assert!(covers(&names, "x.b.example.com"));
        assert!(!covers(&names, "b.example.com"));
        assert!(!covers(&names, "y.x.b.example.com"));
        assert!(!covers(&names, "c.example.com"));
    }

    #[test]
    fn renewal_is_at_two_thirds_plus_bounded_jitter_and_retries_back_off() {
        for _ in 0..100 {
            let r = renew_at(0, 90 * 86400);
            assert!((60 * 86400..=63 * 86400).contains(&r), "{r}");
        }
        assert_eq!(retry_delay(1, 1_000_000), 60);
        assert_eq!(retry_delay(2, 1_000_000), 120);
        assert_eq!(retry_delay(30, 100_000_000), 6 * 3600);
        assert_eq!(retry_delay(3, 100), 10, "a tenth of what is left");
        assert_eq!(retry_delay(3, 0), 5);
    }

    #[test]
    fn a_failed_renewal_waits_for_the_cas_retry_after() {
        let now = 1_000_000;
        let day = 86_400;
        // Backoff alone: one minute after the first failure.
        assert_eq!(next_try(now, 1, 30 * day, None, false), now + 60);
        // The CA said two hours: not before then.
        assert_eq!(
            next_try(now, 1, 30 * day, Some(now + 7_200), true),
            now + 7_200
        );
        // A Retry-After sooner than the backoff does not shorten it.
        assert_eq!(next_try(now, 3, 30 * day, Some(now + 10), true), now + 240);
        // rateLimited without Retry-After: an hour, or a quarter of what is left.
        assert_eq!(next_try(now, 1, 30 * day, None, true), now + 3_600);
        assert_eq!(next_try(now, 1, 4_000, None, true), now + 1_000);
    }
}
