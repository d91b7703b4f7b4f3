//! `ctl alerts`: what is firing and the recent transitions (table or
//! JSON, the same fields as the notifications), and `ctl alerts
//! prometheus-rules`: the configured alerts as a Prometheus rules file.

use std::fmt::Write;

use anyhow::Context;
use pgwarden_core::alerts::{self, fmt_value, Notification};
use pgwarden_store::Store;

use crate::alerts::View;

/// `ctl alerts [--json]`.
pub async fn show(store: &Store, json: bool) -> anyhow::Result<()> {
    super::load_initialised(store).await?;
    let stored = crate::alerts::load(store).await?;
    let view = crate::alerts::view(store.cluster(), &stored.state);
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", table(&view));
    }
    Ok(())
}

/// `ctl alerts prometheus-rules`.
pub async fn prometheus_rules(store: &Store) -> anyhow::Result<()> {
    let snap = super::load_initialised(store).await?;
    let spec = snap.spec.unwrap_or_default();
    let defs = alerts::definitions(&spec).context("read the spec's alerts")?;
    print!("{}", alerts::prometheus::rules(store.cluster(), &defs));
    Ok(())
}

/// The line `ctl status` prints: how many alerts fire.
pub async fn status_line(store: &Store) -> String {
    match crate::alerts::load(store).await {
        Ok(s) => {
            let firing: Vec<String> = s
                .state
                .firing()
                .map(|i| match &i.member {
                    Some(m) => format!("{} on {m}", i.name),
                    None => i.name.clone(),
                })
                .collect();
            match firing.len() {
                0 => "alerts: none firing\n".to_string(),
                n => format!(
                    "alerts: {n} firing ({}); see `pgwarden ctl alerts`\n",
                    firing.join(", ")
                ),
            }
        }
        Err(e) => format!("alerts: unknown ({e:#})\n"),
    }
}

fn table(view: &View) -> String {
    let mut out = String::new();
    let row = |out: &mut String, n: &Notification| {
        let _ = writeln!(
            out,
            "{:<6} {:<20} {:<9} {:<9} {:<10} {:>12} {:>12}  {}  {}",
            n.id,
            n.name,
            n.state.as_str(),
            n.severity.as_str(),
            n.member.as_deref().unwrap_or("-"),
            n.value.map(fmt_value).unwrap_or_else(|| "-".into()),
            n.threshold.map(fmt_value).unwrap_or_else(|| "-".into()),
            n.since,
            n.summary
        );
    };
    let header = format!(
        "{:<6} {:<20} {:<9} {:<9} {:<10} {:>12} {:>12}  {:<24}  SUMMARY\n",
        "ID", "NAME", "STATE", "SEVERITY", "MEMBER", "VALUE", "THRESHOLD", "SINCE"
    );
    let _ = writeln!(out, "Firing: {}", view.firing.len());
    if !view.firing.is_empty() {
        out.push_str(&header);
        for n in &view.firing {
            row(&mut out, n);
        }
    }
    let _ = writeln!(
        out,
        "\nRecent transitions (newest first): {}",
        view.recent.len()
    );
    if !view.recent.is_empty() {
        out.push_str(&header);
        for n in &view.recent {
            row(&mut out, n);
        }
    }
    if view.undelivered > 0 || view.dropped > 0 {
        let _ = writeln!(
            out,
            "\nUndelivered: {} (dropped from a full outbox: {})",
            view.undelivered, view.dropped
        );
    }
    out
}
