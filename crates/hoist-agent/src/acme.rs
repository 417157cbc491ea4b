//! ACME (RFC 8555) issuance through `instant-acme`: the account key is kept 0600 under
//! `<root>/acme/` (one account per directory URL), HTTP-01 is answered by the proxy's
//! plain listener and TLS-ALPN-01 (RFC 8737) by its HTTPS listener, both set and
//! removed over the proxy's control socket.
//!
//! An order tries HTTP-01 first (when the proxy has a plain listener) and, if that
//! authorization fails, a fresh order with TLS-ALPN-01 (when it has an HTTPS one).
//! `badNonce` answers are retried by `instant-acme` with the fresh nonce of the rejection
//! (RFC 8555 §6.5); a request whose three tries all got one is sent again here
//! (`nonce_retry!`), and a whole order that fails anyway is retried a few times.

use std::time::{Duration, SystemTime};

use hoist_core::spec::{AcmeSpec, AppSpec};
use hoist_protocol::proxy::{Cert, Request, TlsRequest};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use sha2::Digest;

use crate::Agent;

/// Whole orders attempted per challenge type before giving up (badNonce, a CA hiccup).
const ORDER_ATTEMPTS: u32 = 5;
/// Times one ACME request is sent again after `instant-acme`'s own three tries all got
/// `badNonce` (each try carries the fresh nonce of the rejection, RFC 8555 §6.5).
const NONCE_RETRIES: u32 = 8;
const BAD_NONCE: &str = "urn:ietf:params:acme:error:badNonce";

fn is_bad_nonce(e: &instant_acme::Error) -> bool {
    matches!(e, instant_acme::Error::Api(p) if p.r#type.as_deref() == Some(BAD_NONCE))
}

/// Evaluates an ACME request future again while it fails with `badNonce`.
macro_rules! nonce_retry {
    ($request:expr) => {{
        let mut tries = 0;
        loop {
            match $request.await {
                Err(e) if is_bad_nonce(&e) && tries < NONCE_RETRIES => tries += 1,
                other => break other,
            }
        }
    }};
}

/// The longest wait for a CA's `Retry-After` taken in line (the request is then sent);
/// a longer one fails the request at once and the renewal is tried again after it.
const MAX_INLINE_WAIT: Duration = Duration::from_secs(10);
/// The wait assumed when a CA answers 429 or 503 (or `rateLimited`) without saying how long.
const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
const RATE_LIMITED: &str = "urn:ietf:params:acme:error:rateLimited";

/// What CAs said about their rate limits: no request goes to a directory before its
/// time (shared by every issuance and renewal of this agent).
#[derive(Debug, Default)]
pub(crate) struct RateLimits(std::sync::Mutex<std::collections::HashMap<String, SystemTime>>);

impl RateLimits {
    fn until(&self, directory: &str) -> Option<SystemTime> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(directory)
            .copied()
            .filter(|t| *t > SystemTime::now())
    }

    fn note(&self, directory: &str, until: SystemTime) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let t = map.entry(directory.to_string()).or_insert(until);
        *t = (*t).max(until);
    }
}

/// A request not sent because the CA asked to wait (a rate limit).
#[derive(Debug, thiserror::Error)]
#[error("the CA is rate limiting this account (`{RATE_LIMITED}`); not asking again for {} s", secs_until(*until))]
pub(crate) struct RateLimited {
    pub until: SystemTime,
}

fn secs_until(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::now())
        .map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// `Retry-After` (RFC 9110 §10.2.3): delay-seconds or an HTTP-date.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<SystemTime> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(now + Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let at = u64::try_from(at.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(at))
}

/// The directory client: honours the CA's rate-limit answers (429 or 503 with
/// `Retry-After`, `rateLimited`) at every request, waiting a short time in line and
/// failing at once with [`RateLimited`] while a longer one runs, and logs every
/// `badNonce` answer it passes on (`instant-acme` retries those itself).
struct Watched {
    inner: std::sync::Arc<dyn instant_acme::HttpClient>,
    limits: std::sync::Arc<RateLimits>,
    directory: String,
}

