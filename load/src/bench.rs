//! `propensity-load bench`: generates data, trains, starts the service in-process, measures
//! ingest, memory and scoring (and with `--rabbitmq` the bus measures of [`bus`]), and writes the
//! Markdown report with its JSON twin ([`report`]).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use propensity::config::Settings;
use propensity::online::serve::Service;
use propensity_actors::event::Event;

use crate::events::{read_events, synthetic};
use crate::ingest::{IngestResult, bench_settings, ingest, measure_memory, print_ingest};
use crate::score::targets_from;
use crate::{bus, report};

/// Options of `bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Where the Markdown report goes; the JSON one goes beside it (`.json`).
    #[arg(long, default_value = "docs/benchmarks.md")]
    report: PathBuf,
    /// Shoppers in the synthetic stream (about 7 events per user per day).
    #[arg(long, default_value_t = 20_000)]
    users: u64,
    /// Days in the synthetic stream.
    #[arg(long, default_value_t = 7)]
    days: u32,
    /// Seconds per scoring rate, and of the freshness run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Working directory for data, model and state.
    #[arg(long, default_value = "var/bench")]
    work_dir: PathBuf,
    /// Also measure through RabbitMQ at this URL: PerfTest's ceiling against our end-to-end
    /// events/s, and freshness. On queues and exchanges of this run's own, deleted afterwards.
    #[arg(long, value_name = "AMQP_URL")]
    rabbitmq: Option<String>,
    /// Events drained through the bus, by PerfTest and by the service.
    #[arg(long, default_value_t = 200_000)]
    bus_events: usize,
    /// Events/s published during the freshness run.
    #[arg(long, default_value_t = 10_000.0)]
    freshness_rate: f64,
    /// Measure freshness against ScyllaDB/Cassandra at this node (host:port) instead of the
    /// embedded store, in a keyspace of this run's own, dropped afterwards. Needs --rabbitmq.
    #[arg(long, value_name = "HOST:PORT", requires = "rabbitmq")]
    scylla: Option<String>,
    /// Also measure memory at about a million live sessions (140,000 users over 7 days, about
    /// 7M events: several minutes and over 3 GB of memory).
    #[arg(long)]
    million_sessions: bool,
}

fn memory_measure(result: &IngestResult, key: &str, name: String) -> report::Measure {
    let per_session = result.heap_growth_bytes as f64 / result.live_sessions.max(1) as f64;
    report::Measure {
        key: key.into(),
        name,
        value: per_session,
        unit: "bytes per live session",
        result: format!(
            "{per_session:.0} bytes at {} sessions ({:.1} MiB of live heap)",
            result.live_sessions,
            result.heap_growth_bytes as f64 / 1048576.0
        ),
        goal: report::Goal::at_most(2560.0),
        goal_text: "≤ 2.5 KB".into(),
        details: serde_json::json!({
            "live_sessions": result.live_sessions,
            "users": result.users,
            "events": result.events,
            "heap_growth_bytes": result.heap_growth_bytes,
            "rss_growth_bytes": result.rss_growth_bytes,
            "events_per_second": result.events as f64 / result.seconds,
        }),
    }
}

/// The command line that reproduces a report, for its header.
fn bench_command(args: &BenchArgs) -> String {
    let mut command = String::from("cargo run --release -p propensity-load -- bench");
    // Only what differs from the defaults, so the usual command reads as it is typed.
    for (flag, value, default) in [
        ("--users", args.users, 20_000),
        ("--days", u64::from(args.days), 7),
        ("--seconds", args.seconds, 10),
        ("--bus-events", args.bus_events as u64, 200_000),
        ("--freshness-rate", args.freshness_rate as u64, 10_000),
    ] {
        if value != default {
            command.push_str(&format!(" {flag} {value}"));
        }
    }
    if let Some(url) = &args.rabbitmq {
        command.push_str(&format!(
            " --rabbitmq {}",
            propensity::online::serve::redact(url)
        ));
    }
    if let Some(node) = &args.scylla {
        command.push_str(&format!(" --scylla {node}"));
    }
    if args.million_sessions {
        command.push_str(" --million-sessions");
    }
    command
}

/// Times the training replay this many times: on a shared two-core machine one run has
/// measured anywhere from 465k to 880k events/s within minutes, so the report gives the median.
const FEATURE_GENERATION_RUNS: usize = 3;

