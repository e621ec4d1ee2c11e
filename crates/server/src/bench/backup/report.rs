//! Measuring one operation (wall time, CPU of this process and its children, CPU of the
//! PostgreSQL server, machine load) and printing the table.

use std::time::Instant;

const MIB: f64 = 1024.0 * 1024.0;
/// Linux reports process CPU in clock ticks of 1/100 s (`getconf CLK_TCK`).
const TICK: f64 = 0.01;

/// CPU counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    /// This process (user + system), seconds.
    own: f64,
    /// Children this process waited for (pg_dump, gzip, zstd, sqlite3 …), seconds.
    children: f64,
    /// Every `postgres` process, including the backends the postmaster reaped, seconds.
    postgres: f64,
    /// The machine: busy and total jiffies over all cores.
    busy: u64,
    total: u64,
}

/// Fields 14–17 (utime, stime, cutime, cstime) of `/proc/<pid>/stat`, and the command.
fn stat(pid: &str) -> Option<(String, [f64; 4])> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    // After ") " the fields start at number 3 (state).
    let f: Vec<&str> = text[close + 2..].split_whitespace().collect();
    let get = |n: usize| {
        f.get(n - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            * TICK
    };
    Some((comm, [get(14), get(15), get(16), get(17)]))
}

fn sample() -> Cpu {
    let mut cpu = Cpu::default();
    if let Some((_, f)) = stat("self") {
        cpu.own = f[0] + f[1];
        cpu.children = f[2] + f[3];
    }
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            if let Some((comm, f)) = stat(pid)
                && comm == "postgres"
            {
                cpu.postgres += f.iter().sum::<f64>();
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/stat")
        && let Some(line) = text.lines().next()
    {
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        cpu.total = v.iter().sum();
        // idle + iowait are not busy.
        cpu.busy = cpu.total - v.get(3).copied().unwrap_or(0) - v.get(4).copied().unwrap_or(0);
    }
    cpu
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// A running measurement.
pub struct Meter {
    began: Instant,
    cpu: Cpu,
    load: f64,
}

impl Meter {
    pub fn start() -> Meter {
        Meter {
            load: load1(),
            cpu: sample(),
            began: Instant::now(),
        }
    }

    pub fn stop(self) -> Usage {
        let seconds = self.began.elapsed().as_secs_f64();
        let end = sample();
        let total = end.total.saturating_sub(self.cpu.total).max(1);
        Usage {
            seconds,
            own_cpu: (end.own - self.cpu.own) + (end.children - self.cpu.children),
            pg_cpu: end.postgres - self.cpu.postgres,
            machine_busy: end.busy.saturating_sub(self.cpu.busy) as f64 / total as f64,
            load: self.load.max(load1()),
        }
    }
}

/// What one operation used.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub seconds: f64,
    /// This process and the tools it ran, seconds of CPU.
    pub own_cpu: f64,
    /// The PostgreSQL server, seconds of CPU.
    pub pg_cpu: f64,
    /// Share of both cores busy (anything on the machine).
    pub machine_busy: f64,
    /// 1-minute load average (the higher of start and end).
    pub load: f64,
}

/// Which of our operations a row compares with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Backup,
    Restore,
    Other,
}

pub struct Row {
    pub name: String,
    pub usage: Usage,
    pub archive: Option<u64>,
    pub kind: Kind,
    pub ours: bool,
    /// Time bought per stage, for our operations.
    pub stages: Vec<(String, f64)>,
    pub note: String,
}

impl Row {
    pub fn new(name: impl Into<String>, usage: Usage, kind: Kind, ours: bool) -> Row {
        Row {
            name: name.into(),
            usage,
            archive: None,
            kind,
            ours,
            stages: Vec::new(),
            note: String::new(),
        }
    }

    pub fn archive(mut self, bytes: u64) -> Row {
        self.archive = Some(bytes);
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.note = note.into();
        self
    }

    pub fn stages(mut self, stages: Vec<(String, f64)>) -> Row {
        self.stages = stages;
        self
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

/// Prints the table: seconds, MiB/s of the database size, archive size and the ratio
/// against our backup (for dumps) or our full restore (for loads). `pg` adds the CPU the
/// PostgreSQL server used (every session of it: other users of a shared server count).
pub fn print(title: &str, db_bytes: u64, rows: &[Row], pg: bool) {
    let ours = |k: Kind| rows.iter().find(|r| r.ours && r.kind == k);
    println!();
    println!("{title}");
    println!(
        "| operation | seconds | MiB/s | archive MiB | time vs ours | size vs ours | client CPU s |{} busy | load |",
        if pg { " server CPU s |" } else { "" }
    );
    println!(
        "|---|---:|---:|---:|---:|---:|---:|{}---:|---:|",
        if pg { "---:|" } else { "" }
    );
    for r in rows {
        let u = &r.usage;
        let base = ours(r.kind).filter(|_| r.kind != Kind::Other);
        let (t_ratio, s_ratio) = match base {
            Some(b) => (
                ratio(u.seconds, b.usage.seconds),
                match (r.archive, b.archive) {
                    (Some(a), Some(o)) => ratio(a as f64, o as f64),
                    _ => "-".into(),
                },
            ),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {}{} | {:.2} | {:.0} | {} | {t_ratio} | {s_ratio} | {:.1} |{} {:.0} % | {:.1} |",
            r.name.replace('|', "\\|"),
            if r.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.note)
            },
            u.seconds,
            db_bytes as f64 / MIB / u.seconds.max(1e-9),
            r.archive
                .map(|a| if a < 10 << 20 {
                    format!("{:.2}", a as f64 / MIB)
                } else {
                    format!("{:.1}", a as f64 / MIB)
                })
                .unwrap_or_else(|| "-".into()),
            u.own_cpu,
            if pg {
                format!(" {:.1} |", u.pg_cpu)
            } else {
                String::new()
            },
            u.machine_busy * 100.0,
            u.load,
        );
    }
    let staged: Vec<&Row> = rows.iter().filter(|r| !r.stages.is_empty()).collect();
    if !staged.is_empty() {
        println!();
        println!("Stages of our operations (seconds):");
        for r in staged {
            let parts: Vec<String> = r
                .stages
                .iter()
                .map(|(n, s)| format!("{n} {s:.2}"))
                .collect();
            println!("- {}: {}", r.name, parts.join(", "));
        }
    }
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}
