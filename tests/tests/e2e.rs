//! End-to-end: a private system bus, real polkitd, berthd by D-Bus activation, real
//! unprivileged containers, the real CLI and busctl. Runs as root (CI is root).

use berth_tests::{Env, Options, Storage, text, unprivileged_user, wait_for};
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

/// Everything about one container, as a user would check it.
/// The lifecycle through the CLI, over D-Bus or (`varlink`) the varlink socket: the same
/// commands and the same output either way.
fn lifecycle(storage: Storage, varlink: bool) {
    if !root_or_skip() {
        return;
    }
    let mut env = Env::new(storage);
    env.varlink = varlink;
    env.ok(&["launch", "busybox", "c1"]);
    assert_eq!(env.status("c1"), "Running");

    // a whole system: busybox init is PID 1, in its own namespaces, as the mapped root
    let cmdline = env.ok(&["exec", "c1", "--", "cat", "/proc/1/cmdline"]);
    assert!(cmdline.starts_with("init"), "{cmdline:?}");
    assert_eq!(env.ok(&["exec", "c1", "--", "hostname"]).trim(), "c1");
    assert_eq!(env.ok(&["exec", "c1", "--", "id", "-u"]).trim(), "0");
    let init = env.init_pid("c1");
    let status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u32>()
            .unwrap()
            >= 100_000,
        "init runs as a mapped uid: {uid_line}"
    );
    let time = std::path::Path::new("/proc/self/ns/time").exists();
    for ns in ["mnt", "pid", "net", "uts", "ipc", "user", "cgroup", "time"] {
        if ns == "time" && !time {
            continue;
        }
        let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let cont = std::fs::read_link(format!("/proc/{init}/ns/{ns}")).unwrap();
        assert_ne!(host, cont, "{ns} namespace is the host's");
    }
    // what exec runs is in init's time namespace (as in all its others), one the container's
    // root may setns into, as it may after a CRIU restore (zdtm timens_nested)
    if time {
        let init_time = std::fs::read_link(format!("/proc/{init}/ns/time")).unwrap();
        assert_eq!(
            env.ok(&["exec", "c1", "--", "readlink", "/proc/self/ns/time"])
                .trim(),
            init_time.to_string_lossy()
        );
    }
    // its own cgroup in every hierarchy
    let cgroups = std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap();
    for line in cgroups.lines() {
        assert!(
            line.ends_with(&format!("/{}/c1", env.cgroup_parent)),
            "init outside its cgroup: {line}"
        );
    }
    // a trimmed bounding set: no sys_module (16), sys_rawio (17), sys_time (25), mac_* (32, 33)
    let capbnd = status.lines().find(|l| l.starts_with("CapBnd:")).unwrap();
    let bits = u64::from_str_radix(capbnd.split_whitespace().nth(1).unwrap(), 16).unwrap();
    for cap in [16, 17, 25, 32, 33] {
        assert_eq!(
            bits & (1 << cap),
            0,
            "capability {cap} left in the bounding set: {capbnd}"
        );
    }
    // and what exec runs has the same bounding set as init, not the monitor's full one
    let exec_bnd = env.ok(&["exec", "c1", "--", "grep", "CapBnd", "/proc/self/status"]);
    assert_eq!(
        exec_bnd.trim(),
        capbnd.trim(),
        "an exec'd process kept capabilities init does not have"
    );
    // no host fd leaked into init: only the console on 0, 1 and 2
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{init}/fd"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        fds.iter().all(|f| ["0", "1", "2"].contains(&f.as_str())),
        "init has fds {fds:?}"
    );
    // the container's root owns its files (idmapped rootfs or shifted)
    env.ok(&[
        "exec",
        "c1",
        "--",
        "sh",
        "-c",
        "echo data > /root/file && chown 0:0 /root/file",
    ]);
    assert_eq!(
        env.ok(&["exec", "c1", "--", "cat", "/root/file"]).trim(),
        "data"
    );
    // /sys is read-only, /dev has its nodes, the console log fills
    let out = env.berth(&["exec", "c1", "--", "sh", "-c", "touch /sys/x"]);
    assert!(!out.status.success());
    env.ok(&[
        "exec",
        "c1",
        "--",
        "sh",
        "-c",
        "echo x > /dev/null && test -c /dev/console && test -c /dev/pts/ptmx",
    ]);
    wait_for(Duration::from_secs(10), "the console banner", || {
        std::fs::read_to_string(env.run.join("containers/c1/console.log"))
            .unwrap_or_default()
            .contains("BusyBox")
    });

    // exit status and stdio pass through
    let out = env.berth(&[
        "exec",
        "c1",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    let out = env.berth_stdin(&["exec", "c1", "--", "tr", "a-z", "A-Z"], Some(b"hello\n"));
    assert_eq!(text(&out.stdout), "HELLO\n");
    let out = env.berth(&[
        "exec",
        "c1",
        "--env",
        "GREETING=hi",
        "--cwd",
        "/tmp",
        "--",
        "sh",
        "-c",
        "echo $GREETING $(pwd)",
    ]);
    assert_eq!(text(&out.stdout), "hi /tmp\n");
    // a terminal when the caller has one (run under script(1) to have a pty)
    let berth = berth_tests::bin_dir().join("berth");
    let mut script = std::process::Command::new("script");
    script.args([
        "-qec",
        &format!("{} exec c1 -- tty", berth.display()),
        "/dev/null",
    ]);
    env.cli_env(&mut script);
    let out = berth_tests::run(&mut script, Duration::from_secs(60));
    assert!(
        text(&out.stdout).contains("/dev/pts/"),
        "no terminal: {:?} {:?}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = env.berth(&["exec", "c1", "--", "no-such-command"]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no-such-command"),
        "{}",
        text(&out.stderr)
    );

    // list (table and json)
    let table = env.ok(&["list"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("c1") && l.contains("RUNNING") && l.contains("busybox")),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(json[0]["name"], "c1");
    assert_eq!(json[0]["status"], "Running");
    assert_eq!(json[0]["init_pid"], init);
    let addr = json[0]["ipv4"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["c1", "RUNNING", &init.to_string(), &addr, "busybox"]),
        "{table}"
    );

    // a graceful stop (busybox init powers off on SIGUSR2), start, restart
    env.ok(&["stop", "c1"]);
    assert_eq!(env.status("c1"), "Stopped");
    assert!(
        env.processes().iter().all(|p| !is_container_process(*p)),
        "nothing of c1 runs after stop"
    );
    env.ok(&["start", "c1"]);
    let before = env.init_pid("c1");
    env.ok(&["restart", "c1", "--force"]);
    assert_eq!(env.status("c1"), "Running");
    assert_ne!(env.init_pid("c1"), before);

    // delete --force leaves no process, mount, cgroup or file behind
    let rootfs = env.pool().join("containers/c1");
    assert!(rootfs.exists());
    env.ok(&["delete", "--force", "c1"]);
    assert_eq!(env.berth(&["info", "c1"]).status.code(), Some(1));
    wait_for(Duration::from_secs(5), "processes to go", || {
        env.processes().is_empty()
    });
    assert!(!rootfs.exists(), "rootfs left behind");
    assert!(
        !env.run.join("containers/c1").exists(),
        "runtime files left behind"
    );
    for d in env.cgroup_dirs("c1") {
        assert!(!d.exists(), "cgroup {} left behind", d.display());
    }
    assert!(Env::mounts_mentioning(&rootfs.display().to_string()).is_empty());
}

