//! `pgwarden ctl`: the operator's command line.
//!
//! ctl never decides anything: it writes requests (the spec) and reads what
//! the sentinel and keepers published. Every failure is one line naming the
//! problem and the fix, with a non-zero exit.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use pgwarden_core::{keys, Spec};
use pgwarden_store::{CasOutcome, Store};

use crate::view::{self, Snapshot};
use crate::StoreArgs;

mod alerts;
mod node_ops;
mod role_change;

/// `pgwarden ctl` flags.
#[derive(Debug, Args)]
pub struct CtlArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// ctl's commands.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Create the cluster in the store with a spec (defaults, or a TOML file).
    Init {
        /// TOML file with spec fields; missing fields take their defaults.
        #[arg(long)]
        spec: Option<PathBuf>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Replace the spec of an existing cluster (and let the sentinel
        /// decide afresh). Data directories are never touched.
        #[arg(long)]
        force: bool,
    },
    /// Show the cluster: members, roles, lag, proxies.
    #[command(alias = "list")]
    Status {
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show or change the cluster spec.
    Spec {
        #[command(subcommand)]
        command: SpecCommand,
    },
    /// Hand the primary role to a standby with no write lost (planned).
    Switchover {
        /// The standby to promote (default: the best one).
        #[arg(long)]
        to: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Give up following it after this long (it goes on).
        #[arg(long, default_value = "60s")]
        timeout: pgwarden_core::HumanDuration,
    },
    /// Promote a standby when the primary is gone (or automatic failover is
    /// paused or cannot choose).
    Failover {
        /// The standby to promote.
        #[arg(long)]
        to: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Promote even a standby that could lose acknowledged writes.
        #[arg(long)]
        force: bool,
        /// Give up following it after this long (it goes on).
        #[arg(long, default_value = "60s")]
        timeout: pgwarden_core::HumanDuration,
    },
    /// Restart postgres, rolling: standbys first, then a switchover, then
    /// the old primary.
    Restart {
        /// Only this node.
        #[arg(long)]
        uid: Option<String>,
        /// Only nodes with parameters waiting for a restart.
        #[arg(long)]
        pending: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Throw a standby's data away and clone it again from the primary.
    Reinit {
        /// The standby.
        uid: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Forget a member that is gone for good (its slots are dropped).
    Remove {
        /// The member.
        uid: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Stop automatic failover; keepers keep running postgres.
    Pause,
    /// Resume automatic failover.
    Resume,
    /// What alerts fire and the recent transitions (docs/alerts.md).
    Alerts {
        /// Print JSON (the notification fields) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: Option<AlertsCommand>,
    },
}

/// `ctl alerts` commands.
#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Print a Prometheus rules file equivalent to the configured alerts.
    PrometheusRules,
}

/// `ctl spec` commands.
#[derive(Debug, Subcommand)]
pub enum SpecCommand {
    /// Print the spec as TOML.
    Show,
    /// Set fields: `max_lag_bytes=1048576`, `pg_parameters.work_mem=64MB`.
    Set {
        /// KEY=VALUE pairs.
        #[arg(required = true)]
        assignments: Vec<String>,
    },
}

/// How `ctl status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table for people.
    Table,
    /// One JSON object for scripts.
    Json,
}

/// Runs one ctl command.
pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    let store = args.store.open().await?;
    match args.command {
        CtlCommand::Init { spec, yes, force } => init(&store, spec, yes, force).await,
        CtlCommand::Status { output } => {
            // An unreadable spec or status is shown, not an error: status
            // is how an operator finds out.
            let snap = view::load(&store).await.context("read the cluster")?;
            if snap.spec.is_none() && snap.spec_problem.is_none() {
                bail!(not_initialised(&store));
            }
            let mut out = std::io::stdout().lock();
            match output {
                Output::Json => writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&crate::read_model::to_json(
                        store.cluster(),
                        &snap
                    ))?
                )?,
                Output::Table => {
                    write!(out, "{}", crate::read_model::table(store.cluster(), &snap))?;
                    write!(out, "{}", alerts::status_line(&store).await)?;
                }
            }
            Ok(())
        }
        CtlCommand::Alerts {
            command: Some(AlertsCommand::PrometheusRules),
            ..
        } => alerts::prometheus_rules(&store).await,
        CtlCommand::Alerts {
            json,
            command: None,
        } => alerts::show(&store, json).await,
        CtlCommand::Spec {
            command: SpecCommand::Show,
        } => {
            let snap = load_initialised(&store).await?;
            print!("{}", snap.spec.unwrap_or_default().to_toml());
            Ok(())
        }
        CtlCommand::Spec {
            command: SpecCommand::Set { assignments },
        } => {
            let snap = view::load(&store).await.context("read the cluster")?;
            if snap.spec.is_none() && snap.spec_problem.is_none() {
                bail!(not_initialised(&store));
            }
            // Setting fields over an unreadable spec repairs it: the rest
            // starts from the defaults.
            let current = snap.spec.unwrap_or_default();
            let mut proposed = current.clone();
            for a in &assignments {
                set_field(&mut proposed, a)?;
            }
            let changed: std::collections::BTreeMap<String, String> = proposed
                .pg_parameters
                .iter()
                .filter(|(k, v)| current.pg_parameters.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            check_with_postgres(&changed).await?;
            let repaired = update_spec_or_repair(
                &store,
                |spec| {
                    for a in &assignments {
                        set_field(spec, a)?;
                    }
                    Ok(())
                },
                true,
            )
            .await?;
            if let Some(problem) = repaired {
                println!("the stored spec could not be used ({problem}): replaced by the defaults with your settings");
            }
            println!("spec updated");
            if !changed.is_empty() {
                println!(
                    "postgres parameters are applied on every node with a reload; those that need a restart show as \"pending restart\" in `pgwarden ctl status` (apply them with `pgwarden ctl restart --pending`)"
                );
            }
            Ok(())
        }
        CtlCommand::Switchover { to, yes, timeout } => {
            let kind = pgwarden_core::spec::RequestKind::Switchover;
            let ask = role_change::Ask {
                kind,
                to,
                force: false,
                yes,
                timeout: timeout.0,
            };
            role_change::run(&store, ask).await
        }
        CtlCommand::Failover {
            to,
            yes,
            force,
            timeout,
        } => {
            let kind = pgwarden_core::spec::RequestKind::Failover;
            let ask = role_change::Ask {
                kind,
                to: Some(to),
                force,
                yes,
                timeout: timeout.0,
            };
            role_change::run(&store, ask).await
        }
        CtlCommand::Restart { uid, pending, yes } => {
            node_ops::restart(&store, uid, pending, yes).await
        }
        CtlCommand::Reinit { uid, yes } => node_ops::reinit(&store, uid, yes).await,
        CtlCommand::Remove { uid, yes } => node_ops::remove(&store, uid, yes).await,
        CtlCommand::Pause => {
            update_spec(&store, |s| {
                s.paused = true;
                Ok(())
            })
            .await?;
            println!(
                "cluster {} paused: no automatic failover until `pgwarden ctl resume`",
                store.cluster()
            );
            Ok(())
        }
        CtlCommand::Resume => {
            update_spec(&store, |s| {
                s.paused = false;
                Ok(())
            })
            .await?;
            println!(
                "cluster {} resumed: automatic failover is on",
                store.cluster()
            );
            Ok(())
        }
    }
}

