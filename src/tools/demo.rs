//! `propensity demo`: the project's main job on a fresh machine. It generates history (or takes
//! yours), trains on the first part, starts the service, warms it with the training part and
//! replays the held-out part in accelerated real time while printing a live summary.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use propensity_actors::event::{Event, Millis, format_time};
use propensity_actors::features::Outcome;
use propensity_actors::features::SessionKey;

use crate::config::Settings;
use crate::offline::history::{HistoryFiles, ordered_events};
use crate::online::serve::Service;

/// Options of `propensity demo`.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub events: Option<PathBuf>,
    pub users: u64,
    pub days: u32,
    pub seed: u64,
    pub speedup: f64,
    pub exit_after_replay: bool,
    pub work_dir: PathBuf,
}

/// What the demo measured.
#[derive(Debug, Default)]
pub struct DemoSummary {
    pub events_replayed: u64,
    pub sessions_closed: u64,
    pub abandoned: u64,
    pub scored: u64,
    pub mean_propensity: f64,
}

fn closed(service: &Service, outcome: Outcome) -> u64 {
    service
        .metrics
        .sessions_closed
        .with_label_values(&[outcome.as_str()])
        .get()
}

fn abandonment_rate(service: &Service) -> (u64, f64) {
    let abandoned = closed(service, Outcome::Abandoned);
    let with_cart = abandoned + closed(service, Outcome::Purchased);
    (
        abandoned,
        if with_cart == 0 {
            0.0
        } else {
            abandoned as f64 / with_cart as f64
        },
    )
}

