//! `hoist init`'s library half: recognise the project in a directory (a Rust binary crate,
//! a Python web app, a Node app, or something else) and write a commented starter app file
//! for it that validates as is. Reads a few project files; never writes (the binary writes
//! the result, refusing to overwrite without `--force`).

use std::path::{Path, PathBuf};

/// Why the project could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What kind of project was found, with what the starter file needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Project {
    /// A Cargo package with a binary target.
    Rust {
        bin: String,
        web: bool,
    },
    /// `requirements.txt` or `pyproject.toml`; `module` is the WSGI `module:app` for gunicorn.
    Python {
        manifest: String,
        gunicorn: bool,
        module: String,
        entry: String,
        /// Flask's `templates` and `static` directories, those that exist.
        dirs: Vec<String>,
    },
    /// `package.json`; `start` is how the app is started.
    Node {
        start: String,
        build_script: bool,
        /// `dependencies` is not empty: they are installed at build time.
        deps: bool,
        /// `package-lock.json` exists, so `npm ci` can install exactly it.
        lockfile: bool,
    },
    Generic,
}

/// The detection result: the project, the app name to use, and a sentence for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub app: String,
    pub project: Project,
    /// Lowercase, values in backticks: "a Rust binary crate (`notes`)".
    pub summary: String,
}

/// Crates whose presence means the binary serves HTTP.
const RUST_WEB_CRATES: &[&str] = &[
    "axum",
    "actix-web",
    "rocket",
    "warp",
    "hyper",
    "poem",
    "tide",
    "salvo",
];

