//! The HTTP API: scoring, the event collector, entity lookups, the live overview, health,
//! readiness, metrics and the OpenAPI document; and the web console at `/` that reads it. `configure` is shared by `serve` and the tests; [`types`] holds the bodies
//! and [`openapi`] the document generated from them and from the handlers' annotations.

mod console;
mod live;
pub mod openapi;
pub mod types;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use actix::Addr;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers, Next};
use actix_web::{HttpResponse, ResponseError, web};
use propensity_actors::engine::Engine;
use propensity_actors::event::{Event, format_time};
use propensity_actors::features::SessionKey;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::config::HttpSettings;
use crate::metrics::Metrics;
use crate::online::scoring::{Score, ScoringActor};
use types::{
    CartLine, ErrorBody, EventsAccepted, HealthBody, HourTally, ID_EXPECTED, OutcomesBody,
    ProductBody, RankedScores, ReadyBody, ReportChart, ScoreItem, ScoreRequest, SegmentBody,
    SegmentsBody, SessionBody, SessionProductBody, SingleScore, TallyBody, UserBody, ValueBody,
    WindowsBody,
};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub scoring: Addr<ScoringActor>,
    /// The model in service, for its card.
    pub models: crate::online::scoring::ModelSlot,
    /// Where the report of the model in service is (`model.report_dir`).
    pub model_report_dir: std::path::PathBuf,
    /// The customer-value model in service, if any.
    pub values: crate::online::value::ValueSlot,
    /// The customer segments in service, if any.
    pub segments: crate::online::value::SegmentSlot,
    /// Live feature distributions against the model's, exported with the metrics.
    pub drift: Arc<crate::online::drift::DriftWatch>,
    pub metrics: Arc<Metrics>,
    pub settings: HttpSettings,
    /// Cleared while a dependency (bus, store) is down.
    pub ready: Arc<AtomicBool>,
    /// Set when the bus is RabbitMQ: events are published, and consumed like any producer's.
    pub publisher: Option<Arc<crate::online::ingest::Publisher>>,
    /// In live mode, how far ahead of the wall clock an event may be dated, in milliseconds.
    pub max_future_skew: Option<i64>,
}

/// A request the API refuses or cannot serve, as a JSON body with the right status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{0}")]
    Unavailable(String),
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        HttpResponse::build(status).json(ErrorBody {
            error: self.to_string(),
            status: status.as_u16(),
        })
    }
}

