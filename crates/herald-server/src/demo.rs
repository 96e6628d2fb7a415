//! The demo page at `/` and its development-token endpoint.
//!
//! Only mounted when `server.demo = true`: `/demo/token` mints a token for any user name with
//! the configured HMAC secret, which is exactly what a production gateway must never do.
//!
//! The page is a small React app built from `clients/typescript/demo` (`npm run build` there
//! writes `assets/demo/`); the built files are embedded so `herald serve` needs no Node.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use herald_core::protocol::ErrorCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::ApiError;
use herald_node::Node;

const PAGE: &str = include_str!("../assets/demo/index.html");
const APP_JS: &str = include_str!("../assets/demo/app.js");

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/", get(page))
        .route("/demo/app.js", get(app_js))
        .route("/demo/token", get(token))
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn app_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_JS,
    )
}

#[derive(Debug, Deserialize)]
struct TokenParams {
    user: String,
    #[serde(default)]
    role: Option<String>,
}

async fn token(
    State(gw): State<Arc<Node>>,
    query: Result<Query<TokenParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    // Errors keep the API's JSON shape, even the extractor's.
    let Query(p) = query.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    if !herald_core::name::is_valid_segment(&p.user) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "user must be letters, digits, '_' or '-'",
        ));
    }
    let roles: Vec<String> = p.role.into_iter().filter(|r| !r.is_empty()).collect();
    let token = gw
        .auth()
        .mint(&p.user, &roles, Duration::from_secs(3600))
        .map_err(|e| ApiError::new(ErrorCode::NotFound, e.to_string()))?;
    Ok(Json(json!({ "token": token })))
}
