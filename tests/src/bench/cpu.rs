//! Where the machine's processor time goes during a case: each process's
//! user and system time from `/proc`, summed by service, and the machine's
//! busy time from `/proc/stat`, before and after.

use std::collections::BTreeMap;

/// Clock ticks per second of `/proc`'s times (`getconf CLK_TCK`; 100 on Linux).
const TICKS: f64 = 100.0;

/// Processor seconds used so far: per process of a service, and by the whole
/// machine.
#[derive(Debug, Clone, Default)]
pub(super) struct Cpu {
    by_process: BTreeMap<u32, (&'static str, f64)>,
    machine: f64,
}

/// The service a process belongs to, by its command name; `None` for the
/// rest. The benchmark's own process drives the run: it is the coordinator.
fn service(pid: u32, comm: &str) -> Option<&'static str> {
    if pid == std::process::id() {
        return Some("coordinator");
    }
    match comm {
        "postgres" => Some("PostgreSQL"),
        "beam.smp" | "erl_child_setup" | "epmd" | "inet_gethost" => Some("RabbitMQ"),
        "redis-server" => Some("Redis"),
        "backfill-worker" => Some("workers"),
        _ => None,
    }
}

impl Cpu {
    /// Reads every process's times now.
    pub(super) fn now() -> Self {
        let mut cpu = Self::default();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return cpu;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // `pid (comm) state ppid …`: the name may hold spaces, so split at its parentheses.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = &stat[open + 1..close];
            let Some(service) = service(pid, comm) else {
                continue;
            };
            // After the name: state is field 3, utime 14 and stime 15.
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let ticks: f64 = fields
                .get(11..13)
                .into_iter()
                .flatten()
                .filter_map(|f| f.parse::<f64>().ok())
                .sum();
            cpu.by_process.insert(pid, (service, ticks / TICKS));
        }
        cpu.machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?.to_owned();
                let ticks: Vec<f64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|f| f.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
                let total: f64 = ticks.iter().take(8).sum();
                Some((total - ticks.get(3)? - ticks.get(4)?) / TICKS)
            })
            .unwrap_or_default();
        cpu
    }

    /// What was used from `before` to `self`, in milliseconds per one of
    /// `per` (batches), by service, with the machine's total and what no
    /// service named here accounts for (processes that ended in between —
    /// their time is lost with them —, the kernel, the rest).
    pub(super) fn per(&self, before: &Self, per: f64) -> String {
        let ms = |secs: f64| secs * 1000.0 / per.max(1.0);
        let mut by_service: BTreeMap<&str, f64> = BTreeMap::new();
        for (pid, (service, secs)) in &self.by_process {
            let earlier = before
                .by_process
                .get(pid)
                .filter(|(s, _)| s == service)
                .map_or(0.0, |(_, secs)| *secs);
            *by_service.entry(service).or_default() += secs - earlier;
        }
        let named: f64 = by_service.values().sum();
        let mut parts: Vec<String> = by_service
            .iter()
            .map(|(service, secs)| format!("{service} {:.2}", ms(*secs)))
            .collect();
        let machine = self.machine - before.machine;
        parts.push(format!("other {:.2}", ms((machine - named).max(0.0))));
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        format!(
            "{:.2} ms of processor time per batch, so at least {:.2} ms of wall time on {cores} cores; by service: {}",
            ms(machine),
            ms(machine) / cores as f64,
            parts.join(", ")
        )
    }
}