impl From<propensity_actors::engine::EngineError> for ApiError {
    fn from(error: propensity_actors::engine::EngineError) -> Self {
        use propensity_actors::engine::EngineError;
        use propensity_actors::store::StoreError;
        match error {
            // The client may retry: nothing of the request was applied.
            EngineError::Store(
                store @ (StoreError::Unavailable(_) | StoreError::Timeout(_) | StoreError::Busy),
            ) => ApiError::Unavailable(store.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(error: actix::MailboxError) -> Self {
        ApiError::Internal(error.to_string())
    }
}

/// Registers every route, the body limits and the JSON error handlers.
pub fn configure(config: &mut web::ServiceConfig, state: web::Data<AppState>) {
    let limit = state.settings.body_limit_bytes;
    config
        .app_data(state)
        .app_data(web::PayloadConfig::new(limit))
        .app_data(
            web::JsonConfig::default()
                .limit(limit)
                .error_handler(|error, _| {
                    let message = error.to_string();
                    let api_error = match error {
                        actix_web::error::JsonPayloadError::Overflow { .. }
                        | actix_web::error::JsonPayloadError::OverflowKnownLength { .. } => {
                            ApiError::TooLarge(message)
                        }
                        _ => ApiError::BadRequest(format!("invalid JSON body: {message}")),
                    };
                    api_error.into()
                }),
        )
        .app_data(web::PathConfig::default().error_handler(|error, _| {
            ApiError::BadRequest(format!("invalid path: {error}")).into()
        }))
        .service(
            web::scope("")
                .wrap(actix_web::middleware::from_fn(authorize))
                // Outermost: whatever actix answers by itself (an oversized body, say) is JSON too.
                .wrap(ErrorHandlers::new().default_handler(json_error))
                .service(route("/health", Method::GET, web::get().to(health)))
                .service(route("/metrics", Method::GET, web::get().to(metrics)))
                .service(route("/ready", Method::GET, web::get().to(ready)))
                .service(route("/openapi.json", Method::GET, web::get().to(openapi)))
                .service(route("/v1/score", Method::POST, web::post().to(score)))
                .service(route("/v1/events", Method::POST, web::post().to(events)))
                .service(route(
                    "/v1/sessions/{user_id}/{user_session}",
                    Method::GET,
                    web::get().to(session),
                ))
                .service(route(
                    "/v1/users/{user_id}",
                    Method::GET,
                    web::get().to(user),
                ))
                .service(route(
                    "/v1/products/{product_id}",
                    Method::GET,
                    web::get().to(product),
                ))
                .service(route("/v1/outcomes", Method::GET, web::get().to(outcomes)))
                .service(route("/v1/model", Method::GET, web::get().to(model_card)))
                .service(route(
                    "/v1/model/report/{chart}",
                    Method::GET,
                    web::get().to(model_report),
                ))
                .service(route("/v1/segments", Method::GET, web::get().to(segments)))
                .service(route("/v1/live", Method::GET, web::get().to(live::live)))
                .service(route("/", Method::GET, web::get().to(console::index)))
                .service(route(
                    "/console/app.js",
                    Method::GET,
                    web::get().to(console::script),
                ))
                .service(route(
                    "/console/style.css",
                    Method::GET,
                    web::get().to(console::style),
                ))
                .default_service(web::to(not_found)),
        );
}

/// A resource with its one method; any other method gets a JSON 405 naming it in `Allow`.
fn route(path: &str, method: Method, handler: actix_web::Route) -> actix_web::Resource {
    web::resource(path)
        .route(handler)
        .default_service(web::to(move || {
            let allow = method.clone();
            async move {
                let status = StatusCode::METHOD_NOT_ALLOWED;
                HttpResponse::build(status)
                    .insert_header((actix_web::http::header::ALLOW, allow.as_str()))
                    .json(ErrorBody {
                        error: format!("method not allowed; this route answers {allow}"),
                        status: status.as_u16(),
                    })
            }
        }))
}

/// Turns an error response that is not JSON yet into `{error, status}`.
fn json_error<B>(response: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = response
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(
            response.map_into_left_body(),
        ));
    }
    let status = response.status();
    let message = match response.response().error() {
        Some(error) => error.to_string(),
        None => status.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let (request, _) = response.into_parts();
    let message = match request.app_data::<web::Data<AppState>>() {
        Some(state) if status == StatusCode::PAYLOAD_TOO_LARGE => format!(
            "{message}: at most {} bytes (http.body_limit_bytes)",
            state.settings.body_limit_bytes
        ),
        _ => message,
    };
    let body = HttpResponse::build(status).json(ErrorBody {
        error: message,
        status: status.as_u16(),
    });
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(request, body)
            .map_into_boxed_body()
            .map_into_right_body(),
    ))
}

/// Whether a request may pass: with `http.auth_token` set, every route but /health, the
/// console's assets (and /metrics unless `http.protect_metrics`) needs it as a bearer token.
async fn authorize(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = request
        .app_data::<web::Data<AppState>>()
        .expect("state is configured");
    let token = &state.settings.auth_token;
    let open = match request.path() {
        "/health" => true,
        "/metrics" => !state.settings.protect_metrics,
        path => console::ASSET_PATHS.contains(&path),
    };
    if !token.is_empty() && !open {
        let given = request
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or("");
        // In constant time, so the answer's timing says nothing about how much of it was right.
        if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
            return Err(ApiError::Unauthorized.into());
        }
    }
    next.call(request).await
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(
        "no such route; see /openapi.json".into(),
    ))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations", security(()),
    responses((status = 200, description = "Alive", body = HealthBody)))]
async fn health() -> HttpResponse {
    HttpResponse::Ok().json(HealthBody {
        status: "ok".into(),
    })
}

/// Readiness: the store is healthy and, with RabbitMQ, the consumer is consuming.
#[utoipa::path(get, path = "/ready", tag = "operations", responses(
    (status = 200, description = "Ready", body = ReadyBody),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 503, description = "Not ready", body = ReadyBody)))]
