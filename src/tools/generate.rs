//! `propensity generate`: a synthetic REES46 clickstream drawn from a documented behavioural
//! model, with the model's own purchase probability ("truth") for every scoring point, so that a
//! trained model can be compared with the best one possible.
//!
//! # The behavioural model
//!
//! docs/synthetic-model.md says the same at more length, with the reasons and measurements.
//!
//! **Catalogue.** About 3,000 products in 80 categories. A category has a 19-digit id, a dotted
//! category code (a fifth have none, as in the real files), a brand pool and a median price drawn
//! log-uniformly between 4 and 900; a product's price is that times `exp(0.55·N(0,1))`, in whole
//! cents, fixed for the run. Category popularity is Zipf (exponent 1.0), and so is product
//! popularity within a category (exponent 1.1). Each product has a latent appeal
//! `a ~ N(0, 0.2²)`, which its purchase counters reveal over time, shifted by one constant per
//! catalogue so that the popularity-weighted mean of `a − 2.5·ln(price / median)` is zero (a few
//! popular products take much of the traffic; without this, abandonment would swing by several
//! points from seed to seed). Category medians use the feature engine's price buckets
//! ([`PriceHistogram`]), each product weighted by its share of the category's views, so the
//! model's price ratio is the `price_to_category_median` feature.
//!
//! **Users.** Each user has a latent propensity `u ~ N(0, 0.25²)`, a price sensitivity
//! `s = 2.5·exp(0.15·N(0,1))`, a browsing breadth `β ~ U(0.55, 0.85)`, three preferred categories
//! (drawn by popularity) and a session rate `λ = 0.8·exp(0.8·N(0,1))` per day. Sessions arrive
//! as a Poisson process of rate `λ·d(t)`, with the diurnal profile
//! `d(t) = 1 + 0.7·cos(2π(hour − 19)/24)` (thinning, times in whole seconds); an arrival within
//! 30 minutes of the end of the user's previous session is dropped, so a user's sessions never
//! overlap.
//!
//! **Sessions.** A session plans `1 + Geometric(β)` products (at most 12) from one category
//! (70%) or two, each a preferred one (85%) or any by popularity. A product is opened once per
//! session at most: with probability 0.25 (when there is one) a product the user viewed in an
//! earlier session and did not buy, otherwise a popularity draw from the session's categories.
//! Every opened product runs its own funnel (below). At each step a scheduler picks what happens
//! next: open the next planned product (weight 0.8), advance a product being browsed (weight 1),
//! or advance a carted or removed one (weight 0.2 while anything is still browsed or planned,
//! else 1). So views of several products interleave (A, B, A, C, B) and carts settle at the end,
//! like a checkout. The session ends when no product is left in a funnel and none is planned.
//! Gaps between events are log-normal (medians: view 35 s, cart 25 s, remove 20 s, purchase 60 s;
//! σ = 1), clamped to 1 s .. 25 min: a session is never split by the 30-minute timeout and its
//! events have strictly increasing times.
//!
//! **The funnel.** When product `p` is opened in a session, its purchase logit is fixed from what
//! is known then (all of it visible in the feature vector, except the latent `u`, `a` and the
//! spread of `s`):
//!
//! ```text
//! z = u + a − s·ln(price / category median price)
//!       + 0.6·h                                   h = min(purchases / carts, 1) − 0.35 over the
//!                                                   user's earlier sessions, 0 if never carted
//!       + 0.35·ln(1 + views of p by the user in earlier sessions)
//!       − 2·[the user bought p before]
//! ```
//!
//! Then each decision is drawn when it happens, with probabilities that depend only on `z` and
//! the product's own counters in this session (`v` views, `k` removes):
//!
//! - *Browsing*, after its `v`-th view: view it again with `w(v) = 0.5·0.7^(v−1)` (0 from
//!   `v = 12`); otherwise add it to the cart with `0.95·g(v)`, buy it without a cart event with
//!   `0.012·g(v)`, or lose interest; `g(v) = σ(z − 4 + min(v − 1, 3))`.
//! - *In the cart*, with `k` removes so far: view it again with 0.45 (stays in the cart), remove
//!   it with `r(k) = 0.2·0.5^k` (0 from `k = 3`), otherwise settle: buy with
//!   `b(k) = σ(z − 2.3 − 0.4·k)` or abandon.
//! - *Removed*, after the `k`-th remove: add it again with `c(k) = 0.35·0.5^(k−1)`, otherwise
//!   lose interest.
//!
//! A bought, abandoned or lost product has no more events in the session.
//!
//! **Truth.** A product's future depends only on its own stage, counters and `z`, never on the
//! scheduler or on other products, so the probability that it is bought later in the session is
//! an absorption probability with a closed form, computed backwards once per opened product:
//!
//! ```text
//! P_cart(k)    = [ r(k)·c(k+1)·P_cart(k+1) + (1 − 0.45 − r(k))·b(k) ] / (1 − 0.45),  P_cart(3) = b(3)
//! P_removed(k) = c(k)·P_cart(k)
//! P_browse(v)  = w(v)·P_browse(v+1) + (1 − w(v))·g(v)·(0.95·P_cart(0) + 0.012),    P_browse(12) from w = 0
//! ```
//!
//! A view while browsing scores `P_browse(v)`; a cart event, or a view while in the cart,
//! `P_cart(k)`; a remove `P_removed(k)`. These are exact given everything drawn so far: each
//! label is a draw with exactly that probability.
//!
//! **Sizes.** A user makes about 1.03 sessions a day of about 6.9 events, so
//! [`EVENTS_PER_USER_DAY`] ≈ 7.1; a quarter of sessions add to the cart and about 70% of those end
//! without a purchase, at any run length (the history term is centred for that reason). Output is
//! sorted and written in one-hour chunks of event time, so memory holds the users, the catalogue
//! and about an hour of events.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result, ensure};
use chrono::{DateTime, TimeZone, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use propensity_actors::event::{CSV_HEADER, Event, EventType, Millis, format_time};
use propensity_actors::features::product::PriceHistogram;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Events per user per simulated day, measured (7.0 to 7.4 over runs of 1,000 to 20,000 users
/// and 3 to 30 days), for sizing runs: `--users 20000 --days 14` writes about 2.0 million events.
pub const EVENTS_PER_USER_DAY: f64 = 7.1;

/// The header of the truth file.
pub const TRUTH_HEADER: &str =
    "event_identity,event_time,user_id,user_session,product_id,event_type,probability";

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// Shoppers simulated, all active for the whole span.
    pub users: u64,
    /// Days of event time.
    pub days: u32,
    /// Seeds every random draw: the same options give the same bytes.
    pub seed: u64,
    /// When the simulated span starts.
    pub start: DateTime<Utc>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            users: 1_000,
            days: 7,
            seed: 1,
            start: Utc
                .with_ymd_and_hms(2019, 10, 1, 0, 0, 0)
                .single()
                .expect("a valid date"),
        }
    }
}

/// What a run produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GenerateSummary {
    /// Rows written, header excluded.
    pub events: u64,
    pub sessions: u64,
    /// Sessions with at least one add-to-cart event.
    pub sessions_with_cart: u64,
    /// Sessions with an add-to-cart event and no purchase. (The replay's `Outcome::Abandoned`
    /// counts only those whose cart is still non-empty, so it is slightly lower.)
    pub abandoned_carts: u64,
    pub purchases: u64,
    /// View, cart and remove events: the rows of the truth file.
    pub scoring_points: u64,
    /// Users with at least one session.
    pub users: u64,
    /// Distinct products in the output.
    pub products: u64,
}

impl GenerateSummary {
    /// Share of sessions with a cart event that ended without a purchase.
    pub fn abandonment_rate(&self) -> f64 {
        if self.sessions_with_cart == 0 {
            0.0
        } else {
            self.abandoned_carts as f64 / self.sessions_with_cart as f64
        }
    }
}

