//! Live customer value end to end: a service with a value model fitted on CDNOW answers each
//! shopper's predicted value in `GET /v1/users/{id}`, up to date with their purchases and with the
//! stream's event time, equal to what the offline summary of the same purchases gives, and picks
//! up a refitted model without a restart.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use propensity::offline::value::ValueModel;
use propensity::offline::value::fit::{FitRequest, run};
use propensity::offline::value::input::{InputFormat, parse_day};
use propensity::offline::value::segments::{self, SegmentModel};
use propensity::offline::value::summary::{CustomerSummary, Periods, Purchase, summarize};
use propensity::online::serve::Service;
use propensity_actors::event::{Event, EventType, Millis};
use propensity_actors::features::DAY_MILLIS;

const SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/data/cdnow/CDNOW_sample.txt"
);

/// Fits the value models on the CDNOW sample, calibrated up to `calibration_end`.
fn fit_value_model(path: &Path, calibration_end: &str) -> ValueModel {
    assert!(
        Path::new(SAMPLE).exists(),
        "the CDNOW sample is missing: {SAMPLE} (it lives beside the repository in shared/data/cdnow)"
    );
    run(&FitRequest {
        inputs: vec![PathBuf::from(SAMPLE)],
        format: InputFormat::Cdnow,
        model_out: path.to_owned(),
        calibration_end: parse_day(calibration_end),
        holdout_end: None,
        report_dir: None,
    })
    .expect("the CDNOW sample fits");
    ValueModel::load(path).unwrap()
}

/// Segments of the CDNOW sample's customers by the value model at `value_path`.
fn fit_segments(value_path: &Path, out: &Path) -> SegmentModel {
    let report = segments::run(&segments::SegmentRequest {
        inputs: vec![PathBuf::from(SAMPLE)],
        format: InputFormat::Cdnow,
        value_model: value_path.to_owned(),
        model_out: out.to_owned(),
        k_min: 2,
        k_max: 3,
        report_dir: None,
        seed: 7,
    })
    .expect("the CDNOW sample segments");
    let model = SegmentModel::load(out).unwrap();
    assert_eq!(
        model
            .segments
            .iter()
            .map(|segment| segment.customers)
            .sum::<u64>(),
        report.customers
    );
    let mut names: Vec<&str> = model.segments.iter().map(|s| s.name.as_str()).collect();
    names.dedup();
    assert_eq!(names.len(), model.segments.len(), "names are unique");
    model
}

/// The offline summary of one customer's `purchases` (day, amount), the calibration period
/// ending on `today`.
fn summary(purchases: &[(i64, f64)], today: i64) -> CustomerSummary {
    let mut purchases: Vec<Purchase> = purchases
        .iter()
        .map(|(day, amount)| Purchase {
            customer_id: 1,
            day: *day,
            amount: *amount,
        })
        .collect();
    summarize(
        &mut purchases,
        Periods {
            calibration_end: today,
            holdout_end: None,
        },
    )
    .remove(0)
}

/// The served segment is the one the segments assign to the offline prediction.
fn assert_segment(
    served: &serde_json::Value,
    segments: &SegmentModel,
    model: &ValueModel,
    purchases: &[(i64, f64)],
    today: i64,
) {
    let summary = summary(purchases, today);
    let offline = model.predict(summary.history(), summary.mean_repeat_spend);
    assert_eq!(
        served["segment"],
        segments.assign(&offline).name.as_str(),
        "{served}"
    );
}

fn event(user_id: u64, event_type: EventType, time: Millis, price: f64) -> Event {
    Event {
        time,
        event_type,
        product_id: 5_000_001,
        category_id: 7,
        category_code: None,
        brand: None,
        price,
        user_id,
        user_session: format!("s{}", time / DAY_MILLIS),
        event_id: None,
    }
}

async fn value_of(client: &reqwest::Client, url: &str, user_id: u64) -> serde_json::Value {
    let response = client
        .get(format!("{url}/v1/users/{user_id}"))
        .send()
        .await
        .expect("the service answers");
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    body["value"].clone()
}

/// The `customer_value` of a score of the shopper's product (of two, ranked, with `ranked`).
async fn score_value(
    client: &reqwest::Client,
    url: &str,
    user_id: u64,
    ranked: bool,
) -> serde_json::Value {
    let mut request = serde_json::json!({"user_id": user_id, "user_session": "s-score"});
    if ranked {
        request["product_ids"] = serde_json::json!([5_000_001, 5_000_002]);
    } else {
        request["product_id"] = serde_json::json!(5_000_001);
    }
    let response = client
        .post(format!("{url}/v1/score"))
        .json(&request)
        .send()
        .await
        .expect("the service answers");
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    body["customer_value"].clone()
}

/// What the offline summary says of `purchases` (day, amount) with the calibration period
/// ending on `today`: frequency, recency, age, P(alive), expected purchases in 90 days, expected
/// spend per purchase day.
fn offline(model: &ValueModel, purchases: &[(i64, f64)], today: i64) -> [f64; 6] {
    let summary = summary(purchases, today);
    let params = model.bgnbd.params;
    [
        f64::from(summary.frequency),
        summary.recency,
        summary.age,
        params.probability_alive(summary.history()),
        params.conditional_expected_purchases(90.0 / 7.0, summary.history()),
        model
            .gamma_gamma
            .as_ref()
            .unwrap()
            .params
            .conditional_expected_spend(
                summary.frequency,
                summary.mean_repeat_spend.unwrap_or(0.0),
            ),
    ]
}

