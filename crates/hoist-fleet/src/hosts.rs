//! The hosts one command reaches, and asking them all at once. Every command goes through
//! here, so a single host is a fleet of one: the app file's hosts become [`Target`]s
//! (this machine's agent for the host `local` without an address, the others over ssh),
//! `--host` picks some, [`each`] asks them in parallel and [`exit_code`] and [`merge`]
//! turn the answers into one result. It never prints.

use std::path::Path;
use std::sync::Arc;

use futures_util::future::join_all;
use hoist_client::{Client, ClientError};
use hoist_core::spec::{defaults::LOCAL_HOST, AppSpec};

use crate::rollout::Target;
use crate::ssh::{HostKeys, Remote, SshError};

/// Whether the app file names hosts reached over SSH (else it is this machine alone).
pub fn is_fleet(spec: &AppSpec) -> bool {
    spec.hosts.iter().any(|h| h.ssh.is_some())
}

/// One target per host of the app file. An app file without ssh hosts is this machine's
/// agent alone, as the host `local`. `base` is the app file's directory (for relative
/// `[ssh]` paths), `control` the ssh master sockets' directory.
pub fn targets(
    spec: &AppSpec,
    base: &Path,
    local: &Client,
    keys: HostKeys,
    control: &Path,
) -> Result<Vec<Target>, SshError> {
    let local_target = |name: &str| Target {
        name: name.to_string(),
        client: local.clone(),
        remote: None,
    };
    if !is_fleet(spec) {
        return Ok(vec![local_target(LOCAL_HOST)]);
    }
    spec.hosts
        .iter()
        // Files hosts have no agent: they are driven by `files`, never through a client.
        .filter(|h| h.files.is_none())
        .map(|h| {
            if h.ssh.is_none() && h.name == LOCAL_HOST {
                return Ok(local_target(&h.name));
            }
            let remote = Remote::new(h, &spec.ssh, base, control, keys)?;
            Ok(Target {
                name: h.name.clone(),
                client: remote.client(),
                remote: Some(Arc::new(remote)),
            })
        })
        .collect()
}

/// `--host` named a host the app file does not have.
#[derive(Debug, thiserror::Error)]
#[error("the app file has no host `{name}` (it has {})", known.join(", "))]
pub struct UnknownHost {
    pub name: String,
    pub known: Vec<String>,
}

/// The targets named in `names` (all of them when `names` is empty), in file order.
pub fn pick(targets: Vec<Target>, names: &[String]) -> Result<Vec<Target>, UnknownHost> {
    if let Some(name) = names
        .iter()
        .find(|n| !targets.iter().any(|t| &t.name == *n))
    {
        return Err(UnknownHost {
            name: name.clone(),
            known: targets.iter().map(|t| t.name.clone()).collect(),
        });
    }
    Ok(targets
        .into_iter()
        .filter(|t| names.is_empty() || names.contains(&t.name))
        .collect())
}

/// A host's failed answer: one line (a bridge's failure in ssh's terms) and the error.
#[derive(Debug)]
pub struct HostError {
    pub message: String,
    pub source: ClientError,
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// One host's answer.
#[derive(Debug)]
pub struct Answer<T> {
    pub host: String,
    pub result: Result<T, HostError>,
}

/// Asks every target at once; the answers come back in the targets' order.
pub async fn each<T, F, Fut>(targets: &[Target], ask: F) -> Vec<Answer<T>>
where
    F: Fn(&Target) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    join_all(targets.iter().map(|t| {
        let fut = ask(t);
        async move {
            let result = fut.await.map_err(|source| HostError {
                message: t.explain(&source),
                source,
            });
            Answer {
                host: t.name.clone(),
                result,
            }
        }
    }))
    .await
}

/// The exit code of design §5 for answers from several hosts: 0 when every host
/// answered, 1 when none did, 3 when some did (the others are named in the output).
pub fn exit_code<T>(answers: &[Answer<T>]) -> i32 {
    let failed = answers.iter().filter(|a| a.result.is_err()).count();
    match failed {
        0 => 0,
        n if n == answers.len() => 1,
        _ => 3,
    }
}