/// A process of a container (in a non-host pid namespace).
fn is_container_process(pid: u32) -> bool {
    let host = std::fs::read_link("/proc/self/ns/pid").ok();
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok() != host
}

#[test]
fn a_call_to_the_name_activates_berthd() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    let pid = env
        .daemon_pid()
        .expect("building the image activated berthd");
    // SAFETY: stopping the daemon we started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    wait_for(Duration::from_secs(10), "berthd to exit", || {
        !env.name_owned("org.berth.Berth1")
    });
    assert!(env.daemon_pid().is_none());
    let out = env.busctl(&[
        "call",
        "org.berth.Berth1",
        "/org/berth/Berth1",
        "org.berth.Berth1.Manager",
        "ListImages",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("busybox"));
    let again = env.daemon_pid().expect("the call activated berthd");
    assert_ne!(again, pid);
}

#[test]
fn container_lifecycle_on_dir_storage() {
    lifecycle(Storage::Dir, false);
}

#[test]
fn container_lifecycle_on_btrfs_storage() {
    lifecycle(Storage::Btrfs, false);
}

#[test]
fn container_lifecycle_over_varlink() {
    lifecycle(Storage::Dir, true);
}

#[test]
fn btrfs_containers_are_snapshots_of_the_image() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Btrfs);
    env.ok(&["init", "busybox", "snap"]);
    use std::os::unix::fs::MetadataExt;
    // a btrfs subvolume's root has inode 256
    let vol = env.pool().join("containers/snap");
    assert_eq!(
        std::fs::metadata(&vol).unwrap().ino(),
        256,
        "container volume is a subvolume"
    );
    let images: Vec<_> = std::fs::read_dir(env.pool().join("images"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(images.len(), 1);
    assert_eq!(
        images[0].metadata().unwrap().ino(),
        256,
        "image base is a subvolume"
    );
    drop(images); // (a DirEntry keeps its directory open)

    // berthd re-attaches and mounts a loop-backed pool when it starts
    let pid = env.daemon_pid().unwrap();
    // SAFETY: stopping the daemon we started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    wait_for(Duration::from_secs(10), "berthd to exit", || {
        !std::path::Path::new(&format!("/proc/{pid}/exe")).exists()
    });
    let pool = std::ffi::CString::new(env.pool().as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: unmounting the test's own pool.
    let r = unsafe { libc::umount2(pool.as_ptr(), 0) };
    assert_eq!(
        r,
        0,
        "unmount the pool: {}",
        std::io::Error::last_os_error()
    );
    assert!(!vol.exists());
    env.ok(&["start", "snap"]);
    assert!(vol.exists(), "the pool is mounted again");
    assert_eq!(env.ok(&["exec", "snap", "--", "echo", "up"]).trim(), "up");
}

