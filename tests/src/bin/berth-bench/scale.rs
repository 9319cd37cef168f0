//! berth with many containers: call latency and daemon memory with 1, 100 and 1,000 defined,
//! cold activation, 200 launched in a row and the host memory they take, and how many run at
//! once.

use super::report::{Report, Target};
use super::util::{
    Api, daemon_pid, host_file_cache_mib, host_unavailable_mib, host_used_mib, meminfo,
    meminfo_growth, none, pss_mib, rss_mib, settle_memory, stop_daemon, timed,
};
use berth_tests::Env;
use std::time::{Duration, Instant};

/// MiB → MB (the targets are in MB).
const MB: f64 = 1.048_576;

/// Time from a call to the name with no berthd running to its reply, `runs` times.
async fn cold_activation(env: &Env, api: &Api, runs: usize) -> Vec<f64> {
    let mut v = Vec::new();
    for _ in 0..runs {
        stop_daemon(env);
        let (t, r) = timed(api.m.list_containers()).await;
        r.expect("the call that activates berthd");
        v.push(t);
    }
    v
}

/// Time from a connection to a socket that `systemd-socket-activate` holds (no berthd
/// running) to the reply of ListContainers (the call the D-Bus figure makes), `runs` times;
/// `None` without the activator.
fn cold_socket_activation(env: &Env, runs: usize) -> Option<Vec<f64>> {
    let activator = [
        "/usr/bin/systemd-socket-activate",
        "/bin/systemd-socket-activate",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).is_file())?;
    let sock = env.dir.join("bench-activated.sock");
    let mut v = Vec::new();
    for _ in 0..runs {
        stop_daemon(env);
        let _ = std::fs::remove_file(&sock);
        let mut child = env
            .socket_activated_berthd(std::path::Path::new(activator), &sock)
            .spawn()
            .expect("systemd-socket-activate");
        berth_tests::wait_for(Duration::from_secs(10), "the activation socket", || {
            sock.exists()
        });
        let t = Instant::now();
        let r = berth_tests::varlink::Client::connect(&sock)
            .map_err(|e| serde_json::json!({ "io": e.to_string() }))
            .and_then(|mut c| c.call("ListContainers", serde_json::json!({}), false));
        v.push(t.elapsed().as_secs_f64() * 1000.0);
        r.expect("the call that activates berthd over varlink");
        // the activator became berthd: let it go as it would (SIGTERM) before the next run
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
    }
    Some(v)
}

/// GetContainer over varlink `calls` times, and ListContainers with `more` (one reply per
/// container) and without it (one reply) 50 times each, on one connection: (get, list,
/// whole list) in ms.
fn varlink_calls(env: &Env, n: usize, calls: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let sock = env.run.join("org.berth.Berth");
    let mut c = berth_tests::varlink::Client::connect(&sock).expect("berthd's varlink socket");
    let mut get = Vec::new();
    for i in 0..calls {
        let name = format!("d{:04}", i % n);
        let t = Instant::now();
        let r = c.call("GetContainer", serde_json::json!({ "name": name }), false);
        get.push(t.elapsed().as_secs_f64() * 1000.0);
        r.expect("GetContainer over varlink");
    }
    let mut list = Vec::new();
    let mut whole = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let r = c.call("ListContainers", serde_json::json!({}), true);
        list.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(r.expect("ListContainers over varlink").len(), n);
        let t = Instant::now();
        let r = c.call("ListContainers", serde_json::json!({}), false);
        whole.push(t.elapsed().as_secs_f64() * 1000.0);
        r.expect("ListContainers over varlink");
    }
    (get, list, whole)
}

