//! TLS termination in-process: certificates by SNI, h2 and http/1.1 (checked with curl),
//! X-Forwarded-Proto, HSTS, the 308 redirect of plain HTTP (ACME challenges excepted),
//! session resumption, certificate replacement under an open connection, and the
//! certificates file a restarted proxy serves from.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{config, raw_exchange, route, status_of, Backend, Proxy};
use hoist_protocol::proxy::{Cert, Reply, Request, RouteTls, TlsRequest};
use hoist_testkit::certs::{Leaf, TestCa};

struct Tls {
    proxy: Proxy,
    https: SocketAddr,
    ca: TestCa,
    ca_file: std::path::PathBuf,
    dir: tempfile::TempDir,
}

fn start(certs_file: Option<&Path>, ca: Option<TestCa>) -> Tls {
    let dir = hoist_testkit::tempdir();
    let ca = ca.unwrap_or_else(|| TestCa::new("hoist test CA"));
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let https = listener.local_addr().unwrap();
    let mut cfg = config();
    cfg.tls_listener = Some(listener);
    cfg.certs_file = Some(
        certs_file
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.path().join("certs.json")),
    );
    Tls {
        proxy: Proxy::start(cfg),
        https,
        ca,
        ca_file,
        dir,
    }
}

/// Sets a certificate; `Err` carries the proxy's refusal.
fn set_cert(proxy: &Proxy, domains: &[&str], leaf: &Leaf) -> Result<Reply, String> {
    proxy
        .client()
        .call(Request::Tls {
            request: TlsRequest::SetCert {
                cert: Cert {
                    domains: domains.iter().map(|d| d.to_string()).collect(),
                    cert_pem: leaf.cert_pem.clone(),
                    key_pem: leaf.key_pem.clone(),
                    source: "file".into(),
                },
            },
        })
        .map_err(|e| e.to_string())
}

fn tls_route(
    id: &str,
    domain: &str,
    backend: &Backend,
    hsts: Option<u64>,
) -> hoist_protocol::proxy::Route {
    let mut r = route(id, &[domain], "/", "r1", &[backend]);
    r.tls = Some(RouteTls {
        redirect_https: true,
        hsts_secs: hsts,
    });
    r
}

/// `curl` over HTTPS: (status, http version, headers, body).
fn curl(t: &Tls, proto: &str, host: &str, path: &str) -> (u16, String, String, String) {
    let out = Command::new("curl")
        .args(["-sS", proto, "--max-time", "20", "--cacert"])
        .arg(&t.ca_file)
        .arg("--resolve")
        .arg(format!("{host}:{}:127.0.0.1", t.https.port()))
        .args(["-D", "-", "-w", "\n%{http_code} %{http_version}"])
        .arg(format!("https://{host}:{}{path}", t.https.port()))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (rest, last) = text.rsplit_once('\n').unwrap();
    let (code, version) = last.split_once(' ').unwrap();
    let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    (
        code.parse().unwrap(),
        version.to_string(),
        head.to_ascii_lowercase(),
        body.to_string(),
    )
}

