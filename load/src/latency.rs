//! The scoring measures of `bench` (issue 15): `/v1/score` against the floor of the HTTP stack
//! (`GET /health`, taken in turns with it so both see the same machine), while events are
//! ingested at a fixed pace; with the load generator pinned to one CPU; with the explanation;
//! ranking 50 products; the highest rate that keeps p99 within 1 ms; and a model swapped under
//! load.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use propensity::online::serve::Service;
use propensity_actors::event::Event;

use crate::report::{Goal, Measure};
use crate::score::{Endpoint, ScoreArgs, ScoreResult, print_score, score_in_own_thread};

/// Events/s ingested while scores are measured.
const INGEST_RATE: f64 = 20_000.0;
/// Slices each paired measure is cut into, taken in turns with the floor's.
const SLICES: u64 = 5;
/// Seconds per rate when searching for the highest rate within 1 ms.
const SEARCH_SECONDS: u64 = 3;

type Targets = Arc<Vec<(u64, String, u64)>>;

/// One load run from its own thread, while this thread ingests `events` at `ingest_rate`
/// (none: no ingest). Returns the run and the events/s ingested meanwhile.
async fn run(
    service: &Service,
    args: ScoreArgs,
    targets: Targets,
    ingest: Option<(&[Event], f64)>,
) -> Result<(ScoreResult, f64)> {
    let load = tokio::task::spawn_local(score_in_own_thread(args, targets));
    let Some((events, rate)) = ingest else {
        return Ok((load.await??, 0.0));
    };
    let ingested = ingest_paced(service, events, rate, || load.is_finished()).await?;
    Ok((load.await??, ingested))
}

/// Pushes `events` through the actor path at `rate` per second, a slice every 10 ms, until
/// `done`; each round of `events` is shifted in time past the one before, so nothing is a
/// duplicate. Returns the events/s achieved.
async fn ingest_paced(
    service: &Service,
    events: &[Event],
    rate: f64,
    done: impl Fn() -> bool,
) -> Result<f64> {
    let tick = Duration::from_millis(10);
    let per_tick = ((rate * tick.as_secs_f64()).round() as usize).max(1);
    let span =
        events.last().map_or(0, |last| last.time) - events.first().map_or(0, |first| first.time);
    let shift = span + 2 * 3600 * 1000;
    let started = Instant::now();
    let (mut next, mut position, mut round, mut ingested) = (started, 0, 1, 0);
    while !done() {
        let mut chunk = Vec::with_capacity(per_tick);
        while chunk.len() < per_tick {
            if position == events.len() {
                position = 0;
                round += 1;
            }
            let event = &events[position];
            chunk.push(Event {
                time: event.time + round * shift,
                ..event.clone()
            });
            position += 1;
        }
        ingested += chunk.len();
        service.engine.ingest(chunk).await?;
        next += tick;
        tokio::time::sleep_until(next.into()).await;
    }
    Ok(ingested as f64 / started.elapsed().as_secs_f64())
}

/// A measure and the floor beside it, taken in turns, slice by slice.
struct Paired {
    measured: ScoreResult,
    floor: ScoreResult,
    ingest_rate: f64,
    /// Scores whose features came from the board, and through the actors.
    feature_reads: (u64, u64),
}

/// The service's count of scores read from the board and through the actors.
fn feature_reads(service: &Service) -> (u64, u64) {
    let reads = &service.metrics.score_feature_reads;
    (
        reads.with_label_values(&["board"]).get(),
        reads.with_label_values(&["actors"]).get(),
    )
}

fn args(service: &Service, endpoint: Endpoint, rate: u64, seconds: u64) -> ScoreArgs {
    ScoreArgs {
        url: service.url(),
        rate,
        seconds,
        concurrency: 256,
        events: None,
        endpoint,
        pin_cpu: None,
        track_versions: false,
    }
}

