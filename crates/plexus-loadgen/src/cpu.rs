//! CPU time and memory of the server under test, of the generator and of the machine, from
//! `/proc`: per operation, the steadiest figure on a shared machine.

use std::fs;
use std::time::Instant;

/// Nanoseconds on CPU of every thread of process `pid` (`self` for this one).
fn process_ns(pid: &str) -> Option<u64> {
    let mut total = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        // The thread may have ended between listing and reading: it counts as nothing.
        if let Ok(text) = fs::read_to_string(path) {
            total += text.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(total)
}

/// Nanoseconds on CPU of process `pid` and of every process below it.
fn tree_ns(pid: &str) -> Option<u64> {
    let mut total = process_ns(pid)?;
    let mut parents = vec![pid.to_owned()];
    // Children by parent, from each process's `stat` (field 4, after the command in parens).
    let mut children: Vec<(String, String)> = Vec::new();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(stat) = fs::read_to_string(entry.path().join("stat"))
            && let Some((_, rest)) = stat.rsplit_once(')')
            && let Some(parent) = rest.split_whitespace().nth(1)
        {
            children.push((parent.to_owned(), name));
        }
    }
    while let Some(parent) = parents.pop() {
        for (p, child) in &children {
            if *p == parent {
                total += process_ns(child).unwrap_or(0);
                parents.push(child.clone());
            }
        }
    }
    Some(total)
}

/// Busy and total jiffies of the whole machine, and its number of cores.
fn machine_jiffies() -> Option<(u64, u64, usize)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let idle = cpu.get(3)? + cpu.get(4)?;
    let total: u64 = cpu.iter().take(8).sum();
    // Counted here, not with `available_parallelism`, which a pinned generator sees as 1.
    let cores = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    Some((total - idle, total, cores.max(1)))
}

/// A measuring window.
pub(crate) struct Window {
    server: Option<String>,
    at: Instant,
    server_ns: Option<u64>,
    own_ns: Option<u64>,
    machine: Option<(u64, u64, usize)>,
}

/// What a window measured, in % of one core.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    pub(crate) server_pct: Option<f64>,
    pub(crate) own_pct: Option<f64>,
    pub(crate) others_pct: Option<f64>,
    pub(crate) server_ns: Option<u64>,
    pub(crate) own_ns: Option<u64>,
}

impl Window {
    pub(crate) fn start(server: Option<u32>) -> Self {
        let server = server.map(|pid| pid.to_string());
        Self {
            server_ns: server.as_deref().and_then(tree_ns),
            own_ns: process_ns("self"),
            machine: machine_jiffies(),
            at: Instant::now(),
            server,
        }
    }

    pub(crate) fn finish(&self) -> Usage {
        let wall_ns = self.at.elapsed().as_nanos() as f64;
        let delta = |before: Option<u64>, after: Option<u64>| Some(after?.saturating_sub(before?));
        let server_ns = delta(self.server_ns, self.server.as_deref().and_then(tree_ns));
        let own_ns = delta(self.own_ns, process_ns("self"));
        let pct = |ns: Option<u64>| ns.map(|ns| 100.0 * ns as f64 / wall_ns);
        let machine_pct = match (self.machine, machine_jiffies()) {
            (Some((b0, t0, _)), Some((b1, t1, cores))) if t1 > t0 => {
                Some(100.0 * cores as f64 * (b1 - b0) as f64 / (t1 - t0) as f64)
            }
            _ => None,
        };
        let others_pct = machine_pct
            .map(|m| (m - pct(server_ns).unwrap_or(0.0) - pct(own_ns).unwrap_or(0.0)).max(0.0));
        Usage {
            server_pct: pct(server_ns),
            own_pct: pct(own_ns),
            others_pct,
            server_ns,
            own_ns,
        }
    }
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// The most resident memory process `pid` has had, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Nanoseconds on CPU of every thread of process `pid` so far.
pub fn cpu_ns(pid: u32) -> Option<u64> {
    process_ns(&pid.to_string())
}
