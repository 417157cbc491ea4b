//! `hoist plan`: what a deploy would change — services, jobs, environment and secret
//! names, files — and whether the host is ready for it (disk, secrets, the proxy, the
//! clock). Reads only: nothing on the host changes.

use std::collections::BTreeMap;

use hoist_artifact::{EntryKind, Limits, Manifest};
use hoist_core::spec::AppSpec;
use hoist_protocol::agent::{Changes, Plan, PlanCheck, PlanRequest};

use crate::Agent;

/// How far this host's clock may be from the CLI's before the plan flags it: backups,
/// leases, schedules and the history are all stamped with it. The request's transit
/// time counts against it, so it is loose enough for a slow SSH hop.
const CLOCK_SKEW_MAX_MS: i64 = 2_000;

/// The `clock` check: this host's time against the one the CLI sent.
fn clock_check(agent_ms: i64, client_ms: Option<i64>) -> PlanCheck {
    let Some(client_ms) = client_ms else {
        return PlanCheck {
            name: "clock".into(),
            ok: true,
            detail: "not compared: the CLI sent no clock (an older hoist)".into(),
        };
    };
    let skew = agent_ms - client_ms;
    let secs = skew as f64 / 1000.0;
    if skew.abs() > CLOCK_SKEW_MAX_MS {
        PlanCheck {
            name: "clock".into(),
            ok: false,
            detail: format!(
                "this host's clock is {:.1} s {} this machine's (more than {} s): fix its time (NTP) before deploying",
                secs.abs(),
                if skew > 0 { "ahead of" } else { "behind" },
                CLOCK_SKEW_MAX_MS / 1000
            ),
        }
    } else {
        PlanCheck {
            name: "clock".into(),
            ok: true,
            detail: format!("within {:.1} s of this machine's", secs.abs().max(0.0)),
        }
    }
}

/// Compares two maps by key and (serialised) value.
fn diff<V: serde::Serialize>(old: &BTreeMap<String, V>, new: &BTreeMap<String, V>) -> Changes {
    let json = |v: &V| serde_json::to_string(v).unwrap_or_default();
    Changes {
        added: new
            .keys()
            .filter(|k| !old.contains_key(*k))
            .cloned()
            .collect(),
        removed: old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect(),
        changed: new
            .iter()
            .filter(|(k, v)| old.get(*k).is_some_and(|o| json(o) != json(v)))
            .map(|(k, _)| k.clone())
            .collect(),
    }
}

fn names(list: &[String]) -> BTreeMap<String, ()> {
    list.iter().map(|n| (n.clone(), ())).collect()
}

/// Path → what identifies its content (hash, target or "dir").
fn files(m: &Manifest) -> BTreeMap<String, String> {
    m.entries()
        .iter()
        .map(|e| {
            let id = match &e.kind {
                EntryKind::File { sha256, mode, .. } => format!("{}:{mode:o}", sha256.to_hex()),
                EntryKind::Dir { mode } => format!("dir:{mode:o}"),
                EntryKind::Symlink { target } => format!("link:{target}"),
            };
            (e.path.clone(), id)
        })
        .collect()
}

/// A host name as the proxy matches it: lowercase, without a trailing dot.
fn domain_key(d: &str) -> String {
    d.strip_suffix('.').unwrap_or(d).to_ascii_lowercase()
}

impl Agent {
    /// Domains and prefixes that `spec`'s web services on `host` would take from another
    /// app on this agent (the same domain, `*` included, and the same path prefix): the
    /// later deploy would otherwise silently take every request of the first.
    pub(crate) fn route_conflicts(&self, spec: &AppSpec, host: &str) -> Vec<String> {
        let mine: Vec<(String, &str, &str)> = spec
            .services_on(host)
            .keys()
            .filter_map(|name| {
                let http = spec.services.get(*name)?.http.as_ref()?;
                Some(
                    http.domains
                        .iter()
                        .map(move |d| (domain_key(d), http.path_prefix.as_str(), *name)),
                )
            })
            .flatten()
            .collect();
        let rt = self.rt();
        let mut out = Vec::new();
        let mut others: Vec<_> = rt.specs.iter().filter(|(a, _)| **a != spec.app).collect();
        others.sort_by(|a, b| a.0.cmp(b.0));
        for (other, (_, theirs)) in others {
            for (name, svc) in &theirs.services {
                let Some(http) = &svc.http else { continue };
                for d in &http.domains {
                    let key = domain_key(d);
                    for (domain, prefix, mine_name) in &mine {
                        if *domain == key && *prefix == http.path_prefix {
                            out.push(format!(
                                "domain `{d}` with prefix `{prefix}` (service `{mine_name}`) is held by app `{other}` (service `{name}`)"
                            ));
                        }
                    }
                }
            }
        }
        out
    }

