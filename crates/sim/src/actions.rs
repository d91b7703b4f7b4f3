//! Carrying out a [`PgAction`] on the simulated postgres (`Node::execute`).
//!
//! Each action succeeds or fails the way the real tool would for the state
//! it finds: initdb and pg_basebackup refuse a non-empty directory, a clone
//! or rewind needs its source running and reachable, promote needs a server
//! in recovery. A failure stops the tick; the next tick is the retry.
//! pg_rewind also fails now and then at random (WAL the source already
//! recycled), so that the re-clone path runs: the keeper observes it and
//! plan sets the directory aside and clones it again.

use pgwarden_core::rewind::{classify_rewind_failure, RewindFailure};
use pgwarden_core::{keys, Assignment, PgAction};

use crate::ctx::Ctx;
use crate::events::{DirKind, Event, Happening};
use crate::keeper::{wanted_config, Keeper};
use crate::postgres::{Data, Dir, PgConfig};
use crate::store::Value;

/// Chance in a thousand that a pg_rewind of a diverged node fails.
const REWIND_FAILURE_PER_MILLE: u64 = 100;

impl Keeper {
    /// Executes one action.
    pub(crate) fn execute(
        &mut self,
        action: &PgAction,
        assignment: Option<&Assignment>,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), String> {
        let uid = self.uid.clone();
        ctx.note(&uid, || format!("postgres: {action:?}"));
        match action {
            PgAction::InitDb => {
                if !matches!(host(ctx, &uid)?.dir, Dir::Empty) {
                    return Err("initdb: directory is not empty".into());
                }
                let system_id = ctx.rng.next_u64();
                let first = ctx.new_record();
                replace_dir(
                    ctx,
                    &uid,
                    Dir::Data(Data::initdb(system_id, first)),
                    "initdb",
                );
            }
            PgAction::BaseBackup { host: source, .. } => self.clone_from(ctx, source)?,
            PgAction::Rewind { host: source, .. } => self.rewind(ctx, source)?,
            PgAction::WriteConfig => {
                let sync_names = self
                    .process
                    .as_ref()
                    .map(|p| p.sync_names.clone())
                    .unwrap_or_default();
                let config = wanted_config(assignment, &sync_names);
                if host(ctx, &uid)?.config_writes_fail {
                    return Err("write postgresql.conf: no space left on device".into());
                }
                let data = host_mut(ctx, &uid)?
                    .data_mut()
                    .ok_or("write config: no data directory")?;
                if matches!(config, PgConfig::Standby { .. }) {
                    data.standby_signal = true;
                }
                data.config = Some(config);
            }
            PgAction::Start => {
                let h = host_mut(ctx, &uid)?;
                if h.running {
                    return Err("start: another postmaster is running".into());
                }
                let standby = h.data().ok_or("start: no data directory")?.standby_signal;
                if self.fencer_fired(ctx) {
                    // The fencer, still armed, kills the new postmaster within
                    // its 50 ms period: long before it accepts connections.
                    ctx.note(&uid, || {
                        "fenced: postgres killed, the primary lease is still not renewed".into()
                    });
                    ctx.happen(Happening::Fenced(uid.clone()));
                    if let Some(p) = &mut self.process {
                        p.postmaster = false;
                        p.crashed_at = None;
                        p.role_ready = false;
                    }
                    return Err("postgres exited during start-up: killed (fenced)".into());
                }
                let h = host_mut(ctx, &uid)?;
                h.running = true;
                h.in_recovery = standby;
                h.streaming = false;
                h.load_config();
                let p = self.process.as_mut().ok_or("keeper not running")?;
                p.postmaster = true;
                p.crashed_at = None;
                p.role_ready = false;
            }
            PgAction::Stop => {
                let position = shut_down(ctx, &uid)?;
                if let Some(p) = &mut self.process {
                    p.postmaster = false;
                    // The end of WAL after a clean shutdown is its shutdown
                    // checkpoint: a switchover target must receive past it.
                    if position.is_some() {
                        p.last_position = position;
                    }
                }
            }
            PgAction::Reload => {
                let h = host_mut(ctx, &uid)?;
                if h.running {
                    h.load_config();
                }
            }
            PgAction::Promote => self.promote(ctx)?,
            PgAction::SetAside => {
                // The model has room to keep no copy: the old directory goes.
                if host(ctx, &uid)?.running {
                    return Err("set aside: postgres is running".into());
                }
                replace_dir(ctx, &uid, Dir::Empty, "clear for re-clone");
                if let Some(p) = &mut self.process {
                    p.system_id = None;
                    p.last_position = None;
                    p.unrewindable = false;
                }
            }
            PgAction::Wipe => {
                if host(ctx, &uid)?.running {
                    return Err("wipe: postgres is running".into());
                }
                replace_dir(ctx, &uid, Dir::Empty, "wipe");
                if let Some(p) = &mut self.process {
                    p.system_id = None;
                    p.last_position = None;
                }
            }
            PgAction::EnsureReplicationRole => {
                writable(ctx, &uid)?;
                // CREATE ROLE commits a WAL record. The keeper's connections
                // run with synchronous_commit=local, so it returns at once
                // even when commits wait for a standby (strict mode with none
                // listed yet): the keeper never wedges on its own statements.
                let record = ctx.new_record();
                if let Some(d) = host_mut(ctx, &uid)?.data_mut() {
                    d.wal.push(record);
                }
                if let Some(p) = &mut self.process {
                    p.role_ready = true;
                }
            }
            PgAction::CreateSlot(name) => {
                // On a standby too: made ahead of a promotion, unreserved.
                running(ctx, &uid)?;
                if let Some(d) = host_mut(ctx, &uid)?.data_mut() {
                    d.slots.insert(name.clone());
                }
            }
            PgAction::DropSlot(name) => {
                running(ctx, &uid)?;
                if let Some(d) = host_mut(ctx, &uid)?.data_mut() {
                    d.slots.remove(name);
                }
            }
        }
        Ok(())
    }

