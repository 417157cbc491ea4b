//! `hoist plan`: what a deploy would change — services, jobs, environment and secret
//! names, files — and whether the host is ready for it (disk, secrets, the proxy, the
//! clock). Reads only: nothing on the host changes.

use std::collections::BTreeMap;

use hoist_artifact::{EntryKind, Limits, Manifest};
use hoist_core::spec::AppSpec;
use hoist_protocol::agent::{Changes, Plan, PlanCheck, PlanRequest};

use crate::Agent;

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

impl Agent {
    pub(crate) async fn plan(&self, req: PlanRequest) -> Result<Plan, String> {
        let new = Manifest::parse(req.manifest.as_bytes(), &Limits::default())
            .map_err(|e| crate::chain(&e))?;
        let spec = &req.spec;
        let app = spec.app.clone();
        let cur = self.state().current(&app).ok().flatten();
        let (old_spec, old_manifest) = match &cur {
            Some(c) => {
                let row = self.state().release(&app, &c.release).ok().flatten();
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
        checks.push(PlanCheck {
            name: "clock".into(),
            ok: true,
            detail: format!("agent time {} ms since the epoch", hoist_state::now_ms()),
        });
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
