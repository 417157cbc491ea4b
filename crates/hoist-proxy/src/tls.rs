//! TLS termination: the HTTPS listener, certificates picked by SNI, ALPN (h2,
//! http/1.1, and acme-tls/1 for TLS-ALPN-01), session resumption, and the ACME HTTP-01
//! answers and HTTPS redirects of the plain listener.
//!
//! Certificates are keyed by domain and swapped whole: a handshake reads the map once,
//! so a new certificate serves the next handshake while open connections keep theirs.
//! They are persisted (0600, temp → fsync → rename) beside the route table so a proxy
//! restarted while the agent is dead, or a successor after an upgrade, serves HTTPS at
//! once. The ACME peers (the app's other hosts, asked for HTTP-01 tokens this proxy does
//! not hold) are persisted in the same file, so relaying keeps working across a restart
//! while the agent is dead and across an upgrade. Challenge answers are kept in memory
//! only: an issuance outlives neither.
//!
//! TLS connections are served by their own threads (one current-thread runtime each, as
//! the plain workers), through the same request path (`forward::handle`): requests are
//! marked [`Https`] so the upstream sees `X-Forwarded-Proto: https`.

use std::collections::HashMap;
use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use hoist_protocol::proxy::{self as wire, Reply, TlsRequest};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

use crate::error::ProxyError;
use crate::forward::ProxyBody;
use crate::worker::Worker;
use crate::Shared;

/// The ALPN protocol of ACME TLS-ALPN-01 (RFC 8737).
const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// Where ACME HTTP-01 challenges are fetched (RFC 8555 §8.3); never redirected.
pub(crate) const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";
/// A handshake must finish within this (a client that opens and stalls holds a slot).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Marks a request that arrived over TLS.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Https;

#[derive(Clone)]
struct Held {
    key: Arc<CertifiedKey>,
    cert: wire::Cert,
}

/// Certificates, challenges and the TLS configuration shared by every worker.
pub(crate) struct TlsState {
    certs: RwLock<Arc<HashMap<String, Held>>>,
    alpn: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    http_challenges: RwLock<HashMap<String, String>>,
    /// Per app, the peers asked for HTTP-01 tokens this proxy does not hold.
    acme_peers: RwLock<HashMap<String, Vec<String>>>,
    relays: Relays,
    file: Option<PathBuf>,
    /// Whether any route asks for TLS (the plain path looks routes up again only then).
    any_tls_route: AtomicBool,
    /// The HTTPS listener's port (0: none), for redirects.
    https_port: AtomicU16,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// Parses a PEM chain and key into a key rustls can serve, checking that they belong
/// together.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate is not valid PEM: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate in the PEM data".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("the key is not a PEM private key: {e}"))?;
    // ring (not aws-lc-rs) builds in a fraction of the time here; its lack of
    // post-quantum key exchange is why rustls marks it deprecated.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            "the key does not belong to the certificate".to_string()
        }
        other => format!("the certificate or key cannot be used: {other}"),
    })
}

/// The self-signed certificate of a TLS-ALPN-01 answer: it carries a critical
/// `acmeIdentifier` extension that certificate parsers used for the consistency check
/// refuse, so it is loaded as is (it is never validated by anyone but the CA).
fn challenge_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate is not valid PEM: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("the key is not a PEM private key: {e}"))?;
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("the key cannot be used: {e}"))?;
    Ok(CertifiedKey::new(chain, signer))
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CertsFile {
    version: u32,
    certs: Vec<wire::Cert>,
    /// App → its HTTP-01 peers (absent in files of older proxies, and left out when
    /// empty, so an older binary still reads the file of a host without peers).
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    acme_peers: HashMap<String, Vec<String>>,
}