    fn promote(&mut self, ctx: &mut Ctx<'_>) -> Result<(), String> {
        let uid = self.uid.clone();
        let h = host(ctx, &uid)?;
        if !(h.running && h.in_recovery) {
            return Err("promote: postgres is not running in recovery".into());
        }
        let wal = h.data().map(|d| d.wal.clone()).unwrap_or_default();
        let slots = h.data().map(|d| d.slots.clone()).unwrap_or_default();
        let last_writer = ctx.last_writer.as_ref().and_then(|w| {
            let d = ctx.hosts.get(w)?.data()?;
            Some((w.clone(), d.wal.clone()))
        });
        let record = ctx.new_record();
        let h = host_mut(ctx, &uid)?;
        if let Some(d) = h.data_mut() {
            d.promote(record);
        }
        h.in_recovery = false;
        h.streaming = false;
        h.load_config();
        ctx.events.push(Event::Promoted {
            uid: uid.clone(),
            nofailover: self.nofailover,
            wal,
            last_writer,
            slots,
        });
        ctx.happen(Happening::Promoted(uid));
        Ok(())
    }

    /// pg_basebackup from `source` into an empty directory.
    fn clone_from(&mut self, ctx: &mut Ctx<'_>, source: &str) -> Result<(), String> {
        let uid = self.uid.clone();
        if !matches!(host(ctx, &uid)?.dir, Dir::Empty) {
            return Err("pg_basebackup: directory is not empty".into());
        }
        let copy = Data::clone_of(reachable_source(ctx, &uid, source)?);
        replace_dir(ctx, &uid, Dir::Data(copy), "pg_basebackup");
        ctx.happen(Happening::Cloned(uid));
        Ok(())
    }

