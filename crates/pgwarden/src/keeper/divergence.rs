//! Recognising a standby that can never follow its upstream.
//!
//! When the old primary streamed WAL to a standby before it was fenced, and
//! another standby was promoted, the first one may have replayed its
//! timeline past the new timeline's fork point. Postgres then retries for
//! ever ("new timeline forked off current database system timeline before
//! current recovery point") and the standby never streams again; in strict
//! synchronous mode that can be the standby commits wait for. The keeper
//! notices it has not streamed for a while, reads its upstream's timeline
//! history and, past the fork point, has `plan` rewind it.

use std::time::Duration;

use pgwarden_core::timeline;
use pgwarden_pg::{ConnParams, PgClient, PgStatus};
use tokio::time::Instant;

/// How long a standby whose upstream is the primary may go without
/// streaming before its history is checked: the usual causes (upstream
/// restarting, slot created a moment late) pass well within it.
const GRACE: Duration = Duration::from_secs(3);

/// At most one look at the upstream's history this often: each costs a
/// connection, and an unreachable upstream a connect timeout of the tick.
const RECHECK: Duration = Duration::from_secs(3);

/// The connect timeout of that look: the keeper's tick waits for it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The state of the check across ticks.
#[derive(Debug, Default)]
pub struct DivergenceCheck {
    not_streaming_since: Option<Instant>,
    /// When the upstream's history was last read, and the verdict then.
    last_look: Option<(Instant, bool)>,
}

impl DivergenceCheck {
    /// Not a standby (or not running): nothing to watch.
    pub fn reset(&mut self) {
        self.not_streaming_since = None;
        self.last_look = None;
    }

    /// Whether this standby (`pg`, queried through `own`, following
    /// `upstream` that is the cluster's primary) replayed past its
    /// upstream's fork point. `follows_primary` false, or a standby that
    /// streams, resets the clock. The upstream is read at most every
    /// [`RECHECK`]; in between the last verdict stands.
    pub async fn diverged(
        &mut self,
        follows_primary: bool,
        pg: Option<&PgStatus>,
        own: &PgClient,
        upstream: ConnParams,
    ) -> bool {
        let Some(pg) = pg.filter(|p| follows_primary && p.in_recovery && !p.streaming) else {
            self.reset();
            return false;
        };
        let since = *self.not_streaming_since.get_or_insert_with(Instant::now);
        if since.elapsed() < GRACE {
            return false;
        }
        if let Some((at, verdict)) = self.last_look {
            if at.elapsed() < RECHECK {
                return verdict;
            }
        }
        let verdict = self.look(pg, own, upstream).await;
        self.last_look = Some((Instant::now(), verdict));
        verdict
    }

    async fn look(&self, pg: &PgStatus, own: &PgClient, mut upstream: ConnParams) -> bool {
        let Some(replay) = pg.replay_lsn else {
            return false;
        };
        // The timeline it replays on: its newest WAL segment's (a standby
        // that did switch to the new timeline received WAL on it), at least
        // its last restartpoint's.
        let segments = match own.wal_segment_timeline().await {
            Ok(t) => t.unwrap_or(0),
            Err(_) => return false,
        };
        let ours = pg.checkpoint_timeline.max(segments);
        upstream.connect_timeout = CONNECT_TIMEOUT;
        let Ok(client) = PgClient::connect(&upstream).await else {
            return false;
        };
        let Ok(theirs) = client.status().await else {
            return false;
        };
        if theirs.timeline <= ours {
            return false;
        }
        let history = match client.timeline_history(theirs.timeline).await {
            Ok(Some(h)) => h,
            _ => return false,
        };
        let diverged = timeline::diverged(ours, replay, &history);
        if diverged {
            tracing::warn!(
                timeline = ours,
                %replay,
                upstream_timeline = theirs.timeline,
                fork = ?timeline::fork_point(&history, ours).map(|l| l.to_string()),
                "this standby replayed past the point where its upstream's timeline forked off: it cannot follow and will be rewound"
            );
        }
        diverged
    }
}
