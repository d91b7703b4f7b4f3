//! The alert part of the spec: `[[alert_receivers]]` and `[[alerts]]` as the
//! operator writes them, and their merge with the built-in alerts into the
//! definitions the sentinel evaluates.
//!
//! Every `[[alerts]]` field is optional so that an entry named like a
//! built-in overrides just the fields it gives (`enabled = false`, a longer
//! `for`); an entry with a new name must give a metric and one threshold.
//! Mistakes are refused with the field named, before anything is stored.

use serde::{Deserialize, Serialize};

use super::builtins;
use super::metric::Metric;
use crate::duration::HumanDuration;
use crate::spec::{Spec, SpecError};

/// A threshold value. Compared by its bits, so that the spec stays `Eq`;
/// validation refuses NaN and infinities.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Threshold(pub f64);

impl PartialEq for Threshold {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Threshold {}

/// How urgent an alert is; passed on to receivers as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Someone must act now.
    Critical,
    /// Someone should look soon.
    #[default]
    Warning,
    /// For the record.
    Info,
}

impl Severity {
    /// The name receivers see.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// Where notifications go: exactly one of the three.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertReceiver {
    /// Named by `receivers = [...]` in alerts.
    pub name: String,
    /// POST the notification's JSON to this `http://` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// Base `http://` URL of an Alertmanager (its v2 API is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alertmanager: Option<String>,
    /// Run this program with the notification in its environment and on stdin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

/// What kind of receiver, with its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiverKind<'a> {
    /// POST JSON.
    Webhook(&'a str),
    /// Alertmanager v2 API.
    Alertmanager(&'a str),
    /// A program.
    Command(&'a str),
}

impl AlertReceiver {
    /// The receiver's kind, once validated (exactly one target is set).
    pub fn kind(&self) -> Option<ReceiverKind<'_>> {
        match (&self.webhook, &self.alertmanager, &self.command) {
            (Some(w), None, None) => Some(ReceiverKind::Webhook(w)),
            (None, Some(a), None) => Some(ReceiverKind::Alertmanager(a)),
            (None, None, Some(c)) => Some(ReceiverKind::Command(c)),
            _ => None,
        }
    }
}

/// One `[[alerts]]` entry as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// A built-in's name overrides it; any other name defines a new alert.
    pub name: String,
    /// The measured value (see docs/alerts.md for the list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Fires when the value goes above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<Threshold>,
    /// Clears when the value is at or below this (default: `above`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_below: Option<Threshold>,
    /// Fires when the value goes below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<Threshold>,
    /// Clears when the value is at or above this (default: `below`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_above: Option<Threshold>,
    /// How long the condition must hold before the alert fires.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<HumanDuration>,
    /// Passed on to receivers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    /// Receiver names; default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receivers: Option<Vec<String>>,
    /// Off turns the alert off (built-ins are on by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// When a threshold alert fires and when it clears.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    /// Fires when value > `fire`; clears when value <= `clear` (`clear <= fire`).
    Above {
        /// `above`.
        fire: f64,
        /// `clear_below`.
        clear: f64,
    },
    /// Fires when value < `fire`; clears when value >= `clear` (`clear >= fire`).
    Below {
        /// `below`.
        fire: f64,
        /// `clear_above`.
        clear: f64,
    },
}

impl Condition {
    /// The value is past the firing threshold.
    pub fn fires(&self, v: f64) -> bool {
        match *self {
            Condition::Above { fire, .. } => v > fire,
            Condition::Below { fire, .. } => v < fire,
        }
    }

    /// The value is back past the clearing threshold.
    pub fn clears(&self, v: f64) -> bool {
        match *self {
            Condition::Above { clear, .. } => v <= clear,
            Condition::Below { clear, .. } => v >= clear,
        }
    }

    /// The firing threshold.
    pub fn threshold(&self) -> f64 {
        match *self {
            Condition::Above { fire, .. } | Condition::Below { fire, .. } => fire,
        }
    }
}

/// What an alert watches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AlertKind {
    /// A measured value against a threshold, with hysteresis.
    Threshold {
        /// The value.
        metric: Metric,
        /// The thresholds.
        condition: Condition,
    },
    /// Fires once per completed failover or switchover; never resolves.
    Failover,
}

