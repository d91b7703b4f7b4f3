//! Keeping `/liveness` true while the keeper is busy with one long action.
//!
//! The keeper loop publishes its state about once a second, and the API's
//! `/liveness` fails when it has not for a while. An initdb, a base backup of
//! a large database or a pg_rewind blocks the loop for minutes: the keeper is
//! alive and working, so it says so once a second until the action ends.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

/// How often the state is re-published during a long action.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Runs `action`, re-publishing the current value of `local` every second
/// meanwhile (receivers see a change and stamp it as fresh).
pub async fn alive_during<S, T>(local: &watch::Sender<S>, action: impl Future<Output = T>) -> T {
    beating(local, HEARTBEAT, action).await
}

async fn beating<S, T>(
    local: &watch::Sender<S>,
    every: Duration,
    action: impl Future<Output = T>,
) -> T {
    tokio::pin!(action);
    let mut beat = tokio::time::interval(every);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            out = &mut action => return out,
            _ = beat.tick() => local.send_modify(|_| {}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_state_is_republished_until_the_action_ends() {
        let (tx, mut rx) = watch::channel(7u8);
        rx.borrow_and_update();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        // The action ends only once three beats were seen: without them
        // this test would hang (and time out).
        let watcher = tokio::spawn(async move {
            for _ in 0..3 {
                rx.changed().await.unwrap();
                assert_eq!(*rx.borrow_and_update(), 7, "the value itself is unchanged");
            }
            done_tx.send(()).unwrap();
            rx
        });
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            beating(&tx, Duration::from_millis(10), async {
                done_rx.await.unwrap();
                "done"
            }),
        )
        .await
        .expect("no heartbeats");
        assert_eq!(out, "done");
        let rx = watcher.await.unwrap();
        // No beat after the action ended.
        let seen = rx.has_changed().unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(rx.has_changed().unwrap(), seen);
    }
}