/// Latency of GetContainer and ListContainers, daemon RSS, and cold activation, with each
/// count in `defined` of (stopped) containers defined.
pub async fn api(env: &Env, defined: &[usize], runs: usize, report: &mut Report) {
    let api = Api::new(env).await;
    let cold = cold_activation(env, &api, runs.min(10)).await;
    let f = report.add(
        "cold activation to the first reply (1 image, 0 containers)",
        "ms",
        cold,
    );
    f.target = Some(Target::Max(50.0));
    match cold_socket_activation(env, runs.min(10)) {
        Some(cold) => {
            let f = report.add(
                "cold socket activation (varlink) to the first reply (1 image, 0 containers)",
                "ms",
                cold,
            );
            f.target = Some(Target::Max(30.0));
        }
        None => report.note(
            "varlink: systemd-socket-activate is not installed (Debian: systemd), cold socket \
             activation not measured"
                .into(),
        ),
    }
    api.m.list_containers().await.expect("list");
    std::thread::sleep(Duration::from_millis(300));
    report
        .add(
            "berthd RSS, 0 containers defined",
            "MB",
            vec![rss_mib(daemon_pid(env)).unwrap_or(f64::NAN) * MB],
        )
        .target = Some(Target::Max(30.0));
    let mut made = 0usize;
    for &n in defined {
        let t0 = Instant::now();
        while made < n {
            api.m
                .create_container(&format!("d{made:04}"), "busybox", &none())
                .await
                .unwrap_or_else(|e| panic!("create container {made}: {e}"));
            made += 1;
        }
        println!(
            "  {n} containers defined ({:.1} s to create them)",
            t0.elapsed().as_secs_f64()
        );
        let mut get = Vec::new();
        for i in 0..200 {
            let (t, r) = timed(api.m.get_container(&format!("d{:04}", i % n))).await;
            r.expect("get");
            get.push(t);
        }
        let mut list = Vec::new();
        for _ in 0..50 {
            let (t, r) = timed(api.m.list_containers()).await;
            assert_eq!(r.expect("list").len(), n);
            list.push(t);
        }
        let f = report.add(&format!("GetContainer, {n} defined"), "ms", get);
        f.target = Some(Target::Max(1.0));
        let f = report.add(&format!("ListContainers, {n} defined"), "ms", list);
        if n >= 1000 {
            f.target = Some(Target::Max(10.0));
            f.peers = "incus list of 200: 1660";
        }
        let (vget, vlist, vwhole) = varlink_calls(env, n, 200);
        let f = report.add(
            &format!("GetContainer over varlink, {n} defined"),
            "ms",
            vget,
        );
        f.target = Some(Target::Max(0.15));
        let f = report.add(
            &format!("ListContainers over varlink with more, {n} defined"),
            "ms",
            vlist,
        );
        if n >= 1000 {
            f.target = Some(Target::Max(20.0));
        }
        report.add(
            &format!("ListContainers over varlink in one reply, {n} defined"),
            "ms",
            vwhole,
        );
        let f = report.add(
            &format!("berthd RSS, {n} containers defined"),
            "MB",
            vec![rss_mib(daemon_pid(env)).unwrap_or(f64::NAN) * MB],
        );
        f.target = Some(Target::Max(30.0));
        f.peers = "incusd 147–385";
    }
    if let Some(&n) = defined.last() {
        let cold = cold_activation(env, &api, runs.min(5)).await;
        let f = report.add(
            &format!("cold activation to the first reply, {n} defined"),
            "ms",
            cold,
        );
        // issue 11: activation with 1,000 containers defined answers in ≤ 50 ms
        f.target = Some(Target::Max(50.0));
        api.m.list_containers().await.expect("list");
        std::thread::sleep(Duration::from_millis(300));
        report.add(
            &format!("berthd RSS after a restart, {n} defined"),
            "MB",
            vec![rss_mib(daemon_pid(env)).unwrap_or(f64::NAN) * MB],
        );
    }
    if let Some(cold) = cold_socket_activation(env, runs.min(5)) {
        let n = defined.last().copied().unwrap_or(0);
        let f = report.add(
            &format!("cold socket activation (varlink) to the first reply, {n} defined"),
            "ms",
            cold,
        );
        f.target = Some(Target::Max(50.0));
        api.m.list_containers().await.expect("list");
    }
    for i in 0..made {
        api.m
            .delete_container(&format!("d{i:04}"), &none())
            .await
            .expect("delete");
    }
}

