//! The client workload: writers inserting unique rows through the proxy,
//! each outcome recorded, and the check that no acknowledged row was lost.
//!
//! Each write is its own transaction, `BEGIN; INSERT; COMMIT`, so that its
//! outcome is exact: COMMIT answered = acknowledged (the row must survive any
//! fault); an error before COMMIT was sent = failed (the row must never
//! appear); an error or a timeout once COMMIT was sent = indeterminate (the
//! row may or may not exist). Writers pace themselves (one write per 10 ms
//! each) so that the suite measures the cluster, not CPU starvation on a
//! small machine, while the longest gap between acknowledged writes still
//! resolves the unavailability window to a few tens of milliseconds.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::SU_PASSWORD;

/// Writers running at once.
const WRITERS: i64 = 2;
/// Each writer's pace.
const PACE: Duration = Duration::from_millis(10);
/// Longest a statement may take before the writer gives up on its connection.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Every outcome so far.
#[derive(Debug, Default, Clone)]
pub struct Outcomes {
    /// (row id, when COMMIT was answered), in answer order per writer.
    pub acked: Vec<(i64, Instant)>,
    pub indeterminate: Vec<i64>,
    pub failed: Vec<i64>,
}

/// The writers; stopped on drop.
#[derive(Debug)]
pub struct Workload {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Outcomes>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The result of checking the rows on the current primary.
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    /// Acknowledged rows checked.
    pub acked: usize,
    /// Acknowledged rows missing.
    pub lost: Vec<i64>,
    /// Failed writes whose row exists anyway.
    pub phantom: Vec<i64>,
}

/// A superuser connection through `addr` (the runtime's own namespace).
pub async fn connect(
    addr: (Ipv4Addr, u16),
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::Config::new()
        .host(addr.0.to_string())
        .port(addr.1)
        .user("postgres")
        .password(SU_PASSWORD)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(1))
        .connect(tokio_postgres::NoTls)
        .await?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((client, task))
}

impl Workload {
    /// Creates the table (retrying for up to 60 s) and starts the writers.
    pub async fn start(proxy: (Ipv4Addr, u16)) -> Workload {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let created = async {
                let (c, task) = connect(proxy).await?;
                let r = c
                    .batch_execute("CREATE TABLE IF NOT EXISTS fault_rows (id bigint PRIMARY KEY)")
                    .await;
                task.abort();
                r
            };
            match tokio::time::timeout(STATEMENT_TIMEOUT, created).await {
                Ok(Ok(())) => break,
                other => assert!(
                    Instant::now() < deadline,
                    "cannot create the table through the proxy: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Outcomes::default()));
        let tasks = (0..WRITERS)
            .map(|w| tokio::spawn(writer(proxy, w, stop.clone(), outcomes.clone())))
            .collect();
        Workload {
            stop,
            outcomes,
            tasks,
        }
    }

    pub fn outcomes(&self) -> Outcomes {
        self.outcomes.lock().unwrap().clone()
    }

    /// When the last write was acknowledged.
    pub fn last_ack(&self) -> Option<Instant> {
        self.outcomes
            .lock()
            .unwrap()
            .acked
            .iter()
            .map(|(_, t)| *t)
            .max()
    }

    /// Waits until writes have been acknowledged continuously (no gap over
    /// 500 ms) for `span`.
    pub async fn wait_flowing(&self, span: Duration, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut since: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let fresh = self
                .last_ack()
                .is_some_and(|t| now.duration_since(t) < Duration::from_millis(500));
            since = if fresh { since.or(Some(now)) } else { None };
            if since.is_some_and(|s| now.duration_since(s) >= span) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "writes through the proxy did not resume within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The longest interval without an acknowledged write within [from, to]:
    /// from the last acknowledgement before `from` (or `from`) to the first
    /// after it, and so on up to `to`.
    pub fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let mut times: Vec<Instant> = self
            .outcomes
            .lock()
            .unwrap()
            .acked
            .iter()
            .map(|(_, t)| *t)
            .collect();
        times.sort();
        let mut prev = times
            .iter()
            .rev()
            .find(|t| **t <= from)
            .copied()
            .unwrap_or(from);
        let mut worst = Duration::ZERO;
        for t in times.iter().filter(|t| **t > from && **t <= to) {
            worst = worst.max(t.duration_since(prev));
            prev = *t;
        }
        worst.max(to.saturating_duration_since(prev))
    }

    /// Reads every row on the current primary (through the proxy) and
    /// checks it against the outcomes recorded before the read began.
    pub async fn verify(&self, proxy: (Ipv4Addr, u16)) -> Verdict {
        let before = self.outcomes();
        let deadline = Instant::now() + Duration::from_secs(60);
        let present: BTreeSet<i64> = loop {
            let read = async {
                let (c, task) = connect(proxy).await?;
                let rows = c.query("SELECT id FROM fault_rows", &[]).await;
                task.abort();
                rows
            };
            match tokio::time::timeout(Duration::from_secs(10), read).await {
                Ok(Ok(rows)) => break rows.iter().map(|r| r.get::<_, i64>(0)).collect(),
                other => assert!(
                    Instant::now() < deadline,
                    "cannot read the rows through the proxy: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        Verdict {
            acked: before.acked.len(),
            lost: before
                .acked
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| !present.contains(id))
                .collect(),
            phantom: before
                .failed
                .iter()
                .copied()
                .filter(|id| present.contains(id))
                .collect(),
        }
    }

    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in &self.tasks {
            t.abort();
        }
    }
}

enum Outcome {
    Acked,
    Failed,
    Indeterminate,
}

/// One writer: ids `w`, `w + WRITERS`, ... so that writers never collide.
async fn writer(
    proxy: (Ipv4Addr, u16),
    w: i64,
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Outcomes>>,
) {
    let mut next = w + 1;
    let mut conn: Option<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> = None;
    while !stop.load(Ordering::SeqCst) {
        let tick = Instant::now();
        if conn.is_none() {
            match tokio::time::timeout(STATEMENT_TIMEOUT, connect(proxy)).await {
                Ok(Ok(c)) => conn = Some(c),
                _ => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        let Some((client, _)) = conn.as_mut() else {
            continue;
        };
        let id = next;
        next += WRITERS;
        let outcome = write(client, id).await;
        {
            let mut o = outcomes.lock().unwrap();
            match outcome {
                Outcome::Acked => o.acked.push((id, Instant::now())),
                Outcome::Failed => o.failed.push(id),
                Outcome::Indeterminate => o.indeterminate.push(id),
            }
        }
        if !matches!(outcome, Outcome::Acked) {
            if let Some((_, task)) = conn.take() {
                task.abort();
            }
        }
        tokio::time::sleep_until((tick + PACE).into()).await;
    }
    if let Some((_, task)) = conn.take() {
        task.abort();
    }
}

async fn write(client: &mut tokio_postgres::Client, id: i64) -> Outcome {
    let t = STATEMENT_TIMEOUT;
    let Ok(Ok(tx)) = tokio::time::timeout(t, client.transaction()).await else {
        return Outcome::Failed;
    };
    match tokio::time::timeout(t, tx.execute("INSERT INTO fault_rows VALUES ($1)", &[&id])).await {
        Ok(Ok(_)) => {}
        _ => return Outcome::Failed,
    }
    match tokio::time::timeout(t, tx.commit()).await {
        Ok(Ok(())) => Outcome::Acked,
        _ => Outcome::Indeterminate,
    }
}