fn served(value: &serde_json::Value) -> [f64; 6] {
    [
        "frequency",
        "recency_weeks",
        "age_weeks",
        "p_alive",
        "expected_purchases_90d",
        "expected_spend_per_purchase",
    ]
    .map(|field| {
        value[field]
            .as_f64()
            .unwrap_or_else(|| panic!("{field} in {value}"))
    })
}

fn assert_close(served: [f64; 6], offline: [f64; 6]) {
    for (index, (left, right)) in served.iter().zip(offline).enumerate() {
        assert!(
            (left - right).abs() <= 1e-9 * right.abs().max(1.0),
            "field {index}: served {served:?}, offline {offline:?}"
        );
    }
}

#[actix_rt::test]
async fn a_purchase_changes_the_shoppers_predicted_value_as_the_offline_summary_says() {
    let dir = tempfile::tempdir().unwrap();
    let value_path = dir.path().join("value.json");
    let first_model = fit_value_model(&value_path, "1997-09-30");
    let (events_path, _) = common::synthetic_events(dir.path(), 100, 2, 5);
    let (model_path, _) = common::train_model(dir.path(), &events_path, 30 * 60 * 1000);
    let segments_path = dir.path().join("segments.json");
    let segments = fit_segments(&value_path, &segments_path);
    let mut settings = common::settings(dir.path(), &model_path);
    settings.value.model_path = value_path.clone();
    settings.value.reload_interval_seconds = 1;
    settings.segments.model_path = segments_path;
    let service = Service::start(&settings).await.unwrap();
    let (url, client) = (service.url(), reqwest::Client::new());

    let shopper = 910_000_001;
    let day0 = parse_day("2019-10-01").unwrap();
    let at = |day: i64, hour: i64| day * DAY_MILLIS + hour * 3_600_000;
    // Browsing gives no value: the models start at the first purchase.
    common::post_events(
        &client,
        &url,
        &[event(shopper, EventType::View, at(day0, 9), 20.0)],
    )
    .await;
    assert_eq!(
        value_of(&client, &url, shopper).await,
        serde_json::Value::Null
    );

    // The first purchase day: two purchases, one purchase day.
    common::post_events(
        &client,
        &url,
        &[
            event(shopper, EventType::Purchase, at(day0, 10), 20.0),
            event(shopper, EventType::Purchase, at(day0, 11), 5.0),
        ],
    )
    .await;
    let first = value_of(&client, &url, shopper).await;
    assert_eq!(first["model_version"], first_model.version.as_str());
    assert_segment(
        &first,
        &segments,
        &first_model,
        &[(day0, 20.0), (day0, 5.0)],
        day0,
    );
    assert_eq!(first["p_alive"], 1.0);
    let mut purchases = vec![(day0, 20.0), (day0, 5.0)];
    assert_close(served(&first), offline(&first_model, &purchases, day0));

    // A repeat purchase two weeks later: its spend and one repeat day change the prediction.
    common::post_events(
        &client,
        &url,
        &[event(shopper, EventType::Purchase, at(day0 + 14, 12), 60.0)],
    )
    .await;
    let repeat = value_of(&client, &url, shopper).await;
    purchases.push((day0 + 14, 60.0));
    assert_close(
        served(&repeat),
        offline(&first_model, &purchases, day0 + 14),
    );
    assert_eq!(repeat["frequency"], 1);
    assert_segment(&repeat, &segments, &first_model, &purchases, day0 + 14);
    assert_ne!(
        repeat["predicted_value_90d"], first["predicted_value_90d"],
        "a purchase changes the predicted value"
    );
    // A score carries the same value, for one product and for a ranking.
    assert_eq!(score_value(&client, &url, shopper, false).await, repeat);
    assert_eq!(score_value(&client, &url, shopper, true).await, repeat);

    // Event time goes on without them (another shopper, 20 weeks later): they age, and the
    // probability that they are still a customer falls.
    common::post_events(
        &client,
        &url,
        &[event(910_000_002, EventType::View, at(day0 + 154, 8), 1.0)],
    )
    .await;
    let later = value_of(&client, &url, shopper).await;
    assert_close(
        served(&later),
        offline(&first_model, &purchases, day0 + 154),
    );
    assert!(
        later["p_alive"].as_f64() < repeat["p_alive"].as_f64(),
        "{later} {repeat}"
    );
    assert_segment(&later, &segments, &first_model, &purchases, day0 + 154);
    // The segments' sizes, as fitted, are exported.
    let metrics = common::metrics_text(&client, &url).await;
    for segment in &segments.segments {
        let line = format!(
            "propensity_segment_customers{{segment=\"{}\"}} {}",
            segment.name, segment.customers
        );
        assert!(metrics.contains(&line), "{line} not in /metrics");
    }
    assert!(
        metrics.contains("propensity_segments_value_model_match 1"),
        "the segments were fitted on the value model in service"
    );
    // A score values the shopper as of their own latest event: they are on the site, so that is
    // now for them.
    assert_eq!(score_value(&client, &url, shopper, false).await, repeat);

    // A refitted model replaces the one in service without a restart.
    let refit_path = dir.path().join("refit.json");
    let refit = fit_value_model(&refit_path, "1997-06-30");
    assert_ne!(refit.version, first_model.version);
    std::fs::rename(&refit_path, &value_path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let reloaded = loop {
        let value = value_of(&client, &url, shopper).await;
        if value["model_version"] == refit.version.as_str() {
            break value;
        }
        assert!(Instant::now() < deadline, "still {value}");
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    };
    assert_close(served(&reloaded), offline(&refit, &purchases, day0 + 154));
    // The segments were fitted on the first model: the service says so.
    let metrics = common::metrics_text(&client, &url).await;
    assert!(
        metrics.contains("propensity_segments_value_model_match 0"),
        "segments fitted on a replaced value model"
    );
    service.stop().await.unwrap();
}
