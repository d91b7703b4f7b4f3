//! Invariant 5: nothing the operator gave is overwritten silently.
//!
//! A data directory may be (re)filled only when it is empty, or when it
//! holds this cluster's own data (pg_rewind, or a re-clone after a failed
//! rewind). A directory of something else, or postgres data of another
//! system identifier than the one in the cluster status, must survive.

use super::Invariant;
use crate::events::{DirKind, Event};
use crate::world::World;

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoForeignOverwrite;

impl Invariant for NoForeignOverwrite {
    fn name(&self) -> &'static str {
        "no_foreign_overwrite"
    }

    fn check(&mut self, _: &World, events: &[Event]) -> Result<(), String> {
        for e in events {
            let Event::DataReplaced {
                uid,
                before,
                cluster_system_id,
                by,
                ..
            } = e
            else {
                continue;
            };
            match before {
                DirKind::Empty => {}
                DirKind::Data(sid) if Some(*sid) == *cluster_system_id => {}
                DirKind::Foreign => {
                    return Err(format!(
                        "{by} overwrote {uid}'s directory, which held files that are not postgres data"
                    ))
                }
                DirKind::Data(sid) => {
                    return Err(format!(
                        "{by} overwrote {uid}'s data of system {sid}; the cluster's is {cluster_system_id:?}"
                    ))
                }
            }
        }
        Ok(())
    }
}