impl instant_acme::HttpClient for Watched {
    fn request(
        &self,
        req: hyper::Request<instant_acme::BodyWrapper<bytes::Bytes>>,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<instant_acme::BytesResponse, instant_acme::Error>,
                > + Send,
        >,
    > {
        let inner = self.inner.clone();
        let limits = self.limits.clone();
        let directory = self.directory.clone();
        Box::pin(async move {
            if let Some(until) = limits.until(&directory) {
                let wait = until.duration_since(SystemTime::now()).unwrap_or_default();
                if wait > MAX_INLINE_WAIT {
                    return Err(instant_acme::Error::Other(Box::new(RateLimited { until })));
                }
                tracing::info!(
                    wait_ms = wait.as_millis() as u64,
                    "the CA asked to wait (Retry-After); waiting before the next request"
                );
                tokio::time::sleep(wait).await;
            }
            let mut rsp = inner.request(req).await?;
            let status = rsp.parts.status;
            if status.is_success() {
                return Ok(rsp);
            }
            let body = rsp
                .body
                .into_bytes()
                .await
                .map_err(instant_acme::Error::Other)?;
            let has = |what: &str| body.windows(what.len()).any(|w| w == what.as_bytes());
            if status == hyper::StatusCode::TOO_MANY_REQUESTS
                || status == hyper::StatusCode::SERVICE_UNAVAILABLE
                || has(RATE_LIMITED)
            {
                let now = SystemTime::now();
                let until = rsp
                    .parts
                    .headers
                    .get(hyper::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, now))
                    .unwrap_or(now + DEFAULT_RATE_LIMIT_WAIT);
                limits.note(&directory, until);
                tracing::warn!(%status, retry_after_s = secs_until(until), "the CA asked to slow down; no request goes to it before then");
            } else if has(BAD_NONCE) {
                tracing::info!("the CA rejected a nonce (badNonce); the request is sent again with a fresh one");
            }
            rsp.body = Box::new(body);
            Ok(rsp)
        })
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// An HTTP client for the directory: the system's roots, or those of `ca_roots`, with
/// the CA's rate limits honoured.
fn http_client(
    acme: &AcmeSpec,
    limits: &std::sync::Arc<RateLimits>,
) -> Result<Box<dyn instant_acme::HttpClient>, String> {
    Ok(Box::new(Watched {
        inner: base_client(acme)?.into(),
        limits: limits.clone(),
        directory: acme.directory.clone(),
    }))
}

fn base_client(acme: &AcmeSpec) -> Result<Box<dyn instant_acme::HttpClient>, String> {
    let Some(path) = &acme.ca_roots else {
        return Ok(Box::new(hyper_util_client(None)?));
    };
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        let der = der.map_err(|e| format!("`{path}` is not PEM: {e}"))?;
        roots
            .add(der)
            .map_err(|e| format!("`{path}` holds a certificate that cannot be a root: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("`{path}` holds no certificate"));
    }
    Ok(Box::new(hyper_util_client(Some(roots))?))
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    instant_acme::BodyWrapper<bytes::Bytes>,
>;

fn hyper_util_client(roots: Option<rustls::RootCertStore>) -> Result<Client, String> {
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match roots {
        Some(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
        None => {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_roots();
            for der in found {
                let _ = roots.add(der);
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}

/// The system's roots (also trusted by https alert receivers).
pub(crate) fn system_roots() -> Vec<rustls_pki_types::CertificateDer<'static>> {
    rustls_native_roots()
}

/// The system's roots (Debian's bundle), for a public CA such as Let's Encrypt.
fn rustls_native_roots() -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    for path in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ] {
        if let Ok(pem) = std::fs::read(path) {
            return rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
                .filter_map(Result::ok)
                .collect();
        }
    }
    Vec::new()
}

impl Agent {
    /// The ACME account for `acme.directory`, created (and its key kept 0600) on first use.
    async fn acme_account(&self, acme: &AcmeSpec) -> Result<Account, String> {
        let dir = self.acme_dir();
        crate::tls::mkdir_private(&dir)
            .map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
        let id = hex::encode(&sha2::Sha256::digest(acme.directory.as_bytes())[..8]);
        let path = dir.join(format!("account-{id}.json"));
        if let Ok(data) = std::fs::read(&path) {
            let creds: AccountCredentials = serde_json::from_slice(&data)
                .map_err(|e| format!("the account file `{}` is unreadable: {e}", path.display()))?;
            // (Only the directory is fetched here: no signed request, no nonce.)
            return Account::builder_with_http(http_client(acme, &self.tls.rate_limits)?)
                .from_credentials(creds)
                .await
                .map_err(|e| format!("cannot use the ACME account: {}", chain(&e)));
        }
        let contact = acme.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(|c| c.as_str()).collect();
        let new = NewAccount {
            contact: &contacts,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, creds) = nonce_retry!(Account::builder_with_http(http_client(
            acme,
            &self.tls.rate_limits
        )?)
        .create(&new, acme.directory.clone(), None))
        .map_err(|e| {
            format!(
                "cannot create an ACME account at `{}`: {}",
                acme.directory,
                chain(&e)
            )
        })?;
        let data = serde_json::to_vec(&creds).map_err(|e| e.to_string())?;
        crate::paths::write_atomic(&path, &data, 0o600)
            .map_err(|e| format!("cannot keep the account key `{}`: {e}", path.display()))?;
        tracing::info!(directory = %acme.directory, "ACME account created");
        Ok(account)
    }
}

/// Why an issuance failed, and when the CA allows the next try (its rate limit), if it
/// said.
#[derive(Debug)]
pub(crate) struct Failure {
    pub message: String,
    pub retry_after: Option<SystemTime>,
}

/// Issues a certificate for `domains`: (chain PEM, key PEM).
pub(crate) async fn issue(
    agent: &Agent,
    acme: &AcmeSpec,
    domains: &[String],
) -> Result<(String, String), Failure> {
    let limits = &agent.tls.rate_limits;
    let fail = |message: String| Failure {
        message,
        retry_after: limits.until(&acme.directory),
    };
    // Nothing is asked of a CA that said to wait longer than a moment.
    let blocked = || {
        limits
            .until(&acme.directory)
            .filter(|t| t.duration_since(SystemTime::now()).unwrap_or_default() > MAX_INLINE_WAIT)
    };
    if let Some(until) = blocked() {
        return Err(fail(RateLimited { until }.to_string()));
    }
    let proxy = agent
        .proxy
        .as_ref()
        .ok_or_else(|| fail("this agent runs no proxy to answer ACME challenges".to_string()))?;
    let mut kinds = vec![ChallengeType::Http01];
    if agent.config.https.is_some() {
        kinds.push(ChallengeType::TlsAlpn01);
    }
    // The account request is retried like an order (a badNonce three times in a row,
    // a CA that is restarting), unless the CA said to wait.
    let mut account = Err(String::new());
    for attempt in 1..=ORDER_ATTEMPTS {
        account = agent.acme_account(acme).await;
        if account.is_ok() || blocked().is_some() {
            break;
        }
        if attempt < ORDER_ATTEMPTS {
            tokio::time::sleep(Duration::from_secs(attempt as u64)).await;
        }
    }
    let account = account.map_err(fail)?;
    let mut errors = Vec::new();
    'kinds: for kind in kinds {
        for attempt in 1..=ORDER_ATTEMPTS {
            match order(proxy, &account, domains, kind.clone()).await {
                Ok(done) => return Ok(done),
                Err(OrderError::Challenge(e)) => {
                    // This kind cannot be answered here: try the next one.
                    errors.push(format!("{kind:?}: {e}"));
                    break;
                }
                Err(OrderError::Other(e)) => {
                    if blocked().is_some() {
                        // The CA's rate limit: another order now would only be refused.
                        errors.push(format!("{kind:?}: {e}"));
                        break 'kinds;
                    }
                    tracing::info!(attempt, error = %e, "ACME order failed; trying again");
                    if attempt == ORDER_ATTEMPTS {
                        errors.push(format!("{kind:?}: {e}"));
                    } else {
                        tokio::time::sleep(Duration::from_secs(attempt as u64)).await;
                    }
                }
            }
        }
    }
    Err(fail(errors.join("; ")))
}

enum OrderError {
    /// The CA could not validate the challenge.
    Challenge(String),
    Other(String),
}

/// Challenge answers set on the proxy, removed when the order ends either way.
struct Answers<'a> {
    proxy: &'a crate::proxyctl::ProxyCtl,
    set: Vec<TlsRequest>,
}

impl Answers<'_> {
    async fn clear(&mut self) {
        for undo in self.set.drain(..) {
            let _ = self.proxy.request(Request::Tls { request: undo }).await;
        }
    }
}

async fn order(
    proxy: &crate::proxyctl::ProxyCtl,
    account: &Account,
    domains: &[String],
    kind: ChallengeType,
) -> Result<(String, String), OrderError> {
    let other = |e: instant_acme::Error| OrderError::Other(chain(&e));
    let identifiers: Vec<Identifier> = domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
    let mut order = nonce_retry!(account.new_order(&NewOrder::new(&identifiers))).map_err(other)?;
    let mut answers = Answers {
        proxy,
        set: Vec::new(),
    };
    let result = async {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(other)?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                status => {
                    return Err(OrderError::Other(format!(
                        "authorization for {:?} is {status:?}",
                        authz.identifier()
                    )))
                }
            }
            let domain = authz.identifier().to_string();
            let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| {
                OrderError::Challenge(format!("the CA offers no {kind:?} challenge"))
            })?;
            let key_auth = challenge.key_authorization();
            let (set, undo) = match kind {
                ChallengeType::Http01 => (
                    TlsRequest::SetHttpChallenge {
                        token: challenge.token.clone(),
                        key_authorization: key_auth.as_str().to_string(),
                    },
                    TlsRequest::RemoveHttpChallenge {
                        token: challenge.token.clone(),
                    },
                ),
                _ => (
                    TlsRequest::SetAlpnChallenge {
                        cert: alpn_cert(&domain, key_auth.digest().as_ref())
                            .map_err(OrderError::Other)?,
                    },
                    TlsRequest::RemoveAlpnChallenge {
                        domain: domain.clone(),
                    },
                ),
            };
            proxy
                .request(Request::Tls { request: set })
                .await
                .map_err(|e| {
                    OrderError::Other(format!("the proxy did not take the challenge: {e}"))
                })?;
            answers.set.push(undo);
            nonce_retry!(challenge.set_ready()).map_err(other)?;
        }
        let polled =
            nonce_retry!(order.poll_ready(&RetryPolicy::new().timeout(Duration::from_secs(90))));
        // An order that failed on a refused challenge is the CA's verdict, whether it says
        // so by the order's status or by its `error` (Pebble): the same challenge is not
        // tried again (each would count against the CA's failed-validation limit).
        let status = match polled {
            Ok(status) => status,
            Err(e) => {
                let why = challenge_errors(&mut order).await;
                if why.is_empty() {
                    return Err(other(e));
                }
                return Err(OrderError::Challenge(why.join("; ")));
            }
        };
        if status == OrderStatus::Invalid {
            let why = challenge_errors(&mut order).await;
            return Err(OrderError::Challenge(if why.is_empty() {
                "the order became invalid".into()
            } else {
                why.join("; ")
            }));
        }
        if status != OrderStatus::Ready {
            return Err(OrderError::Other(format!(
                "the order is {status:?}, not ready"
            )));
        }
        let key_pem = nonce_retry!(order.finalize()).map_err(other)?;
        let cert_pem = nonce_retry!(
            order.poll_certificate(&RetryPolicy::new().timeout(Duration::from_secs(90)))
        )
        .map_err(other)?;
        Ok((cert_pem, key_pem))
    }
    .await;
    answers.clear().await;
    result
}

