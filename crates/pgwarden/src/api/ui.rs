//! The dashboard: `GET /ui` serves one page (HTML, CSS and JavaScript
//! embedded in the binary, no external resource), which polls `/ui/data`
//! twice a second for everything it shows.
//!
//! `/ui/data` is the status read model `/cluster` serves (`ctl status
//! --output json`), plus what a picture needs and the status JSON lacks:
//! whom each standby follows, and the lag history this keeper sampled (one
//! sample a second, 15 minutes, [`LagHistory`]). Each poll asks only for
//! the samples it has not drawn (`?since=MS`). Every keeper reads the same
//! store, so every keeper serves the same view; only the chart's past is
//! per keeper (it lives in memory).
//!
//! The routes go through the same request path as `/cluster`, so any rule
//! that guards reads there guards the dashboard too. The page loads its
//! script and style from this server only, under a content security policy
//! that forbids inline script: a string from the store shown on the page
//! can never run.

use std::collections::BTreeMap;

use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY};
use hyper::{Response, StatusCode};
use pgwarden_core::lag_history::{LagSample, LAG_HISTORY_SPAN, LAG_SAMPLE_EVERY};
use pgwarden_core::Assignment;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::routes::{error, json, respond};
use super::{load, ApiContext};
use crate::http::Body;
use crate::read_model::{to_json, StatusJson};
use crate::view::Snapshot;

const PAGE: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

/// Same-origin resources only; no inline script or style.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// Whether `path` is one of the dashboard's.
pub fn is_route(path: &str) -> bool {
    matches!(
        path,
        "/ui" | "/ui/" | "/ui/app.js" | "/ui/style.css" | "/ui/data"
    )
}

/// Answers a GET of one of the dashboard's paths.
pub async fn handle(ctx: &ApiContext, path: &str, query: Option<&str>) -> Response<Body> {
    let mut r = match path {
        "/ui" | "/ui/" => respond(StatusCode::OK, "text/html; charset=utf-8", PAGE.into()),
        "/ui/app.js" => respond(
            StatusCode::OK,
            "text/javascript; charset=utf-8",
            SCRIPT.into(),
        ),
        "/ui/style.css" => respond(StatusCode::OK, "text/css; charset=utf-8", STYLE.into()),
        _ => match parse_since(query) {
            Ok(since) => data(ctx, since).await,
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        },
    };
    let headers = r.headers_mut();
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// What `/ui/data` answers.
#[derive(Debug, Serialize)]
struct UiData {
    /// The keeper that answered.
    served_by: String,
    /// Its wall clock, milliseconds since the epoch: the chart's right edge.
    now_ms: u64,
    /// The cluster, as `/cluster` shows it; `None` when the store could not
    /// be read (the page keeps its last picture and says why).
    status: Option<StatusJson>,
    /// Why the store could not be read.
    store_error: Option<String>,
    /// Whom each assigned standby follows, by uid.
    upstreams: BTreeMap<String, String>,
    /// Lag samples newer than the request's `since`, oldest first.
    lag: Vec<LagSample>,
    /// How far back the chart goes.
    lag_span_ms: u64,
    /// How often the lag is sampled.
    lag_every_ms: u64,
}

async fn data(ctx: &ApiContext, since: Option<u64>) -> Response<Body> {
    let (status, store_error, upstreams) = match load(&ctx.store).await {
        Ok(snap) => (Some(to_json(&ctx.cluster, &snap)), None, upstreams(&snap)),
        Err(e) => (None, Some(e), BTreeMap::new()),
    };
    let lag = ctx
        .lag
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .since(since)
        .cloned()
        .collect();
    let body = UiData {
        served_by: ctx.uid.clone(),
        now_ms: crate::clock::now_ms(),
        status,
        store_error,
        upstreams,
        lag,
        lag_span_ms: millis(LAG_HISTORY_SPAN),
        lag_every_ms: millis(LAG_SAMPLE_EVERY),
    };
    json(StatusCode::OK, &body)
}

fn parse_since(query: Option<&str>) -> Result<Option<u64>, String> {
    match super::routes::query_param(query, "since") {
        None => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| {
            format!("invalid since {text:?}: write milliseconds since the Unix epoch")
        }),
    }
}

fn upstreams(snap: &Snapshot) -> BTreeMap<String, String> {
    snap.status
        .members
        .iter()
        .filter_map(|(uid, a)| match a {
            Assignment::Standby { follow, .. } => Some((uid.clone(), follow.clone())),
            Assignment::Primary => None,
        })
        .collect()
}

/// Each assigned standby's lag in `snap`, at `at_ms`.
pub fn sample(cluster: &str, snap: &Snapshot, at_ms: u64) -> LagSample {
    let lag_bytes = to_json(cluster, snap)
        .members
        .into_iter()
        .filter(|m| m.role == "standby")
        .filter_map(|m| Some((m.uid, m.lag_bytes?)))
        .collect();
    LagSample { at_ms, lag_bytes }
}

/// Samples the lag every [`LAG_SAMPLE_EVERY`] until `cancel`. A second the
/// store cannot be read leaves a gap in the chart.
pub async fn sample_lag(ctx: &ApiContext, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(LAG_SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(snap) = ctx.snapshots.get().await {
            let s = sample(&ctx.cluster, &snap, crate::clock::now_ms());
            ctx.lag.lock().unwrap_or_else(|e| e.into_inner()).push(s);
        }
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