#[test]
fn https_serves_h2_and_http1_by_sni_with_forwarded_proto_and_hsts() {
    let t = start(None, None);
    let a = Backend::start("app-a");
    let b = Backend::start("app-b");
    t.proxy
        .set_route(tls_route("a/web", "a.test", &a, Some(31_536_000)));
    t.proxy.set_route(tls_route("b/web", "b.test", &b, None));
    assert_eq!(
        set_cert(&t.proxy, &["a.test"], &t.ca.issue(&["a.test"])),
        Ok(Reply::Done)
    );
    assert_eq!(
        set_cert(&t.proxy, &["b.test"], &t.ca.issue(&["b.test"])),
        Ok(Reply::Done)
    );

    let (code, version, head, body) = curl(&t, "--http2", "a.test", "/x?q=1");
    assert_eq!((code, version.as_str(), body.as_str()), (200, "2", "app-a"));
    assert!(
        head.contains("strict-transport-security: max-age=31536000"),
        "{head}"
    );
    let (code, version, head, body) = curl(&t, "--http1.1", "b.test", "/y");
    assert_eq!(
        (code, version.as_str(), body.as_str()),
        (200, "1.1", "app-b")
    );
    assert!(
        !head.contains("strict-transport-security"),
        "no HSTS unless asked: {head}"
    );

    let seen = a.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.path, "/x?q=1");
    assert_eq!(last.header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        last.header("host"),
        Some(format!("a.test:{}", t.https.port()).as_str()),
        "h2's :authority becomes Host"
    );
    let seen = b.seen();
    assert_eq!(
        seen.last().unwrap().header("x-forwarded-proto"),
        Some("https")
    );

    // A name without a certificate gets no handshake (curl fails), never another's cert.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(&t.ca_file)
        .arg("--resolve")
        .arg(format!("c.test:{}:127.0.0.1", t.https.port()))
        .arg(format!("https://c.test:{}/", t.https.port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn plain_http_to_a_tls_route_is_redirected_except_acme_challenges() {
    let t = start(None, None);
    let a = Backend::start("app-a");
    let plain = Backend::start("plain");
    t.proxy
        .set_route(tls_route("a/web", "a.test", &a, Some(60)));
    t.proxy
        .set_route(route("p/web", &["p.test"], "/", "r1", &[&plain]));
    let raw = raw_exchange(
        t.proxy.addr,
        b"POST /form?x=1 HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert_eq!(status_of(&raw), Some(308), "{text}");
    assert!(
        text.contains(&format!(
            "location: https://a.test:{}/form?x=1",
            t.https.port()
        )),
        "{text}"
    );
    assert!(
        !text.contains("strict-transport-security"),
        "no HSTS over plain HTTP"
    );
    assert_eq!(a.count(), 0);
    // A route without TLS is served as before.
    let raw = raw_exchange(
        t.proxy.addr,
        b"GET / HTTP/1.1\r\nHost: p.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    assert_eq!(status_of(&raw), Some(200));

    // ACME HTTP-01: a registered token is answered by the proxy itself; an unknown one
    // goes to the app, never redirected.
    let reply = t.proxy.call(Request::Tls {
        request: TlsRequest::SetHttpChallenge {
            token: "tok123".into(),
            key_authorization: "tok123.thumb".into(),
        },
    });
    assert_eq!(reply, Reply::Done);
    let raw = raw_exchange(
        t.proxy.addr,
        b"GET /.well-known/acme-challenge/tok123 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(status_of(&raw), Some(200), "{text}");
    assert!(text.ends_with("tok123.thumb"), "{text}");
    let raw = raw_exchange(
        t.proxy.addr,
        b"GET /.well-known/acme-challenge/other HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    assert_eq!(status_of(&raw), Some(200));
    assert_eq!(a.count(), 1, "an unknown token reaches the app");
    t.proxy.call(Request::Tls {
        request: TlsRequest::RemoveHttpChallenge {
            token: "tok123".into(),
        },
    });
    let raw = raw_exchange(
        t.proxy.addr,
        b"GET /.well-known/acme-challenge/tok123 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    assert_eq!(status_of(&raw), Some(200));
    assert_eq!(
        a.count(),
        2,
        "a removed token is no longer answered by the proxy"
    );
}

/// A blocking TLS client trusting `ca`, sharing one session cache across connections.
struct Client {
    config: Arc<rustls::ClientConfig>,
}

impl Client {
    fn new(ca_pem: &str) -> Client {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Client {
            config: Arc::new(config),
        }
    }

    fn connect(&self, addr: SocketAddr, host: &str) -> Conn {
        let name = rustls_pki_types::ServerName::try_from(host.to_string()).unwrap();
        let conn = rustls::ClientConnection::new(self.config.clone(), name).unwrap();
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Conn {
            stream: BufReader::new(rustls::StreamOwned::new(conn, sock)),
        }
    }
}

struct Conn {
    stream: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

impl Conn {
    /// One keep-alive GET; returns (status, body).
    fn get(&mut self, host: &str, path: &str) -> (u16, String) {
        write!(
            self.stream.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"
        )
        .unwrap();
        self.stream.get_mut().flush().unwrap();
        let mut status = String::new();
        self.stream.read_line(&mut status).unwrap();
        let code: u16 = status.split(' ').nth(1).unwrap().parse().unwrap();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        std::io::Read::read_exact(&mut self.stream, &mut body).unwrap();
        (code, String::from_utf8(body).unwrap())
    }

    fn leaf_der(&self) -> Vec<u8> {
        self.stream.get_ref().conn.peer_certificates().unwrap()[0].to_vec()
    }

    fn resumed(&self) -> bool {
        self.stream.get_ref().conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[test]
fn a_new_certificate_serves_new_handshakes_while_open_connections_go_on_and_sessions_resume() {
    let t = start(None, None);
    let a = Backend::start("app-a");
    t.proxy.set_route(tls_route("a/web", "a.test", &a, None));
    let first = t.ca.issue(&["a.test"]);
    assert_eq!(set_cert(&t.proxy, &["a.test"], &first), Ok(Reply::Done));
    let client = Client::new(&t.ca.cert_pem);
    let mut open = client.connect(t.https, "a.test");
    assert_eq!(open.get("a.test", "/1"), (200, "app-a".into()));
    assert_eq!(open.leaf_der(), der_of(&first.cert_pem));

    // Resumption: the second handshake of the same client resumes its session.
    let mut again = client.connect(t.https, "a.test");
    assert_eq!(again.get("a.test", "/2"), (200, "app-a".into()));
    assert!(
        again.resumed(),
        "the second connection resumes the first session"
    );

    let second = t.ca.issue(&["a.test"]);
    assert_eq!(set_cert(&t.proxy, &["a.test"], &second), Ok(Reply::Done));
    assert_eq!(
        open.get("a.test", "/3"),
        (200, "app-a".into()),
        "the open connection goes on"
    );
    let fresh = Client::new(&t.ca.cert_pem);
    let mut new = fresh.connect(t.https, "a.test");
    assert_eq!(new.get("a.test", "/4"), (200, "app-a".into()));
    assert_eq!(
        new.leaf_der(),
        der_of(&second.cert_pem),
        "a new handshake gets the new certificate"
    );
}

#[test]
fn certificates_are_kept_0600_and_a_restarted_proxy_serves_them_and_bad_ones_are_refused() {
    let keep = hoist_testkit::tempdir();
    let certs = keep.path().join("certs.json");
    let ca = {
        let t = start(Some(&certs), None);
        let leaf = t.ca.issue(&["a.test", "www.a.test"]);
        assert_eq!(
            set_cert(&t.proxy, &["a.test", "www.a.test"], &leaf),
            Ok(Reply::Done)
        );
        // A key of another certificate, or garbage, is refused and changes nothing.
        let other = t.ca.issue(&["a.test"]);
        let mismatched = Leaf {
            cert_pem: other.cert_pem.clone(),
            key_pem: leaf.key_pem.clone(),
        };
        let err = set_cert(&t.proxy, &["a.test"], &mismatched).unwrap_err();
        assert!(err.contains("does not belong"), "{err}");
        let garbage = Leaf {
            cert_pem: "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".into(),
            key_pem: leaf.key_pem.clone(),
        };
        let err = set_cert(&t.proxy, &["a.test"], &garbage).unwrap_err();
        assert!(err.contains("PEM"), "{err}");
        let mode = std::fs::metadata(&certs).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let Reply::Certs { certs: listed } = t.proxy.call(Request::Tls {
            request: TlsRequest::Certs,
        }) else {
            panic!("certs")
        };
        assert_eq!(
            listed.iter().map(|c| c.domain.as_str()).collect::<Vec<_>>(),
            ["a.test", "www.a.test"]
        );
        assert!(
            listed.iter().all(|c| c.cert_pem == leaf.cert_pem),
            "the first certificate stays"
        );
        let ca = t.ca;
        drop(t.proxy);
        ca
    };
    let t = start(Some(&certs), Some(ca));
    let a = Backend::start("app-a");
    t.proxy
        .set_route(tls_route("a/web", "www.a.test", &a, None));
    let (code, _, _, body) = curl(&t, "--http2", "www.a.test", "/");
    assert_eq!((code, body.as_str()), (200, "app-a"));
    drop(t.dir);
}

/// Sends `request` over TLS (SNI `host`, ALPN http/1.1) and returns all the proxy said.
fn openssl_exchange(t: &Tls, host: &str, request: &str) -> String {
    let mut child = Command::new("timeout")
        .args([
            "20", "openssl", "s_client", "-quiet", "-ign_eof", "-connect",
        ])
        .arg(format!("127.0.0.1:{}", t.https.port()))
        .args(["-servername", host, "-alpn", "http/1.1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn http1_over_tls_gets_the_same_framing_and_host_checks_as_plain_http() {
    let t = start(None, None);
    let a = Backend::start("app-a");
    t.proxy.set_route(tls_route("a/web", "a.test", &a, None));
    assert_eq!(
        set_cert(&t.proxy, &["a.test"], &t.ca.issue(&["a.test"])),
        Ok(Reply::Done)
    );
    // Both framings in one head (RFC 9112 §6.1): refused, never forwarded.
    let said = openssl_exchange(
        &t,
        "a.test",
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert!(said.starts_with("HTTP/1.1 400"), "{said}");
    assert!(said.contains("Transfer-Encoding"), "{said}");
    // Two Host headers (RFC 9112 §3.2).
    let said = openssl_exchange(
        &t,
        "a.test",
        "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    );
    assert!(said.starts_with("HTTP/1.1 400"), "{said}");
    // A well-formed request on the same path is served.
    let said = openssl_exchange(
        &t,
        "a.test",
        "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    );
    assert!(said.starts_with("HTTP/1.1 200"), "{said}");
}

/// The canary's stickiness cookie is `Secure` when the request came over HTTPS (a browser
/// then never sends it over plain HTTP), and stays usable over plain HTTP otherwise.
#[test]
fn the_canary_cookie_is_secure_over_https_only() {
    let t = start(None, None);
    let (blue, green) = (Backend::start("blue"), Backend::start("green"));
    let mut r = tls_route("a/web", "a.test", &blue, None);
    r.tls.as_mut().unwrap().redirect_https = false;
    r.canary = Some(hoist_protocol::proxy::Canary {
        release: "green".into(),
        upstreams: vec![hoist_protocol::proxy::Upstream {
            addr: green.addr,
            instance: green.name.clone(),
        }],
        weight_bp: 5000,
    });
    t.proxy.set_route(r);
    assert_eq!(
        set_cert(&t.proxy, &["a.test"], &t.ca.issue(&["a.test"])),
        Ok(Reply::Done)
    );
    let cookie_in = |said: &str| {
        said.split("\r\n\r\n")
            .next()
            .unwrap()
            .lines()
            .find(|l| {
                l.to_ascii_lowercase()
                    .starts_with("set-cookie: hoist_canary=")
            })
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no canary cookie in {said}"))
    };
    let said = openssl_exchange(
        &t,
        "a.test",
        "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    );
    assert!(said.starts_with("HTTP/1.1 200"), "{said}");
    let over_tls = cookie_in(&said);
    assert!(over_tls.ends_with("; Secure"), "{over_tls}");
    let said = String::from_utf8_lossy(&raw_exchange(
        t.proxy.addr,
        b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(20),
    ))
    .into_owned();
    assert!(said.starts_with("HTTP/1.1 200"), "{said}");
    let plain = cookie_in(&said);
    assert!(!plain.contains("Secure"), "{plain}");
}

/// An ACME token as CAs make them (43 base64url characters), distinct per `n`.
fn acme_token(n: usize) -> String {
    format!("{n:0>10}E6Jyg8AtauVR3PxSsefWFPtIkStD8BF")
}

fn set_acme_peers(proxy: &Proxy, peers: &[String]) {
    assert_eq!(
        proxy.call(Request::Tls {
            request: TlsRequest::SetAcmePeers {
                app: "app".into(),
                peers: peers.to_vec(),
            },
        }),
        Reply::Done
    );
}

fn relays(proxy: &Proxy) -> [u64; 4] {
    match proxy.call(Request::Tls {
        request: TlsRequest::AcmeRelays,
    }) {
        Reply::AcmeRelays {
            relayed,
            missed,
            malformed,
            limited,
        } => [relayed, missed, malformed, limited],
        other => panic!("{other:?}"),
    }
}

/// The HTTP-01 peers the agent hands the proxy are persisted beside its certificates:
/// a proxy restarted while the agent is dead still relays a token another host holds.
#[test]
fn acme_peers_survive_a_restart_of_the_proxy_while_the_agent_is_away() {
    let holder = Proxy::start(config());
    let token = acme_token(1);
    let answer = format!("{token}.thumbprint_-");
    assert_eq!(
        holder.call(Request::Tls {
            request: TlsRequest::SetHttpChallenge {
                token: token.clone(),
                key_authorization: answer.clone(),
            },
        }),
        Reply::Done
    );
    let dir = hoist_testkit::tempdir();
    let certs = dir.path().join("certs.json");
    let with_file = || {
        let mut cfg = config();
        cfg.certs_file = Some(certs.clone());
        cfg
    };
    let path = format!("/.well-known/acme-challenge/{token}");
    let get = |proxy: &Proxy| {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
        String::from_utf8_lossy(&raw_exchange(
            proxy.addr,
            raw.as_bytes(),
            Duration::from_secs(20),
        ))
        .into_owned()
    };
    let first = Proxy::start(with_file());
    set_acme_peers(&first, &[holder.addr.to_string()]);
    let got = get(&first);
    assert!(
        got.starts_with("HTTP/1.1 200 ") && got.ends_with(&answer),
        "{got}"
    );
    drop(first);
    let mode = std::fs::metadata(&certs).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let restarted = Proxy::start(with_file());
    let got = get(&restarted);
    assert!(
        got.starts_with("HTTP/1.1 200 ") && got.ends_with(&answer),
        "a restarted proxy forgot its ACME peers: {got}"
    );
    assert_eq!(relays(&restarted), [1, 0, 0, 0]);
    // Forgetting them is persisted too.
    set_acme_peers(&restarted, &[]);
    drop(restarted);
    let again = Proxy::start(with_file());
    assert!(!get(&again).starts_with("HTTP/1.1 200 "));
    assert_eq!(relays(&again), [0, 0, 0, 0]);
}

/// A peer that counts the connections it accepts and, while `hold` is set, keeps them
/// open unanswered; otherwise it answers 404.
struct SlowPeer {
    addr: SocketAddr,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    hold: Arc<std::sync::atomic::AtomicBool>,
    held: Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl SlowPeer {
    fn start() -> SlowPeer {
        use std::sync::atomic::Ordering;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = SlowPeer {
            addr: l.local_addr().unwrap(),
            accepted: Default::default(),
            hold: Arc::new(true.into()),
            held: Default::default(),
        };
        let (accepted, hold, held) = (peer.accepted.clone(), peer.hold.clone(), peer.held.clone());
        // The thread ends with the test process (it blocks in accept).
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                accepted.fetch_add(1, Ordering::SeqCst);
                if hold.load(Ordering::SeqCst) {
                    held.lock().unwrap().push(s);
                } else {
                    let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                }
            }
        });
        peer
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Closes the held connections and answers from now on.
    fn release(&self) {
        self.hold.store(false, std::sync::atomic::Ordering::SeqCst);
        self.held.lock().unwrap().clear();
    }
}

/// Anyone can ask a proxy for random challenge paths, and each relay fans out to every
/// peer: only ACME-shaped tokens are relayed, at most 8 at once and at a bounded rate;
/// beyond that the answer is 429 with Retry-After, and every case is counted.
#[test]
fn acme_relays_take_only_acme_tokens_and_are_bounded_in_number_and_rate() {
    let started = std::time::Instant::now();
    let proxy = Proxy::start(config());
    let peer = SlowPeer::start();
    set_acme_peers(&proxy, &[peer.addr.to_string()]);
    let req = |token: &str| {
        format!("GET /.well-known/acme-challenge/{token} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    };

    // Not ACME tokens: never asked of the peers.
    for bad in [
        "short".to_string(),
        "a".repeat(129),
        format!("{}.x", acme_token(0)),
    ] {
        let got = raw_exchange(proxy.addr, req(&bad).as_bytes(), Duration::from_secs(20));
        assert_ne!(status_of(&got), Some(200), "{bad}");
    }
    assert_eq!(peer.accepted(), 0, "a malformed token was relayed");
    assert_eq!(relays(&proxy), [0, 0, 3, 0]);

    // 8 relays held by a peer that does not answer; the 9th is refused at once.
    let held: Vec<_> = (0..8)
        .map(|i| {
            let (addr, raw) = (proxy.addr, req(&acme_token(100 + i)));
            std::thread::spawn(move || raw_exchange(addr, raw.as_bytes(), Duration::from_secs(30)))
        })
        .collect();
    hoist_testkit::wait_until(Duration::from_secs(20), || peer.accepted() == 8)
        .expect("8 relays reach the peer");
    let got = raw_exchange(
        proxy.addr,
        req(&acme_token(200)).as_bytes(),
        Duration::from_secs(20),
    );
    let text = String::from_utf8_lossy(&got);
    assert_eq!(status_of(&got), Some(429), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("\r\nretry-after: 1\r\n"),
        "{text}"
    );
    assert_eq!(peer.accepted(), 8);
    peer.release();
    for h in held {
        assert_ne!(status_of(&h.join().unwrap()), Some(200));
    }
    assert_eq!(relays(&proxy), [0, 8, 3, 1]);

    // The rate: requests one after another soon meet 429, and no more were relayed than
    // the bucket allows for the time since the proxy started (20, then 5 a second).
    let mut refused = 0;
    for i in 0..400 {
        let got = raw_exchange(
            proxy.addr,
            req(&acme_token(1000 + i)).as_bytes(),
            Duration::from_secs(20),
        );
        if status_of(&got) == Some(429) {
            refused += 1;
            if refused == 5 {
                break;
            }
        }
    }
    let allowed = 20.0 + 5.0 * started.elapsed().as_secs_f64();
    assert_eq!(refused, 5, "no request was refused for the rate");
    assert!(
        peer.accepted() as f64 <= allowed + 1.0,
        "{} relays, the bucket allows {allowed}",
        peer.accepted()
    );
    let [relayed, missed, malformed, limited] = relays(&proxy);
    assert_eq!((relayed, malformed, limited), (0, 3, 6));
    assert_eq!(missed as usize, peer.accepted());
}
