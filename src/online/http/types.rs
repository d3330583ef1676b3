//! The API's request and response bodies. The handlers answer with these types and the OpenAPI
//! document is generated from them, so the two cannot disagree.

use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type};
use utoipa::openapi::{RefOr, schema::ArrayBuilder};
use utoipa::{PartialSchema, ToSchema};

use crate::online::scoring::{Action, Band};

/// Every error: what went wrong, naming the field, and the HTTP status again.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    pub status: u16,
}

/// An id: an unsigned integer of up to 20 digits, as a JSON number or a string of digits
/// (JavaScript loses digits past 2^53).
#[derive(Clone, Copy, Debug)]
pub struct IdField(pub u64);

/// The ids the document's examples use; `tests/contract.rs` creates them before schemathesis
/// runs, so its example phase reaches real answers.
pub const EXAMPLE_USER_ID: u64 = 518024427;
pub const EXAMPLE_SESSION: &str = "5f1e2d3c-4b5a-4968-8776-655443322110";
pub const EXAMPLE_PRODUCT_ID: u64 = 1004856;

/// What an id must be, in the words of the error a client sees after the field's name.
pub const ID_EXPECTED: &str =
    "must be an unsigned integer of up to 20 digits (a JSON number or a string of digits)";

impl PartialSchema for IdField {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .description(Some(
                "Unsigned 64-bit integer, as a JSON number or a string of digits (JavaScript loses digits past 2^53).",
            ))
            .item(
                ObjectBuilder::new()
                    .schema_type(SchemaType::Type(Type::Integer))
                    .minimum(Some(0))
                    .maximum(Some(usize::MAX)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(SchemaType::Type(Type::String))
                    .pattern(Some("^[0-9]{1,19}$")),
            )
            .into()
    }
}

impl ToSchema for IdField {}

impl<'de> Deserialize<'de> for IdField {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl serde::de::Visitor<'_> for IdVisitor {
            type Value = IdField;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("an unsigned integer of up to 20 digits")
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<IdField, E> {
                Ok(IdField(value))
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<IdField, E> {
                u64::try_from(value)
                    .map(IdField)
                    .map_err(|_| E::custom(ID_EXPECTED))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<IdField, E> {
                let digits = !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit());
                match text.parse() {
                    Ok(value) if digits => Ok(IdField(value)),
                    _ => Err(E::custom(ID_EXPECTED)),
                }
            }
            // JSON Schema counts 148.0 as an integer, and so do we, as long as it is one.
            fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<IdField, E> {
                if value.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&value) {
                    Ok(IdField(value as u64))
                } else {
                    Err(E::custom(ID_EXPECTED))
                }
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<IdField, E> {
                Err(E::custom(ID_EXPECTED))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<IdField, E> {
                Err(E::custom(ID_EXPECTED))
            }
        }
        deserializer.deserialize_any(IdVisitor)
    }
}

/// `POST /v1/score`: one product (`product_id`) or several to rank (`product_ids`), exactly one
/// of the two.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    pub user_id: IdField,
    pub user_session: String,
    pub product_id: Option<IdField>,
    pub product_ids: Option<Vec<IdField>>,
    #[serde(default = "default_true")]
    pub explain: bool,
}

fn default_true() -> bool {
    true
}

impl PartialSchema for ScoreRequest {
    fn schema() -> RefOr<Schema> {
        let common = |products: (&str, RefOr<Schema>)| {
            ObjectBuilder::new()
                .property("user_id", IdField::schema())
                .required("user_id")
                .property(
                    "user_session",
                    ObjectBuilder::new()
                        .schema_type(SchemaType::Type(Type::String))
                        .min_length(Some(1))
                        .description(Some("The shop's session id.")),
                )
                .required("user_session")
                .property(products.0, products.1)
                .required(products.0)
                .property(
                    "explain",
                    ObjectBuilder::new()
                        .schema_type(SchemaType::Type(Type::Boolean))
                        .default(Some(serde_json::Value::Bool(true)))
                        .description(Some("Return the decision path behind each score.")),
                )
                .additional_properties(Some(
                    utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
                ))
        };
        OneOfBuilder::new()
            .description(Some(
                "Give exactly one of product_id (score one product) or product_ids (score and rank several).",
            ))
            .item(common(("product_id", IdField::schema())))
            .item(common((
                "product_ids",
                ArrayBuilder::new()
                    .items(IdField::schema())
                    .min_items(Some(1))
                    .into(),
            )))
            .into()
    }
}

impl ToSchema for ScoreRequest {}