/// The replay rates (events/s) of `first` and of [`FEATURE_GENERATION_RUNS`] - 1 more runs of
/// the same training. Those grow a shallow tree: the fit does not touch the replay's figure.
fn feature_generation_runs(
    request: &propensity::offline::train::TrainRequest,
    first: f64,
) -> Result<Vec<f64>> {
    let mut rates = vec![first];
    for run in 2..=FEATURE_GENERATION_RUNS {
        println!("training replay, run {run} of {FEATURE_GENERATION_RUNS}");
        let again = propensity::offline::train::TrainRequest {
            model_out: request.model_out.with_file_name("model-replay-run.json"),
            options: propensity::offline::model::TrainOptions {
                max_depth: 2,
                ..request.options.clone()
            },
            show_progress: false,
            ..request.clone()
        };
        let (report, _) = propensity::offline::train::run(&again)?;
        rates.push(report.feature_events_per_second);
        let _ = std::fs::remove_file(&again.model_out);
    }
    Ok(rates)
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    }
}

/// Runs every measure and writes the report.
pub async fn run(args: &BenchArgs) -> Result<()> {
    let work_dir = args.work_dir.as_path();
    // Fail before minutes of training when the broker asked for is not there.
    if let Some(url) = &args.rabbitmq {
        bus::check_broker(url).await?;
    }
    let events_path = synthetic(work_dir, args.users, args.days)?;
    let model = work_dir.join("model.json");
    println!("training on {}", events_path.display());
    let request = propensity::offline::train::TrainRequest {
        events: vec![events_path.clone()],
        model_out: model.clone(),
        split_at: None,
        export_features: None,
        report_dir: None,
        truth: None,
        session_timeout: 30 * 60 * 1000,
        options: propensity::offline::model::TrainOptions::default(),
        max_fit_rows: propensity::offline::train::DEFAULT_MAX_FIT_ROWS,
        show_progress: true,
    };
    let (train_report, _) = propensity::offline::train::run(&request)?;
    let feature_rates = feature_generation_runs(&request, train_report.feature_events_per_second)?;
    let feature_rate = median(&feature_rates);
    let events = read_events(&events_path)?;
    let targets = Arc::new(targets_from(&events));
    let mut settings = bench_settings(work_dir, &model, 0)?;
    // The hot reload measure swaps the model file: the service looks every second.
    settings.model.reload_interval_seconds = 1;
    let mut measures = Vec::new();
    measures.push(report::Measure {
        key: "training_feature_generation".into(),
        name: "training: feature generation (parse + replay + rows)".into(),
        value: feature_rate,
        unit: "events/s",
        result: format!(
            "{feature_rate:.0} events/s over {} events, the median of {} runs ({})",
            train_report.events,
            feature_rates.len(),
            feature_rates
                .iter()
                .map(|rate| format!("{rate:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        goal: report::Goal::at_least(1_000_000.0),
        goal_text: "1M events/s".into(),
        details: serde_json::json!({"events": train_report.events, "runs": feature_rates}),
    });
    measures.push(report::Measure {
        key: "training_fit".into(),
        name: "training: fit time".into(),
        value: train_report.fit_seconds,
        unit: "s",
        result: format!(
            "{:.1} s for {} rows",
            train_report.fit_seconds, train_report.fit_rows
        ),
        goal: None,
        goal_text: "none".into(),
        details: serde_json::json!({"rows": train_report.fit_rows}),
    });

    let service = Service::start(&settings).await?;
    let memory_events = events.clone();
    let bus_events: Vec<Event> = events.iter().take(args.bus_events).cloned().collect();
    let freshness_events: Vec<Event> = events
        .iter()
        .skip(args.bus_events)
        .take((args.freshness_rate * args.seconds as f64) as usize)
        .cloned()
        .collect();
    let again_events = events.clone();
    let ingest_result = ingest(&service, events, 4096).await?;
    print_ingest(&ingest_result);
    measures.push(report::Measure {
        key: "embedded_actor_path".into(),
        name: "embedded events/s through the full actor path (user and session actors applied every event)".into(),
        value: ingest_result.events as f64 / ingest_result.seconds,
        unit: "events/s",
        result: format!(
            "{:.0} events/s ({} events, batches of 4096, {} live sessions and {} users in actors)",
            ingest_result.events as f64 / ingest_result.seconds,
            ingest_result.events,
            ingest_result.live_sessions,
            ingest_result.users,
        ),
        goal: report::Goal::at_least(1_000_000.0),
        goal_text: "≥ 1M events/s".into(),
        details: serde_json::json!({
            "events": ingest_result.events,
            "live_sessions": ingest_result.live_sessions,
            "users": ingest_result.users,
        }),
    });
    measures.push(report::Measure {
        key: "embedded_actor_path_durable".into(),
        name: "embedded events/s until durable (the catalog partitions caught up and every entity was written to the embedded store)".into(),
        value: ingest_result.events as f64 / ingest_result.durable_seconds,
        unit: "events/s",
        result: format!(
            "{:.0} events/s ({} events in {:.2} s)",
            ingest_result.events as f64 / ingest_result.durable_seconds,
            ingest_result.events,
            ingest_result.durable_seconds
        ),
        goal: report::Goal::at_least(1_000_000.0),
        goal_text: "≥ 1M events/s".into(),
        details: serde_json::json!({"events": ingest_result.events}),
    });
    let memory_result = measure_memory(&settings, memory_events).await?;
    println!("state memory (store discarding writes):");
    print_ingest(&memory_result);
    measures.push(memory_measure(
        &memory_result,
        "memory_per_live_session",
        format!(
            "memory per live session (live heap growth / live sessions, with {} users and all products)",
            memory_result.users
        ),
    ));

    measures.extend(
        crate::latency::bench_scoring(args.seconds, &service, &model, again_events, targets)
            .await?,
    );
    service.stop().await?;

    if let Some(url) = &args.rabbitmq {
        let bus_settings = bus::private_settings(&settings, url);
        let result = bench_bus(args, &bus_settings, bus_events, freshness_events).await;
        bus::delete_topology(&bus_settings.bus.rabbitmq).await;
        measures.extend(result?);
    }

    if args.million_sessions {
        let path = synthetic(work_dir, 140_000, 7)?;
        println!("memory at a million live sessions, from {}", path.display());
        let events = read_events(&path)?;
        let result = measure_memory(&settings, events).await?;
        print_ingest(&result);
        measures.push(memory_measure(
            &result,
            "memory_per_live_session_million",
            format!(
                "memory per live session at a million sessions ({} users over 7 days, {} events)",
                result.users, result.events
            ),
        ));
    }

    let mut notes = vec![format!(
        "Model on this data: validation ROC-AUC {:.4}, average precision {:.4}.",
        train_report.validation.roc_auc, train_report.validation.average_precision
    )];
    if args.rabbitmq.is_some() {
        notes.push(
            "The bus ratio compares two drains of the same backlog size: ours is timed from starting the service to the last acknowledgement, PerfTest's is the average receiving rate it prints for its consumer run. The publish rates during the freshness runs are what the load tool's publishers (eight confirmed connections) achieved on this machine.".into(),
        );
    }
    if args.rabbitmq.is_none() {
        notes.push(
            "Not measured in this run: RabbitMQ end to end against PerfTest's ceiling, and freshness (add `--rabbitmq AMQP_URL`).".into(),
        );
    }
    if !args.million_sessions {
        notes.push("Not measured in this run: memory at a million live sessions (add `--million-sessions`).".into());
    }
    let report = report::Report {
        command: bench_command(args),
        measured_at: chrono_like_now(),
        measures,
        notes,
    };
    report.write(&args.report)?;
    println!(
        "wrote {} and {}",
        args.report.display(),
        report::Report::json_path(&args.report).display()
    );
    Ok(())
}

/// PerfTest's ceiling, our end-to-end events/s and freshness, on the private topology of
/// `settings`.
async fn bench_bus(
    args: &BenchArgs,
    settings: &Settings,
    bus_events: Vec<Event>,
    freshness_events: Vec<Event>,
) -> Result<Vec<report::Measure>> {
    let message_bytes = bus::average_message_bytes(&bus_events);
    let rabbitmq = settings.bus.rabbitmq.clone();
    let messages = bus_events.len();
    let perftest =
        tokio::task::spawn_blocking(move || bus::perftest(&rabbitmq, messages, message_bytes))
            .await??;
    println!(
        "perftest: published {:.0} msg/s, drained {:.0} msg/s",
        perftest.publish_rate, perftest.consume_rate
    );
    let mut end_to_end_settings = settings.clone();
    end_to_end_settings.store.embedded_path = args.work_dir.join("state-bus.redb");
    let _ = std::fs::remove_file(&end_to_end_settings.store.embedded_path);
    let end_to_end = bus::end_to_end(&end_to_end_settings, bus_events).await?;
    let ours = end_to_end.events as f64 / end_to_end.seconds;
    let ratio = ours / perftest.consume_rate;
    println!("bus end to end: {ours:.0} events/s = {ratio:.2} of PerfTest's drain");
    let mut measures = vec![report::Measure {
        key: "rabbitmq_end_to_end_vs_perftest".into(),
        name: "RabbitMQ end to end (consumed, applied, flushed to the embedded store, acknowledged) / PerfTest's consume rate".into(),
        value: ratio,
        unit: "ratio",
        result: format!(
            "{ratio:.2}: {ours:.0} events/s draining a backlog of {} events from {} quorum queues in {:.1} s, against PerfTest draining {} messages of {} bytes at {:.0} msg/s ({} consumers, prefetch {}, multi-ack every 100)",
            end_to_end.events,
            perftest.queues,
            end_to_end.seconds,
            perftest.messages,
            perftest.message_bytes,
            perftest.consume_rate,
            perftest.queues,
            settings.bus.rabbitmq.prefetch
        ),
        goal: report::Goal::at_least(0.9),
        goal_text: "≥ 0.9".into(),
        details: serde_json::json!({
            "events": end_to_end.events,
            "seconds": end_to_end.seconds,
            "events_per_second": ours,
            "publish_events_per_second": end_to_end.publish_rate,
            "perftest_consume_per_second": perftest.consume_rate,
            "perftest_publish_per_second": perftest.publish_rate,
            "perftest_messages": perftest.messages,
            "message_bytes": perftest.message_bytes,
            "queues": perftest.queues,
            "perftest_command": perftest.command,
        }),
    }];

    let mut freshness_settings = settings.clone();
    freshness_settings.store.embedded_path = args.work_dir.join("state-freshness.redb");
    let _ = std::fs::remove_file(&freshness_settings.store.embedded_path);
    let mut runs = vec![freshness_settings.clone()];
    // With Cassandra too, the embedded run tells the store's share of the delay.
    if let Some(node) = &args.scylla {
        runs.push(bus::with_scylla(&freshness_settings, node));
    }
    for run_settings in runs {
        if run_settings.store.kind == propensity::config::StoreKind::Scylla {
            // Cassandra's JVM compiles its hot paths during its first minutes of work: on a node
            // started minutes before, this run measured p50 5.2 s where the next run measured
            // 1.0 s. A node in service is warm (and ScyllaDB compiles nothing at run time), so
            // the same run goes once first, unreported, on a keyspace dropped after it.
            println!("freshness (scylla store): a warm-up run first, not reported");
            let warm_up =
                bus::freshness(&run_settings, freshness_events.clone(), args.freshness_rate).await;
            bus::drop_keyspace(&run_settings);
            warm_up.context("the warm-up run of the freshness measure on the scylla store")?;
        }
        let freshness =
            bus::freshness(&run_settings, freshness_events.clone(), args.freshness_rate).await;
        if run_settings.store.kind == propensity::config::StoreKind::Scylla {
            bus::drop_keyspace(&run_settings);
        }
        measures.push(freshness_measure(&freshness?, args, settings));
    }
    Ok(measures)
}

fn freshness_measure(
    freshness: &bus::Freshness,
    args: &BenchArgs,
    settings: &Settings,
) -> report::Measure {
    println!(
        "freshness ({} store): p50 {:.0} ms, p99 {:.0} ms over {} probes ({:.0} events/s published)",
        freshness.store,
        freshness.p50_ms,
        freshness.p99_ms,
        freshness.probes,
        freshness.publish_rate
    );
    report::Measure {
        key: format!("freshness_{}", freshness.store),
        name: format!(
            "freshness: publish to visible in the {} store, {:.0} events/s requested, {:.0} events/s published",
            freshness.store, args.freshness_rate, freshness.publish_rate
        ),
        value: freshness.p99_ms,
        unit: "ms (p99)",
        result: format!(
            "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms over {} purchase probes (one every 100 ms; store polled every 10 ms; the consumer makes applied events durable every {} ms{})",
            freshness.p50_ms,
            freshness.p99_ms,
            freshness.max_ms,
            freshness.probes,
            settings.bus.rabbitmq.ack_interval_ms,
            if freshness.store == "scylla" {
                "; after an unreported warm-up run of the same events"
            } else {
                ""
            }
        ),
        goal: report::Goal::at_most(2000.0),
        goal_text: "p99 ≤ 2 s".into(),
        details: serde_json::json!({
            "store": freshness.store,
            "probes": freshness.probes,
            "p50_ms": freshness.p50_ms,
            "p99_ms": freshness.p99_ms,
            "max_ms": freshness.max_ms,
            "failed_store_polls": freshness.read_errors,
            "requested_events_per_second": args.freshness_rate,
            "published_events_per_second": freshness.publish_rate,
        }),
    }
}

fn chrono_like_now() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    propensity_actors::event::format_time(seconds as i64 * 1000)
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_is_the_middle_value() {
        assert_eq!(median(&[880.0, 465.0, 812.0]), 812.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
    }
}
