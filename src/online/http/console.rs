//! The web console at `/`: a page, a script and a style sheet compiled into the binary, so it
//! needs no build step and no network. It reads only the public JSON API with the user's
//! bearer token, so it shows nothing an API client could not see; the assets themselves hold no
//! data and are served without the token, so that the page can ask for it.

use actix_web::HttpResponse;
use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/style.css");

/// The paths the console's assets are served at: open without the token.
pub(super) const ASSET_PATHS: [&str; 3] = ["/", "/console/app.js", "/console/style.css"];

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, content_type))
        // Assets change with the binary: revalidate, so an upgrade shows at the next load.
        .insert_header((CACHE_CONTROL, "no-cache"))
        .body(body)
}

pub(super) async fn index() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX)
}

pub(super) async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub(super) async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE)
}
