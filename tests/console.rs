//! The web console in a real browser: Debian's chromium, headless, driven over the DevTools
//! protocol. A replayed synthetic history, then a purchase published while the overview is open
//! must show in its sales panel within 2 s; the session explorer must show the propensity
//! `/v1/score` gives for the same shopper and product, with the same decision path; the model
//! card shows the report's charts and the customers page the segments in service; with a token
//! configured, the console asks for it and shows nothing without it; behind a reverse proxy that
//! serves the service under a path prefix, the console loads and asks for nothing outside it.
//!
//! Screenshots of every page go to `target/tmp/console/`, for people to look at; nothing is
//! compared pixel by pixel.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use propensity::online::serve::Service;
use propensity_actors::event::{Event, EventType};
use serde_json::{Value, json};

/// How long a page may take to show what it loads (the first poll, a chart).
const PAGE_TIMEOUT: Duration = Duration::from_secs(20);
/// The bound: a purchase shows in the sales panel within 2 s of being published.
const SALE_SHOWS_WITHIN: Duration = Duration::from_secs(2);

/// Where the screenshots go.
fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Debian's chromium, as `docker/native/services.sh up chromium` installs it.
fn chromium() -> PathBuf {
    if let Ok(path) = std::env::var("PROPENSITY_CHROMIUM") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "chromium is not installed: the console tests need a real browser; run \
                 `docker/native/services.sh up chromium` (the README's test command does), or set \
                 PROPENSITY_CHROMIUM to a Chromium binary"
            )
        })
}

/// A headless browser with one tab on the console. Every call blocks: use it from
/// [`blocking`].
struct Console {
    _browser: Browser,
    tab: Arc<Tab>,
    name: &'static str,
}

impl Console {
    /// Starts chromium and opens `url`.
    fn open(url: &str, name: &'static str) -> Console {
        let options = LaunchOptions::default_builder()
            .path(Some(chromium()))
            .headless(true)
            // The tests run as root in CI, where chromium's sandbox cannot start.
            .sandbox(false)
            .window_size(Some((1280, 900)))
            .idle_browser_timeout(Duration::from_secs(300))
            .build()
            .expect("launch options are complete");
        let browser = Browser::new(options).expect("chromium starts headless");
        let tab = browser.new_tab().expect("chromium opens a tab");
        tab.navigate_to(url)
            .and_then(|tab| tab.wait_until_navigated())
            .unwrap_or_else(|error| panic!("chromium cannot load {url}: {error}"));
        Console {
            _browser: browser,
            tab,
            name,
        }
    }

    /// Goes to a route of the console (`#/model`).
    fn go(&self, hash: &str) {
        self.eval(&format!("location.hash = {}; true", json!(hash)));
    }

    /// The value of a JavaScript expression, through JSON.
    fn eval(&self, expression: &str) -> Value {
        let wrapped = format!("JSON.stringify((() => {{ return {expression}; }})() ?? null)");
        let result = self
            .tab
            .evaluate(&wrapped, false)
            .unwrap_or_else(|error| panic!("evaluating {expression}: {error}"));
        match result.value {
            Some(Value::String(text)) => serde_json::from_str(&text).unwrap(),
            other => panic!("evaluating {expression} gave {other:?}"),
        }
    }

