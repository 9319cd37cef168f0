//! berth-bench: measures berth against its floor, on this machine, and prints a table of
//! median, p10 and p90 per figure with ratios to the floor measured in the same run.
//!
//! Usage (as root, after scripts/setup): `berth-bench [--runs N] [--containers N]`
//!
//! Everything it uses is set up and torn down here: a private system bus with polkitd, berthd
//! activated from the build directory, its own pools (dir and btrfs) and cgroups.

use berth_interfaces::client::{ContainerProxy, ManagerProxy};
use berth_tests::{Env, Storage};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
#[allow(unused_imports)]
use std::io::Write as _;
use std::time::{Duration, Instant};
use zbus::proxy::CacheProperties;
use zbus::Variant;

struct Figure {
    name: String,
    unit: &'static str,
    samples: Vec<f64>,
    target: Option<f64>,
}

impl Figure {
    fn pct(&self, p: f64) -> f64 {
        let mut v = self.samples.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((v.len() - 1) as f64 * p).round() as usize;
        v[i]
    }
}

#[derive(Default)]
struct Report {
    figures: Vec<Figure>,
}

impl Report {
    fn add(&mut self, name: &str, unit: &'static str, samples: Vec<f64>, target: Option<f64>) {
        self.figures.push(Figure { name: name.into(), unit, samples, target });
    }

    fn median(&self, name: &str) -> Option<f64> {
        self.figures.iter().find(|f| f.name == name).map(|f| f.pct(0.5))
    }