impl TlsState {
    /// Loads the certificates saved in `file` (none when it does not exist yet).
    pub fn load(file: Option<PathBuf>) -> Result<TlsState, ProxyError> {
        let state = TlsState {
            certs: RwLock::new(Arc::new(HashMap::new())),
            alpn: RwLock::new(HashMap::new()),
            http_challenges: RwLock::new(HashMap::new()),
            acme_peers: RwLock::new(HashMap::new()),
            relays: Relays::default(),
            file,
            any_tls_route: AtomicBool::new(false),
            https_port: AtomicU16::new(0),
        };
        if let Some(path) = &state.file {
            let bad = |message: String| ProxyError::StateRead {
                path: path.clone(),
                message,
            };
            match std::fs::read(path) {
                Ok(data) => {
                    let file: CertsFile =
                        serde_json::from_slice(&data).map_err(|e| bad(e.to_string()))?;
                    let mut map = HashMap::new();
                    for cert in file.certs {
                        match certified_key(&cert.cert_pem, &cert.key_pem) {
                            Ok(key) => {
                                let key = Arc::new(key);
                                for d in &cert.domains {
                                    map.insert(
                                        d.to_ascii_lowercase(),
                                        Held {
                                            key: key.clone(),
                                            cert: cert.clone(),
                                        },
                                    );
                                }
                            }
                            Err(e) => {
                                tracing::warn!(domains = ?cert.domains, error = %e, "saved certificate skipped")
                            }
                        }
                    }
                    *state.certs.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
                    *state.acme_peers.write().unwrap_or_else(|e| e.into_inner()) = file.acme_peers;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(bad(e.to_string())),
            }
        }
        Ok(state)
    }

    pub fn set_https_port(&self, port: u16) {
        self.https_port.store(port, Ordering::Relaxed);
    }

    /// Called whenever the route table is published.
    pub fn set_routes(&self, routes: &[&wire::Route]) {
        self.any_tls_route
            .store(routes.iter().any(|r| r.tls.is_some()), Ordering::Relaxed);
    }

    fn held(&self) -> Arc<HashMap<String, Held>> {
        self.certs.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Writes the certificates and ACME peers; callers hold the `certs` write lock (taken
    /// before `acme_peers`), so writes never interleave.
    fn persist(
        &self,
        map: &HashMap<String, Held>,
        acme_peers: &HashMap<String, Vec<String>>,
    ) -> Result<(), ProxyError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        // One entry per certificate, not per domain.
        let mut certs: Vec<wire::Cert> = Vec::new();
        let mut domains: Vec<&String> = map.keys().collect();
        domains.sort();
        for d in domains {
            let held = &map[d];
            match certs
                .iter_mut()
                .find(|c| c.cert_pem == held.cert.cert_pem && c.key_pem == held.cert.key_pem)
            {
                Some(c) => {
                    if !c.domains.contains(d) {
                        c.domains.push(d.clone())
                    }
                }
                None => certs.push(wire::Cert {
                    domains: vec![d.clone()],
                    ..held.cert.clone()
                }),
            }
        }
        let data = serde_json::to_vec(&CertsFile {
            version: wire::VERSION,
            certs,
            acme_peers: acme_peers.clone(),
        })
        .map_err(|e| ProxyError::StateWrite {
            path: path.clone(),
            error: std::io::Error::other(e),
        })?;
        crate::state::write_private(path, &data).map_err(|error| ProxyError::StateWrite {
            path: path.clone(),
            error,
        })
    }

    fn set_cert(&self, cert: wire::Cert) -> Result<(), ProxyError> {
        let invalid = |message: String| ProxyError::InvalidRoute {
            id: cert.domains.join(","),
            message,
        };
        if cert.domains.is_empty() {
            return Err(invalid("a certificate needs at least one domain".into()));
        }
        let key = Arc::new(certified_key(&cert.cert_pem, &cert.key_pem).map_err(invalid)?);
        let mut slot = self.certs.write().unwrap_or_else(|e| e.into_inner());
        let mut map = (**slot).clone();
        for d in &cert.domains {
            map.insert(
                d.to_ascii_lowercase(),
                Held {
                    key: key.clone(),
                    cert: cert.clone(),
                },
            );
        }
        self.persist(
            &map,
            &self.acme_peers.read().unwrap_or_else(|e| e.into_inner()),
        )?;
        *slot = Arc::new(map);
        tracing::info!(domains = ?cert.domains, source = %cert.source, "certificate installed");
        Ok(())
    }

    fn remove_cert(&self, domain: &str) -> Result<(), ProxyError> {
        let mut slot = self.certs.write().unwrap_or_else(|e| e.into_inner());
        let mut map = (**slot).clone();
        map.remove(&domain.to_ascii_lowercase());
        self.persist(
            &map,
            &self.acme_peers.read().unwrap_or_else(|e| e.into_inner()),
        )?;
        *slot = Arc::new(map);
        Ok(())
    }

    /// Answers a [`TlsRequest`] of the control socket.
    pub fn answer(&self, request: TlsRequest) -> Result<Reply, ProxyError> {
        match request {
            TlsRequest::SetCert { cert } => self.set_cert(cert)?,
            TlsRequest::RemoveCert { domain } => self.remove_cert(&domain)?,
            TlsRequest::Certs => {
                let map = self.held();
                let mut certs: Vec<wire::CertInfo> = map
                    .iter()
                    .map(|(d, h)| wire::CertInfo {
                        domain: d.clone(),
                        source: h.cert.source.clone(),
                        cert_pem: h.cert.cert_pem.clone(),
                    })
                    .collect();
                certs.sort_by(|a, b| a.domain.cmp(&b.domain));
                return Ok(Reply::Certs { certs });
            }
            TlsRequest::SetHttpChallenge {
                token,
                key_authorization,
            } => {
                self.http_challenges
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(token, key_authorization);
            }
            TlsRequest::RemoveHttpChallenge { token } => {
                self.http_challenges
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&token);
            }
            TlsRequest::SetAlpnChallenge { cert } => {
                let key = Arc::new(challenge_key(&cert.cert_pem, &cert.key_pem).map_err(
                    |message| ProxyError::InvalidRoute {
                        id: cert.domains.join(","),
                        message,
                    },
                )?);
                let mut alpn = self.alpn.write().unwrap_or_else(|e| e.into_inner());
                for d in &cert.domains {
                    alpn.insert(d.to_ascii_lowercase(), key.clone());
                }
            }
            TlsRequest::SetAcmePeers { app, peers } => {
                let certs = self.certs.write().unwrap_or_else(|e| e.into_inner());
                let mut slot = self.acme_peers.write().unwrap_or_else(|e| e.into_inner());
                let mut map = slot.clone();
                if peers.is_empty() {
                    map.remove(&app);
                } else {
                    map.insert(app, peers);
                }
                self.persist(&certs, &map)?;
                *slot = map;
            }
            TlsRequest::AcmeRelays => {
                let r = &self.relays;
                return Ok(Reply::AcmeRelays {
                    relayed: r.relayed.load(Ordering::Relaxed),
                    missed: r.missed.load(Ordering::Relaxed),
                    malformed: r.malformed.load(Ordering::Relaxed),
                    limited: r.limited.load(Ordering::Relaxed),
                });
            }
            TlsRequest::RemoveAlpnChallenge { domain } => {
                self.alpn
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&domain.to_ascii_lowercase());
            }
        }
        Ok(Reply::Done)
    }
}