/// Writes REES46 CSV (header + rows, sorted by event_time) to `out`, and when `truth` is given, one
/// CSV row per scoring point: `event_identity,event_time,user_id,user_session,product_id,
/// event_type,probability`, where `event_identity` is `format!("{:016x}", event.identity())` and
/// `probability` is the generator's own probability that this user purchases this product later
/// in this session, given everything the generator knows at that point except its own future
/// random draws. Truth rows follow the order of the events. `progress` is incremented by the
/// events written. Pass `None::<std::io::Sink>` for no truth.
pub fn generate<W: Write, T: Write>(
    options: &GenerateOptions,
    out: W,
    truth: Option<T>,
    progress: &ProgressBar,
) -> Result<GenerateSummary> {
    ensure!(
        options.users <= MAX_USERS,
        "at most {MAX_USERS} users fit the REES46 user id range, {} asked",
        options.users
    );
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let catalogue = Catalogue::new(&mut rng);
    let start = options.start.timestamp_millis().div_euclid(SECOND) * SECOND;
    let users = (0..options.users)
        .map(|index| User::new(index, options.users, start, &catalogue, &mut rng))
        .collect();
    let mut output = Output::new(out, truth)?;
    let mut generator = Generator {
        rng,
        catalogue,
        users,
        pending: Vec::new(),
        next_sequence: 0,
        summary: GenerateSummary::default(),
        interests: Vec::new(),
    };
    let end = start + Millis::from(options.days) * DAY;
    let mut chunk_start = start;
    while chunk_start < end {
        let chunk_end = (chunk_start + CHUNK).min(end);
        generator.simulate_until(chunk_end);
        let written = output.write_ready(&mut generator, Some(chunk_end))?;
        progress.inc(written);
        chunk_start = chunk_end;
    }
    // Sessions that started before the end may run past it; they are written whole.
    let written = output.write_ready(&mut generator, None)?;
    progress.inc(written);
    output.finish()?;
    let mut summary = generator.summary;
    summary.events = output.events;
    summary.scoring_points = output.scoring_points;
    summary.users = generator
        .users
        .iter()
        .filter(|user| user.sessions > 0)
        .count() as u64;
    summary.products = output.products_seen.iter().filter(|&&seen| seen).count() as u64;
    Ok(summary)
}

/// Generates into files, with a progress bar on stderr when `show_progress` is set: what the
/// `generate` and `demo` commands call.
pub fn generate_files<P: AsRef<Path>, Q: AsRef<Path>>(
    users: u64,
    days: u32,
    seed: u64,
    out: P,
    truth: Option<Q>,
    show_progress: bool,
) -> Result<GenerateSummary> {
    let out = out.as_ref();
    let options = GenerateOptions {
        users,
        days,
        seed,
        ..GenerateOptions::default()
    };
    let events =
        File::create(out).with_context(|| format!("failed to create {}", out.display()))?;
    let truth_file = match truth.as_ref().map(AsRef::as_ref) {
        Some(path) => Some(
            File::create(path).with_context(|| format!("failed to create {}", path.display()))?,
        ),
        None => None,
    };
    let progress = if show_progress {
        let expected = (users as f64 * f64::from(days) * EVENTS_PER_USER_DAY) as u64;
        let bar = ProgressBar::new(expected);
        bar.set_style(
            ProgressStyle::with_template("{msg:>10} [{elapsed_precise}] {wide_bar} {human_pos}/~{human_len} events ({per_sec})")
                .expect("a valid template"),
        );
        bar.set_message("generate");
        bar
    } else {
        ProgressBar::hidden()
    };
    let summary = generate(&options, events, truth_file, &progress)
        .with_context(|| format!("failed to generate {}", out.display()))?;
    progress.finish_and_clear();
    Ok(summary)
}

const SECOND: Millis = 1_000;
const MINUTE: Millis = 60 * SECOND;
const HOUR: Millis = 60 * MINUTE;
const DAY: Millis = 24 * HOUR;
/// Event time covered by one sorted, written chunk.
const CHUNK: Millis = HOUR;
/// A user's next session starts at least this long after their previous one ended, so sessions
/// of one user never overlap and the 30-minute session rule would separate them too.
const SESSION_BREAK: Millis = 30 * MINUTE;
/// Longest gap between two events of a session: safely under the 30-minute session timeout.
const MAX_GAP: Millis = 25 * MINUTE;

/// User ids are `510,000,000 + ...`: nine digits starting with 5, as in the REES46 files.
const USER_ID_BASE: u64 = 510_000_000;
const MAX_USERS: u64 = 89_000_000;

const CATEGORIES: usize = 80;
const PRODUCTS: usize = 3_000;
const CATEGORY_ZIPF: f64 = 1.0;
const PRODUCT_ZIPF: f64 = 1.1;
/// Category sizes fall off more slowly than their popularity.
const CATEGORY_SIZE_EXPONENT: f64 = 0.7;
const MIN_CATEGORY_SIZE: usize = 8;
const CATEGORIES_WITHOUT_CODE: f64 = 0.2;
const PRODUCTS_WITHOUT_BRAND: f64 = 0.12;
const PRICE_SPREAD: f64 = 0.55;
const APPEAL_SPREAD: f64 = 0.2;

const PROPENSITY_SPREAD: f64 = 0.25;
const PRICE_SENSITIVITY_SPREAD: f64 = 0.15;
const PRICE_SENSITIVITY_MEDIAN: f64 = 2.5;
const SESSIONS_PER_DAY_MEDIAN: f64 = 0.8;
const SESSIONS_PER_DAY_SPREAD: f64 = 0.8;
const DIURNAL_AMPLITUDE: f64 = 0.7;
const DIURNAL_PEAK_HOUR: f64 = 19.0;
const PREFERRED_CATEGORIES: usize = 3;

const MAX_PRODUCTS_PER_SESSION: usize = 12;
const TWO_CATEGORY_SESSIONS: f64 = 0.3;
const PREFERRED_CATEGORY_SHARE: f64 = 0.85;
const REVISIT_EARLIER_PRODUCT: f64 = 0.25;
/// How many products a user remembers across sessions (most recently seen kept).
const USER_MEMORY: usize = 64;
const OPEN_WEIGHT: f64 = 0.8;
const SETTLE_WEIGHT: f64 = 0.2;

const HISTORY_WEIGHT: f64 = 0.6;
/// About the purchases per add-to-cart the model produces, so the history term is centred.
const TYPICAL_PURCHASES_PER_CART: f64 = 0.35;
const EARLIER_VIEWS_WEIGHT: f64 = 0.35;
/// Few shoppers buy the same product twice.
const OWNED_PENALTY: f64 = 2.0;

/// Browsing views are capped here: `w(MAX_VIEWS) = 0`.
const MAX_VIEWS: usize = 12;
const VIEW_AGAIN: f64 = 0.5;
const VIEW_AGAIN_DECAY: f64 = 0.7;
const ACT_BIAS: f64 = -4.0;
const ACT_VIEW_WEIGHT: f64 = 1.0;
const ACT_VIEW_CAP: u32 = 3;
const CART_SHARE: f64 = 0.95;
const DIRECT_BUY_SHARE: f64 = 0.012;
const VIEW_IN_CART: f64 = 0.45;
/// Removes are capped here: `r(MAX_REMOVES) = 0`.
const MAX_REMOVES: usize = 3;
const REMOVE: f64 = 0.2;
const RECART: f64 = 0.35;
const BUY_BIAS: f64 = -2.3;
const BUY_REMOVE_PENALTY: f64 = 0.4;

/// Medians of the gap before each kind of event, and the σ of its logarithm.
const VIEW_GAP_SECONDS: f64 = 35.0;
const CART_GAP_SECONDS: f64 = 25.0;
const REMOVE_GAP_SECONDS: f64 = 20.0;
const PURCHASE_GAP_SECONDS: f64 = 60.0;
const GAP_SPREAD: f64 = 1.0;

