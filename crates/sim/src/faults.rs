//! Random faults, drawn from the seed at the start of every step.
//!
//! Rates are per step (100 ms) and tuned so that a 30-second run sees a
//! handful of failures and recoveries: a keeper or postgres dies about once
//! every 10 s, partitions and freezes are a little rarer, and whatever broke
//! heals after a few seconds on average, long enough for a lease to expire
//! and a failover to happen, short enough for the old primary to come back
//! and rejoin within the run. Half of the kills and cuts aim at the current
//! writer, since that is where the safety arguments are tested.

use pgwarden_core::spec::RequestKind;

use crate::network::Cut;
use crate::world::World;

/// Per-mille chances per step.
const CRASH_KEEPER: u64 = 8;
const CRASH_POSTGRES: u64 = 6;
const RESTART_KEEPER: u64 = 25;
const CUT: u64 = 8;
const FLAKY: u64 = 4;
const HEAL: u64 = 30;
const OUTAGE: u64 = 2;
const OUTAGE_END: u64 = 60;
const FREEZE: u64 = 5;
const THAW: u64 = 30;
const STALL: u64 = 6;
const OPERATOR: u64 = 4;
const RESUME: u64 = 40;

/// Injects this step's faults; returns how many ticks the step lasts.
pub fn inject(w: &mut World) -> u64 {
    let writer = w.writable().first().map(|s| s.to_string());
    if w.rng.chance(CRASH_KEEPER) {
        let alive: Vec<String> = w
            .keepers
            .iter()
            .filter(|k| k.alive())
            .map(|k| k.uid.clone())
            .collect();
        if let Some(uid) = aim(w, &alive, writer.as_deref()) {
            w.crash_keeper(&uid);
        }
    }
    if w.rng.chance(CRASH_POSTGRES) {
        let running: Vec<String> = w
            .hosts()
            .values()
            .filter(|h| h.running)
            .map(|h| h.uid.clone())
            .collect();
        if let Some(uid) = aim(w, &running, writer.as_deref()) {
            w.crash_postgres(&uid);
        }
    }
    let down: Vec<String> = w
        .keepers
        .iter()
        .filter(|k| !k.alive())
        .map(|k| k.uid.clone())
        .collect();
    for uid in down {
        if w.rng.chance(RESTART_KEEPER) {
            w.restart_keeper(&uid);
        }
    }
    let actors: Vec<String> = w
        .keepers
        .iter()
        .map(|k| k.uid.clone())
        .chain(w.sentinels.iter().map(|s| s.id.clone()))
        .chain(w.proxies.iter().map(|p| p.id.clone()))
        .collect();
    if w.rng.chance(CUT) {
        if let Some(actor) = aim(w, &actors, writer.as_deref()) {
            let how = match w.rng.below(3) {
                0 => Cut::Store,
                1 => Cut::Peers,
                _ => Cut::Full,
            };
            w.cut(&actor, how);
        }
    }
    if w.rng.chance(FLAKY) {
        if let Some(actor) = aim(w, &actors, writer.as_deref()) {
            w.net.make_flaky(&actor);
            w.fault(format!("{actor}'s link is flaky"));
        }
    }
    for actor in w.net.troubled() {
        if w.rng.chance(HEAL) {
            w.heal(&actor);
        }
    }
    if w.net.outage() {
        if w.rng.chance(OUTAGE_END) {
            w.net.set_outage(false);
            w.fault("the store is back".into());
        }
    } else if w.rng.chance(OUTAGE) {
        w.net.set_outage(true);
        w.fault("the store is unreachable for everyone".into());
    }
    freeze_and_thaw(w);
    operator(w);
    if w.rng.chance(STALL) {
        let ticks = w.rng.between(2, 15);
        w.fault(format!(
            "every loop stalls for {} ms (timers still fire)",
            ticks * crate::config::TICK_MS
        ));
        return ticks;
    }
    1
}

fn freeze_and_thaw(w: &mut World) {
    let sentinels: Vec<(String, bool)> = w
        .sentinels
        .iter()
        .map(|s| (s.id.clone(), s.frozen))
        .collect();
    let proxies: Vec<(String, bool)> = w.proxies.iter().map(|p| (p.id.clone(), p.frozen)).collect();
    for (id, frozen) in sentinels {
        if frozen && w.rng.chance(THAW) {
            w.freeze_sentinel(&id, false);
        } else if !frozen && w.rng.chance(FREEZE) {
            w.freeze_sentinel(&id, true);
        }
    }
    for (id, frozen) in proxies {
        if frozen && w.rng.chance(THAW) {
            w.freeze_proxy(&id, false);
        } else if !frozen && w.rng.chance(FREEZE) {
            w.freeze_proxy(&id, true);
        }
    }
}

/// An operator's requests: switchovers, manual failovers, pauses.
fn operator(w: &mut World) {
    if w.spec().paused {
        if w.rng.chance(RESUME) {
            w.set_paused(false);
        }
        return;
    }
    if !w.rng.chance(OPERATOR) {
        return;
    }
    let uids: Vec<String> = w.keepers().iter().map(|k| k.uid.clone()).collect();
    let to = w.rng.index(uids.len()).map(|i| uids[i].clone());
    match w.rng.below(10) {
        0..=3 => w.request(RequestKind::Switchover, None, false),
        4..=6 => w.request(RequestKind::Switchover, to.as_deref(), false),
        7 | 8 => w.request(RequestKind::Failover, to.as_deref(), false),
        _ => w.set_paused(true),
    }
}

/// Picks a victim: the writer half of the time when it is a candidate.
fn aim(w: &mut World, candidates: &[String], writer: Option<&str>) -> Option<String> {
    if let Some(wr) = writer.filter(|wr| candidates.iter().any(|c| c == wr)) {
        if w.rng.chance(500) {
            return Some(wr.to_string());
        }
    }
    let i = w.rng.index(candidates.len())?;
    Some(candidates[i].clone())
}