async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let stats = state.engine.stats().await?;
    let ready = state.ready.load(Ordering::Relaxed) && stats.store_healthy;
    let body = ReadyBody {
        ready,
        store_healthy: stats.store_healthy,
        live_sessions: stats.live_sessions,
    };
    Ok(if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    })
}

/// Prometheus text format. Needs the token only with `http.protect_metrics`.
#[utoipa::path(get, path = "/metrics", tag = "operations", security((), ("bearer" = [])), responses(
    (status = 200, description = "Metrics", body = String, content_type = "text/plain"),
    (status = 401, description = "Missing or wrong bearer token (with http.protect_metrics)", body = ErrorBody)))]
async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    if let Ok(stats) = state.engine.stats().await {
        state.metrics.live_sessions.set(stats.live_sessions as i64);
        state
            .metrics
            .users_in_memory
            .set(stats.users_in_memory as i64);
    }
    state.metrics.update_drift(&state.drift);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses(
    (status = 200, description = "OpenAPI 3.1", body = Object),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody)))]
async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(openapi::document())
}

/// How many features the model card lists.
const CARD_TOP_FEATURES: usize = 10;

/// The card of the model in service: version, training span, metrics, top features.
#[utoipa::path(get, path = "/v1/model", tag = "model", responses(
    (status = 200, description = "The model card", body = crate::offline::model::ModelCard),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody)))]
async fn model_card(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.models.current().card(CARD_TOP_FEATURES))
}

/// One chart of the report of the model in service: ROC, precision-recall, calibration or
/// feature importance, from `model.report_dir`; only when that report is of the model in service.
#[utoipa::path(get, path = "/v1/model/report/{chart}", tag = "model",
    params(("chart" = ReportChart, Path, description = "Which chart")),
    responses(
    (status = 200, description = "The chart", body = String, content_type = "image/svg+xml"),
    (status = 400, description = "Not one of the report's charts", body = ErrorBody),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 404, description = "No report, or a report of another model", body = ErrorBody)))]
async fn model_report(
    state: web::Data<AppState>,
    path: web::Path<ReportChart>,
) -> Result<HttpResponse, ApiError> {
    let chart = path.into_inner().file_name();
    let dir = &state.model_report_dir;
    let no_report = || {
        ApiError::NotFound(format!(
            "no report in {} (model.report_dir): train with --report-dir {}",
            dir.display(),
            dir.display()
        ))
    };
    // The report names its model: charts of another model would describe the wrong one.
    let summary = std::fs::read(dir.join("metrics.json")).map_err(|_| no_report())?;
    let version = serde_json::from_slice::<serde_json::Value>(&summary)
        .ok()
        .and_then(|summary| summary["model_version"].as_str().map(str::to_owned))
        .ok_or_else(no_report)?;
    let current = state.models.current().version.clone();
    if version != current {
        return Err(ApiError::NotFound(format!(
            "the report in {} is of model {version}, not of {current} in service",
            dir.display()
        )));
    }
    let svg = std::fs::read(dir.join(chart)).map_err(|_| no_report())?;
    Ok(HttpResponse::Ok().content_type("image/svg+xml").body(svg))
}

/// The customer segments in service (`segments.model_path`): their names, sizes and mean
/// features.
#[utoipa::path(get, path = "/v1/segments", tag = "model", responses(
    (status = 200, description = "The segments", body = SegmentsBody),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 404, description = "No segments in service", body = ErrorBody)))]
async fn segments(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let Some(model) = state.segments.current() else {
        return Err(ApiError::NotFound(
            "no customer segments in service: fit them with `propensity segments fit` and set segments.model_path".into(),
        ));
    };
    Ok(HttpResponse::Ok().json(SegmentsBody {
        version: model.version.clone(),
        fitted_at: model.fitted_at.clone(),
        value_model_version: model.value_model_version.clone(),
        customers: model.customers,
        features: model.features.clone(),
        segments: model
            .segments
            .iter()
            .map(|segment| SegmentBody {
                name: segment.name.clone(),
                customers: segment.customers,
                mean_p_alive: segment.mean_p_alive,
                means: segment.means.clone(),
            })
            .collect(),
    }))
}