    pub(crate) async fn plan(&self, req: PlanRequest) -> Result<Plan, String> {
        let new = Manifest::parse(req.manifest.as_bytes(), &Limits::default())
            .map_err(|e| crate::chain(&e))?;
        let spec = &req.spec;
        let app = spec.app.clone();
        let cur = self.db(|s| s.current(&app)).ok().flatten();
        let (old_spec, old_manifest) = match &cur {
            Some(c) => {
                let row = self.db(|s| s.release(&app, &c.release)).ok().flatten();
                let spec = row
                    .as_ref()
                    .and_then(|r| serde_json::from_str::<AppSpec>(&r.spec).ok());
                let manifest = row
                    .and_then(|r| Manifest::parse(r.manifest.as_bytes(), &Limits::default()).ok());
                (spec, manifest)
            }
            None => (None, None),
        };
        let empty_spec = BTreeMap::new();
        let services = match &old_spec {
            Some(o) => diff(&o.services, &spec.services),
            None => diff(&empty_spec, &spec.services),
        };
        let jobs = match &old_spec {
            Some(o) => diff(&o.jobs, &spec.jobs),
            None => diff(&BTreeMap::new(), &spec.jobs),
        };
        let env = diff(
            &old_spec.as_ref().map(|o| o.env.clone()).unwrap_or_default(),
            &spec.env,
        );
        let secrets = diff(
            &names(
                old_spec
                    .as_ref()
                    .map_or(&[][..], |o| &o.secrets.required[..]),
            ),
            &names(&spec.secrets.required),
        );
        let file_changes = diff(
            &old_manifest.as_ref().map(files).unwrap_or_default(),
            &files(&new),
        );
        let missing = self.store.missing(&new);
        let upload_bytes: u64 = new
            .entries()
            .iter()
            .filter_map(|e| match &e.kind {
                EntryKind::File { sha256, size, .. } if missing.contains(sha256) => Some(*size),
                _ => None,
            })
            .sum();

        let mut checks = Vec::new();
        let free = nix::sys::statvfs::statvfs(&self.paths.root)
            .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
            .unwrap_or(0);
        // The blobs, a tree of hardlinks and some headroom for logs and the database.
        let need = upload_bytes.saturating_mul(2) + 64 * 1024 * 1024;
        checks.push(PlanCheck {
            name: "disk".into(),
            ok: free >= need,
            detail: format!(
                "{} MiB free under `{}`, about {} MiB needed",
                free >> 20,
                self.paths.root.display(),
                need >> 20
            ),
        });
        let have = self.secrets.names(&app).unwrap_or_default();
        let absent: Vec<String> = spec
            .secrets
            .required
            .iter()
            .filter(|n| !have.contains(n))
            .map(|n| format!("`{n}`"))
            .collect();
        checks.push(PlanCheck {
            name: "secrets".into(),
            ok: absent.is_empty(),
            detail: if absent.is_empty() {
                format!("{} required, all set", spec.secrets.required.len())
            } else {
                format!("not set: {}", absent.join(", "))
            },
        });
        let web = spec.services.values().any(|s| s.http.is_some());
        let proxy_ok = match &self.proxy {
            Some(p) => p
                .request(hoist_protocol::proxy::Request::Ping)
                .await
                .is_ok(),
            None => !web,
        };
        checks.push(PlanCheck {
            name: "proxy".into(),
            ok: proxy_ok,
            detail: match (&self.config.proxy, proxy_ok) {
                (Some(a), true) => format!("listening on {a}"),
                (Some(a), false) => format!("not answering (listener {a})"),
                (None, _) if web => {
                    "this agent runs no proxy, so web services would get no traffic".into()
                }
                (None, _) => "not needed (no web service)".into(),
            },
        });
        let conflicts = self.route_conflicts(spec, &req.host);
        checks.push(PlanCheck {
            name: "routes".into(),
            ok: conflicts.is_empty(),
            detail: if conflicts.is_empty() {
                "no domain and prefix held by another app".into()
            } else {
                conflicts.join("; ")
            },
        });
        for (ok, detail) in self.plan_tls(spec) {
            checks.push(PlanCheck {
                name: "tls".into(),
                ok,
                detail,
            });
        }
        checks.push(PlanCheck {
            name: "host".into(),
            ok: spec.host(&req.host).is_some(),
            detail: format!(
                "deploying as host `{}`; it runs {:?}",
                req.host,
                spec.services_on(&req.host).keys().collect::<Vec<_>>()
            ),
        });
        checks.push(clock_check(hoist_state::now_ms(), req.client_time_ms));
        Ok(Plan {
            app,
            current: cur.map(|c| c.release),
            release: new.release().as_str().to_string(),
            services,
            jobs,
            env,
            secrets,
            files: file_changes,
            upload_bytes,
            checks,
        })
    }
}
