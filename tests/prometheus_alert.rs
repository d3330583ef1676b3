//! End to end: a real Prometheus scrapes the running service, a synthetic spike of abandoned carts
//! goes through the HTTP collector, and the abandonment alert fires. The rules are those of
//! docker/prometheus/rules.yml with their windows scaled from minutes to seconds, so the test takes
//! seconds instead of an hour. Needs the `prometheus` binary (docker/native/test.sh installs it).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use propensity::online::serve::Service;
use propensity_actors::event::{Event, EventType};

/// The production rules with every window and `for` shortened.
fn scaled_rules() -> String {
    let rules =
        std::fs::read_to_string(common::root().join("docker/prometheus/rules.yml")).unwrap();
    let scaled = rules
        .replace("[5m]", "[10s]")
        .replace("[15m]", "[10s]")
        .replace("[1h]", "[20s]")
        .replace("[1d]", "[60s]")
        .replace("for: 15m", "for: 2s")
        .replace("for: 10m", "for: 2s")
        .replace("for: 5m", "for: 2s");
    assert_ne!(scaled, rules, "the rules' windows were found and scaled");
    scaled
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_prometheus(dir: &std::path::Path, target: &str, port: u16) -> Prometheus {
    std::fs::write(dir.join("rules.yml"), scaled_rules()).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - rules.yml\nscrape_configs:\n  - job_name: propensity\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .unwrap_or_else(|error| {
            panic!("cannot start prometheus ({error}); install it with `docker/native/services.sh up prometheus` or run docker/native/test.sh")
        });
    Prometheus(child)
}

async fn alert_state(client: &reqwest::Client, port: u16, name: &str) -> Option<String> {
    let body: serde_json::Value = client
        .get(format!("http://127.0.0.1:{port}/api/v1/alerts"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body["data"]["alerts"]
        .as_array()?
        .iter()
        .find(|alert| alert["labels"]["alertname"] == name)
        .and_then(|alert| alert["state"].as_str().map(str::to_owned))
}

fn cart(user_id: u64, seconds: i64) -> Event {
    Event {
        time: 1_570_000_000_000 + seconds * 1000,
        event_type: EventType::Cart,
        product_id: 1_000 + user_id % 7,
        category_id: 5,
        category_code: None,
        brand: None,
        price: 19.99,
        user_id,
        user_session: format!("spike-{user_id}"),
        event_id: None,
    }
}

#[actix_rt::test]
async fn an_abandonment_spike_fires_the_alert() {
    let dir = tempfile::tempdir().unwrap();
    let (events_path, _) = common::synthetic_events(dir.path(), 100, 2, 3);
    let (model_path, _) = common::train_model(dir.path(), &events_path, 30 * 60 * 1000);
    let settings = common::settings(dir.path(), &model_path);
    let service = Service::start(&settings).await.unwrap();
    let port = common::free_port();
    let prometheus = start_prometheus(dir.path(), &service.address.to_string(), port);
    let client = reqwest::Client::new();

    let ready = Instant::now();
    while client
        .get(format!("http://127.0.0.1:{port}/-/ready"))
        .send()
        .await
        .map(|r| r.status().is_success())
        .ok()
        != Some(true)
    {
        assert!(
            ready.elapsed() < Duration::from_secs(60),
            "prometheus did not become ready: see {}",
            dir.path().join("prometheus.log").display()
        );
        actix::clock::sleep(Duration::from_millis(200)).await;
    }
    // Before the spike there is nothing to alert on.
    actix::clock::sleep(Duration::from_secs(3)).await;
    assert_ne!(
        alert_state(&client, port, "CartAbandonmentAboveThreshold")
            .await
            .as_deref(),
        Some("firing")
    );

    // Every second, 20 new sessions put something in the cart and leave; each round moves event
    // time on by 31 minutes, which ends the previous round's sessions as abandoned carts.
    let started = Instant::now();
    let mut round = 0u64;
    let state = loop {
        let events: Vec<Event> = (0..20)
            .map(|index| cart(round * 100 + index + 1, round as i64 * 31 * 60))
            .collect();
        common::post_events(&client, &service.url(), &events).await;
        round += 1;
        if let Some(state) = alert_state(&client, port, "CartAbandonmentAboveThreshold").await
            && state == "firing"
        {
            break state;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the alert did not fire within 90 s (last state: {:?}); prometheus log in {}",
            alert_state(&client, port, "CartAbandonmentAboveThreshold").await,
            dir.path().display()
        );
        actix::clock::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(state, "firing");
    let abandoned = service
        .metrics
        .sessions_closed
        .with_label_values(&["abandoned"])
        .get();
    assert!(
        abandoned >= 20,
        "the spike closed {abandoned} abandoned sessions"
    );
    drop(prometheus);
    service.stop().await.unwrap();
}