/// One alert as the sentinel evaluates it: a built-in with the operator's
/// overrides, or the operator's own.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Its name.
    pub name: String,
    /// What it watches.
    pub kind: AlertKind,
    /// How long the condition must hold before it fires (ms).
    pub for_ms: u64,
    /// Passed on to receivers.
    pub severity: Severity,
    /// Receiver names; `None` = all.
    pub receivers: Option<Vec<String>>,
    /// Evaluated at all.
    pub enabled: bool,
}

fn bad(field: String, why: impl Into<String>) -> SpecError {
    SpecError::Alert {
        field,
        why: why.into(),
    }
}

/// The alerts of `spec`: the built-ins, overridden by entries of the same
/// name, then the operator's own, in the order written. Disabled ones are
/// included (with `enabled: false`) so that `ctl alerts` can show them.
pub fn definitions(spec: &Spec) -> Result<Vec<Alert>, SpecError> {
    let mut names = std::collections::BTreeSet::new();
    for r in &spec.alert_receivers {
        let field = format!("alert_receivers.{}", r.name);
        if r.name.is_empty() {
            return Err(bad(
                "alert_receivers.name".into(),
                "empty name: give each receiver a name",
            ));
        }
        if !names.insert(r.name.as_str()) {
            return Err(bad(
                field,
                "two receivers have this name: give each its own",
            ));
        }
        match r.kind() {
            None => {
                return Err(bad(
                    field,
                    "give exactly one of webhook = \"http://...\", alertmanager = \"http://...\" or command = \"/path\"",
                ))
            }
            Some(ReceiverKind::Webhook(u)) | Some(ReceiverKind::Alertmanager(u))
                if !u.starts_with("http://") || u.len() <= "http://".len() =>
            {
                return Err(bad(field, format!("URL {u:?} is not an http:// URL: write it as http://HOST:PORT/PATH")))
            }
            Some(ReceiverKind::Command(c)) if !c.starts_with('/') => {
                return Err(bad(field, format!("command {c:?} is not an absolute path: give the program's full path")))
            }
            Some(_) => {}
        }
    }
    let mut alerts = builtins::builtins(spec);
    let mut seen = std::collections::BTreeSet::new();
    for rule in &spec.alerts {
        let field = |f: &str| format!("alerts.{}.{f}", rule.name);
        if rule.name.is_empty()
            || !rule
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(bad(
                format!("alerts.{}", rule.name),
                "an alert name is letters, digits and '_' (it becomes a Prometheus alert name)",
            ));
        }
        if !seen.insert(rule.name.as_str()) {
            return Err(bad(
                format!("alerts.{}", rule.name),
                "two [[alerts]] entries have this name: merge them",
            ));
        }
        for recv in rule.receivers.iter().flatten() {
            if !names.contains(recv.as_str()) {
                return Err(bad(
                    field("receivers"),
                    format!("unknown receiver {recv:?}: define it in [[alert_receivers]] first"),
                ));
            }
        }
        let existing = alerts.iter().position(|a| a.name == rule.name);
        let metric = match &rule.metric {
            Some(m) => Some(Metric::from_name(m).ok_or_else(|| {
                bad(
                    field("metric"),
                    format!(
                        "unknown metric {m:?}: use one of {}",
                        Metric::names().join(", ")
                    ),
                )
            })?),
            None => None,
        };
        let mut alert = match existing {
            Some(i) => alerts[i].clone(),
            None => {
                let Some(metric) = metric else {
                    return Err(bad(
                        field("metric"),
                        format!(
                            "missing: a new alert needs a metric (one of {})",
                            Metric::names().join(", ")
                        ),
                    ));
                };
                Alert {
                    name: rule.name.clone(),
                    kind: AlertKind::Threshold {
                        metric,
                        condition: Condition::Above {
                            fire: f64::NAN,
                            clear: f64::NAN,
                        },
                    },
                    for_ms: 0,
                    severity: Severity::Warning,
                    receivers: None,
                    enabled: true,
                }
            }
        };
        let gives_threshold = rule.metric.is_some()
            || rule.above.is_some()
            || rule.below.is_some()
            || rule.clear_below.is_some()
            || rule.clear_above.is_some();
        if let AlertKind::Threshold {
            metric: m,
            condition,
        } = &mut alert.kind
        {
            if let Some(metric) = metric {
                *m = metric;
            }
            *condition = merge_condition(rule, *condition, &field)?;
        } else if gives_threshold {
            return Err(bad(
                format!("alerts.{}", rule.name),
                "this alert is an event (it fires once per failover or switchover): it takes no metric or threshold, only for, severity, receivers and enabled",
            ));
        }
        if let Some(f) = rule.for_ {
            alert.for_ms = f.as_millis();
        }
        if let Some(s) = rule.severity {
            alert.severity = s;
        }
        if let Some(r) = &rule.receivers {
            alert.receivers = Some(r.clone());
        }
        if let Some(e) = rule.enabled {
            alert.enabled = e;
        }
        match existing {
            Some(i) => alerts[i] = alert,
            None => alerts.push(alert),
        }
    }
    Ok(alerts)
}