/// Reads a JSON body into `T`; an error names the field it is about (`product_ids[2] must
/// be ...`), without the parser's line and column.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let mut message = inner.to_string();
        if let Some(at) = message.rfind(" at line ") {
            message.truncate(at);
        }
        ApiError::BadRequest(if inner.is_syntax() || inner.is_eof() {
            format!("invalid JSON body: {message}")
        } else if path == "." {
            format!("invalid body: {message}")
        } else if message.starts_with("must ") {
            format!("{path} {message}")
        } else {
            format!("{path}: {message}")
        })
    })?;
    deserializer
        .end()
        .map_err(|error| ApiError::BadRequest(format!("invalid JSON body: {error}")))?;
    Ok(value)
}

/// The propensity that the shopper buys the product later in this session, with the band and
/// the action to take; with `product_ids`, several products ranked best first.
#[utoipa::path(post, path = "/v1/score", tag = "scoring", request_body = ScoreRequest, responses(
    (status = 200, description = "One product's score, or several ranked", body = types::ScoreResponse),
    (status = 400, description = "A field is missing or invalid; the message names it", body = ErrorBody),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 413, description = "Body over http.body_limit_bytes or more than http.max_batch products", body = ErrorBody),
    (status = 503, description = "The store cannot load the state needed; retry", body = ErrorBody)))]
async fn score(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let result = match parse_body::<ScoreRequest>(&body) {
        Ok(request) => score_inner(&state, request).await,
        Err(error) => Err(error),
    };
    let status = match &result {
        Ok(_) => "ok",
        Err(ApiError::Internal(_)) => "server_error",
        Err(_) => "client_error",
    };
    state
        .metrics
        .score_requests
        .with_label_values(&[status])
        .inc();
    state
        .metrics
        .score_latency
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn score_inner(state: &AppState, request: ScoreRequest) -> Result<HttpResponse, ApiError> {
    let (product_ids, single) = match (request.product_id, request.product_ids) {
        (Some(id), None) => (vec![id.0], true),
        (None, Some(ids)) if !ids.is_empty() => {
            (ids.into_iter().map(|id| id.0).collect::<Vec<_>>(), false)
        }
        (None, Some(_)) => {
            return Err(ApiError::BadRequest("product_ids must not be empty".into()));
        }
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of product_id or product_ids".into(),
            ));
        }
    };
    if product_ids.len() > state.settings.max_batch {
        return Err(ApiError::TooLarge(format!(
            "at most {} product_ids per request",
            state.settings.max_batch
        )));
    }
    if request.user_session.is_empty() {
        return Err(ApiError::BadRequest(
            "user_session must not be empty".into(),
        ));
    }
    let key = SessionKey::new(request.user_id.0, &request.user_session);
    let read = state.engine.read_features(key, product_ids.clone()).await?;
    state
        .metrics
        .score_feature_reads
        .with_label_values(&[if read.on_board { "board" } else { "actors" }])
        .inc();
    let vectors = read.vectors;
    let customer_value = read.purchases.and_then(|purchases| {
        let model = state.values.current()?;
        crate::online::value::predict(&model, &purchases.days, purchases.last_event_at)
            .map(|value| value_body(state, value))
    });
    let result = state
        .scoring
        .send(Score {
            vectors,
            explain: request.explain,
        })
        .await?;
    let mut items: Vec<ScoreItem> = product_ids
        .into_iter()
        .zip(result.scores)
        .map(|(product_id, scored)| {
            state.metrics.propensity.observe(scored.propensity);
            ScoreItem {
                product_id,
                propensity: scored.propensity,
                band: scored.band,
                action: scored.action,
                explanation: scored.explanation,
            }
        })
        .collect();
    if single {
        let item = items.pop().expect("one product");
        return Ok(HttpResponse::Ok().json(SingleScore {
            product_id: item.product_id,
            propensity: item.propensity,
            band: item.band,
            action: item.action,
            model_version: result.model_version,
            explanation: item.explanation,
            customer_value,
        }));
    }
    // Best first, for ranking.
    items.sort_by(|a, b| b.propensity.total_cmp(&a.propensity));
    Ok(HttpResponse::Ok().json(RankedScores {
        model_version: result.model_version,
        scores: items,
        customer_value,
    }))
}