const CATEGORY_CODES: [&str; 64] = [
    "electronics.smartphone",
    "electronics.audio.headphone",
    "electronics.video.tv",
    "electronics.clocks",
    "electronics.tablet",
    "electronics.camera.photo",
    "electronics.audio.subwoofer",
    "electronics.telephone",
    "computers.notebook",
    "computers.desktop",
    "computers.peripherals.printer",
    "computers.peripherals.monitor",
    "computers.components.videocards",
    "computers.components.memory",
    "computers.peripherals.keyboard",
    "computers.peripherals.mouse",
    "appliances.kitchen.refrigerators",
    "appliances.kitchen.washer",
    "appliances.kitchen.microwave",
    "appliances.kitchen.kettle",
    "appliances.kitchen.blender",
    "appliances.kitchen.coffee_machine",
    "appliances.environment.vacuum",
    "appliances.environment.air_conditioner",
    "appliances.environment.water_heater",
    "appliances.iron",
    "appliances.personal.hair_cutter",
    "appliances.sewing_machine",
    "apparel.shoes",
    "apparel.shoes.keds",
    "apparel.costume",
    "apparel.trousers",
    "apparel.jacket",
    "apparel.glove",
    "furniture.living_room.sofa",
    "furniture.living_room.cabinet",
    "furniture.bedroom.bed",
    "furniture.kitchen.table",
    "furniture.bathroom.bath",
    "kids.toys",
    "kids.carriage",
    "kids.dolls",
    "kids.skates",
    "sport.bicycle",
    "sport.tennis",
    "sport.trainer",
    "auto.accessories.player",
    "auto.accessories.videoregister",
    "auto.accessories.alarm",
    "construction.tools.drill",
    "construction.tools.saw",
    "construction.tools.light",
    "construction.components.faucet",
    "country_yard.lawn_mower",
    "country_yard.cultivator",
    "accessories.bag",
    "accessories.wallet",
    "accessories.umbrella",
    "stationery.cartrige",
    "medicine.tools.tonometer",
    "electronics.audio.acoustic",
    "electronics.video.projector",
    "computers.components.cpu",
    "appliances.kitchen.oven",
];

const BRANDS: [&str; 48] = [
    "samsung", "apple", "xiaomi", "huawei", "lucente", "lg", "sony", "bosch", "oppo", "lenovo",
    "acer", "asus", "hp", "artel", "indesit", "philips", "respect", "redmond", "haier", "polaris",
    "tefal", "beko", "vitek", "elari", "casio", "canon", "nikon", "jbl", "dell", "msi", "gigabyte",
    "kingston", "intel", "amd", "makita", "dewalt", "karcher", "lego", "mattel", "nike", "adidas",
    "puma", "rieker", "tommee", "stels", "garmin", "braun", "zanussi",
];

/// How a product stands in its funnel within a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Browsing,
    InCart,
    Removed,
    Bought,
    /// Lost interest or abandoned the cart: no more events this session.
    Left,
}

/// One product's decision probabilities in one session, and the purchase probabilities they
/// imply, precomputed once when the product is opened.
#[derive(Clone, Debug)]
struct Funnel {
    logit: f64,
    /// `browse[v]`: P(bought later) right after the `v`-th view while browsing (index 0 unused).
    browse: [f64; MAX_VIEWS + 1],
    /// `cart[k]`: P(bought later) while in the cart with `k` removes so far.
    cart: [f64; MAX_REMOVES + 1],
}

impl Funnel {
    fn new(logit: f64) -> Self {
        let mut funnel = Funnel {
            logit,
            browse: [0.0; MAX_VIEWS + 1],
            cart: [0.0; MAX_REMOVES + 1],
        };
        for removes in (0..=MAX_REMOVES).rev() {
            let settle = 1.0 - VIEW_IN_CART - funnel.remove(removes);
            let after_remove = if removes == MAX_REMOVES {
                0.0
            } else {
                funnel.remove(removes) * funnel.recart(removes + 1) * funnel.cart[removes + 1]
            };
            funnel.cart[removes] =
                (after_remove + settle * funnel.buy(removes)) / (1.0 - VIEW_IN_CART);
        }
        for views in (1..=MAX_VIEWS).rev() {
            let again = funnel.view_again(views);
            let later = if views == MAX_VIEWS {
                0.0
            } else {
                again * funnel.browse[views + 1]
            };
            let act = funnel.act(views);
            funnel.browse[views] = later
                + (1.0 - again) * (CART_SHARE * act * funnel.cart[0] + DIRECT_BUY_SHARE * act);
        }
        funnel
    }

    /// `w(v)`: viewing the product again after its `v`-th view.
    fn view_again(&self, views: usize) -> f64 {
        if views >= MAX_VIEWS {
            0.0
        } else {
            VIEW_AGAIN * VIEW_AGAIN_DECAY.powi(views as i32 - 1)
        }
    }

    /// `g(v)`: the inclination to act (cart or buy) when not viewing again; grows with the views
    /// of the product in this session.
    fn act(&self, views: usize) -> f64 {
        let extra_views = (views as u32).saturating_sub(1).min(ACT_VIEW_CAP);
        sigmoid(self.logit + ACT_BIAS + ACT_VIEW_WEIGHT * f64::from(extra_views))
    }

    /// `r(k)`: removing the product from the cart with `k` removes so far.
    fn remove(&self, removes: usize) -> f64 {
        if removes >= MAX_REMOVES {
            0.0
        } else {
            REMOVE * 0.5f64.powi(removes as i32)
        }
    }

    /// `c(k)`: adding it back after the `k`-th remove (`k >= 1`).
    fn recart(&self, removes: usize) -> f64 {
        RECART * 0.5f64.powi(removes as i32 - 1)
    }

    /// `b(k)`: buying a carted product when the cart settles, with `k` removes so far.
    fn buy(&self, removes: usize) -> f64 {
        sigmoid(self.logit + BUY_BIAS - BUY_REMOVE_PENALTY * removes as f64)
    }
}

/// A product opened in the current session.
#[derive(Clone, Debug)]
struct Interest {
    product: u32,
    stage: Stage,
    views: usize,
    removes: usize,
    carts: u32,
    funnel: Funnel,
}

impl Interest {
    fn is_active(&self) -> bool {
        matches!(self.stage, Stage::Browsing | Stage::InCart | Stage::Removed)
    }
}

#[derive(Clone, Debug)]
struct Category {
    id: u64,
    code: Option<String>,
    /// Product indices, most popular first.
    products: Vec<u32>,
    /// Cumulative Zipf weights of `products`.
    cumulative: Vec<f64>,
}

#[derive(Clone, Debug)]
struct Product {
    id: u64,
    category: u32,
    /// Always a whole number of cents, so the CSV round trip keeps the event identity.
    price: f64,
    brand: Option<String>,
    /// `ln(price / category median)`.
    log_price_ratio: f64,
    /// Latent appeal `a`.
    appeal: f64,
}

/// The products and categories of a run.
#[derive(Clone, Debug)]
struct Catalogue {
    categories: Vec<Category>,
    /// Cumulative Zipf weights of `categories` (index order is popularity order).
    cumulative: Vec<f64>,
    products: Vec<Product>,
}

