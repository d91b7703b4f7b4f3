//! Scripted stories more than one test file tells.

use pgwarden_core::spec::OnPostgresCrash;
use pgwarden_core::Spec;
use pgwarden_sim::events::Happening;
use pgwarden_sim::network::Cut;
use pgwarden_sim::{SimConfig, Violation, World};

/// The fencing-window story (seed 7 of the simulation, fixed in commit
/// 9da7bee): the primary is cut off the store until its fencer kills
/// postgres, reaches the store again for one step (late in its lease: the
/// old keeper restarted postgres as primary then, `on_postgres_crash =
/// restart` sparing it the crash-verdict wait), is cut off again, and runs
/// on until a standby was promoted and 2 s more. `cfg` may break the
/// product on purpose (`old_fencing_window`) or narrow the invariants.
pub fn restart_in_the_fencing_window(cfg: SimConfig) -> Result<World, Violation> {
    let cfg = SimConfig {
        spec: Spec {
            on_postgres_crash: OnPostgresCrash::Restart,
            ..Spec::default()
        },
        ..cfg
    };
    let mut w = World::new(7, cfg);
    let up = w.run_until(300, |w| {
        w.writable().len() == 1 && w.hosts().values().filter(|h| h.streaming).count() == 2
    })?;
    assert!(up, "the cluster did not come up");
    w.run_until(30, |_| false)?;
    let old = w.writable()[0].to_string();
    w.cut(&old, Cut::Store);
    let fenced = |w: &World| {
        w.journal()
            .iter()
            .any(|(_, h)| *h == Happening::Fenced(old.clone()))
    };
    assert!(w.run_until(50, fenced)?, "{old} was never fenced");
    w.heal(&old);
    w.step()?;
    w.cut(&old, Cut::Store);
    let promoted = |w: &World| {
        w.journal()
            .iter()
            .any(|(_, h)| matches!(h, Happening::Promoted(uid) if *uid != old))
    };
    assert!(w.run_until(100, promoted)?, "no standby was promoted");
    w.run_until(20, |_| false)?;
    Ok(w)
}
