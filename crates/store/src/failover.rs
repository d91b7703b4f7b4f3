//! Endpoint failover: one etcd client per endpoint, tried in turn.
//!
//! etcd-client can balance over several endpoints itself, but when one of them
//! is down a good share of requests still land on it and fail. An HA manager
//! must keep working with a member down, so instead each endpoint gets its own
//! lazily connected client, and every operation starts at the endpoint that
//! last worked and moves on to the next one on a transport failure or timeout,
//! trying each endpoint at most once per operation.
//!
//! Retrying after a timeout means a write may be applied twice (the first
//! attempt may have reached etcd before its answer was lost). That is safe
//! here because every write this crate issues is either an idempotent put or
//! a compare-and-swap transaction: a replayed compare-and-swap fails its
//! comparison and reports a conflict, which callers already handle by
//! re-reading.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::sync::OnceCell;
use tracing::{debug, warn};

use crate::error::{is_transport, StoreError};
use crate::StoreOptions;

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
    slots: Vec<Slot>,
    preferred: AtomicUsize,
    options: StoreOptions,
    /// The endpoints as given, comma-joined, for error messages.
    joined: String,
}

struct Slot {
    /// Normalised to `http://host:port`.
    url: String,
    client: OnceCell<Client>,
}

/// Why the last endpoint tried failed.
enum Failure {
    Transport(etcd_client::Error),
    Timeout,
}

impl Pool {
    /// Validates the endpoints; connects nothing yet.
    pub(crate) fn new(endpoints: &[String], options: StoreOptions) -> Result<Pool, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::InvalidEndpoint {
                value: String::new(),
            });
        }
        let slots = endpoints
            .iter()
            .map(|e| {
                Ok(Slot {
                    url: normalize_endpoint(e)?,
                    client: OnceCell::new(),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Pool {
            slots,
            preferred: AtomicUsize::new(0),
            options,
            joined: endpoints.join(","),
        })
    }

    pub(crate) fn options(&self) -> &StoreOptions {
        &self.options
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
        let n = self.slots.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut last = Failure::Timeout;
        for step in 0..n {
            let idx = (start + step) % n;
            let slot = &self.slots[idx];
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
                    debug!(endpoint = %slot.url, op, error = %e, "etcd endpoint failed");
                    last = Failure::Transport(e);
                }
                Ok(Err(e)) => return Err(StoreError::Etcd { op, source: e }),
                Err(_elapsed) => {
                    debug!(endpoint = %slot.url, op, "etcd endpoint did not answer in time");
                    if !matches!(last, Failure::Transport(_)) {
                        last = Failure::Timeout;
                    }
                }
            }
        }
        Err(match last {
            Failure::Transport(source) => StoreError::Unreachable {
                endpoints: self.joined.clone(),
                source,
            },
            Failure::Timeout => StoreError::Timeout {
                endpoints: self.joined.clone(),
                timeout: self.options.request_timeout,
            },
        })
    }

    /// The slot's client, created on first use. Creating one does not touch
    /// the network: the channel connects on the first request, and reconnects
    /// by itself after the connection breaks.
    async fn client(&self, slot: &Slot) -> Result<Client, etcd_client::Error> {
        let client = slot
            .client
            .get_or_try_init(|| async {
                let options = ConnectOptions::new()
                    .with_connect_timeout(self.options.connect_timeout)
                    // A backstop only: `run` times each attempt itself, so
                    // that an attempt which timed out is reported as such.
                    .with_timeout(self.options.request_timeout + TIMEOUT_BACKSTOP_MARGIN)
                    .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT)
                    .with_keep_alive_while_idle(false)
                    .with_tcp_keepalive(TCP_KEEP_ALIVE)
                    // A member cut off from its quorum refuses at once instead
                    // of hanging, and cancels its watches, so we move on.
                    .with_require_leader(true);
                Client::connect([slot.url.as_str()], Some(options)).await
            })
            .await?;
        Ok(client.clone())
    }
}

/// Accepts `http://host:port` and `host:port` (a trailing `/` is tolerated)
/// and returns `http://host:port`.
fn normalize_endpoint(value: &str) -> Result<String, StoreError> {
    let invalid = || StoreError::InvalidEndpoint {
        value: value.to_owned(),
    };
    let trimmed = value.trim();
    let rest = trimmed.strip_prefix("http://").unwrap_or(trimmed);
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
    Ok(format!("http://{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalised() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:2379").unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            normalize_endpoint("http://etcd-1:2379/").unwrap(),
            "http://etcd-1:2379"
        );
        assert_eq!(
            normalize_endpoint("[::1]:2379").unwrap(),
            "http://[::1]:2379"
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
            "https://etcd:2379",
            "http://etcd:2379/v3",
            "::1:2379",
        ] {
            match normalize_endpoint(bad) {
                Err(StoreError::InvalidEndpoint { value }) => assert_eq!(value, bad),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn empty_endpoint_list_is_refused() {
        assert!(matches!(
            Pool::new(&[], StoreOptions::default()),
            Err(StoreError::InvalidEndpoint { .. })
        ));
    }
}
