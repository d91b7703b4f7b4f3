//! Endpoint failover: one etcd client per endpoint, tried in turn.
//!
//! etcd-client can balance over several endpoints itself, but when one of them
//! is down a good share of requests still land on it and fail. An HA manager
//! must keep working with a member down, so instead each endpoint gets its own
//! lazily connected client, and every operation starts at the endpoint that
//! last worked and moves on to the next one on a transport failure or timeout,
//! trying each endpoint at most once per operation. Lease keep-alives, which
//! must not wait for a timeout on a dead member, go to every endpoint at once
//! ([`Pool::hedge`]). Members are asked with etcd's require-leader metadata,
//! so one without a leader (cut off from its quorum, or during an election)
//! refuses at once and the next one is tried. The endpoint list follows etcd's
//! member list ([`Pool::refresh_members`]), so members added or removed are
//! used without a restart.
//!
//! Retrying after a timeout means a write may be applied twice (the first
//! attempt may have reached etcd before its answer was lost). That is safe
//! here because every write this crate issues is either an idempotent put or
//! a compare-and-swap transaction: a replayed compare-and-swap fails its
//! comparison and reports a conflict, which callers already handle by
//! re-reading.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, TlsOptions};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::OnceCell;
use tracing::{debug, info, warn};

use crate::error::{is_transport, StoreError};
use crate::security::{chain_text, classify};
use crate::StoreOptions;
use crate::TransportCause;

/// HTTP/2 ping interval on connections with open streams (watches, lease
/// keep-alives), so a peer that silently vanished is detected. etcd's server
/// answers pings more frequent than every 5 s with "too many pings" and closes
/// the connection, hence 10 s.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long to wait for a ping answer before declaring the connection dead.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP keep-alive, for the same reason at the socket level.
const TCP_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// How much later than our own per-attempt timeout the client library's
/// per-request timeout fires.
const TIMEOUT_BACKSTOP_MARGIN: Duration = Duration::from_millis(250);

/// The per-endpoint clients and the index of the endpoint that last worked.
pub(crate) struct Pool {
    /// The endpoints in use: the ones given, then the client URLs of members
    /// discovered in etcd's member list. Replaced whole when the membership
    /// changes, so an operation works on a consistent snapshot.
    slots: RwLock<Arc<Vec<Arc<Slot>>>>,
    /// How many of `slots` were given by the user; those are always kept.
    given: usize,
    preferred: AtomicUsize,
    options: StoreOptions,
    /// The TLS settings read from `options.tls`, for https endpoints.
    tls: Option<TlsOptions>,
    /// The endpoints as given, comma-joined, for error messages.
    joined: String,
}

struct Slot {
    /// Normalised to `http://host:port` or `https://host:port`.
    url: String,
    /// Sends etcd's require-leader metadata: a member without a leader (one
    /// cut off from its quorum, or during an election) refuses at once
    /// instead of hanging, and cancels its watches, so we move on.
    client: OnceCell<Client>,
    /// Without require-leader, for asking a member about its raft state,
    /// which it answers even when it has no leader.
    probe: OnceCell<Client>,
}

impl Slot {
    fn new(url: String) -> Arc<Slot> {
        Arc::new(Slot {
            url,
            client: OnceCell::new(),
            probe: OnceCell::new(),
        })
    }
}

/// Why the last endpoint tried failed.
enum Failure {
    Transport {
        endpoint: String,
        error: etcd_client::Error,
    },
    Timeout,
}

/// One member's answer to a status probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemberState {
    /// The answering member's id.
    pub(crate) member: u64,
    /// The leader it follows; 0 = none.
    pub(crate) leader: u64,
    /// Its current raft term.
    pub(crate) term: u64,
}

