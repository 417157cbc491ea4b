//! The TLS keys of a web service's `http` table and `[acme]`: what they mean once
//! loaded, and the exact diagnostics (file:line:column) of their mistakes.

use std::time::Duration;

use expect_test::{expect, Expect};
use hoist_core::spec::{defaults, TlsSpec};

fn check(text: &str, expected: Expect) {
    match hoist_config::parse_str("hoist.toml", text) {
        Ok(_) => panic!("accepted"),
        Err(e) => expected.assert_eq(&hoist_config::render(e.diagnostics())),
    }
}

#[test]
fn tls_keys_load_with_their_defaults() {
    let loaded = hoist_config::parse_str(
        "hoist.toml",
        r#"
app = "notes"
[acme]
email = "ops@example.com"
directory = "https://localhost:14000/dir"
ca_roots = "/etc/hoist/pebble.pem"
[services.web]
command = "./app"
http = { domains = ["notes.example.com"], health = "/health", tls = "acme", hsts = "365d" }
[services.api]
command = "./app"
http = { domains = ["api.example.com"], health = "/health", tls = { cert = "/etc/c.pem", key = "/etc/k.pem" }, redirect_https = false }
[services.plain]
command = "./app"
http = { domains = ["plain.example.com"], health = "/health" }
"#,
    )
    .unwrap();
    let spec = loaded.spec;
    let web = spec.services["web"].http.as_ref().unwrap();
    assert_eq!(web.tls, Some(TlsSpec::Acme));
    assert!(web.redirect_https, "default true with tls");
    assert_eq!(web.hsts, Some(Duration::from_secs(365 * 86400)));
    let api = spec.services["api"].http.as_ref().unwrap();
    assert_eq!(
        api.tls,
        Some(TlsSpec::File {
            cert: "/etc/c.pem".into(),
            key: "/etc/k.pem".into()
        })
    );
    assert!(!api.redirect_https);
    assert_eq!(api.hsts, None, "off unless set");
    let plain = spec.services["plain"].http.as_ref().unwrap();
    assert_eq!((plain.tls.as_ref(), plain.redirect_https), (None, false));
    assert_eq!(spec.acme.email.as_deref(), Some("ops@example.com"));
    assert_eq!(spec.acme.directory, "https://localhost:14000/dir");
    assert_eq!(spec.acme.ca_roots.as_deref(), Some("/etc/hoist/pebble.pem"));

    let bare = hoist_config::parse_str("hoist.toml", "app = \"x\"\n").unwrap();
    assert_eq!(bare.spec.acme.directory, defaults::ACME_DIRECTORY);
}

#[test]
fn tls_mistakes_are_named_where_they_are() {
    check(
        r#"app = "notes"
[services.web]
command = "./app"
http = { health = "/health", tls = "letsencrypt" }
"#,
        expect![[r#"
            error: invalid `services.web.http.tls`: `letsencrypt` is neither `acme` nor a table of files
             --> hoist.toml:4:36
              |
            4 | http = { health = "/health", tls = "letsencrypt" }
              |                                    ^^^^^^^^^^^^^
              = hint: write `tls = "acme"` or `tls = { cert = "/etc/ssl/example.pem", key = "/etc/ssl/example.key" }`
        "#]],
    );
    check(
        r#"app = "notes"
[services.web]
command = "./app"
http = { health = "/health", tls = "acme" }
"#,
        expect![[r#"
            error: `services.web.http.tls` needs host names in `services.web.http.domains`, found `*`
             --> hoist.toml:4:1
              |
            4 | http = { health = "/health", tls = "acme" }
              | ^^^^
              = hint: list the names the certificate covers, e.g. `domains = ["example.com"]` (wildcards are not supported)
        "#]],
    );
    check(
        r#"app = "notes"
[services.web]
command = "./app"
http = { domains = ["a.example.com"], health = "/health", tls = { cert = "certs/a.pem" } }
"#,
        expect![[r#"
            error: missing key `key` in `services.web.http.tls`
             --> hoist.toml:4:65
              |
            4 | http = { domains = ["a.example.com"], health = "/health", tls = { cert = "certs/a.pem" } }
              |                                                                 ^^^^^^^^^^^^^^^^^^^^^^^^
              = hint: write `tls = "acme"` or `tls = { cert = "/etc/ssl/example.pem", key = "/etc/ssl/example.key" }`

            error: invalid `services.web.http.tls.cert`: `certs/a.pem` is not an absolute path
             --> hoist.toml:4:74
              |
            4 | http = { domains = ["a.example.com"], health = "/health", tls = { cert = "certs/a.pem" } }
              |                                                                          ^^^^^^^^^^^^^
              = hint: the file is read on the host by the agent: give its absolute path
        "#]],
    );
    check(
        r#"app = "notes"
[services.web]
command = "./app"
http = { domains = ["a.example.com"], health = "/health", hsts = "1y", redirect_https = true }
"#,
        expect![[r#"
            error: `services.web.http.hsts` needs `services.web.http.tls`
             --> hoist.toml:4:66
              |
            4 | http = { domains = ["a.example.com"], health = "/health", hsts = "1y", redirect_https = true }
              |                                                                  ^^^^
              = hint: add `tls = "acme"` or `tls = { cert = "/path/cert.pem", key = "/path/key.pem" }`

            error: invalid `services.web.http.hsts`: unknown duration unit `y` in `1y`; expected `ms`, `s`, `m`, `h` or `d`
             --> hoist.toml:4:66
              |
            4 | http = { domains = ["a.example.com"], health = "/health", hsts = "1y", redirect_https = true }
              |                                                                  ^^^^

            error: `services.web.http.redirect_https` needs `services.web.http.tls`
             --> hoist.toml:4:89
              |
            4 | http = { domains = ["a.example.com"], health = "/health", hsts = "1y", redirect_https = true }
              |                                                                                         ^^^^
              = hint: add `tls = "acme"` or `tls = { cert = "/path/cert.pem", key = "/path/key.pem" }`
        "#]],
    );
    check(
        r#"app = "notes"
[acme]
email = "mailto:ops@example.com"
directory = "http://acme.example.com/dir"
ca_roots = "roots.pem"
contact = "x"
"#,
        expect![[r#"
            error: invalid `acme.email`: `mailto:ops@example.com` is not an email address
             --> hoist.toml:3:9
              |
            3 | email = "mailto:ops@example.com"
              |         ^^^^^^^^^^^^^^^^^^^^^^^^
              = hint: write just the address: `email = "ops@example.com"`

            error: invalid `acme.directory`: `http://acme.example.com/dir` is not an https:// URL
             --> hoist.toml:4:13
              |
            4 | directory = "http://acme.example.com/dir"
              |             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
              = hint: the default is `https://acme-v02.api.letsencrypt.org/directory`

            error: invalid `acme.ca_roots`: `roots.pem` is not an absolute path
             --> hoist.toml:5:12
              |
            5 | ca_roots = "roots.pem"
              |            ^^^^^^^^^^^
              = hint: the PEM file is read on the host by the agent

            error: unknown key `contact` in `acme`
             --> hoist.toml:6:1
              |
            6 | contact = "x"
              | ^^^^^^^
              = hint: expected one of `email`, `directory`, `ca_roots`
        "#]],
    );
}
