//! The fencer under paused tokio time: the deadline is the last renewal's
//! validity less the margin, it stays armed until a renewal, and a renewal
//! task that dies fences at once. Instants are exact: paused time moves only
//! when the test says so.

use std::sync::{Arc, Mutex};

use super::*;

const TTL: Duration = Duration::from_secs(3);

/// What the fencer did, and when (ms after the start).
type Log = Arc<Mutex<Vec<(u128, String)>>>;

struct Fencer {
    state: watch::Sender<LeaseState>,
    kills: Log,
    armed: Log,
    stop: CancellationToken,
    start: Instant,
}

fn renewed(valid_until: Instant) -> LeaseState {
    LeaseState {
        id: Some(1),
        valid_until: Some(valid_until),
        electing: false,
    }
}

fn spawn() -> Fencer {
    let start = Instant::now();
    let (state, rx) = watch::channel(renewed(start + TTL));
    let (kills, armed): (Log, Log) = Default::default();
    let stop = CancellationToken::new();
    let (k, a) = (kills.clone(), armed.clone());
    tokio::spawn(fence(
        rx,
        timing::fencing_margin(TTL),
        timing::watchdog_margin(TTL),
        move |d| a.lock().unwrap().push((d.as_millis(), String::new())),
        move |why| {
            let at = start.elapsed().as_millis();
            k.lock().unwrap().push((at, why.to_string()));
        },
        stop.clone(),
    ));
    Fencer {
        state,
        kills,
        armed,
        stop,
        start,
    }
}

async fn at(f: &Fencer, ms: u64) {
    tokio::time::sleep_until(f.start + Duration::from_millis(ms)).await;
    // Let the fencer run what is due at this instant.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn kills(f: &Fencer) -> Vec<(u128, String)> {
    f.kills.lock().unwrap().clone()
}

#[tokio::test(start_paused = true)]
async fn postgres_is_killed_a_sixth_of_the_ttl_before_the_lease_could_expire() {
    let f = spawn();
    at(&f, 2499).await;
    assert_eq!(kills(&f), vec![]);
    // The watchdog was told its later backstop: ttl - ttl/12.
    assert_eq!(f.armed.lock().unwrap()[0].0, 2750);
    at(&f, 2500).await;
    assert_eq!(
        kills(&f),
        vec![(
            2500,
            "the primary lease could not be renewed in time".into()
        )]
    );
    // Still armed: any postmaster started meanwhile dies every 50 ms.
    at(&f, 2600).await;
    assert_eq!(kills(&f).len(), 3);
    assert_eq!(kills(&f)[2].1, "the primary lease is still not renewed");
    // A renewal disarms it and sets the next deadline.
    f.state
        .send_replace(renewed(f.start + Duration::from_millis(2600) + TTL));
    at(&f, 5099).await;
    assert_eq!(kills(&f).len(), 3);
    at(&f, 5100).await;
    assert_eq!(kills(&f).len(), 4);
    f.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn renewals_in_time_never_fence() {
    let f = spawn();
    for i in 1..=20u64 {
        at(&f, i * 200).await;
        f.state
            .send_replace(renewed(f.start + Duration::from_millis(i * 200) + TTL));
    }
    at(&f, 4000 + 2499).await;
    assert_eq!(kills(&f), vec![]);
    f.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_lease_reported_gone_or_a_dead_renewal_task_fences_at_once() {
    let f = spawn();
    at(&f, 1000).await;
    f.state.send_replace(LeaseState {
        id: None,
        valid_until: None,
        electing: false,
    });
    at(&f, 1000).await;
    assert_eq!(
        kills(&f),
        vec![(
            1000,
            "the primary lease could not be renewed in time".into()
        )]
    );
    f.stop.cancel();

    let Fencer {
        state,
        kills,
        start,
        ..
    } = spawn();
    tokio::time::sleep_until(start + Duration::from_millis(700)).await;
    drop(state);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        kills.lock().unwrap().clone(),
        vec![(700, "the lease renewal task stopped".into())]
    );
}
