//! The pattern REST API, served beside `/metrics` by `cep serve`.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /patterns` | every pattern: name, version, source hash, loaded at, mode, counters |
//! | `GET /patterns/{name}` | the same and the source text |
//! | `PUT /patterns/{name}` | body = pattern source: create or replace; returns the version |
//! | `DELETE /patterns/{name}` | remove |
//! | `PUT /patterns/{name}/mode` | body `{"mode": "active" \| "shadow"}` |
//! | `POST /patterns/validate` | body = source: diagnostics only, nothing changes |
//! | `POST /patterns/reload` | read the patterns directory again after direct edits (all or nothing) |
//! | `GET /patterns/{name}/graph` | the compiled automaton as Graphviz DOT |
//!
//! Changing requests need `Authorization: Bearer <serve.api_token>`;
//! without a configured token they are refused unless the user opted out
//! on a loopback address. Bodies are size-limited, requests time out.
//! Errors are JSON `{"error": ..., "diagnostics": [...]}`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;

use crate::dsl::error::DiagnosticJson;
use crate::service::metrics::Metrics;
use crate::service::registry::{check_name, Entry, Refusal, Registry};

/// Who may change patterns.
#[derive(Clone, Debug)]
pub enum Access {
    Token(crate::config::Secret),
    Open,
    Closed,
}

#[derive(Clone)]
pub struct ApiState {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub access: Access,
}

/// Every error the API answers with.
#[derive(Debug)]
pub enum ApiError {
    Unauthorized,
    Forbidden(String),
    NotFound(String),
    Invalid(Vec<DiagnosticJson>),
    BadRequest(String),
    Conflict(String),
    Unavailable(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                json!({"error": "a bearer token is required: Authorization: Bearer <serve.api_token>"}),
            ),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, json!({"error": m})),
            ApiError::NotFound(n) => (
                StatusCode::NOT_FOUND,
                json!({"error": format!("no pattern named `{n}`")}),
            ),
            ApiError::Invalid(d) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "the pattern does not compile", "diagnostics": d}),
            ),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, json!({"error": m})),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, json!({"error": m})),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, json!({"error": m})),
        };
        let mut r = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("valid"));
        }
        r
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::BadName(m) => ApiError::BadRequest(m),
            Refusal::Invalid(d) => ApiError::Invalid(d),
            Refusal::NotFound(n) => ApiError::NotFound(n),
            Refusal::Conflict(m) => ApiError::Conflict(m),
            Refusal::Failed(m) => ApiError::Unavailable(m),
        }
    }
}

pub fn routes(state: ApiState, max_body: usize) -> Router {
    Router::new()
        .route("/patterns", get(list))
        .route("/patterns/validate", post(validate))
        .route("/patterns/reload", post(reload))
        .route(
            "/patterns/{name}",
            get(get_one).put(put_one).delete(delete_one),
        )
        .route("/patterns/{name}/mode", put(set_mode))
        .route("/patterns/{name}/graph", get(graph))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

fn authorize(s: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    match &s.access {
        Access::Open => Ok(()),
        Access::Closed => Err(ApiError::Forbidden(
            "pattern changes are disabled: set serve.api_token (or CEP_API_TOKEN)".into(),
        )),
        Access::Token(t) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            match given {
                Some(g) if token_matches(g, t.expose()) => Ok(()),
                _ => Err(ApiError::Unauthorized),
            }
        }
    }
}

/// Compares the digests of the two tokens in constant time (`subtle`):
/// neither the content nor the length of the configured token leaks
/// through the time an answer takes.
fn token_matches(given: &str, expected: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let (g, e) = (Sha256::digest(given), Sha256::digest(expected));
    g.ct_eq(&e).into()
}

/// Changes wait for the pipeline; they give up after this.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(15);

async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    tokio::time::timeout(CHANGE_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(ApiError::Unavailable("the request timed out".into())))
}