/// The HTTP collector: one event or an array of them (schema/event.schema.json). A bad event
/// rejects the whole batch, naming its index, field and reason.
#[utoipa::path(post, path = "/v1/events", tag = "events", request_body = types::EventsRequest, responses(
    (status = 202, description = "Applied (HTTP bus) or published (RabbitMQ)", body = EventsAccepted),
    (status = 400, description = "A bad event, or in live mode one dated too far ahead; nothing of the batch is applied", body = ErrorBody),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 413, description = "Body over http.body_limit_bytes or more than http.max_batch events", body = ErrorBody),
    (status = 503, description = "The store or the broker is unavailable; retrying is safe", body = ErrorBody)))]
async fn events(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|error| ApiError::BadRequest(format!("invalid JSON body: {error}")))?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        object @ serde_json::Value::Object(_) => vec![object],
        _ => {
            return Err(ApiError::BadRequest(
                "expected an event object or an array of them".into(),
            ));
        }
    };
    if items.is_empty() {
        return Err(ApiError::BadRequest("the batch is empty".into()));
    }
    if items.len() > state.settings.max_batch {
        return Err(ApiError::TooLarge(format!(
            "at most {} events per request",
            state.settings.max_batch
        )));
    }
    let mut events = Vec::with_capacity(items.len());
    let now = chrono::Utc::now().timestamp_millis();
    for (index, item) in items.iter().enumerate() {
        let bytes = serde_json::to_vec(item).expect("a JSON value serializes");
        match Event::from_json(&bytes) {
            Ok(event) => {
                if let Some(skew) = state.max_future_skew
                    && let Some(ahead) = propensity_actors::clock::ahead_of(event.time, now, skew)
                {
                    state
                        .metrics
                        .events_rejected
                        .with_label_values(&["event_time_in_future"])
                        .inc();
                    return Err(ApiError::BadRequest(format!(
                        "event {index}: event_time {} is {} s ahead of the service's clock (at most engine.max_future_skew_seconds = {} s)",
                        format_time(event.time),
                        ahead / 1000,
                        skew / 1000
                    )));
                }
                events.push(event);
            }
            Err(error) => {
                state
                    .metrics
                    .events_rejected
                    .with_label_values(&[error.code()])
                    .inc();
                // Nothing of a bad batch is applied, so the producer can fix and resend it whole.
                return Err(ApiError::BadRequest(format!("event {index}: {error}")));
            }
        }
    }
    if let Some(publisher) = &state.publisher {
        publisher
            .publish(&events)
            .await
            .map_err(|error| ApiError::Unavailable(error.to_string()))?;
        state.metrics.bus_published.inc_by(events.len() as u64);
        return Ok(HttpResponse::Accepted().json(EventsAccepted {
            accepted: None,
            duplicates: None,
            published: Some(events.len() as u64),
        }));
    }
    let applied = state.engine.ingest(events).await?;
    // A score sent after this answer sees the events in the products' features too.
    state.engine.catalog_caught_up().await?;
    Ok(HttpResponse::Accepted().json(EventsAccepted {
        accepted: Some(applied.applied),
        duplicates: Some(applied.duplicates),
        published: None,
    }))
}

/// A predicted value as the API shows it, with the shopper's segment when segments are in
/// service.
fn value_body(state: &AppState, value: crate::offline::value::PredictedValue) -> ValueBody {
    let segment = state
        .segments
        .current()
        .map(|segments| segments.assign(&value).name.clone());
    ValueBody::new(value, segment)
}

fn parse_id(text: &str, what: &str) -> Result<u64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::BadRequest(format!("{what} {ID_EXPECTED}, not {text:?}")))
}

/// A session's cart, view sequence, counts and features; whether it is live, and its outcome so
/// far or final.
#[utoipa::path(get, path = "/v1/sessions/{user_id}/{user_session}", tag = "lookups",
    params(("user_id" = u64, Path, description = "The shopper", example = 518024427),
        ("user_session" = String, Path, description = "The shop's session id", example = "5f1e2d3c-4b5a-4968-8776-655443322110")),
    responses(
    (status = 200, description = "The session", body = SessionBody),
    (status = 400, description = "user_id is not an unsigned integer", body = ErrorBody),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 404, description = "Unknown session", body = ErrorBody),
    (status = 503, description = "The store cannot load it; retry", body = ErrorBody)))]
