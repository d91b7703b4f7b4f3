//! The task behind [`crate::Store::watch_prefix`].
//!
//! Consumers use a notification only as a hint to re-read everything they
//! care about, so the task sends revisions, not events, and its one duty is
//! to never miss a change and never silently stop:
//!
//! - the first time the watch is established it notifies once (with the
//!   revision it starts after), because a change made before the watch was in
//!   place could otherwise go unnoticed by a consumer that read earlier;
//! - after an error, a closed stream or a dead endpoint it reconnects (another
//!   endpoint if needed, with backoff) and resumes from the last revision
//!   seen + 1, so changes made meanwhile are still delivered;
//! - if that revision was compacted away it starts a new watch from the
//!   current revision and notifies once that one is established (consumers
//!   re-read after the notification, so nothing falls in between);
//! - a stream that goes quiet is probed with a progress request; no answer
//!   within the request timeout means a dead or unreachable peer (a host that
//!   drops packets sends no error), and it reconnects.
//!
//! Notifications coalesce: when the channel is full one is already pending,
//! and dropping the newer one loses nothing since consumers re-read. The task
//! ends when `cancel` fires or the receiver is dropped.

use std::time::Duration;

use etcd_client::{WatchOptions, WatchResponse, WatchStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{Store, StoreError};

/// Capacity of the notification channel.
const CHANNEL_CAPACITY: usize = 16;
/// How often a quiet stream is probed.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(3);
/// Reconnection backoff bounds.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

pub(crate) fn spawn(
    store: Store,
    prefix: String,
    cancel: CancellationToken,
) -> mpsc::Receiver<i64> {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let watcher = Watcher {
        store,
        prefix,
        tx,
        next_revision: 0,
        notify_on_created: true,
    };
    tokio::spawn(watcher.run(cancel));
    rx
}

struct Watcher {
    store: Store,
    /// Absolute key prefix.
    prefix: String,
    tx: mpsc::Sender<i64>,
    /// Where the next watch starts; 0 = from the current revision.
    next_revision: i64,
    /// Notify when the next watch is established: set at first and after a
    /// compaction made us skip history.
    notify_on_created: bool,
}

/// Why a stream ended.
enum End {
    /// Receiver dropped: stop the task.
    Closed,
    /// Reconnect (after an error, a server cancel or a silent peer).
    Reconnect,
}

impl Watcher {
    async fn run(mut self, cancel: CancellationToken) {
        let tx = self.tx.clone();
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tx.closed() => {}
            _ = self.watch_forever() => {}
        }
        debug!(prefix = %self.prefix, "watch stopped");
    }

    async fn watch_forever(&mut self) {
        let mut backoff = MIN_BACKOFF;
        let mut broken = false;
        loop {
            match self.open().await {
                Ok((stream, created)) => {
                    if broken {
                        info!(prefix = %self.prefix, from = self.next_revision, "watch resumed");
                        broken = false;
                    }
                    backoff = MIN_BACKOFF;
                    match self.on_created(&created) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(_closed) => return,
                    }
                    if created.canceled() {
                        // Cancelled for another reason than compaction.
                        warn!(
                            prefix = %self.prefix,
                            reason = created.cancel_reason(),
                            "etcd refused the watch; retrying"
                        );
                        broken = true;
                    } else if let End::Closed = self.follow(stream).await {
                        return;
                    } else {
                        broken = true;
                    }
                }
                Err(e) => {
                    if !broken {
                        warn!(prefix = %self.prefix, error = %e, "cannot watch etcd; retrying");
                        broken = true;
                    } else {
                        debug!(prefix = %self.prefix, error = %e, "cannot watch etcd; retrying");
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Opens a watch stream and waits for etcd's answer to the create request.
    async fn open(&self) -> Result<(WatchStream, WatchResponse), StoreError> {
        let mut options = WatchOptions::new().with_prefix();
        if self.next_revision > 0 {
            options = options.with_start_revision(self.next_revision);
        }
        let prefix = &self.prefix;
        self.store
            .pool()
            .run("watch", |mut c| {
                let (prefix, options) = (prefix.clone(), options.clone());
                async move {
                    let mut stream = c.watch(prefix, Some(options)).await?;
                    match stream.message().await? {
                        Some(created) => Ok((stream, created)),
                        None => Err(etcd_client::Error::WatchError(
                            "stream closed before the watch was created".to_owned(),
                        )),
                    }
                }
            })
            .await
    }

    /// Handles the answer to the create request. `Ok(true)`: follow the
    /// stream; `Ok(false)`: reopen at once (start revision compacted).
    fn on_created(&mut self, created: &WatchResponse) -> Result<bool, End> {
        if created.compact_revision() > 0 {
            self.skip_compacted(created.compact_revision());
            return Ok(false);
        }
        if self.notify_on_created && !created.canceled() {
            let revision = created.header().map(|h| h.revision()).unwrap_or(0);
            self.notify_on_created = false;
            if self.next_revision == 0 {
                self.next_revision = revision + 1;
            }
            self.notify(revision)?;
        }
        Ok(true)
    }

    /// The history from `next_revision` on is gone: watch from the current
    /// revision instead, and notify once that watch is in place.
    fn skip_compacted(&mut self, compacted: i64) {
        warn!(
            prefix = %self.prefix,
            wanted = self.next_revision,
            compacted,
            "etcd compacted the revisions this watch needed; resuming from now"
        );
        self.next_revision = 0;
        self.notify_on_created = true;
    }

    /// Reads the stream until it ends. After `PROGRESS_INTERVAL` without a
    /// message it asks etcd for a progress report; no message within the
    /// request timeout after that means the peer is gone.
    async fn follow(&mut self, mut stream: WatchStream) -> End {
        let request_timeout = self.store.options().request_timeout;
        let mut last_heard = Instant::now();
        let mut probe_deadline: Option<Instant> = None;
        loop {
            let wake = probe_deadline.unwrap_or(last_heard + PROGRESS_INTERVAL);
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {
                    if probe_deadline.is_some() {
                        warn!(prefix = %self.prefix, "etcd watch went silent; reconnecting");
                        return End::Reconnect;
                    }
                    if let Err(e) = stream.request_progress().await {
                        warn!(prefix = %self.prefix, error = %e, "etcd watch broke; reconnecting");
                        return End::Reconnect;
                    }
                    probe_deadline = Some(Instant::now() + request_timeout);
                }
                msg = stream.message() => match msg {
                    Ok(Some(resp)) => {
                        last_heard = Instant::now();
                        probe_deadline = None;
                        if let Err(end) = self.on_response(&resp) {
                            return end;
                        }
                    }
                    Ok(None) => {
                        warn!(prefix = %self.prefix, "etcd closed the watch stream; reconnecting");
                        return End::Reconnect;
                    }
                    Err(e) => {
                        warn!(prefix = %self.prefix, error = %e, "etcd watch broke; reconnecting");
                        return End::Reconnect;
                    }
                },
            }
        }
    }

    /// Handles one message on an established stream; `Err` ends the stream.
    fn on_response(&mut self, resp: &WatchResponse) -> Result<(), End> {
        let header_revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        if resp.canceled() {
            if resp.compact_revision() > 0 {
                // etcd reports a compacted start revision (or a watcher that
                // fell too far behind) right after the "created" answer.
                self.skip_compacted(resp.compact_revision());
            } else {
                warn!(
                    prefix = %self.prefix,
                    reason = resp.cancel_reason(),
                    "etcd cancelled the watch; reconnecting"
                );
            }
            return Err(End::Reconnect);
        }
        let events = resp.events();
        if events.is_empty() {
            // A progress report. etcd 3.4 may send one ahead of events it
            // still owes a catching-up watcher, so its revision is not taken
            // as "seen": it only proves the stream is alive.
            return Ok(());
        }
        let last_event = events
            .iter()
            .filter_map(|e| e.kv().map(|kv| kv.mod_revision()))
            .max()
            .unwrap_or(0);
        // The header revision may run ahead of the events in this batch
        // (etcd splits large catch-ups), so resume after the last event.
        self.next_revision = self.next_revision.max(last_event + 1);
        self.notify(last_event.max(header_revision))
    }

    fn notify(&self, revision: i64) -> Result<(), End> {
        match self.tx.try_send(revision) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(End::Closed),
        }
    }
}
