//! `[deploy.canary]`: read as written; bad steps, limits and unknown keys refused with
//! file:line.

mod common;

use common::WEB_APP as BASE;

fn refused(extra: &str) -> String {
    common::refused(&format!("{BASE}{extra}"))
}

#[test]
fn a_canary_is_read() {
    let text = format!(
        "{BASE}\n[deploy.canary]\nsteps = [0.5, 5, 25, 50]\ninterval = \"30s\"\nmax_error_rate = \"1.5%\"\nmax_p99 = \"800ms\"\nmin_requests = 50\n"
    );
    let loaded = hoist_config::parse_str("hoist.toml", &text).unwrap();
    let c = loaded.spec.deploy.canary.as_ref().expect("canary read");
    assert_eq!(c.steps_bp, [50, 500, 2500, 5000]);
    assert_eq!(c.interval, std::time::Duration::from_secs(30));
    assert_eq!(c.max_error_bp, 150);
    assert_eq!(c.max_p99, Some(std::time::Duration::from_millis(800)));
    assert_eq!(c.min_requests, 50);
    // Defaults: 1 % and 20 requests, no p99 limit.
    let text = format!("{BASE}\n[deploy.canary]\nsteps = [10]\ninterval = \"5s\"\n");
    let c = hoist_config::parse_str("hoist.toml", &text)
        .unwrap()
        .spec
        .deploy
        .canary
        .unwrap();
    assert_eq!((c.max_error_bp, c.min_requests, c.max_p99), (100, 20, None));
}

#[test]
fn steps_not_increasing_are_refused_with_their_line() {
    let out = refused("\n[deploy.canary]\nsteps = [5, 25, 25]\ninterval = \"1m\"\n");
    assert!(
        out.contains("steps must be strictly increasing, `25` comes after `25`"),
        "{out}"
    );
    assert!(out.contains("hoist.toml:8:"), "{out}");
    let out = refused("\n[deploy.canary]\ninterval = \"1m\"\nsteps = [50, 10]\n");
    assert!(out.contains("`10` comes after `50`"), "{out}");
    assert!(out.contains("hoist.toml:9:"), "{out}");
}

#[test]
fn steps_out_of_range_are_refused_with_their_line() {
    for bad in ["0", "100", "150", "-5", "0.001", "\"5%\""] {
        let out = refused(&format!(
            "\n[deploy.canary]\nsteps = [{bad}]\ninterval = \"1m\"\n"
        ));
        assert!(
            out.contains("invalid `deploy.canary.steps`"),
            "{bad}: {out}"
        );
        assert!(out.contains("hoist.toml:8:"), "{bad}: {out}");
    }
    let out = refused("\n[deploy.canary]\nsteps = []\ninterval = \"1m\"\n");
    assert!(out.contains("at least one step"), "{out}");
}

#[test]
fn unknown_keys_bad_limits_and_missing_keys_are_refused() {
    let out = refused(
        "\n[deploy.canary]\nsteps = [5]\ninterval = \"1m\"\nmax_error = \"1%\"\nmin_requests = 0\n",
    );
    assert!(
        out.contains("unknown key `max_error` in `deploy.canary`"),
        "{out}"
    );
    assert!(out.contains("`max_error_rate`"), "{out}");
    assert!(out.contains("hoist.toml:10:"), "{out}");
    assert!(
        out.contains("invalid `deploy.canary.min_requests`"),
        "{out}"
    );
    assert!(out.contains("hoist.toml:11:"), "{out}");
    let out =
        refused("\n[deploy.canary]\nsteps = [5]\ninterval = \"1m\"\nmax_error_rate = \"150%\"\n");
    assert!(
        out.contains("invalid `deploy.canary.max_error_rate`"),
        "{out}"
    );
    assert!(out.contains("hoist.toml:10:"), "{out}");
    let out = refused("\n[deploy.canary]\nsteps = [5]\n");
    assert!(
        out.contains("missing key `interval` in `deploy.canary`"),
        "{out}"
    );
    let out = refused("\n[deploy]\ncanary = { steps = [5], interval = \"0s\" }\n");
    assert!(out.contains("must be longer than `0s`"), "{out}");
}