impl Catalogue {
    fn new(rng: &mut ChaCha8Rng) -> Self {
        let size_weights: Vec<f64> = (0..CATEGORIES)
            .map(|rank| 1.0 / ((rank + 1) as f64).powf(CATEGORY_SIZE_EXPONENT))
            .collect();
        let size_total: f64 = size_weights.iter().sum();
        let mut codes: Vec<&str> = CATEGORY_CODES.to_vec();
        shuffle(&mut codes, rng);
        // Product id blocks are shuffled too, so popular categories do not all get low ids.
        let mut id_blocks: Vec<u64> = (0..CATEGORIES as u64).collect();
        shuffle(&mut id_blocks, rng);
        let mut category_ids: Vec<u64> = Vec::with_capacity(CATEGORIES);
        let mut categories = Vec::with_capacity(CATEGORIES);
        let mut products = Vec::with_capacity(PRODUCTS + CATEGORIES * MIN_CATEGORY_SIZE);
        for (rank, weight) in size_weights.iter().enumerate() {
            let id = loop {
                let id = 2_053_013_552_000_000_000 + rng.gen_range(0..200_000_000_000_000_000u64);
                if !category_ids.contains(&id) {
                    break id;
                }
            };
            category_ids.push(id);
            let code = (rng.r#gen::<f64>() >= CATEGORIES_WITHOUT_CODE)
                .then(|| codes.get(rank).map(|code| (*code).to_owned()))
                .flatten();
            let brand_pool: Vec<&str> = (0..rng.gen_range(2..=8))
                .map(|_| BRANDS[rng.gen_range(0..BRANDS.len())])
                .collect();
            let brand_cumulative = zipf_cumulative(brand_pool.len(), 1.0);
            let size =
                ((PRODUCTS as f64 * weight / size_total).round() as usize).max(MIN_CATEGORY_SIZE);
            let median = (4.0f64.ln() + rng.r#gen::<f64>() * (900.0f64 / 4.0).ln()).exp();
            let block = 1_000_000 + id_blocks[rank] * 120_000;
            let step = 120_000 / size as u64;
            let first = products.len();
            for slot in 0..size as u64 {
                let cents = (median * (PRICE_SPREAD * normal(rng)).exp() * 100.0)
                    .round()
                    .max(50.0);
                let brand = (rng.r#gen::<f64>() >= PRODUCTS_WITHOUT_BRAND)
                    .then(|| brand_pool[pick(&brand_cumulative, rng)].to_owned());
                products.push(Product {
                    id: block + slot * step + rng.gen_range(0..step),
                    category: rank as u32,
                    price: cents / 100.0,
                    brand,
                    log_price_ratio: 0.0,
                    appeal: APPEAL_SPREAD * normal(rng),
                });
            }
            let mut members: Vec<u32> = (first as u32..products.len() as u32).collect();
            shuffle(&mut members, rng);
            // The median as the feature engine computes it (a histogram of viewed prices), so
            // that the model's price ratio and the `price_to_category_median` feature agree
            // once the category has been browsed a while: each product weighs as much as its
            // share of the category's views.
            let cumulative = zipf_cumulative(members.len(), PRODUCT_ZIPF);
            let mut viewed = PriceHistogram::default();
            for (&index, weight) in members.iter().zip(weights(&cumulative)) {
                viewed.add(products[index as usize].price, weight);
            }
            let median_price = viewed.median().expect("a category has products");
            for &index in &members {
                let product = &mut products[index as usize];
                product.log_price_ratio = (product.price / median_price).ln();
            }
            categories.push(Category {
                id,
                code,
                cumulative,
                products: members,
            });
        }
        let mut catalogue = Catalogue {
            categories,
            cumulative: zipf_cumulative(CATEGORIES, CATEGORY_ZIPF),
            products,
        };
        catalogue.centre_appeal();
        catalogue
    }

    /// Shifts every product's latent appeal by one constant so that, weighted by popularity, the
    /// catalogue is neither more nor less attractive than typical. A handful of popular products
    /// take much of the traffic, so without this the run-wide rates (abandonment above all)
    /// would swing by several points with whichever prices the seed gave them.
    fn centre_appeal(&mut self) {
        let (mut weighted, mut total) = (0.0, 0.0);
        for (category, category_weight) in self.categories.iter().zip(weights(&self.cumulative)) {
            for (&index, product_weight) in
                category.products.iter().zip(weights(&category.cumulative))
            {
                let product = &self.products[index as usize];
                let weight = category_weight * product_weight;
                weighted +=
                    weight * (product.appeal - PRICE_SENSITIVITY_MEDIAN * product.log_price_ratio);
                total += weight;
            }
        }
        let offset = weighted / total;
        for product in &mut self.products {
            product.appeal -= offset;
        }
    }

    fn popular_category(&self, rng: &mut ChaCha8Rng) -> u32 {
        pick(&self.cumulative, rng) as u32
    }

    fn popular_product(&self, category: u32, rng: &mut ChaCha8Rng) -> u32 {
        let category = &self.categories[category as usize];
        category.products[pick(&category.cumulative, rng)]
    }
}

/// What a user remembers of one product from earlier sessions.
#[derive(Clone, Copy, Debug)]
struct Seen {
    product: u32,
    views: u32,
    bought: bool,
    /// The user's session counter when last seen, to keep the most recent in memory.
    last_session: u32,
}

/// One simulated shopper: latent traits, arrival clock and history.
#[derive(Clone, Debug)]
struct User {
    id: u64,
    propensity: f64,
    price_sensitivity: f64,
    /// Chance of planning one more product in a session.
    breadth: f64,
    /// Sessions per millisecond at the diurnal peak: the rate of the process that is thinned.
    peak_rate: f64,
    preferred: [u32; PREFERRED_CATEGORIES],
    next_arrival: Millis,
    busy_until: Millis,
    sessions: u32,
    /// Add-to-cart events and purchases in earlier sessions.
    carts: u32,
    purchases: u32,
    seen: Vec<Seen>,
}

impl User {
    fn new(
        index: u64,
        users: u64,
        start: Millis,
        catalogue: &Catalogue,
        rng: &mut ChaCha8Rng,
    ) -> Self {
        let step = ((MAX_USERS) / users.max(1)).max(1);
        let mut preferred = [0; PREFERRED_CATEGORIES];
        for slot in 0..PREFERRED_CATEGORIES {
            preferred[slot] = loop {
                let category = catalogue.popular_category(rng);
                if !preferred[..slot].contains(&category) {
                    break category;
                }
            };
        }
        let sessions_per_day =
            SESSIONS_PER_DAY_MEDIAN * (SESSIONS_PER_DAY_SPREAD * normal(rng)).exp();
        let peak_rate = sessions_per_day * (1.0 + DIURNAL_AMPLITUDE) / DAY as f64;
        let mut user = User {
            id: USER_ID_BASE + index * step + rng.gen_range(0..step),
            propensity: PROPENSITY_SPREAD * normal(rng),
            price_sensitivity: PRICE_SENSITIVITY_MEDIAN
                * (PRICE_SENSITIVITY_SPREAD * normal(rng)).exp(),
            breadth: 0.55 + 0.3 * rng.r#gen::<f64>(),
            peak_rate,
            preferred,
            next_arrival: start,
            busy_until: Millis::MIN,
            sessions: 0,
            carts: 0,
            purchases: 0,
            seen: Vec::new(),
        };
        user.next_arrival = start + user.interarrival(rng);
        user
    }

    /// The wait to the next candidate arrival of the homogeneous process at the peak rate.
    fn interarrival(&self, rng: &mut ChaCha8Rng) -> Millis {
        let wait = exponential(self.peak_rate, rng);
        // Whole seconds, as REES46 times are; at least one so the clock always moves.
        ((wait / SECOND as f64).round() as Millis).max(1) * SECOND
    }

    fn recall(&self, product: u32) -> Option<&Seen> {
        self.seen.iter().find(|seen| seen.product == product)
    }

    /// The purchase logit `z` of a product opened in the current session.
    fn logit(&self, product_index: u32, product: &Product) -> f64 {
        let seen = self.recall(product_index);
        let earlier_views = seen.map_or(0, |seen| seen.views);
        let owned = if seen.is_some_and(|seen| seen.bought) {
            OWNED_PENALTY
        } else {
            0.0
        };
        self.propensity + product.appeal - self.price_sensitivity * product.log_price_ratio
            + HISTORY_WEIGHT * self.purchase_history()
            + EARLIER_VIEWS_WEIGHT * f64::from(earlier_views).ln_1p()
            - owned
    }

    /// The user's purchases per add-to-cart over earlier sessions (at most 1), minus the usual
    /// share; 0 for a user who never carted. It is centred so that a population accumulating
    /// history does not buy more and more the longer a run is, and it is one of the features
    /// (`user_purchase_cart_ratio` at the session's first event).
    fn purchase_history(&self) -> f64 {
        if self.carts == 0 {
            0.0
        } else {
            (f64::from(self.purchases) / f64::from(self.carts)).min(1.0)
                - TYPICAL_PURCHASES_PER_CART
        }
    }

    fn remember(&mut self, interest: &Interest) {
        let session = self.sessions;
        if let Some(seen) = self
            .seen
            .iter_mut()
            .find(|seen| seen.product == interest.product)
        {
            seen.views += interest.views as u32;
            seen.bought |= interest.stage == Stage::Bought;
            seen.last_session = session;
            return;
        }
        if self.seen.len() == USER_MEMORY
            && let Some(oldest) =
                (0..self.seen.len()).min_by_key(|&index| self.seen[index].last_session)
        {
            self.seen.swap_remove(oldest);
        }
        self.seen.push(Seen {
            product: interest.product,
            views: interest.views as u32,
            bought: interest.stage == Stage::Bought,
            last_session: session,
        });
    }
}

/// One generated event before it is written: compact, with what is needed to sort it.
#[derive(Clone, Copy, Debug)]
struct Record {
    time: Millis,
    /// Generation order: breaks ties in time deterministically.
    sequence: u64,
    user: u32,
    product: u32,
    session: u128,
    event_type: EventType,
    /// The truth of a scoring point (unused for purchases).
    probability: f64,
}

struct Generator {
    rng: ChaCha8Rng,
    catalogue: Catalogue,
    users: Vec<User>,
    /// Generated events not written yet.
    pending: Vec<Record>,
    next_sequence: u64,
    summary: GenerateSummary,
    /// The current session's products, kept to reuse the allocation.
    interests: Vec<Interest>,
}

impl Generator {
    /// Simulates every session that starts before `until`.
    fn simulate_until(&mut self, until: Millis) {
        for index in 0..self.users.len() {
            while self.users[index].next_arrival < until {
                let user = &mut self.users[index];
                let arrival = user.next_arrival;
                user.next_arrival += user.interarrival(&mut self.rng);
                let accept = diurnal(arrival) / (1.0 + DIURNAL_AMPLITUDE);
                if self.rng.r#gen::<f64>() < accept && arrival >= self.users[index].busy_until {
                    self.simulate_session(index, arrival);
                }
            }
        }
    }

    fn simulate_session(&mut self, user_index: usize, start: Millis) {
        let mut interests = std::mem::take(&mut self.interests);
        interests.clear();
        let rng = &mut self.rng;
        let catalogue = &self.catalogue;
        let user = &mut self.users[user_index];
        let session = uuid_bits(rng.r#gen());
        let mut planned = 1;
        while planned < MAX_PRODUCTS_PER_SESSION && rng.gen_bool(user.breadth) {
            planned += 1;
        }
        let category_count = if rng.gen_bool(TWO_CATEGORY_SESSIONS) {
            2
        } else {
            1
        };
        let mut categories = [0u32; 2];
        for category in categories.iter_mut().take(category_count) {
            *category = if rng.gen_bool(PREFERRED_CATEGORY_SHARE) {
                user.preferred[pick(&PREFERRED_CUMULATIVE, rng)]
            } else {
                catalogue.popular_category(rng)
            };
        }
        let mut emitter = Emitter {
            time: start,
            first: true,
            user: user_index as u32,
            session,
            pending: &mut self.pending,
            next_sequence: &mut self.next_sequence,
        };
        let (mut carted, mut bought) = (false, false);
        loop {
            let browsing = interests
                .iter()
                .any(|interest| interest.stage == Stage::Browsing);
            let open_weight = if interests.len() < planned {
                OPEN_WEIGHT
            } else {
                0.0
            };
            let settle_weight = if open_weight > 0.0 || browsing {
                SETTLE_WEIGHT
            } else {
                1.0
            };
            let weight = |interest: &Interest| match interest.stage {
                Stage::Browsing => 1.0,
                Stage::InCart | Stage::Removed => settle_weight,
                Stage::Bought | Stage::Left => 0.0,
            };
            let total: f64 = open_weight + interests.iter().map(weight).sum::<f64>();
            if total <= 0.0 {
                break;
            }
            let mut draw = rng.r#gen::<f64>() * total;
            let chosen = interests
                .iter()
                .position(|interest| {
                    draw -= weight(interest);
                    draw < 0.0 && interest.is_active()
                })
                // Rounding can leave a sliver of the draw unspent when nothing is left to open.
                .or_else(|| {
                    (open_weight == 0.0)
                        .then(|| interests.iter().rposition(Interest::is_active))
                        .flatten()
                });
            let Some(index) = chosen else {
                let category = categories[rng.gen_range(0..category_count)];
                match open_product(user, catalogue, category, &interests, rng) {
                    Some(product) => {
                        let funnel =
                            Funnel::new(user.logit(product, &catalogue.products[product as usize]));
                        emitter.emit(EventType::View, product, funnel.browse[1], rng);
                        interests.push(Interest {
                            product,
                            stage: Stage::Browsing,
                            views: 1,
                            removes: 0,
                            carts: 0,
                            funnel,
                        });
                    }
                    None => planned = interests.len(),
                }
                continue;
            };
            let interest = &mut interests[index];
            let funnel = &interest.funnel;
            let product = interest.product;
            match interest.stage {
                Stage::Browsing => {
                    if rng.r#gen::<f64>() < funnel.view_again(interest.views) {
                        interest.views += 1;
                        emitter.emit(EventType::View, product, funnel.browse[interest.views], rng);
                    } else {
                        let act = funnel.act(interest.views);
                        let draw = rng.r#gen::<f64>();
                        if draw < CART_SHARE * act {
                            interest.stage = Stage::InCart;
                            carted = true;
                            interest.carts += 1;
                            emitter.emit(EventType::Cart, product, funnel.cart[0], rng);
                        } else if draw < (CART_SHARE + DIRECT_BUY_SHARE) * act {
                            interest.stage = Stage::Bought;
                            bought = true;
                            emitter.emit(EventType::Purchase, product, f64::NAN, rng);
                        } else {
                            interest.stage = Stage::Left;
                        }
                    }
                }
                Stage::InCart => {
                    let draw = rng.r#gen::<f64>();
                    let removes = interest.removes;
                    if draw < VIEW_IN_CART {
                        interest.views += 1;
                        emitter.emit(EventType::View, product, funnel.cart[removes], rng);
                    } else if draw < VIEW_IN_CART + funnel.remove(removes) {
                        interest.removes += 1;
                        interest.stage = Stage::Removed;
                        let probability = funnel.recart(removes + 1) * funnel.cart[removes + 1];
                        emitter.emit(EventType::RemoveFromCart, product, probability, rng);
                    } else if rng.r#gen::<f64>() < funnel.buy(removes) {
                        interest.stage = Stage::Bought;
                        bought = true;
                        emitter.emit(EventType::Purchase, product, f64::NAN, rng);
                    } else {
                        interest.stage = Stage::Left;
                    }
                }
                Stage::Removed => {
                    if rng.r#gen::<f64>() < funnel.recart(interest.removes) {
                        interest.stage = Stage::InCart;
                        interest.carts += 1;
                        emitter.emit(EventType::Cart, product, funnel.cart[interest.removes], rng);
                    } else {
                        interest.stage = Stage::Left;
                    }
                }
                Stage::Bought | Stage::Left => unreachable!("only active products are chosen"),
            }
        }
        let last_event = emitter.time;
        let purchases = interests
            .iter()
            .filter(|interest| interest.stage == Stage::Bought)
            .count();
        for interest in &interests {
            user.remember(interest);
        }
        user.sessions += 1;
        user.carts += interests.iter().map(|interest| interest.carts).sum::<u32>();
        user.purchases += purchases as u32;
        user.busy_until = last_event + SESSION_BREAK;
        self.summary.sessions += 1;
        self.summary.sessions_with_cart += u64::from(carted);
        self.summary.abandoned_carts += u64::from(carted && !bought);
        self.summary.purchases += purchases as u64;
        self.interests = interests;
    }
}