impl Pool {
    /// Validates the endpoints; connects nothing yet.
    pub(crate) fn new(endpoints: &[String], options: StoreOptions) -> Result<Pool, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::InvalidEndpoint {
                value: String::new(),
            });
        }
        let tls = options.tls.as_ref().map(|t| t.load()).transpose()?;
        let mut slots: Vec<Arc<Slot>> = Vec::new();
        for e in endpoints {
            let url = normalize_endpoint(e, tls.is_some())?;
            if !slots.iter().any(|s| s.url == url) {
                slots.push(Slot::new(url));
            }
        }
        Ok(Pool {
            given: slots.len(),
            slots: RwLock::new(Arc::new(slots)),
            preferred: AtomicUsize::new(0),
            options,
            tls,
            joined: endpoints.join(","),
        })
    }

    pub(crate) fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// The endpoints in use now.
    fn snapshot(&self) -> Arc<Vec<Arc<Slot>>> {
        match self.slots.read() {
            Ok(slots) => slots.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The URLs of the endpoints in use now: the ones given, then members
    /// discovered since.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.snapshot().iter().map(|s| s.url.clone()).collect()
    }

    /// Runs `attempt` against one endpoint after another, starting at the one
    /// that last worked, until it succeeds, fails with an answer from etcd
    /// (returned at once as [`StoreError::Etcd`]: another endpoint would
    /// answer the same), or every endpoint has failed at the transport level
    /// or timed out ([`StoreError::Unreachable`] / [`StoreError::Timeout`]).
    pub(crate) async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        mut attempt: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let slots = self.snapshot();
        let n = slots.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut last = Failure::Timeout;
        for step in 0..n {
            let idx = (start + step) % n;
            let slot = &slots[idx];
            let result = match self.client(slot).await {
                Ok(client) => {
                    tokio::time::timeout(self.options.request_timeout, attempt(client)).await
                }
                Err(e) => Ok(Err(e)),
            };
            match result {
                Ok(Ok(value)) => {
                    if step > 0 {
                        warn!(endpoint = %slot.url, op, "switched to another etcd endpoint");
                        self.preferred.store(idx, Ordering::Relaxed);
                    }
                    return Ok(value);
                }
                Ok(Err(e)) if is_transport(&e) => {
                    debug!(endpoint = %slot.url, op, error = %chain_text(&e), "etcd endpoint failed");
                    last = Failure::Transport {
                        endpoint: slot.url.clone(),
                        error: e,
                    };
                }
                Ok(Err(e)) => return Err(self.refused(op, &slot.url, e)),
                Err(_elapsed) => {
                    debug!(endpoint = %slot.url, op, "etcd endpoint did not answer in time");
                    if !matches!(last, Failure::Transport { .. }) {
                        last = Failure::Timeout;
                    }
                }
            }
        }
        Err(self.unreachable(op, last))
    }

    /// Runs `attempt` against the endpoint that last worked and, `delay`
    /// later (at once for a zero delay), against every other endpoint too,
    /// and returns the first success: a dead, partitioned or leaderless
    /// member costs at most `delay` as long as another one answers. Only for
    /// requests that are safe to apply more than once (reads, lease
    /// keep-alives). An answer from etcd that is an error is returned at
    /// once, as in [`Pool::run`].
    pub(crate) async fn hedge<T, F, Fut>(
        &self,
        op: &'static str,
        delay: Duration,
        attempt: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let slots = self.snapshot();
        let first = self.preferred.load(Ordering::Relaxed) % slots.len();
        let attempt = &attempt;
        let mut pending: FuturesUnordered<_> = slots
            .iter()
            .enumerate()
            .map(|(idx, slot)| async move {
                if idx != first && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let result = match self.client(slot).await {
                    Ok(client) => {
                        tokio::time::timeout(self.options.request_timeout, attempt(client)).await
                    }
                    Err(e) => Ok(Err(e)),
                };
                (idx, result)
            })
            .collect();
        let mut last = Failure::Timeout;
        while let Some((idx, result)) = pending.next().await {
            match result {
                Ok(Ok(value)) => {
                    if idx != first {
                        debug!(endpoint = %slots[idx].url, op, "answered by another etcd endpoint");
                        self.preferred.store(idx, Ordering::Relaxed);
                    }
                    return Ok(value);
                }
                Ok(Err(e)) if is_transport(&e) => {
                    debug!(endpoint = %slots[idx].url, op, error = %chain_text(&e), "etcd endpoint failed");
                    last = Failure::Transport {
                        endpoint: slots[idx].url.clone(),
                        error: e,
                    };
                }
                Ok(Err(e)) => return Err(self.refused(op, &slots[idx].url, e)),
                Err(_elapsed) => {
                    debug!(endpoint = %slots[idx].url, op, "etcd endpoint did not answer in time");
                }
            }
        }
        Err(self.unreachable(op, last))
    }

    /// The TLS or auth failure `error` stands for, if it is one.
    fn security(
        &self,
        op: &'static str,
        endpoint: &str,
        error: &etcd_client::Error,
    ) -> Option<StoreError> {
        let problem = classify(
            error,
            op,
            self.options.user.as_ref(),
            self.options.tls.as_ref(),
        )?;
        Some(StoreError::Security {
            endpoint: endpoint.to_owned(),
            problem,
        })
    }

    /// etcd answered `op` with an error.
    fn refused(&self, op: &'static str, endpoint: &str, error: etcd_client::Error) -> StoreError {
        match self.security(op, endpoint, &error) {
            Some(e) => {
                debug!(endpoint, op, error = %chain_text(&error), "etcd refused");
                e
            }
            None => StoreError::Etcd { op, source: error },
        }
    }

    fn unreachable(&self, op: &'static str, last: Failure) -> StoreError {
        match last {
            Failure::Transport { endpoint, error } => match self.security(op, &endpoint, &error) {
                Some(e) => e,
                None => {
                    let detail = chain_text(&error);
                    StoreError::Unreachable {
                        endpoints: self.joined.clone(),
                        cause: TransportCause::of(&detail),
                        detail,
                    }
                }
            },
            Failure::Timeout => StoreError::Timeout {
                endpoints: self.joined.clone(),
                timeout: self.options.request_timeout,
            },
        }
    }

    /// Asks every endpoint, at once and within `timeout`, for its member's
    /// raft state and for the number of voting members it knows. Members
    /// that do not answer are left out; answers are deduplicated by member.
    pub(crate) async fn member_states(&self, timeout: Duration) -> (Vec<MemberState>, usize) {
        let slots = self.snapshot();
        let probes: FuturesUnordered<_> = slots
            .iter()
            .map(|slot| async move {
                let probe = async {
                    let mut client = self.probe(slot).await?;
                    let mut members = client.clone();
                    let (status, list) = tokio::join!(client.status(), members.member_list());
                    let status = status?;
                    let voters =
                        list.map(|l| l.members().iter().filter(|m| !m.is_learner()).count());
                    Ok::<_, etcd_client::Error>((status, voters.unwrap_or(0)))
                };
                tokio::time::timeout(timeout, probe).await
            })
            .collect();
        let answers: Vec<_> = probes.collect().await;
        let mut states: Vec<MemberState> = Vec::new();
        let mut voters = 0;
        for answer in answers.into_iter().flatten().flatten() {
            let (status, count) = answer;
            voters = voters.max(count);
            let Some(header) = status.header() else {
                continue;
            };
            if status.is_learner() || states.iter().any(|s| s.member == header.member_id()) {
                continue;
            }
            states.push(MemberState {
                member: header.member_id(),
                leader: status.leader(),
                term: status.raft_term(),
            });
        }
        (states, voters)
    }

    /// The client URLs of the member that is raft leader now, as the first
    /// member to answer within `timeout` names it; empty when none answered
    /// or none has a leader.
    pub(crate) async fn leader_urls(&self, timeout: Duration) -> Vec<String> {
        let slots = self.snapshot();
        let probes: FuturesUnordered<_> = slots
            .iter()
            .map(|slot| async move {
                let ask = async {
                    let mut client = self.probe(slot).await?;
                    let status = client.status().await?;
                    let list = client.member_list().await?;
                    let leader = list
                        .members()
                        .iter()
                        .find(|m| m.id() == status.leader())
                        .map(|m| m.client_urls().to_vec());
                    Ok::<_, etcd_client::Error>(leader)
                };
                tokio::time::timeout(timeout, ask).await
            })
            .collect();
        let answers: Vec<_> = probes.collect().await;
        answers
            .into_iter()
            .flatten()
            .flatten()
            .flatten()
            .next()
            .unwrap_or_default()
    }

    /// How many endpoints in use do not answer a status request within
    /// `timeout` (a member down or cut off, while the others keep quorum).
    pub(crate) async fn unreachable_count(&self, timeout: Duration) -> usize {
        let slots = self.snapshot();
        let probes: FuturesUnordered<_> = slots
            .iter()
            .map(|slot| async move {
                let ask = async {
                    let mut client = self.probe(slot).await?;
                    client.status().await?;
                    Ok::<_, etcd_client::Error>(())
                };
                matches!(tokio::time::timeout(timeout, ask).await, Ok(Ok(())))
            })
            .collect();
        let answers: Vec<bool> = probes.collect().await;
        answers.into_iter().filter(|ok| !ok).count()
    }

    /// Re-reads etcd's member list and uses every member's client URL from
    /// now on, besides the endpoints given: members added to the cluster are
    /// used, members removed from it are dropped (the given ones stay).
    pub(crate) async fn refresh_members(&self) -> Result<(), StoreError> {
        let list = self
            .run("member list", |mut c| async move { c.member_list().await })
            .await?;
        let current = self.snapshot();
        let mut next: Vec<Arc<Slot>> = current[..self.given].to_vec();
        for member in list.members() {
            for url in member.client_urls() {
                // Only what this client can speak; a member advertising
                // something else is reached through the given endpoints.
                let Ok(url) = normalize_endpoint(url, self.tls.is_some()) else {
                    continue;
                };
                if next.iter().any(|s| s.url == url) {
                    continue;
                }
                let slot = current
                    .iter()
                    .find(|s| s.url == url)
                    .cloned()
                    .unwrap_or_else(|| Slot::new(url));
                next.push(slot);
            }
        }
        let changed = next.len() != current.len()
            || next.iter().zip(current.iter()).any(|(a, b)| a.url != b.url);
        if changed {
            let urls: Vec<&str> = next.iter().map(|s| s.url.as_str()).collect();
            info!(endpoints = ?urls, "etcd membership changed: using these endpoints");
            match self.slots.write() {
                Ok(mut slots) => *slots = Arc::new(next),
                Err(poisoned) => *poisoned.into_inner() = Arc::new(next),
            }
        }
        Ok(())
    }

    /// The slot's client, created on first use. Creating one does not touch
    /// the network: the channel connects on the first request, and reconnects
    /// by itself after the connection breaks.
    async fn client(&self, slot: &Slot) -> Result<Client, etcd_client::Error> {
        let client = slot
            .client
            .get_or_try_init(|| self.connect(&slot.url, true))
            .await?;
        Ok(client.clone())
    }

    /// The slot's probe client (no require-leader), created on first use.
    async fn probe(&self, slot: &Slot) -> Result<Client, etcd_client::Error> {
        let client = slot
            .probe
            .get_or_try_init(|| self.connect(&slot.url, false))
            .await?;
        Ok(client.clone())
    }

    async fn connect(&self, url: &str, require_leader: bool) -> Result<Client, etcd_client::Error> {
        let options = ConnectOptions::new()
            .with_connect_timeout(self.options.connect_timeout)
            // A backstop only: `run` times each attempt itself, so
            // that an attempt which timed out is reported as such.
            .with_timeout(self.options.request_timeout + TIMEOUT_BACKSTOP_MARGIN)
            .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT)
            .with_keep_alive_while_idle(false)
            .with_tcp_keepalive(TCP_KEEP_ALIVE)
            .with_require_leader(require_leader);
        let options = match &self.tls {
            Some(tls) if url.starts_with("https://") => options.with_tls(tls.clone()),
            _ => options,
        };
        let options = match &self.options.user {
            // etcd's auth tokens expire (simple tokens after 5 minutes idle):
            // re-authenticate instead of failing.
            Some(c) => options
                .with_user(c.user.clone(), c.password.clone())
                .with_auto_token_refresh(true),
            None => options,
        };
        Client::connect([url], Some(options)).await
    }
}

