//! The Prometheus text format (version 0.0.4), written by hand.
//!
//! Both HTTP endpoints that serve metrics (the keeper's API and the proxy's
//! `--metrics-listen`) render with this writer, so the format rules live in
//! one place: each family announced by `# HELP` and `# TYPE` once, before its
//! samples; label values escaped. Only gauges and counters: every sample's
//! name is then its family's name, which keeps the output checkable by a
//! strict reader (histograms would add `_bucket`/`_sum`/`_count` series).

use std::fmt::{Display, Write};

/// The content type of what [`Exposition`] writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a metric family measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A count that only grows (it restarts from zero with the process).
    /// Its name ends in `_total`.
    Counter,
}

/// Writes families one at a time: HELP and TYPE, then the samples.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
    family: &'static str,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Exposition::default()
    }

    /// Starts a family: the samples that follow belong to it.
    pub fn family(&mut self, name: &'static str, kind: Kind, help: &str) {
        debug_assert!(
            (kind == Kind::Counter) == name.ends_with("_total"),
            "{name}: counters, and only counters, end in _total"
        );
        self.family = name;
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(self.family);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A gauge with one sample, or none when the value is unknown.
    pub fn gauge(
        &mut self,
        name: &'static str,
        help: &str,
        labels: &[(&str, &str)],
        value: Option<impl Display>,
    ) {
        self.family(name, Kind::Gauge, help);
        if let Some(v) = value {
            self.sample(labels, v);
        }
    }

    /// A counter with one sample.
    pub fn counter(
        &mut self,
        name: &'static str,
        help: &str,
        labels: &[(&str, &str)],
        value: impl Display,
    ) {
        self.family(name, Kind::Counter, help);
        self.sample(labels, value);
    }

    /// The text written so far.
    pub fn finish(self) -> String {
        self.out
    }
}

/// `1` for true, `0` for false.
pub fn flag(b: bool) -> u8 {
    u8::from(b)
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_then_samples_with_escaped_labels() {
        let mut e = Exposition::new();
        e.counter("x_total", "Things.", &[("a", "q\"\\\n")], 3);
        e.gauge("y", "Unknown.", &[], None::<u8>);
        e.family("z", Kind::Gauge, "Two.");
        e.sample(&[("k", "1")], 0.5);
        e.sample(&[("k", "2"), ("l", "m")], 1);
        assert_eq!(
            e.finish(),
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{a=\"q\\\"\\\\\\n\"} 3\n\
             # HELP y Unknown.\n# TYPE y gauge\n\
             # HELP z Two.\n# TYPE z gauge\nz{k=\"1\"} 0.5\nz{k=\"2\",l=\"m\"} 1\n"
        );
    }
}
