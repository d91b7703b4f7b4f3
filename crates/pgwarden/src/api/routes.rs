//! Maps requests to answers: the health checks, `/cluster`, `/metrics`, the
//! dashboard (`/ui`, see `ui`), and
//! the refusal of anything that would change state.
//!
//! GET answers with a body; HEAD and OPTIONS with the same status and no
//! body, which is all `option httpchk` reads. Paths are matched exactly
//! (Patroni matches substrings; exact matching keeps `/replicas` from passing
//! as `/replica`).

use base64::Engine;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use pgwarden_core::ObservedRole;
use serde::Serialize;
use tokio::time::Instant;

use super::health::{self, Check, Inputs, PrimaryPosition};
use super::{alerts, load, metrics, ui, ApiContext};
use crate::exposition::CONTENT_TYPE as PROMETHEUS;
use crate::http::Body;

const JSON: &str = "application/json";
const SAFE_METHODS: &str = "GET, HEAD, OPTIONS";

/// Answers one request.
pub async fn handle(ctx: &ApiContext, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let known = matches!(path.as_str(), "/cluster" | "/metrics" | "/alerts")
        || ui::is_route(&path)
        || Check::from_path(&path).is_some();
    let safe = matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let response = if !safe {
        refuse(ctx, req.headers(), known)
    } else if let Some(refused) = read_gate(ctx, req.headers(), &path) {
        refused
    } else {
        match path.as_str() {
            "/cluster" => cluster(ctx).await,
            "/metrics" => metrics_text(ctx).await,
            "/alerts" => alerts_json(ctx).await,
            p if ui::is_route(p) => ui::handle(ctx, p, req.uri().query()).await,
            p => match Check::from_path(p) {
                Some(check) => check_health(ctx, check, req.uri().query()).await,
                None => error(StatusCode::NOT_FOUND, format!("no endpoint {p}")),
            },
        }
    };
    tracing::debug!(%method, path, status = response.status().as_u16(), "HTTP API request");
    if method == Method::GET || !safe {
        response
    } else {
        without_body(response)
    }
}

async fn check_health(ctx: &ApiContext, check: Check, query: Option<&str>) -> Response<Body> {
    let max_lag = match query_param(query, "lag") {
        None => None,
        Some(text) => match health::parse_size(&text) {
            Some(n) => Some(n),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid lag {text:?}: write bytes, or a size such as 16MB or 1kB"),
                )
            }
        },
    };
    let published = ctx.published.borrow().clone();
    let local = published.as_ref().map(|p| &p.state);
    let standby = local.is_some_and(|l| l.report.role == ObservedRole::Standby);
    let primary = if check.uses_lag() && standby {
        match ctx.snapshots.get().await {
            Some(snap) => PrimaryPosition::Store(snap.primary_lsn()),
            None => PrimaryPosition::Unreachable,
        }
    } else {
        PrimaryPosition::NotLoaded
    };
    let inputs = Inputs {
        local,
        published_at: published.as_ref().map(|p| p.at),
        started_at: ctx.started_at,
        now: Instant::now(),
        primary,
        max_lag,
    };
    let verdict = health::evaluate(check, &inputs);
    let status = if verdict.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &verdict)
}