#[test]
fn containers_survive_berthd_being_killed() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    env.ok(&["launch", "busybox", "x"]);
    let init = env.init_pid("x");
    let daemon = env.daemon_pid().expect("berthd runs");
    // the monitor shows whose it is; berthd keeps a standby monitor for the next start
    let monitor = env
        .monitor_status("x")
        .expect("the monitor answers")
        .monitor_pid;
    let args = |pid: i32| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).trim().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        args(monitor).get(1..),
        Some(&["x".to_string()][..]),
        "monitor {monitor}'s command line: {:?}",
        args(monitor)
    );
    let mut standby = None;
    wait_for(Duration::from_secs(5), "berthd's standby monitor", || {
        standby = children_of(daemon)
            .into_iter()
            .find(|&p| args(p).get(1).is_some_and(|a| a == "(standby)"));
        standby.is_some()
    });
    let standby = standby.unwrap();
    let gone = |pid: i32| {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
    };
    // SAFETY: kill -9 of the daemon we started.
    unsafe { libc::kill(daemon as i32, libc::SIGKILL) };
    wait_for(Duration::from_secs(5), "berthd to die", || {
        gone(daemon as i32)
    });
    wait_for(
        Duration::from_secs(5),
        "the standby monitor to end with berthd",
        || gone(standby),
    );
    // the bus drops the name once it has read the dead connection's end: a call routed to
    // it before that is answered NoReply (a bus's race, not berthd's)
    wait_for(
        Duration::from_secs(5),
        "the bus to drop berthd's name",
        || !env.name_owned("org.berth.Berth1"),
    );
    // the next call re-activates berthd, which finds the container still running
    let list = env.ok(&["list"]);
    let row: Vec<&str> = list
        .lines()
        .find(|l| l.starts_with("x "))
        .expect("x is listed")
        .split_whitespace()
        .collect();
    assert_eq!(
        row[..3],
        ["x", "RUNNING", init.to_string().as_str()],
        "berth list shows x running with the same init: {list}"
    );
    assert_ne!(env.daemon_pid(), Some(daemon));
    assert_eq!(env.init_pid("x"), init, "same init");
    assert_eq!(
        env.ok(&["exec", "x", "--", "echo", "still", "here"]).trim(),
        "still here"
    );
    // and berthd keeps following it: a stop from inside is noticed
    env.ok(&["exec", "x", "--", "poweroff"]);
    wait_for(
        Duration::from_secs(15),
        "the container to power off",
        || env.status("x") == "Stopped",
    );
}

