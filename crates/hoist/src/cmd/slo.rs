//! `hoist slo [--json]`: every SLO of the app (or of every app on this machine's agent
//! without an app file) on every host: objective, error budget left over its window, and
//! burn rates over 5m, 30m, 1h and 6h.

use hoist_fleet::hosts::each;

use super::common::{self, HostArgs, Json};
use super::config::{load, ConfigArgs};
use crate::output;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    file: ConfigArgs,
    #[command(flatten)]
    hosts: HostArgs,
    #[arg(long)]
    json: bool,
}

fn window(secs: u64) -> String {
    match secs {
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s => format!("{}m", s / 60),
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Without an app file here (and none named), this machine's agent, every app.
    let loaded = match &args.file.config {
        None if hoist_config::locate(None).is_err() => None,
        _ => Some(load(&args.file)?),
    };
    let fleet = common::is_fleet(loaded.as_ref());
    let targets = common::targets(loaded.as_ref(), &args.hosts)?;
    let path = match &loaded {
        Some(l) => format!("/v1/slo?app={}", l.spec.app),
        None => "/v1/slo".to_string(),
    };
    let answers = common::block_on(each(&targets, |t| {
        let (c, path) = (t.client.clone(), path.clone());
        async move { c.get::<serde_json::Value>(&path).await }
    }));
    common::report(answers, fleet, Json::Answer.when(args.json), |host, v| {
        let at = common::host_prefix(host, fleet);
        let slos = v["slos"].as_array().cloned().unwrap_or_default();
        if slos.is_empty() {
            output::data(&format!(
                "{at}no SLO is defined (`[slo.NAME]` in the app file)"
            ))?;
        }
        for s in &slos {
            let latency = s["latency_seconds"]
                .as_f64()
                .map(|l| format!(", good under {l}s"))
                .unwrap_or_default();
            output::data(&format!(
                "{at}{:<16} {}/{}: objective {}%{latency} over {}; {} requests, {} bad; error budget left {:.1}%",
                s["name"].as_str().unwrap_or(""),
                s["app"].as_str().unwrap_or(""),
                s["service"].as_str().unwrap_or(""),
                s["objective"].as_f64().unwrap_or(0.0),
                window(s["window_seconds"].as_u64().unwrap_or(0)),
                s["requests"].as_u64().unwrap_or(0),
                s["bad"].as_u64().unwrap_or(0),
                s["budget_left"].as_f64().unwrap_or(0.0) * 100.0,
            ))?;
            let burn: Vec<String> = s["burn"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|b| {
                    format!(
                        "{} {:.2}x",
                        b["window"].as_str().unwrap_or(""),
                        b["rate"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect();
            output::data(&format!("{at}  burn rate: {}", burn.join(", ")))?;
        }
        Ok(())
    })
}
