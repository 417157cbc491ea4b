//! HTTPS end to end through the real agent, proxy and CLI: certificates from files (SNI
//! across two apps, h2 and http/1.1 with curl, redirect, HSTS, serving while the agent is
//! SIGKILLed, bad files refused at plan and deploy with the running route untouched),
//! and ACME against a real Pebble (HTTP-01, TLS-ALPN-01, renewal, a failed renewal,
//! Pebble's default badNonce rejections).

mod common;
mod pebble;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{text, Host};
use hoist_testkit::certs::{Leaf, TestCa};
use hoist_testkit::{free_port, testapp_bin, wait_until};
use pebble::Pebble;

/// One raw request on a plain socket: (status, the whole response).
fn raw_exchange_status(addr: SocketAddr, request: &str) -> (Option<u16>, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let t = text(&raw);
    let status = t.split(' ').nth(1).and_then(|c| c.parse().ok());
    (status, t)
}

/// A host whose agent has an HTTPS listener too.
fn tls_host() -> (Host, SocketAddr) {
    let https = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let host = Host::with_agent_args(&["--https", &https.to_string()]);
    (host, https)
}

/// An app file for the test app named `app`, answering `domains`, with `http_extra`
/// keys in its `http` table and `top` lines at the top level.
fn project(
    host: &Host,
    dir: &str,
    app: &str,
    domains: &[&str],
    http_extra: &str,
    top: &str,
) -> PathBuf {
    let path = host.dir.join(dir);
    std::fs::create_dir_all(&path).unwrap();
    std::fs::write(path.join("VERSION"), dir).unwrap();
    let domains: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
    let toml = format!(
        r#"app = "{app}"
{top}
[build]
include = ["VERSION"]

[services.web]
command = "{bin} serve"
replicas = 1
stop_timeout = "5s"
http = {{ domains = [{domains}], health = {{ path = "/health", interval = "100ms", healthy_threshold = 2, min_healthy = "200ms" }}, drain_timeout = "2s"{http_extra} }}

[deploy]
health_deadline = "10s"
"#,
        bin = testapp_bin().display(),
        domains = domains.join(", "),
    );
    std::fs::write(path.join("hoist.toml"), toml).unwrap();
    path
}

fn file_tls(cert: &Path, key: &Path) -> String {
    format!(
        r#", tls = {{ cert = "{}", key = "{}" }}"#,
        cert.display(),
        key.display()
    )
}

fn write_leaf(dir: &Path, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    (cert, key)
}

fn cfg(project: &Path) -> String {
    project.join("hoist.toml").display().to_string()
}

/// `curl` over HTTPS to `host` resolved to 127.0.0.1: (status, http version, head, body).
fn curl(
    https: SocketAddr,
    ca: &Path,
    proto: &str,
    host: &str,
    path: &str,
) -> Result<(u16, String, String, String), String> {
    let out = Command::new("curl")
        .args(["-sS", proto, "--max-time", "20", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{host}:{}:127.0.0.1", https.port()))
        .args(["-D", "-", "-w", "\n%{http_code} %{http_version}"])
        .arg(format!("https://{host}:{}{path}", https.port()))
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(text(&out.stderr));
    }
    let t = text(&out.stdout);
    let (rest, last) = t.rsplit_once('\n').ok_or("no status line")?;
    let (code, version) = last.split_once(' ').ok_or("no version")?;
    let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    Ok((
        code.parse().map_err(|_| t.clone())?,
        version.into(),
        head.to_ascii_lowercase(),
        body.into(),
    ))
}

/// The SHA-256 fingerprint of the certificate served for `host` (SNI).
fn served_fingerprint(https: SocketAddr, host: &str) -> String {
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{} -servername {host} </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256",
            https.port()
        ))
        .output()
        .unwrap();
    text(&out.stdout).trim().to_string()
}

fn fingerprint_of(pem: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), pem.as_bytes()).unwrap();
    text(&child.wait_with_output().unwrap().stdout)
        .trim()
        .to_string()
}