/// One product's score in a ranking.
#[derive(Serialize, ToSchema)]
pub struct ScoreItem {
    pub product_id: u64,
    /// Calibrated probability that the product is bought later in the session.
    pub propensity: f64,
    pub band: Band,
    pub action: Action,
    /// The decision path, when asked for.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    #[schema(value_type = Option<Object>)]
    pub explanation: serde_json::Value,
}

/// The answer for one product.
#[derive(Serialize, ToSchema)]
pub struct SingleScore {
    pub product_id: u64,
    pub propensity: f64,
    pub band: Band,
    pub action: Action,
    pub model_version: String,
    /// The decision path; null unless asked for.
    #[schema(value_type = Option<Object>)]
    pub explanation: serde_json::Value,
    /// The shopper's predicted value as of their latest event, so the shop can weigh what an
    /// incentive may cost; null before their first purchase or without a value model.
    pub customer_value: Option<ValueBody>,
}

/// The answer for several products, best first.
#[derive(Serialize, ToSchema)]
pub struct RankedScores {
    pub model_version: String,
    pub scores: Vec<ScoreItem>,
    /// The shopper's predicted value as of their latest event; null before their first purchase
    /// or without a value model.
    pub customer_value: Option<ValueBody>,
}

/// The answer of `POST /v1/score`.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum ScoreResponse {
    Single(SingleScore),
    Ranked(RankedScores),
}

/// An event as `POST /v1/events` takes it (schema/event.schema.json has the full rules).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EventBody {
    /// `2019-10-01 00:00:04 UTC` (optionally with fractional seconds) or RFC 3339.
    event_time: String,
    #[schema(inline)]
    event_type: EventTypeBody,
    product_id: IdField,
    category_id: IdField,
    category_code: Option<String>,
    brand: Option<String>,
    #[schema(minimum = 0)]
    price: f64,
    user_id: IdField,
    #[schema(min_length = 1, max_length = 128)]
    user_session: String,
    #[schema(min_length = 1, max_length = 128)]
    event_id: Option<String>,
}

/// The four REES46 event types.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum EventTypeBody {
    View,
    Cart,
    RemoveFromCart,
    Purchase,
}

/// The body of `POST /v1/events`: one event or a non-empty array of them.
pub struct EventsRequest;

impl PartialSchema for EventsRequest {
    fn schema() -> RefOr<Schema> {
        let event = RefOr::Ref(utoipa::openapi::Ref::from_schema_name("EventBody"));
        OneOfBuilder::new()
            .description(Some("One event, or a non-empty array of them."))
            .item(event.clone())
            .item(ArrayBuilder::new().items(event).min_items(Some(1)))
            .into()
    }
}

impl ToSchema for EventsRequest {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push(("EventBody".into(), EventBody::schema()));
        EventBody::schemas(schemas);
    }
}

/// What `POST /v1/events` did: applied (`accepted`, `duplicates`) on the HTTP bus, or
/// `published` to RabbitMQ.
#[derive(Serialize, ToSchema)]
pub struct EventsAccepted {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicates: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<u64>,
}

/// How many events of each type.
#[derive(Serialize, ToSchema)]
pub struct CountsBody {
    pub events: u32,
    pub views: u32,
    pub carts: u32,
    pub removes: u32,
    pub purchases: u32,
}

impl From<&propensity_actors::features::Counts> for CountsBody {
    fn from(counts: &propensity_actors::features::Counts) -> Self {
        CountsBody {
            events: counts.events,
            views: counts.views,
            carts: counts.carts,
            removes: counts.removes,
            purchases: counts.purchases,
        }
    }
}

/// A product in a cart.
#[derive(Serialize, ToSchema)]
pub struct CartLine {
    pub product_id: u64,
    pub quantity: u32,
    pub price: f64,
}

/// `GET /v1/sessions/{user_id}/{user_session}`.
#[derive(Serialize, ToSchema)]
pub struct SessionBody {
    pub user_id: u64,
    pub user_session: String,
    /// Whether the session is still open.
    pub live: bool,
    pub started_at: String,
    pub last_event_at: String,
    /// While live: purchased, abandoned or browsed, if it ended now.
    pub outcome_so_far: Option<String>,
    /// Once ended: purchased, abandoned or browsed.
    pub outcome: Option<String>,
    pub cart: Vec<CartLine>,
    pub cart_items: u32,
    pub cart_value: f64,
    /// Products viewed, in order.
    pub views: Vec<u64>,
    /// Every product the session touched, in the order first touched.
    pub products: Vec<SessionProductBody>,
    pub counts: CountsBody,
    /// The session and user features a score would use now, by name.
    pub features: std::collections::BTreeMap<String, f64>,
}