/// Picks the certificate for a handshake: the ACME challenge certificate when the
/// client offers `acme-tls/1`, else the certificate of the SNI name.
#[derive(Debug)]
struct Resolver(Arc<Shared>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello
            .server_name()?
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let tls = &self.0.tls;
        let acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if acme {
            return tls
                .alpn
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&name)
                .cloned();
        }
        tls.held().get(&name).map(|h| h.key.clone())
    }
}

/// The rustls configuration of the HTTPS listener.
fn server_config(shared: Arc<Shared>) -> Result<Arc<rustls::ServerConfig>, ProxyError> {
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ProxyError::Runtime(std::io::Error::other(e)))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(shared)));
    // Order matters: rustls picks the first of these the client offers.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    // Resumption: stateless tickets (TLS 1.3 and 1.2) and a session cache beside them.
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(16 * 1024);
    config.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| ProxyError::Runtime(std::io::Error::other(e)))?;
    Ok(Arc::new(config))
}

/// Starts `count` threads serving TLS connections from `listener` until `stop` turns
/// true; each handle finishes when its connections are done.
pub(crate) fn spawn_workers(
    count: usize,
    shared: Arc<Shared>,
    listener: &StdListener,
    stop: watch::Receiver<bool>,
) -> Result<Vec<tokio::sync::oneshot::Receiver<()>>, ProxyError> {
    let addr = listener.local_addr().map_err(ProxyError::Runtime)?;
    let listen_err = |error| ProxyError::Listen { addr, error };
    shared.tls.set_https_port(addr.port());
    let config = server_config(shared.clone())?;
    let mut done = Vec::with_capacity(count);
    for i in 0..count.max(1) {
        let listener = listener.try_clone().map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ProxyError::Runtime)?;
        let shared = shared.clone();
        let stop = stop.clone();
        let config = config.clone();
        std::thread::Builder::new()
            .name(format!("hoist-proxy-tls-{i}"))
            .spawn(move || {
                crate::stats::set_shard(i);
                runtime.block_on(serve(shared, config, listener, stop));
                drop(runtime);
                let _ = done_tx.send(());
            })
            .map_err(ProxyError::Runtime)?;
        done.push(done_rx);
    }
    Ok(done)
}

