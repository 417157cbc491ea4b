//! `hoist certs`: every domain with `tls` on every host, its issuer, expiry, source and
//! last renewal. Exit 0 when all serve and nothing needs attention, 3 when something
//! does (named), 1 when no host answered.

use hoist_protocol::agent::CertStatus;

use super::common;
use super::config::{load, ConfigArgs};
use crate::exit::{Exit, Reported};
use crate::output;
use hoist_fleet::hosts::{each, Answer};

#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
    #[command(flatten)]
    pub hosts: common::HostArgs,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    let loaded = load(&args.file).ok();
    let app = loaded.as_ref().map(|l| l.spec.app.clone());
    let fleet = common::is_fleet(loaded.as_ref());
    let targets = common::targets(loaded.as_ref(), &args.hosts)?;
    let answers: Vec<Answer<Vec<CertStatus>>> = common::block_on(each(&targets, |t| {
        let c = t.client.clone();
        async move { c.get::<Vec<CertStatus>>("/v1/certs").await }
    }));
    if !fleet && answers.len() == 1 && answers[0].result.is_err() {
        if let Some(Answer { result: Err(e), .. }) = answers.into_iter().next() {
            return Err(common::agent_error(e.source));
        }
        unreachable!("checked just above");
    }
    let keep = |c: &CertStatus| app.as_ref().is_none_or(|a| a == &c.app);
    let mut rows = Vec::new();
    let mut docs = Vec::new();
    let mut attention = false;
    let mut failed = 0;
    for a in &answers {
        let (host, answer) = (&a.host, &a.result);
        let certs = match answer {
            Ok(c) => c,
            Err(e) => {
                failed += 1;
                if args.json {
                    docs.push(serde_json::json!({"host": host, "error": e.message}));
                } else {
                    output::error(&format!("`{host}`: {e}"));
                }
                continue;
            }
        };
        for c in certs.iter().filter(|c| keep(c)) {
            if let Some(p) = &c.problem {
                attention = true;
                if !args.json {
                    output::warn(&format!("`{}`: {p}", c.domain));
                }
            }
            if args.json {
                let mut doc = serde_json::to_value(c)?;
                if fleet {
                    doc["host"] = serde_json::Value::String(host.clone());
                }
                docs.push(doc);
                continue;
            }
            let mut row = if fleet {
                vec![host.clone()]
            } else {
                Vec::new()
            };
            row.extend([
                c.domain.clone(),
                c.issuer.clone().unwrap_or_else(|| "-".into()),
                c.not_after.clone().unwrap_or_else(|| "-".into()),
                c.source.clone(),
                if c.serving { "yes" } else { "no" }.into(),
                c.last.as_ref().map_or("-".into(), |l| {
                    format!("{} {}", if l.ok { "ok" } else { "failed" }, l.at)
                }),
            ]);
            rows.push(row);
        }
    }
    if args.json {
        output::json(&docs)?;
    } else {
        let mut header = if fleet { vec!["HOST"] } else { Vec::new() };
        header.extend([
            "DOMAIN",
            "ISSUER",
            "NOT AFTER",
            "SOURCE",
            "SERVING",
            "LAST RENEWAL",
        ]);
        output::table(&header, &rows)?;
    }
    if failed == answers.len() && failed > 0 {
        return Err(Reported(Exit::Failed).into());
    }
    if failed > 0 || attention {
        return Err(Reported(Exit::Partial).into());
    }
    Ok(())
}
