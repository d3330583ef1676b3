//! The command line as a user meets it: start-up failures end with one clear line and a non-zero
//! exit, never a panic; `describe` tells what a feature is and how the model saw it.

mod common;

use std::process::Command;

/// `serve` on a port another process holds: one `error:` line naming the address and the cause,
/// exit code 1, no panic, even with backtraces asked for.
#[test]
fn serve_on_a_taken_port_exits_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::small_model(dir.path(), 30 * 60 * 1000);
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = holder.local_addr().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_propensity"))
        .arg("--config-dir")
        .arg(common::root().join("config"))
        .args(["--env", "test", "serve"])
        .env("RUST_BACKTRACE", "1")
        .env("PROPENSITY__HTTP__LISTEN", address.to_string())
        .env("PROPENSITY__MODEL__PATH", &model)
        .env(
            "PROPENSITY__STORE__EMBEDDED_PATH",
            dir.path().join("state.redb"),
        )
        .env("PROPENSITY__BUS__KIND", "http")
        .output()
        .expect("propensity runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        !stderr.contains("panicked"),
        "a panic on the way out:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|line| !line.is_empty()).collect();
    assert_eq!(
        lines,
        [format!(
            "error: failed to listen on {address}: Address already in use (os error 98)"
        )],
        "stderr:\n{stderr}"
    );
    drop(holder);
}

/// `describe price --json` gives the feature's definition and, from the model file, its training
/// distribution and importance rank; a misspelt name is an error that suggests the right one.
#[test]
fn describe_shows_a_feature_with_its_training_distribution() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = common::small_model(dir.path(), 30 * 60 * 1000);
    let model = propensity::offline::model::Model::load(&model_path).unwrap();
    let describe = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_propensity"))
            .arg("describe")
            .args(args)
            .arg("--model")
            .arg(&model_path)
            .output()
            .expect("propensity runs")
    };
    let output = describe(&["price", "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let description: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let price = &description["features"][0];
    assert_eq!(price["name"], "price");
    assert_eq!(price["entity"], "product");
    assert_eq!(price["unit"], "money");
    assert_eq!(price["window"], "the product's latest event");
    let index = model
        .feature_names
        .iter()
        .position(|name| name == "price")
        .unwrap();
    let profile = &model.profiles.as_ref().unwrap().features[index];
    assert_eq!(price["training"]["mean"], profile.mean);
    assert_eq!(price["training"]["zero_share"], profile.zero_share);
    assert_eq!(price["training"]["quantiles"][3]["quantile"], 0.5);
    assert_eq!(
        price["training"]["quantiles"][3]["value"],
        profile.quantile(0.5).unwrap()
    );
    let importance = model.feature_importance();
    let rank = importance
        .iter()
        .position(|(name, _)| name == "price")
        .unwrap();
    assert_eq!(price["importance"], importance[rank].1);
    assert_eq!(price["importance_rank"], rank + 1);
    assert_eq!(description["model"]["version"], model.version.as_str());

    let output = describe(&[]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert_eq!(
        text.lines()
            .filter(|line| line.starts_with("session_") || line.starts_with("price"))
            .count(),
        15 + 2,
        "a row per session and price feature:\n{text}"
    );
    let output = describe(&["prise"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "error: unknown feature \"prise\" (did you mean \"price\"?); `propensity describe` lists all 42 features"
    );
}