/// 200 busybox containers launched in a row (the time, the host memory they take, their
/// monitors' memory), then more until `max` run at once or one fails.
pub async fn running(env: &Env, max: usize, report: &mut Report) {
    let api = Api::new(env).await;
    api.m.list_containers().await.expect("list");
    let first = 200.min(max);
    settle_memory();
    let (base, base_unavailable, base_cache) = (
        host_used_mib(),
        host_unavailable_mib(),
        host_file_cache_mib(),
    );
    let before = meminfo();
    let mut each = Vec::new();
    let t0 = Instant::now();
    for i in 0..first {
        let (t, r) = timed(api.launch(&format!("r{i:03}"))).await;
        r.unwrap_or_else(|e| panic!("launch container {i}: {e}"));
        each.push(t);
    }
    let total = t0.elapsed().as_secs_f64();
    let f = report.add(
        &format!("launch {first} busybox containers in a row (total)"),
        "s",
        vec![total],
    );
    f.target = Some(Target::Max(5.0));
    f.peers = "Incus 97";
    report.add("launch (create + start), one of those", "ms", each);
    // idle monitors trim their resident set after a second without events
    std::thread::sleep(Duration::from_millis(2500));
    settle_memory();
    let used = (host_used_mib() - base) * MB;
    report.note(format!(
        "host memory per running container, kB: {}",
        meminfo_growth(&before, &meminfo(), first)
    ));
    let f = report.add(
        &format!(
            "host memory for {first} running busybox containers (used: total − free − buff/cache)"
        ),
        "MB",
        vec![used],
    );
    f.target = Some(Target::Max(250.0));
    f.peers = "LXC 258, Incus 3070";
    report.add(
        "  the same as MemTotal − MemAvailable (caches dropped)",
        "MB",
        vec![(host_unavailable_mib() - base_unavailable) * MB],
    );
    report.add(
        "  page cache they add (reclaimable; each rootfs's own busybox)",
        "MB",
        vec![(host_file_cache_mib() - base_cache) * MB],
    );
    // asking a monitor for its pid wakes it: read the memory once they are idle again
    let monitors: Vec<i32> = (0..first)
        .filter_map(|i| env.monitor_status(&format!("r{i:03}")))
        .map(|s| s.monitor_pid)
        .collect();
    std::thread::sleep(Duration::from_millis(2500));
    let rss: Vec<f64> = monitors
        .iter()
        .filter_map(|&p| rss_mib(p))
        .map(|m| m * MB)
        .collect();
    let pss: Vec<f64> = monitors
        .iter()
        .filter_map(|&p| pss_mib(p))
        .map(|m| m * MB)
        .collect();
    let f = report.add("monitor RSS per running container (idle)", "MB", rss);
    f.target = Some(Target::Max(1.0));
    f.peers = "LXC 0.4, Incus 13";
    report.add("monitor PSS per running container (idle)", "MB", pss);
    report.add(
        &format!("berthd RSS, {first} containers running"),
        "MB",
        vec![rss_mib(daemon_pid(env)).unwrap_or(f64::NAN) * MB],
    );
    let mut n = first;
    let mut failure = None;
    while n < max {
        match api.launch(&format!("r{n:03}")).await {
            Ok(_) => n += 1,
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    let running = api
        .m
        .list_containers()
        .await
        .expect("list")
        .iter()
        .filter(|c| c.status == "Running")
        .count();
    let f = report.add(
        &format!("busybox containers running at once (stop at {max})"),
        "count",
        vec![running as f64],
    );
    f.target = Some(Target::Min(max as f64));
    match failure {
        Some(e) => report.note(format!("launch number {} failed: {e}", n + 1)),
        None => report.note(format!(
            "{running} containers ran at once; berthd RSS {:.1} MB",
            rss_mib(daemon_pid(env)).unwrap_or(f64::NAN) * MB
        )),
    }
    let t0 = Instant::now();
    for i in 0..n {
        api.delete(&format!("r{i:03}")).await;
    }
    println!(
        "  deleted {n} running containers in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}