    /// Polls `expression` until it is neither null nor false, for at most `timeout`; on time out
    /// fails with `what`, the console's status line and a screenshot.
    fn wait_for(&self, what: &str, expression: &str, timeout: Duration) -> Value {
        let started = Instant::now();
        loop {
            let value = self.eval(expression);
            if !matches!(value, Value::Null | Value::Bool(false)) {
                return value;
            }
            if started.elapsed() > timeout {
                let shot = self.screenshot("failure");
                let status = self.eval("document.querySelector('#status')?.textContent");
                panic!(
                    "{what}: not shown within {timeout:?} (status line: {status}; screenshot {})",
                    shot.display()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The page's text content under `selector`.
    fn text(&self, selector: &str) -> String {
        self.eval(&format!(
            "document.querySelector({})?.innerText ?? ''",
            json!(selector)
        ))
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Writes a PNG of the page to the screenshot folder.
    fn screenshot(&self, page: &str) -> PathBuf {
        let png = self
            .tab
            .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
            .expect("chromium captures the page");
        let path = screenshot_dir().join(format!("{}-{page}.png", self.name));
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
        path
    }
}

/// Runs browser work off the actix thread, so that the service's actors keep going meanwhile.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match actix_rt::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// Waits until the abandonment panel shows the tallies `/v1/outcomes` gives for the period it
/// draws, the 47 hours up to the stream time; the API is asked again at every look, since sessions
/// that end meanwhile change both.
async fn assert_abandonment_matches_the_api(
    console: &Arc<Console>,
    client: &reqwest::Client,
    url: &str,
) {
    use propensity_actors::event::{format_time, parse_time};
    let started = Instant::now();
    loop {
        let live = get(client, url, "/v1/live", &[]).await;
        let to = parse_time(live["as_of"].as_str().unwrap()).unwrap();
        let from = to - 47 * 3_600_000;
        let period = [("from", format_time(from)), ("to", format_time(to))];
        let outcomes = get(client, url, "/v1/outcomes", &period).await;
        let total = &outcomes["total"];
        let expected = format!(
            "({} purchased, {} abandoned, {} browsed)",
            thousands(&total["purchased"]),
            thousands(&total["abandoned"]),
            thousands(&total["browsed"])
        );
        let shown = blocking({
            let console = console.clone();
            move || {
                (
                    console.text("#abandonment-total"),
                    console.eval("!!document.querySelector('#abandonment-chart svg .threshold')"),
                )
            }
        })
        .await;
        if shown.0.contains(&expected) && shown.1 == json!(true) {
            return;
        }
        assert!(
            started.elapsed() < PAGE_TIMEOUT,
            "the abandonment panel shows {:?} (threshold line drawn: {}), the API {expected}",
            shown.0,
            shown.1
        );
        actix_rt::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A count as the console writes it: `1,234`.
fn thousands(count: &Value) -> String {
    let digits = count.as_u64().unwrap().to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

async fn get(client: &reqwest::Client, url: &str, path: &str, query: &[(&str, String)]) -> Value {
    let response = client
        .get(format!("{url}{path}"))
        .query(query)
        .send()
        .await
        .expect("the service answers");
    let status = response.status();
    let body: Value = response.json().await.expect("a JSON answer");
    assert!(status.is_success(), "GET {path}: {status} {body}");
    body
}

async fn post(client: &reqwest::Client, url: &str, path: &str, token: &str, body: &Value) -> Value {
    let mut request = client.post(format!("{url}{path}")).json(body);
    if !token.is_empty() {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the service answers");
    let status = response.status();
    let body: Value = response.json().await.expect("a JSON answer");
    assert!(status.is_success(), "POST {path}: {status} {body}");
    body
}

fn purchase(user_id: u64, product_id: u64, time: i64, price: f64) -> Event {
    Event {
        time,
        event_type: EventType::Purchase,
        product_id,
        category_id: 2_053_013_555_631_882_655,
        category_code: None,
        brand: None,
        price,
        user_id,
        user_session: format!("console-{user_id}"),
        event_id: None,
    }
}

#[actix_rt::test]
async fn the_console_shows_sales_live_and_the_same_scores_as_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let (events_path, events) = common::synthetic_events(dir.path(), 400, 3, 23);
    let (model_path, model) =
        common::train_model_with_report(dir.path(), &events_path, 30 * 60 * 1000);
    let model_version = model.version;
    let (value_path, segments_path, segment_names) = common::fit_customer_value(dir.path());
    let mut settings = common::settings(dir.path(), &model_path);
    settings.value.model_path = value_path;
    settings.segments.model_path = segments_path;
    let service = Service::start(&settings).await.unwrap();
    let (url, client) = (service.url(), reqwest::Client::new());

    // The demo's data, replayed through the collector.
    for chunk in events.chunks(2000) {
        common::post_events(&client, &url, chunk).await;
    }
    let last = events.last().unwrap().time;

    let console = Arc::new({
        let url = url.clone();
        blocking(move || Console::open(&format!("{url}/"), "console")).await
    });
    let live_sessions = blocking({
        let console = console.clone();
        move || {
            console.wait_for(
                "the live sessions on the overview",
                "document.querySelector('#live-sessions')?.textContent.trim() || null",
                PAGE_TIMEOUT,
            )
        }
    })
    .await;
    let live = get(&client, &url, "/v1/live", &[]).await;
    assert_eq!(
        live_sessions
            .as_str()
            .unwrap()
            .replace([',', ' ', '\u{a0}'], ""),
        live["live_sessions"].to_string(),
        "the overview shows the live sessions the API gives"
    );

    // A purchase of a product nobody bought before, published while the overview polls.
    let (shopper, product) = (920_000_001, 1_999_999_001);
    common::post_events(
        &client,
        &url,
        &[purchase(shopper, product, last + 60_000, 42.5)],
    )
    .await;
    let published = Instant::now();
    let shown_after = blocking({
        let console = console.clone();
        move || {
            console.wait_for(
                &format!("product {product}'s sale in the sales panel"),
                &format!(
                    "document.querySelector('#sales tr[data-product-id=\"{product}\"] .purchases')?.textContent.trim() === '1'"
                ),
                SALE_SHOWS_WITHIN,
            );
            console.screenshot("overview");
            published.elapsed()
        }
    })
    .await;
    println!("the purchase showed in the sales panel {shown_after:?} after it was published");
    assert_abandonment_matches_the_api(&console, &client, &url).await;

    // The session explorer and /v1/score agree on a session that carted.
    let cart = events
        .iter()
        .rev()
        .find(|event| event.event_type == EventType::Cart)
        .unwrap();
    let (user_id, session, product_id) = (cart.user_id, cart.user_session.clone(), cart.product_id);
    let shown = blocking({
        let console = console.clone();
        let session = session.clone();
        move || {
            console.go(&format!("#/session/{user_id}/{session}/{product_id}"));
            let propensity = console.wait_for(
                "the product's propensity in the session explorer",
                &format!(
                    "document.querySelector('#products tr[data-product-id=\"{product_id}\"] .propensity')?.dataset.propensity ?? null"
                ),
                PAGE_TIMEOUT,
            );
            console.wait_for(
                "the decision path",
                "!!document.querySelector('#decision-path svg')",
                PAGE_TIMEOUT,
            );
            console.screenshot("session");
            (propensity, console.text("#decision-path"))
        }
    })
    .await;
    let scored = post(
        &client,
        &url,
        "/v1/score",
        "",
        &json!({"user_id": user_id, "user_session": session, "product_id": product_id, "explain": true}),
    )
    .await;
    let shown_propensity: f64 = shown.0.as_str().unwrap().parse().unwrap();
    assert_eq!(
        shown_propensity,
        scored["propensity"].as_f64().unwrap(),
        "the explorer shows /v1/score's propensity for user {user_id}, session {session}, product {product_id}"
    );
    let steps = scored["explanation"]["steps"].as_array().unwrap();
    assert!(!steps.is_empty(), "the tree splits at least once");
    for step in steps {
        let feature = step["feature"].as_str().unwrap();
        assert!(
            shown.1.contains(feature),
            "the drawn decision path names {feature}: {}",
            shown.1
        );
    }

    // The model card with the report's charts.
    let card = blocking({
        let console = console.clone();
        move || {
            console.go("#/model");
            console.wait_for(
                "the report's charts on the model page",
                "document.querySelectorAll('#report-charts svg').length === 4",
                PAGE_TIMEOUT,
            );
            console.screenshot("model");
            console.text("#view-model")
        }
    })
    .await;
    assert!(
        card.contains(&model_version),
        "the card names {model_version}: {card}"
    );

    // The customers page: the segments in service and one shopper's predicted value.
    let customers = blocking({
        let console = console.clone();
        move || {
            console.go("#/customers");
            console.wait_for(
                "the segment sizes",
                "!!document.querySelector('#segments-chart svg')",
                PAGE_TIMEOUT,
            );
            console.eval(&format!(
                "(document.querySelector('#value-user-id').value = '{shopper}', document.querySelector('#value-form').requestSubmit(), true)"
            ));
            console.wait_for(
                "the shopper's predicted value",
                &format!("document.querySelector('#value-result')?.innerText.includes('{shopper}') || null"),
                PAGE_TIMEOUT,
            );
            console.screenshot("customers");
            console.text("#view-customers")
        }
    })
    .await;
    for name in &segment_names {
        assert!(
            customers.contains(name.as_str()),
            "the customers page lists segment {name}: {customers}"
        );
    }
    drop(console);
    service.stop().await.unwrap();
}

#[actix_rt::test]
async fn with_a_token_the_console_asks_for_it_and_shows_nothing_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::small_model(dir.path(), 30 * 60 * 1000);
    let mut settings = common::settings(dir.path(), &model);
    let token = "console-test-token";
    settings.http.auth_token = token.into();
    let service = Service::start(&settings).await.unwrap();
    let (url, client) = (service.url(), reqwest::Client::new());
    post(
        &client,
        &url,
        "/v1/events",
        token,
        &serde_json::from_str(&Event::json_array(&[purchase(
            930_000_001,
            1_999_999_002,
            1_570_000_000_000,
            9.5,
        )]))
        .unwrap(),
    )
    .await;

    let console = Arc::new({
        let url = url.clone();
        blocking(move || Console::open(&format!("{url}/"), "token")).await
    });
    let without = blocking({
        let console = console.clone();
        move || {
            console.wait_for(
                "the token prompt",
                "!!document.querySelector('#login') && document.querySelector('#login').offsetParent !== null",
                PAGE_TIMEOUT,
            );
            // Give the page time to show what it should not.
            std::thread::sleep(Duration::from_millis(1500));
            console.screenshot("login");
            (
                console.eval("document.querySelector('#app')?.offsetParent !== null"),
                console.eval("document.body.innerText"),
            )
        }
    })
    .await;
    assert_eq!(
        without.0,
        json!(false),
        "the views are hidden without the token"
    );
    let page = without.1.as_str().unwrap();
    assert!(
        !page.contains("1999999002") && !page.contains("1,999,999,002"),
        "the page shows no data without the token: {page}"
    );

    let with = blocking({
        let console = console.clone();
        move || {
            console.eval(&format!(
                "(document.querySelector('#token').value = '{token}', document.querySelector('#login').requestSubmit(), true)"
            ));
            console.wait_for(
                "the product's sale once the token is given",
                "document.querySelector('#sales tr[data-product-id=\"1999999002\"] .purchases')?.textContent.trim() === '1'",
                PAGE_TIMEOUT,
            );
            console.eval("document.querySelector('#login')?.offsetParent !== null")
        }
    })
    .await;
    assert_eq!(
        with,
        json!(false),
        "the token prompt goes once the token is given"
    );
    drop(console);
    service.stop().await.unwrap();
}

/// The path a [`PrefixProxy`] serves the service under, as a shop's web tier might.
const PREFIX: &str = "/shop/propensity/";

/// Paths a [`PrefixProxy`] was asked for outside its prefix.
type Outside = Arc<std::sync::Mutex<Vec<String>>>;

/// A reverse proxy that serves a service under [`PREFIX`] and answers 404 to anything else,
/// recording those paths: a console that asks for an absolute path fails behind it.
struct PrefixProxy {
    url: String,
    outside: Outside,
    server: actix_web::dev::ServerHandle,
}

impl PrefixProxy {
    fn start(target: String) -> PrefixProxy {
        use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

        async fn forward(
            request: HttpRequest,
            body: web::Bytes,
            state: web::Data<(String, reqwest::Client, Outside)>,
        ) -> HttpResponse {
            let (target, client, outside) = state.get_ref();
            let path = request
                .uri()
                .path_and_query()
                .map_or("/", |path| path.as_str());
            let Some(rest) = path.strip_prefix(PREFIX) else {
                outside.lock().unwrap().push(path.to_owned());
                return HttpResponse::NotFound().body("outside the prefix");
            };
            let method = reqwest::Method::from_bytes(request.method().as_str().as_bytes()).unwrap();
            let mut outgoing = client
                .request(method, format!("{target}/{rest}"))
                .body(body);
            for name in ["authorization", "content-type", "accept"] {
                if let Some(value) = request.headers().get(name) {
                    outgoing = outgoing.header(name, value.as_bytes());
                }
            }
            let answer = outgoing.send().await.expect("the proxied service answers");
            let status = actix_web::http::StatusCode::from_u16(answer.status().as_u16()).unwrap();
            let content_type = answer
                .headers()
                .get("content-type")
                .map(|value| value.as_bytes().to_vec());
            let mut response = HttpResponse::build(status);
            if let Some(content_type) = content_type {
                response.insert_header(("content-type", content_type));
            }
            response.body(answer.bytes().await.expect("the proxied body arrives"))
        }

        let outside = Outside::default();
        let state = web::Data::new((target, reqwest::Client::new(), outside.clone()));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .default_service(web::to(forward))
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .expect("the proxy binds a loopback port");
        let address = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        PrefixProxy {
            url: format!("http://{address}{PREFIX}"),
            outside,
            server: handle,
        }
    }
}

#[actix_rt::test]
async fn behind_a_proxy_under_a_path_prefix_the_console_loads_and_shows_data() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::small_model(dir.path(), 30 * 60 * 1000);
    let settings = common::settings(dir.path(), &model);
    let service = Service::start(&settings).await.unwrap();
    let client = reqwest::Client::new();
    common::post_events(
        &client,
        &service.url(),
        &[purchase(940_000_001, 1_999_999_003, 1_570_000_000_000, 7.5)],
    )
    .await;
    let proxy = PrefixProxy::start(service.url());

    let console = Arc::new({
        let url = proxy.url.clone();
        blocking(move || Console::open(&url, "prefix")).await
    });
    blocking({
        let console = console.clone();
        move || {
            console.wait_for(
                "the product's sale on the overview, through the proxy",
                "document.querySelector('#sales tr[data-product-id=\"1999999003\"] .purchases')?.textContent.trim() === '1'",
                PAGE_TIMEOUT,
            );
            console.go("#/model");
            console.wait_for(
                "the model card, through the proxy",
                "document.querySelector('#app')?.innerText.includes('dt-') || null",
                PAGE_TIMEOUT,
            );
            console.screenshot("prefix");
        }
    })
    .await;
    let outside = proxy.outside.lock().unwrap().clone();
    assert!(
        outside.is_empty(),
        "the console asked for paths outside the prefix it was served under: {outside:?}"
    );
    drop(console);
    proxy.server.stop(true).await;
    service.stop().await.unwrap();
}