fn describe(e: &Entry, m: &Metrics) -> serde_json::Value {
    let a = &e.automaton;
    let l = [("pattern", a.name.as_str())];
    let alerts = m.get(
        "cep_alerts_total",
        &[("pattern", &a.name), ("kind", "match")],
    ) + m.get(
        "cep_alerts_total",
        &[("pattern", &a.name), ("kind", "timeout")],
    );
    json!({
        "name": a.name,
        "version": a.version,
        "source_hash": a.source_hash,
        "loaded_at": e.loaded_at,
        "mode": if a.shadow { "shadow" } else { "active" },
        "stream": a.stream,
        "file": e.file.as_ref().map(|f| f.display().to_string()),
        "draining": (1..a.version)
            .filter_map(|v| {
                let v_text = v.to_string();
                let l = [("pattern", a.name.as_str()), ("version", v_text.as_str())];
                let runs = m.get("cep_draining_runs", &l);
                (runs > 0.0).then(|| json!({"version": v, "active_runs": runs}))
            })
            .collect::<Vec<_>>(),
        "counters": {
            "events": m.get("cep_pattern_events", &l),
            "alerts": alerts,
            "shadow_alerts": m.get("cep_shadow_alerts_total", &l),
            "active_runs": m.get("cep_active_runs", &l),
        },
    })
}

async fn list(State(s): State<ApiState>) -> Json<serde_json::Value> {
    let all: Vec<_> = s
        .registry
        .list()
        .await
        .iter()
        .map(|e| describe(e, &s.metrics))
        .collect();
    Json(json!({ "patterns": all }))
}

async fn get_one(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let e = s
        .registry
        .get(&name)
        .await
        .ok_or(ApiError::NotFound(name))?;
    let mut v = describe(&e, &s.metrics);
    v["source"] = json!(e.source);
    Ok(Json(v))
}

fn text(body: axum::body::Bytes) -> Result<String, ApiError> {
    String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::BadRequest("the body is not UTF-8 text".into()))
}

/// `?replace=drain` (the default: the old version finishes its open runs)
/// or `?replace=restart` (they are dropped).
fn drain_of(query: Option<String>) -> Result<bool, ApiError> {
    let q = query.unwrap_or_default();
    let mut drain = true;
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        match pair {
            "replace=drain" => drain = true,
            "replace=restart" => drain = false,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query `{other}`: use replace=drain or replace=restart"
                )))
            }
        }
    }
    Ok(drain)
}

async fn put_one(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&s, &headers)?;
    check_name(&name).map_err(ApiError::BadRequest)?;
    let drain = drain_of(query)?;
    let source = text(body)?;
    timed(async {
        let (version, changed) = s.registry.put(&name, &source, drain).await?;
        Ok(Json(
            json!({"name": name, "version": version, "changed": changed}),
        ))
    })
    .await
}

async fn delete_one(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    authorize(&s, &headers)?;
    timed(async {
        s.registry.delete(&name).await?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

async fn reload(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&s, &headers)?;
    timed(async {
        let summary = s.registry.reload().await?;
        Ok(Json(serde_json::to_value(summary).expect("serialises")))
    })
    .await
}

#[derive(serde::Deserialize)]
struct ModeBody {
    mode: String,
}

async fn set_mode(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&s, &headers)?;
    let m: ModeBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "expected {{\"mode\": \"active\" | \"shadow\"}}: {e}"
        ))
    })?;
    let shadow = match m.mode.as_str() {
        "shadow" => true,
        "active" => false,
        other => {
            return Err(ApiError::BadRequest(format!(
                "unknown mode `{other}`: use `active` or `shadow`"
            )))
        }
    };
    timed(async {
        let version = s.registry.set_mode(&name, shadow).await?;
        Ok(Json(
            json!({"name": name, "version": version, "mode": m.mode}),
        ))
    })
    .await
}

async fn validate(body: axum::body::Bytes) -> Result<Json<serde_json::Value>, ApiError> {
    let source = text(body)?;
    Ok(Json(
        match crate::compiler::compile_source("request.cep", &source) {
            Ok(found) => json!({
                "valid": true,
                "patterns": found.iter().map(|a| a.name.clone()).collect::<Vec<_>>(),
                "diagnostics": [],
            }),
            Err(d) => json!({"valid": false, "diagnostics": d.to_json()}),
        },
    ))
}

async fn graph(State(s): State<ApiState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let e = s
        .registry
        .get(&name)
        .await
        .ok_or(ApiError::NotFound(name))?;
    Ok((
        [(header::CONTENT_TYPE, "text/vnd.graphviz; charset=utf-8")],
        crate::compiler::dot::to_dot(&e.automaton),
    )
        .into_response())
}
