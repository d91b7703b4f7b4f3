//! The split-brain watch: every postgres polled for writability at 40 Hz,
//! each from inside its own host's namespace.
//!
//! One task per node keeps a superuser connection to that node's address,
//! with the socket created in the node's namespace: partitions never stand
//! between the watch and a node, so an isolated primary that still accepts
//! writes is seen. Each answer to `SELECT NOT pg_is_in_recovery()` is
//! recorded with its time; an error or a query slower than 200 ms counts as
//! "no answer" and the connection is opened anew (a node that answers nobody
//! accepts no writes either).
//!
//! Two nodes are writable at once when one node's writable answers overlap
//! another's: a node is taken as writable from one writable answer to the
//! next as long as nothing else came between them and they are at most
//! 250 ms apart. So every reported overlap is backed by real answers on
//! both sides, and an overlap longer than one polling period cannot slip
//! through. The watch counts direct connections: a node that accepts writes
//! only from clients that bypass the proxy still accepts writes (DESIGN.md's
//! invariant 1 is about nodes, not routes).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Net;
use crate::common::SU_PASSWORD;

const PERIOD: Duration = Duration::from_millis(25);
const QUERY_TIMEOUT: Duration = Duration::from_millis(200);
/// Longest time between two writable answers still taken as one stretch.
const MAX_STRETCH_GAP: Duration = Duration::from_millis(250);

/// Every answer per node: (time, Some(writable) or None for no answer).
type Answers = BTreeMap<String, Vec<(Instant, Option<bool>)>>;

