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
    assert!(text.contains("SUCCESS: 15 rules found"), "{text}");
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

/// Every metric the rules and the dashboard query is one the service exports, so a renamed
/// metric cannot silently blind an alert or a panel.
#[test]
fn rules_and_dashboard_only_use_exported_metrics() {
    let metrics = propensity::metrics::Metrics::new();
    // A running service always has a model loaded.
    metrics.model_info.with_label_values(&["a-model"]).set(1);
    // A RabbitMQ consumer reports each partition's depth.
    metrics.bus_backlog.with_label_values(&["0"]).set(0);
    // The drift watch exports a PSI per feature once its window holds enough scores.
    metrics.feature_drift.with_label_values(&["price"]).set(0.0);
    let exported = metrics.render();
    let mut checked = 0;
    for file in [
        "docker/prometheus/rules.yml",
        "docker/grafana/dashboards/propensity.json",
    ] {
        let text = std::fs::read_to_string(common::root().join(file)).unwrap();
        let mut rest = text.as_str();
        while let Some(start) = rest.find("propensity_") {
            let tail = &rest[start..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let base = name.strip_suffix("_bucket").unwrap_or(name);
            assert!(
                exported.contains(&format!("# HELP {base} ")),
                "{file} uses {name}, which the service does not export"
            );
            checked += 1;
            rest = &tail[end..];
        }
    }
    assert!(checked > 15, "only {checked} metric references found");
}