async fn serve(
    shared: Arc<Shared>,
    config: Arc<rustls::ServerConfig>,
    listener: StdListener,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(error) => {
            tracing::error!(%error, "TLS worker cannot use its listener");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let worker = Arc::new(Worker {
        shared: shared.clone(),
        token: Arc::new(()),
    });
    let (graceful_tx, graceful_rx) = watch::channel(false);
    loop {
        tokio::select! {
            biased;
            _ = crate::until_true(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // The plain workers' connection cap counts these too; one over it is
                    // closed (a plain-text 503 would mean nothing to a TLS client).
                    let open = shared.open_connections.fetch_add(1, Ordering::Relaxed);
                    let slot = crate::worker::ConnSlot(shared.clone());
                    if open >= shared.max_connections() {
                        shared.over_capacity.fetch_add(1, Ordering::Relaxed);
                        drop((stream, slot));
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let acceptor = acceptor.clone();
                    let worker = worker.clone();
                    let graceful = graceful_rx.clone();
                    tokio::spawn(async move {
                        let _token = worker.token.clone();
                        let _slot = slot;
                        let stream = crate::timed_io::TimedStream::new(stream, worker.shared.limits.write_timeout, None);
                        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(error)) => {
                                tracing::debug!(%peer, %error, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                        let alpn = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
                        if alpn.as_deref() == Some(ACME_TLS_ALPN) {
                            // TLS-ALPN-01: the handshake was the answer (RFC 8737 §3).
                            return;
                        }
                        serve_connection(worker, peer, tls, alpn.as_deref() == Some(b"h2"), graceful).await;
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "TLS accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    drop(listener);
    shared.closing.store(true, Ordering::Relaxed);
    let _ = graceful_tx.send(true);
    let deadline = tokio::time::Instant::now() + shared.shutdown_grace;
    while Arc::strong_count(&worker.token) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn serve_connection<S>(
    worker: Arc<Worker>,
    peer: std::net::SocketAddr,
    stream: S,
    h2: bool,
    mut graceful: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // RFC 9112's framing checks see the decrypted bytes of HTTP/1.1; HTTP/2 frames its
    // messages itself (and hyper refuses `Transfer-Encoding` there), so its scanner stays
    // unfed and never reports a request.
    let framing = Arc::new(crate::framing::ConnFraming::default());
    let client = crate::forward::Peer::new(peer, framing.clone());
    let w = worker.clone();
    let service =
        hyper::service::service_fn(move |req| https_request(w.clone(), client.clone(), req));
    let limits = &worker.shared.limits;
    if h2 {
        let io = TokioIo::new(stream);
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(limits.max_header_bytes as u32)
            .keep_alive_interval(Some(Duration::from_secs(30)));
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(error) = res {
                    tracing::debug!(%peer, %error, "h2 client connection ended");
                }
            }
            _ = crate::until_true(&mut graceful) => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .keep_alive(true)
            .header_read_timeout(limits.header_read_timeout)
            .max_header_size(limits.max_header_bytes)
            .max_headers(limits.max_headers)
            .max_buf_size(limits.max_header_bytes.max(8192) + 1024);
        let io = TokioIo::new(crate::framing::Scanned::new(stream, framing));
        let conn = builder.serve_connection(io, service).with_upgrades();
        crate::worker::serve_http1(
            conn,
            &mut graceful,
            &worker.shared.closing,
            peer,
            "TLS client connection ended",
        )
        .await;
    }
}

/// One request that arrived over TLS: marked [`Https`], given a Host from the
/// `:authority` of HTTP/2, forwarded, and given HSTS when its route asks.
async fn https_request(
    worker: Arc<Worker>,
    peer: crate::forward::Peer,
    mut req: Request<Incoming>,
) -> Result<Response<crate::forward::Answer>, std::convert::Infallible> {
    req.extensions_mut().insert(Https);
    if !req.headers().contains_key(header::HOST) {
        if let Some(v) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    let hsts = route_tls(&worker.shared, &req).and_then(|t| t.hsts_secs);
    let mut resp = crate::forward::handle(worker, peer, req).await?;
    if let Some(secs) = hsts {
        if let Ok(v) = HeaderValue::from_str(&format!("max-age={secs}")) {
            resp.headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, v);
        }
    }
    Ok(resp)
}

fn route_tls<B>(shared: &Shared, req: &Request<B>) -> Option<wire::RouteTls> {
    let host = crate::forward::host_of(req);
    let host = host.trim_end_matches('.');
    crate::forward::with_table(shared, |t| {
        t.lookup(host, req.uri().path()).and_then(|r| r.tls.clone())
    })
}

/// The plain listener's part: answers ACME HTTP-01 challenges the agent registered and
/// redirects requests for TLS routes to `https://` (308, method and body kept).
pub(crate) fn on_plain_request<B>(
    shared: &Shared,
    req: &Request<B>,
) -> Option<Response<ProxyBody>> {
    if req.extensions().get::<Https>().is_some() {
        return None;
    }
    let path = req.uri().path();
    if let Some(token) = path.strip_prefix(ACME_CHALLENGE_PREFIX) {
        let answer = shared
            .tls
            .http_challenges
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned();
        if let Some(answer) = answer {
            let mut resp = Response::new(ProxyBody::Full(Some(Bytes::from(answer))));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            return Some(resp);
        }
        return None;
    }
    let port = shared.tls.https_port.load(Ordering::Relaxed);
    if port == 0 || !shared.tls.any_tls_route.load(Ordering::Relaxed) {
        return None;
    }
    if !route_tls(shared, req).is_some_and(|t| t.redirect_https) {
        return None;
    }
    let host = crate::forward::host_of(req);
    let host = host.trim_end_matches('.');
    let authority = if port == 443 {
        host.to_string()
    } else if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = HeaderValue::from_str(&format!("https://{authority}{target}")).ok()?;
    let mut resp = Response::new(ProxyBody::Full(None));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(header::LOCATION, location);
    Some(resp)
}

/// Marks a request one proxy relays to another: it is answered from what that proxy
/// holds and never relayed again (no loops between peers).
const RELAY_HEADER: &str = "x-hoist-acme-relay";
/// How long the peers get to answer a relayed challenge (a CA's validator waits longer).
const RELAY_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a peer's answer that is read (a key authorization is under 200 bytes).
const RELAY_MAX: usize = 4096;
/// Relays one proxy runs at once, and its token bucket (burst, refill per second):
/// anyone can ask for random challenge paths, and each relay fans out to every peer.
/// A CA validates a challenge with a handful of requests, so this is far above need.
const RELAY_CONCURRENCY: usize = 8;
const RELAY_BURST: f64 = 20.0;
const RELAY_PER_SEC: f64 = 5.0;

/// The relay's bounds and counters (see [`Reply::AcmeRelays`]).
struct Relays {
    in_flight: std::sync::atomic::AtomicUsize,
    bucket: std::sync::Mutex<crate::guards::Bucket>,
    relayed: std::sync::atomic::AtomicU64,
    missed: std::sync::atomic::AtomicU64,
    malformed: std::sync::atomic::AtomicU64,
    limited: std::sync::atomic::AtomicU64,
}

impl Default for Relays {
    fn default() -> Relays {
        Relays {
            in_flight: Default::default(),
            bucket: std::sync::Mutex::new(crate::guards::Bucket::full(
                RELAY_BURST,
                std::time::Instant::now(),
            )),
            relayed: Default::default(),
            missed: Default::default(),
            malformed: Default::default(),
            limited: Default::default(),
        }
    }
}

/// One relay's place among the [`RELAY_CONCURRENCY`]; given back on drop.
struct RelaySlot<'a>(&'a Relays);

impl Drop for RelaySlot<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Relays {
    /// A slot for one more relay, or `None` when as many run already or the bucket is
    /// empty (a refused request takes no token).
    fn admit(&self) -> Option<RelaySlot<'_>> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= RELAY_CONCURRENCY {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let slot = RelaySlot(self);
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        bucket
            .take(std::time::Instant::now(), RELAY_PER_SEC, RELAY_BURST)
            .ok()?;
        Some(slot)
    }
}

/// An HTTP-01 request for a token this proxy does not hold, on its plain listener:
/// asked of the peers the agent named for the apps here (other hosts serving the same
/// names), and the first answer that is a key authorization of that very token
/// (`TOKEN.THUMBPRINT`) relayed. Only ACME-shaped tokens are asked, at most
/// [`RELAY_CONCURRENCY`] at once and [`RELAY_PER_SEC`] a second (burst [`RELAY_BURST`]);
/// beyond that the answer is 429. `None`: not such a request, or nobody holds it.
pub(crate) async fn relay_challenge<B>(
    shared: &Shared,
    req: &Request<B>,
) -> Option<Response<ProxyBody>> {
    if req.extensions().get::<Https>().is_some() || req.headers().contains_key(RELAY_HEADER) {
        return None;
    }
    let token = req.uri().path().strip_prefix(ACME_CHALLENGE_PREFIX)?;
    let mut peers: Vec<String> = shared
        .tls
        .acme_peers
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .flatten()
        .cloned()
        .collect();
    if peers.is_empty() {
        return None;
    }
    let relays = &shared.tls.relays;
    if !is_token(token) {
        relays.malformed.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let Some(_slot) = relays.admit() else {
        relays.limited.fetch_add(1, Ordering::Relaxed);
        let mut resp = Response::new(ProxyBody::Full(None));
        *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Some(resp);
    };
    peers.sort();
    peers.dedup();
    let host = crate::forward::host_of(req);
    // Every peer at once; the first valid answer wins (the rest are dropped with the set).
    let mut asks = tokio::task::JoinSet::new();
    for peer in peers {
        let (host, token) = (host.to_string(), token.to_string());
        asks.spawn(async move {
            let answer = ask_peer(&peer, &host, &token).await;
            (peer, answer)
        });
    }
    let first = async {
        while let Some(done) = asks.join_next().await {
            if let Ok((peer, Some(answer))) = done {
                return Some((peer, answer));
            }
        }
        None
    };
    let Some((peer, answer)) = tokio::time::timeout(RELAY_TIMEOUT, first)
        .await
        .ok()
        .flatten()
    else {
        relays.missed.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    relays.relayed.fetch_add(1, Ordering::Relaxed);
    tracing::info!(peer = %peer, "relayed an ACME HTTP-01 answer a peer holds");
    let mut resp = Response::new(ProxyBody::Full(Some(Bytes::from(answer))));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Some(resp)
}

/// An ACME token: base64url, as RFC 8555 §8.3 makes them (at least 128 bits of entropy,
/// so 22 characters or more; CAs use 43), and nothing a path could hide.
fn is_token(token: &str) -> bool {
    (22..=128).contains(&token.len()) && is_base64url(token)
}

fn is_base64url(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// One relayed `GET` to a peer's plain listener; its answer if it is a 200 whose body is
/// a key authorization of `token`.
async fn ask_peer(peer: &str, host: &str, token: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(peer).await.ok()?;
    let host = if host.is_empty() { peer } else { host };
    // The host came through the proxy's request checks (no spaces, no control bytes).
    let request = format!(
        "GET {ACME_CHALLENGE_PREFIX}{token} HTTP/1.1\r\nHost: {host}\r\n{RELAY_HEADER}: 1\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    stream
        .take(RELAY_MAX as u64)
        .read_to_end(&mut buf)
        .await
        .ok()?;
    let text = std::str::from_utf8(&buf).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.lines().next()?;
    if !(status.starts_with("HTTP/1.1 200 ") || status.starts_with("HTTP/1.0 200 ")) {
        return None;
    }
    let body = body.trim();
    let thumbprint = body.strip_prefix(token)?.strip_prefix('.')?;
    let valid = !thumbprint.is_empty() && thumbprint.len() <= 128 && is_base64url(thumbprint);
    valid.then(|| body.to_string())
}

/// The certificates file, beside the route table.
pub const CERTS_FILE: &str = "certs.json";

/// Binds the HTTPS listener: one socket, shared by the TLS worker threads (no
/// SO_REUSEPORT, so no other process can join it).
pub fn bind(addr: std::net::SocketAddr) -> Result<StdListener, ProxyError> {
    crate::process::bind_listener(addr)
}

#[cfg(test)]
mod relay_tests {
    use super::*;

    /// A peer that answers one request with `answer` and reports the request it got.
    async fn peer(answer: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let seen = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 2048];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (addr, seen)
    }

    /// Only a 200 whose body is a key authorization of the very token asked is relayed;
    /// the request carries the relay mark (the peer never relays it again) and the host.
    #[tokio::test]
    async fn a_peers_answer_is_relayed_only_if_it_authorizes_the_token() {
        let (addr, seen) = peer("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\ntok1.abc_\n").await;
        assert_eq!(
            ask_peer(&addr, "a.test", "tok1").await.as_deref(),
            Some("tok1.abc_")
        );
        let req = seen.await.unwrap();
        assert!(
            req.starts_with("GET /.well-known/acme-challenge/tok1 HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(req.contains("\r\nHost: a.test\r\n") && req.contains("x-hoist-acme-relay: 1"));
        for bad in [
            "HTTP/1.1 200 OK\r\n\r\ntok2.abc",
            "HTTP/1.1 200 OK\r\n\r\n<html>tok1.abc</html>",
            "HTTP/1.1 200 OK\r\n\r\ntok1.",
            "HTTP/1.1 404 Not Found\r\n\r\ntok1.abc",
            "HTTP/1.1 200 OK\r\n\r\ntok1.a b",
        ] {
            let (addr, _) = peer(bad).await;
            assert_eq!(ask_peer(&addr, "a.test", "tok1").await, None, "{bad:?}");
        }
        assert!(is_token("E6Jyg8AtauVR3PxSsefWFPtIkStD8BFXT9_Q4KTQymQ"));
        let long = "a".repeat(129);
        for bad in [
            "",
            "a/b",
            "a.b",
            "a b",
            "%2e",
            "tok1",
            "E6Jyg8AtauVR3PxSsefWF",
            &long,
        ] {
            assert!(!is_token(bad), "{bad:?}");
        }
    }
}