/// `endpoint` and `GET /health` at `rate`, `seconds` each, in turns.
async fn paired(
    service: &Service,
    targets: &Targets,
    ingest: Option<&[Event]>,
    endpoint: Endpoint,
    rate: u64,
    seconds: u64,
    pin_cpu: Option<usize>,
) -> Result<Paired> {
    let slice = (seconds / SLICES).max(1);
    let (mut measured, mut floor): (Option<ScoreResult>, Option<ScoreResult>) = (None, None);
    let mut ingest_rates = Vec::new();
    let reads_before = feature_reads(service);
    for _ in 0..SLICES {
        for (which, run_endpoint) in [(0, Endpoint::Health), (1, endpoint)] {
            let mut run_args = args(service, run_endpoint, rate, slice);
            run_args.pin_cpu = pin_cpu;
            let (result, ingested) = run(
                service,
                run_args,
                targets.clone(),
                ingest.map(|events| (events, INGEST_RATE)),
            )
            .await?;
            ingest_rates.push(ingested);
            let slot = if which == 0 {
                &mut floor
            } else {
                &mut measured
            };
            *slot = Some(match slot.take() {
                Some(before) => before.merge(result),
                None => result,
            });
        }
    }
    let (measured, floor) = (measured.expect("slices"), floor.expect("slices"));
    let reads_after = feature_reads(service);
    let feature_reads = (
        reads_after.0 - reads_before.0,
        reads_after.1 - reads_before.1,
    );
    print_score(Endpoint::Health, &floor);
    print_score(endpoint, &measured);
    Ok(Paired {
        measured,
        floor,
        ingest_rate: ingest_rates.iter().sum::<f64>() / ingest_rates.len() as f64,
        feature_reads,
    })
}

fn latencies(result: &ScoreResult) -> String {
    format!(
        "p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs; {} requests at {:.0}/s, {} errors",
        result.p50,
        result.p99,
        result.p999,
        result.max,
        result.sent,
        result.achieved_rate,
        result.errors
    )
}

fn details(result: &ScoreResult) -> serde_json::Value {
    serde_json::json!({
        "requested_per_second": result.rate,
        "achieved_per_second": result.achieved_rate,
        "sent": result.sent,
        "errors": result.errors,
        "p50_us": result.p50,
        "p99_us": result.p99,
        "p999_us": result.p999,
        "max_us": result.max,
        "from_send_p50_us": result.sent_p50,
        "from_send_p99_us": result.sent_p99,
    })
}

/// The rows of one paired run: the measure's p99 against `goal_us`, optionally its p99.9
/// against `tail_goal_us`, and its p99 over the floor's.
fn paired_measures(
    key: &str,
    what: &str,
    pair: &Paired,
    goal_us: Option<f64>,
    tail_goal_us: Option<f64>,
    floor_ratio_goal: Option<f64>,
) -> Vec<Measure> {
    let context = if pair.ingest_rate > 0.0 {
        format!(
            " while {:.0} events/s were ingested (asked {INGEST_RATE:.0})",
            pair.ingest_rate
        )
    } else {
        String::new()
    };
    let mut details = details(&pair.measured);
    details["floor"] = self::details(&pair.floor);
    details["ingest_events_per_second"] = serde_json::json!(pair.ingest_rate);
    details["features_from_board"] = serde_json::json!(pair.feature_reads.0);
    details["features_through_actors"] = serde_json::json!(pair.feature_reads.1);
    let (on_board, through_actors) = pair.feature_reads;
    let board_share = format!(
        "; features of {:.1}% of scores read from the board, the rest through the actors",
        100.0 * on_board as f64 / (on_board + through_actors).max(1) as f64
    );
    let mut measures = vec![Measure {
        key: format!("{key}_p99"),
        name: format!("{what}{context}: p99 from schedule"),
        value: pair.measured.p99 as f64,
        unit: "µs (p99)",
        result: latencies(&pair.measured) + &board_share,
        goal: goal_us.and_then(Goal::at_most),
        goal_text: goal_us.map_or("none (reported)".into(), |goal| {
            format!("p99 ≤ {:.0} ms", goal / 1000.0)
        }),
        details: details.clone(),
    }];
    if let Some(tail) = tail_goal_us {
        measures.push(Measure {
            key: format!("{key}_p999"),
            name: format!("{what}{context}: p99.9 from schedule"),
            value: pair.measured.p999 as f64,
            unit: "µs (p99.9)",
            result: format!("p99.9 {} µs", pair.measured.p999),
            goal: Goal::at_most(tail),
            goal_text: format!("p99.9 ≤ {:.0} ms", tail / 1000.0),
            details: details.clone(),
        });
    }
    let ratio = pair.measured.p99 as f64 / pair.floor.p99.max(1) as f64;
    measures.push(Measure {
        key: format!("{key}_over_floor"),
        name: format!(
            "{what}{context}: p99 over the floor's (GET /health at the same rate, taken in turns, {SLICES} slices each)"
        ),
        value: ratio,
        unit: "× floor p99",
        result: format!(
            "{ratio:.2}×: {} µs against GET /health {}",
            pair.measured.p99,
            latencies(&pair.floor)
        ),
        goal: floor_ratio_goal.and_then(Goal::at_most),
        goal_text: floor_ratio_goal.map_or("none (reported)".into(), |goal| {
            format!("≤ {goal}× the floor")
        }),
        details,
    });
    measures
}