/// Reads the cluster, refusing one that was never initialised.
pub async fn load_initialised(store: &Store) -> anyhow::Result<Snapshot> {
    let snap = view::load(store).await.context("read the cluster")?;
    if let Some(problem) = &snap.spec_problem {
        bail!("{problem}");
    }
    if snap.spec.is_none() {
        bail!(not_initialised(store));
    }
    Ok(snap)
}

fn not_initialised(store: &Store) -> String {
    format!(
        "cluster {:?} is not initialised in etcd at {}: run `pgwarden ctl init` first (or check --cluster-name)",
        store.cluster(),
        store.endpoints().join(",")
    )
}

async fn init(
    store: &Store,
    spec_file: Option<PathBuf>,
    yes: bool,
    force: bool,
) -> anyhow::Result<()> {
    let spec = match &spec_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read spec file {}", path.display()))?;
            Spec::from_toml(&text).with_context(|| format!("spec file {}", path.display()))?
        }
        None => Spec::default(),
    };
    let existing = store
        .get(keys::SPEC)
        .await
        .context("read the cluster spec")?;
    match existing {
        None => {
            if store.create(keys::SPEC, spec.to_json(), None).await.context("write the cluster spec")?.is_none() {
                bail!("cluster {:?} was initialised by someone else just now: nothing changed", store.cluster());
            }
            println!("cluster {} initialised in etcd at {}", store.cluster(), store.endpoints().join(","));
            Ok(())
        }
        Some(_) if !force => bail!(
            "cluster {:?} already exists in etcd at {}: nothing changed; to replace its spec run `pgwarden ctl init --force` (data directories are never touched)",
            store.cluster(),
            store.endpoints().join(",")
        ),
        Some(current) => {
            confirm(
                &format!(
                    "Replace the spec of cluster {} and let the sentinel choose roles afresh (keepers' data is kept)?",
                    store.cluster()
                ),
                yes,
            )?;
            match store.cas(keys::SPEC, spec.to_json(), current.mod_revision, &[], None).await.context("write the cluster spec")? {
                CasOutcome::Written { .. } => {}
                CasOutcome::Conflict => bail!("the spec changed while replacing it: nothing changed; run the command again"),
            }
            // A fresh status, but with a higher generation: keepers and
            // proxies ignore any status older than the one they applied.
            let old = view::load(store).await.context("read the cluster status")?;
            // Past every generation carried out, not only the status's own:
            // a status that did not parse reads as generation 0.
            let carried_out = old
                .keepers
                .values()
                .map(|r| r.applied_generation)
                .chain(old.proxies.values().copied());
            let generation = generation_after(old.status.generation, carried_out).ok_or_else(|| {
                anyhow!("the status generation cannot grow past {}: nothing reset; the status must be rewritten by hand", u64::MAX)
            })?;
            let fresh = pgwarden_core::Status {
                generation,
                history: old.status.history.clone(),
                ..pgwarden_core::Status::default()
            };
            match store
                .cas(keys::STATUS, fresh.to_json(), old.status_revision, &[], None)
                .await
                .context("reset the cluster status")?
            {
                CasOutcome::Written { .. } => {}
                CasOutcome::Conflict => bail!(
                    "the status changed while resetting it: the spec is replaced; run `pgwarden ctl init --force` again to reset the roles"
                ),
            }
            println!("cluster {} re-initialised: spec replaced, data directories untouched", store.cluster());
            Ok(())
        }
    }
}