    /// pg_rewind onto `source`; when it cannot rewind, the keeper observes
    /// that for plan (the rule is `pgwarden_core::rewind` and `plan`).
    fn rewind(&mut self, ctx: &mut Ctx<'_>, source: &str) -> Result<(), String> {
        let uid = self.uid.clone();
        let attempt = (|| {
            let h = host(ctx, &uid)?;
            if h.running {
                return Err("pg_rewind: target server must be shut down".to_string());
            }
            let mine = h.data().ok_or("pg_rewind: no data directory")?;
            let src = reachable_source(ctx, &uid, source)?;
            if src.system_id != mine.system_id {
                return Err(
                    "pg_rewind: source and target clusters are from different systems".into(),
                );
            }
            Ok((Data::clone_of(src), !mine.is_prefix_of(src)))
        })();
        let attempt = attempt.and_then(|(copy, diverged)| {
            if diverged && ctx.rng.chance(REWIND_FAILURE_PER_MILLE) {
                Err("pg_rewind: could not find WAL the source already recycled".into())
            } else {
                Ok(copy)
            }
        });
        match attempt {
            Ok(copy) => {
                replace_dir(ctx, &uid, Dir::Data(copy), "pg_rewind");
                ctx.happen(Happening::Rewound(uid));
                Ok(())
            }
            // pg_rewind's own verdict: an observed fact, which plan turns
            // into a new copy (SetAside, BaseBackup) where the spec allows;
            // a connection failure is retried on the next tick.
            Err(e) if classify_rewind_failure(&e) == RewindFailure::Unrewindable => {
                if let Some(p) = &mut self.process {
                    p.unrewindable = true;
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }
}

/// A fast shutdown. A primary writes its shutdown checkpoint and its WAL
/// senders pass it to the standbys streaming from it before it exits.
/// Returns the position of that checkpoint (or the standby's end of WAL).
fn shut_down(ctx: &mut Ctx<'_>, uid: &str) -> Result<Option<(pgwarden_core::Lsn, u32)>, String> {
    let h = host(ctx, uid)?;
    if !h.running {
        return Ok(None);
    }
    let writable = h.writable();
    let record = ctx.new_record();
    let h = host_mut(ctx, uid)?;
    let Some(d) = h.data_mut() else {
        h.kill();
        return Ok(None);
    };
    let position = (d.lsn(), d.timeline);
    if writable {
        d.wal.push(record);
    }
    let (wal, timeline, history) = (d.wal.clone(), d.timeline, d.history.clone());
    h.kill();
    if writable {
        for s in ctx.hosts.values_mut() {
            if !(s.running && s.streaming && s.upstream.as_deref() == Some(uid)) {
                continue;
            }
            if let Some(sd) = s.data_mut() {
                if crate::postgres::is_prefix(&sd.wal, &wal) {
                    sd.wal = wal.clone();
                    sd.timeline = timeline;
                    sd.history = history.clone();
                }
            }
        }
    }
    Ok(Some(position))
}

fn host<'c>(ctx: &'c Ctx<'_>, uid: &str) -> Result<&'c crate::postgres::Host, String> {
    ctx.hosts.get(uid).ok_or_else(|| format!("no host {uid}"))
}

fn host_mut<'c>(ctx: &'c mut Ctx<'_>, uid: &str) -> Result<&'c mut crate::postgres::Host, String> {
    ctx.hosts
        .get_mut(uid)
        .ok_or_else(|| format!("no host {uid}"))
}

fn running(ctx: &Ctx<'_>, uid: &str) -> Result<(), String> {
    if host(ctx, uid)?.running {
        Ok(())
    } else {
        Err("could not connect to server: postgres is not running".into())
    }
}

fn writable(ctx: &Ctx<'_>, uid: &str) -> Result<(), String> {
    if host(ctx, uid)?.writable() {
        Ok(())
    } else {
        Err("postgres does not accept writes".into())
    }
}

/// The data of `source` if `uid` can connect to it and it runs.
fn reachable_source<'c>(ctx: &'c Ctx<'_>, uid: &str, source: &str) -> Result<&'c Data, String> {
    if !ctx.net.peers(uid, source) {
        return Err(format!("could not connect to {source}"));
    }
    let h = host(ctx, source)?;
    if !h.running {
        return Err(format!("could not connect to {source}: not running"));
    }
    h.data().ok_or_else(|| format!("{source} has no data"))
}

/// Replaces a data directory, telling the checkers what was there.
fn replace_dir(ctx: &mut Ctx<'_>, uid: &str, dir: Dir, by: &'static str) {
    let cluster_system_id = match ctx.store.get(keys::STATUS).map(|e| &e.value) {
        Some(Value::Status(s)) => s.system_id,
        _ => None,
    };
    let Some(h) = ctx.hosts.get_mut(uid) else {
        return;
    };
    let before = match &h.dir {
        Dir::Empty => DirKind::Empty,
        Dir::Foreign => DirKind::Foreign,
        Dir::Data(d) => DirKind::Data(d.system_id),
    };
    let after = match &dir {
        Dir::Data(d) => Some(d.system_id),
        _ => None,
    };
    h.dir = dir;
    ctx.events.push(Event::DataReplaced {
        uid: uid.to_string(),
        before,
        after,
        cluster_system_id,
        by,
    });
}