/// The processes whose parent is `pid` (a child belongs to the thread that forked it).
fn children_of(pid: u32) -> Vec<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten();
    tasks
        .flat_map(|t| {
            std::fs::read_to_string(t.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// Runs berth-monitor as berthd runs a standby, with `input` on its stdin; (exit code, stdout).
fn monitor_given(input: &[u8]) -> (Option<i32>, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(berth_tests::bin("berth-monitor"))
        .arg("(standby)")
        // cgroups that cannot be joined: it waits where it is, as on a first start after boot
        .env("BERTH_MONITOR_CGROUPS", "/nonexistent/cgroup.procs")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run berth-monitor");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.code(), text(&out.stdout))
}

#[test]
fn a_standby_monitor_ends_quietly_unused_and_reports_a_bad_spec() {
    // its stdin closes: berthd no longer needs it
    assert_eq!(monitor_given(b""), (Some(0), String::new()));
    // a spec that is not one is reported
    for input in [&b"{\"name\": 7}"[..], b"[]\n{}", b"\xff\xfe", b"\0"] {
        let (code, out) = monitor_given(input);
        assert_eq!(code, Some(2), "{input:?}: {out}");
        assert!(out.contains("read the container spec"), "{input:?}: {out}");
    }
}

#[test]
fn a_standby_monitor_is_not_used_once_its_binary_is_replaced() {
    let dir = std::env::temp_dir().join(format!("berth-standby-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("berth-monitor");
    berth_tests::copy_executable(&berth_tests::bin("berth-monitor"), &exe);
    let mut standby = berth_runtime::monitor::Standby::spawn(&exe, &[]).unwrap();
    assert!(standby.usable(), "a fresh standby is usable");
    // an upgrade installs a new binary under the same name
    std::fs::remove_file(&exe).unwrap();
    berth_tests::copy_executable(&berth_tests::bin("berth-monitor"), &exe);
    assert!(
        !standby.usable(),
        "a standby running the replaced binary is not"
    );
    drop(standby);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_container_does_not_outlive_its_monitor() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    env.ok(&["launch", "busybox", "m"]);
    env.ok(&[
        "exec",
        "m",
        "--",
        "sh",
        "-c",
        "sleep 1000 >/dev/null 2>&1 </dev/null &",
    ]);
    let init = env.init_pid("m");
    let monitor = env
        .monitor_status("m")
        .expect("the monitor answers")
        .monitor_pid;
    // SAFETY: kill -9 of the container's monitor.
    unsafe { libc::kill(monitor, libc::SIGKILL) };
    // init goes with it (and the rest of the container with init), and berth says so
    wait_for(
        Duration::from_secs(10),
        "the container to be recorded stopped",
        || env.status("m") == "Stopped",
    );
    wait_for(
        Duration::from_secs(10),
        "the container's processes to end",
        || {
            env.processes().iter().all(|p| {
                *p as i32 == monitor || !std::path::Path::new(&format!("/proc/{p}")).exists()
            })
        },
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{init}/status")).exists()
            || std::fs::read_to_string(format!("/proc/{init}/stat"))
                .unwrap_or_default()
                .contains(") Z "),
        "init {init} outlived its monitor"
    );
    // and it starts again as one container, not two
    env.ok(&["start", "m"]);
    assert_eq!(
        env.ok(&[
            "exec",
            "m",
            "--",
            "sh",
            "-c",
            "ps | grep '[s]leep 1000' | wc -l"
        ])
        .trim(),
        "0"
    );
}

#[test]
fn an_unprivileged_caller_is_refused_by_polkit() {
    if !root_or_skip() {
        return;
    }
    let user = unprivileged_user();
    let env = Env::new(Storage::Dir);
    env.ok(&["init", "busybox", "mine"]);
    let create = [
        "call",
        "org.berth.Berth1",
        "/org/berth/Berth1",
        "org.berth.Berth1.Manager",
        "CreateContainer",
        "ssa{sv}",
        "theirs",
        "busybox",
        "0",
    ];
    let out = env.busctl_as(user, &create);
    assert!(
        !out.status.success(),
        "an unprivileged create succeeded: {}",
        text(&out.stdout)
    );
    // busctl allows interactive authorization; no agent can answer: NotAuthorized
    assert!(
        text(&out.stderr).contains("not authorized for org.berth.Berth1.create-container"),
        "{}",
        text(&out.stderr)
    );
    let out = env.gdbus_call_as(
        user,
        "/org/berth/Berth1",
        "org.berth.Berth1.Manager.StartContainer",
        &["--interactive", "mine", "{}"],
    );
    assert!(
        text(&out.stderr).contains("org.berth.Berth1.Error.NotAuthorized"),
        "{}",
        text(&out.stderr)
    );
    // a caller that does not allow interaction is told it would need it
    let out = env.gdbus_call_as(
        user,
        "/org/berth/Berth1",
        "org.berth.Berth1.Manager.StartContainer",
        &["mine", "{}"],
    );
    assert!(
        text(&out.stderr).contains("org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"),
        "{}",
        text(&out.stderr)
    );
    let out = env.gdbus_call_as(
        user,
        "/org/berth/Berth1/container/mine",
        "org.berth.Berth1.Container.Exec",
        &["--interactive", "['true']", "{}"],
    );
    assert!(
        text(&out.stderr).contains("org.berth.Berth1.Error.NotAuthorized"),
        "{}",
        text(&out.stderr)
    );
    let out = env.busctl_as(
        user,
        &[
            "--allow-interactive-authorization=no",
            "call",
            "org.berth.Berth1",
            "/org/berth/Berth1/container/mine",
            "org.berth.Berth1.Container",
            "Delete",
            "a{sv}",
            "0",
        ],
    );
    assert!(!out.status.success());
    // nothing changed, and reading is allowed
    let out = env.busctl_as(
        user,
        &[
            "call",
            "org.berth.Berth1",
            "/org/berth/Berth1",
            "org.berth.Berth1.Manager",
            "ListContainers",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    assert!(listing.contains("\"mine\" \"Stopped\""), "{listing}");
    assert!(!listing.contains("theirs"), "{listing}");
    assert_eq!(env.status("mine"), "Stopped");
}

#[test]
fn bad_input_gets_a_specific_error_and_changes_nothing() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    let bad_names = [
        "",
        "-x",
        "x-",
        "9lives",
        "a/b",
        "..",
        "a..b",
        "under_score",
        &"n".repeat(64),
    ];
    for name in bad_names {
        let out = env.berth(&["init", "busybox", "--", name]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(
            text(&out.stderr).contains("InvalidName"),
            "{name}: {}",
            text(&out.stderr)
        );
    }
    // the empty name, straight over D-Bus
    for (method, args) in [
        ("StartContainer", &["''", "{}"][..]),
        ("CreateContainer", &["''", "'busybox'", "{}"][..]),
    ] {
        let out = env.gdbus_call_as(
            "root",
            "/org/berth/Berth1",
            &format!("org.berth.Berth1.Manager.{method}"),
            args,
        );
        assert!(
            text(&out.stderr).contains("org.berth.Berth1.Error.InvalidName"),
            "{method}: {}",
            text(&out.stderr)
        );
    }
    // no NAME at all: the CLI asks berth to pick one
    let out = env.ok(&["init", "busybox"]);
    let picked = out
        .trim()
        .strip_prefix("Creating ")
        .expect("a picked name")
        .to_string();
    env.ok(&["delete", &picked]);
    let out = env.berth(&["launch", "no-such-image", "c"]);
    assert!(
        text(&out.stderr).contains("NoSuchImage"),
        "{}",
        text(&out.stderr)
    );
    let out = env.berth(&["init", "busybox", "c", "-c", "limits.memory=lots"]);
    assert!(
        text(&out.stderr).contains("InvalidConfig"),
        "{}",
        text(&out.stderr)
    );
    let out = env.berth(&["init", "busybox", "c", "-c", "no.such.key=1"]);
    assert!(
        text(&out.stderr).contains("InvalidConfig"),
        "{}",
        text(&out.stderr)
    );
    // unknown option key and wrong option type in a{sv}
    let out = env.busctl(&[
        "call",
        "org.berth.Berth1",
        "/org/berth/Berth1",
        "org.berth.Berth1.Manager",
        "CreateContainer",
        "ssa{sv}",
        "c",
        "busybox",
        "1",
        "colour",
        "s",
        "red",
    ]);
    assert!(
        text(&out.stderr).contains("unknown option"),
        "{}",
        text(&out.stderr)
    );
    let out = env.busctl(&[
        "call",
        "org.berth.Berth1",
        "/org/berth/Berth1",
        "org.berth.Berth1.Manager",
        "CreateContainer",
        "ssa{sv}",
        "c",
        "busybox",
        "1",
        "start",
        "s",
        "yes",
    ]);
    assert!(
        text(&out.stderr).contains("must have type"),
        "{}",
        text(&out.stderr)
    );
    let list: serde_json::Value =
        serde_json::from_str(&env.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 0, "nothing was created");
    assert!(
        std::fs::read_dir(env.pool().join("containers"))
            .unwrap()
            .next()
            .is_none()
    );

    // state errors
    env.ok(&["launch", "busybox", "c"]);
    let out = env.berth(&["start", "c"]);
    assert!(
        text(&out.stderr).contains("InvalidState"),
        "{}",
        text(&out.stderr)
    );
    let out = env.berth(&["delete", "c"]);
    assert!(
        text(&out.stderr).contains("InvalidState"),
        "{}",
        text(&out.stderr)
    );
    let out = env.berth(&["launch", "busybox", "c"]);
    assert!(
        text(&out.stderr).contains("AlreadyExists") || text(&out.stderr).contains("InvalidState"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(env.status("c"), "Running");
    // a command line too big for the monitor's protocol is refused as such
    let huge = "x".repeat(100_000);
    let out = env.berth(&["exec", "c", "--", "echo", &huge]);
    assert!(
        text(&out.stderr).contains("InvalidConfig") && text(&out.stderr).contains("at most"),
        "{}",
        text(&out.stderr)
    );
    // and the daemon keeps serving
    assert_eq!(env.ok(&["exec", "c", "--", "echo", "ok"]).trim(), "ok");
    env.ok(&["start", "--if-needed", "c"]);
}

#[test]
fn busctl_sees_the_object_tree() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    env.ok(&["init", "busybox", "web-1"]);
    let out = env.busctl(&["tree", "org.berth.Berth1"]);
    let tree = text(&out.stdout);
    assert!(
        tree.contains("/org/berth/Berth1/container/web_2d1"),
        "{tree}"
    );
    assert!(tree.contains("/org/berth/Berth1/image/"), "{tree}");
    let out = env.busctl(&["introspect", "org.berth.Berth1", "/org/berth/Berth1"]);
    let intro = text(&out.stdout);
    for member in [
        ".CreateContainer",
        ".ListContainers",
        ".GetContainer",
        ".StartContainer",
        ".ContainerNew",
        "org.freedesktop.DBus.ObjectManager",
    ] {
        assert!(intro.contains(member), "{member} missing:\n{intro}");
    }
    let out = env.busctl(&[
        "get-property",
        "org.berth.Berth1",
        "/org/berth/Berth1/container/web_2d1",
        "org.berth.Berth1.Container",
        "Status",
    ]);
    assert_eq!(text(&out.stdout).trim(), "s \"Stopped\"");
    let out = env.busctl(&[
        "call",
        "org.berth.Berth1",
        "/org/berth/Berth1/container/web_2d1",
        "org.berth.Berth1.Container",
        "Start",
        "a{sv}",
        "0",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = env.busctl(&[
        "get-property",
        "org.berth.Berth1",
        "/org/berth/Berth1/container/web_2d1",
        "org.berth.Berth1.Container",
        "Status",
    ]);
    assert_eq!(text(&out.stdout).trim(), "s \"Running\"");
}

#[test]
fn a_pure_cgroup_v2_host_works() {
    if !root_or_skip() {
        return;
    }
    let env = Env::with(Options {
        cgroup_v2: true,
        ..Default::default()
    });
    env.ok(&["launch", "busybox", "v2"]);
    let init = env.init_pid("v2");
    // inside: a cgroup namespace rooted at the container's own group, cgroup2 mounted alone
    // (the kernel still lists its v1 hierarchies here; the simulated host only mounts v2)
    let own = env.ok(&["exec", "v2", "--", "cat", "/proc/self/cgroup"]);
    assert!(own.lines().any(|l| l == "0::/"), "{own}");
    let mounts = env.ok(&["exec", "v2", "--", "cat", "/proc/mounts"]);
    assert!(
        mounts
            .lines()
            .any(|l| l.starts_with("cgroup2 /sys/fs/cgroup cgroup2")),
        "{mounts}"
    );
    // outside: the group is in the v2 tree (the host's /sys/fs/cgroup/unified)
    let unified = berth_tests::cgroup_mounts()
        .into_iter()
        .find(|m| m.ends_with("unified"))
        .expect("hybrid host");
    let procs =
        std::fs::read_to_string(unified.join(&env.cgroup_parent).join("v2/cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|l| l.trim() == init.to_string()),
        "{procs}"
    );
    env.ok(&["stop", "--force", "v2"]);
    env.ok(&["delete", "v2"]);
    assert!(!unified.join(&env.cgroup_parent).join("v2").exists());
}

#[test]
fn filesystems_without_idmapped_mounts_get_a_shifted_rootfs() {
    if !root_or_skip() {
        return;
    }
    let env = Env::with(Options {
        daemon_args: vec!["--no-idmapped-mounts".into()],
        ..Default::default()
    });
    env.ok(&["launch", "busybox", "shifted"]);
    use std::os::unix::fs::MetadataExt;
    let busybox = env.pool().join("containers/shifted/rootfs/bin/busybox");
    assert_eq!(
        std::fs::symlink_metadata(&busybox).unwrap().uid(),
        1_000_000,
        "rootfs shifted into the mapped range"
    );
    let info: serde_json::Value =
        serde_json::from_str(&env.ok(&["info", "shifted", "--format", "json"])).unwrap();
    assert_eq!(info["config"]["volatile.rootfs.shifted"], "true");
    assert_eq!(
        env.ok(&["exec", "shifted", "--", "stat", "-c", "%u", "/bin/busybox"])
            .trim(),
        "0"
    );
    env.ok(&[
        "exec",
        "shifted",
        "--",
        "sh",
        "-c",
        "echo ok > /root/f && chown 0:0 /root/f",
    ]);
    assert_eq!(
        std::fs::metadata(env.pool().join("containers/shifted/rootfs/root/f"))
            .unwrap()
            .uid(),
        1_000_000
    );
    // the image itself stays unshifted
    let images = env.pool().join("images");
    let img = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    assert_eq!(
        std::fs::symlink_metadata(img.join("rootfs/bin/busybox"))
            .unwrap()
            .uid(),
        0
    );
}

#[test]
fn containers_get_an_address_on_the_bridge_and_reach_each_other() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    env.ok(&["launch", "busybox", "n1"]);
    env.ok(&["launch", "busybox", "n2"]);
    let addr = |name: &str| -> String {
        let info: serde_json::Value =
            serde_json::from_str(&env.ok(&["info", name, "--format", "json"])).unwrap();
        let cidr = info["config"]["volatile.eth0.ipv4"]
            .as_str()
            .expect("an address is recorded")
            .to_string();
        cidr.split('/').next().unwrap().to_string()
    };
    let (a1, a2) = (addr("n1"), addr("n2"));
    assert_ne!(a1, a2);
    // configured before init ran: eth0 carries the recorded address, a default route exists
    let ip = env.ok(&["exec", "n1", "--", "ip", "-4", "addr", "show", "eth0"]);
    assert!(ip.contains(&format!("inet {a1}/20")), "{ip}");
    let routes = env.ok(&["exec", "n1", "--", "ip", "route"]);
    assert!(
        routes.lines().any(|l| l.starts_with("default via")),
        "{routes}"
    );
    // container to container across the bridge, and host to container
    env.ok(&["exec", "n1", "--", "ping", "-c", "1", "-W", "3", &a2]);
    let out = std::process::Command::new("busybox")
        .args(["ping", "-c", "1", "-W", "3", &a1])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "host cannot reach {a1}: {}",
        text(&out.stdout)
    );
    // the address is the container's for good: the same after a restart
    env.ok(&["restart", "--force", "n1"]);
    let ip = env.ok(&["exec", "n1", "--", "ip", "-4", "addr", "show", "eth0"]);
    assert!(ip.contains(&format!("inet {a1}/20")), "{ip}");
    // a deleted container's address is free again, and its host veth is gone
    env.ok(&["delete", "--force", "n2"]);
    env.ok(&["launch", "busybox", "n3"]);
    assert_eq!(addr("n3"), a2);
    let links = text(
        &std::process::Command::new("ip")
            .args(["-o", "link", "show", "master", &env.bridge])
            .output()
            .unwrap()
            .stdout,
    );
    assert_eq!(
        links.lines().count(),
        2,
        "one veth per running container: {links}"
    );
}

#[test]
fn a_container_cannot_take_a_neighbours_address_or_mac() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    env.ok(&["launch", "busybox", "n1"]);
    env.ok(&["launch", "busybox", "n2"]);
    let info = |name: &str| -> serde_json::Value {
        serde_json::from_str(&env.ok(&["info", name, "--format", "json"])).unwrap()
    };
    let a1 = info("n1")["config"]["volatile.eth0.ipv4"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mac = |name: &str| {
        env.ok(&["exec", name, "--", "cat", "/sys/class/net/eth0/address"])
            .trim()
            .to_string()
    };
    let (mac1, mac2) = (mac("n1"), mac("n2"));
    let host_ping = |addr: &str| {
        std::process::Command::new("busybox")
            .args(["ping", "-c", "1", "-W", "2", addr])
            .output()
            .unwrap()
            .status
            .success()
    };
    let host_sees = |addr: &str| {
        let o = std::process::Command::new("ip")
            .args(["neigh", "show", addr, "dev", &env.bridge])
            .output()
            .unwrap();
        text(&o.stdout)
    };
    // n2 claims n1's address and announces it (gratuitous ARP), as an attacker would
    let take_over = || {
        assert!(host_ping(&a1), "the host reaches n1");
        assert!(host_sees(&a1).contains(&mac1), "{}", host_sees(&a1));
        // the kernel keeps a fresh entry for a second (locktime) whatever it hears
        std::thread::sleep(std::time::Duration::from_millis(1500));
        env.berth(&[
            "exec", "n2", "--", "arping", "-U", "-c", "3", "-w", "3", "-I", "eth0", "-s", &a1, &a1,
        ]);
        host_sees(&a1)
    };
    env.ok(&[
        "exec",
        "n2",
        "--",
        "ip",
        "addr",
        "add",
        &format!("{a1}/32"),
        "dev",
        "eth0",
    ]);
    let seen = take_over();
    assert!(
        seen.contains(&mac1) && !seen.contains(&mac2),
        "n2 took over n1's address: {seen}"
    );
    // n2 wearing n1's MAC gets nothing across
    let gw = env
        .ok(&["exec", "n2", "--", "ip", "route"])
        .lines()
        .find_map(|l| {
            l.strip_prefix("default via ")
                .map(|r| r.split(' ').next().unwrap().to_string())
        })
        .unwrap();
    env.ok(&[
        "exec",
        "n2",
        "--",
        "ip",
        "addr",
        "del",
        &format!("{a1}/32"),
        "dev",
        "eth0",
    ]);
    env.ok(&["exec", "n2", "--", "ping", "-c", "1", "-W", "2", &gw]);
    env.ok(&[
        "exec", "n2", "--", "ip", "link", "set", "eth0", "address", &mac1,
    ]);
    assert!(
        !env.berth(&["exec", "n2", "--", "ping", "-c", "1", "-W", "2", &gw])
            .status
            .success(),
        "n2 with n1's MAC reached the host"
    );
    env.ok(&[
        "exec", "n2", "--", "ip", "link", "set", "eth0", "address", &mac2,
    ]);
    // one element per guarded port, in berth's own table for this bridge
    let table = format!("berth_{}", env.bridge);
    let nft = |args: &[&str]| {
        std::process::Command::new("nft")
            .args(args)
            .output()
            .unwrap()
    };
    let ports = || {
        text(&nft(&["list", "set", "bridge", &table, "ports"]).stdout)
            .matches("\"vb")
            .count()
    };
    assert_eq!(ports(), 2);
    // the test can tell: without the guard, the same attack works
    assert!(nft(&["delete", "table", "bridge", &table]).status.success());
    env.ok(&[
        "exec",
        "n2",
        "--",
        "ip",
        "addr",
        "add",
        &format!("{a1}/32"),
        "dev",
        "eth0",
    ]);
    let seen = take_over();
    assert!(
        seen.contains(&mac2),
        "without the guard n2 should have taken n1's address: {seen}"
    );
    // deleting a container whose guard is already gone works; the next start writes the
    // table again (as after a firewall's `nft flush ruleset`), and a restart guards n1 again
    env.ok(&["delete", "--force", "n2"]);
    env.ok(&["launch", "busybox", "n3"]);
    assert_eq!(ports(), 1);
    env.ok(&["restart", "--force", "n1"]);
    assert_eq!(ports(), 2);
    env.ok(&["delete", "--force", "n3"]);
    assert_eq!(ports(), 1);
    let macs = text(&nft(&["list", "set", "bridge", &table, "macs"]).stdout);
    assert!(
        macs.contains(&mac1) && macs.matches("\"vb").count() == 1,
        "{macs}"
    );
}

#[test]
fn host_users_cannot_reach_container_files() {
    if !root_or_skip() {
        return;
    }
    let user = unprivileged_user();
    let env = Env::new(Storage::Btrfs);
    env.ok(&["launch", "busybox", "s"]);
    // container root makes a setuid-root program: on disk it belongs to host uid 0
    env.ok(&[
        "exec",
        "s",
        "--",
        "sh",
        "-c",
        "cp /bin/busybox /suid && chmod 4755 /suid",
    ]);
    let planted = env.pool().join("containers/s/rootfs/suid");
    let run_as = |args: &[&str]| {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid", user, "--regid", user, "--clear-groups"])
            .args(args);
        berth_tests::run(&mut cmd, Duration::from_secs(10))
    };
    let out = run_as(&[planted.to_str().unwrap(), "id", "-u"]);
    assert!(
        !out.status.success() && !text(&out.stdout).contains('0'),
        "a host user ran the container's setuid file: {}",
        text(&out.stdout)
    );
    // nor the image's files, the snapshots', the database or the console log
    env.ok(&["snapshot", "create", "s", "snap"]);
    for p in [
        env.pool().join("images"),
        env.pool().join("containers"),
        env.pool().join("snapshots"),
        env.state.join("berth.db"),
        env.run.join("containers/s/console.log"),
    ] {
        assert!(p.exists(), "{} exists", p.display());
        let out = run_as(&[if p.is_dir() { "ls" } else { "cat" }, p.to_str().unwrap()]);
        assert!(
            !out.status.success(),
            "{} is readable by {user}: {}",
            p.display(),
            text(&out.stdout)
        );
    }
    // what made this matter: on disk the file is a setuid program of host root
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = std::fs::metadata(&planted).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o4755));

    // nor through the pool's loop file (the whole filesystem) or the kept image archives
    let loop_file = env.state.join("disks/default.img");
    let images = env.state.join("images");
    let archive = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("image"))
        .find(|p| p.is_file())
        .expect("a kept archive");
    let modes = || -> Vec<u32> {
        [&loop_file, &env.state.join("disks"), &images]
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().mode() & 0o7777)
            .collect()
    };
    let unreadable = |why: &str| {
        for p in [&loop_file, &archive] {
            let out = run_as(&["cat", p.to_str().unwrap()]);
            assert!(
                !out.status.success() && out.stdout.is_empty(),
                "{why}: {} is readable by {user}",
                p.display()
            );
            let mut nobody = std::process::Command::new("setpriv");
            nobody
                .args([
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "head",
                    "-c",
                    "1",
                ])
                .arg(p);
            let out = berth_tests::run(&mut nobody, Duration::from_secs(10));
            assert!(
                !out.status.success() && text(&out.stderr).contains("Permission denied"),
                "{why}: nobody opened {}",
                p.display()
            );
        }
    };
    assert_eq!(modes(), [0o600, 0o700, 0o700], "as made");
    unreadable("as made");
    // an older berth made them readable: berthd puts them right when it starts
    for (p, mode) in [
        (&loop_file, 0o644),
        (&env.state.join("disks"), 0o755),
        (&images, 0o755),
    ] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let pid = env.daemon_pid().unwrap();
    // SAFETY: signalling our own test daemon.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_for(Duration::from_secs(10), "berthd to exit", || {
        env.daemon_pid() != Some(pid)
    });
    env.ok(&["list"]);
    assert_eq!(modes(), [0o600, 0o700, 0o700], "after a start of berthd");
    unreadable("after a start of berthd");
    // and `berthd init` too
    std::fs::set_permissions(&loop_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut init = std::process::Command::new(berth_tests::bin("berthd"));
    init.arg("init").arg("--state-dir").arg(&env.state);
    let out = berth_tests::run(&mut init, Duration::from_secs(60));
    assert!(out.status.success(), "berthd init: {}", text(&out.stderr));
    assert_eq!(modes()[0], 0o600, "after berthd init");
}

#[test]
fn containers_with_boot_autostart_start_after_a_host_boot() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    env.ok(&["init", "busybox", "auto", "-c", "boot.autostart=true"]);
    env.ok(&["init", "busybox", "manual"]);
    let restart_berthd = |boot_id: Option<&str>| {
        let pid = env.daemon_pid().expect("berthd runs");
        // SAFETY: kill of the daemon we started.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        wait_for(Duration::from_secs(10), "berthd to exit", || {
            env.daemon_pid() != Some(pid)
        });
        if let Some(id) = boot_id {
            std::fs::write(env.state.join("boot-id"), id).unwrap();
        }
        env.ok(&["list"]);
    };
    // berthd recorded this boot when it started: a restart during the same boot starts nothing
    restart_berthd(None);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(env.status("auto"), "Stopped");
    // as if the host had rebooted since berthd last ran
    restart_berthd(Some("a-boot-long-ago"));
    wait_for(Duration::from_secs(10), "auto to start", || {
        env.status("auto") == "Running"
    });
    assert_eq!(env.status("manual"), "Stopped");
    let recorded = std::fs::read_to_string(env.state.join("boot-id")).unwrap();
    assert_eq!(
        recorded.trim(),
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap()
            .trim()
    );
}

#[test]
fn a_start_that_fails_in_the_container_says_why_and_leaves_nothing_running() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Btrfs);
    env.ok(&["init", "busybox", "f"]);
    let init = env.pool().join("containers/f/rootfs/sbin/init");
    std::fs::remove_file(&init).unwrap();
    // there, but not executable: init's exec fails after the namespaces, mounts and veth
    std::fs::write(&init, "#!/bin/sh\n").unwrap();
    let links = || std::fs::read_dir("/sys/class/net").unwrap().count();
    let before = links();
    let out = env.berth(&["start", "f"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("exec /sbin/init") && err.contains("ermission denied"),
        "{err}"
    );
    assert_eq!(env.status("f"), "Stopped");
    assert!(env.processes().is_empty(), "nothing of the container runs");
    wait_for(
        Duration::from_secs(5),
        "the veth to go with its namespace",
        || links() == before,
    );
    // put right, it starts
    std::fs::remove_file(&init).unwrap();
    std::os::unix::fs::symlink("/bin/busybox", &init).unwrap();
    env.ok(&["start", "f"]);
    assert_eq!(
        env.ok(&["exec", "f", "--", "cat", "/proc/1/comm"]).trim(),
        "init"
    );
}
