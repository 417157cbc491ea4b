//! `hoist review [--json]` (the app file graded, with its hosts' live state when they
//! answer) and `hoist doctor [--host NAME] [--json]` (live hosts diagnosed). Both print
//! findings with `id`, `status`, `why` and `fix`; exit 0 when nothing fails, 1 when
//! something does, 2 on bad usage. The checks live in `hoist_config::review`, the agent's
//! `doctor` module and `hoist_fleet::doctor`; this file asks the hosts and renders.

use std::time::Duration;

use hoist_config::review::{self, Live, Status};
use hoist_fleet::doctor::{fleet_findings, Answered};
use hoist_protocol::agent::{DoctorReport, Finding};
use hoist_protocol::backup::BackupInfo;

use super::common::{self, HostArgs};
use super::config::ConfigArgs;
use crate::exit::{Exit, Reported};
use crate::output;

#[derive(Debug, clap::Args)]
pub struct ReviewArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
    /// One JSON list of findings
    #[arg(long)]
    pub json: bool,
    /// A restore must have been verified on a host within this many days
    #[arg(long, value_name = "DAYS", default_value_t = 30)]
    pub verified_within: u64,
    /// Grade the file alone; ask no host
    #[arg(long)]
    pub offline: bool,
}

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
    #[command(flatten)]
    pub hosts: HostArgs,
    /// One JSON list of findings, each with its host
    #[arg(long)]
    pub json: bool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn run_review(args: ReviewArgs) -> anyhow::Result<()> {
    let path = hoist_config::locate(args.file.config.as_deref());
    let loaded = path.and_then(|p| review::load_for_review(&p, args.file.destination.as_deref()));
    let (loaded, raw) = match loaded {
        Ok(l) => l,
        // The same rendering and exit code (2) as every other command's.
        Err(_) => {
            super::config::load(&args.file)?;
            return Err(Reported(Exit::Usage).into());
        }
    };
    let live = if args.offline {
        None
    } else {
        let targets = common::targets(Some(&loaded), &HostArgs::default())?;
        let app = loaded.spec.app.clone();
        let answers = common::block_on(hoist_fleet::hosts::each(&targets, |t| {
            let (c, app) = (t.client.clone(), app.clone());
            async move {
                c.get::<Vec<BackupInfo>>(&format!("/v1/backups?app={app}"))
                    .await
            }
        }));
        let mut live = Live {
            asked: answers.len(),
            answered: 0,
            now_ms: now_ms(),
            max_verify_age: Duration::from_secs(args.verified_within * 86_400),
            ..Live::default()
        };
        for a in &answers {
            let Ok(rows) = &a.result else { continue };
            live.answered += 1;
            for r in rows
                .iter()
                .filter(|r| r.trigger == "verify" && r.status == "ok")
            {
                let at = live.last_verified_ms.entry(r.name.clone()).or_insert(0);
                *at = (*at).max(r.started_at_ms);
            }
        }
        Some(live)
    };
    let findings = review::review(&loaded.spec, &raw, live.as_ref());
    if args.json {
        output::json(&findings)?;
    } else {
        let mut group = "";
        for f in &findings {
            if f.group != group {
                group = &f.group;
                output::data(group)?;
            }
            output::data(&format!(
                "  {:<4}  {:<28} {}",
                f.status.as_str(),
                f.id,
                f.why
            ))?;
            if !f.fix.is_empty() {
                output::data(&format!("        {:<28} fix: {}", "", f.fix))?;
            }
        }
        let count = |s: Status| findings.iter().filter(|f| f.status == s).count();
        output::data(&format!(
            "{} pass, {} warn, {} fail",
            count(Status::Pass),
            count(Status::Warn),
            count(Status::Fail)
        ))?;
    }
    if review::exit_code(&findings) != 0 {
        return Err(Reported(Exit::Failed).into());
    }
    Ok(())
}

pub fn run_doctor(args: DoctorArgs) -> anyhow::Result<()> {
    // An app file names the hosts; without one, this machine's agent is the host.
    let loaded = match (&args.file.config, hoist_config::locate(None)) {
        (None, Err(_)) => None,
        _ => Some(super::config::load(&args.file)?),
    };
    let fleet = common::is_fleet(loaded.as_ref());
    let targets = common::targets(loaded.as_ref(), &args.hosts)?;
    let answers: Vec<Answered> = common::block_on(futures_util::future::join_all(
        targets.iter().map(|t| async move {
            let asked = now_ms();
            let r = t.client.get::<DoctorReport>("/v1/doctor").await;
            let answered = now_ms();
            Answered {
                host: t.name.clone(),
                result: r
                    .map(|rep| (rep, asked, answered))
                    .map_err(|e| t.explain(&e)),
            }
        }),
    ));
    let mut all: Vec<(String, Finding)> = Vec::new();
    for a in &answers {
        if let Ok((rep, _, _)) = &a.result {
            all.extend(rep.findings.iter().map(|f| (a.host.clone(), f.clone())));
        }
    }
    all.extend(fleet_findings(&answers, env!("CARGO_PKG_VERSION")));
    if args.json {
        let docs: Vec<serde_json::Value> = all.iter().map(|(h, f)| common::tagged(h, f)).collect();
        output::json(&docs)?;
    } else {
        for (host, f) in &all {
            let at = if fleet || host == "*" {
                format!("{host}  ")
            } else {
                String::new()
            };
            output::data(&format!("{at}{:<4}  {:<20} {}", f.status, f.id, f.why))?;
            for e in &f.evidence {
                output::data(&format!("        {e}"))?;
            }
            if !f.fix.is_empty() {
                output::data(&format!("        fix: {}", f.fix))?;
                output::data(&format!("        see: {}", f.runbook))?;
            }
        }
    }
    if hoist_fleet::doctor::exit_code(all.iter().map(|(_, f)| f)) != 0 {
        return Err(Reported(Exit::Failed).into());
    }
    Ok(())
}