/// The generation of a reset status: one past the status's own and every
/// one a keeper or proxy carried out (they ignore older statuses); `None`
/// on overflow.
fn generation_after(status: u64, carried_out: impl IntoIterator<Item = u64>) -> Option<u64> {
    carried_out
        .into_iter()
        .fold(status, u64::max)
        .checked_add(1)
}

/// Asks on a terminal; refuses without one unless `--yes`.
pub fn confirm(question: &str, yes: bool) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("{question} Refusing without a terminal to ask on: pass --yes to confirm");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("read the answer")?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        bail!("not confirmed: nothing changed")
    }
}

/// Lets a local postgres check parameter values before they are stored, so a
/// bad value never reaches a node. Without postgres binaries here, the keepers
/// still check before applying.
async fn check_with_postgres(
    parameters: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<()> {
    if parameters.is_empty() {
        return Ok(());
    }
    let Ok(mut bins) = pgwarden_pg::PgBins::locate(None) else {
        eprintln!("warning: postgres binaries not found here: parameters not checked by ctl; each keeper checks them before applying");
        return Ok(());
    };
    if nix::unistd::geteuid().is_root() {
        // postgres refuses to run as root, even to check a value.
        match nix::unistd::User::from_name("postgres") {
            Ok(Some(u)) => {
                bins.run_as = Some(pgwarden_pg::RunAs {
                    uid: u.uid.as_raw(),
                    gid: u.gid.as_raw(),
                })
            }
            _ => {
                eprintln!("warning: running as root without a postgres OS user: parameters not checked by ctl; each keeper checks them before applying");
                return Ok(());
            }
        }
    }
    pgwarden_pg::check_parameters(&bins, parameters)
        .await
        .map_err(|e| anyhow!("{e}: nothing changed"))
}

/// Read-modify-write of the spec with compare-and-swap, validated before the write.
async fn update_spec(
    store: &Store,
    change: impl Fn(&mut Spec) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    update_spec_or_repair(store, change, false)
        .await
        .map(|_| ())
}

/// [`update_spec`]; with `repair`, a stored spec that cannot be used is
/// replaced by the defaults with `change` applied, and the reason it could
/// not be used is returned.
async fn update_spec_or_repair(
    store: &Store,
    change: impl Fn(&mut Spec) -> anyhow::Result<()>,
    repair: bool,
) -> anyhow::Result<Option<String>> {
    for _ in 0..5 {
        let current = store
            .get(keys::SPEC)
            .await
            .context("read the cluster spec")?
            .ok_or_else(|| {
                anyhow!(
                    "cluster {:?} is not initialised in etcd at {}: run `pgwarden ctl init` first",
                    store.cluster(),
                    store.endpoints().join(",")
                )
            })?;
        let (mut spec, problem) = match Spec::from_json(&current.value) {
            Ok(spec) => (spec, None),
            Err(e) if repair => (Spec::default(), Some(e.to_string())),
            Err(e) => {
                return Err(e).context("the cluster spec in etcd (key spec) cannot be used; repair it with `pgwarden ctl spec set KEY=VALUE` or `pgwarden ctl init --force --spec FILE`")
            }
        };
        change(&mut spec)?;
        spec.validate()?;
        match store
            .cas(keys::SPEC, spec.to_json(), current.mod_revision, &[], None)
            .await
            .context("write the cluster spec")?
        {
            CasOutcome::Written { .. } => return Ok(problem),
            CasOutcome::Conflict => continue,
        }
    }
    bail!("the spec kept changing under us: nothing changed; try again")
}

/// Applies one `KEY=VALUE` to the spec, through its TOML form so every field
/// and its type are handled by the same parser as `ctl init --spec`.
fn set_field(spec: &mut Spec, assignment: &str) -> anyhow::Result<()> {
    let (key, value) = assignment.split_once('=').ok_or_else(|| {
        anyhow!("{assignment:?} is not KEY=VALUE: write e.g. pg_parameters.work_mem=64MB")
    })?;
    let key = key.trim();
    let mut doc: toml::Table = toml::from_str(&spec.to_toml()).context("render the spec")?;
    let value = parse_value(value);
    match key.split_once('.') {
        Some((list @ ("alerts" | "alert_receivers"), rest)) => {
            let (name, field) = rest.split_once('.').ok_or_else(|| {
                anyhow!("{key:?} names no field: write {list}.NAME.FIELD=VALUE, e.g. alerts.member_gone.for=1m")
            })?;
            set_named(&mut doc, list, name, field, value)?;
        }
        Some((table, sub)) => {
            let entry = doc
                .entry(table.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(t) = entry else {
                bail!("spec field {table} has no sub-fields")
            };
            // Parameters are strings to postgres whatever they look like.
            let value = toml::Value::String(match value {
                toml::Value::String(s) => s,
                other => other.to_string(),
            });
            t.insert(sub.to_string(), value);
        }
        None => {
            doc.insert(key.to_string(), value);
        }
    }
    *spec = Spec::from_toml(&toml::to_string(&doc)?)?;
    Ok(())
}

/// Sets `field` of the entry called `name` in the array of tables `list`
/// (`[[alerts]]`, `[[alert_receivers]]`), adding the entry if there is none:
/// `alerts.member_gone.enabled=false` overrides a built-in in place.
fn set_named(
    doc: &mut toml::Table,
    list: &str,
    name: &str,
    field: &str,
    value: toml::Value,
) -> anyhow::Result<()> {
    let entry = doc
        .entry(list.to_string())
        .or_insert_with(|| toml::Value::Array(Vec::new()));
    let toml::Value::Array(items) = entry else {
        bail!("spec field {list} is not a list")
    };
    let found = items
        .iter()
        .position(|t| t.get("name").and_then(|n| n.as_str()) == Some(name));
    let index = match found {
        Some(i) => i,
        None => {
            let mut t = toml::Table::new();
            t.insert("name".into(), toml::Value::String(name.to_string()));
            items.push(toml::Value::Table(t));
            items.len() - 1
        }
    };
    let toml::Value::Table(t) = &mut items[index] else {
        bail!("spec field {list} holds something that is not a table")
    };
    let value = match (field, value) {
        // A list of receiver names, comma-separated.
        ("receivers", toml::Value::String(s)) => toml::Value::Array(
            s.split(',')
                .map(|r| toml::Value::String(r.trim().to_string()))
                .filter(|r| r.as_str() != Some(""))
                .collect(),
        ),
        (_, toml::Value::String(s)) => match s.parse::<f64>() {
            Ok(f) if f.is_finite() => toml::Value::Float(f),
            _ => toml::Value::String(s),
        },
        (_, v) => v,
    };
    t.insert(field.to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    let raw = raw.trim();
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    match raw {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_status_outranks_every_generation_carried_out() {
        // An unreadable status reads as generation 0; keepers carried out 41.
        assert_eq!(generation_after(0, [41, 7, 3]), Some(42));
        assert_eq!(generation_after(9, [4]), Some(10));
        assert_eq!(generation_after(5, []), Some(6));
        assert_eq!(generation_after(u64::MAX, []), None);
        assert_eq!(generation_after(0, [u64::MAX]), None);
    }

    #[test]
    fn set_field_edits_alerts_in_place() {
        let mut spec = Spec::default();
        set_field(
            &mut spec,
            "alert_receivers.ops.webhook=http://10.0.0.9:9099/hook",
        )
        .unwrap();
        set_field(&mut spec, "alerts.member_gone.for=1m").unwrap();
        set_field(&mut spec, "alerts.member_gone.receivers=ops").unwrap();
        set_field(&mut spec, "alerts.lag.metric=replication_lag_bytes").unwrap_err();
        set_field(&mut spec, "alerts.data_disk_free.below=5.5").unwrap();
        set_field(&mut spec, "alerts.data_disk_free.clear_above=8").unwrap();
        let gone = spec
            .alerts
            .iter()
            .find(|a| a.name == "member_gone")
            .unwrap();
        assert_eq!(gone.for_.map(|d| d.as_millis()), Some(60_000));
        assert_eq!(gone.receivers, Some(vec!["ops".to_string()]));
        let disk = spec
            .alerts
            .iter()
            .find(|a| a.name == "data_disk_free")
            .unwrap();
        assert_eq!(disk.below.map(|t| t.0), Some(5.5));
        assert_eq!(
            spec.alert_receivers[0].webhook.as_deref(),
            Some("http://10.0.0.9:9099/hook")
        );
        // A mistake names the field; the spec is unchanged.
        let before = spec.clone();
        let err = set_field(&mut spec, "alerts.member_gone.receivers=nobody").unwrap_err();
        assert!(
            err.to_string().contains("alerts.member_gone.receivers"),
            "{err}"
        );
        assert_eq!(spec, before);
        assert!(set_field(&mut spec, "alerts.member_gone=1").is_err());
    }

    #[test]
    fn set_field_handles_types_and_nested_parameters() {
        let mut spec = Spec::default();
        set_field(&mut spec, "max_lag_bytes=1024").unwrap();
        set_field(&mut spec, "paused=true").unwrap();
        set_field(&mut spec, "pg_parameters.work_mem=64MB").unwrap();
        set_field(&mut spec, "pg_parameters.max_connections=200").unwrap();
        set_field(&mut spec, "primary_lease_ttl=5s").unwrap();
        set_field(&mut spec, "pg_require_ssl=true").unwrap();
        assert!(spec.pg_require_ssl);
        assert_eq!(spec.max_lag_bytes, 1024);
        assert!(spec.paused);
        assert_eq!(spec.pg_parameters["work_mem"], "64MB");
        assert_eq!(spec.pg_parameters["max_connections"], "200");
        assert_eq!(spec.primary_lease_ttl.as_millis(), 5000);
    }

    #[test]
    fn set_field_rejects_unknown_and_invalid_values() {
        let mut spec = Spec::default();
        assert!(set_field(&mut spec, "no_such=1")
            .unwrap_err()
            .to_string()
            .contains("no_such"));
        assert!(set_field(&mut spec, "pg_parameters.port=5433").is_err());
        assert!(set_field(&mut spec, "nonsense").is_err());
        assert_eq!(spec, Spec::default());
    }
}
