//! End-to-end: berthd's life as a D-Bus activated service — it exits when idle, the next
//! call activates it again, containers run on meanwhile and no call is lost.

use berth_tests::{Env, Options, Storage, text};
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

fn root_or_skip() -> bool {
    // SAFETY: geteuid has no failure mode.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root || std::env::var_os("BERTH_E2E_ALLOW_SKIP").is_some(),
        "end-to-end tests need root"
    );
    root
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// An environment whose berthd exits after 2 s without a call.
fn idle_after_2s() -> Env {
    Env::with(Options {
        storage: Some(Storage::Dir),
        daemon_args: vec!["--idle-timeout".into(), "2".into()],
        ..Default::default()
    })
}

fn exited_idle(pid: u32) {
    berth_tests::wait_for(Duration::from_secs(15), "berthd to exit once idle", || {
        !alive(pid)
    });
}

#[test]
fn an_idle_berthd_exits_and_the_next_call_finds_its_containers_running() {
    if !root_or_skip() {
        return;
    }
    let env = idle_after_2s();
    env.ok(&["launch", "busybox", "c1"]);
    let init = env.init_pid("c1");
    let first = env.daemon_pid().expect("berthd runs");
    exited_idle(first);
    assert!(!env.name_owned("org.berth.Berth1"), "the name went with it");
    assert!(alive(init), "the container runs on without berthd");
    // the next call activates a new berthd, which finds the container as it was
    assert_eq!(env.status("c1"), "Running");
    assert_eq!(env.init_pid("c1"), init);
    let second = env.daemon_pid().expect("berthd runs again");
    assert_ne!(second, first);
    assert!(
        env.daemon_log_tail().contains("shutting down (idle)"),
        "{}",
        env.daemon_log_tail()
    );
}

/// A container whose init dies while no berthd runs is listed stopped by the next berthd from
/// its first answer, before that container's actor has looked (it listed the record's Running).
#[test]
fn a_container_that_died_while_berthd_was_away_is_listed_stopped() {
    if !root_or_skip() {
        return;
    }
    let env = idle_after_2s();
    env.ok(&["launch", "busybox", "c1"]);
    env.ok(&["launch", "busybox", "c2"]);
    let init = env.init_pid("c1");
    let first = env.daemon_pid().expect("berthd runs");
    exited_idle(first);
    // SAFETY: plain syscall on a pid we read.
    unsafe { libc::kill(init as i32, libc::SIGKILL) };
    let sock = env.run.join("containers/c1/monitor.sock");
    berth_tests::wait_for(
        Duration::from_secs(15),
        "c1's monitor to see it end",
        || !sock.exists(),
    );
    let list = env.ok(&["list"]);
    let line = |n: &str| {
        list.lines()
            .find(|l| l.split_whitespace().next() == Some(n))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("c1").contains("STOPPED"), "{list}");
    assert!(line("c2").contains("RUNNING"), "{list}");
    assert_eq!(env.status("c1"), "Stopped");
    assert_eq!(env.status("c2"), "Running");
}

#[test]
fn calls_that_arrive_while_berthd_idles_out_are_all_answered() {
    if !root_or_skip() {
        return;
    }
    let env = Env::with(Options {
        storage: Some(Storage::Dir),
        daemon_args: vec!["--idle-timeout".into(), "1".into()],
        ..Default::default()
    });
    env.ok(&["launch", "busybox", "c1"]);
    // Gaps around the timeout (1 s, checked every 0.5 s, then a 0.2 s drain), from two
    // clients out of step, so that calls land just before, during and just after exits; two
    // gaps of 3 s make sure berthd exits at least once however loaded the machine is.
    let gaps_ms = [
        1050u64, 1250, 3000, 1450, 1150, 1350, 1550, 3000, 1000, 1700, 1200,
    ];
    let env = &env;
    let pids: Vec<HashSet<u32>> = std::thread::scope(|s| {
        let clients: Vec<_> = [0u64, 170]
            .into_iter()
            .map(|offset| {
                s.spawn(move || {
                    let mut seen = HashSet::new();
                    std::thread::sleep(Duration::from_millis(offset));
                    for (i, gap) in gaps_ms.iter().enumerate() {
                        std::thread::sleep(Duration::from_millis(*gap));
                        let out = env.berth(&["exec", "c1", "--", "echo", &format!("call {i}")]);
                        assert!(
                            out.status.success(),
                            "call {i} after a {gap} ms gap failed: {}\n{}",
                            text(&out.stderr),
                            env.daemon_log_tail()
                        );
                        assert_eq!(text(&out.stdout).trim(), format!("call {i}"));
                        if let Some(p) = env.daemon_pid() {
                            seen.insert(p);
                        }
                    }
                    seen
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|c| c.join().expect("client"))
            .collect()
    });
    let all: HashSet<u32> = pids.into_iter().flatten().collect();
    // every call above was answered; how many exits fell between them depends on the load
    assert!(
        all.len() >= 2,
        "berthd exited and came back between calls (pids {all:?})"
    );
    assert_eq!(env.status("c1"), "Running");
}

/// init's start time in clock ticks since boot (field 22 of /proc/PID/stat).
fn started_at_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    after_comm.split(' ').nth(19).unwrap().parse().unwrap()
}

#[test]
fn boot_autostart_goes_by_priority_and_host_shutdown_the_other_way() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    for (name, extra) in [
        (
            "a",
            vec![
                "-c",
                "boot.autostart.priority=1",
                "-c",
                "boot.autostart.delay=1",
            ],
        ),
        ("b", vec!["-c", "boot.autostart.priority=5"]),
        ("c", vec!["-c", "boot.autostart.priority=1"]),
    ] {
        let mut args = vec![
            "init",
            "busybox",
            name,
            "-c",
            "boot.autostart=true",
            "-c",
            "boot.host_shutdown_timeout=5",
        ];
        args.extend(extra);
        env.ok(&args);
    }
    env.ok(&["init", "busybox", "manual"]);
    let bad = env.berth(&["init", "busybox", "x", "-c", "boot.autostart.priority=high"]);
    assert!(
        !bad.status.success() && text(&bad.stderr).contains("boot.autostart.priority"),
        "{}",
        text(&bad.stderr)
    );
    // as if the host had rebooted since berthd last ran
    let pid = env.daemon_pid().expect("berthd runs");
    // SAFETY: kill of the daemon we started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    berth_tests::wait_for(Duration::from_secs(10), "berthd to exit", || !alive(pid));
    std::fs::write(env.state.join("boot-id"), "a-boot-long-ago").unwrap();
    env.ok(&["list"]);
    berth_tests::wait_for(Duration::from_secs(20), "a, b and c to start", || {
        ["a", "b", "c"].iter().all(|n| env.status(n) == "Running")
    });
    assert_eq!(env.status("manual"), "Stopped");
    let (a, b, c) = (env.init_pid("a"), env.init_pid("b"), env.init_pid("c"));
    // highest priority first, then by name; a's delay holds c back a second
    assert!(
        started_at_ticks(b) <= started_at_ticks(a),
        "b (priority 5) started after a (priority 1)"
    );
    // SAFETY: sysconf has no failure mode for this name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let gap = (started_at_ticks(c) as f64 - started_at_ticks(a) as f64) / hz;
    assert!(
        gap >= 0.9,
        "c started {gap:.2} s after a, whose boot.autostart.delay is 1 s"
    );
    // host shutdown: lowest priority first
    let out = berth_tests::run(
        std::process::Command::new(berth_tests::bin("berthd"))
            .args(["shutdown", "--bus", &env.bus]),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "berthd shutdown: {}",
        text(&out.stderr)
    );
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        [
            "stopped a (priority 1)",
            "stopped c (priority 1)",
            "stopped b (priority 5)"
        ],
        "{lines:?}"
    );
    for n in ["a", "b", "c", "manual"] {
        assert_eq!(env.status(n), "Stopped", "{n}");
    }
}

