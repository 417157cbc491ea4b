//! Shared by the app-file section tests: a one-web-service file to extend, and the
//! rendered refusal of a file that must not load.
#![allow(dead_code)] // each test file uses part of it

/// An app with one web service; each test appends the section it checks.
pub const WEB_APP: &str = r#"app = "notes"

[services.web]
command = "./app serve"
http = { domains = ["*"], health = "/health" }
"#;

/// The rendered diagnostics of `text`, which must be refused.
pub fn refused(text: &str) -> String {
    match hoist_config::parse_str("hoist.toml", text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => hoist_config::render(e.diagnostics()),
    }
}
