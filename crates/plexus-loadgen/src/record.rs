//! One measurement as a JSON line: the labels of the run, then the figures.

use std::fs::OpenOptions;
use std::io::Write;

pub use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

use crate::cpu::Usage;

/// A latency histogram in microseconds, 1 µs to 60 s, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// The figures of one measurement: named values, and the latency histogram they were read
/// from.
pub struct Record {
    figures: Map<String, Value>,
    latencies: Option<Histogram<u64>>,
}

impl Record {
    pub(crate) fn new() -> Self {
        Self {
            figures: Map::new(),
            latencies: None,
        }
    }

    /// The figures, by name (`rps`, `p99_us`, `server_cpu_us_per_op`, …).
    pub fn figures(&self) -> &Map<String, Value> {
        &self.figures
    }

    /// The latencies measured, in µs (of answers, deliveries or connection set-ups).
    pub fn latencies(&self) -> Option<&Histogram<u64>> {
        self.latencies.as_ref()
    }

    pub(crate) fn set(&mut self, key: &str, value: impl Into<Value>) -> &mut Self {
        self.figures.insert(key.to_owned(), value.into());
        self
    }

    /// Latency percentiles, in µs.
    pub(crate) fn latency(&mut self, h: &Histogram<u64>) -> &mut Self {
        if h.is_empty() {
            return self;
        }
        self.latencies = Some(h.clone());
        for (key, q) in [
            ("p50_us", 0.5),
            ("p90_us", 0.9),
            ("p99_us", 0.99),
            ("p999_us", 0.999),
        ] {
            self.set(key, h.value_at_quantile(q));
        }
        self.set("max_us", h.max())
    }

    /// CPU use over the window and per operation (`ops` operations in it).
    pub(crate) fn cpu(&mut self, usage: &Usage, ops: u64) -> &mut Self {
        let round = |v: f64| (v * 100.0).round() / 100.0;
        if let Some(pct) = usage.server_pct {
            self.set("server_cpu_pct", round(pct));
        }
        if let Some(pct) = usage.own_pct {
            self.set("loadgen_cpu_pct", round(pct));
        }
        if let Some(pct) = usage.others_pct {
            self.set("others_cpu_pct", round(pct));
        }
        if ops > 0 {
            if let Some(ns) = usage.server_ns {
                self.set(
                    "server_cpu_us_per_op",
                    round(ns as f64 / 1000.0 / ops as f64),
                );
            }
            if let Some(ns) = usage.own_ns {
                self.set(
                    "loadgen_cpu_us_per_op",
                    round(ns as f64 / 1000.0 / ops as f64),
                );
            }
        }
        self
    }

    /// The record as one JSON object: `labels`' fields, then the figures.
    pub fn to_json(&self, labels: &Value) -> Value {
        let mut all = labels.as_object().cloned().unwrap_or_default();
        all.extend(self.figures.clone());
        Value::Object(all)
    }

    /// Prints the record and appends it to `path` with `labels`.
    pub fn emit(&self, labels: &Value, path: Option<&str>) -> anyhow::Result<()> {
        let line = self.to_json(labels).to_string();
        println!("{line}");
        if let Some(path) = path {
            let mut file = OpenOptions::new().create(true).append(true).open(path)?;
            writeln!(file, "{line}")?;
        }
        Ok(())
    }
}

/// The labels a driver gives a run.
pub fn labels(server: &str, case: &str, rep: u32, scenario: &str) -> Value {
    json!({"server": server, "case": case, "rep": rep, "scenario": scenario})
}