async fn session(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (user_id, user_session) = path.into_inner();
    let user_id = parse_id(&user_id, "user_id")?;
    let key = SessionKey::new(user_id, &user_session);
    let Some(view) = state.engine.session_view(key).await? else {
        return Err(ApiError::NotFound(format!(
            "no session {user_session:?} for user {user_id}"
        )));
    };
    let live = matches!(view, propensity_actors::session::SessionView::Live(_));
    let session = view.state();
    let cart: Vec<_> = session
        .products
        .iter()
        .filter(|product| product.in_cart > 0)
        .map(|product| CartLine {
            product_id: product.product_id,
            quantity: product.in_cart,
            price: product.price,
        })
        .collect();
    // The features a score would use now: of this session while it is live, of a new one (no
    // session yet) once it has ended.
    let features: std::collections::BTreeMap<String, f64> = propensity_actors::features::FEATURES
        .iter()
        .zip(state.engine.features(key, vec![0]).await?[0])
        .filter(|(feature, _)| {
            matches!(
                feature.entity,
                propensity_actors::features::Entity::Session
                    | propensity_actors::features::Entity::User
            )
        })
        .map(|(feature, value)| (feature.name.to_owned(), value))
        .collect();
    let products = session
        .products
        .iter()
        .map(|product| SessionProductBody {
            product_id: product.product_id,
            price: product.price,
            views: product.counts.views,
            carts: product.counts.carts,
            removes: product.counts.removes,
            purchases: product.counts.purchases,
            in_cart: product.in_cart,
            last_view_at: product.last_view_at.map(format_time),
        })
        .collect();
    let outcome = session.outcome().as_str();
    Ok(HttpResponse::Ok().json(SessionBody {
        user_id: session.user_id,
        user_session: session.session_id.to_string(),
        live,
        started_at: format_time(session.started_at),
        last_event_at: format_time(session.last_event_at),
        outcome_so_far: live.then(|| outcome.to_owned()),
        outcome: (!live).then(|| outcome.to_owned()),
        cart,
        cart_items: session.cart_items(),
        cart_value: session.cart_value(),
        views: session.view_sequence.clone(),
        products,
        counts: (&session.counts).into(),
        features,
    }))
}

/// A shopper's history, revenue to date and predicted value.
#[utoipa::path(get, path = "/v1/users/{user_id}", tag = "lookups",
    params(("user_id" = u64, Path, description = "The shopper", example = 518024427)),
    responses(
    (status = 200, description = "The user", body = UserBody),
    (status = 400, description = "user_id is not an unsigned integer", body = ErrorBody),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 404, description = "Unknown user", body = ErrorBody),
    (status = 503, description = "The store cannot load it; retry", body = ErrorBody)))]
async fn user(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user_id = parse_id(&path.into_inner(), "user_id")?;
    let Some(user) = state.engine.user(user_id).await? else {
        return Err(ApiError::NotFound(format!("no user {user_id}")));
    };
    let value = match state.values.current() {
        Some(model) => {
            // Up to date with the stream: a shopper's age grows with event time.
            let now = state
                .engine
                .stats()
                .await?
                .watermark
                .max(user.last_event_at);
            crate::online::value::predict(&model, &user.purchase_days, now)
                .map(|value| value_body(&state, value))
        }
        None => None,
    };
    Ok(HttpResponse::Ok().json(UserBody {
        user_id: user.user_id,
        counts: (&user.counts).into(),
        sessions: user.sessions,
        purchase_sessions: user.purchase_sessions,
        lifetime_value: user.revenue,
        first_event_at: format_time(user.first_event_at),
        last_event_at: format_time(user.last_event_at),
        last_purchase_at: user.last_purchase_at.map(format_time),
        products: user.products.len(),
        value,
    }))
}

