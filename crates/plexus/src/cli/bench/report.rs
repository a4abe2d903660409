//! What `plexus bench` shows: a progress bar while the load runs (on a terminal only), then
//! the figures, latency percentiles and a histogram.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use plexus_loadgen::progress::Progress;
use plexus_loadgen::record::{Histogram, Record};
use serde_json::Value;

use super::Timing;

/// How often the bar is redrawn.
const TICK: Duration = Duration::from_millis(200);

/// Width of the histogram's longest bar, in characters.
const HISTOGRAM_WIDTH: usize = 40;

/// A progress bar on stderr, moved by a task until [`Bar::finish`]. indicatif draws nothing
/// when stderr is not a terminal, so logs and pipes stay clean.
pub(super) struct Bar {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Bar {
    /// A bar over the run's time (warm-up, then measuring), with the rate of `unit`s.
    pub(super) fn timed(what: &str, unit: &str, timing: &Timing, progress: &Arc<Progress>) -> Self {
        let total = timing.warmup + timing.duration;
        let bar = ProgressBar::new(total.as_millis() as u64)
            .with_style(style("{prefix} [{bar:30}] {elapsed}/{len_s} {msg}"));
        bar.set_prefix(what.to_owned());
        let (warmup, unit, progress, shown) = (
            timing.warmup,
            unit.to_owned(),
            progress.clone(),
            bar.clone(),
        );
        let started = tokio::time::Instant::now();
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            let mut last = (started, 0u64);
            loop {
                every.tick().await;
                let now = tokio::time::Instant::now();
                let done = progress.done();
                let rate = (done - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-3);
                last = (now, done);
                let phase = if now - started < warmup {
                    "warming up, "
                } else {
                    ""
                };
                shown.set_position((now - started).as_millis() as u64);
                shown.set_message(format!(
                    "{phase}{} {unit}/s, {} failed",
                    count(rate.round() as u64),
                    count(progress.failed())
                ));
            }
        });
        Self { bar, ticker }
    }

    /// A bar over a count of `unit`s (done or failed).
    pub(super) fn counted(unit: &str, total: u64, progress: &Arc<Progress>) -> Self {
        let bar =
            ProgressBar::new(total).with_style(style("{prefix} [{bar:30}] {pos}/{len} {msg}"));
        bar.set_prefix(unit.to_owned());
        let (progress, shown) = (progress.clone(), bar.clone());
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            loop {
                every.tick().await;
                shown.set_position(progress.done() + progress.failed());
                shown.set_message(format!("{} failed", count(progress.failed())));
            }
        });
        Self { bar, ticker }
    }

    pub(super) fn finish(self) {
        drop(self);
    }
}

