//! The `propensity` command line: parse, load settings, start logging, run the command.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use propensity::config::{LogFormat, Settings};
use propensity::tools::generate::{GenerateOptions, Process};

// Millions of small, short-lived allocations (events, messages, entity state) across the actor
// threads: glibc's malloc spent a sixth of the actor path's time freeing and consolidating.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Real-time purchase propensity and cart-abandonment monitoring for online shops.
#[derive(Parser)]
#[command(name = "propensity", version, about, long_about = None)]
struct Cli {
    /// Directory of the config overlays (<env>.toml); the defaults are built in.
    #[arg(
        long,
        global = true,
        default_value = "config",
        env = "PROPENSITY_CONFIG_DIR"
    )]
    config_dir: PathBuf,
    /// Config overlay to apply over the defaults, e.g. `test` for config/test.toml.
    #[arg(long, global = true, env = "PROPENSITY_ENV")]
    env: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a synthetic REES46 clickstream from a documented behavioural model.
    Generate {
        /// Number of shoppers.
        #[arg(long, default_value_t = 2000)]
        users: u64,
        /// Days of history.
        #[arg(long, default_value_t = 7)]
        days: u32,
        /// Random seed; the same seed gives the same bytes.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Output CSV file.
        #[arg(long)]
        out: PathBuf,
        /// Also write the generator's own purchase probability for every scoring point.
        #[arg(long)]
        truth: Option<PathBuf>,
        /// What the shoppers do: browse and buy through the purchase funnel (with a truth for
        /// the propensity model), or buy on BG/NBD occasions with Gamma-Gamma spend (with known
        /// parameters for `value fit`); docs/synthetic-model.md describes both.
        #[arg(long, value_enum, default_value_t = Process::Funnel)]
        process: Process,
    },
    /// Train the propensity model by replaying history through the feature engine.
    Train {
        /// REES46 CSV files (any order inside; they are merged by event time).
        #[arg(long, num_args = 1.., required = true)]
        events: Vec<PathBuf>,
        /// Where to write the model (JSON).
        #[arg(long)]
        model_out: PathBuf,
        /// Validation starts here (`2019-10-01 00:00:00 UTC` or RFC 3339); default: the last 20% of the time span.
        #[arg(long)]
        split_at: Option<String>,
        /// Write the rows kept, with labels, times, split and weights, as CSV.
        #[arg(long)]
        export_features: Option<PathBuf>,
        /// About how many fitting rows to grow the tree on: above it, every positive and one
        /// negative in k are kept, each negative weighted k. 0 keeps every row.
        #[arg(long, default_value_t = propensity::offline::train::DEFAULT_MAX_FIT_ROWS)]
        max_fit_rows: u64,
        /// Write the tree (DOT) and ROC, precision-recall, calibration and importance plots (SVG).
        #[arg(long)]
        report_dir: Option<PathBuf>,
        /// A truth file from `generate --truth`: report the oracle's metrics on the same rows.
        #[arg(long)]
        truth: Option<PathBuf>,
        /// Print the report as one JSON object on the last line.
        #[arg(long)]
        json: bool,
        /// Deepest tree level.
        #[arg(long, default_value_t = propensity::offline::model::TrainOptions::default().max_depth)]
        max_depth: usize,
        /// Fewest training rows in a leaf.
        #[arg(long, default_value_t = propensity::offline::model::TrainOptions::default().min_samples_leaf)]
        min_samples_leaf: usize,
    },
    /// List every feature with its entity and meaning.
    Features {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Describe a feature (or all): entity, meaning, inputs, window, range, and from the current
    /// model its training distribution and importance.
    Describe {
        /// The feature; all of them when left out (`propensity features` lists the names).
        feature: Option<String>,
        /// The model to read distributions and importances from; default: model.path.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild an online store from history through the service's actors: build a new store
    /// ([store] names it), then point the service at it.
    Backfill {
        /// REES46 CSV files (any order inside; they are merged by event time).
        #[arg(long, num_args = 1.., required = true)]
        events: Vec<PathBuf>,
        /// Only events at or after this time (`2019-10-01 00:00:00 UTC` or RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Only events before this time.
        #[arg(long)]
        to: Option<String>,
        /// Rebuild a store that already holds state, from scratch.
        #[arg(long)]
        replace: bool,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Print the HTTP API's OpenAPI document (what schema/openapi.json holds).
    Openapi,
    /// Customer value from purchase histories: BG/NBD and Gamma-Gamma models.
    Value {
        #[command(subcommand)]
        action: ValueAction,
    },
    /// Customer segments: k-means on what the value model says of each customer.
    Segments {
        #[command(subcommand)]
        action: SegmentsAction,
    },
    /// Run the service: HTTP API, actors, store.
    Serve,
    /// Manage the ScyllaDB/Cassandra schema of the online store ([store.scylla]).
    Schema {
        #[command(subcommand)]
        action: SchemaAction,
    },
    /// Generate data, train, serve and replay the held-out part in accelerated real time.
    Demo {
        /// Use these events instead of generating them.
        #[arg(long)]
        events: Option<PathBuf>,
        /// Shoppers to generate.
        #[arg(long, default_value_t = 3000)]
        users: u64,
        /// Days to generate.
        #[arg(long, default_value_t = 7)]
        days: u32,
        /// Random seed of the generated data.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Event-time seconds replayed per wall-clock second.
        #[arg(long, default_value_t = 3600.0)]
        speedup: f64,
        /// Stop after the replay with a final summary instead of serving on.
        #[arg(long)]
        exit_after_replay: bool,
        /// Where the demo keeps its data, model, report and state.
        #[arg(long, default_value = "var/demo")]
        work_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ValueAction {
    /// Fit BG/NBD (repeat purchases) and Gamma-Gamma (spend per purchase) on a calibration
    /// period and save them as one model file; with a holdout period, check the predictions.
    Fit {
        /// Purchase files: REES46 CSV events (only `purchase` rows are read) or CDNOW files.
        #[arg(long, num_args = 1.., required = true)]
        events: Vec<PathBuf>,
        /// Format of the --events files.
        #[arg(long, value_enum, default_value = "rees46")]
        format: propensity::offline::value::input::InputFormat,
        /// Where to write the model (JSON).
        #[arg(long)]
        model_out: PathBuf,
        /// Last day of the calibration period, inclusive (`YYYY-MM-DD`, or a time such as
        /// `2019-10-15 00:00:00 UTC` or RFC 3339, taken as its UTC day); default: the last day
        /// of the data. Required with --holdout-end.
        #[arg(long)]
        calibration_end: Option<String>,
        /// Last day of the holdout period, inclusive (same forms); the holdout starts the day
        /// after --calibration-end. Prints predicted against actual repeat purchases in it.
        #[arg(long)]
        holdout_end: Option<String>,
        /// Write the chart of predicted and actual holdout purchases per calibration frequency
        /// (SVG) into this directory; needs --holdout-end.
        #[arg(long)]
        report_dir: Option<PathBuf>,
        /// Print the report as one JSON object on the last line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SegmentsAction {
    /// Cluster customers (k-means, k chosen by silhouette) on weeks since their last purchase,
    /// repeat purchase days, expected spend and predicted value, name the segments and save them
    /// as one model file for the service (`segments.model_path`).
    Fit {
        /// Purchase files: REES46 CSV events (only `purchase` rows are read) or CDNOW files.
        #[arg(long, num_args = 1.., required = true)]
        events: Vec<PathBuf>,
        /// Format of the --events files.
        #[arg(long, value_enum, default_value = "rees46")]
        format: propensity::offline::value::input::InputFormat,
        /// The customer-value model (`propensity value fit`) whose predictions are clustered.
        #[arg(long)]
        value_model: PathBuf,
        /// Where to write the segments (JSON).
        #[arg(long)]
        model_out: PathBuf,
        /// Fewest segments tried.
        #[arg(long, default_value_t = 2)]
        k_min: usize,
        /// Most segments tried.
        #[arg(long, default_value_t = 6)]
        k_max: usize,
        /// Random seed of k-means' initialisation.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Write a scatter plot of the segments (SVG) into this directory.
        #[arg(long)]
        report_dir: Option<PathBuf>,
        /// Print the report as one JSON object on the last line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SchemaAction {
    /// Create the keyspace and tables, or bring older ones up to date; prints what it did.
    Apply,
    /// Print the CQL that `apply` runs on an empty cluster, for review or cqlsh.
    Print,
}

fn init_logging(settings: &Settings) {
    // The ScyllaDB driver narrates every connection at info; its warnings are what matter.
    let level = if settings.logging.level.contains("scylla") {
        settings.logging.level.clone()
    } else {
        format!("{},scylla=warn", settings.logging.level)
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.logging.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Writes to stdout; a reader that stopped early (`| head`) ends the output, not the process
/// with a panic.
fn write_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(error).context("failed to write to stdout")
        }
        _ => Ok(()),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // The causes, one line, without a backtrace: these are users' errors more than bugs.
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let env = match (&cli.command, &cli.env) {
        (_, Some(env)) => Some(env.clone()),
        (Command::Demo { .. }, None) => Some("demo".to_owned()),
        _ => None,
    };
    let settings = Settings::load(&cli.config_dir, env.as_deref())?;
    init_logging(&settings);
    match cli.command {
        Command::Generate {
            users,
            days,
            seed,
            out,
            truth,
            process,
        } => {
            let options = GenerateOptions {
                users,
                days,
                seed,
                process,
                ..GenerateOptions::default()
            };
            let summary =
                propensity::tools::generate::write_files(&options, &out, truth.as_deref(), true)?;
            println!(
                "wrote {} events ({} sessions, {} with a cart, {} abandoned, {} purchases, {} scoring points) to {}",
                summary.events,
                summary.sessions,
                summary.sessions_with_cart,
                summary.abandoned_carts,
                summary.purchases,
                summary.scoring_points,
                out.display()
            );
            Ok(())
        }
        Command::Train {
            events,
            model_out,
            split_at,
            export_features,
            report_dir,
            truth,
            json,
            max_depth,
            min_samples_leaf,
            max_fit_rows,
        } => {
            let split_at = split_at
                .map(|text| {
                    propensity_actors::event::parse_time(&text).with_context(|| {
                        format!("--split-at {text:?} is not `YYYY-MM-DD HH:MM:SS UTC` or RFC 3339")
                    })
                })
                .transpose()?;
            let options = propensity::offline::model::TrainOptions {
                max_depth,
                min_samples_leaf,
                ..Default::default()
            };
            let request = propensity::offline::train::TrainRequest {
                events,
                model_out,
                split_at,
                export_features,
                report_dir,
                truth,
                session_timeout: settings.engine.session_timeout_millis(),
                options,
                max_fit_rows,
                show_progress: !json,
            };
            let (report, _) = propensity::offline::train::run(&request)?;
            propensity::offline::train::print_report(&report, json)
        }
        Command::Features { json } => {
            let features = propensity_actors::features::FEATURES;
            if json {
                println!("{}", serde_json::to_string_pretty(&features[..])?);
            } else {
                for feature in features {
                    println!(
                        "{:<40} {:<16} {}",
                        feature.name,
                        format!("{:?}", feature.entity),
                        feature.description
                    );
                }
            }
            Ok(())
        }
        Command::Describe {
            feature,
            model,
            json,
        } => {
            let model_path = model.unwrap_or_else(|| settings.model.path.clone());
            let description =
                propensity::tools::describe::describe(feature.as_deref(), &model_path)?;
            let text = propensity::tools::describe::render(&description, &model_path, json)?;
            write_stdout(&text)
        }
        Command::Backfill {
            events,
            from,
            to,
            replace,
            json,
        } => {
            let time = |flag: &str, text: Option<String>| {
                text.map(|text| {
                    propensity_actors::event::parse_time(&text).with_context(|| {
                        format!("{flag} {text:?} is not `YYYY-MM-DD HH:MM:SS UTC` or RFC 3339")
                    })
                })
                .transpose()
            };
            let request = propensity::tools::backfill::BackfillRequest {
                events,
                from: time("--from", from)?,
                to: time("--to", to)?,
                replace,
                show_progress: !json,
            };
            let report = actix_rt::System::new()
                .block_on(propensity::tools::backfill::run(&request, &settings))?;
            propensity::tools::backfill::print_report(&report, json)
        }
        Command::Openapi => write_stdout(propensity::online::http::openapi::document()),
        Command::Value { action } => match action {
            ValueAction::Fit {
                events,
                format,
                model_out,
                calibration_end,
                holdout_end,
                report_dir,
                json,
            } => {
                let day = |flag: &str, text: Option<String>| {
                    text.map(|text| {
                        propensity::offline::value::input::parse_day(&text).with_context(|| {
                            format!(
                                "{flag} {text:?} is not `YYYY-MM-DD`, `YYYY-MM-DD HH:MM:SS UTC` or RFC 3339"
                            )
                        })
                    })
                    .transpose()
                };
                let request = propensity::offline::value::fit::FitRequest {
                    inputs: events,
                    format,
                    model_out,
                    calibration_end: day("--calibration-end", calibration_end)?,
                    holdout_end: day("--holdout-end", holdout_end)?,
                    report_dir,
                };
                let report = propensity::offline::value::fit::run(&request)?;
                propensity::offline::value::fit::print_report(&report, json)?;
                Ok(())
            }
        },
        Command::Segments {
            action:
                SegmentsAction::Fit {
                    events,
                    format,
                    value_model,
                    model_out,
                    k_min,
                    k_max,
                    seed,
                    report_dir,
                    json,
                },
        } => {
            let request = propensity::offline::value::segments::SegmentRequest {
                inputs: events,
                format,
                value_model,
                model_out,
                k_min,
                k_max,
                report_dir,
                seed,
            };
            let report = propensity::offline::value::segments::run(&request)?;
            propensity::offline::value::segments::print_report(&report, json)?;
            Ok(())
        }
        Command::Serve => {
            actix_rt::System::new().block_on(propensity::online::serve::run(settings))
        }
        Command::Schema { action } => {
            let scylla = &settings.store.scylla;
            match action {
                SchemaAction::Apply => {
                    let runtime = tokio::runtime::Runtime::new()
                        .context("failed to start a runtime for the schema")?;
                    let report = runtime.block_on(async {
                        let session = propensity::online::store::cluster::connect(scylla).await?;
                        propensity::online::store::schema::apply(&session, scylla).await
                    })?;
                    for line in report {
                        println!("{line}");
                    }
                }
                SchemaAction::Print => {
                    let schema =
                        propensity::online::store::schema::Schema::for_keyspace(&scylla.keyspace)?;
                    if scylla.replication_strategy
                        == propensity::config::ReplicationStrategy::NetworkTopologyStrategy
                        && scylla.datacenters.is_empty()
                    {
                        anyhow::bail!(
                            "`schema print` does not ask the cluster for its datacenters: list them in store.scylla.datacenters"
                        );
                    }
                    let replication =
                        propensity::online::store::schema::desired_replication(scylla, &[])?;
                    for statement in schema.statements(&replication) {
                        println!("{statement};");
                    }
                }
            }
            Ok(())
        }
        Command::Demo {
            events,
            users,
            days,
            seed,
            speedup,
            exit_after_replay,
            work_dir,
        } => {
            if speedup <= 0.0 || !speedup.is_finite() {
                anyhow::bail!("--speedup must be a positive number");
            }
            let options = propensity::tools::demo::DemoOptions {
                events,
                users,
                days,
                seed,
                speedup,
                exit_after_replay,
                work_dir,
            };
            actix_rt::System::new()
                .block_on(propensity::tools::demo::run(options, settings))
                .map(|_| ())
        }
    }
}