/// `GET /v1/users/{user_id}`.
#[derive(Serialize, ToSchema)]
pub struct UserBody {
    pub user_id: u64,
    pub counts: CountsBody,
    pub sessions: u32,
    pub purchase_sessions: u32,
    /// Revenue to date.
    pub lifetime_value: f64,
    pub first_event_at: String,
    pub last_event_at: String,
    pub last_purchase_at: Option<String>,
    /// Distinct products the user touched.
    pub products: usize,
    /// The shopper's predicted value, by the customer-value model in service (`value.model_path`);
    /// null before their first purchase or without a model.
    pub value: Option<ValueBody>,
}

/// A shopper's predicted value: BG/NBD for how many more purchase days and whether they are still
/// a customer, Gamma-Gamma for what a purchase day will bring; several purchases on one calendar
/// day (UTC) count as one purchase day. Up to date with the shopper's latest event.
#[derive(Serialize, ToSchema)]
pub struct ValueBody {
    /// Probability that the shopper is still a customer.
    pub p_alive: f64,
    /// Purchase days expected in the next 90 days.
    pub expected_purchases_90d: f64,
    /// Expected spend of one purchase day; null when the model has no spend fit.
    pub expected_spend_per_purchase: Option<f64>,
    /// `expected_purchases_90d` times `expected_spend_per_purchase`.
    pub predicted_value_90d: Option<f64>,
    /// What the models saw: purchase days after the first.
    pub frequency: u32,
    /// Weeks from the first purchase day to the latest.
    pub recency_weeks: f64,
    /// Weeks from the first purchase day to the stream's event time now.
    pub age_weeks: f64,
    /// The value model's version.
    pub model_version: String,
    /// The shopper's segment ("new", "loyal high value", "at risk", ...): that of the nearest
    /// centroid of the segments in service (`segments.model_path`); null without them.
    pub segment: Option<String>,
}

impl ValueBody {
    pub fn new(value: crate::offline::value::PredictedValue, segment: Option<String>) -> Self {
        ValueBody {
            segment,
            p_alive: value.p_alive,
            expected_purchases_90d: value.expected_purchases_90d,
            expected_spend_per_purchase: value.expected_spend_per_purchase,
            predicted_value_90d: value.predicted_value_90d,
            frequency: value.frequency,
            recency_weeks: value.recency_weeks,
            age_weeks: value.age_weeks,
            model_version: value.model_version,
        }
    }
}

/// Activity in a window.
#[derive(Serialize, ToSchema)]
pub struct WindowBody {
    pub views: u32,
    pub carts: u32,
    pub purchases: u32,
    pub revenue: f64,
}

impl From<propensity_actors::features::WindowTotals> for WindowBody {
    fn from(totals: propensity_actors::features::WindowTotals) -> Self {
        WindowBody {
            views: totals.views,
            carts: totals.carts,
            purchases: totals.purchases,
            revenue: totals.revenue,
        }
    }
}

/// A product's recent activity, ending at `as_of`.
#[derive(Serialize, ToSchema)]
pub struct WindowsBody {
    /// The watermark, or the product's latest event if that is later.
    pub as_of: String,
    pub last_hour: WindowBody,
    pub last_24_hours: WindowBody,
}

/// `GET /v1/products/{product_id}`.
#[derive(Serialize, ToSchema)]
pub struct ProductBody {
    pub product_id: u64,
    pub category_id: u64,
    pub price: f64,
    pub counts: CountsBody,
    pub revenue: f64,
    pub last_event_at: String,
    pub windows: WindowsBody,
}

/// Sessions by outcome and their cart value.
#[derive(Serialize, ToSchema)]
pub struct TallyBody {
    pub purchased: u64,
    pub abandoned: u64,
    pub browsed: u64,
    pub purchased_cart_value: f64,
    pub abandoned_cart_value: f64,
    pub browsed_cart_value: f64,
    /// abandoned / (abandoned + purchased); null without either.
    pub abandonment_rate: Option<f64>,
}

impl From<&propensity_actors::outcomes::OutcomeTally> for TallyBody {
    fn from(tally: &propensity_actors::outcomes::OutcomeTally) -> Self {
        use propensity_actors::features::Outcome;
        TallyBody {
            purchased: tally.sessions_with(Outcome::Purchased),
            abandoned: tally.sessions_with(Outcome::Abandoned),
            browsed: tally.sessions_with(Outcome::Browsed),
            purchased_cart_value: tally.cart_value_of(Outcome::Purchased),
            abandoned_cart_value: tally.cart_value_of(Outcome::Abandoned),
            browsed_cart_value: tally.cart_value_of(Outcome::Browsed),
            abandonment_rate: tally.abandonment_rate(),
        }
    }
}

/// One hour's tally.
#[derive(Serialize, ToSchema)]
pub struct HourTally {
    pub hour: String,
    #[serde(flatten)]
    pub tally: TallyBody,
}