/// A product's views, carts, purchases and revenue, in total and in the last hour and 24 hours
/// of event time.
#[utoipa::path(get, path = "/v1/products/{product_id}", tag = "lookups",
    params(("product_id" = u64, Path, description = "The product", example = 1004856)),
    responses(
    (status = 200, description = "The product", body = ProductBody),
    (status = 400, description = "product_id is not an unsigned integer", body = ErrorBody),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 404, description = "Unknown product", body = ErrorBody),
    (status = 503, description = "The store cannot load it; retry", body = ErrorBody)))]
async fn product(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let product_id = parse_id(&path.into_inner(), "product_id")?;
    let Some(product) = state.engine.product(product_id).await? else {
        return Err(ApiError::NotFound(format!("no product {product_id}")));
    };
    // Windows end at the stream's event time, so a product nobody touched for a day shows an
    // empty last hour; the product's own latest event counts while the watermark lags behind it.
    let watermark = state.engine.stats().await?.watermark;
    let now = watermark.max(product.last_event_at);
    Ok(HttpResponse::Ok().json(ProductBody {
        product_id: product.product_id,
        category_id: product.category_id,
        price: product.price,
        counts: (&product.counts).into(),
        revenue: product.revenue,
        last_event_at: format_time(product.last_event_at),
        windows: WindowsBody {
            as_of: format_time(now),
            last_hour: product.window(now, 1).into(),
            last_24_hours: product.window(now, 24).into(),
        },
    }))
}

/// The longest period `GET /v1/outcomes` answers for, in hours: a year and a day.
const MAX_OUTCOME_HOURS: i64 = 366 * 24;

/// `GET /v1/outcomes?from=&to=`: the period's sessions by outcome, as stored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutcomesQuery {
    from: String,
    to: String,
}

/// Sessions ended and their cart value by outcome (purchased, abandoned, browsed), per hour of
/// event time and in total, from the store's tallies: each session counted once.
#[utoipa::path(get, path = "/v1/outcomes", tag = "outcomes",
    params(
        ("from" = String, Query, description = "RFC 3339 or `2019-10-01 00:00:00 UTC`", min_length = 1, example = "2019-10-01 00:00:00 UTC"),
        ("to" = String, Query, description = "Inclusive; at most 366 days after from", min_length = 1, example = "2019-10-02 00:00:00 UTC")),
    responses(
    (status = 200, description = "The period's tallies", body = OutcomesBody),
    (status = 400, description = "A missing or bad time, or a span over 366 days", body = ErrorBody),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 503, description = "The store cannot load them; retry", body = ErrorBody)))]
async fn outcomes(
    state: web::Data<AppState>,
    query: Result<web::Query<OutcomesQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    use propensity_actors::outcomes::{HOUR, OutcomeTally};
    let query = query.map_err(|error| {
        ApiError::BadRequest(format!(
            "{error}: give from and to, as RFC 3339 or `2019-10-01 00:00:00 UTC`"
        ))
    })?;
    let time = |text: &str, name: &str| {
        propensity_actors::event::parse_time(text).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{name} {text:?} is not a time: give RFC 3339 or `2019-10-01 00:00:00 UTC`"
            ))
        })
    };
    let (from, to) = (time(&query.from, "from")?, time(&query.to, "to")?);
    if from > to {
        return Err(ApiError::BadRequest(format!(
            "from ({}) is after to ({})",
            query.from, query.to
        )));
    }
    // Sessions count in the hour of their latest event: every hour the period touches.
    let (from_hour, to_hour) = (from.div_euclid(HOUR), to.div_euclid(HOUR));
    if to_hour - from_hour >= MAX_OUTCOME_HOURS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_OUTCOME_HOURS} hours per request"
        )));
    }
    let hours = state.engine.outcomes(from_hour, to_hour).await?;
    let mut total = OutcomeTally::default();
    let hours: Vec<HourTally> = hours
        .iter()
        .map(|(hour, tally)| {
            total.add(tally);
            HourTally {
                hour: format_time(hour * HOUR),
                tally: tally.into(),
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(OutcomesBody {
        from: format_time(from_hour * HOUR),
        to: format_time((to_hour + 1) * HOUR),
        total: TallyBody::from(&total),
        hours,
    }))
}
