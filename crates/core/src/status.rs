//! The sentinel's decision, stored under `status`.
//!
//! Everything `decide` needs to remember between rounds lives here (not in the
//! sentinel's memory), so a newly elected sentinel continues exactly where the
//! old one stopped. Keepers and proxies read it and carry it out without making
//! choices of their own: a standby's assignment already names the address it
//! must stream from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::report::opt_u64_string;

/// The status format this build writes and understands.
pub const STATUS_FORMAT_VERSION: u32 = 1;
/// How many past decisions the status keeps for `ctl status`.
pub const HISTORY_LEN: usize = 20;

/// What one keeper must be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Assignment {
    /// Run postgres as the writable primary.
    Primary,
    /// Stream from `follow`, reachable at `host:port`.
    Standby {
        /// The uid of the node to stream from.
        follow: String,
        /// Its postgres host.
        host: String,
        /// Its postgres port.
        port: u16,
    },
}

/// A past decision, for operators reading `ctl status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Wall-clock time of the decision, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Generation the decision produced.
    pub generation: u64,
    /// Primary before.
    pub old_primary: Option<String>,
    /// Primary after.
    pub new_primary: Option<String>,
    /// Why, in one line.
    pub reason: String,
    /// What kind of decision, stable for scripts and metrics
    /// ([`crate::decide::Reason::label`]); empty in history written before
    /// it was recorded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
}

/// The cluster's current assignment of roles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    /// Format of this document.
    pub format_version: u32,
    /// Bumped on every role change; never decreases.
    pub generation: u64,
    /// The system identifier of the cluster's data, once a primary created or adopted it.
    #[serde(with = "opt_u64_string")]
    pub system_id: Option<u64>,
    /// The uid of the primary, if one is assigned.
    pub primary: Option<String>,
    /// The timeline the primary is on (0 when unknown).
    pub timeline: u32,
    /// Each known keeper's assignment.
    pub members: BTreeMap<String, Assignment>,
    /// During a failover: the primary that was deposed and must be proven
    /// gone (its primary lease released or expired, every proxy past it)
    /// before anyone is promoted.
    pub deposed: Option<String>,
    /// During a switchover or manual failover: the node to promote.
    pub target: Option<String>,
    /// The target was forced (`ctl failover --force`): promote it even if
    /// behind.
    pub target_forced: bool,
    /// The id of the last operator request carried out or refused.
    pub handled_request: u64,
    /// What became of it, for `ctl`.
    pub request_outcome: Option<RequestOutcome>,
    /// Synchronous standbys that may be promoted without losing a commit:
    /// each is in the primary's applied synchronous_standby_names and was
    /// seen synchronous. Sorted.
    pub sync_standbys: Vec<String>,
    /// What the primary's synchronous_standby_names must list. Sorted.
    pub sync_names: Vec<String>,
    /// The primary has held the primary lease since it was named. Until it
    /// has, a missing lease means "not there yet", not "failed".
    pub primary_confirmed: bool,
    /// When the current primary was named or, during a failover, when the
    /// old one was deposed (ms since epoch).
    pub primary_since_ms: u64,
    /// When the sentinel first saw the current primary hold the primary
    /// lease, i.e. accept writes (ms since epoch; 0 until then).
    pub primary_confirmed_ms: u64,
    /// Since when (ms since epoch) a member has been seen unhealthy.
    pub unhealthy_since: BTreeMap<String, u64>,
    /// Members gone longer than the spec's `member_slots_ttl`: no node keeps
    /// a replication slot for them any more. Sorted.
    pub slots_released: Vec<String>,
    /// The last decisions, oldest first.
    pub history: Vec<HistoryEntry>,
}

/// What became of the last operator request (switchover, failover).
///
/// Stored as the one line `ctl status` has always shown ("in progress: ...",
/// "done: ...", "refused: ...", "failed: ..."), so the JSON users see is
/// unchanged; it is read back here, once, and nowhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOutcome {
    /// The role change started.
    InProgress {
        /// "switchover" or "failover".
        kind: String,
        /// The node to promote.
        target: String,
    },
    /// The target (or the best standby) is primary now.
    Done {
        /// The new primary.
        primary: String,
        /// The one before.
        was: String,
    },
    /// The request was refused; nothing changed.
    Refused {
        /// Why, for the operator.
        why: String,
    },
    /// The role change began but the target could not take over.
    Failed {
        /// What happened.
        why: String,
    },
    /// A line this pgwarden does not know (written by a newer one).
    Other(String),
}

impl RequestOutcome {
    /// The request is over (done, refused or failed).
    pub fn finished(&self) -> bool {
        !matches!(self, RequestOutcome::InProgress { .. })
    }
}

impl std::fmt::Display for RequestOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestOutcome::InProgress { kind, target } => {
                write!(f, "in progress: {kind} to {target}")
            }
            RequestOutcome::Done { primary, was } => {
                write!(f, "done: {primary} is primary (was {was})")
            }
            RequestOutcome::Refused { why } => write!(f, "refused: {why}"),
            RequestOutcome::Failed { why } => write!(f, "failed: {why}"),
            RequestOutcome::Other(line) => f.write_str(line),
        }
    }
}