/// Preference among a user's three categories: the first most.
const PREFERRED_CUMULATIVE: [f64; PREFERRED_CATEGORIES] = [0.5, 0.8, 1.0];

/// Picks the next product of a session: sometimes one the user viewed before and did not buy,
/// else a popular one of `category`; never one already opened in this session, because a product
/// that left its funnel must stay gone for the truth to hold.
fn open_product(
    user: &User,
    catalogue: &Catalogue,
    category: u32,
    interests: &[Interest],
    rng: &mut ChaCha8Rng,
) -> Option<u32> {
    let opened = |product: u32| interests.iter().any(|interest| interest.product == product);
    let candidates = user
        .seen
        .iter()
        .filter(|seen| !seen.bought && !opened(seen.product))
        .count();
    if candidates > 0 && rng.gen_bool(REVISIT_EARLIER_PRODUCT) {
        let chosen = rng.gen_range(0..candidates);
        return user
            .seen
            .iter()
            .filter(|seen| !seen.bought && !opened(seen.product))
            .nth(chosen)
            .map(|seen| seen.product);
    }
    (0..16)
        .map(|_| catalogue.popular_product(category, rng))
        .find(|&product| !opened(product))
}

/// Appends a session's events with their gaps.
struct Emitter<'a> {
    time: Millis,
    first: bool,
    user: u32,
    session: u128,
    pending: &'a mut Vec<Record>,
    next_sequence: &'a mut u64,
}

