//! `propensity-load publish` (alias `replay`): sends a REES46 CSV or a synthetic stream to
//! RabbitMQ (publisher confirms) or to `POST /v1/events`, as fast as possible, at a fixed rate,
//! or in accelerated event time, with a progress bar.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use propensity::config::Settings;
use propensity::online::ingest::Publisher;
use propensity_actors::event::Event;

use crate::events::{read_events, synthetic};

/// Where published events go.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Target {
    /// The exchange of `[bus.rabbitmq]`, with publisher confirms.
    Rabbitmq,
    /// `POST /v1/events` of a running service.
    Http,
}

/// Options of `publish`.
#[derive(Args)]
pub struct PublishArgs {
    /// Where the events go.
    #[arg(long, value_enum, default_value = "rabbitmq")]
    pub to: Target,
    /// A REES46 CSV in event-time order; default: a synthetic stream.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Shoppers of the synthetic stream.
    #[arg(long, default_value_t = 2_000)]
    pub users: u64,
    /// Days of the synthetic stream.
    #[arg(long, default_value_t = 7)]
    pub days: u32,
    /// Accelerated real time: event-time gaps divided by this factor (3600 = an hour a second).
    #[arg(long, conflicts_with = "rate")]
    pub speed: Option<f64>,
    /// A fixed rate in events per second.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Events per publish (each batch waits for its confirms) or per HTTP request.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Settings directory and environment, for `[bus.rabbitmq]`.
    #[arg(long, default_value = "config")]
    pub config_dir: PathBuf,
    #[arg(long)]
    pub env: Option<String>,
    /// The broker URL, overriding `bus.rabbitmq.url`.
    #[arg(long)]
    pub amqp_url: Option<String>,
    /// The service, for `--to http`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Working directory for the synthetic stream.
    #[arg(long, default_value = "var/load")]
    pub work_dir: PathBuf,
}

/// What a publish run did.
pub struct PublishResult {
    pub events: usize,
    pub seconds: f64,
}

enum Sink {
    Broker(Box<Publisher>),
    Http(reqwest::Client, String),
}

impl Sink {
    async fn send(&self, events: &[Event]) -> Result<()> {
        match self {
            Sink::Broker(publisher) => publisher
                .publish(events)
                .await
                .context("failed to publish to RabbitMQ"),
            Sink::Http(client, url) => {
                let body = Event::json_array(events);
                let response = client
                    .post(format!("{url}/v1/events"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .with_context(|| format!("failed to reach {url}"))?;
                if !response.status().is_success() {
                    bail!(
                        "{url}/v1/events answered {}: {}",
                        response.status(),
                        response.text().await.unwrap_or_default()
                    );
                }
                Ok(())
            }
        }
    }
}

/// Publishes `events` (in event-time order) as `args` says.
pub async fn publish(args: &PublishArgs, events: Vec<Event>) -> Result<PublishResult> {
    if args.batch == 0 {
        bail!("--batch must be positive");
    }
    if args.speed.is_some_and(|speed| speed <= 0.0) || args.rate.is_some_and(|rate| rate <= 0.0) {
        bail!("--speed and --rate must be positive");
    }
    let sink = match args.to {
        Target::Rabbitmq => {
            let mut settings = Settings::load(&args.config_dir, args.env.as_deref())?;
            if let Some(url) = &args.amqp_url {
                settings.bus.rabbitmq.url = url.clone();
            }
            let publisher = Publisher::connect(&settings.bus.rabbitmq)
                .await
                .with_context(|| {
                    format!(
                        "failed to connect to RabbitMQ at {}",
                        propensity::online::serve::redact(&settings.bus.rabbitmq.url)
                    )
                })?;
            Sink::Broker(Box::new(publisher))
        }
        Target::Http => Sink::Http(reqwest::Client::new(), args.url.clone()),
    };
    let progress = ProgressBar::new(events.len() as u64).with_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})",
        )
        .expect("a valid template"),
    );
    let started = Instant::now();
    let first_time = events.first().map_or(0, |event| event.time);
    let mut sent = 0usize;
    for chunk in events.chunks(args.batch) {
        // When the first event of the batch is due, by the chosen pace.
        let due = match (args.speed, args.rate) {
            (Some(speed), _) => Some(Duration::from_secs_f64(
                (chunk[0].time - first_time).max(0) as f64 / 1000.0 / speed,
            )),
            (_, Some(rate)) => Some(Duration::from_secs_f64(sent as f64 / rate)),
            _ => None,
        };
        if let Some(due) = due
            && let Some(wait) = due.checked_sub(started.elapsed())
        {
            tokio::time::sleep(wait).await;
        }
        sink.send(chunk).await?;
        sent += chunk.len();
        progress.set_position(sent as u64);
    }
    progress.finish();
    Ok(PublishResult {
        events: sent,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `propensity-load publish`: reads or generates the events, publishes them and prints the rate.
pub async fn run(args: PublishArgs) -> Result<()> {
    let path = match &args.events {
        Some(path) => path.clone(),
        None => synthetic(&args.work_dir, args.users, args.days)?,
    };
    let events = read_events(&path)?;
    let result = publish(&args, events).await?;
    println!(
        "replayed {} events in {:.1} s ({:.0} events/s, every one confirmed)",
        result.events,
        result.seconds,
        result.events as f64 / result.seconds.max(1e-9)
    );
    Ok(())
}
