//! What every section of the benchmark shares: the D-Bus client of an environment, timing,
//! memory readings and the monitors' status.

use berth_interfaces::client::{ContainerProxy, ManagerProxy, SnapshotProxy};
use berth_tests::Env;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use zbus::OwnedObjectPath;
use zbus::Variant;
use zbus::proxy::CacheProperties;

/// Options for a D-Bus method.
pub type Opts = HashMap<&'static str, Variant<'static>>;

/// No options.
pub fn none() -> Opts {
    HashMap::new()
}

/// One boolean option.
pub fn flag(key: &'static str) -> Opts {
    HashMap::from([(key, Variant::from(true))])
}

/// Milliseconds of a duration.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Times one future, in milliseconds.
pub async fn timed<T>(f: impl std::future::Future<Output = T>) -> (f64, T) {
    let t = Instant::now();
    let v = f.await;
    (ms(t.elapsed()), v)
}

/// A client of one environment's berthd.
pub struct Api {
    /// The bus connection.
    pub conn: zbus::Connection,
    /// The Manager.
    pub m: ManagerProxy<'static>,
}

impl Api {
    /// Connects to the environment's private bus (berthd is activated by the first call).
    pub async fn new(env: &Env) -> Api {
        let conn = zbus::connection::Builder::address(env.bus.as_str())
            .build()
            .await
            .expect("connect to the private bus");
        let m = ManagerProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .expect("manager proxy");
        Api { conn, m }
    }

    /// The Container object at `path`.
    pub async fn container(&self, path: OwnedObjectPath) -> ContainerProxy<'static> {
        ContainerProxy::builder(&self.conn)
            .path(path)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .expect("container proxy")
    }

    /// The Snapshot object at `path`.
    pub async fn snapshot(&self, path: OwnedObjectPath) -> SnapshotProxy<'static> {
        SnapshotProxy::builder(&self.conn)
            .path(path)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .expect("snapshot proxy")
    }

    /// Creates and starts `name` from the busybox image.
    pub async fn launch(&self, name: &str) -> zbus::Result<OwnedObjectPath> {
        self.m
            .create_container(name, "busybox", &flag("start"))
            .await
    }

    /// Deletes `name`, running or not.
    pub async fn delete(&self, name: &str) {
        self.m
            .delete_container(name, &flag("force"))
            .await
            .unwrap_or_else(|e| panic!("delete {name}: {e}"));
    }
}

/// A kernel figure from `/proc/<pid>/<file>` (`VmRSS:` of status, `Pss:` of smaps_rollup), KiB.
fn proc_kib(pid: i32, file: &str, key: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resident set of a process, MiB.
pub fn rss_mib(pid: i32) -> Option<f64> {
    proc_kib(pid, "status", "VmRSS:").map(|k| k / 1024.0)
}

/// Proportional set of a process, MiB.
pub fn pss_mib(pid: i32) -> Option<f64> {
    proc_kib(pid, "smaps_rollup", "Pss:").map(|k| k / 1024.0)
}

/// /proc/meminfo as kB by field, and [`PER_CPU_FREE`] read at the same time.
pub fn meminfo() -> std::collections::HashMap<String, f64> {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mut m: std::collections::HashMap<String, f64> = s
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_string(), v.split_whitespace().next()?.parse().ok()?))
        })
        .collect();
    m.insert(PER_CPU_FREE.to_string(), per_cpu_free_kib());
    m
}

/// The key of [`meminfo`]'s map for the free pages on the per-CPU lists.
pub const PER_CPU_FREE: &str = "PerCpuFree";

/// What grew between two meminfo readings, per one of `n` things, in the fields that tell
/// where host memory goes.
pub fn meminfo_growth(
    before: &std::collections::HashMap<String, f64>,
    after: &std::collections::HashMap<String, f64>,
    n: usize,
) -> String {
    let per =
        |k: &str| (after.get(k).unwrap_or(&0.0) - before.get(k).unwrap_or(&0.0)) / n.max(1) as f64;
    [
        "AnonPages",
        "Shmem",
        "Mapped",
        "Active(file)",
        "Inactive(file)",
        "SUnreclaim",
        "SReclaimable",
        "PageTables",
        "KernelStack",
        "VmallocUsed",
        "Percpu",
        "MemFree",
        PER_CPU_FREE,
        "MemAvailable",
    ]
    .iter()
    .map(|k| format!("{k} {:+.0}", per(k)))
    .chain(std::iter::once(format!(
        "named by no counter {:+.0}",
        unnamed(before, after) / n.max(1) as f64
    )))
    .collect::<Vec<_>>()
    .join(", ")
}

