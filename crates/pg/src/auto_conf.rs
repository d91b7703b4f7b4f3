//! Undoing `ALTER SYSTEM` of the parameters pgwarden manages, while postgres
//! runs.
//!
//! The keeper strips managed parameters from postgresql.auto.conf before
//! every start, but an `ALTER SYSTEM SET synchronous_standby_names = ''`
//! followed by `pg_reload_conf()` would still apply until the next start:
//! postgres reads postgresql.auto.conf after postgresql.conf, so it wins.
//! The keeper therefore asks postgres each tick which settings the file
//! holds (`pg_file_settings` parses the files as they are now, not as they
//! were loaded), resets the managed ones with `ALTER SYSTEM RESET` (postgres
//! itself serialises that against a concurrent `ALTER SYSTEM`, so nothing an
//! operator set in between is lost), and reloads.

use crate::render::is_managed_parameter;
use crate::{PgClient, PgError};

/// Every parameter named in postgresql.auto.conf, comma-separated.
const AUTO_CONF_NAMES_SQL: &str = "SELECT string_agg(DISTINCT name, ',') FROM pg_file_settings \
     WHERE sourcefile LIKE '%/postgresql.auto.conf'";

/// Resets the managed parameters that postgresql.auto.conf sets and reloads
/// postgres when there were any; returns their names (lowercase, sorted).
pub async fn reset_managed_auto_conf(client: &PgClient) -> Result<Vec<String>, PgError> {
    let names = client
        .query_one_string(AUTO_CONF_NAMES_SQL)
        .await?
        .unwrap_or_default();
    let managed = managed_names(&names);
    for name in &managed {
        // `name` is one of our own fixed parameter names, so it needs no quoting.
        client
            .query_one_string(&format!("ALTER SYSTEM RESET {name}"))
            .await?;
    }
    if !managed.is_empty() {
        client.query_one_string("SELECT pg_reload_conf()").await?;
    }
    Ok(managed)
}

/// The managed names among a comma-separated list, lowercase and sorted.
fn managed_names(list: &str) -> Vec<String> {
    let mut names: Vec<String> = list
        .split(',')
        .map(str::trim)
        // `include` and its kin are directives: ALTER SYSTEM cannot write
        // them, and the start-time strip removes a hand-written one.
        .filter(|n| is_managed_parameter(n) && !n.to_ascii_lowercase().starts_with("include"))
        .map(str::to_lowercase)
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::managed_names;

    #[test]
    fn only_managed_names_are_reset() {
        assert_eq!(
            managed_names("work_mem,synchronous_standby_names,Port,work_mem,include_dir"),
            vec!["port".to_string(), "synchronous_standby_names".to_string()]
        );
        assert!(managed_names("").is_empty());
        assert!(managed_names("work_mem,shared_buffers").is_empty());
    }
}
