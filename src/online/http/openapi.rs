//! The OpenAPI document, generated from the handlers' annotations and the bodies in
//! [`super::types`]; schema/openapi.json is this document, written by `propensity openapi`, and
//! a test fails when the two differ.

use std::sync::OnceLock;

use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// Every route of the API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "propensity",
        description = "Real-time purchase propensity and cart-abandonment monitoring. Every error is a JSON object {error, status}; a method a route does not answer gets 405 with Allow. With http.auth_token set, every route except /health (and /metrics unless http.protect_metrics) needs `Authorization: Bearer <token>`. The web console at / reads only these routes."
    ),
    paths(
        super::score,
        super::events,
        super::session,
        super::user,
        super::product,
        super::outcomes,
        super::model_card,
        super::model_report,
        super::segments,
        super::live::live,
        super::health,
        super::ready,
        super::metrics,
        super::openapi,
    ),
    // A path parameter's type is not collected with the route: named here.
    components(schemas(super::types::ReportChart)),
    modifiers(&BearerToken),
    security(("bearer" = [])),
    tags(
        (name = "scoring", description = "Propensities and the action to take"),
        (name = "events", description = "The HTTP collector"),
        (name = "lookups", description = "Sessions, users and products as the service holds them"),
        (name = "outcomes", description = "Sessions by outcome, counted once; what was applied lately"),
        (name = "model", description = "The models in service: propensity and customer segments"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// Declares the bearer token scheme the routes refer to.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("http.auth_token"))
                    .build(),
            ),
        );
    }
}

/// The document as pretty JSON, with a trailing newline.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the document serializes")
            + "\n"
    })
}