/// Every host's items in one list, ordered by `key` (ties: host order), each with its
/// host; hosts that failed contribute nothing.
pub fn merge<'a, T, K: Ord>(
    answers: &'a [Answer<Vec<T>>],
    key: impl Fn(&T) -> K,
) -> Vec<(&'a str, &'a T)> {
    let mut merged: Vec<(usize, &'a str, &'a T)> = answers
        .iter()
        .enumerate()
        .filter_map(|(i, a)| a.result.as_ref().ok().map(|items| (i, a, items)))
        .flat_map(|(i, a, items)| items.iter().map(move |item| (i, a.host.as_str(), item)))
        .collect();
    merged.sort_by(|a, b| key(a.2).cmp(&key(b.2)).then(a.0.cmp(&b.0)));
    merged.into_iter().map(|(_, h, t)| (h, t)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(hosts: &[(&str, Option<&str>)]) -> AppSpec {
        let mut text = "app = \"demo\"\n[services.web]\ncommand = \"x\"\n".to_string();
        for (name, ssh) in hosts {
            text.push_str(&format!("[[hosts]]\nname = \"{name}\"\n"));
            if let Some(ssh) = ssh {
                text.push_str(&format!("ssh = \"{ssh}\"\n"));
            }
        }
        hoist_config::parse_str("hoist.toml", &text).unwrap().spec
    }

    fn answer(host: &str, ok: Option<Vec<i64>>) -> Answer<Vec<i64>> {
        Answer {
            host: host.into(),
            result: ok.ok_or_else(|| HostError {
                message: "down".into(),
                source: ClientError::Protocol("down".into()),
            }),
        }
    }

    #[test]
    fn a_local_app_file_is_a_fleet_of_one() {
        let dir = tempfile::tempdir().unwrap();
        let local = Client::new(Path::new("/run/x.sock"));
        let t = targets(
            &spec(&[("local", None)]),
            dir.path(),
            &local,
            HostKeys::Strict,
            &dir.path().join("ctl"),
        )
        .unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].name, "local");
        assert_eq!(t[0].client.socket(), Some(Path::new("/run/x.sock")));
        let t = targets(
            &spec(&[("local", None), ("h1", Some("root@10.0.0.1"))]),
            dir.path(),
            &local,
            HostKeys::Strict,
            &dir.path().join("ctl"),
        )
        .unwrap();
        let names: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["local", "h1"]);
        assert!(t[1].remote.is_some());
    }

    #[test]
    fn pick_keeps_file_order_and_names_unknown_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let local = Client::new(Path::new("/run/x.sock"));
        let all = || {
            targets(
                &spec(&[("h1", Some("a")), ("h2", Some("b")), ("h3", Some("c"))]),
                dir.path(),
                &local,
                HostKeys::Strict,
                &dir.path().join("ctl"),
            )
            .unwrap()
        };
        let picked = pick(all(), &["h3".into(), "h1".into()]).unwrap();
        let names: Vec<&str> = picked.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["h1", "h3"]);
        assert_eq!(pick(all(), &[]).unwrap().len(), 3);
        let err = pick(all(), &["h9".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the app file has no host `h9` (it has h1, h2, h3)"
        );
    }

    #[test]
    fn exit_codes_and_merge_follow_the_answers() {
        let all = [
            answer("h1", Some(vec![3, 1])),
            answer("h2", Some(vec![2, 1])),
        ];
        assert_eq!(exit_code(&all), 0);
        let merged: Vec<(&str, i64)> = merge(&all, |v| *v)
            .into_iter()
            .map(|(h, v)| (h, *v))
            .collect();
        assert_eq!(merged, [("h1", 1), ("h2", 1), ("h2", 2), ("h1", 3)]);
        let some = [answer("h1", Some(vec![1])), answer("h2", None)];
        assert_eq!(exit_code(&some), 3);
        assert_eq!(merge(&some, |v| *v).len(), 1);
        assert_eq!(exit_code(&[answer("h1", None)]), 1);
    }
}