fn certs_json(host: &Host, project: &Path) -> (Option<i32>, serde_json::Value) {
    let out = host.hoist(&["certs", "--json", "-c", &cfg(project)]);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("certs --json: {}{}", text(&out.stdout), text(&out.stderr)));
    (out.status.code(), v)
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn file_certificates_serve_h2_and_http1_by_sni_redirect_hsts_and_survive_agent_death() {
    let (mut host, https) = tls_host();
    let ca = TestCa::new("hoist e2e CA");
    let ca_file = host.dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let (a_cert, a_key) = write_leaf(&host.dir, "a", &ca.issue(&["a.test", "www.a.test"]));
    let (b_cert, b_key) = write_leaf(&host.dir, "b", &ca.issue(&["b.test"]));
    let a = project(
        &host,
        "a1",
        "alpha",
        &["a.test", "www.a.test"],
        &format!("{}, hsts = \"365d\"", file_tls(&a_cert, &a_key)),
        "",
    );
    let b = project(
        &host,
        "b1",
        "beta",
        &["b.test"],
        &format!("{}, redirect_https = false", file_tls(&b_cert, &b_key)),
        "",
    );

    let plan = host.hoist(&["plan", "-c", &cfg(&a)]);
    ok(&plan, "plan");
    let said = text(&plan.stdout) + &text(&plan.stderr);
    assert!(
        said.contains(&format!("certificate `{}`", a_cert.display()))
            && said.contains("valid until"),
        "{said}"
    );
    ok(&host.deploy(&a), "deploy a");
    ok(&host.deploy(&b), "deploy b");

    // SNI picks each app's certificate; h2 and http/1.1 both; the app sees https.
    let (code, version, head, body) =
        curl(https, &ca_file, "--http2", "a.test", "/headers").unwrap();
    assert_eq!((code, version.as_str()), (200, "2"), "{body}");
    assert!(
        head.contains("strict-transport-security: max-age=31536000"),
        "{head}"
    );
    assert!(
        body.to_ascii_lowercase().contains("x-forwarded-proto") && body.contains("https"),
        "{body}"
    );
    let (code, version, head, _) = curl(https, &ca_file, "--http1.1", "www.a.test", "/").unwrap();
    assert_eq!((code, version.as_str()), (200, "1.1"));
    assert!(head.contains("strict-transport-security"));
    let (code, version, head, _) = curl(https, &ca_file, "--http2", "b.test", "/").unwrap();
    assert_eq!((code, version.as_str()), (200, "2"));
    assert!(
        !head.contains("strict-transport-security"),
        "HSTS is off unless set: {head}"
    );
    assert_eq!(
        served_fingerprint(https, "a.test"),
        fingerprint_of(&std::fs::read_to_string(&a_cert).unwrap())
    );
    assert_eq!(
        served_fingerprint(https, "b.test"),
        fingerprint_of(&std::fs::read_to_string(&b_cert).unwrap())
    );

    // Plain HTTP: 308 to https for `alpha`; `beta` asked for no redirect.
    let raw = raw_exchange_status(
        host.proxy,
        "GET /x?y=1 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(raw.0, Some(308), "{}", raw.1);
    assert!(
        raw.1
            .to_ascii_lowercase()
            .contains(&format!("location: https://a.test:{}/x?y=1", https.port())),
        "{}",
        raw.1
    );
    let raw = raw_exchange_status(
        host.proxy,
        "GET / HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(raw.0, Some(200), "{}", raw.1);

    let (code, certs) = certs_json(&host, &a);
    assert_eq!(code, Some(0), "{certs}");
    let list = certs.as_array().unwrap();
    let domains: Vec<&str> = list.iter().map(|c| c["domain"].as_str().unwrap()).collect();
    assert_eq!(
        domains,
        ["a.test", "www.a.test"],
        "only the app of -c: {certs}"
    );
    assert!(
        list.iter()
            .all(|c| c["serving"] == true && c["source"].as_str().unwrap().starts_with("file")),
        "{certs}"
    );
    assert!(
        list[0]["issuer"].as_str().unwrap().contains("hoist e2e CA"),
        "{certs}"
    );
    assert!(
        !certs.to_string().contains("PRIVATE KEY"),
        "no key in --json"
    );
    let table = host.hoist(&["certs", "-c", &cfg(&a)]);
    ok(&table, "certs");
    let shown = text(&table.stdout);
    assert!(
        shown.contains("DOMAIN") && shown.contains("www.a.test") && shown.contains("hoist e2e CA"),
        "{shown}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(host.root.join("proxy/certs.json"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // The agent dies: HTTPS goes on, from the proxy alone.
    host.kill_agent();
    for name in ["a.test", "b.test"] {
        let (code, _, _, _) = curl(https, &ca_file, "--http2", name, "/").unwrap();
        assert_eq!(code, 200, "{name} while the agent is dead");
    }
    // Still without the agent, the proxy hands its sockets to a new process, which
    // serves the same certificates from its own saved copy.
    let before = common::proxy_pid(&host.root).unwrap();
    let out = Command::new(hoist_testkit::hoist_bin())
        .args(["proxy", "upgrade", "--control"])
        .arg(host.root.join("proxy/control.sock"))
        .output()
        .unwrap();
    ok(&out, "proxy upgrade");
    let after = common::proxy_pid(&host.root).unwrap();
    assert_ne!(before, after, "a new proxy process serves");
    for name in ["a.test", "b.test"] {
        let (code, version, _, _) = curl(https, &ca_file, "--http2", name, "/").unwrap();
        assert_eq!(
            (code, version.as_str()),
            (200, "2"),
            "{name} after the upgrade"
        );
    }
    assert_eq!(
        served_fingerprint(https, "a.test"),
        fingerprint_of(&std::fs::read_to_string(&a_cert).unwrap())
    );
    host.start_agent();
    let (code, _, _, _) = curl(https, &ca_file, "--http1.1", "a.test", "/").unwrap();
    assert_eq!(code, 200);
}

#[test]
fn bad_certificate_files_are_refused_at_plan_and_deploy_naming_the_file_and_the_route_is_untouched()
{
    let (host, https) = tls_host();
    let ca = TestCa::new("hoist e2e CA");
    let ca_file = host.dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let good = ca.issue(&["a.test"]);
    let (cert, key) = write_leaf(&host.dir, "good", &good);
    let first = project(
        &host,
        "v1",
        "alpha",
        &["a.test"],
        &file_tls(&cert, &key),
        "",
    );
    ok(&host.deploy(&first), "first deploy");
    let serving = served_fingerprint(https, "a.test");
    assert_eq!(serving, fingerprint_of(&good.cert_pem));

    let other = ca.issue(&["a.test"]);
    let (other_cert, _) = write_leaf(&host.dir, "other", &other);
    let (expired_cert, expired_key) =
        write_leaf(&host.dir, "expired", &ca.issue_expired(&["a.test"]));
    let (wrong_cert, wrong_key) = write_leaf(&host.dir, "wrong", &ca.issue(&["other.test"]));
    let garbage = host.dir.join("garbage.crt");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let missing = host.dir.join("missing.key");
    let cases: Vec<(&str, PathBuf, PathBuf, String)> = vec![
        (
            "unreadable",
            cert.clone(),
            missing.clone(),
            format!("cannot read `{}`", missing.display()),
        ),
        (
            "malformed",
            garbage.clone(),
            key.clone(),
            format!("`{}` is not a PEM certificate", garbage.display()),
        ),
        (
            "mismatched",
            other_cert.clone(),
            key.clone(),
            format!(
                "does not belong to the certificate `{}`",
                other_cert.display()
            ),
        ),
        (
            "expired",
            expired_cert.clone(),
            expired_key.clone(),
            format!("the certificate `{}` expired", expired_cert.display()),
        ),
        (
            "not covering",
            wrong_cert.clone(),
            wrong_key.clone(),
            format!("`{}` does not cover `a.test`", wrong_cert.display()),
        ),
    ];
    for (i, (what, c, k, want)) in cases.into_iter().enumerate() {
        let p = project(
            &host,
            &format!("bad{i}"),
            "alpha",
            &["a.test"],
            &file_tls(&c, &k),
            "",
        );
        let plan = host.hoist(&["plan", "-c", &cfg(&p)]);
        let said = text(&plan.stdout) + &text(&plan.stderr);
        assert!(!plan.status.success(), "{what}: plan passed:\n{said}");
        assert!(said.contains(&want), "{what}: plan says:\n{said}");
        let out = host.deploy(&p);
        let said = text(&out.stdout) + &text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: deploy:\n{said}");
        assert!(said.contains(&want), "{what}: deploy says:\n{said}");
        assert_eq!(
            served_fingerprint(https, "a.test"),
            serving,
            "{what}: the running route is untouched"
        );
        let (code, _, _, _) = curl(https, &ca_file, "--http2", "a.test", "/").unwrap();
        assert_eq!(code, 200, "{what}");
    }
}

fn deploy_acme(host: &Host, pebble: &Pebble, dir: &str, app: &str, domain: &str) -> PathBuf {
    let p = project(
        host,
        dir,
        app,
        &[domain],
        ", tls = \"acme\", hsts = \"1d\"",
        &pebble.acme_table(),
    );
    let plan = host.hoist(&["plan", "-c", &cfg(&p)]);
    ok(&plan, "plan");
    let said = text(&plan.stdout) + &text(&plan.stderr);
    assert!(
        said.contains("will be requested from"),
        "plan says a certificate will be requested:\n{said}"
    );
    let out = host.deploy(&p);
    ok(&out, "deploy");
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(
        said.contains(&format!("certificate issued for {domain}")),
        "{said}"
    );
    p
}

#[test]
fn acme_http01_issues_before_the_route_serves_https_and_the_account_key_is_private() {
    let (host, https) = tls_host();
    let pebble = Pebble::start(&host.dir, host.proxy.port(), https.port(), None);
    let p = deploy_acme(&host, &pebble, "acme1", "alpha", "acme.test");
    let root = pebble.issuing_root(&host.dir);
    let (code, version, head, _) = curl(https, &root, "--http2", "acme.test", "/").unwrap();
    assert_eq!((code, version.as_str()), (200, "2"));
    assert!(head.contains("strict-transport-security: max-age=86400"));
    let (code, certs) = certs_json(&host, &p);
    assert_eq!(code, Some(0), "{certs}");
    assert_eq!(certs[0]["source"], "acme");
    assert_eq!(certs[0]["serving"], true);
    assert_eq!(certs[0]["last"]["ok"], true, "{certs}");
    assert!(
        certs[0]["issuer"]
            .as_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("pebble"),
        "{certs}"
    );
    for entry in std::fs::read_dir(host.root.join("acme")).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("account-") {
            let mode =
                std::os::unix::fs::PermissionsExt::mode(&entry.metadata().unwrap().permissions());
            assert_eq!(mode & 0o777, 0o600, "the account key is private");
        }
    }
    // The plan of the same app now finds the certificate there.
    let plan = host.hoist(&["plan", "-c", &cfg(&p)]);
    let said = text(&plan.stdout) + &text(&plan.stderr);
    assert!(
        said.contains("ACME certificate for acme.test held"),
        "{said}"
    );
}

#[test]
fn acme_falls_back_to_tls_alpn01_on_the_https_listener() {
    let (host, https) = tls_host();
    // Pebble's HTTP-01 validation goes to a closed port: only TLS-ALPN-01 can succeed.
    let pebble = Pebble::start(&host.dir, free_port(), https.port(), None);
    let p = deploy_acme(&host, &pebble, "alpn1", "alpha", "alpn.test");
    let root = pebble.issuing_root(&host.dir);
    let (code, _, _, _) = curl(https, &root, "--http1.1", "alpn.test", "/").unwrap();
    assert_eq!(code, 200);
    let (code, certs) = certs_json(&host, &p);
    assert_eq!(code, Some(0), "{certs}");
}

#[test]
fn short_lived_acme_certificates_are_renewed_and_served_without_a_restart() {
    let (host, https) = tls_host();
    let pebble = Pebble::start(&host.dir, host.proxy.port(), https.port(), Some(30));
    let p = deploy_acme(&host, &pebble, "renew1", "alpha", "renew.test");
    let first = served_fingerprint(https, "renew.test");
    assert!(!first.is_empty());
    // Renewal at two thirds of 30 s (plus at most 1 s of jitter).
    wait_until(Duration::from_secs(60), || {
        let (_, certs) = certs_json(&host, &p);
        certs[0]["last"]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("renewed")
    })
    .expect("renewed");
    let second = served_fingerprint(https, "renew.test");
    assert_ne!(
        first, second,
        "the renewed certificate serves new handshakes"
    );
    let root = pebble.issuing_root(&host.dir);
    let (code, _, _, _) = curl(https, &root, "--http2", "renew.test", "/").unwrap();
    assert_eq!(code, 200);
}

/// `hoist doctor --json`: (exit code, the finding `id`).
fn doctor_finding(host: &Host, project: &Path, id: &str) -> (Option<i32>, serde_json::Value) {
    let out = host.hoist(&["doctor", "--json", "-c", &cfg(project)]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", text(&out.stdout), text(&out.stderr)));
    let f = v
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no {id} in {v}"));
    (out.status.code(), f)
}

#[test]
fn a_failed_renewal_is_an_event_and_the_old_certificate_keeps_serving() {
    let receiver = common::Receiver::start();
    let (host, https) = tls_host();
    // No authorization reused: a renewal is validated again, so it can fail.
    let pebble = Pebble::start_with(
        &host.dir,
        host.proxy.port(),
        https.port(),
        Some(60),
        &[("PEBBLE_AUTHZREUSE", "0")],
    );
    let p = project(
        &host,
        "fail1",
        "alpha",
        &["fail.test"],
        ", tls = \"acme\"",
        &format!(
            "{}\n[alerts]\nwebhook = \"http://{}/hook\"\n",
            pebble.acme_table(),
            receiver.addr
        ),
    );
    ok(&host.deploy(&p), "deploy");
    let root = pebble.issuing_root(&host.dir);
    let first = served_fingerprint(https, "fail.test");
    // Before the renewal (at ~40 s) the domain moves elsewhere in the CA's DNS: Pebble's
    // validator connects to 127.0.0.2, where nothing listens, and refuses the challenges.
    pebble.resolve("fail.test", Some("127.0.0.2"));
    wait_until(Duration::from_secs(90), || {
        let (_, certs) = certs_json(&host, &p);
        certs[0]["last"]["ok"] == false
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: the renewal never failed: {}\n{}",
            certs_json(&host, &p).1,
            text(&host.hoist(&["events", "--json"]).stdout)
        )
    });
    // The old certificate still serves (checked first: it is valid for 60 s only).
    assert_eq!(
        served_fingerprint(https, "fail.test"),
        first,
        "the old certificate still serves"
    );
    let (code, _, _, _) = curl(https, &root, "--http2", "fail.test", "/").unwrap();
    assert_eq!(code, 200);
    let (code, certs) = certs_json(&host, &p);
    assert_eq!(code, Some(3), "a failed renewal needs attention: {certs}");
    let ca_said = certs[0]["last"]["message"].as_str().unwrap().to_string();
    assert!(
        ca_said.contains("urn:ietf:params:acme:error:") && ca_said.contains("127.0.0.2"),
        "the CA's own error: {certs}"
    );
    assert!(
        certs[0]["problem"]
            .as_str()
            .unwrap()
            .contains("the last renewal failed"),
        "{certs}"
    );
    let events = host.hoist(&["events", "--json"]);
    assert!(
        text(&events.stdout).contains("cert.renew_failed"),
        "{}",
        text(&events.stdout)
    );
    // doctor fails it with the CA's error.
    let (code, f) = doctor_finding(&host, &p, "certs.expiry");
    assert_eq!(f["status"], "fail", "{f}");
    assert_eq!(code, Some(1), "{f}");
    let evidence = f["evidence"][0].as_str().unwrap();
    assert!(
        evidence.contains("`fail.test` (acme)")
            && evidence.contains("the last renewal failed")
            && evidence.contains("127.0.0.2"),
        "{f}"
    );
    // The `cert_renewal_failed` alert reaches the webhook, with the CA's error.
    wait_until(Duration::from_secs(60), || {
        receiver.find("firing", "cert_renewal_failed").is_some()
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", receiver.got.lock().unwrap()));
    let fired = receiver.find("firing", "cert_renewal_failed").unwrap();
    let alert = &fired["alerts"][0];
    assert_eq!(alert["labels"]["domain"], "fail.test", "{alert}");
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("127.0.0.2"),
        "{alert}"
    );

    // The domain points here again: the next retry renews, doctor no longer fails it,
    // the alert resolves and the new certificate serves.
    pebble.resolve("fail.test", None);
    wait_until(Duration::from_secs(60), || {
        let (_, certs) = certs_json(&host, &p);
        certs[0]["last"]["ok"] == true
    })
    .expect("renewed once the domain resolves here");
    let (_, f) = doctor_finding(&host, &p, "certs.expiry");
    assert_ne!(f["status"], "fail", "{f}");
    assert!(!f.to_string().contains("renewal failed"), "{f}");
    wait_until(Duration::from_secs(60), || {
        receiver.find("resolved", "cert_renewal_failed").is_some()
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", receiver.got.lock().unwrap()));
    assert_ne!(served_fingerprint(https, "fail.test"), first);
    let (code, _, _, _) = curl(https, &root, "--http2", "fail.test", "/").unwrap();
    assert_eq!(code, 200);
}

#[test]
fn https_without_a_proxy_listener_is_bad_usage() {
    let dir = hoist_testkit::tempdir();
    let out = Command::new(hoist_testkit::hoist_bin())
        .args(["agent", "--https", "127.0.0.1:0", "--root"])
        .arg(dir.path().join("root"))
        .arg("--socket")
        .arg(dir.path().join("agent.sock"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("needs `--proxy`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn acme_survives_a_ca_that_rejects_half_of_all_nonces() {
    let (host, https) = tls_host();
    let pebble = Pebble::start_with(
        &host.dir,
        host.proxy.port(),
        https.port(),
        None,
        &[("PEBBLE_WFE_NONCEREJECT", "50")],
    );
    deploy_acme(&host, &pebble, "nonce1", "alpha", "nonce.test");
    let root = pebble.issuing_root(&host.dir);
    let (code, _, _, _) = curl(https, &root, "--http2", "nonce.test", "/").unwrap();
    assert_eq!(code, 200);
    let log = std::fs::read_to_string(host.dir.join("agent.log")).unwrap();
    assert!(
        log.contains("badNonce"),
        "with half of all nonces rejected, some were (and were retried)"
    );
}

#[test]
fn https_keeps_serving_keep_alive_clients_through_proxy_upgrades() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let (host, https) = tls_host();
    let ca = TestCa::new("hoist e2e CA");
    let ca_file = host.dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let (cert, key) = write_leaf(&host.dir, "a", &ca.issue(&["a.test"]));
    let p = project(
        &host,
        "up1",
        "alpha",
        &["a.test"],
        &file_tls(&cert, &key),
        "",
    );
    ok(&host.deploy(&p), "deploy");
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    // Each curl sends 40 requests on one kept connection (HTTP/1.1 or HTTP/2).
    let load: Vec<_> = (0..4)
        .map(|i| {
            let (stop, served, failures) = (stop.clone(), served.clone(), failures.clone());
            let ca_file = ca_file.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let url = format!("https://a.test:{}/", https.port());
                    let out = Command::new("curl")
                        .args(["-sS", if i % 2 == 0 { "--http1.1" } else { "--http2" }])
                        .args(["--max-time", "30", "--cacert"])
                        .arg(&ca_file)
                        .arg("--resolve")
                        .arg(format!("a.test:{}:127.0.0.1", https.port()))
                        .args(["-w", "%{http_code}\n"])
                        .args((0..40).flat_map(|_| ["-o", "/dev/null", url.as_str()]))
                        .output()
                        .unwrap();
                    for code in text(&out.stdout).lines() {
                        if code == "200" {
                            served.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{code}: {}", text(&out.stderr)));
                        }
                    }
                    if !out.status.success() {
                        failures.lock().unwrap().push(text(&out.stderr));
                    }
                }
            })
        })
        .collect();
    wait_until(Duration::from_secs(30), || {
        served.load(Ordering::Relaxed) > 200
    })
    .unwrap();
    let mut pids = vec![common::proxy_pid(&host.root).unwrap()];
    for _ in 0..2 {
        let out = Command::new(hoist_testkit::hoist_bin())
            .args(["proxy", "upgrade", "--control"])
            .arg(host.root.join("proxy/control.sock"))
            .output()
            .unwrap();
        ok(&out, "proxy upgrade");
        let pid = common::proxy_pid(&host.root).unwrap();
        assert!(!pids.contains(&pid));
        pids.push(pid);
        let before = served.load(Ordering::Relaxed);
        wait_until(Duration::from_secs(30), || {
            served.load(Ordering::Relaxed) > before + 200
        })
        .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} served, failures: {:?}",
        served.load(Ordering::Relaxed),
        &failures[..failures.len().min(5)]
    );
}

#[test]
fn a_certificate_file_replaced_on_the_host_is_served_without_a_deploy() {
    let (host, https) = tls_host();
    let ca = TestCa::new("hoist e2e CA");
    let first = ca.issue(&["a.test"]);
    let (cert, key) = write_leaf(&host.dir, "a", &first);
    let p = project(
        &host,
        "rot1",
        "alpha",
        &["a.test"],
        &file_tls(&cert, &key),
        "",
    );
    ok(&host.deploy(&p), "deploy");
    assert_eq!(
        served_fingerprint(https, "a.test"),
        fingerprint_of(&first.cert_pem)
    );
    // As certbot would: both files replaced (key first, then the certificate).
    let second = ca.issue(&["a.test"]);
    std::fs::write(&key, &second.key_pem).unwrap();
    std::fs::write(&cert, &second.cert_pem).unwrap();
    wait_until(Duration::from_secs(60), || {
        served_fingerprint(https, "a.test") == fingerprint_of(&second.cert_pem)
    })
    .expect("the new certificate serves");
}

#[test]
fn a_crashed_proxy_is_restarted_on_the_https_socket_the_agent_holds() {
    let (host, https) = tls_host();
    let ca = TestCa::new("hoist e2e CA");
    let ca_file = host.dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let (cert, key) = write_leaf(&host.dir, "a", &ca.issue(&["a.test"]));
    let a = project(
        &host,
        "a1",
        "alpha",
        &["a.test"],
        &file_tls(&cert, &key),
        "",
    );
    ok(&host.deploy(&a), "deploy");
    assert_eq!(
        curl(https, &ca_file, "--http2", "a.test", "/").unwrap().0,
        200
    );
    // The agent is frozen, so nothing restarts the proxy until it is thawed: an HTTPS
    // client that connects meanwhile waits in the queue of the socket the agent holds
    // (without it, the port would be closed and the client refused at once).
    let agent = nix::unistd::Pid::from_raw(host.agent.as_ref().unwrap().child.id() as i32);
    let pid = common::proxy_pid(&host.root).unwrap();
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGSTOP).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Dead (a zombie until the frozen agent reaps it): its sockets are closed.
    wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    })
    .expect("the proxy died");
    let waiting = {
        let ca_file = ca_file.clone();
        std::thread::spawn(move || curl(https, &ca_file, "--http1.1", "a.test", "/"))
    };
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGCONT).unwrap();
    let answer = waiting.join().unwrap();
    assert_eq!(
        answer.as_ref().map(|a| a.0),
        Ok(200),
        "the client that came while the proxy was dead: {answer:?}"
    );
    let after = common::proxy_pid(&host.root).unwrap();
    assert_ne!(after, pid, "a new proxy serves");
    assert_eq!(
        curl(https, &ca_file, "--http2", "a.test", "/").unwrap().0,
        200
    );
}

