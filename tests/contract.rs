//! The API contract: schema/openapi.json is the document the service generates from its
//! handlers and bodies, and schemathesis, run against a live service over every route with the
//! bearer token, finds no server error and no answer outside the document.
//!
//! Needs schemathesis (PyPI): `docker/native/test.sh` installs it into var/schemathesis;
//! `PROPENSITY_SCHEMATHESIS` may name another executable. The run fails, saying so, without it.

mod common;

use std::path::PathBuf;

use propensity::online::http::types::{EXAMPLE_PRODUCT_ID, EXAMPLE_SESSION, EXAMPLE_USER_ID};
use propensity::online::serve::Service;
use propensity_actors::event::{Event, EventType};

const TOKEN: &str = "contract-test-token";

/// The checks: every one schemathesis has but positive data acceptance, which expects every
/// schema-valid request to succeed; rules a schema cannot say (a period of at most 366 days,
/// `from` before `to`, a real calendar date) make some of them 400s, documented as such.
const EXCLUDED_CHECKS: &str = "positive_data_acceptance";

#[test]
fn the_committed_document_is_the_generated_one() {
    let committed = std::fs::read_to_string(common::root().join("schema/openapi.json")).unwrap();
    let generated = propensity::online::http::openapi::document();
    assert!(
        committed == generated,
        "schema/openapi.json is out of date: run `cargo run -- openapi > schema/openapi.json`"
    );
    let document: serde_json::Value = serde_json::from_str(generated).unwrap();
    let user = &document["paths"]["/v1/users/{user_id}"]["get"]["parameters"][0];
    assert_eq!(user["example"], EXAMPLE_USER_ID, "{user}");
    let session =
        &document["paths"]["/v1/sessions/{user_id}/{user_session}"]["get"]["parameters"][1];
    assert_eq!(session["example"], EXAMPLE_SESSION, "{session}");
    let product = &document["paths"]["/v1/products/{product_id}"]["get"]["parameters"][0];
    assert_eq!(product["example"], EXAMPLE_PRODUCT_ID, "{product}");
    // Every route the service answers is in the document.
    let paths: Vec<&str> = document["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        paths,
        [
            "/health",
            "/metrics",
            "/openapi.json",
            "/ready",
            "/v1/events",
            "/v1/live",
            "/v1/model",
            "/v1/model/report/{chart}",
            "/v1/outcomes",
            "/v1/products/{product_id}",
            "/v1/score",
            "/v1/segments",
            "/v1/sessions/{user_id}/{user_session}",
            "/v1/users/{user_id}",
        ]
    );
}

fn schemathesis() -> PathBuf {
    let path = std::env::var_os("PROPENSITY_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::root().join("var/schemathesis/bin/schemathesis"));
    assert!(
        path.exists(),
        "schemathesis is not installed at {}: run docker/native/test.sh (the README's test command), which installs it, or set PROPENSITY_SCHEMATHESIS",
        path.display()
    );
    path
}

/// The example shopper's session, so the document's examples reach real answers.
fn example_events() -> Vec<Event> {
    let start = chrono::DateTime::parse_from_rfc3339("2019-10-01T10:00:00Z")
        .unwrap()
        .timestamp_millis();
    [EventType::View, EventType::Cart, EventType::View]
        .into_iter()
        .enumerate()
        .map(|(index, event_type)| Event {
            time: start + index as i64 * 60_000,
            event_type,
            product_id: EXAMPLE_PRODUCT_ID,
            category_id: 2053013555631882655,
            category_code: Some("electronics.smartphone".into()),
            brand: Some("apple".into()),
            price: 489.07,
            user_id: EXAMPLE_USER_ID,
            user_session: EXAMPLE_SESSION.into(),
            event_id: None,
        })
        .collect()
}

#[actix_rt::test]
async fn schemathesis_finds_no_failure_on_any_route() {
    let schemathesis = schemathesis();
    let dir = tempfile::tempdir().unwrap();
    // With the model's report and customer segments, so that every route can answer 200.
    let (events, _) = common::synthetic_events(dir.path(), 300, 3, 99);
    let (model, _) = common::train_model_with_report(dir.path(), &events, 30 * 60 * 1000);
    let (value, segments, _) = common::fit_customer_value(dir.path());
    let mut settings = common::settings(dir.path(), &model);
    settings.value.model_path = value;
    settings.segments.model_path = segments;
    settings.http.auth_token = TOKEN.into();
    let service = Service::start(&settings).await.unwrap();
    let url = service.url();
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{url}/v1/events"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(format!(
            "[{}]",
            example_events()
                .iter()
                .map(Event::to_json)
                .collect::<Vec<_>>()
                .join(",")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());

    let output = tokio::process::Command::new(&schemathesis)
        .args(["run", &format!("{url}/openapi.json")])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--checks", "all", "--exclude-checks", EXCLUDED_CHECKS])
        .args(["--max-time", "60", "--workers", "1", "--no-color"])
        .current_dir(dir.path())
        .output()
        .await
        .expect("schemathesis runs");
    service.stop().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = stdout
        .lines()
        .rev()
        .find(|line| line.starts_with("===") && line.contains(" in "))
        .unwrap_or("no summary line")
        .trim_matches(|c| c == '=' || c == ' ')
        .to_owned();
    if let Some(warnings) = stdout.split("WARNINGS").nth(1) {
        eprintln!(
            "schemathesis warnings:{}",
            warnings.split("SUMMARY").next().unwrap_or("")
        );
    }
    eprintln!("schemathesis: {summary}");
    // test.sh prints it at the end of the run, for the CI log.
    let _ = std::fs::write(
        common::root().join("target/schemathesis-summary.txt"),
        &summary,
    );
    assert!(
        output.status.success() && !summary.contains("failure") && !summary.contains("error"),
        "schemathesis failed: {summary}\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