/// The running pollers.
#[derive(Debug)]
pub struct Watch {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Answers>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A stretch of time during which two nodes were both writable.
#[derive(Debug, Clone)]
pub struct Overlap {
    pub nodes: (String, String),
    pub from: Instant,
    pub to: Instant,
}

impl Watch {
    /// Starts polling each node of `ports` (uid -> postgres port).
    pub fn start(net: &Arc<Net>, ports: &BTreeMap<String, u16>) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Answers::new()));
        let tasks = ports
            .iter()
            .map(|(uid, port)| {
                let (net, uid, port) = (net.clone(), uid.clone(), *port);
                let (stop, answers) = (stop.clone(), answers.clone());
                // A poller that died would silently blind the watch: say so
                // and start it again.
                tokio::spawn(async move {
                    loop {
                        let poller = tokio::spawn(poll_node(
                            net.clone(),
                            uid.clone(),
                            port,
                            stop.clone(),
                            answers.clone(),
                        ));
                        match poller.await {
                            Ok(()) => return,
                            Err(e) => {
                                eprintln!("watch: the poller of {uid} died ({e}); restarting")
                            }
                        }
                    }
                })
            })
            .collect();
        Watch {
            stop,
            answers,
            tasks,
        }
    }

    /// Writable stretches of each node that intersect [from, to].
    fn stretches(&self, from: Instant, to: Instant) -> BTreeMap<String, Vec<(Instant, Instant)>> {
        let answers = self.answers.lock().unwrap();
        let mut out = BTreeMap::new();
        for (uid, list) in answers.iter() {
            let mut spans: Vec<(Instant, Instant)> = Vec::new();
            let mut current: Option<(Instant, Instant)> = None;
            for (t, a) in list {
                match (a, current) {
                    (Some(true), Some((s, e))) if t.duration_since(e) <= MAX_STRETCH_GAP => {
                        current = Some((s, *t));
                    }
                    (Some(true), _) => {
                        spans.extend(current.take());
                        current = Some((*t, *t));
                    }
                    _ => spans.extend(current.take()),
                }
            }
            spans.extend(current);
            spans.retain(|(s, e)| *e >= from && *s <= to);
            out.insert(uid.clone(), spans);
        }
        out
    }

    /// Every overlap of two nodes' writable stretches within [from, to].
    pub fn overlaps(&self, from: Instant, to: Instant) -> Vec<Overlap> {
        let stretches = self.stretches(from, to);
        let uids: Vec<&String> = stretches.keys().collect();
        let mut out = Vec::new();
        for (i, a) in uids.iter().enumerate() {
            for b in &uids[i + 1..] {
                for (sa, ea) in &stretches[*a] {
                    for (sb, eb) in &stretches[*b] {
                        let (s, e) = ((*sa).max(*sb).max(from), (*ea).min(*eb).min(to));
                        if s <= e {
                            out.push(Overlap {
                                nodes: ((*a).clone(), (*b).clone()),
                                from: s,
                                to: e,
                            });
                        }
                    }
                }
            }
        }
        out
    }

    /// The last writable answer of `uid` within [from, to].
    pub fn last_writable(&self, uid: &str, from: Instant, to: Instant) -> Option<Instant> {
        self.answers
            .lock()
            .unwrap()
            .get(uid)?
            .iter()
            .rev()
            .find_map(|(t, a)| (*a == Some(true) && *t >= from && *t <= to).then_some(*t))
    }

    /// The first writable answer of any node but `except` at or after `from`.
    pub fn first_writable_other(&self, except: &str, from: Instant) -> Option<(String, Instant)> {
        let answers = self.answers.lock().unwrap();
        answers
            .iter()
            .filter(|(uid, _)| uid.as_str() != except)
            .filter_map(|(uid, list)| {
                list.iter()
                    .find(|(t, a)| *t >= from && *a == Some(true))
                    .map(|(t, _)| (uid.clone(), *t))
            })
            .min_by_key(|(_, t)| *t)
    }

    /// The last few answers of each node, for failure messages.
    pub fn recent(&self, n: usize) -> String {
        let answers = self.answers.lock().unwrap();
        let now = Instant::now();
        answers
            .iter()
            .map(|(uid, list)| {
                let tail: Vec<String> = list
                    .iter()
                    .rev()
                    .take(n)
                    .map(|(t, a)| format!("-{:.2}s {a:?}", now.duration_since(*t).as_secs_f64()))
                    .collect();
                format!("{uid} ({} answers): {}", list.len(), tail.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Answers recorded per node (to show that the watch really ran).
    pub fn answer_counts(&self) -> BTreeMap<String, usize> {
        self.answers
            .lock()
            .unwrap()
            .iter()
            .map(|(u, l)| (u.clone(), l.iter().filter(|(_, a)| a.is_some()).count()))
            .collect()
    }

    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A superuser connection to `uid`'s postgres made from inside its
/// namespace (so that no partition stands in the way), or None within 200 ms.
pub async fn connect_in(net: &Net, uid: &str, port: u16) -> Option<tokio_postgres::Client> {
    let socket = net.socket(uid).ok()?;
    let addr = std::net::SocketAddr::from((net.ip(uid), port));
    let attempt = async {
        let stream = socket.connect(addr).await.ok()?;
        let (client, conn) = tokio_postgres::Config::new()
            .user("postgres")
            .password(SU_PASSWORD)
            .dbname("postgres")
            .connect_raw(stream, tokio_postgres::NoTls)
            .await
            .ok()?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Some(client)
    };
    tokio::time::timeout(QUERY_TIMEOUT, attempt)
        .await
        .ok()
        .flatten()
}

async fn poll_node(
    net: Arc<Net>,
    uid: String,
    port: u16,
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Answers>>,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if client.is_none() {
            client = connect_in(&net, &uid, port).await;
        }
        let answer = match &client {
            Some(c) => {
                let q = c.query_one("SELECT NOT pg_is_in_recovery()", &[]);
                match tokio::time::timeout(QUERY_TIMEOUT, q).await {
                    Ok(Ok(row)) => Some(row.get::<_, bool>(0)),
                    _ => None,
                }
            }
            None => None,
        };
        if answer.is_none() {
            client = None;
        }
        answers
            .lock()
            .unwrap()
            .entry(uid.clone())
            .or_default()
            .push((Instant::now(), answer));
        next += PERIOD;
        let now = Instant::now();
        if next < now {
            next = now;
        }
        tokio::time::sleep_until(next.into()).await;
    }
}