impl std::str::FromStr for RequestOutcome {
    type Err = std::convert::Infallible;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let parsed = if let Some(rest) = line.strip_prefix("in progress: ") {
            rest.split_once(" to ")
                .map(|(kind, target)| RequestOutcome::InProgress {
                    kind: kind.to_string(),
                    target: target.to_string(),
                })
        } else if let Some(rest) = line.strip_prefix("done: ") {
            rest.strip_suffix(')')
                .and_then(|r| r.split_once(" is primary (was "))
                .map(|(primary, was)| RequestOutcome::Done {
                    primary: primary.to_string(),
                    was: was.to_string(),
                })
        } else if let Some(why) = line.strip_prefix("refused: ") {
            Some(RequestOutcome::Refused {
                why: why.to_string(),
            })
        } else {
            line.strip_prefix("failed: ")
                .map(|why| RequestOutcome::Failed {
                    why: why.to_string(),
                })
        };
        Ok(parsed.unwrap_or_else(|| RequestOutcome::Other(line.to_string())))
    }
}

impl Serialize for RequestOutcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RequestOutcome {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let line = String::deserialize(d)?;
        Ok(line
            .parse()
            .unwrap_or_else(|e: std::convert::Infallible| match e {}))
    }
}

/// The generation cannot grow any further (it never wraps: a wrapped
/// generation would look older than every instruction already carried out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("generation {0} cannot grow any further: re-create the cluster status with `pgwarden ctl init --force`")]
pub struct GenerationExhausted(pub u64);

impl Status {
    /// A new generation, checked.
    pub fn next_generation(&mut self) -> Result<(), GenerationExhausted> {
        self.generation = self
            .generation
            .checked_add(1)
            .ok_or(GenerationExhausted(self.generation))?;
        Ok(())
    }

    /// A new term of the primary role at `now_ms`: a new generation, and the
    /// primary (whoever is named next) not confirmed yet.
    pub fn new_term(&mut self, now_ms: u64) -> Result<(), GenerationExhausted> {
        self.next_generation()?;
        self.primary_confirmed = false;
        self.primary_confirmed_ms = 0;
        self.primary_since_ms = now_ms;
        Ok(())
    }
}

impl Default for Status {
    fn default() -> Self {
        Status {
            format_version: STATUS_FORMAT_VERSION,
            generation: 0,
            system_id: None,
            primary: None,
            timeline: 0,
            members: BTreeMap::new(),
            deposed: None,
            target: None,
            target_forced: false,
            handled_request: 0,
            request_outcome: None,
            sync_standbys: Vec::new(),
            sync_names: Vec::new(),
            primary_confirmed: false,
            primary_since_ms: 0,
            primary_confirmed_ms: 0,
            unhealthy_since: BTreeMap::new(),
            slots_released: Vec::new(),
            history: Vec::new(),
        }
    }
}

/// Why `ctl remove` refuses to forget a member.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoveRefused {
    /// Not a member of this cluster.
    #[error("{uid} is not a member of this cluster (members: {members}): nothing changed")]
    Unknown {
        /// The uid asked for.
        uid: String,
        /// The members there are.
        members: String,
    },
    /// The primary (or the primary being replaced or promoted).
    #[error("{uid} is the primary (or being promoted or replaced): refusing to remove it, nothing changed; switch over to another node first (`pgwarden ctl switchover`)")]
    Primary {
        /// The uid asked for.
        uid: String,
    },
    /// Its keeper still reports.
    #[error("{uid} is live (its keeper reports from {at}): refusing to remove it, nothing changed; stop its keeper for good first")]
    Live {
        /// The uid asked for.
        uid: String,
        /// Where its keeper says postgres runs.
        at: String,
    },
}