fn read_optional(path: &Path) -> Result<Option<String>, InitError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        // A file that is there but not text is treated as unusable, like a missing one.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Ok(None),
        Err(source) => Err(InitError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A valid app name from a package or directory name (`My_Site` → `my-site`).
pub fn app_name(raw: &str) -> String {
    let slug: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let slug = slug
        .trim_start_matches(|c: char| c.is_ascii_digit() || c == '-')
        .to_string();
    let mut slug: String = slug.chars().take(63).collect();
    slug = slug.trim_end_matches('-').to_string();
    if slug.is_empty() {
        "app".to_string()
    } else {
        slug
    }
}

/// Looks at `dir` and decides what kind of project it is.
pub fn detect(dir: &Path) -> Result<Detected, InitError> {
    let dir_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(text) = read_optional(&dir.join("Cargo.toml"))? {
        if let Some(d) = detect_rust(dir, &text) {
            return Ok(d);
        }
    }
    let requirements = read_optional(&dir.join("requirements.txt"))?;
    let pyproject = read_optional(&dir.join("pyproject.toml"))?;
    if requirements.is_some() || pyproject.is_some() {
        return Ok(detect_python(
            dir,
            &dir_name,
            requirements.as_deref(),
            pyproject.as_deref(),
        ));
    }
    if let Some(text) = read_optional(&dir.join("package.json"))? {
        return Ok(detect_node(dir, &dir_name, &text));
    }
    Ok(Detected {
        app: app_name(&dir_name),
        project: Project::Generic,
        summary: "no Rust, Python or Node project; writing a generic template".to_string(),
    })
}

fn detect_rust(dir: &Path, text: &str) -> Option<Detected> {
    let manifest: toml::Table = toml::from_str(text).ok()?;
    let package = manifest.get("package")?.as_table()?;
    let name = package.get("name")?.as_str()?.to_string();
    let declared_bin = manifest
        .get("bin")
        .and_then(|b| b.as_array())
        .and_then(|bins| bins.first())
        .and_then(|b| b.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_string);
    let bin = match declared_bin {
        Some(b) => b,
        None if dir.join("src/main.rs").is_file() => name.clone(),
        // A library crate: nothing to run.
        None => return None,
    };
    let deps = manifest.get("dependencies").and_then(|d| d.as_table());
    // A server on the standard library alone reads `PORT` as hoist hands it over.
    let reads_port = std::fs::read_to_string(dir.join("src/main.rs"))
        .is_ok_and(|main| main.contains("\"PORT\""));
    let web =
        reads_port || deps.is_some_and(|d| RUST_WEB_CRATES.iter().any(|c| d.contains_key(*c)));
    let kind = if web {
        "a Rust web server"
    } else {
        "a Rust binary"
    };
    Some(Detected {
        app: app_name(&name),
        summary: format!("{kind} crate (`{bin}`)"),
        project: Project::Rust { bin, web },
    })
}

fn detect_python(
    dir: &Path,
    dir_name: &str,
    requirements: Option<&str>,
    pyproject: Option<&str>,
) -> Detected {
    let mentions = |needle: &str| {
        requirements.is_some_and(|r| {
            r.lines()
                .any(|l| l.trim().to_ascii_lowercase().starts_with(needle))
        }) || pyproject.is_some_and(|p| p.to_ascii_lowercase().contains(needle))
    };
    let gunicorn = mentions("gunicorn");
    let name = pyproject
        .and_then(|p| toml::from_str::<toml::Table>(p).ok())
        .and_then(|t| t.get("project")?.get("name")?.as_str().map(str::to_string))
        .unwrap_or_else(|| dir_name.to_string());
    let entry = ["app.py", "wsgi.py", "main.py", "server.py"]
        .into_iter()
        .find(|f| dir.join(f).is_file())
        .unwrap_or("app.py")
        .to_string();
    let module = format!("{}:app", entry.trim_end_matches(".py"));
    let dirs = ["templates", "static"]
        .into_iter()
        .filter(|d| dir.join(d).is_dir())
        .map(str::to_string)
        .collect();
    let manifest = if requirements.is_some() {
        "requirements.txt"
    } else {
        "pyproject.toml"
    }
    .to_string();
    let summary = if gunicorn {
        format!("a Python web app served by gunicorn (`{module}`, from `{manifest}`)")
    } else {
        format!("a Python app (`{entry}`, from `{manifest}`)")
    };
    Detected {
        app: app_name(&name),
        summary,
        project: Project::Python {
            manifest,
            gunicorn,
            module,
            entry,
            dirs,
        },
    }
}

fn detect_node(dir: &Path, dir_name: &str, text: &str) -> Detected {
    let json: serde_json::Value = serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
    let name = json
        .get("name")
        .and_then(|n| n.as_str())
        .unwrap_or(dir_name);
    // A scoped package `@team/site` is named after its last part.
    let name = name.rsplit('/').next().unwrap_or(name);
    let scripts = json.get("scripts");
    let has_script = |s: &str| scripts.and_then(|sc| sc.get(s)).is_some();
    let start = if has_script("start") {
        "npm start".to_string()
    } else {
        let main = json
            .get("main")
            .and_then(|m| m.as_str())
            .unwrap_or("index.js");
        format!("node {main}")
    };
    Detected {
        app: app_name(name),
        summary: format!("a Node app (`{start}`, from `package.json`)"),
        project: Project::Node {
            start,
            build_script: has_script("build"),
            deps: json
                .get("dependencies")
                .and_then(|d| d.as_object())
                .is_some_and(|d| !d.is_empty()),
            lockfile: dir.join("package-lock.json").is_file(),
        },
    }
}

const HEADER: &str = "\
# hoist.toml: how hoist builds, runs and deploys this app.
# Check it with `hoist config`; deploy with `hoist deploy`.
# Durations are written like \"30s\", \"5m\", \"1h30m\"; sizes like \"512MiB\".
";

const WEB_SERVICE_NOTE: &str = "\
# hoist sets PORT for every instance: the app must listen on 127.0.0.1:$PORT.
# A new release takes traffic only once `health` answers 2xx, so make sure the
# app serves that path (or change it).
";

const TAIL: &str = r#"
[deploy]
keep_releases = 5
standby = "10m"    # the previous release stays warm this long for an instant rollback

# Periodic jobs run once per fleet and never overlap:
# [jobs.cleanup]
# command = "..."
# every = "1h"     # or: cron = "0 3 * * *"

# Without [[hosts]], hoist deploys to this machine (`local`). For servers:
# [[hosts]]
# name = "web1"
# ssh = "deploy@203.0.113.10"
"#;

fn web_service(command: &str) -> String {
    format!(
        "\n[services.web]\n{WEB_SERVICE_NOTE}command = {}\nreplicas = 2\nstop_timeout = \"30s\"\n\
         http = {{ domains = [\"*\"], health = \"/health\" }}    # \"*\" answers any host name\n",
        crate::tree::toml_quote(command)
    )
}

fn secrets_section() -> &'static str {
    "\n[secrets]\n# Names only; set the values on each host with `hoist secrets set NAME --app APP`.\nrequired = []\n"
}