/// Runs the demo.
pub async fn run(options: DemoOptions, mut settings: Settings) -> Result<DemoSummary> {
    std::fs::create_dir_all(&options.work_dir)
        .with_context(|| format!("failed to create {}", options.work_dir.display()))?;
    let events_path = match &options.events {
        Some(path) => path.clone(),
        None => {
            let path = options.work_dir.join("events.csv");
            let truth = options.work_dir.join("truth.csv");
            println!(
                "1/4 generating {} users over {} days (seed {}) into {}",
                options.users,
                options.days,
                options.seed,
                path.display()
            );
            let summary = crate::tools::generate::generate_files(
                options.users,
                options.days,
                options.seed,
                &path,
                Some(&truth),
                true,
            )?;
            println!(
                "    {} events, {} sessions, {} abandoned carts",
                summary.events, summary.sessions, summary.abandoned_carts
            );
            path
        }
    };
    let model_path = options.work_dir.join("model.json");
    println!("2/4 training on the first 80% of the time span");
    let truth = options.work_dir.join("truth.csv");
    let request = crate::offline::train::TrainRequest {
        events: vec![events_path.clone()],
        model_out: model_path.clone(),
        split_at: None,
        export_features: None,
        report_dir: Some(options.work_dir.join("report")),
        truth: (options.events.is_none() && truth.exists()).then_some(truth),
        session_timeout: settings.engine.session_timeout_millis(),
        options: crate::offline::model::TrainOptions::default(),
        max_fit_rows: crate::offline::train::DEFAULT_MAX_FIT_ROWS,
        show_progress: true,
    };
    let (report, _) = crate::offline::train::run(&request)?;
    crate::offline::train::print_report(&report, false)?;

    settings.model.path = model_path;
    settings.store.embedded_path = options.work_dir.join("state.redb");
    // Each demo starts from empty state, so its numbers are its own.
    let _ = std::fs::remove_file(&settings.store.embedded_path);
    let split_at = propensity_actors::event::parse_time(&report.split_at)
        .context("the report's split time parses")?;

    println!("3/4 starting the service");
    let service = Service::start(&settings).await?;
    let url = service.url();
    println!("    the console: {url}/ (open it in a browser; it fills as the replay runs)");
    let history = HistoryFiles::scan(std::slice::from_ref(&events_path))?;
    let spill = tempfile::tempdir()?;
    let mut events = ordered_events(&history, spill.path())?.peekable();

    // Warm the state with the training period at full speed: features need the users' history.
    let mut batch = Vec::with_capacity(4096);
    let mut warmed = 0u64;
    while let Some(event) = events.next_if(|event| event.time < split_at) {
        batch.push(event);
        if batch.len() == 4096 {
            warmed += batch.len() as u64;
            service.engine.ingest(std::mem::take(&mut batch)).await?;
        }
    }
    warmed += batch.len() as u64;
    service.engine.ingest(std::mem::take(&mut batch)).await?;
    println!("    warmed with {warmed} events of the training period");

    println!(
        "4/4 replaying the held-out part from {} at {}x; try, while it runs:",
        format_time(split_at),
        options.speedup
    );
    let token = if settings.http.auth_token.is_empty() {
        String::new()
    } else {
        " -H 'Authorization: Bearer <token>'".to_owned()
    };
    println!("    curl -s {url}/health");
    println!("    curl -s{token} {url}/metrics | grep propensity_sessions_closed_total");
    println!("    curl -s{token} {url}/openapi.json");
    let mut summary = DemoSummary::default();
    let mut propensity_sum = 0.0;
    let started = Instant::now();
    let mut last_line = Instant::now();
    let mut events_at_last_line = 0u64;
    let mut printed_examples = false;
    let replay_start: Option<Millis> = events.peek().map(|event| event.time);
    while let Some(first) = events.next() {
        let start = replay_start.unwrap_or(first.time);
        // Pace by event time: the event at `t` goes out at (t - start) / speedup.
        let due = Duration::from_secs_f64(
            ((first.time - start) as f64 / 1000.0 / options.speedup).max(0.0),
        );
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            actix::clock::sleep(wait).await;
        }
        let horizon =
            start + ((started.elapsed().as_secs_f64() + 0.01) * options.speedup * 1000.0) as Millis;
        let mut batch: Vec<Event> = vec![first];
        while let Some(event) = events.next_if(|event| event.time <= horizon && batch.len() < 4096)
        {
            batch.push(event);
        }
        let samples: Vec<(SessionKey, u64)> = batch
            .iter()
            .filter(|event| event.event_type.is_scoring_point())
            .step_by(10)
            .map(|event| (SessionKey::of(event), event.product_id))
            .collect();
        if !printed_examples
            && let Some(event) = batch
                .iter()
                .find(|event| event.event_type.is_scoring_point())
        {
            printed_examples = true;
            println!(
                "    curl -s{token} -X POST {url}/v1/score -H 'content-type: application/json' -d '{{\"user_id\":{},\"user_session\":\"{}\",\"product_id\":{}}}'",
                event.user_id, event.user_session, event.product_id
            );
            println!(
                "    curl -s{token} {url}/v1/sessions/{}/{}",
                event.user_id, event.user_session
            );
            println!("    curl -s{token} {url}/v1/users/{}", event.user_id);
            println!("    curl -s{token} {url}/v1/products/{}", event.product_id);
        }
        summary.events_replayed += batch.len() as u64;
        service.engine.ingest(batch).await?;
        service.engine.catalog_caught_up().await?;
        for (key, product_id) in samples {
            let vectors = service.engine.features(key, vec![product_id]).await?;
            let result = service
                .scoring
                .send(crate::online::scoring::Score {
                    vectors,
                    explain: false,
                })
                .await?;
            propensity_sum += result.scores[0].propensity;
            summary.scored += 1;
        }
        if last_line.elapsed() >= Duration::from_secs(1) {
            let stats = service.engine.stats().await?;
            let (_, rate) = abandonment_rate(&service);
            let per_second = (summary.events_replayed - events_at_last_line) as f64
                / last_line.elapsed().as_secs_f64();
            println!(
                "    {} | {:>8.0} events/s | {:>6} live sessions | abandonment {:>5.1}% | mean propensity {:.3}",
                format_time(stats.watermark),
                per_second,
                stats.live_sessions,
                rate * 100.0,
                propensity_sum / summary.scored.max(1) as f64
            );
            last_line = Instant::now();
            events_at_last_line = summary.events_replayed;
        }
    }
    service.engine.flush(true).await?;
    let (abandoned, rate) = abandonment_rate(&service);
    summary.abandoned = abandoned;
    summary.sessions_closed = Outcome::ALL
        .iter()
        .map(|outcome| closed(&service, *outcome))
        .sum();
    summary.mean_propensity = propensity_sum / summary.scored.max(1) as f64;
    println!(
        "replayed {} held-out events in {:.1} s; {} sessions closed, {} abandoned carts ({:.1}% of sessions that ended with a cart or a purchase), {} scores, mean propensity {:.3}",
        summary.events_replayed,
        started.elapsed().as_secs_f64(),
        summary.sessions_closed,
        summary.abandoned,
        rate * 100.0,
        summary.scored,
        summary.mean_propensity
    );
    if options.exit_after_replay {
        service.stop().await?;
        return Ok(summary);
    }
    service.ready.store(true, Ordering::Relaxed);
    println!("the service keeps running on {url}, its console at {url}/; Ctrl-C stops it");
    tokio::signal::ctrl_c().await.ok();
    service.stop().await?;
    Ok(summary)
}