impl Status {
    /// This status with the gone member `uid` forgotten: it leaves the
    /// members (so every node drops its replication slots) and the sets
    /// that name it. `live_at` is where its keeper reports from, if it does.
    /// The synchronous names are left to the next decision.
    pub fn without_member(
        &self,
        uid: &str,
        live_at: Option<&str>,
    ) -> Result<Status, RemoveRefused> {
        let refused_uid = || uid.to_string();
        if !self.members.contains_key(uid) {
            return Err(RemoveRefused::Unknown {
                uid: refused_uid(),
                members: self.members.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        let named = [&self.primary, &self.deposed, &self.target];
        if matches!(self.members.get(uid), Some(Assignment::Primary))
            || named.iter().any(|n| n.as_deref() == Some(uid))
        {
            return Err(RemoveRefused::Primary { uid: refused_uid() });
        }
        if let Some(at) = live_at {
            return Err(RemoveRefused::Live {
                uid: refused_uid(),
                at: at.to_string(),
            });
        }
        let mut next = self.clone();
        next.members.remove(uid);
        next.unhealthy_since.remove(uid);
        next.sync_standbys.retain(|u| u != uid);
        next.slots_released.retain(|u| u != uid);
        Ok(next)
    }

    /// JSON for the store.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses the status read from the store.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The members whose replication slots node `uid` keeps: on the
    /// primary, its standbys; on a standby, its peers (made ahead, for when it
    /// is promoted). Never a member whose slots were released.
    pub fn slot_holders<'a>(&'a self, uid: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let primary = matches!(self.members.get(uid), Some(Assignment::Primary));
        self.members
            .iter()
            .filter(move |(u, a)| match a {
                Assignment::Standby { follow, .. } if primary => follow == uid,
                Assignment::Standby { .. } => u.as_str() != uid,
                Assignment::Primary => false,
            })
            .map(|(u, _)| u.as_str())
            .filter(move |u| !self.slots_released.iter().any(|r| r == u))
    }

    /// The uids of members assigned to stream from someone.
    pub fn standbys(&self) -> impl Iterator<Item = &str> {
        self.members
            .iter()
            .filter(|(_, a)| matches!(a, Assignment::Standby { .. }))
            .map(|(uid, _)| uid.as_str())
    }

    /// Appends a history entry, keeping the last [`HISTORY_LEN`].
    pub fn record(&mut self, entry: HistoryEntry) {
        self.history.push(entry);
        let excess = self.history.len().saturating_sub(HISTORY_LEN);
        self.history.drain(..excess);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips() {
        let mut s = Status {
            generation: 3,
            system_id: Some(u64::MAX),
            primary: Some("a".into()),
            ..Status::default()
        };
        s.members.insert("a".into(), Assignment::Primary);
        s.members.insert(
            "b".into(),
            Assignment::Standby {
                follow: "a".into(),
                host: "h".into(),
                port: 5,
            },
        );
        assert_eq!(Status::from_json(&s.to_json()).unwrap(), s);
        assert_eq!(s.standbys().collect::<Vec<_>>(), vec!["b"]);
    }

    #[test]
    fn a_gone_standby_is_forgotten_and_the_primary_and_live_members_are_not() {
        let mut s = Status {
            primary: Some("a".into()),
            sync_standbys: vec!["b".into(), "c".into()],
            ..Status::default()
        };
        s.members.insert("a".into(), Assignment::Primary);
        for u in ["b", "c"] {
            s.members.insert(
                u.into(),
                Assignment::Standby {
                    follow: "a".into(),
                    host: "h".into(),
                    port: 5,
                },
            );
            s.unhealthy_since.insert(u.into(), 1);
        }
        let next = s.without_member("b", None).unwrap();
        assert_eq!(next.members.keys().collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(next.unhealthy_since.keys().collect::<Vec<_>>(), ["c"]);
        assert_eq!(next.sync_standbys, ["c"]);
        assert_eq!(next.generation, s.generation, "no role changed");
        assert!(matches!(
            s.without_member("a", None),
            Err(RemoveRefused::Primary { .. })
        ));
        let live = s.without_member("c", Some("10.0.0.3:5432")).unwrap_err();
        assert!(live.to_string().contains("10.0.0.3:5432"), "{live}");
        assert!(matches!(
            s.without_member("zz", None),
            Err(RemoveRefused::Unknown { .. })
        ));
    }

    #[test]
    fn history_is_bounded() {
        let mut s = Status::default();
        for g in 0..(HISTORY_LEN as u64 + 5) {
            s.record(HistoryEntry {
                at_ms: g,
                generation: g,
                old_primary: None,
                new_primary: None,
                reason: "r".into(),
                kind: String::new(),
            });
        }
        assert_eq!(s.history.len(), HISTORY_LEN);
        assert_eq!(s.history[0].generation, 5);
    }

    #[test]
    fn request_outcomes_keep_the_line_users_see() {
        let cases = [
            (
                RequestOutcome::InProgress {
                    kind: "switchover".into(),
                    target: "c".into(),
                },
                "in progress: switchover to c",
            ),
            (
                RequestOutcome::Done {
                    primary: "c".into(),
                    was: "a".into(),
                },
                "done: c is primary (was a)",
            ),
            (
                RequestOutcome::Refused {
                    why: "c is tagged nofailover".into(),
                },
                "refused: c is tagged nofailover",
            ),
            (
                RequestOutcome::Failed {
                    why: "c could not take over; a stays primary".into(),
                },
                "failed: c could not take over; a stays primary",
            ),
            (RequestOutcome::Other("later: news".into()), "later: news"),
        ];
        for (outcome, line) in cases {
            let json = serde_json::to_string(&outcome).unwrap();
            assert_eq!(json, serde_json::to_string(line).unwrap());
            let back: RequestOutcome = serde_json::from_str(&json).unwrap();
            assert_eq!(back, outcome);
        }
    }

    #[test]
    fn generations_never_wrap() {
        let mut s = Status {
            generation: u64::MAX - 1,
            primary_confirmed: true,
            ..Status::default()
        };
        s.new_term(5).unwrap();
        assert_eq!(
            (s.generation, s.primary_confirmed, s.primary_since_ms),
            (u64::MAX, false, 5)
        );
        assert_eq!(s.new_term(6), Err(GenerationExhausted(u64::MAX)));
        assert_eq!(s.generation, u64::MAX);
    }
}
