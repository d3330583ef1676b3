//! The Prometheus rules in docker/prometheus/ are valid and their unit tests pass: every alert
//! fires when it should and stays silent when it should not. Needs `promtool` (Debian's
//! `prometheus` package, installed by docker/native/test.sh).

mod common;

use std::process::Command;

fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(common::root().join("docker/prometheus"))
        .output()
        .unwrap_or_else(|error| {
            panic!("promtool is not available ({error}); install it with `docker/native/services.sh up prometheus` or run docker/native/test.sh")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool {} failed:\n{text}",
        args.join(" ")
    );
    text
}

#[test]
fn rules_are_valid() {
    let text = promtool(&["check", "rules", "rules.yml"]);
    assert!(text.contains("SUCCESS: 12 rules found"), "{text}");
}

#[test]
fn every_alert_fires_and_stays_silent_as_its_tests_say() {
    let text = promtool(&["test", "rules", "rules_test.yml"]);
    assert!(text.contains("SUCCESS"), "{text}");
    let tests =
        std::fs::read_to_string(common::root().join("docker/prometheus/rules_test.yml")).unwrap();
    let rules =
        std::fs::read_to_string(common::root().join("docker/prometheus/rules.yml")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
    {
        let firing = tests
            .split("- alertname: ")
            .filter(|case| case.starts_with(alert) && case.contains("exp_labels"))
            .count();
        let silent = tests
            .split("- alertname: ")
            .filter(|case| case.starts_with(alert) && case.contains("exp_alerts: []"))
            .count();
        assert!(
            firing > 0 && silent > 0,
            "{alert} needs a firing and a silent test case ({firing} firing, {silent} silent)"
        );
    }
}

#[test]
fn the_scrape_config_is_valid() {
    let text = promtool(&["check", "config", "prometheus.yml"]);
    assert!(text.contains("SUCCESS"), "{text}");
}
