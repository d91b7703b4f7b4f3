//! Who can talk to whom: partitions, flaky links and store outages.
//!
//! Actors are named by id: keepers by uid (which is also their postgres'
//! host name), sentinels and proxies by theirs. A partition cuts an actor
//! off the store only (etcd's network is the one that broke), off its peers
//! only (replication breaks, the store is fine), or isolates it completely. A
//! flaky actor's store requests fail at random, before or after the store
//! applied them, which is what lets a read succeed while the renewal sent
//! just before it failed.

use std::collections::{BTreeMap, BTreeSet};

/// How an actor is cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// From the store only.
    Store,
    /// From every peer (postgres replication), not from the store.
    Peers,
    /// From the store and from every peer.
    Full,
}

/// The network's current faults.
#[derive(Debug, Clone, Default)]
pub struct Network {
    cuts: BTreeMap<String, Cut>,
    flaky: BTreeSet<String>,
    outage: bool,
}

impl Network {
    /// Whether `actor`'s requests can reach the store.
    pub fn reaches_store(&self, actor: &str) -> bool {
        !self.outage && !matches!(self.cuts.get(actor), Some(Cut::Store | Cut::Full))
    }

    /// Whether two nodes' postgres can connect to each other.
    pub fn peers(&self, a: &str, b: &str) -> bool {
        let open = |x: &str| !matches!(self.cuts.get(x), Some(Cut::Peers | Cut::Full));
        open(a) && open(b)
    }

    /// Whether `actor`'s store requests fail at random.
    pub fn is_flaky(&self, actor: &str) -> bool {
        self.flaky.contains(actor)
    }

    /// Cuts `actor` off.
    pub fn cut(&mut self, actor: &str, how: Cut) {
        self.cuts.insert(actor.to_string(), how);
    }

    /// Makes `actor`'s link flaky.
    pub fn make_flaky(&mut self, actor: &str) {
        self.flaky.insert(actor.to_string());
    }

    /// Restores `actor`'s links.
    pub fn heal(&mut self, actor: &str) {
        self.cuts.remove(actor);
        self.flaky.remove(actor);
    }

    /// Starts or ends an outage of the whole store.
    pub fn set_outage(&mut self, down: bool) {
        self.outage = down;
    }

    /// Whether the whole store is down.
    pub fn outage(&self) -> bool {
        self.outage
    }

    /// Actors with a cut or a flaky link.
    pub fn troubled(&self) -> Vec<String> {
        self.cuts
            .keys()
            .chain(self.flaky.iter())
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_outages_and_healing() {
        let mut n = Network::default();
        n.cut("a", Cut::Store);
        n.cut("b", Cut::Full);
        n.make_flaky("c");
        n.cut("d", Cut::Peers);
        assert!(n.reaches_store("d") && !n.peers("d", "c"));
        assert!(!n.reaches_store("a") && n.peers("a", "c"));
        assert!(!n.reaches_store("b") && !n.peers("a", "b"));
        assert!(n.reaches_store("c") && n.is_flaky("c"));
        assert_eq!(n.troubled(), vec!["a", "b", "c", "d"]);
        n.set_outage(true);
        assert!(!n.reaches_store("c"));
        n.set_outage(false);
        for x in ["a", "b", "c"] {
            n.heal(x);
        }
        assert!(n.reaches_store("b") && n.peers("a", "b") && !n.is_flaky("c"));
    }
}