/// The errors the CA gave the order's challenges ("domain: problem"), if any.
async fn challenge_errors(order: &mut instant_acme::Order) -> Vec<String> {
    let mut why = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(a)) = authorizations.next().await {
        for c in &a.challenges {
            if let Some(e) = &c.error {
                why.push(format!("{}: {}", a.identifier(), e));
            }
        }
    }
    why
}

/// The self-signed certificate of a TLS-ALPN-01 answer: the domain and the
/// `acmeIdentifier` extension holding the key authorization's digest (RFC 8737 §3).
fn alpn_cert(domain: &str, digest: &[u8]) -> Result<Cert, String> {
    let mut params =
        rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok(Cert {
        domains: vec![domain.to_string()],
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        source: "acme-challenge".into(),
    })
}

/// The peers' `ADDR:PORT`: the hosts' addresses (`AppSpec::acme_peer_hosts`: the
/// address the CLI resolved with `ssh -G`, else the host part of their `ssh`) on this
/// host's own proxy port (a CA validates every host of a name on one port).
fn with_port(hosts: &[String], port: u16) -> Vec<String> {
    hosts
        .iter()
        .map(|h| {
            if h.contains(':') {
                format!("[{h}]:{port}")
            } else {
                format!("{h}:{port}")
            }
        })
        .collect()
}