impl Emitter<'_> {
    fn emit(
        &mut self,
        event_type: EventType,
        product: u32,
        probability: f64,
        rng: &mut ChaCha8Rng,
    ) {
        if self.first {
            self.first = false;
        } else {
            self.time += gap(event_type, rng);
        }
        self.pending.push(Record {
            time: self.time,
            sequence: *self.next_sequence,
            user: self.user,
            product,
            session: self.session,
            event_type,
            probability,
        });
        *self.next_sequence += 1;
    }
}

/// The log-normal wait before an event, in whole seconds within `[1 s, MAX_GAP]`.
fn gap(event_type: EventType, rng: &mut ChaCha8Rng) -> Millis {
    let median = match event_type {
        EventType::View => VIEW_GAP_SECONDS,
        EventType::Cart => CART_GAP_SECONDS,
        EventType::RemoveFromCart => REMOVE_GAP_SECONDS,
        EventType::Purchase => PURCHASE_GAP_SECONDS,
    };
    let seconds = (median * (GAP_SPREAD * normal(rng)).exp()).round() as Millis;
    (seconds * SECOND).clamp(SECOND, MAX_GAP)
}

/// The diurnal session-rate multiplier at `time`, between `1 − A` and `1 + A`.
fn diurnal(time: Millis) -> f64 {
    let hour = time.rem_euclid(DAY) as f64 / HOUR as f64;
    1.0 + DIURNAL_AMPLITUDE * (std::f64::consts::TAU * (hour - DIURNAL_PEAK_HOUR) / 24.0).cos()
}

/// Writes chunks of sorted records as CSV rows and truth rows.
struct Output<W: Write, T: Write> {
    events_writer: csv::Writer<W>,
    truth_writer: Option<BufWriter<T>>,
    event: Event,
    events: u64,
    scoring_points: u64,
    products_seen: Vec<bool>,
}

impl<W: Write, T: Write> Output<W, T> {
    fn new(out: W, truth: Option<T>) -> Result<Self> {
        let mut events_writer = csv::WriterBuilder::new()
            .buffer_capacity(1 << 16)
            .from_writer(out);
        events_writer
            .write_record(CSV_HEADER)
            .context("failed to write the csv header")?;
        let mut truth_writer = truth.map(|truth| BufWriter::with_capacity(1 << 16, truth));
        if let Some(writer) = truth_writer.as_mut() {
            writeln!(writer, "{TRUTH_HEADER}").context("failed to write the truth header")?;
        }
        Ok(Output {
            events_writer,
            truth_writer,
            event: Event {
                time: 0,
                event_type: EventType::View,
                product_id: 0,
                category_id: 0,
                category_code: None,
                brand: None,
                price: 0.0,
                user_id: 0,
                user_session: String::new(),
                event_id: None,
            },
            events: 0,
            scoring_points: 0,
            products_seen: Vec::new(),
        })
    }

    /// Sorts the pending records and writes those before `until` (all when `None`); returns how
    /// many were written. Every session that can still add an event earlier than `until` has
    /// already been simulated, so what is written is final.
    fn write_ready(&mut self, generator: &mut Generator, until: Option<Millis>) -> Result<u64> {
        let pending = &mut generator.pending;
        pending.sort_unstable_by_key(|record| (record.time, record.sequence));
        let ready = until.map_or(pending.len(), |until| {
            pending.partition_point(|record| record.time < until)
        });
        if self.products_seen.is_empty() {
            self.products_seen = vec![false; generator.catalogue.products.len()];
        }
        for record in &pending[..ready] {
            let product = &generator.catalogue.products[record.product as usize];
            let category = &generator.catalogue.categories[product.category as usize];
            let event = &mut self.event;
            event.time = record.time;
            event.event_type = record.event_type;
            event.product_id = product.id;
            event.category_id = category.id;
            event.category_code.clone_from(&category.code);
            event.brand.clone_from(&product.brand);
            event.price = product.price;
            event.user_id = generator.users[record.user as usize].id;
            event.user_session.clear();
            write_uuid(&mut event.user_session, record.session);
            event
                .write_csv(&mut self.events_writer)
                .context("failed to write an event")?;
            self.events += 1;
            self.products_seen[record.product as usize] = true;
            if record.event_type.is_scoring_point() {
                self.scoring_points += 1;
                if let Some(writer) = self.truth_writer.as_mut() {
                    writeln!(
                        writer,
                        "{:016x},{},{},{},{},{},{:.8}",
                        event.identity(),
                        format_time(event.time),
                        event.user_id,
                        event.user_session,
                        event.product_id,
                        event.event_type.as_str(),
                        record.probability
                    )
                    .context("failed to write a truth row")?;
                }
            }
        }
        pending.drain(..ready);
        Ok(ready as u64)
    }

    fn finish(&mut self) -> Result<()> {
        self.events_writer
            .flush()
            .context("failed to flush the events")?;
        if let Some(writer) = self.truth_writer.as_mut() {
            writer.flush().context("failed to flush the truth")?;
        }
        Ok(())
    }
}