/// `GET /v1/outcomes`.
#[derive(Serialize, ToSchema)]
pub struct OutcomesBody {
    /// Start of the first hour.
    pub from: String,
    /// End of the last hour.
    pub to: String,
    pub total: TallyBody,
    pub hours: Vec<HourTally>,
}

/// `GET /health`.
#[derive(Serialize, ToSchema)]
pub struct HealthBody {
    /// Always `ok`.
    pub status: String,
}

/// `GET /ready`.
#[derive(Serialize, ToSchema)]
pub struct ReadyBody {
    pub ready: bool,
    pub store_healthy: bool,
    pub live_sessions: usize,
}

/// A product a session touched.
#[derive(Serialize, ToSchema)]
pub struct SessionProductBody {
    pub product_id: u64,
    /// The latest price seen in the session.
    pub price: f64,
    pub views: u32,
    pub carts: u32,
    pub removes: u32,
    pub purchases: u32,
    /// Units in the cart now.
    pub in_cart: u32,
    pub last_view_at: Option<String>,
}

/// `GET /v1/live`: what this instance applied lately, for dashboards.
#[derive(Serialize, ToSchema)]
pub struct LiveBody {
    /// The stream's event time (the latest event applied, less the allowed lateness).
    pub as_of: String,
    /// Events applied since the service started, by type: `view`, `cart`, `remove_from_cart`,
    /// `purchase`.
    pub events: std::collections::BTreeMap<String, u64>,
    pub live_sessions: usize,
    pub users_in_memory: usize,
    /// `alerting.abandonment_ratio_threshold`.
    pub abandonment_threshold: f64,
    /// How far back, in wall-clock seconds, `sales` and `likely_to_sell` look.
    pub sales_window_seconds: u64,
    /// Purchases applied in the window, by product, most sold first.
    pub sales: Vec<ProductSalesBody>,
    /// The products carted most in the window, scored by the model in service for a shopper
    /// who starts a session now, most likely first.
    pub likely_to_sell: Vec<LikelyBody>,
    /// The shoppers who carted or bought last, newest first.
    pub recent_sessions: Vec<RecentSessionBody>,
}

/// One product's recent sales.
#[derive(Serialize, ToSchema)]
pub struct ProductSalesBody {
    pub product_id: u64,
    pub purchases: u32,
    pub revenue: f64,
    /// Event time of the latest sale.
    pub last_sale_at: String,
}

/// A product likely to sell.
#[derive(Serialize, ToSchema)]
pub struct LikelyBody {
    pub product_id: u64,
    pub propensity: f64,
    pub band: crate::online::scoring::Band,
    /// Carts and purchases in the window.
    pub carts: u32,
    pub purchases: u32,
}

/// A shopper who carted or bought lately.
#[derive(Serialize, ToSchema)]
pub struct RecentSessionBody {
    pub user_id: u64,
    pub user_session: String,
    /// `cart` or `purchase`.
    pub event_type: String,
    pub last_event_at: String,
}

/// `GET /v1/segments`: the customer segments in service.
#[derive(Serialize, ToSchema)]
pub struct SegmentsBody {
    pub version: String,
    pub fitted_at: String,
    /// The value model whose predictions were clustered.
    pub value_model_version: String,
    /// Customers fitted.
    pub customers: u64,
    /// The features the segments were fitted on, in the order of each segment's `means`.
    pub features: Vec<String>,
    pub segments: Vec<SegmentBody>,
}

/// One segment.
#[derive(Serialize, ToSchema)]
pub struct SegmentBody {
    pub name: String,
    /// Customers of the fit in this segment.
    pub customers: u64,
    /// Mean probability that its customers are still customers.
    pub mean_p_alive: f64,
    /// Mean of each feature over its customers.
    pub means: Vec<f64>,
}

/// A chart of the training report, as `GET /v1/model/report/{chart}` names it.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
pub enum ReportChart {
    #[serde(rename = "roc.svg")]
    #[schema(rename = "roc.svg")]
    Roc,
    #[serde(rename = "pr.svg")]
    #[schema(rename = "pr.svg")]
    PrecisionRecall,
    #[serde(rename = "calibration.svg")]
    #[schema(rename = "calibration.svg")]
    Calibration,
    #[serde(rename = "feature_importance.svg")]
    #[schema(rename = "feature_importance.svg")]
    FeatureImportance,
}

impl ReportChart {
    /// The file `train --report-dir` writes it to.
    pub fn file_name(self) -> &'static str {
        match self {
            ReportChart::Roc => "roc.svg",
            ReportChart::PrecisionRecall => "pr.svg",
            ReportChart::Calibration => "calibration.svg",
            ReportChart::FeatureImportance => "feature_importance.svg",
        }
    }
}