/// The thresholds after `rule`'s fields are applied to `current`.
fn merge_condition(
    rule: &AlertRule,
    current: Condition,
    field: &dyn Fn(&str) -> String,
) -> Result<Condition, SpecError> {
    for (name, v) in [
        ("above", rule.above),
        ("clear_below", rule.clear_below),
        ("below", rule.below),
        ("clear_above", rule.clear_above),
    ] {
        if let Some(Threshold(v)) = v {
            if !v.is_finite() {
                return Err(bad(field(name), "not a finite number"));
            }
        }
    }
    let get = |t: Option<Threshold>| t.map(|t| t.0);
    let up = rule.above.is_some() || rule.clear_below.is_some();
    let down = rule.below.is_some() || rule.clear_above.is_some();
    if up && down {
        return Err(bad(
            field("above"),
            "give either above (with clear_below) or below (with clear_above), not both",
        ));
    }
    let condition = match (current, up, down) {
        (_, false, false) => current,
        (Condition::Above { fire, .. }, true, _) | (Condition::Below { fire, .. }, true, _)
            if rule.above.is_some() || matches!(current, Condition::Above { .. }) =>
        {
            let fire = get(rule.above).unwrap_or(fire);
            Condition::Above {
                fire,
                clear: get(rule.clear_below).unwrap_or(fire),
            }
        }
        (Condition::Above { fire, .. }, _, true) | (Condition::Below { fire, .. }, _, true)
            if rule.below.is_some() || matches!(current, Condition::Below { .. }) =>
        {
            let fire = get(rule.below).unwrap_or(fire);
            Condition::Below {
                fire,
                clear: get(rule.clear_above).unwrap_or(fire),
            }
        }
        (_, true, _) => {
            return Err(bad(
                field("clear_below"),
                "clear_below needs above: this alert fires below a threshold (use clear_above)",
            ))
        }
        (_, _, _) => {
            return Err(bad(
                field("clear_above"),
                "clear_above needs below: this alert fires above a threshold (use clear_below)",
            ))
        }
    };
    match condition {
        Condition::Above { fire, clear } if fire.is_nan() || clear.is_nan() => Err(bad(
            field("above"),
            "missing: a new alert needs above = N or below = N",
        )),
        Condition::Above { fire, clear } if clear > fire => Err(bad(
            field("clear_below"),
            format!("clear_below = {clear} is above above = {fire}: it must be at or below it (that gap is the hysteresis)"),
        )),
        Condition::Below { fire, clear } if clear < fire => Err(bad(
            field("clear_above"),
            format!("clear_above = {clear} is below below = {fire}: it must be at or above it (that gap is the hysteresis)"),
        )),
        c => Ok(c),
    }
}