    fn print(&self, floor: Option<f64>) {
        println!("{:<44} {:>10} {:>10} {:>10} {:>6} {:>9} {:>8}", "figure", "median", "p10", "p90", "unit", "÷floor", "target");
        for f in &self.figures {
            let ratio = match (floor, f.unit) {
                (Some(fl), "ms") if !f.name.starts_with("floor") => format!("{:.1}x", f.pct(0.5) / fl),
                _ => String::new(),
            };
            let target = f.target.map(|t| {
                let ok = f.pct(0.5) <= t;
                format!("{}{t}", if ok { "≤" } else { "MISS ≤" })
            });
            println!(
                "{:<44} {:>10.3} {:>10.3} {:>10.3} {:>6} {:>9} {:>8}",
                f.name,
                f.pct(0.5),
                f.pct(0.1),
                f.pct(0.9),
                f.unit,
                ratio,
                target.unwrap_or_default()
            );
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The floor: clone with every namespace, idmapped rootfs, /proc, /sys, /dev, pivot_root and
/// exec of busybox init, by the runtime crate alone in this (still single-threaded) process.
fn floor(runs: usize) -> Vec<f64> {
    use berth_runtime::{cgroup, idmap, image, launch, spec};
    let dir = PathBuf::from(format!("/tmp/berth-bench-floor-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let archive = dir.join("busybox.tar");
    image::build_busybox(Path::new("/bin/busybox"), &archive).expect("build busybox");
    std::fs::create_dir_all(dir.join("vol")).unwrap();
    let st = std::process::Command::new("tar").arg("-C").arg(dir.join("vol")).arg("-xf").arg(&archive).status().unwrap();
    assert!(st.success(), "unpack the busybox image");
    let layout = cgroup::Layout::detect().unwrap();
    let parent = format!("berth-bench-{}", std::process::id());
    let spec = spec::ContainerSpec {
        name: "floor".into(),
        rootfs: dir.join("vol/rootfs"),
        idmap: idmap::IdMap::host_default(),
        shifted: false,
        cgroups: cgroup::ContainerCgroups::new(layout, &parent, "floor"),
        init: vec!["/sbin/init".into()],
        env: spec::default_init_env(),
        stop_signal: libc::SIGUSR2,
        run_dir: dir.join("run"),
        cap_drop: spec::DEFAULT_CAP_DROP.iter().map(|s| s.to_string()).collect(),
        console_log_max: 1 << 20,
        nics: Vec::new(),
        restore: None,
    };
    spec.cgroups.create().unwrap();
    let mut samples = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let started = launch::start(&spec).expect("floor start");
        samples.push(ms(t.elapsed()));
        let _ = berth_runtime::sys::pidfd_send_signal(std::os::fd::AsFd::as_fd(&started.pidfd), libc::SIGKILL);
        let _ = berth_runtime::sys::waitpid_blocking(started.pid);
    }
    let _ = spec.cgroups.remove();
    for m in berth_tests::cgroup_mounts() {
        let _ = std::fs::remove_dir(m.join(&parent));
        let _ = std::fs::remove_dir(m.join(format!("{parent}.monitor")));
    }
    let _ = std::fs::remove_dir_all(&dir);
    samples
}

fn rss_kib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    l.split_whitespace().nth(1)?.parse().ok()
}

fn pss_kib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let l = s.lines().find(|l| l.starts_with("Pss:"))?;
    l.split_whitespace().nth(1)?.parse().ok()
}

async fn bench_pool(env: &Env, storage: Storage, runs: usize, report: &mut Report) {
    let conn = zbus::connection::Builder::address(env.bus.as_str()).build().await.unwrap();
    let m = ManagerProxy::builder(&conn).cache_properties(CacheProperties::No).build().await.unwrap();
    let none: HashMap<&str, Variant<'_>> = HashMap::new();
    let tag = match storage {
        Storage::Dir => "dir",
        Storage::Btrfs => "btrfs",
    };
    let mut create = Vec::new();
    let mut start = Vec::new();
    let mut exec = Vec::new();
    let mut stop = Vec::new();
    let mut delete = Vec::new();
    let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null").unwrap();
    for i in 0..runs {
        let name = format!("b{i}");
        let t = Instant::now();
        let path = m.create_container(&name, "busybox", &none).await.unwrap();
        create.push(ms(t.elapsed()));
        let c = ContainerProxy::builder(&conn).path(path).cache_properties(CacheProperties::No).build().await.unwrap();
        let t = Instant::now();
        c.start(&none).await.unwrap();
        start.push(ms(t.elapsed()));
        let mut o: HashMap<&str, Variant<'_>> = HashMap::new();
        for k in ["stdin", "stdout", "stderr"] {
            o.insert(k, zbus::Fd::from(&null).into());
        }
        for _ in 0..3 {
            let t = Instant::now();
            let code = c.exec(&["true"], &o).await.unwrap();
            exec.push(ms(t.elapsed()));
            assert_eq!(code, 0);
        }
        let t = Instant::now();
        c.stop(&HashMap::from([("force", Variant::from(true))])).await.unwrap();
        stop.push(ms(t.elapsed()));
        let t = Instant::now();
        c.delete(&none).await.unwrap();
        delete.push(ms(t.elapsed()));
    }
    if storage == Storage::Btrfs {
        report.add("create from cached image (btrfs)", "ms", create, Some(15.0));
        report.add("start (call → init running)", "ms", start, Some(10.0));
        report.add("exec true", "ms", exec, Some(5.0));
        report.add("stop --force", "ms", stop, Some(10.0));
        report.add("delete (btrfs)", "ms", delete, None);
    } else {
        report.add(&format!("create from cached image ({tag})"), "ms", create, None);
        report.add(&format!("delete ({tag})"), "ms", delete, None);
    }
}

/// A ~200 MiB zstd unified image: the busybox image plus 200 files of 1 MiB of random data.
fn big_image(env: &Env) -> PathBuf {
    use std::io::{Read, Write};
    let fp = {
        let out = std::process::Command::new(berth_tests::bin_dir().join("berth"))
            .args(["image", "info", "busybox"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &env.bus)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().next().unwrap().trim_start_matches("Fingerprint: ").to_string()
    };
    let base = std::fs::read(env.state.join("images").join(&fp).join("image")).unwrap();
    let path = env.dir.join("big.tar.zst");
    let file = std::fs::File::create(&path).unwrap();
    let mut enc = zstd::stream::write::Encoder::new(file, 3).unwrap();
    enc.multithread(2).unwrap();
    enc.write_all(&base[..base.len() - 1024]).unwrap();
    let mut rnd = std::fs::File::open("/dev/urandom").unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..200 {
        rnd.read_exact(&mut buf).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_path(format!("rootfs/data/f{i:03}")).unwrap();
        h.set_size(buf.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        enc.write_all(h.as_bytes()).unwrap();
        enc.write_all(&buf).unwrap();
    }
    enc.write_all(&[0u8; 1024]).unwrap();
    enc.finish().unwrap();
    path
}

/// Import against `sha256sum` + `tar -x` of the same file; launch from the cached image.
async fn bench_images(env: &Env, report: &mut Report) {
    let img = big_image(env);
    let size_mb = std::fs::metadata(&img).unwrap().len() as f64 / (1 << 20) as f64;
    let mut reference = Vec::new();
    for i in 0..3 {
        let dir = env.dir.join(format!("ref{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let t = Instant::now();
        let a = std::process::Command::new("sha256sum").arg(&img).output().unwrap();
        let b = std::process::Command::new("tar").arg("--zstd").arg("-xf").arg(&img).arg("-C").arg(&dir).status().unwrap();
        reference.push(ms(t.elapsed()));
        assert!(a.status.success() && b.success());
        let _ = std::fs::remove_dir_all(&dir);
    }
    let conn = zbus::connection::Builder::address(env.bus.as_str()).build().await.unwrap();
    let m = ManagerProxy::builder(&conn).cache_properties(CacheProperties::No).build().await.unwrap();
    let mut import = Vec::new();
    for _ in 0..3 {
        let f = std::fs::File::open(&img).unwrap();
        let t = Instant::now();
        let path = m.import_image(zbus::Fd::from(&f), &HashMap::from([("aliases", Variant::from(vec!["big"]))])).await.unwrap();
        import.push(ms(t.elapsed()));
        let i = berth_interfaces::client::ImageProxy::builder(&conn).path(path).build().await.unwrap();
        i.delete().await.unwrap();
    }
    let med = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    println!(
        "import of a {size_mb:.0} MiB image: berth {:.0} ms, sha256sum + tar -x {:.0} ms: berth runs at {:.0}% of their speed (target ≥ 70%)",
        med(&import),
        med(&reference),
        100.0 * med(&reference) / med(&import)
    );
    report.add(&format!("import {size_mb:.0} MiB image (zstd)"), "ms", import, None);
    report.add("sha256sum + tar -x of it", "ms", reference, None);
    // launch from the cached image: a snapshot, whatever the image's size
    let f = std::fs::File::open(&img).unwrap();
    m.import_image(zbus::Fd::from(&f), &HashMap::from([("aliases", Variant::from(vec!["big"]))])).await.unwrap();
    let mut launch = Vec::new();
    for i in 0..10 {
        let name = format!("big{i}");
        let t = Instant::now();
        m.create_container(&name, "big", &HashMap::from([("start", Variant::from(true))])).await.unwrap();
        launch.push(ms(t.elapsed()));
        m.delete_container(&name, &HashMap::from([("force", Variant::from(true))])).await.unwrap();
    }
    report.add(&format!("launch from a cached {size_mb:.0} MiB image (btrfs)"), "ms", launch, Some(50.0));
}

async fn bench_footprint(env: &Env, report: &mut Report) {
    let conn = zbus::connection::Builder::address(env.bus.as_str()).build().await.unwrap();
    let m = ManagerProxy::builder(&conn).cache_properties(CacheProperties::No).build().await.unwrap();
    let none: HashMap<&str, Variant<'_>> = HashMap::new();
    // a stopped container costs no process
    m.create_container("idle", "busybox", &none).await.unwrap();
    let procs = env.processes().len() as f64;
    report.add("processes of a stopped container", "count", vec![procs], Some(0.0));
    // a running one costs one monitor
    let mut rss = Vec::new();
    let mut pss = Vec::new();
    for i in 0..5 {
        m.create_container(&format!("r{i}"), "busybox", &HashMap::from([("start", Variant::from(true))])).await.unwrap();
    }
    // steady state: an idle monitor trims its resident set after a second without events
    std::thread::sleep(Duration::from_millis(1500));
    for e in std::fs::read_dir(env.run.join("containers")).unwrap().flatten() {
        let Ok(log) = std::fs::read_to_string(e.path().join("monitor.log")) else { continue };
        let Some(pid) = log.lines().last().and_then(|l| l.split("monitor[").nth(1)).and_then(|r| r.split(']').next()).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if let (Some(r), Some(p)) = (rss_kib(pid), pss_kib(pid)) {
            rss.push(r / 1024.0);
            pss.push(p / 1024.0);
        }
    }
    report.add("monitor RSS per running container (idle)", "MiB", rss, Some(1.0));
    report.add("monitor PSS per running container (idle)", "MiB", pss, None);
    if let Some(pid) = env.daemon_pid().and_then(rss_kib) {
        report.add("berthd RSS (6 containers defined)", "MiB", vec![pid / 1024.0], Some(30.0));
    }
    let t_list: Vec<f64> = {
        let mut v = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            m.list_containers().await.unwrap();
            v.push(ms(t.elapsed()));
        }
        v
    };
    report.add("ListContainers (6 defined)", "ms", t_list, Some(10.0));
    let mut t_get = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        m.get_container("idle").await.unwrap();
        t_get.push(ms(t.elapsed()));
    }
    report.add("GetContainer", "ms", t_get, Some(1.0));
    drop(conn);
}

fn main() {
    let mut runs = 20usize;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "-h" | "--help" => {
                println!("usage: berth-bench [--runs N]");
                return;
            }
            other => panic!("unknown argument {other}"),
        }
    }
    // SAFETY: geteuid has no failure mode.
    assert_eq!(unsafe { libc::geteuid() }, 0, "berth-bench needs root");
    // The floor first: launch::start needs a single-threaded process.
    let floor_samples = floor(runs);
    let floor_median = {
        let f = Figure { name: String::new(), unit: "ms", samples: floor_samples.clone(), target: None };
        f.pct(0.5)
    };
    let mut report = Report::default();
    report.add("floor: clone → pivot_root → exec init", "ms", floor_samples, None);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    {
        let env = Env::new(Storage::Btrfs);
        rt.block_on(bench_pool(&env, Storage::Btrfs, runs, &mut report));
        rt.block_on(bench_footprint(&env, &mut report));
        rt.block_on(bench_images(&env, &mut report));
    }
    {
        let env = Env::new(Storage::Dir);
        rt.block_on(bench_pool(&env, Storage::Dir, runs.min(10), &mut report));
    }
    report.print(Some(floor_median));
    if let Some(start) = report.median("start (call → init running)") {
        println!("\nstart ÷ floor = {:.1} (target ≤ 5)", start / floor_median);
    }
}
