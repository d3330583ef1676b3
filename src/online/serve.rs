//! `propensity serve`: starts the store, the actor engine, the scoring actor and the HTTP API,
//! and stops them in order. The demo and the integration tests start the same service.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use actix::Actor;
use actix_web::{App, HttpServer, web};
use anyhow::{Context, Result};
use propensity_actors::engine::Engine;
use propensity_actors::store::StateStore;

use crate::config::{BusKind, Settings};
use crate::metrics::Metrics;
use crate::online::drift::DriftWatch;
use crate::online::http::{AppState, configure};
use crate::online::ingest::{ConsumerHandle, Publisher};
use crate::online::scoring::ScoringActor;

/// A running service.
pub struct Service {
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    pub address: SocketAddr,
    pub store: Arc<dyn StateStore>,
    pub scoring: actix::Addr<ScoringActor>,
    /// Cleared while a dependency is down; /ready reports it.
    pub ready: Arc<AtomicBool>,
    consumer: Option<ConsumerHandle>,
    server: actix_web::dev::ServerHandle,
    server_task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Service {
    /// Starts everything on the current actix system. The HTTP server binds before this returns,
    /// so `address` is the real port even when the settings ask for port 0.
    pub async fn start(settings: &Settings) -> Result<Service> {
        let store = crate::online::store::open(&settings.store).await?;
        Self::start_with_store(settings, store).await
    }

    /// As [`Service::start`], with a store opened by the caller.
    pub async fn start_with_store(
        settings: &Settings,
        store: Arc<dyn StateStore>,
    ) -> Result<Service> {
        // Everything that can fail comes before any actor starts: an actor started and never
        // run would be started by the runtime's drop instead, which panics without a reactor.
        let listener = std::net::TcpListener::bind(&settings.http.listen)
            .with_context(|| format!("failed to listen on {}", settings.http.listen))?;
        let address = listener
            .local_addr()
            .context("failed to read the bound address")?;
        let publisher = match settings.bus.kind {
            BusKind::Http => None,
            BusKind::Rabbitmq => Some(Arc::new(
                Publisher::connect(&settings.bus.rabbitmq)
                    .await
                    .with_context(|| {
                        format!(
                            "failed to connect to RabbitMQ at {} (bus.rabbitmq.url)",
                            redact(&settings.bus.rabbitmq.url)
                        )
                    })?,
            )),
        };
        let metrics = Arc::new(Metrics::new());
        metrics
            .abandonment_threshold
            .set(settings.alerting.abandonment_ratio_threshold);
        let model_metrics = metrics.clone();
        let drift = Arc::new(DriftWatch::new(settings.drift.clone()));
        let scoring = ScoringActor::new(
            settings.model.path.clone(),
            settings.scoring.clone(),
            Duration::from_secs(settings.model.reload_interval_seconds),
            drift.clone(),
            Arc::new(move |model: &crate::offline::model::Model| {
                model_metrics.model_info.reset();
                model_metrics
                    .model_info
                    .with_label_values(&[&model.version])
                    .set(1);
            }),
        )?;
        let engine = Engine::start(
            settings.engine.shard_count(),
            settings.engine.shard_settings(
                (settings.bus.kind == BusKind::Rabbitmq)
                    .then_some(settings.bus.rabbitmq.partitions),
            ),
            store.clone(),
            metrics.clone(),
        );
        // The watcher runs here; every HTTP worker gets a reader of the same model slot.
        let worker_scoring = scoring.reader();
        let models = scoring.slot();
        let scoring = scoring.start();
        // With the bus, the service is ready once the consumer is consuming.
        let ready = Arc::new(AtomicBool::new(settings.bus.kind == BusKind::Http));
        let consumer = publisher.is_some().then(|| {
            crate::online::ingest::consumer::start(
                settings.bus.rabbitmq.clone(),
                settings.engine.max_future_skew(),
                engine.clone(),
                metrics.clone(),
                ready.clone(),
            )
        });
        let pairing =
            crate::online::value::Pairing::new(metrics.segments_value_model_match.clone());
        let state = AppState {
            values: {
                let pairing = pairing.clone();
                crate::online::value::ValueSlot::watch(
                    &settings.value.model_path,
                    settings.value.reload_interval_seconds,
                    move |model| pairing.value_loaded(&model.version),
                )
            },
            segments: {
                let metrics = metrics.clone();
                crate::online::value::SegmentSlot::watch(
                    &settings.segments.model_path,
                    settings.segments.reload_interval_seconds,
                    move |model| {
                        pairing.segments_loaded(&model.value_model_version);
                        metrics.segment_customers.reset();
                        for segment in &model.segments {
                            metrics
                                .segment_customers
                                .with_label_values(&[&segment.name])
                                .set(segment.customers as i64);
                        }
                    },
                )
            },
            engine: engine.clone(),
            scoring: scoring.clone(),
            models,
            model_report_dir: settings.model.report_dir(),
            drift,
            metrics: metrics.clone(),
            settings: settings.http.clone(),
            ready: ready.clone(),
            publisher,
            max_future_skew: settings.engine.max_future_skew(),
        };
        let mut server = HttpServer::new(move || {
            // This worker's own scoring actor, on its thread.
            let state = web::Data::new(AppState {
                scoring: worker_scoring.clone().start(),
                ..state.clone()
            });
            App::new().configure(|config| configure(config, state))
        })
        .disable_signals()
        .shutdown_timeout(5);
        if settings.http.workers > 0 {
            server = server.workers(settings.http.workers);
        }
        let server = server
            .listen(listener)
            .with_context(|| format!("failed to listen on {}", settings.http.listen))?;
        let server = server.run();
        let handle = server.handle();
        let server_task = tokio::task::spawn_local(server);
        Ok(Service {
            engine,
            metrics,
            address,
            store,
            scoring,
            ready,
            consumer,
            server: handle,
            server_task,
        })
    }

    /// The base URL of the API.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Stops taking requests and deliveries, flushes every entity to the store, acknowledges
    /// what was flushed, and returns.
    pub async fn stop(self) -> Result<()> {
        self.server.stop(true).await;
        let _ = self.server_task.await;
        let Service {
            engine,
            scoring,
            store,
            consumer,
            ..
        } = self;
        if let Some(consumer) = consumer {
            consumer.stop().await;
        }
        engine
            .stop()
            .await
            .context("failed to flush state on shutdown")?;
        drop((scoring, store));
        Ok(())
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Runs `serve` until Ctrl-C or SIGTERM, then shuts down cleanly.
pub async fn run(settings: Settings) -> Result<()> {
    if !Path::new(&settings.model.path).exists() {
        anyhow::bail!(
            "no model at {}: train one with `propensity train --events FILE --model-out {}`, or run `propensity demo`",
            settings.model.path.display(),
            settings.model.path.display()
        );
    }
    let service = Service::start(&settings).await?;
    tracing::info!(url = %service.url(), shards = service.engine.shard_count(), "serving");
    println!(
        "propensity is serving on {} (Ctrl-C stops it)",
        service.url()
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    service.stop().await
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
