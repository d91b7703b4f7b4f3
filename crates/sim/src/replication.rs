//! What postgres does on its own between the keepers' actions: standbys
//! stream from their upstream, clients commit on every node that accepts
//! writes, and commits under `synchronous_standby_names = ANY k (...)` wait
//! until `k` of the listed standbys streaming from that node have them
//! before they are acknowledged. A listed name that matches no standby (the
//! placeholder strict mode lists when it has none) confirms nothing, so
//! such commits wait until the setting changes or the server stops (the
//! client then sees an error, not an acknowledgement).
//!
//! Streaming follows postgres' own rule ([`crate::postgres::Data::postgres_can_follow`]) and
//! tells the checkers whether the standby held anything its upstream does
//! not (ground truth). Every time a new node becomes the only writer, the
//! acknowledged writes missing from its WAL are counted as lost.

use std::collections::BTreeSet;

use crate::events::{Event, Happening};
use crate::postgres::{is_prefix, parse_sync_names, Host};
use crate::world::World;

impl World {
    /// Streaming replication and client writes.
    pub(crate) fn run_postgres(&mut self) {
        let links: Vec<(String, String)> = self
            .hosts
            .values()
            .filter(|h| h.running && h.in_recovery)
            .filter_map(|h| Some((h.uid.clone(), h.upstream.clone()?)))
            .collect();
        for (uid, up) in links {
            let batch = if self.cfg.jitter && self.rng.chance(500) {
                self.rng.below(4) as usize
            } else {
                usize::MAX
            };
            let feed = match (self.hosts.get(&uid), self.hosts.get(&up)) {
                (Some(s), Some(u)) if u.running && self.net.peers(&uid, &up) => {
                    match (s.data(), u.data()) {
                        (Some(sd), Some(ud)) if sd.postgres_can_follow(ud) => {
                            let from = sd.wal.len();
                            let to = ud.wal.len().min(from.saturating_add(batch));
                            Some((
                                !is_prefix(&sd.wal, &ud.wal),
                                ud.wal[from..to].to_vec(),
                                ud.timeline,
                                ud.history.clone(),
                            ))
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            let Some(h) = self.hosts.get_mut(&uid) else {
                continue;
            };
            let Some((diverged, records, timeline, history)) = feed else {
                h.streaming = false;
                continue;
            };
            h.streaming = true;
            if let Some(d) = h.data_mut() {
                d.wal.extend(records);
                d.timeline = timeline;
                d.history = history;
            }
            self.events.push(Event::Streamed {
                standby: uid,
                upstream: up,
                diverged,
            });
        }
        self.release_commits();
        let writable: Vec<String> = self
            .hosts
            .values()
            .filter(|h| h.writable())
            .map(|h| h.uid.clone())
            .collect();
        for uid in writable {
            if !self.rng.chance(400) {
                continue;
            }
            self.next_record += 1;
            let id = self.next_record;
            let Some(h) = self.hosts.get_mut(&uid) else {
                continue;
            };
            let synchronous = parse_sync_names(&h.sync_applied).is_some_and(|(k, _)| k > 0);
            if let Some(d) = h.data_mut() {
                d.wal.push(id);
                if synchronous {
                    self.waiting.push((uid.clone(), id, d.wal.len() - 1));
                } else {
                    self.acked.push(id);
                    self.stats.acked_writes += 1;
                }
            }
        }
    }

    /// Acknowledges the commits that enough listed standbys streaming from
    /// their primary have received; drops those whose primary stopped
    /// accepting writes (the client saw an error, not an acknowledgement).
    fn release_commits(&mut self) {
        let hosts = &self.hosts;
        let mut acked = Vec::new();
        self.waiting.retain(|(uid, id, index)| {
            let Some(p) = hosts.get(uid).filter(|h| h.writable()) else {
                return false;
            };
            let Some((k, names)) = parse_sync_names(&p.sync_applied) else {
                acked.push(*id);
                return false;
            };
            let confirmed = names
                .iter()
                .filter_map(|n| hosts.get(n))
                .filter(|s| s.running && s.streaming && s.upstream.as_deref() == Some(uid))
                .filter(|s| s.data().is_some_and(|d| d.wal.get(*index) == Some(id)))
                .count();
            if confirmed >= k {
                acked.push(*id);
                return false;
            }
            true
        });
        self.stats.acked_writes += acked.len() as u64;
        self.acked.extend(acked);
    }

    /// Tracks who writes, and counts acknowledged writes a new writer lacks.
    pub(crate) fn bookkeep(&mut self) {
        let now: BTreeSet<String> = self
            .hosts
            .values()
            .filter(|h| h.writable())
            .map(|h| h.uid.clone())
            .collect();
        for uid in now.difference(&self.writers) {
            self.journal
                .push((self.now, Happening::BecameWritable(uid.clone())));
        }
        for uid in self.writers.difference(&now) {
            self.journal
                .push((self.now, Happening::StoppedWriting(uid.clone())));
        }
        if now.len() == 1 {
            let writer = now.iter().next().cloned();
            if writer != self.last_writer {
                if let Some(w) = &writer {
                    self.count_lost(w);
                }
                self.last_writer = writer;
            }
        }
        self.writers = now;
    }

    fn count_lost(&mut self, writer: &str) {
        let Some(data) = self.hosts.get(writer).and_then(Host::data) else {
            return;
        };
        let has: BTreeSet<u64> = data.wal.iter().copied().collect();
        let newly: Vec<u64> = self
            .acked
            .iter()
            .filter(|id| !has.contains(id) && !self.lost.contains(id))
            .copied()
            .collect();
        if newly.is_empty() {
            return;
        }
        self.stats.lost_writes += newly.len() as u64;
        self.events.push(Event::WritesLost {
            uid: writer.to_string(),
            ids: newly.clone(),
        });
        self.journal.push((
            self.now,
            Happening::WritesLost {
                uid: writer.to_string(),
                count: newly.len() as u64,
            },
        ));
        self.lost.extend(newly);
    }
}
