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

use std::time::Duration;

use hoist_core::spec::AcmeSpec;
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

/// The directory client, logging every `badNonce` answer it passes on (so they are
/// visible although `instant-acme` retries them itself).
struct Logged(Box<dyn instant_acme::HttpClient>);

impl instant_acme::HttpClient for Logged {
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
        let fut = self.0.request(req);
        Box::pin(async move {
            let mut rsp = fut.await?;
            if rsp.parts.status != hyper::StatusCode::BAD_REQUEST {
                return Ok(rsp);
            }
            let body = rsp
                .body
                .into_bytes()
                .await
                .map_err(instant_acme::Error::Other)?;
            if body
                .windows(BAD_NONCE.len())
                .any(|w| w == BAD_NONCE.as_bytes())
            {
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

/// An HTTP client for the directory: the system's roots, or those of `ca_roots`.
fn http_client(acme: &AcmeSpec) -> Result<Box<dyn instant_acme::HttpClient>, String> {
    Ok(Box::new(Logged(base_client(acme)?)))
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
            return Account::builder_with_http(http_client(acme)?)
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
        let (account, creds) = nonce_retry!(Account::builder_with_http(http_client(acme)?).create(
            &new,
            acme.directory.clone(),
            None
        ))
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

/// Issues a certificate for `domains`: (chain PEM, key PEM).
pub(crate) async fn issue(
    agent: &Agent,
    acme: &AcmeSpec,
    domains: &[String],
) -> Result<(String, String), String> {
    let proxy = agent
        .proxy
        .as_ref()
        .ok_or_else(|| "this agent runs no proxy to answer ACME challenges".to_string())?;
    let mut kinds = vec![ChallengeType::Http01];
    if agent.config.https.is_some() {
        kinds.push(ChallengeType::TlsAlpn01);
    }
    // The account request is retried like an order (a badNonce three times in a row,
    // a CA that is restarting).
    let mut account = Err(String::new());
    for attempt in 1..=ORDER_ATTEMPTS {
        account = agent.acme_account(acme).await;
        if account.is_ok() {
            break;
        }
        if attempt < ORDER_ATTEMPTS {
            tokio::time::sleep(Duration::from_secs(attempt as u64)).await;
        }
    }
    let account = account?;
    let mut errors = Vec::new();
    for kind in kinds {
        for attempt in 1..=ORDER_ATTEMPTS {
            match order(proxy, &account, domains, kind.clone()).await {
                Ok(done) => return Ok(done),
                Err(OrderError::Challenge(e)) => {
                    // This kind cannot be answered here: try the next one.
                    errors.push(format!("{kind:?}: {e}"));
                    break;
                }
                Err(OrderError::Other(e)) => {
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
    Err(errors.join("; "))
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
        let status =
            nonce_retry!(order.poll_ready(&RetryPolicy::new().timeout(Duration::from_secs(90))))
                .map_err(other)?;
        if status == OrderStatus::Invalid {
            let mut why = Vec::new();
            let mut authorizations = order.authorizations();
            while let Some(Ok(a)) = authorizations.next().await {
                for c in &a.challenges {
                    if let Some(e) = &c.error {
                        why.push(format!("{}: {}", a.identifier(), e));
                    }
                }
            }
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