impl Agent {
    /// Hands the proxy the peers it asks for HTTP-01 tokens it does not hold (see
    /// [`acme_peers`]) when they changed. A failure is logged: issuance still works
    /// whenever the CA reaches this host.
    pub(crate) async fn share_acme_peers(&self, spec: &AppSpec) {
        let hosts = spec.acme_peer_hosts(&self.host_name());
        self.send_acme_peers(&spec.app, &hosts).await;
    }

    /// [`share_acme_peers`](Self::share_acme_peers) with the peers' addresses given (a
    /// fleet deploy's lease carries them, before this host has the app).
    pub(crate) async fn send_acme_peers(&self, app: &str, hosts: &[String]) {
        let (Some(proxy), Some(listen)) = (&self.proxy, self.config.proxy) else {
            return;
        };
        let peers = with_port(hosts, listen.port());
        {
            let sent = self
                .tls
                .acme_peers_sent
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let before = sent.get(app).map(Vec::as_slice).unwrap_or_default();
            if before == peers.as_slice() {
                return;
            }
        }
        let request = Request::Tls {
            request: TlsRequest::SetAcmePeers {
                app: app.to_string(),
                peers: peers.clone(),
            },
        };
        match proxy.request(request).await {
            Ok(_) => {
                tracing::info!(app, peers = ?peers, "ACME HTTP-01 peers handed to the proxy");
                self.tls
                    .acme_peers_sent
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(app.to_string(), peers);
            }
            Err(e) => {
                tracing::warn!(app, error = %e, "ACME HTTP-01 peers not handed to the proxy")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The peers of a fleet's HTTP-01: the other hosts running an ACME service, at the
    /// host part of their ssh address on this host's proxy port.
    #[test]
    fn acme_peers_are_the_other_hosts_of_acme_services() {
        let text = "app = \"demo\"\n\
            [acme]\nemail = \"a@b.c\"\n\
            [services.web]\ncommand = \"x\"\nroles = [\"web\"]\n\
            http = { domains = [\"a.test\"], tls = \"acme\", health = \"/h\" }\n\
            [services.api]\ncommand = \"x\"\nroles = [\"api\"]\nhttp = { domains = [\"b.test\"], health = \"/h\" }\n\
            [[hosts]]\nname = \"h1\"\nssh = \"root@10.0.0.1\"\nroles = [\"web\"]\n\
            [[hosts]]\nname = \"h2\"\nssh = \"deploy@[fd00::2]:2222\"\nroles = [\"web\"]\n\
            [[hosts]]\nname = \"h3\"\nssh = \"10.0.0.3\"\nroles = [\"api\"]\n";
        let spec = hoist_config::parse_str("hoist.toml", text)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .spec;
        assert_eq!(with_port(&spec.acme_peer_hosts("h1"), 80), ["[fd00::2]:80"]);
        assert_eq!(
            with_port(&spec.acme_peer_hosts("h3"), 8080),
            ["10.0.0.1:8080", "[fd00::2]:8080"]
        );
        assert_eq!(with_port(&spec.acme_peer_hosts("local"), 80).len(), 2);
        // An address the CLI resolved (an ssh config alias) wins over the ssh host.
        let mut spec = spec;
        spec.hosts[0].address = Some("10.9.9.9".into());
        assert_eq!(
            with_port(&spec.acme_peer_hosts("h3"), 80),
            ["10.9.9.9:80", "[fd00::2]:80"]
        );
    }

    use super::*;
    use instant_acme::HttpClient;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// A directory that answers from a list (status, Retry-After, body) and counts what
    /// reached it.
    struct Canned {
        answers: Mutex<Vec<(u16, Option<&'static str>, &'static str)>>,
        sent: AtomicUsize,
    }

    struct CannedClient(Arc<Canned>);

    impl HttpClient for CannedClient {
        fn request(
            &self,
            _req: hyper::Request<instant_acme::BodyWrapper<bytes::Bytes>>,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<
                        Output = Result<instant_acme::BytesResponse, instant_acme::Error>,
                    > + Send,
            >,
        > {
            self.0.sent.fetch_add(1, Ordering::SeqCst);
            let (status, retry, body) = self.0.answers.lock().unwrap().remove(0);
            let mut b = hyper::Response::builder().status(status);
            if let Some(r) = retry {
                b = b.header(hyper::header::RETRY_AFTER, r);
            }
            let parts = b.body(()).unwrap().into_parts().0;
            Box::pin(async move {
                Ok(instant_acme::BytesResponse {
                    parts,
                    body: Box::new(bytes::Bytes::from_static(body.as_bytes())),
                })
            })
        }
    }

    fn watched(answers: Vec<(u16, Option<&'static str>, &'static str)>) -> (Watched, Arc<Canned>) {
        let canned = Arc::new(Canned {
            answers: Mutex::new(answers),
            sent: AtomicUsize::new(0),
        });
        let client = Watched {
            inner: Arc::new(CannedClient(canned.clone())),
            limits: Arc::default(),
            directory: "https://ca.test/dir".into(),
        };
        (client, canned)
    }

    fn req() -> hyper::Request<instant_acme::BodyWrapper<bytes::Bytes>> {
        hyper::Request::builder()
            .uri("https://ca.test/new-order")
            .body(instant_acme::BodyWrapper::from(Vec::new()))
            .unwrap()
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_an_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(now + Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:30:00 GMT", now),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[tokio::test]
    async fn a_long_rate_limit_stops_every_request_until_it_ends() {
        const PROBLEM: &str =
            r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many new orders"}"#;
        let (client, canned) = watched(vec![(429, Some("3600"), PROBLEM), (200, None, "{}")]);
        let rsp = client.request(req()).await.unwrap();
        assert_eq!(
            rsp.parts.status, 429,
            "the answer itself goes to instant-acme"
        );
        let until = client.limits.until(&client.directory).expect("noted");
        let left = until.duration_since(SystemTime::now()).unwrap();
        assert!(left > Duration::from_secs(3500), "{left:?}");
        // Every later request (an order, a poll, the account) fails at once, unsent.
        for _ in 0..3 {
            let err = client.request(req()).await.err().expect("refused");
            let text = err.to_string();
            assert!(text.contains("rate limiting"), "{text}");
        }
        assert_eq!(canned.sent.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_short_retry_after_on_503_is_waited_for_in_line() {
        let (client, canned) = watched(vec![(503, Some("1"), "busy"), (200, None, "{}")]);
        let rsp = client.request(req()).await.unwrap();
        assert_eq!(rsp.parts.status, 503);
        let noted = client.limits.until(&client.directory).expect("noted");
        let rsp = client.request(req()).await.unwrap();
        assert_eq!(rsp.parts.status, 200);
        assert!(SystemTime::now() >= noted, "sent before the CA's time");
        assert_eq!(canned.sent.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn rate_limited_without_retry_after_waits_a_default() {
        const PROBLEM: &str = r#"{"type":"urn:ietf:params:acme:error:rateLimited"}"#;
        let (client, _) = watched(vec![
            (403, None, PROBLEM),
            (
                400,
                None,
                "{\"type\":\"urn:ietf:params:acme:error:badNonce\"}",
            ),
        ]);
        client.request(req()).await.unwrap();
        assert!(client.limits.until(&client.directory).is_some());
        let (client, _) = watched(vec![(
            400,
            None,
            "{\"type\":\"urn:ietf:params:acme:error:badNonce\"}",
        )]);
        client.request(req()).await.unwrap();
        assert!(
            client.limits.until(&client.directory).is_none(),
            "badNonce is not a rate limit"
        );
    }
}
