//! The HTTP API's edges: every error is JSON with the right status (a wrong method gets 405 with
//! `Allow`, an oversized body 413), errors name the field in words, and the bearer token guards
//! every route but /health, and /metrics when asked to.

mod common;

use propensity::online::serve::Service;

async fn send(
    client: &reqwest::Client,
    method: &str,
    url: String,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Option<String>, serde_json::Value) {
    let mut request = client.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let allow = response
        .headers()
        .get("allow")
        .map(|value| value.to_str().unwrap().to_owned());
    let content_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = response.text().await.unwrap();
    let body = if status == 200 && !content_type.starts_with("application/json") {
        serde_json::Value::String(text)
    } else {
        assert!(
            content_type.starts_with("application/json"),
            "{method} answered {status} with {content_type:?}: {text}"
        );
        serde_json::from_str(&text).unwrap()
    };
    (status, allow, body)
}

fn error_of(body: &serde_json::Value, status: u16) -> String {
    assert_eq!(body["status"], status, "{body}");
    body["error"].as_str().expect("an error message").to_owned()
}

#[actix_rt::test]
async fn errors_are_json_with_the_right_status_and_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::small_model(dir.path(), 30 * 60 * 1000);
    let mut settings = common::settings(dir.path(), &model);
    settings.http.body_limit_bytes = 4096;
    let service = Service::start(&settings).await.unwrap();
    let url = service.url();
    let client = reqwest::Client::new();

    for (method, path, allow) in [
        ("GET", "/v1/score", "POST"),
        ("TRACE", "/v1/score", "POST"),
        ("DELETE", "/v1/events", "POST"),
        ("POST", "/v1/users/1", "GET"),
        ("PUT", "/health", "GET"),
    ] {
        let (status, allowed, body) =
            send(&client, method, format!("{url}{path}"), None, None).await;
        assert_eq!(
            (status, allowed.as_deref()),
            (405, Some(allow)),
            "{method} {path}: {body}"
        );
        assert!(
            error_of(&body, 405).contains("method not allowed"),
            "{body}"
        );
    }
    let (status, _, body) = send(&client, "GET", format!("{url}/v2/nothing"), None, None).await;
    assert_eq!(status, 404);
    assert!(error_of(&body, 404).contains("no such route"), "{body}");

    // Over http.body_limit_bytes: actix refuses it before any handler, still as JSON.
    let big = format!("[{}]", vec!["{}"; 2000].join(","));
    let (status, _, body) = send(
        &client,
        "POST",
        format!("{url}/v1/events"),
        None,
        Some(&big),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert!(
        error_of(&body, 413).ends_with("at most 4096 bytes (http.body_limit_bytes)"),
        "{body}"
    );

    let score =
        |body: &'static str| send(&client, "POST", format!("{url}/v1/score"), None, Some(body));
    for (request, expected) in [
        (
            r#"{"user_id": "12a", "user_session": "s", "product_id": 1}"#,
            "user_id must be an unsigned integer of up to 20 digits",
        ),
        (
            r#"{"user_id": 1, "user_session": "s", "product_ids": [1, -2]}"#,
            "product_ids[1] must be an unsigned integer of up to 20 digits",
        ),
        (
            r#"{"user_id": 1, "user_session": "s", "product_id": 123456789012345678901}"#,
            "product_id must be an unsigned integer of up to 20 digits",
        ),
        (
            r#"{"user_id": 1, "user_session": "s"}"#,
            "give exactly one of product_id or product_ids",
        ),
        (
            r#"{"user_session": "s", "product_id": 1}"#,
            "missing field `user_id`",
        ),
        (r#"{"user_id": 1, "#, "invalid JSON body"),
    ] {
        let (status, _, body) = score(request).await;
        assert_eq!(status, 400, "{request}: {body}");
        let error = error_of(&body, 400);
        assert!(
            error.starts_with(expected) || error.contains(expected),
            "{request}: {error}"
        );
        assert!(!error.contains("line 1"), "no parser positions: {error}");
    }
    // The model card is the served model's, as `propensity describe` reads it from the file.
    let (status, _, body) = send(&client, "GET", format!("{url}/v1/model"), None, None).await;
    assert_eq!(status, 200, "{body}");
    let card = propensity::offline::model::Model::load(&model)
        .unwrap()
        .card(10);
    assert_eq!(body, serde_json::to_value(&card).unwrap());
    assert!(card.training_distributions && !card.top_features.is_empty() && card.metrics.is_some());
    assert!(
        body["training_span"]["from"]
            .as_str()
            .unwrap()
            .starts_with("2019-"),
        "{body}"
    );

    let (status, _, body) = send(&client, "GET", format!("{url}/v1/users/x7"), None, None).await;
    assert_eq!(status, 400);
    assert!(
        error_of(&body, 400).starts_with("user_id must be an unsigned integer"),
        "{body}"
    );
    service.stop().await.unwrap();
}

#[actix_rt::test]
async fn the_token_guards_every_route_but_health_and_metrics_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::small_model(dir.path(), 30 * 60 * 1000);
    let client = reqwest::Client::new();
    for protect_metrics in [false, true] {
        let mut settings = common::settings(dir.path(), &model);
        settings.http.auth_token = "s3cret-token".into();
        settings.http.protect_metrics = protect_metrics;
        let service = Service::start(&settings).await.unwrap();
        let url = service.url();
        for token in [
            None,
            Some("s3cret-tokeX"),
            Some("s3cret"),
            Some("s3cret-token-and-more"),
        ] {
            let (status, _, body) =
                send(&client, "GET", format!("{url}/v1/users/1"), token, None).await;
            assert_eq!(status, 401, "{token:?}: {body}");
            assert!(error_of(&body, 401).contains("bearer token"), "{body}");
        }
        let (status, _, body) = send(
            &client,
            "GET",
            format!("{url}/v1/users/1"),
            Some("s3cret-token"),
            None,
        )
        .await;
        assert_eq!(status, 404, "the right token passes: {body}");
        let (status, _, _) = send(&client, "GET", format!("{url}/health"), None, None).await;
        assert_eq!(status, 200);
        let (status, _, body) = send(&client, "GET", format!("{url}/metrics"), None, None).await;
        assert_eq!(status, if protect_metrics { 401 } else { 200 }, "{body}");
        let (status, _, body) = send(
            &client,
            "GET",
            format!("{url}/metrics"),
            Some("s3cret-token"),
            None,
        )
        .await;
        assert_eq!(status, 200);
        assert!(
            body.as_str().unwrap().contains("propensity_"),
            "metrics text"
        );
        service.stop().await.unwrap();
    }
}
