//! `propensity-load`: measures the service; `main` parses the command line and dispatches.
//!
//! - `publish` ([`publish`]): sends events to RabbitMQ (with confirms) or to `POST /v1/events`, at
//!   full speed, a fixed rate or in accelerated event time.
//! - `ingest` ([`ingest`]): drives events through the embedded actor path as fast as it takes
//!   them and reports events/s and memory per live session ([`memory`]).
//! - `score` ([`score`]): open-loop load on `/v1/score` (or `/health`, explained scores, rankings
//!   of 50 products) at a fixed rate, with latency percentiles corrected for coordinated omission.
//! - `bench` ([`bench`]): runs both on fresh synthetic data ([`events`]), the scoring measures
//!   against the floor of the HTTP stack ([`latency`]), and with `--rabbitmq`
//!   the bus measures of [`bus`], and writes a Markdown report with a JSON twin ([`report`]).

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod bus;
mod events;
mod ingest;
mod latency;
mod memory;
mod publish;
mod report;
mod score;

/// Load generation and benchmarks for propensity.
#[derive(Parser)]
#[command(name = "propensity-load", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send a REES46 CSV or a synthetic stream to RabbitMQ (with confirms) or to POST /v1/events,
    /// at full speed, a fixed rate (--rate) or in accelerated event time (--speed).
    #[command(alias = "replay")]
    Publish(publish::PublishArgs),
    /// Push a synthetic stream through the embedded actor path at full speed.
    Ingest(ingest::IngestArgs),
    /// Open-loop load on /v1/score of a running service at a fixed rate.
    Score(score::ScoreArgs),
    /// Generate data, train, start the service in-process, run ingest and score at several rates,
    /// and write a Markdown report and its JSON twin.
    Bench(bench::BenchArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Publish(args) => actix_rt::System::new().block_on(publish::run(args)),
        Command::Ingest(args) => actix_rt::System::new().block_on(ingest::run(args)),
        Command::Score(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(score::run(args))
        }
        Command::Bench(args) => actix_rt::System::new().block_on(bench::run(&args)),
    }
}