async fn cluster(ctx: &ApiContext) -> Response<Body> {
    match load(&ctx.store).await {
        Ok(snap) => json(
            StatusCode::OK,
            &crate::read_model::to_json(&ctx.cluster, &snap),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn metrics_text(ctx: &ApiContext) -> Response<Body> {
    let published = ctx.published.borrow().clone();
    let snap = ctx.snapshots.get().await;
    let inputs = Inputs {
        local: published.as_ref().map(|p| &p.state),
        published_at: published.as_ref().map(|p| p.at),
        started_at: ctx.started_at,
        now: Instant::now(),
        primary: match &snap {
            Some(s) => PrimaryPosition::Store(s.primary_lsn()),
            None => PrimaryPosition::Unreachable,
        },
        max_lag: None,
    };
    if let Some(s) = &snap {
        ctx.decisions.observe(&s.status);
    }
    let decisions = ctx.decisions.counts();
    let mut text = metrics::render(&ctx.cluster, &ctx.uid, &inputs, &decisions, snap.as_deref());
    let alert_state = alerts::load(&ctx.store).await.ok();
    let disk = published.as_ref().and_then(|p| {
        let r = &p.state.report;
        r.data_disk_free_bytes.zip(r.data_disk_size_bytes)
    });
    text.push_str(&alerts::metrics(
        &ctx.cluster,
        &ctx.uid,
        disk,
        alert_state.as_ref(),
    ));
    respond(StatusCode::OK, PROMETHEUS, text.into_bytes())
}

async fn alerts_json(ctx: &ApiContext) -> Response<Body> {
    match alerts::load(&ctx.store).await {
        Ok(state) => json(StatusCode::OK, &crate::alerts::view(&ctx.cluster, &state)),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// No endpoint changes state yet: without valid credentials 401 (so that a
/// client learns auth is needed before anything exists to abuse), with
/// them 405.
fn refuse(ctx: &ApiContext, headers: &HeaderMap, known: bool) -> Response<Body> {
    let Some(password) = &ctx.password else {
        return unauthorised(
            "state-changing requests are disabled: start the keeper with --api-password-file",
        );
    };
    if !authorised(headers, password) {
        return unauthorised("valid credentials required (HTTP basic auth)");
    }
    if !known {
        return error(StatusCode::NOT_FOUND, "no such endpoint".into());
    }
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("this endpoint only answers {SAFE_METHODS}"),
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(SAFE_METHODS));
    r
}

fn unauthorised(message: &str) -> Response<Body> {
    let mut r = error(StatusCode::UNAUTHORIZED, message.into());
    r.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"pgwarden\""),
    );
    r
}

/// `--api-auth-reads`: every path but the health checks (which load
/// balancers probe without credentials) needs the API password, so a route
/// added later is covered without naming it here. `None` lets the request
/// through.
fn read_gate(ctx: &ApiContext, headers: &HeaderMap, path: &str) -> Option<Response<Body>> {
    if !read_needs_password(ctx.auth_reads, path) {
        return None;
    }
    match &ctx.password {
        Some(password) if authorised(headers, password) => None,
        Some(_) => Some(unauthorised(
            "this endpoint needs the API password (basic auth)",
        )),
        None => Some(unauthorised(
            "--api-auth-reads is on but no --api-password-file was given",
        )),
    }
}

/// Whether a read of `path` must present the API password.
fn read_needs_password(auth_reads: bool, path: &str) -> bool {
    auth_reads && Check::from_path(path).is_none()
}

/// Basic auth whose password matches (the user name is not checked: the
/// keeper has one credential, the password file's).
fn authorised(headers: &HeaderMap, password: &str) -> bool {
    let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Some(colon) = decoded.iter().position(|b| *b == b':') else {
        return false;
    };
    constant_time_eq(&decoded[colon + 1..], password.as_bytes())
}

/// Compares without returning early, so response time does not tell how
/// much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// The value of `name` in a query string (first occurrence, `+` and `%XX`
/// not decoded: sizes need neither).
pub(super) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

pub(super) fn json(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    match serde_json::to_vec(body) {
        Ok(mut bytes) => {
            bytes.push(b'\n');
            respond(status, JSON, bytes)
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encode the answer: {e}"),
        ),
    }
}

pub(super) fn error(status: StatusCode, message: String) -> Response<Body> {
    let mut body = serde_json::json!({ "error": message }).to_string();
    body.push('\n');
    respond(status, JSON, body.into_bytes())
}

pub(super) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn without_body(response: Response<Body>) -> Response<Body> {
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(credentials: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
        if let Ok(v) = HeaderValue::from_str(&format!("Basic {encoded}")) {
            h.insert(AUTHORIZATION, v);
        }
        h
    }

    #[test]
    fn basic_auth_checks_the_password() {
        assert!(authorised(&basic("admin:s3cret"), "s3cret"));
        assert!(authorised(&basic("any:pa:ss"), "pa:ss"));
        assert!(!authorised(&basic("admin:s3cre"), "s3cret"));
        assert!(!authorised(&basic("admin:s3crett"), "s3cret"));
        assert!(!authorised(&basic("s3cret"), "s3cret"));
        assert!(!authorised(&HeaderMap::new(), "s3cret"));
        let mut bearer = HeaderMap::new();
        bearer.insert(AUTHORIZATION, HeaderValue::from_static("Bearer s3cret"));
        assert!(!authorised(&bearer, "s3cret"));
    }

    #[test]
    fn auth_reads_covers_every_path_but_the_health_checks() {
        for open in ["/primary", "/replica", "/health", "/liveness", "/readiness"] {
            assert!(!read_needs_password(true, open), "{open}");
        }
        // Routes added later (the dashboard, alerts) are covered unnamed.
        for closed in ["/cluster", "/metrics", "/ui", "/alerts", "/anything"] {
            assert!(read_needs_password(true, closed), "{closed}");
            assert!(!read_needs_password(false, closed), "{closed}");
        }
    }

    #[test]
    fn query_parameters() {
        assert_eq!(
            query_param(Some("lag=16MB"), "lag").as_deref(),
            Some("16MB")
        );
        assert_eq!(
            query_param(Some("x=1&lag=0&lag=5"), "lag").as_deref(),
            Some("0")
        );
        assert_eq!(query_param(Some("lag"), "lag").as_deref(), Some(""));
        assert_eq!(query_param(Some("laggy=1"), "lag"), None);
        assert_eq!(query_param(None, "lag"), None);
    }
}