/// Memory taken between two readings that no field of /proc/meminfo names, kB: what left the
/// free lists less anon, page cache, slab, page tables and vmalloc (kernel stacks are vmalloc).
fn unnamed(
    before: &std::collections::HashMap<String, f64>,
    after: &std::collections::HashMap<String, f64>,
) -> f64 {
    let d = |k: &str| after.get(k).unwrap_or(&0.0) - before.get(k).unwrap_or(&0.0);
    let taken = -(d("MemFree") + d(PER_CPU_FREE));
    taken
        - [
            "AnonPages",
            "Buffers",
            "Cached",
            "SReclaimable",
            "SUnreclaim",
            "PageTables",
            "VmallocUsed",
            "Percpu",
        ]
        .iter()
        .map(|k| d(k))
        .sum::<f64>()
}

/// Host memory in use, MiB, as `free` shows it: total − free − buff/cache (the "used" column
/// of procps until 4.0), i.e. what the kernel cannot reclaim. Page cache is measured apart.
///
/// MemFree leaves out the free pages the page allocator keeps on its per-CPU lists, which it
/// tunes by itself up to tens of MB (here: 0–50 MB between two readings a second apart): they
/// are free, and they are counted as such here, from /proc/zoneinfo.
pub fn host_used_mib() -> f64 {
    let m = meminfo();
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    (get("MemTotal")
        - get("MemFree")
        - get(PER_CPU_FREE)
        - get("Buffers")
        - get("Cached")
        - get("SReclaimable")
        + get("Shmem"))
        / 1024.0
}

/// Free pages on the page allocator's per-CPU lists (the `count:` of every zone's pagesets in
/// /proc/zoneinfo), kB.
pub fn per_cpu_free_kib() -> f64 {
    let s = std::fs::read_to_string("/proc/zoneinfo").unwrap_or_default();
    let pages: f64 = s
        .lines()
        .filter_map(|l| l.trim().strip_prefix("count:")?.trim().parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as f64;
    pages * page / 1024.0
}

/// MemTotal − MemAvailable, MiB (the "used" column of procps 4). MemAvailable counts page
/// cache only above the low watermark: on a host whose caches were just dropped, new cache
/// counts half as used.
pub fn host_unavailable_mib() -> f64 {
    let m = meminfo();
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    (get("MemTotal") - get("MemAvailable") - get(PER_CPU_FREE)) / 1024.0
}

/// Page cache of files, MiB.
pub fn host_file_cache_mib() -> f64 {
    let m = meminfo();
    (m.get("Active(file)").copied().unwrap_or(0.0)
        + m.get("Inactive(file)").copied().unwrap_or(0.0))
        / 1024.0
}

/// Drops clean caches so that memory readings compare like with like.
pub fn settle_memory() {
    // SAFETY: sync has no failure mode.
    unsafe { libc::sync() };
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    std::thread::sleep(Duration::from_millis(200));
    // folds the per-CPU differences of the counters into the totals /proc/meminfo shows
    let _ = std::fs::write("/proc/sys/vm/stat_refresh", "1");
}

/// berthd's pid, from the bus.
pub fn daemon_pid(env: &Env) -> i32 {
    env.daemon_pid().expect("berthd runs") as i32
}

/// Stops berthd (SIGTERM: a clean exit, containers keep running) and waits for its name to go.
pub fn stop_daemon(env: &Env) {
    if let Some(pid) = env.daemon_pid() {
        // SAFETY: kill(2) on berthd's pid.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        berth_tests::wait_for(Duration::from_secs(30), "berthd to exit", || {
            !env.name_owned("org.berth.Berth1")
        });
        berth_tests::wait_for(Duration::from_secs(10), "berthd's process to end", || {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        });
    }
}
