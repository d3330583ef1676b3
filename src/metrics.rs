//! Every Prometheus metric of the service, declared once with its help text. No user, session or
//! product id is ever a label value.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use propensity_actors::delivery::{BatchPart, Delivery};
use propensity_actors::event::EventType;
use propensity_actors::features::Outcome;
use propensity_actors::outcomes::SessionEnd;
use propensity_actors::store::{Observer, StoreError};

/// The service's metrics and their registry.
pub struct Metrics {
    pub registry: Registry,
    pub events: IntCounterVec,
    pub events_rejected: IntCounterVec,
    pub duplicates: IntCounter,
    pub live_sessions: IntGauge,
    pub users_in_memory: IntGauge,
    pub sessions_closed: IntCounterVec,
    pub abandoned_cart_value: prometheus::Counter,
    pub score_requests: IntCounterVec,
    pub score_latency: Histogram,
    pub score_feature_reads: IntCounterVec,
    pub propensity: Histogram,
    pub model_info: IntGaugeVec,
    pub segment_customers: IntGaugeVec,
    pub segments_value_model_match: IntGauge,
    pub feature_drift: GaugeVec,
    pub drift_window_scores: IntGauge,
    pub flush_latency: Histogram,
    pub flush_rows: IntCounter,
    pub flush_errors: IntCounter,
    pub event_lag: Gauge,
    pub abandonment_threshold: Gauge,
    pub bus_connected: IntGauge,
    pub bus_deliveries: IntCounter,
    pub bus_redeliveries: IntCounter,
    pub bus_acks: IntCounter,
    pub bus_unacked: IntGauge,
    pub bus_backlog: IntGaugeVec,
    pub bus_published: IntCounter,
    /// Not a metric: the recent carts and purchases the console shows, fed by the same
    /// observer calls.
    pub live: crate::online::live::LiveFeed,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let events = register(
            &registry,
            IntCounterVec::new(
                Opts::new("propensity_events_total", "Events applied, by type"),
                &["type"],
            )
            .unwrap(),
        );
        for event_type in EventType::ALL {
            events.with_label_values(&[event_type.as_str()]);
        }
        let sessions_closed = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "propensity_sessions_closed_total",
                    "Sessions ended, by outcome: purchased, abandoned (a non-empty cart and no purchase) or browsed",
                ),
                &["outcome"],
            )
            .unwrap(),
        );
        for outcome in Outcome::ALL {
            sessions_closed.with_label_values(&[outcome.as_str()]);
        }
        let score_requests = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "propensity_score_requests_total",
                    "Scoring requests, by status",
                ),
                &["status"],
            )
            .unwrap(),
        );
        let score_feature_reads = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "propensity_score_feature_reads_total",
                    "Scores whose features were read from the board on the HTTP worker's thread (board), or asked of the entity and catalog actors because an entity was loading, passivated or mid-batch (actors)",
                ),
                &["path"],
            )
            .unwrap(),
        );
        for path in ["board", "actors"] {
            score_feature_reads.with_label_values(&[path]);
        }
        for status in ["ok", "client_error", "server_error"] {
            score_requests.with_label_values(&[status]);
        }
        let events_rejected = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "propensity_events_rejected_total",
                    "Events rejected or dead-lettered, by reason",
                ),
                &["reason"],
            )
            .unwrap(),
        );
        // Every reason starts at zero, so rates and alerts see it before the first rejection.
        for reason in crate::online::ingest::message::reasons() {
            events_rejected.with_label_values(&[reason]);
        }
        Metrics {
            events,
            events_rejected,
            duplicates: register(
                &registry,
                IntCounter::new(
                    "propensity_events_duplicate_total",
                    "Events dropped as duplicates or redeliveries",
                )
                .unwrap(),
            ),
            live_sessions: register(
                &registry,
                IntGauge::new("propensity_live_sessions", "Sessions in memory").unwrap(),
            ),
            users_in_memory: register(
                &registry,
                IntGauge::new("propensity_users_in_memory", "Users in memory").unwrap(),
            ),
            sessions_closed,
            abandoned_cart_value: register(
                &registry,
                prometheus::Counter::new(
                    "propensity_abandoned_cart_value_total",
                    "Value of carts left in abandoned sessions",
                )
                .unwrap(),
            ),
            score_requests,
            score_feature_reads,
            score_latency: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "propensity_score_duration_seconds",
                        "Time to answer a scoring request",
                    )
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
                    ]),
                )
                .unwrap(),
            ),
            propensity: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new("propensity_score_propensity", "Propensities returned")
                        .buckets((1..=10).map(|step| f64::from(step) / 10.0).collect()),
                )
                .unwrap(),
            ),
            model_info: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new("propensity_model_info", "The model being served (value 1)"),
                    &["version"],
                )
                .unwrap(),
            ),
            segment_customers: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "propensity_segment_customers",
                        "Customers in each segment of the segments in service, as fitted (segments.model_path)",
                    ),
                    &["segment"],
                )
                .unwrap(),
            ),
            segments_value_model_match: register(
                &registry,
                IntGauge::new(
                    "propensity_segments_value_model_match",
                    "1 when the segments in service were fitted on the customer-value model in service; 0 when they were fitted on another one (run `propensity segments fit` again) or either is missing",
                )
                .unwrap(),
            ),
            feature_drift: register(
                &registry,
                GaugeVec::new(
                    Opts::new(
                        "propensity_feature_drift_psi",
                        "Population stability index of a scored feature (or of the propensity) over the drift window against the model's training distribution; absent while the window holds fewer than drift.min_rows scores",
                    ),
                    &["feature"],
                )
                .unwrap(),
            ),
            drift_window_scores: register(
                &registry,
                IntGauge::new(
                    "propensity_drift_window_scores",
                    "Scores counted in the drift window",
                )
                .unwrap(),
            ),
            flush_latency: register(
                &registry,
                Histogram::with_opts(HistogramOpts::new(
                    "propensity_store_flush_duration_seconds",
                    "Time to flush a batch to the store",
                ))
                .unwrap(),
            ),
            flush_rows: register(
                &registry,
                IntCounter::new(
                    "propensity_store_flushed_rows_total",
                    "Entity rows flushed to the store",
                )
                .unwrap(),
            ),
            flush_errors: register(
                &registry,
                IntCounter::new(
                    "propensity_store_flush_errors_total",
                    "Failed flushes to the store",
                )
                .unwrap(),
            ),
            event_lag: register(
                &registry,
                Gauge::new(
                    "propensity_event_lag_seconds",
                    "Wall clock minus the latest event time",
                )
                .unwrap(),
            ),
            abandonment_threshold: register(
                &registry,
                Gauge::new(
                    "propensity_abandonment_ratio_alert_threshold",
                    "Configured abandonment ratio above which the alert rules page (alerting.abandonment_ratio_threshold)",
                )
                .unwrap(),
            ),
            bus_connected: register(
                &registry,
                IntGauge::new(
                    "propensity_bus_connected",
                    "1 while the RabbitMQ consumer is connected and consuming, else 0",
                )
                .unwrap(),
            ),
            bus_deliveries: register(
                &registry,
                IntCounter::new(
                    "propensity_bus_deliveries_total",
                    "Messages delivered by RabbitMQ, redeliveries included",
                )
                .unwrap(),
            ),
            bus_redeliveries: register(
                &registry,
                IntCounter::new(
                    "propensity_bus_redeliveries_total",
                    "Messages RabbitMQ delivered again after a consumer or connection failure",
                )
                .unwrap(),
            ),
            bus_acks: register(
                &registry,
                IntCounter::new(
                    "propensity_bus_acks_total",
                    "Messages acknowledged after their state was flushed durably",
                )
                .unwrap(),
            ),
            bus_unacked: register(
                &registry,
                IntGauge::new(
                    "propensity_bus_unacked_messages",
                    "Messages delivered and not yet acknowledged: being applied, or waiting for the durable flush that precedes their acknowledgement",
                )
                .unwrap(),
            ),
            bus_backlog: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "propensity_bus_backlog_messages",
                        "Messages ready in each partition queue, not yet delivered",
                    ),
                    &["partition"],
                )
                .unwrap(),
            ),
            bus_published: register(
                &registry,
                IntCounter::new(
                    "propensity_bus_published_total",
                    "Events published to RabbitMQ by POST /v1/events and confirmed",
                )
                .unwrap(),
            ),
            live: Default::default(),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    /// Sets the drift gauges from the watch: one PSI per feature (and the propensity) while the
    /// window holds enough scores, none otherwise.
    pub fn update_drift(&self, watch: &crate::online::drift::DriftWatch) {
        let (rows, drifts) = watch.drifts();
        self.drift_window_scores.set(rows as i64);
        self.feature_drift.reset();
        for drift in drifts {
            self.feature_drift
                .with_label_values(&[&drift.feature])
                .set(drift.psi);
        }
    }

    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding never fails");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Observer for Metrics {
    fn session_ended(&self, end: &SessionEnd) {
        self.sessions_closed
            .with_label_values(&[end.outcome.as_str()])
            .inc();
        if end.outcome == Outcome::Abandoned {
            self.abandoned_cart_value.inc_by(end.cart_value);
        }
    }

    fn events_applied(&self, accepted: &BatchPart, duplicates: u64) {
        let mut by_type = [0u64; 4];
        let mut latest = i64::MIN;
        for Delivery { event, .. } in accepted.iter() {
            by_type[EventType::ALL
                .iter()
                .position(|kind| *kind == event.event_type)
                .unwrap_or(0)] += 1;
            latest = latest.max(event.time);
        }
        for (event_type, count) in EventType::ALL.iter().zip(by_type) {
            if count > 0 {
                self.events
                    .with_label_values(&[event_type.as_str()])
                    .inc_by(count);
            }
        }
        if latest > i64::MIN {
            let lag = (chrono::Utc::now().timestamp_millis() - latest) as f64 / 1000.0;
            self.event_lag.set(lag);
        }
        self.duplicates.inc_by(duplicates);
        self.live.record(accepted);
    }

    fn flushed(&self, rows: usize, seconds: f64, error: Option<&StoreError>) {
        self.flush_latency.observe(seconds);
        match error {
            None => self.flush_rows.inc_by(rows as u64),
            Some(_) => self.flush_errors.inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_names_with_help_and_no_ids() {
        use propensity_actors::features::SessionState;
        let metrics = Metrics::new();
        let mut session = SessionState::new(1, "s", 0);
        session.apply(&propensity_actors::event::Event {
            time: 0,
            event_type: EventType::Cart,
            product_id: 2,
            category_id: 3,
            category_code: None,
            brand: None,
            price: 9.5,
            user_id: 1,
            user_session: "s".into(),
            event_id: None,
        });
        metrics.session_ended(&SessionEnd::of(&session, 0, 0));
        let text = metrics.render();
        assert!(text.contains("# HELP propensity_sessions_closed_total"));
        assert!(text.contains("propensity_sessions_closed_total{outcome=\"abandoned\"} 1"));
        assert!(text.contains("propensity_abandoned_cart_value_total 9.5"));
        assert!(text.contains("propensity_events_total{type=\"remove_from_cart\"} 0"));
    }
}