/// At host shutdown berthd has often exited idle, and systemd activates nothing once dbus.service
/// is to stop: `berthd shutdown` then runs a berthd of its own (given its options, without
/// autostart) for the stops, and ends it afterwards.
#[test]
fn host_shutdown_runs_a_berthd_of_its_own_when_none_serves() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    env.ok(&[
        "launch",
        "busybox",
        "hi",
        "-c",
        "boot.autostart.priority=5",
        "-c",
        "boot.host_shutdown_timeout=5",
    ]);
    env.ok(&[
        "launch",
        "busybox",
        "lo",
        "-c",
        "boot.autostart.priority=1",
        "-c",
        "boot.host_shutdown_timeout=5",
    ]);
    env.ok(&["init", "busybox", "auto", "-c", "boot.autostart=true"]);
    let (hi, lo) = (env.init_pid("hi"), env.init_pid("lo"));
    // the bus activates no berthd any more (as systemd refuses to at shutdown) ...
    let service = env.dir.join("services/org.berth.Berth1.service");
    let saved = std::fs::read(&service).unwrap();
    std::fs::remove_file(&service).unwrap();
    let reload = |env: &Env| {
        let out = env.busctl(&[
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "ReloadConfig",
        ]);
        assert!(out.status.success(), "ReloadConfig: {}", text(&out.stderr));
    };
    reload(&env);
    // ... and berthd has exited, since a host boot (which its stand-in must not act on)
    let pid = env.daemon_pid().expect("berthd runs");
    // SAFETY: kill of the daemon we started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    berth_tests::wait_for(Duration::from_secs(10), "berthd to exit", || !alive(pid));
    assert!(!env.name_owned("org.berth.Berth1"));
    std::fs::write(env.state.join("boot-id"), "a-boot-long-ago").unwrap();
    assert!(
        alive(hi) && alive(lo),
        "the containers run on without berthd"
    );

    let out = berth_tests::run(
        std::process::Command::new(berth_tests::bin("berthd"))
            .args(["shutdown", "--bus", &env.bus])
            .args([
                "--state-dir".as_ref(),
                env.state.as_os_str(),
                "--run-dir".as_ref(),
                env.run.as_os_str(),
                "--cgroup-parent".as_ref(),
                env.cgroup_parent.as_ref(),
                "--bridge".as_ref(),
                env.bridge.as_ref(),
                "--monitor".as_ref(),
                berth_tests::bin("berth-monitor").as_os_str(),
            ]),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "berthd shutdown: {}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("no berthd serves"),
        "{}",
        text(&out.stderr)
    );
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        ["stopped lo (priority 1)", "stopped hi (priority 5)"],
        "{lines:?}"
    );
    assert!(!alive(hi) && !alive(lo), "the containers' inits are gone");
    assert!(
        !env.name_owned("org.berth.Berth1"),
        "the berthd it ran is gone"
    );

    // back to how it was, without a boot to act on
    std::fs::write(
        env.state.join("boot-id"),
        std::fs::read("/proc/sys/kernel/random/boot_id").unwrap(),
    )
    .unwrap();
    std::fs::write(&service, saved).unwrap();
    reload(&env);
    for n in ["hi", "lo", "auto"] {
        assert_eq!(env.status(n), "Stopped", "{n}");
    }
}
