//! `hoist doctor` across hosts: each host's own findings (`GET /v1/doctor`), plus what
//! only a comparison of hosts shows — a host that does not answer, a clock that differs
//! from this machine's, agents of different versions. The comparisons are pure functions
//! over the answers, so they are tested with answers a single kernel cannot produce (one
//! machine has one real-time clock and one build of the agent).

use hoist_protocol::agent::{DoctorReport, Finding};

/// A clock off by more than this from the CLI's is a warning; by `SKEW_FAIL_MS`, a failure
/// (leases, certificate checks and the merged history all read clocks).
pub const SKEW_WARN_MS: i64 = 1_000;
pub const SKEW_FAIL_MS: i64 = 30_000;

/// One host's answer: its report and when it was asked and answered (CLI clock, ms).
pub struct Answered {
    pub host: String,
    pub result: Result<(DoctorReport, i64, i64), String>,
}

/// The fleet-wide findings, each with the host it is about.
pub fn fleet_findings(answers: &[Answered], cli_version: &str) -> Vec<(String, Finding)> {
    let mut out = Vec::new();
    for a in answers {
        match &a.result {
            Err(e) => out.push((
                a.host.clone(),
                Finding::new(
                    "hosts.unreachable",
                    "fail",
                    format!("host `{}` did not answer: {e}", a.host),
                    "check the agent (`systemctl status hoist` or `hoist agent`): its last log line says why it stopped (a damaged state database names the runbook); then ssh to the host",
                ),
            )),
            Ok((report, asked, answered)) => {
                out.push((
                    a.host.clone(),
                    Finding::new(
                        "hosts.unreachable",
                        "pass",
                        format!("answered in {} ms", answered - asked),
                        "",
                    ),
                ));
                // The host's clock was read between `asked` and `answered`.
                let skew = if report.now_ms < *asked {
                    report.now_ms - asked
                } else if report.now_ms > *answered {
                    report.now_ms - answered
                } else {
                    0
                };
                let status = if skew.abs() >= SKEW_FAIL_MS {
                    "fail"
                } else if skew.abs() >= SKEW_WARN_MS {
                    "warn"
                } else {
                    "pass"
                };
                out.push((
                    a.host.clone(),
                    Finding::new(
                        "clock.skew",
                        status,
                        format!("the host's clock is {skew} ms off this machine's (at most the round trip, {} ms, is not counted)", answered - asked),
                        "run NTP on every host (`timedatectl set-ntp true`, or chrony)",
                    )
                    .with_evidence(vec![format!(
                        "host clock {} ms, asked at {asked}, answered at {answered}",
                        report.now_ms
                    )]),
                ));
            }
        }
    }
    let versions: Vec<(String, String)> = answers
        .iter()
        .filter_map(|a| {
            a.result
                .as_ref()
                .ok()
                .map(|(r, _, _)| (a.host.clone(), r.version.clone()))
        })
        .collect();
    if !versions.is_empty() {
        let differ = versions.iter().any(|(_, v)| v != cli_version);
        let evidence: Vec<String> = versions
            .iter()
            .map(|(h, v)| format!("`{h}`: {v}"))
            .chain(std::iter::once(format!("this CLI: {cli_version}")))
            .collect();
        let f = if differ {
            Finding::new(
                "agents.versions",
                "warn",
                "agents of different versions (or not this CLI's)",
                "upgrade every host: `hoist setup` copies this binary and restarts the agent",
            )
        } else {
            Finding::new(
                "agents.versions",
                "pass",
                format!("every agent runs {cli_version}, as this CLI"),
                "",
            )
        };
        out.push(("*".into(), f.with_evidence(evidence)));
    }
    out
}

/// 1 when any finding fails, else 0 (warnings alone: 0).
pub fn exit_code<'a>(findings: impl IntoIterator<Item = &'a Finding>) -> i32 {
    i32::from(findings.into_iter().any(|f| f.status == "fail"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(now_ms: i64, version: &str) -> DoctorReport {
        DoctorReport {
            host: "h".into(),
            version: version.into(),
            now_ms,
            findings: Vec::new(),
        }
    }

    fn status(out: &[(String, Finding)], host: &str, id: &str) -> String {
        out.iter()
            .find(|(h, f)| h == host && f.id == id)
            .map(|(_, f)| f.status.clone())
            .unwrap_or_else(|| panic!("no {id} for {host}"))
    }

    // One kernel has one real-time clock (time namespaces offset only the monotonic and
    // boot clocks) and this machine one agent build: skew and versions are faked here.
    #[test]
    fn skewed_clocks_different_versions_and_a_silent_host_are_found() {
        let answers = vec![
            Answered {
                host: "a".into(),
                result: Ok((report(1_000_050, "0.1.0"), 1_000_000, 1_000_100)),
            },
            Answered {
                host: "b".into(),
                result: Ok((report(1_005_100, "0.1.0"), 1_000_000, 1_000_100)),
            },
            Answered {
                host: "c".into(),
                result: Ok((report(900_000, "0.0.9"), 1_000_000, 1_000_100)),
            },
            Answered {
                host: "d".into(),
                result: Err("connection refused".into()),
            },
        ];
        let out = fleet_findings(&answers, "0.1.0");
        assert_eq!(status(&out, "a", "clock.skew"), "pass");
        assert_eq!(status(&out, "b", "clock.skew"), "warn");
        assert_eq!(status(&out, "c", "clock.skew"), "fail");
        assert_eq!(status(&out, "d", "hosts.unreachable"), "fail");
        assert_eq!(status(&out, "a", "hosts.unreachable"), "pass");
        assert_eq!(status(&out, "*", "agents.versions"), "warn");
        assert_eq!(exit_code(out.iter().map(|(_, f)| f)), 1);
        let same = fleet_findings(&answers[..2], "0.1.0");
        assert_eq!(status(&same, "*", "agents.versions"), "pass");
        assert_eq!(
            exit_code(same.iter().map(|(_, f)| f)),
            0,
            "warnings alone exit 0"
        );
    }
}