/// Every scoring measure, on a service that holds `events` (so the targets are live).
pub async fn bench_scoring(
    seconds: u64,
    service: &Service,
    model_path: &Path,
    events: Vec<Event>,
    targets: Targets,
) -> Result<Vec<Measure>> {
    // Two seconds first open the connections, as on a service that has been answering for a
    // while (every target's entities are in memory already: the bench keeps sessions live).
    run(
        service,
        args(service, Endpoint::Score, 5_000, 2),
        targets.clone(),
        None,
    )
    .await?;
    let mut measures = Vec::new();
    let ingest = Some(events.as_slice());

    let pair = paired(
        service,
        &targets,
        ingest,
        Endpoint::Score,
        1_000,
        seconds,
        None,
    )
    .await?;
    measures.extend(paired_measures(
        "score_1000_while_ingesting",
        "/v1/score at 1k/s, one product, explanation off",
        &pair,
        None,
        None,
        Some(1.5),
    ));
    let pair = paired(
        service,
        &targets,
        ingest,
        Endpoint::Score,
        10_000,
        seconds,
        None,
    )
    .await?;
    measures.extend(paired_measures(
        "score_10000_while_ingesting",
        "/v1/score at 10k/s, one product, explanation off",
        &pair,
        Some(1000.0),
        Some(5000.0),
        Some(1.5),
    ));
    let pinned = available_cpus().last().copied();
    if let Some(cpu) = pinned {
        let pair = paired(
            service,
            &targets,
            ingest,
            Endpoint::Score,
            10_000,
            seconds,
            Some(cpu),
        )
        .await?;
        measures.extend(paired_measures(
            "score_10000_while_ingesting_pinned",
            &format!("/v1/score at 10k/s, the load generator pinned to CPU {cpu} (taskset)"),
            &pair,
            Some(1000.0),
            None,
            None,
        ));
    }
    let pair = paired(
        service,
        &targets,
        ingest,
        Endpoint::ScoreExplained,
        10_000,
        seconds,
        None,
    )
    .await?;
    measures.extend(paired_measures(
        "score_explained_10000_while_ingesting",
        "/v1/score at 10k/s with the explanation",
        &pair,
        None,
        None,
        None,
    ));
    let pair = paired(
        service,
        &targets,
        ingest,
        Endpoint::Rank50,
        1_000,
        seconds,
        None,
    )
    .await?;
    measures.extend(paired_measures(
        "rank50_1000_while_ingesting",
        "/v1/score ranking 50 products at 1k/s",
        &pair,
        Some(2000.0),
        None,
        None,
    ));
    measures.push(max_rate(service, &targets).await?);
    measures.push(hot_reload(service, model_path, &targets, seconds).await?);
    Ok(measures)
}