/// Accepts `http://host:port`, `https://host:port` and `host:port` (a
/// trailing `/` is tolerated) and returns `http://host:port` or, with TLS,
/// `https://host:port`. With TLS an `http://` endpoint is refused (it would
/// send credentials in clear), and without it an `https://` one (there is no
/// CA to check etcd's certificate against).
fn normalize_endpoint(value: &str, tls: bool) -> Result<String, StoreError> {
    let invalid = || StoreError::InvalidEndpoint {
        value: value.to_owned(),
    };
    let trimmed = value.trim();
    let (scheme, rest) = if let Some(rest) = trimmed.strip_prefix("https://") {
        if !tls {
            return Err(StoreError::HttpsWithoutCa {
                value: value.to_owned(),
            });
        }
        ("https", rest)
    } else if let Some(rest) = trimmed.strip_prefix("http://") {
        if tls {
            return Err(StoreError::HttpWithTls {
                value: value.to_owned(),
            });
        }
        ("http", rest)
    } else {
        (if tls { "https" } else { "http" }, trimmed)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains("://") || rest.contains('/') || rest.contains('@') {
        return Err(invalid());
    }
    let (host, port) = rest.rsplit_once(':').ok_or_else(invalid)?;
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        // IPv6 literal: [::1]
        inner.strip_suffix(']').is_some_and(|h| !h.is_empty())
    } else {
        !host.is_empty() && !host.contains(':')
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    if !host_ok || !port_ok {
        return Err(invalid());
    }
    Ok(format!("{scheme}://{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalised() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:2379", false).unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            normalize_endpoint("http://etcd-1:2379/", false).unwrap(),
            "http://etcd-1:2379"
        );
        assert_eq!(
            normalize_endpoint("[::1]:2379", false).unwrap(),
            "http://[::1]:2379"
        );
        assert_eq!(
            normalize_endpoint("etcd-1:2379", true).unwrap(),
            "https://etcd-1:2379"
        );
        assert_eq!(
            normalize_endpoint("https://etcd-1:2379/", true).unwrap(),
            "https://etcd-1:2379"
        );
    }

    #[test]
    fn malformed_endpoints_are_refused() {
        for bad in [
            "",
            "etcd",
            "etcd:",
            ":2379",
            "etcd:99999",
            "etcd:0",
            "http://etcd:2379/v3",
            "https://etcd:2379/v3",
            "::1:2379",
        ] {
            match normalize_endpoint(bad, bad.starts_with("https")) {
                Err(StoreError::InvalidEndpoint { value }) => assert_eq!(value, bad),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn the_scheme_must_match_the_tls_setting() {
        assert!(matches!(
            normalize_endpoint("https://etcd:2379", false),
            Err(StoreError::HttpsWithoutCa { .. })
        ));
        assert!(matches!(
            normalize_endpoint("http://etcd:2379", true),
            Err(StoreError::HttpWithTls { .. })
        ));
    }

    #[test]
    fn empty_endpoint_list_is_refused() {
        assert!(matches!(
            Pool::new(&[], StoreOptions::default()),
            Err(StoreError::InvalidEndpoint { .. })
        ));
    }
}
