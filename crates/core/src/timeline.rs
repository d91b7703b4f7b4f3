//! Timeline histories: where a standby's past and its upstream's part ways.
//!
//! When a standby is promoted it starts a new timeline and writes a history
//! file (`0000000N.history`) listing, for each ancestor timeline, the WAL
//! position where it was left. A standby that replayed WAL of the old
//! timeline *past* that point holds changes the new primary never had (WAL
//! the old primary streamed before it was fenced, of commits nobody was
//! told about): it can never follow the new timeline and must be rewound.

use crate::lsn::Lsn;

/// The position where `timeline` ends in a history file's text: the
/// switch point recorded for it. `None` when the history does not list it
/// (the upstream's history does not go through that timeline).
///
/// Each line is `parent_tli <tab> switchpoint <tab> reason`; blank lines and
/// `#` comments are ignored.
pub fn fork_point(history: &str, timeline: u32) -> Option<Lsn> {
    history
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let tli: u32 = fields.next()?.parse().ok()?;
            let lsn: Lsn = fields.next()?.parse().ok()?;
            (tli == timeline).then_some(lsn)
        })
}

/// Whether a standby that replayed up to `replay` on `timeline` went past the
/// point where its upstream's history (`upstream_history`, of the upstream's
/// newer timeline) left that timeline. A standby exactly at the fork point
/// can still follow.
pub fn diverged(timeline: u32, replay: Lsn, upstream_history: &str) -> bool {
    fork_point(upstream_history, timeline).is_some_and(|fork| replay > fork)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HISTORY_3: &str = "1\t0/3000060\tno recovery target specified\n\n\
                             2\t0/5A0000A0\tno recovery target specified\n";

    #[test]
    fn fork_points_per_timeline() {
        assert_eq!(fork_point(HISTORY_3, 1), Some(Lsn(0x0300_0060)));
        assert_eq!(fork_point(HISTORY_3, 2), Some(Lsn(0x5A00_00A0)));
        assert_eq!(fork_point(HISTORY_3, 3), None);
        assert_eq!(fork_point("# comment\n\ngarbage line\n", 1), None);
    }

    #[test]
    fn only_a_standby_past_the_fork_has_diverged() {
        let fork = Lsn(0x5A00_00A0);
        assert!(!diverged(2, Lsn(fork.0 - 1), HISTORY_3));
        assert!(!diverged(2, fork, HISTORY_3));
        assert!(diverged(2, Lsn(fork.0 + 1), HISTORY_3));
        // Timeline 1 ended long before: anything past 0/3000060 diverged.
        assert!(diverged(1, Lsn(0x0400_0000), HISTORY_3));
        // A timeline the upstream never went through: no verdict.
        assert!(!diverged(7, Lsn(u64::MAX), HISTORY_3));
    }
}