/// The CPUs this process may run on.
fn available_cpus() -> Vec<usize> {
    core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|core| core.id)
        .collect()
}

/// The highest of a ladder of rates at which `/v1/score` keeps p99 within 1 ms (no ingest).
async fn max_rate(service: &Service, targets: &Targets) -> Result<Measure> {
    let mut tried = Vec::new();
    let mut best: Option<ScoreResult> = None;
    for rate in [
        1_000, 2_500, 5_000, 7_500, 10_000, 12_500, 15_000, 20_000, 25_000,
    ] {
        let (result, _) = run(
            service,
            args(service, Endpoint::Score, rate, SEARCH_SECONDS),
            targets.clone(),
            None,
        )
        .await?;
        print_score(Endpoint::Score, &result);
        let held =
            result.p99 <= 1000 && result.errors == 0 && result.achieved_rate >= 0.97 * rate as f64;
        tried.push(serde_json::json!({"rate": rate, "p99_us": result.p99, "achieved_per_second": result.achieved_rate, "held": held}));
        if !held {
            break;
        }
        best = Some(result);
    }
    let value = best.as_ref().map_or(0.0, |best| best.rate as f64);
    Ok(Measure {
        key: "score_max_rate_within_1ms".into(),
        name: format!(
            "/v1/score: the highest rate of {} with p99 ≤ 1 ms ({SEARCH_SECONDS} s per rate, no ingest)",
            "1k, 2.5k, 5k, 7.5k, 10k, 12.5k, 15k, 20k, 25k/s"
        ),
        value,
        unit: "requests/s",
        result: match &best {
            Some(best) => format!("{value:.0}/s: {}", latencies(best)),
            None => "none: p99 was over 1 ms at 1k/s".into(),
        },
        goal: Goal::at_least(10_000.0),
        goal_text: "≥ 10k/s".into(),
        details: serde_json::json!({"tried": tried}),
    })
}

/// `/v1/score` at 10k/s while the model file is replaced by a model of another version.
async fn hot_reload(
    service: &Service,
    model_path: &Path,
    targets: &Targets,
    seconds: u64,
) -> Result<Measure> {
    let model = propensity::offline::model::Model::load(model_path)
        .with_context(|| format!("reading {}", model_path.display()))?;
    let mut next = model.clone();
    next.version = format!("{}-reloaded", model.version);
    let mut run_args = args(service, Endpoint::Score, 10_000, seconds.max(4));
    run_args.track_versions = true;
    let load = tokio::task::spawn_local(score_in_own_thread(run_args, targets.clone()));
    tokio::time::sleep(Duration::from_secs(seconds.max(4) / 3)).await;
    next.save(model_path)?;
    let result = load.await??;
    print_score(Endpoint::Score, &result);
    // The next measures, and the next run, start from the model they trained.
    model.save(model_path)?;
    let old = result.versions.get(&model.version).copied().unwrap_or(0);
    let new = result.versions.get(&next.version).copied().unwrap_or(0);
    let others: u64 = result.versions.values().sum::<u64>() - old - new;
    if others > 0 {
        bail!(
            "answers named a model that was never in service: {:?}",
            result.versions
        );
    }
    let swapped = old > 0 && new > 0 && result.errors == 0;
    Ok(Measure {
        key: "score_hot_reload_10000".into(),
        name: "/v1/score at 10k/s while the model file is replaced (reloaded within a second)"
            .into(),
        value: if swapped { result.max as f64 } else { f64::MAX },
        unit: "µs (max)",
        result: format!(
            "{} errors; {old} answers named the old model, {new} the new one; {}",
            result.errors,
            latencies(&result)
        ),
        goal: Goal::at_most(5000.0),
        goal_text: "0 errors, both versions answer, no request over 5 ms".into(),
        details: serde_json::json!({
            "old_version_answers": old,
            "new_version_answers": new,
            "errors": result.errors,
            "p99_us": result.p99,
            "p999_us": result.p999,
            "max_us": result.max,
        }),
    })
}
