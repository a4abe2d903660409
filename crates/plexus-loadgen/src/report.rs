//! `report`: the JSON lines of a run as one table, servers as columns, each cell the median
//! over repetitions with [min–max].

use std::collections::BTreeMap;
use std::fs;

use serde_json::Value;

/// The figures shown per scenario: (key, label).
fn metrics(scenario: &str) -> &'static [(&'static str, &'static str)] {
    match scenario {
        "rpc" => &[
            ("rps", "req/s"),
            ("server_cpu_us_per_op", "server CPU µs/req"),
            ("loadgen_cpu_us_per_op", "loadgen CPU µs/req"),
            ("p50_us", "p50 µs"),
            ("p99_us", "p99 µs"),
            ("p999_us", "p99.9 µs"),
            ("server_cpu_pct", "server CPU %"),
            ("loadgen_cpu_pct", "loadgen CPU %"),
            ("others_cpu_pct", "other processes CPU %"),
            ("timeouts", "timeouts"),
        ],
        "fanout" => &[
            ("deliveries_per_s", "deliveries/s"),
            ("server_cpu_us_per_op", "server CPU µs/delivery"),
            ("p50_us", "p50 µs"),
            ("p99_us", "p99 µs"),
            ("lost", "lost"),
            ("server_cpu_pct", "server CPU %"),
            ("others_cpu_pct", "other processes CPU %"),
        ],
        "conns" => &[
            ("rss_kib_per_conn", "RSS KiB/conn"),
            ("server_cpu_us_per_op", "server CPU µs/conn"),
            ("conns_per_s", "conns/s"),
            ("p99_us", "connect p99 µs"),
            ("connect_failed", "failed"),
        ],
        _ => &[],
    }
}

fn show(v: f64) -> String {
    if v.abs() >= 10_000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn cell(mut values: Vec<f64>) -> String {
    if values.is_empty() {
        return "n/a".into();
    }
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    if values.len() == 1 {
        show(median)
    } else {
        let (min, max) = (values[0], values[values.len() - 1]);
        format!("{} [{}–{}]", show(median), show(min), show(max))
    }
}

/// The table of the records in `files`; servers in the order they first appear.
pub fn table(files: &[String]) -> anyhow::Result<String> {
    let mut servers: Vec<String> = Vec::new();
    // case → (scenario, server → records)
    let mut cases: BTreeMap<String, (String, BTreeMap<String, Vec<Value>>)> = BTreeMap::new();
    for file in files {
        for line in fs::read_to_string(file)?
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            let record: Value = serde_json::from_str(line)?;
            let text = |key: &str| record[key].as_str().unwrap_or("?").to_owned();
            let (server, case, scenario) = (text("server"), text("case"), text("scenario"));
            if !servers.contains(&server) {
                servers.push(server.clone());
            }
            let entry = cases
                .entry(case)
                .or_insert_with(|| (scenario, BTreeMap::new()));
            entry.1.entry(server).or_default().push(record);
        }
    }
    let mut out = format!("| case | metric | {} |\n|---|---|", servers.join(" | "));
    out.push_str(&"---|".repeat(servers.len()));
    out.push('\n');
    for (case, (scenario, by_server)) in &cases {
        for (key, label) in metrics(scenario) {
            let cells: Vec<String> = servers
                .iter()
                .map(|server| {
                    let values = by_server
                        .get(server)
                        .map(|records| records.iter().filter_map(|r| r[*key].as_f64()).collect())
                        .unwrap_or_default();
                    cell(values)
                })
                .collect();
            out.push_str(&format!("| {case} | {label} | {} |\n", cells.join(" | ")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_medians_with_their_range() {
        assert_eq!(cell(vec![3.0, 1.0, 2.0]), "2 [1–3]");
        assert_eq!(cell(vec![7.51]), "7.51");
        assert_eq!(cell(vec![124_400.0, 120_000.0]), "124.4k [120.0k–124.4k]");
        assert_eq!(cell(vec![]), "n/a");
    }
}
