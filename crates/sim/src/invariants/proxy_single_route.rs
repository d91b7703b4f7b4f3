//! Invariant 1 as clients see it: no two proxies send the primary port to
//! different nodes at the same instant.
//!
//! The two-step failover promotes only after every live proxy acknowledged
//! the generation that routes nowhere, and a proxy whose lease may have
//! expired (so the sentinel stopped waiting for it) has already stopped
//! routing on its own clock. A frozen proxy passes no traffic and is not
//! counted.

use super::Invariant;
use crate::events::Event;
use crate::world::World;

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProxySingleRoute;

impl Invariant for ProxySingleRoute {
    fn name(&self) -> &'static str {
        "proxy_single_route"
    }

    fn check(&mut self, world: &World, _: &[Event]) -> Result<(), String> {
        let now = world.now_ms();
        let mut seen: Option<(&str, &str)> = None;
        for p in world.proxies() {
            let Some(target) = p.routes_primary_to(now) else {
                continue;
            };
            match seen {
                Some((other, t)) if t != target => {
                    return Err(format!(
                        "proxy {other} routes writes to {t} while proxy {} routes them to {target}",
                        p.id
                    ))
                }
                _ => seen = Some((&p.id, target)),
            }
        }
        Ok(())
    }
}