impl Drop for Bar {
    /// Also when the run is abandoned (`--max-runtime`): the bar never outlives it.
    fn drop(&mut self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

/// The bars' look, around `template`.
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("a valid template")
        .progress_chars("=> ")
}

/// The report of a finished run.
pub(super) fn text(scenario: &str, record: &Record) -> String {
    let figures = record.figures();
    let get = |key: &str| figures.get(key).and_then(Value::as_f64);
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "{label:<22}{value}");
    };
    let n = |key: &str| get(key).map_or_else(|| "n/a".into(), |v| count(v.round() as u64));
    match scenario {
        "rpc" => {
            line("connections", n("connections"));
            line(
                "requests answered",
                format!("{} in {} s", n("requests"), n("duration_s")),
            );
            line("requests per second", n("rps"));
            line(
                "failed",
                format!(
                    "{} refused (error answers), {} timed out, {} connections broke",
                    n("refused"),
                    n("timeouts"),
                    n("errors")
                ),
            );
        }
        "fanout" => {
            line("subscribers", n("subscribers"));
            line(
                "published",
                format!("{} in {} s", n("published"), n("duration_s")),
            );
            line("deliveries per second", n("deliveries_per_s"));
            line(
                "lost",
                format!(
                    "{} deliveries; {} publications refused",
                    n("lost"),
                    n("refused")
                ),
            );
        }
        _ => {
            line(
                "connections held",
                format!("{} ({} failed)", n("connections"), n("connect_failed")),
            );
            line("set up per second", n("conns_per_s"));
            if let Some(kib) = get("rss_kib_per_conn") {
                line(
                    "server memory",
                    format!(
                        "{kib:.2} KiB per connection ({} MiB resident)",
                        n("server_rss_mib")
                    ),
                );
            }
        }
    }
    if let (Some(us), Some(pct)) = (get("server_cpu_us_per_op"), get("server_cpu_pct")) {
        let per = match scenario {
            "rpc" => "request",
            "fanout" => "delivery",
            _ => "connection set up",
        };
        line(
            "server CPU",
            format!("{us:.2} µs per {per} ({pct:.0}% of a core)"),
        );
    }
    if let Some(latencies) = record.latencies() {
        let what = match scenario {
            "rpc" => "round trip",
            "fanout" => "publish to delivery",
            _ => "connect to welcome",
        };
        let _ = writeln!(out, "\nlatency ({what})");
        for (label, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
            let _ = writeln!(
                out,
                "  {label:<7}{:>10}",
                micros(latencies.value_at_quantile(q))
            );
        }
        let _ = writeln!(out, "  {:<7}{:>10}", "max", micros(latencies.max()));
        out.push('\n');
        out.push_str(&histogram(latencies));
    }
    out
}

/// Latencies in buckets that double (up to 1 µs, 2 µs, 4 µs, …), each with its count, share
/// and a bar; empty buckets before the first and after the last sample are left out.
fn histogram(latencies: &Histogram<u64>) -> String {
    let buckets: Vec<(u64, u64)> = latencies
        .iter_log(1, 2.0)
        .map(|v| (v.value_iterated_to(), v.count_since_last_iteration()))
        .skip_while(|(_, n)| *n == 0)
        .collect();
    let last = buckets
        .iter()
        .rposition(|(_, n)| *n > 0)
        .map_or(0, |i| i + 1);
    let buckets = &buckets[..last];
    let most = buckets.iter().map(|(_, n)| *n).max().unwrap_or(1).max(1);
    let total = latencies.len().max(1);
    let mut out = String::new();
    for (upto, n) in buckets {
        let width = (n * HISTOGRAM_WIDTH as u64).div_ceil(most) as usize;
        let _ = writeln!(
            out,
            "  ≤ {:>9} {:>12} {:>6.2}%  {}",
            micros(*upto),
            count(*n),
            100.0 * *n as f64 / total as f64,
            "█".repeat(width)
        );
    }
    out
}

/// `840 µs`, `12.5 ms`, `1.20 s`.
fn micros(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

/// `1,234,567`.
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_durations_read_as_people_write_them() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(micros(840), "840 µs");
        assert_eq!(micros(12_500), "12.5 ms");
        assert_eq!(micros(1_200_000), "1.20 s");
    }

    #[test]
    fn the_histogram_shows_each_doubling_bucket_between_the_first_and_last_sample() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for _ in 0..30 {
            h.record(100).unwrap(); // ≤ 128
        }
        for _ in 0..10 {
            h.record(1000).unwrap(); // ≤ 1024
        }
        let shown = histogram(&h);
        let rows: Vec<&str> = shown.lines().collect();
        assert_eq!(rows.len(), 4, "127, 255, 511, 1023 µs:\n{shown}");
        assert!(
            rows[0].contains("127 µs") && rows[0].contains("75.00%"),
            "{shown}"
        );
        assert!(
            rows[1].contains(" 0 ") && rows[1].contains("0.00%"),
            "{shown}"
        );
        assert!(
            rows[3].contains("1.0 ms") && rows[3].contains("25.00%"),
            "{shown}"
        );
        let bar = |row: &str| row.chars().filter(|c| *c == '█').count();
        assert_eq!(bar(rows[0]), HISTOGRAM_WIDTH);
        assert_eq!(bar(rows[3]), HISTOGRAM_WIDTH / 3 + 1);
    }
}
