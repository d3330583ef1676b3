//! Who and what the simulation is about: the catalogue (categories, products, prices, latent
//! appeal, popularity) and the shoppers (latent traits, arrival clock, memory of earlier
//! sessions, and the purchase logit `z` of a product they open). "Catalogue", "Users" and "The
//! funnel" in the generator's documentation describe the model.

use propensity_actors::event::Millis;
use propensity_actors::features::product::PriceHistogram;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::clock::{DAY, DIURNAL_AMPLITUDE, SECOND};
use super::funnel::{Interest, Stage};
use super::random::{exponential, normal, pick, shuffle, weights, zipf_cumulative};

/// User ids are `510,000,000 + ...`: nine digits starting with 5, as in the REES46 files.
const USER_ID_BASE: u64 = 510_000_000;
pub(super) const MAX_USERS: u64 = 89_000_000;

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
pub(super) const PREFERRED_CATEGORIES: usize = 3;

/// How many products a user remembers across sessions (most recently seen kept).
const USER_MEMORY: usize = 64;

const HISTORY_WEIGHT: f64 = 0.6;
/// About the purchases per add-to-cart the model produces, so the history term is centred.
const TYPICAL_PURCHASES_PER_CART: f64 = 0.35;
const EARLIER_VIEWS_WEIGHT: f64 = 0.35;
/// Few shoppers buy the same product twice.
const OWNED_PENALTY: f64 = 2.0;

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

#[derive(Clone, Debug)]
pub(super) struct Category {
    pub(super) id: u64,
    pub(super) code: Option<String>,
    /// Product indices, most popular first.
    products: Vec<u32>,
    /// Cumulative Zipf weights of `products`.
    cumulative: Vec<f64>,
}

#[derive(Clone, Debug)]
pub(super) struct Product {
    pub(super) id: u64,
    pub(super) category: u32,
    /// Always a whole number of cents, so the CSV round trip keeps the event identity.
    pub(super) price: f64,
    pub(super) brand: Option<String>,
    /// `ln(price / category median)`.
    log_price_ratio: f64,
    /// Latent appeal `a`.
    appeal: f64,
}

/// The products and categories of a run.
#[derive(Clone, Debug)]
pub(super) struct Catalogue {
    pub(super) categories: Vec<Category>,
    /// Cumulative Zipf weights of `categories` (index order is popularity order).
    cumulative: Vec<f64>,
    pub(super) products: Vec<Product>,
}

impl Catalogue {
    pub(super) fn new(rng: &mut ChaCha8Rng) -> Self {
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

    pub(super) fn popular_category(&self, rng: &mut ChaCha8Rng) -> u32 {
        pick(&self.cumulative, rng) as u32
    }

    pub(super) fn popular_product(&self, category: u32, rng: &mut ChaCha8Rng) -> u32 {
        let category = &self.categories[category as usize];
        category.products[pick(&category.cumulative, rng)]
    }
}

/// What a user remembers of one product from earlier sessions.
#[derive(Clone, Copy, Debug)]
pub(super) struct Seen {
    pub(super) product: u32,
    views: u32,
    pub(super) bought: bool,
    /// The user's session counter when last seen, to keep the most recent in memory.
    last_session: u32,
}

/// One simulated shopper: latent traits, arrival clock and history.
#[derive(Clone, Debug)]
pub(super) struct User {
    pub(super) id: u64,
    propensity: f64,
    price_sensitivity: f64,
    /// Chance of planning one more product in a session.
    pub(super) breadth: f64,
    /// Sessions per millisecond at the diurnal peak: the rate of the process that is thinned.
    peak_rate: f64,
    pub(super) preferred: [u32; PREFERRED_CATEGORIES],
    pub(super) next_arrival: Millis,
    pub(super) busy_until: Millis,
    pub(super) sessions: u32,
    /// Add-to-cart events and purchases in earlier sessions.
    pub(super) carts: u32,
    pub(super) purchases: u32,
    pub(super) seen: Vec<Seen>,
}

impl User {
    pub(super) fn new(
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
    pub(super) fn interarrival(&self, rng: &mut ChaCha8Rng) -> Millis {
        let wait = exponential(self.peak_rate, rng);
        // Whole seconds, as REES46 times are; at least one so the clock always moves.
        ((wait / SECOND as f64).round() as Millis).max(1) * SECOND
    }

    fn recall(&self, product: u32) -> Option<&Seen> {
        self.seen.iter().find(|seen| seen.product == product)
    }

    /// The purchase logit `z` of a product opened in the current session.
    pub(super) fn logit(&self, product_index: u32, product: &Product) -> f64 {
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

    pub(super) fn remember(&mut self, interest: &Interest) {
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
