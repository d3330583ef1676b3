//! The command line as a user meets it: start-up failures end with one clear line and a non-zero
//! exit, never a panic.

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