/// `/metrics` carries each HTTPS domain's certificate expiry, in the future for a fresh
/// certificate (the series an expiry alert is written on).
#[test]
fn metrics_show_each_domains_certificate_expiry() {
    let https = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let host = Host::with_agent_args(&[
        "--https",
        &https.to_string(),
        "--metrics",
        &metrics.to_string(),
    ]);
    let ca = TestCa::new("hoist metrics CA");
    let (cert, key) = write_leaf(&host.dir, "a", &ca.issue(&["a.test"]));
    let a = project(
        &host,
        "m1",
        "alpha",
        &["a.test"],
        &file_tls(&cert, &key),
        "",
    );
    ok(&host.deploy(&a), "deploy");
    let token = std::fs::read_to_string(host.root.join("metrics.token")).unwrap();
    let mut s = std::net::TcpStream::connect(metrics).unwrap();
    std::io::Write::write_all(
        &mut s,
        format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            token.trim()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut body = String::new();
    std::io::Read::read_to_string(&mut s, &mut body).unwrap();
    let line = body
        .lines()
        .find(|l| {
            l.starts_with("hoist_certificate_expiry_timestamp_seconds{")
                && l.contains("domain=\"a.test\"")
                && l.contains("app=\"alpha\"")
        })
        .unwrap_or_else(|| panic!("no expiry series: {body}"));
    let at: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(at > now, "{line}");
}

/// The Pebble helper's ports are picked free, but another process can take one before
/// the server binds it (a connect to the port then reaches that process, which once
/// made a test talk to the wrong server): a server that exits, or whose port another
/// process holds, is started again on new ports, and only a server that owns its ports
/// and answers as itself is used. Driven here with the real pebble-challtestsrv, whose
/// management port the test itself holds on the first attempt.
#[test]
fn the_pebble_helper_starts_a_server_again_when_another_process_holds_its_port() {
    use pebble::{owner, start_owning, Owner};
    let dir = hoist_testkit::tempdir();
    let intruder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = intruder.local_addr().unwrap().port();
    let mut attempts = 0;
    let (guard, management) = start_owning("pebble-challtestsrv", dir.path(), || {
        attempts += 1;
        // The first attempt gets a port the test holds; the second no server to run
        // (it exits).
        let dns = format!("127.0.0.1:{}", free_port());
        let (dns, management) = match attempts {
            1 => (dns, taken),
            2 => (String::new(), free_port()),
            _ => (dns, free_port()),
        };
        let guard = hoist_testkit::ChildGuard::spawn(
            Command::new("pebble-challtestsrv")
                .args(["-http01", "", "-https01", "", "-tlsalpn01", "", "-dns01"])
                .arg(dns)
                .arg("-management")
                .arg(format!("127.0.0.1:{management}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .expect("pebble-challtestsrv (apt-get install pebble)");
        let ready = move || {
            Command::new("curl")
                .args(["-sSf", "--max-time", "5", "-d", r#"{"ip":"127.0.0.1"}"#])
                .arg(format!("http://127.0.0.1:{management}/set-default-ipv4"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let sockets = vec![("tcp", management)];
        (
            guard,
            management,
            sockets,
            Box::new(ready) as Box<dyn Fn() -> bool>,
        )
    });
    assert_eq!(
        attempts, 3,
        "the held port and the exit were each noticed once"
    );
    assert_ne!(management, taken);
    assert_eq!(owner(guard.pid(), "tcp", management), Owner::Itself);
    assert_eq!(owner(guard.pid(), "tcp", taken), Owner::Other);
    drop(intruder);
    assert_eq!(owner(guard.pid(), "tcp", taken), Owner::Nobody);
}