/// Random bits shaped as a version-4 UUID, like REES46 session ids.
fn uuid_bits(bits: u128) -> u128 {
    (bits & !(0xF << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62)
}

fn write_uuid(out: &mut String, bits: u128) {
    let _ = write!(
        out,
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        (bits >> 96) as u32,
        (bits >> 80) as u16,
        (bits >> 64) as u16,
        (bits >> 48) as u16,
        bits as u64 & 0xFFFF_FFFF_FFFF
    );
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// A standard normal draw (Box-Muller; one of the pair is enough here).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let radius = (-2.0 * (1.0 - rng.r#gen::<f64>()).ln()).sqrt();
    radius * (std::f64::consts::TAU * rng.r#gen::<f64>()).cos()
}

/// An exponential draw with `rate` (inverse CDF).
fn exponential(rate: f64, rng: &mut ChaCha8Rng) -> f64 {
    -(1.0 - rng.r#gen::<f64>()).ln() / rate
}

/// Cumulative Zipf weights `1/(rank+1)^exponent`, normalized to end at 1.
fn zipf_cumulative(count: usize, exponent: f64) -> Vec<f64> {
    let mut total = 0.0;
    let mut cumulative: Vec<f64> = (0..count)
        .map(|rank| {
            total += 1.0 / ((rank + 1) as f64).powf(exponent);
            total
        })
        .collect();
    for value in &mut cumulative {
        *value /= total;
    }
    cumulative
}

/// The individual weights behind cumulative weights.
fn weights(cumulative: &[f64]) -> impl Iterator<Item = f64> + '_ {
    cumulative.iter().scan(0.0, |previous, &value| {
        Some(value - std::mem::replace(previous, value))
    })
}

/// Draws an index by cumulative weights ending at 1.
fn pick(cumulative: &[f64], rng: &mut ChaCha8Rng) -> usize {
    let draw = rng.r#gen::<f64>();
    cumulative
        .partition_point(|&value| value <= draw)
        .min(cumulative.len() - 1)
}

/// Fisher-Yates, since `rand::seq` is not enabled.
fn shuffle<V>(values: &mut [V], rng: &mut ChaCha8Rng) {
    for index in (1..values.len()).rev() {
        values.swap(index, rng.gen_range(0..=index));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use propensity_actors::engine::DEFAULT_SESSION_TIMEOUT;
    use propensity_actors::engine::FeatureEngine;
    use propensity_actors::event::CsvEvents;
    use std::collections::{HashMap, HashSet};

    struct Run {
        events: Vec<u8>,
        truth: Vec<u8>,
        summary: GenerateSummary,
    }

    fn run(users: u64, days: u32, seed: u64) -> Run {
        let options = GenerateOptions {
            users,
            days,
            seed,
            ..GenerateOptions::default()
        };
        let mut events = Vec::new();
        let mut truth = Vec::new();
        let summary = generate(
            &options,
            &mut events,
            Some(&mut truth),
            &ProgressBar::hidden(),
        )
        .unwrap();
        Run {
            events,
            truth,
            summary,
        }
    }

    fn parse(bytes: &[u8]) -> Vec<Event> {
        CsvEvents::new(bytes).map(|event| event.unwrap()).collect()
    }

    struct TruthRow {
        identity: u64,
        user_id: u64,
        session: String,
        product_id: u64,
        event_type: String,
        probability: f64,
    }

    fn parse_truth(bytes: &[u8]) -> Vec<TruthRow> {
        let text = std::str::from_utf8(bytes).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(TRUTH_HEADER));
        lines
            .map(|line| {
                let fields: Vec<&str> = line.split(',').collect();
                assert_eq!(fields.len(), 7, "{line}");
                TruthRow {
                    identity: u64::from_str_radix(fields[0], 16).unwrap(),
                    user_id: fields[2].parse().unwrap(),
                    session: fields[3].to_owned(),
                    product_id: fields[4].parse().unwrap(),
                    event_type: fields[5].to_owned(),
                    probability: fields[6].parse().unwrap(),
                }
            })
            .collect()
    }

    /// Whether the same user bought the product later in the session, for every scoring point,
    /// in output order.
    fn labels(events: &[Event]) -> Vec<bool> {
        let mut last_purchase: HashMap<(&str, u64), Millis> = HashMap::new();
        for event in events
            .iter()
            .filter(|event| event.event_type == EventType::Purchase)
        {
            let time = last_purchase
                .entry((event.user_session.as_str(), event.product_id))
                .or_insert(event.time);
            *time = (*time).max(event.time);
        }
        events
            .iter()
            .filter(|event| event.event_type.is_scoring_point())
            .map(|event| {
                last_purchase
                    .get(&(event.user_session.as_str(), event.product_id))
                    .is_some_and(|&time| time > event.time)
            })
            .collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_bytes() {
        let first = run(150, 2, 7);
        let second = run(150, 2, 7);
        assert!(first.summary.events > 1_000);
        assert_eq!(first.events, second.events);
        assert_eq!(first.truth, second.truth);
        assert_eq!(first.summary, second.summary);
        let other = run(150, 2, 8);
        assert_ne!(first.events, other.events);
        assert_ne!(first.truth, other.truth);
    }

    #[test]
    fn output_parses_sorted_and_matches_the_summary() {
        let run = run(300, 3, 11);
        let events = parse(&run.events);
        assert_eq!(events.len() as u64, run.summary.events);
        assert!(
            events.windows(2).all(|pair| pair[0].time <= pair[1].time),
            "not sorted by time"
        );
        let count = |event_type| {
            events
                .iter()
                .filter(|event| event.event_type == event_type)
                .count() as u64
        };
        assert_eq!(count(EventType::Purchase), run.summary.purchases);
        assert_eq!(
            run.summary.scoring_points,
            run.summary.events - run.summary.purchases
        );
        let sessions: HashSet<&str> = events
            .iter()
            .map(|event| event.user_session.as_str())
            .collect();
        assert_eq!(sessions.len() as u64, run.summary.sessions);
        let users: HashSet<u64> = events.iter().map(|event| event.user_id).collect();
        assert_eq!(users.len() as u64, run.summary.users);
        let products: HashSet<u64> = events.iter().map(|event| event.product_id).collect();
        assert_eq!(products.len() as u64, run.summary.products);
        for event in &events {
            assert!(
                (1_000_000..100_000_000).contains(&event.product_id),
                "{}",
                event.product_id
            );
            assert_eq!(event.category_id.to_string().len(), 19);
            assert!(
                (500_000_000..600_000_000).contains(&event.user_id),
                "{}",
                event.user_id
            );
            assert_eq!(event.user_session.len(), 36);
            assert_eq!(event.user_session.as_bytes()[14], b'4');
            assert!(event.price > 0.0);
            assert_eq!(
                format!("{:.2}", event.price).parse::<f64>().unwrap(),
                event.price
            );
        }
        assert!(events.iter().any(|event| event.category_code.is_none()));
        assert!(events.iter().any(|event| event.brand.is_none()));
        assert!(
            events
                .iter()
                .any(|event| event.category_code.as_deref() == Some("electronics.smartphone"))
        );
        // A product keeps one category and one price.
        let mut products: HashMap<u64, (u64, f64)> = HashMap::new();
        for event in &events {
            let known = products
                .entry(event.product_id)
                .or_insert((event.category_id, event.price));
            assert_eq!(*known, (event.category_id, event.price));
        }
    }

    #[test]
    fn sessions_stay_whole_and_users_return() {
        let run = run(300, 4, 3);
        let events = parse(&run.events);
        let mut last_seen: HashMap<&str, Millis> = HashMap::new();
        for event in &events {
            if let Some(&last) = last_seen.get(event.user_session.as_str()) {
                assert!(event.time > last, "events of a session share a time");
                assert!(
                    event.time - last <= 30 * MINUTE,
                    "a gap longer than the session timeout"
                );
            }
            last_seen.insert(&event.user_session, event.time);
        }
        // The feature engine sees exactly our sessions: none split by its timeout, no duplicates.
        let mut engine = FeatureEngine::new(DEFAULT_SESSION_TIMEOUT);
        for event in &events {
            let applied = engine.apply(event);
            assert_eq!(
                applied,
                propensity_actors::Applied::Changed { closed: None }
            );
        }
        let engine_sessions: u64 = engine
            .users
            .users
            .values()
            .map(|user| u64::from(user.sessions))
            .sum();
        assert_eq!(engine_sessions, run.summary.sessions);
        let mut sessions_per_user: HashMap<u64, HashSet<&str>> = HashMap::new();
        for event in &events {
            sessions_per_user
                .entry(event.user_id)
                .or_default()
                .insert(&event.user_session);
        }
        let returning = sessions_per_user
            .values()
            .filter(|sessions| sessions.len() > 1)
            .count();
        assert!(
            returning * 2 > sessions_per_user.len(),
            "{returning} of {} users returned",
            sessions_per_user.len()
        );
    }

    #[test]
    fn carts_are_mostly_abandoned_and_every_kind_of_event_occurs() {
        let run = run(3_000, 7, 1);
        let summary = run.summary;
        let rate = summary.abandonment_rate();
        assert!(
            (0.65..=0.75).contains(&rate),
            "abandonment {rate} in {summary:?}"
        );
        let events = parse(&run.events);
        assert!(
            events
                .iter()
                .any(|event| event.event_type == EventType::RemoveFromCart)
        );
        let mut carted: HashSet<(&str, u64)> = HashSet::new();
        let mut direct = 0;
        for event in &events {
            let key = (event.user_session.as_str(), event.product_id);
            match event.event_type {
                EventType::Cart => {
                    carted.insert(key);
                }
                EventType::Purchase if !carted.contains(&key) => direct += 1,
                _ => {}
            }
        }
        let share = direct as f64 / summary.purchases as f64;
        assert!(
            (0.01..0.1).contains(&share),
            "{direct} of {} purchases without a cart",
            summary.purchases
        );
        // Views of several products interleave within a session: A, B, A happens.
        let mut by_session: HashMap<&str, Vec<u64>> = HashMap::new();
        for event in events
            .iter()
            .filter(|event| event.event_type == EventType::View)
        {
            by_session
                .entry(&event.user_session)
                .or_default()
                .push(event.product_id);
        }
        let interleaved = by_session
            .values()
            .filter(|views| views.windows(3).any(|w| w[0] == w[2] && w[0] != w[1]))
            .count();
        assert!(
            interleaved * 20 > by_session.len(),
            "{interleaved} of {} sessions revisit",
            by_session.len()
        );
    }

    #[test]
    fn truth_rows_match_the_scoring_points() {
        let run = run(200, 2, 9);
        let events = parse(&run.events);
        let truth = parse_truth(&run.truth);
        let scoring: Vec<&Event> = events
            .iter()
            .filter(|event| event.event_type.is_scoring_point())
            .collect();
        assert_eq!(truth.len(), scoring.len());
        assert_eq!(truth.len() as u64, run.summary.scoring_points);
        for (row, event) in truth.iter().zip(&scoring) {
            assert_eq!(row.identity, event.identity());
            assert_eq!(row.user_id, event.user_id);
            assert_eq!(row.session, event.user_session);
            assert_eq!(row.product_id, event.product_id);
            assert_eq!(row.event_type, event.event_type.as_str());
            assert!((0.0..=1.0).contains(&row.probability));
        }
        let labels = labels(&events);
        // A product is scored 0 only when it cannot be bought any more, which never happens here.
        assert!(truth.iter().all(|row| row.probability > 0.0));
        assert!(labels.iter().any(|&label| label));
    }

    #[test]
    fn truth_is_calibrated() {
        let run = run(1_600, 9, 21);
        let events = parse(&run.events);
        let truth = parse_truth(&run.truth);
        let labels = labels(&events);
        assert!(truth.len() > 100_000, "{} scoring points", truth.len());
        // Rows of one product in one session share their label, so sampling error is counted in
        // (session, product) pairs, not rows.
        let pair = |row: &TruthRow| (row.session.clone(), row.product_id);

        // Each opened product's first view carries the probability that it is bought at all.
        let mut opened = HashSet::new();
        let expected_purchases: f64 = truth
            .iter()
            .filter(|row| opened.insert(pair(row)))
            .map(|row| row.probability)
            .sum();
        let purchases = run.summary.purchases as f64;
        assert!(
            (purchases - expected_purchases).abs() < 4.0 * expected_purchases.sqrt(),
            "{purchases} purchases, {expected_purchases} expected"
        );

        let mean_truth = truth.iter().map(|row| row.probability).sum::<f64>() / truth.len() as f64;
        let positive_rate =
            labels.iter().filter(|&&label| label).count() as f64 / labels.len() as f64;
        assert!(
            (mean_truth - positive_rate).abs() < 0.08 * positive_rate,
            "mean truth {mean_truth} vs positive rate {positive_rate}"
        );

        let edges = [0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 1.01];
        let mut bins_checked = 0;
        for bin in edges.windows(2) {
            let members: Vec<usize> = (0..truth.len())
                .filter(|&index| (bin[0]..bin[1]).contains(&truth[index].probability))
                .collect();
            let pairs: HashSet<_> = members.iter().map(|&index| pair(&truth[index])).collect();
            if pairs.len() < 500 {
                continue;
            }
            bins_checked += 1;
            let expected = members
                .iter()
                .map(|&index| truth[index].probability)
                .sum::<f64>()
                / members.len() as f64;
            let observed = members.iter().filter(|&&index| labels[index]).count() as f64
                / members.len() as f64;
            let error = (expected * (1.0 - expected) / pairs.len() as f64).sqrt();
            assert!(
                (expected - observed).abs() < 4.0 * error + 0.001,
                "bin {bin:?}: {} rows, truth {expected}, observed {observed}",
                members.len()
            );
        }
        assert!(bins_checked >= 7, "only {bins_checked} bins were populated");
    }

    #[test]
    fn funnel_probabilities_solve_their_recursions() {
        let funnel = Funnel::new(0.3);
        for views in 1..MAX_VIEWS {
            let again = funnel.view_again(views);
            let act = funnel.act(views);
            let expected = again * funnel.browse[views + 1]
                + (1.0 - again) * act * (CART_SHARE * funnel.cart[0] + DIRECT_BUY_SHARE);
            assert!((funnel.browse[views] - expected).abs() < 1e-12);
        }
        // In the cart, a view changes nothing: the one-step equation holds with the self-loop.
        for removes in 0..MAX_REMOVES {
            let expected = VIEW_IN_CART * funnel.cart[removes]
                + funnel.remove(removes) * funnel.recart(removes + 1) * funnel.cart[removes + 1]
                + (1.0 - VIEW_IN_CART - funnel.remove(removes)) * funnel.buy(removes);
            assert!((funnel.cart[removes] - expected).abs() < 1e-12);
        }
        assert!((funnel.cart[MAX_REMOVES] - funnel.buy(MAX_REMOVES)).abs() < 1e-12);
        // More interest, cheaper or a better history all raise the probability.
        assert!(Funnel::new(1.0).browse[1] > funnel.browse[1]);
        assert!(funnel.browse[2] > funnel.browse[1]);
    }

    #[test]
    fn an_empty_run_writes_only_the_headers() {
        let empty = run(0, 3, 1);
        assert_eq!(empty.summary, GenerateSummary::default());
        assert_eq!(
            String::from_utf8(empty.events).unwrap(),
            format!("{}\n", CSV_HEADER.join(","))
        );
        assert_eq!(
            String::from_utf8(empty.truth).unwrap(),
            format!("{TRUTH_HEADER}\n")
        );
        assert_eq!(run(10, 0, 1).summary.events, 0);
    }

    #[test]
    fn uuids_look_like_version_4() {
        let mut text = String::new();
        write_uuid(&mut text, uuid_bits(u128::MAX));
        assert_eq!(text, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        text.clear();
        write_uuid(&mut text, uuid_bits(0));
        assert_eq!(text, "00000000-0000-4000-8000-000000000000");
    }
}
