//! HTTP endpoints of `cep serve`: `/metrics` (Prometheus text), `/healthz`
//! (the process answers), `/readyz` (partitions are assigned and the
//! pipeline is consuming) and `/openapi.json` (see [`crate::service::openapi`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::service::metrics::Metrics;
use crate::service::pipeline::Health;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

pub fn app(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route(
            "/openapi.json",
            get(|| async { axum::Json(crate::service::openapi::document()) }),
        )
        .with_state(AppState { metrics, health })
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn ready(State(s): State<AppState>) -> impl IntoResponse {
    if s.health.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no partitions assigned\n",
        )
    }
}