/// The starter app file for `detected`. It validates as written.
pub fn starter(detected: &Detected) -> String {
    let q = crate::tree::toml_quote;
    let mut out = String::from(HEADER);
    out.push_str(&format!("\napp = {}\n", q(&detected.app)));
    match &detected.project {
        Project::Rust { bin, web } => {
            let path = format!("target/release/{bin}");
            out.push_str(&format!(
                "\n[build]\n# Runs before packaging; the release holds only what `include` matches.\n\
                 command = \"cargo build --release\"\ninclude = [{}]\n",
                q(&path)
            ));
            out.push_str("\n[env]\nRUST_LOG = \"info\"\n");
            out.push_str(secrets_section());
            if *web {
                out.push_str(&web_service(&format!("./{path}")));
            } else {
                out.push_str(&format!(
                    "\n[services.worker]\n# No web framework found, so this runs as a worker. For a web server, add\n\
                     # http = {{ domains = [\"*\"], health = \"/health\" }} and listen on $PORT.\n\
                     command = {}\nstop_timeout = \"30s\"\n",
                    q(&format!("./{path}"))
                ));
            }
        }
        Project::Python {
            manifest,
            gunicorn,
            module,
            entry,
            dirs,
        } => {
            let install = if manifest == "requirements.txt" {
                "python3 -m pip install --quiet --target vendor -r requirements.txt"
            } else {
                "python3 -m pip install --quiet --target vendor ."
            };
            // Only what exists: `templates/**` in a project without templates would
            // be a warning at every build.
            let mut include = vec![q("**/*.py"), q(manifest), q("vendor/**")];
            include.extend(dirs.iter().map(|d| q(&format!("{d}/**"))));
            out.push_str(&format!(
                "\n[build]\n# Dependencies are vendored into the release, so every host runs exactly\n\
                 # what was built and tested.\ncommand = {}\ninclude = [{}]\n\
                 exclude = [\"**/__pycache__/**\", \".venv/**\"]\n",
                q(install),
                include.join(", ")
            ));
            out.push_str("\n[env]\nPYTHONPATH = \"vendor\"\nPYTHONUNBUFFERED = \"1\"\n");
            out.push_str(secrets_section());
            let command = if *gunicorn {
                format!("python3 -m gunicorn -b 127.0.0.1:$PORT {module}")
            } else {
                format!("python3 {entry}")
            };
            out.push_str(&web_service(&command));
        }
        Project::Node {
            start,
            build_script,
            deps,
            lockfile,
        } => {
            // `npm ci` needs a lock file; with no dependencies there is nothing to install.
            let mut steps = Vec::new();
            match (*deps, *lockfile) {
                (true, true) => steps.push("npm ci"),
                (true, false) => steps.push("npm install"),
                (false, _) => {}
            }
            if *build_script {
                steps.push("npm run build");
            }
            let command = if steps.is_empty() {
                "# No dependencies or build script; uncomment to run a step before packaging:\n# command = \"npm ci\"\n".to_string()
            } else {
                format!(
                    "# Runs before packaging; node_modules goes into the release.\ncommand = {}\n",
                    q(&steps.join(" && "))
                )
            };
            out.push_str(&format!(
                "\n[build]\n{command}include = [\"**\"]\nexclude = [\".git/**\", \"**/*.log\"]\n"
            ));
            out.push_str("\n[env]\nNODE_ENV = \"production\"\n");
            out.push_str(secrets_section());
            out.push_str(&web_service(start));
        }
        Project::Generic => {
            out.push_str(
                "\n[build]\n# Uncomment to run a build step before packaging:\n# command = \"make\"\ninclude = [\"**\"]\n\
                 exclude = [\".git/**\"]\n",
            );
            out.push_str(secrets_section());
            out.push_str(&web_service("./bin/start"));
        }
    }
    out.push_str(TAIL);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_are_valid() {
        assert_eq!(app_name("My_Site"), "my-site");
        assert_eq!(app_name("2fast"), "fast");
        assert_eq!(app_name("---"), "app");
        assert_eq!(app_name("notes"), "notes");
    }

    #[test]
    fn every_starter_validates() {
        let projects = [
            Project::Rust {
                bin: "notes".into(),
                web: true,
            },
            Project::Rust {
                bin: "crunch".into(),
                web: false,
            },
            Project::Python {
                manifest: "requirements.txt".into(),
                gunicorn: true,
                module: "wsgi:app".into(),
                entry: "wsgi.py".into(),
                dirs: vec!["templates".into(), "static".into()],
            },
            Project::Python {
                manifest: "pyproject.toml".into(),
                gunicorn: false,
                module: "app:app".into(),
                entry: "app.py".into(),
                dirs: Vec::new(),
            },
            Project::Node {
                start: "npm start".into(),
                build_script: true,
                deps: true,
                lockfile: true,
            },
            Project::Node {
                start: "node server.js".into(),
                build_script: false,
                deps: false,
                lockfile: false,
            },
            Project::Generic,
        ];
        for project in projects {
            let detected = Detected {
                app: "demo".into(),
                project: project.clone(),
                summary: String::new(),
            };
            let text = starter(&detected);
            if let Err(e) = crate::parse_str("hoist.toml", &text) {
                panic!("{project:?}:\n{text}\n{}", crate::render(e.diagnostics()));
            }
        }
    }
}
