//! `GET /v1/live`: what the instance applied in the last minutes, for the console's overview and
//! any other dashboard; the feed itself is [`crate::online::live`].

use actix_web::{HttpResponse, web};
use propensity_actors::event::{EventType, format_time};

use super::types::{ErrorBody, LikelyBody, LiveBody, ProductSalesBody, RecentSessionBody};
use super::{ApiError, AppState};
use crate::online::scoring::Score;

/// How many products `sales` and `likely_to_sell` list at most.
const LIVE_PRODUCTS: usize = 20;
/// How many of the most carted products are scored for `likely_to_sell`.
const LIKELY_PRODUCTS: usize = 10;

/// Events applied by type, live sessions, sales per product in the last minutes, the products
/// most likely to sell now and the latest shoppers to cart or buy. Covers what this instance
/// applied (on RabbitMQ, the users of its partitions) since it started.
#[utoipa::path(get, path = "/v1/live", tag = "outcomes", responses(
    (status = 200, description = "The live overview", body = LiveBody),
    (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    (status = 503, description = "The store cannot load the products' features; retry", body = ErrorBody)))]
pub(super) async fn live(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let stats = state.engine.stats().await?;
    let feed = &state.metrics.live;
    let events = EventType::ALL
        .iter()
        .map(|event_type| {
            let applied = state
                .metrics
                .events
                .with_label_values(&[event_type.as_str()])
                .get();
            (event_type.as_str().to_owned(), applied)
        })
        .collect();
    let sales = feed
        .sales(LIVE_PRODUCTS)
        .into_iter()
        .map(|sales| ProductSalesBody {
            product_id: sales.product_id,
            purchases: sales.purchases,
            revenue: sales.revenue,
            last_sale_at: format_time(sales.last_sale_at),
        })
        .collect();
    let carted = feed.most_carted(LIKELY_PRODUCTS);
    let mut likely_to_sell = Vec::with_capacity(carted.len());
    if !carted.is_empty() {
        let product_ids = carted.iter().map(|product| product.product_id).collect();
        let vectors = state.engine.new_shopper_features(product_ids).await?;
        let scored = state
            .scoring
            .send(Score {
                vectors,
                explain: false,
            })
            .await?;
        for (product, score) in carted.iter().zip(scored.scores) {
            likely_to_sell.push(LikelyBody {
                product_id: product.product_id,
                propensity: score.propensity,
                band: score.band,
                carts: product.carts,
                purchases: product.purchases,
            });
        }
        likely_to_sell.sort_by(|a, b| b.propensity.total_cmp(&a.propensity));
    }
    let recent_sessions = feed
        .recent_sessions()
        .into_iter()
        .map(|session| RecentSessionBody {
            user_id: session.user_id,
            user_session: session.user_session,
            event_type: session.event_type.as_str().to_owned(),
            last_event_at: format_time(session.time),
        })
        .collect();
    Ok(HttpResponse::Ok().json(LiveBody {
        as_of: format_time(stats.watermark),
        events,
        live_sessions: stats.live_sessions,
        users_in_memory: stats.users_in_memory,
        abandonment_threshold: state.metrics.abandonment_threshold.get(),
        sales_window_seconds: feed.window().as_secs(),
        sales,
        likely_to_sell,
        recent_sessions,
    }))
}
