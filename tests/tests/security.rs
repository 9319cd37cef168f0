//! End-to-end: what confines a container's processes besides its namespaces — the seccomp
//! filter (also after a stateful restore), device control and the process limit.

use berth_tests::{Env, Options, Storage, text};
use std::os::unix::fs::FileTypeExt;
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

/// A static program that makes each call the filter denies (and two it does not) and prints
/// `name errno` (0 for success); `i386_*` go through `int $0x80`, the 32-bit entry.
const PROBE_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/mount.h>
#include <sys/syscall.h>

static void report(const char *name, long r) { printf("%s %d\n", name, r < 0 ? errno : 0); errno = 0; }

static long int80(long nr) {
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(0), "c"(0), "d"(0), "S"(0) : "memory");
    return ret;
}

int main(void) {
    report("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
    report("kexec_file_load", syscall(SYS_kexec_file_load, -1, -1, 0, NULL, 0));
    report("init_module", syscall(SYS_init_module, NULL, 0, ""));
    report("finit_module", syscall(SYS_finit_module, -1, "", 0));
    report("delete_module", syscall(SYS_delete_module, "berth_nope", 0));
    report("open_by_handle_at", syscall(SYS_open_by_handle_at, -1, NULL, 0));
    report("umount2_force", syscall(SYS_umount2, "/berth-nope", MNT_FORCE));
    report("umount2", syscall(SYS_umount2, "/berth-nope", 0));
    report("acct", syscall(SYS_acct, NULL));
    long r = int80(283); /* kexec_load on i386 */
    printf("i386_kexec_load %ld\n", r < 0 ? -r : 0);
    r = int80(20); /* getpid on i386 */
    printf("i386_getpid %ld\n", r < 0 ? -r : 0);
    return 0;
}
"#;

/// What the probe printed, as (name, errno) pairs.
fn probe_results(out: &str) -> Vec<(String, i32)> {
    out.lines()
        .filter_map(|l| {
            let (n, e) = l.split_once(' ')?;
            Some((n.to_string(), e.trim().parse().ok()?))
        })
        .collect()
}

/// Compiles the probe into the container's root filesystem as `/probe`.
fn install_probe(env: &Env, c: &str) {
    let src = env.dir.join("probe.c");
    std::fs::write(&src, PROBE_C).unwrap();
    let dst = env.pool().join("containers").join(c).join("rootfs/probe");
    let out = berth_tests::run(
        std::process::Command::new("gcc")
            .args(["-static", "-O1", "-o"])
            .arg(&dst)
            .arg(&src),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "gcc (build-essential, installed by scripts/setup): {}",
        text(&out.stderr)
    );
}

fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or("")
        .trim()
        .to_string()
}

fn check_filtered(env: &Env, c: &str, when: &str) {
    let init = env.ok(&["exec", c, "--", "cat", "/proc/1/status"]);
    assert_eq!(
        status_field(&init, "Seccomp"),
        "2",
        "{when}: init runs under a filter\n{init}"
    );
    let own = env.ok(&["exec", c, "--", "cat", "/proc/self/status"]);
    assert_eq!(
        status_field(&own, "Seccomp"),
        "2",
        "{when}: an exec'd process too\n{own}"
    );
    assert_eq!(
        status_field(&own, "Seccomp_filters"),
        "1",
        "{when}: one filter, not one per exec hop"
    );
    assert_eq!(
        status_field(&own, "NoNewPrivs"),
        "0",
        "{when}: setuid programs keep working in a system container"
    );
    let got = probe_results(&env.ok(&["exec", c, "--", "/probe"]));
    let want: Vec<(String, i32)> = [
        // denied by the filter: ENOSYS, which the kernel's own refusal (EPERM) is not
        ("kexec_load", libc::ENOSYS),
        ("kexec_file_load", libc::ENOSYS),
        ("init_module", libc::ENOSYS),
        ("finit_module", libc::ENOSYS),
        ("delete_module", libc::ENOSYS),
        ("open_by_handle_at", libc::ENOSYS),
        // a forced unmount: EACCES from the filter before the kernel looks the path up
        ("umount2_force", libc::EACCES),
        // not denied: the kernel answers
        ("umount2", libc::ENOENT),
        ("acct", libc::EPERM),
        // the i386 entry has its own numbers, and its own rules
        ("i386_kexec_load", libc::ENOSYS),
        ("i386_getpid", 0),
    ]
    .iter()
    .map(|(n, e)| (n.to_string(), *e))
    .collect();
    // (i386_getpid prints the pid, not 0: only its being no errno matters)
    let got: Vec<(String, i32)> = got
        .into_iter()
        .map(|(n, e)| {
            if n == "i386_getpid" && e > 0 {
                (n, 0)
            } else {
                (n, e)
            }
        })
        .collect();
    assert_eq!(got, want, "{when}");
}

#[test]
fn container_processes_run_under_a_seccomp_filter_also_after_a_restore() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Btrfs);
    env.ok(&["launch", "busybox", "sc"]);
    install_probe(&env, "sc");
    check_filtered(&env, "sc", "after a start");
    // CRIU dumps and restores the filter with the processes
    env.ok(&["snapshot", "create", "sc", "live", "--stateful"]);
    env.ok(&["snapshot", "restore", "sc", "live"]);
    check_filtered(&env, "sc", "after a stateful restore");
    env.ok(&["stop", "--stateful", "sc"]);
    env.ok(&["start", "sc"]);
    check_filtered(&env, "sc", "after a stateful stop and start");
}

/// The container's `pids.max` as the host sees it (its group in the pids hierarchy).
fn pids_max(env: &Env, c: &str) -> String {
    let f = env
        .cgroup_dirs(c)
        .into_iter()
        .map(|d| d.join("pids.max"))
        .find(|p| p.exists())
        .expect("a pids hierarchy");
    std::fs::read_to_string(f).unwrap().trim().to_string()
}

#[test]
fn containers_get_a_default_process_limit_that_config_overrides() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    env.ok(&["launch", "busybox", "p1"]);
    env.ok(&["launch", "busybox", "p2", "-c", "limits.processes=50"]);
    assert_eq!(pids_max(&env, "p1"), "10000");
    assert_eq!(pids_max(&env, "p2"), "50");
    // enforced: of 60 processes asked for, the ones past 50 are refused
    // (sh gives up at the first fork refused: its status says nothing more)
    let _ = env.berth(&[
        "exec",
        "p2",
        "--",
        "sh",
        "-c",
        "for i in $(seq 60); do sleep 100 </dev/null >/dev/null 2>&1 & done",
    ]);
    let pids = env
        .cgroup_dirs("p2")
        .into_iter()
        .find(|d| d.join("pids.max").exists())
        .unwrap();
    let current: u32 = std::fs::read_to_string(pids.join("pids.current"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(current <= 50, "{current} processes");
    let events = std::fs::read_to_string(pids.join("pids.events")).unwrap();
    let refused: u64 = events
        .lines()
        .find_map(|l| l.strip_prefix("max "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(refused > 0, "forks past the limit were refused: {events}");
    // the default holds for a container started again
    env.ok(&["restart", "--force", "p1"]);
    assert_eq!(pids_max(&env, "p1"), "10000");
}

#[test]
fn environment_values_are_read_only_by_those_allowed_to_exec() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    env.ok(&[
        "init",
        "busybox",
        "s",
        "-c",
        "environment.TOKEN=s3cret",
        "-c",
        "user.note=public",
    ]);
    let user = berth_tests::unprivileged_user();
    // the properties, readable by anyone, hide the value (busctl gets every property)
    let out = env.busctl_as(
        user,
        &[
            "introspect",
            "org.berth.Berth1",
            "/org/berth/Berth1/container/s",
            "org.berth.Berth1.Container",
        ],
    );
    let props = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        props.contains("environment.TOKEN")
            && props.contains("(hidden)")
            && props.contains("public"),
        "{props}"
    );
    assert!(
        !props.contains("s3cret"),
        "an unprivileged caller read a secret:\n{props}"
    );
    let out = env.busctl_as(
        user,
        &[
            "call",
            "org.berth.Berth1",
            "/org/berth/Berth1",
            "org.freedesktop.DBus.ObjectManager",
            "GetManagedObjects",
        ],
    );
    assert!(
        out.status.success() && !text(&out.stdout).contains("s3cret"),
        "GetManagedObjects shows the secret to anyone"
    );
    // GetConfig is authorized as exec: refused to them, answered to root
    let out = env.busctl_as(
        user,
        &[
            "--allow-interactive-authorization=no",
            "call",
            "org.berth.Berth1",
            "/org/berth/Berth1/container/s",
            "org.berth.Berth1.Container",
            "GetConfig",
            "a{sv}",
            "0",
        ],
    );
    assert!(
        !out.status.success() && !text(&out.stdout).contains("s3cret"),
        "{}",
        text(&out.stdout)
    );
    let info = env.ok(&["info", "s"]);
    assert!(
        info.contains("s3cret"),
        "root's berth info shows the value:\n{info}"
    );
}

/// Where a device node the host's root makes in the container's rootfs is seen inside (the
/// container's /dev is a tmpfs of its own, which hides the rootfs's).
const DEVICE_PROBE: &str = "/dev-probe";

/// Makes `/dev-probe`, a character device 1:11 (kmsg: opened for writing and closed, it writes
/// nothing), in the container's rootfs, as a careless host or a privileged helper could.
fn make_device_probe(env: &Env, c: &str) {
    let node = env
        .pool()
        .join("containers")
        .join(c)
        .join(format!("rootfs{DEVICE_PROBE}"));
    let _ = std::fs::remove_file(&node);
    let out = berth_tests::run(
        std::process::Command::new("mknod")
            .args(["-m", "0666"])
            .arg(&node)
            .args(["c", "1", "11"]),
        Duration::from_secs(10),
    );
    assert!(
        out.status.success(),
        "mknod {}: {}",
        node.display(),
        text(&out.stderr)
    );
}

/// Inside the container: the allowed devices work, the probe does not open.
fn check_devices(env: &Env, c: &str, when: &str) {
    let out = env.ok(&[
        "exec",
        c,
        "--",
        "sh",
        "-c",
        "echo x > /dev/null && cat /dev/null && head -c 4 /dev/urandom | wc -c",
    ]);
    assert_eq!(out.trim(), "4", "{when}: /dev/null and /dev/urandom work");
    let out = env.berth(&["exec", c, "--", "sh", "-c", &format!(": > {DEVICE_PROBE}")]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Operation not permitted"),
        "{when}: {DEVICE_PROBE} (c 1:11) opened: {err}"
    );
}

#[test]
fn containers_use_only_the_allowed_devices_also_after_a_restore() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Btrfs);
    env.ok(&["launch", "busybox", "dev"]);
    make_device_probe(&env, "dev");
    check_devices(&env, "dev", "after a start");
    // what the host set: the v1 lists, and one program on the v2 group
    let dirs = env.cgroup_dirs("dev");
    let v1 = dirs
        .iter()
        .find(|d| d.join("devices.list").exists())
        .expect("a v1 devices hierarchy");
    let list = std::fs::read_to_string(v1.join("devices.list")).unwrap();
    assert_eq!(
        list.lines().collect::<Vec<_>>(),
        berth_runtime::devices::v1_lines(berth_runtime::devices::DEFAULT)
    );
    let v2 = dirs
        .iter()
        .find(|d| d.starts_with("/sys/fs/cgroup/unified"))
        .expect("the v2 tree");
    let progs = berth_runtime::devices::attached_programs(v2).unwrap();
    assert!(
        progs.len() == 1 && progs[0].starts_with("berth_dev_"),
        "{progs:?}"
    );
    // CRIU restores into the same groups (the restored tree's own child groups included)
    env.ok(&["snapshot", "create", "dev", "live", "--stateful"]);
    env.ok(&["snapshot", "restore", "dev", "live"]);
    check_devices(&env, "dev", "after a stateful restore");
    env.ok(&["stop", "--stateful", "dev"]);
    env.ok(&["start", "dev"]);
    check_devices(&env, "dev", "after a stateful stop and start");
    assert_eq!(
        berth_runtime::devices::attached_programs(v2).unwrap(),
        progs,
        "attached once, whatever the restarts"
    );
    // groups a reboot wiped are made again, confined again
    env.ok(&["stop", "--force", "dev"]);
    for d in &dirs {
        // a group is busy until the kernel has released its last exited task, which it does
        // after the stop returns (berth's own removal waits the same way)
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match std::fs::remove_dir(d) {
                Ok(()) => break,
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("remove {}: {e}", d.display()),
            }
        }
    }
    env.ok(&["start", "dev"]);
    check_devices(&env, "dev", "after its groups were made again");
}

#[test]
fn on_pure_cgroup_v2_the_device_program_alone_confines() {
    if !root_or_skip() {
        return;
    }
    // no devices controller in berthd's view: only the BPF program stands in the way
    let env = Env::with(Options {
        cgroup_v2: true,
        ..Default::default()
    });
    env.ok(&["launch", "busybox", "dev2"]);
    let init = env.init_pid("dev2");
    let v1 = std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap();
    assert!(
        v1.lines()
            .any(|l| l.contains(":devices:/") && !l.contains(&env.cgroup_parent)),
        "not in a v1 devices group of berth's: {v1}"
    );
    make_device_probe(&env, "dev2");
    check_devices(&env, "dev2", "on cgroup v2");
}

/// The users of the authorization matrix: one without any rule, one a rule grants every berth
/// action, and one a rule grants every action on container `x` alone (the `container` detail).
const NOBODY: &str = "berth-e2e";
const GRANTED: &str = "berth-e2e-all";
const ONLY_X: &str = "berth-e2e-x";

/// The rules of the matrix's polkitd (its own: see `Options::polkit_rules`).
const MATRIX_RULES: &str = r#"
polkit.addRule(function(action, subject) {
    if (action.id.indexOf("org.berth.Berth1.") != 0) {
        return polkit.Result.NOT_HANDLED;
    }
    if (subject.user == "berth-e2e-all") {
        return polkit.Result.YES;
    }
    if (subject.user == "berth-e2e-x" && action.lookup("container") == "x") {
        return polkit.Result.YES;
    }
    return polkit.Result.NOT_HANDLED;
});
"#;

/// Where a matrix call goes: `{c}` in a path or argument is the container the call is about.
#[derive(Clone, Copy)]
enum Target {
    Manager,
    Container,
    /// Snapshot `s0` of the container.
    Snapshot,
    /// The busybox image.
    Image,
    /// The image aliased `spare` (for Delete).
    SpareImage,
}

/// One authorized method call (a method with a variant of its options that changes the
/// action counts as its own row).
struct Row {
    interface: &'static str,
    method: &'static str,
    target: Target,
    args: &'static [&'static str],
    action: &'static str,
    /// The call names the container in the `container` detail (a rule can grant it per
    /// container); the others concern no container and the `x` rule never grants them.
    per_container: bool,
    /// berth CLI arguments that restore the fixture after an allowed call changed it.
    fixup: &'static [&'static str],
}

/// Every method of the introspection XML that needs authorization, and how to call it without
/// losing the fixture: where an allowed call would destroy something, the arguments make it
/// fail after the authorization (e.g. Delete of a running container) or a fixup restores it.
const MATRIX: &[Row] = &[
    Row {
        interface: "Manager",
        method: "CreateContainer",
        target: Target::Manager,
        args: &["s={c}", "s=busybox", "a{sv}={}"],
        action: "create-container",
        per_container: true,
        fixup: &[],
    },
    Row {
        interface: "Manager",
        method: "CopyContainer",
        target: Target::Manager,
        args: &["s={c}", "s={c}", "a{sv}={}"],
        action: "create-container",
        per_container: true,
        fixup: &[],
    },
    Row {
        interface: "Manager",
        method: "StartContainer",
        target: Target::Manager,
        args: &["s={c}", "a{sv}={}"],
        action: "manage-containers",
        per_container: true,
        fixup: &[],
    },
    Row {
        interface: "Manager",
        method: "StopContainer",
        target: Target::Manager,
        args: &["s={c}", r#"a{sv}={"force":true}"#],
        action: "manage-containers",
        per_container: true,
        fixup: &["start", "{c}"],
    },
    Row {
        interface: "Manager",
        method: "DeleteContainer",
        target: Target::Manager,
        args: &["s={c}", "a{sv}={}"],
        action: "delete-container",
        per_container: true,
        fixup: &[],
    },
    Row {
        interface: "Manager",
        method: "BuildImage",
        target: Target::Manager,
        args: &["s=no-such-recipe", "a{sv}={}"],
        action: "manage-images",
        per_container: false,
        fixup: &[],
    },
    Row {
        interface: "Manager",
        method: "ImportImage",
        target: Target::Manager,
        args: &["h=/dev/null", "a{sv}={}"],
        action: "manage-images",
        per_container: false,
        fixup: &[],
    },
    Row {
        interface: "Manager",
        method: "RenameImageAlias",
        target: Target::Manager,
        args: &["s=no-such-alias", "s=other-alias"],
        action: "manage-images",
        per_container: false,
        fixup: &[],
    },
    // on the fixture there is nothing without a record: an allowed call changes nothing
    Row {
        interface: "Manager",
        method: "Recover",
        target: Target::Manager,
        args: &["a{sv}={}"],
        action: "recover",
        per_container: false,
        fixup: &[],
    },
    Row {
        interface: "Container",
        method: "Start",
        target: Target::Container,
        args: &["a{sv}={}"],
        action: "manage-containers",
        per_container: true,
        fixup: &[],
    },
    Row {
        interface: "Container",
        method: "Stop",
        target: Target::Container,
        args: &[r#"a{sv}={"force":true}"#],
        action: "manage-containers",
        per_container: true,
        fixup: &["start", "{c}"],
    },
    Row {
        interface: "Container",
        method: "Stop",
        target: Target::Container,
        args: &[r#"a{sv}={"stateful":true}"#],
        action: "checkpoint",
        per_container: true,
        fixup: &["start", "{c}"],
    },
    Row {
        interface: "Container",
        method: "Restart",
        target: Target::Container,
        args: &[r#"a{sv}={"force":true}"#],
        action: "manage-containers",
        per_container: true,
        fixup: &[],
    },
    Row {
        interface: "Container",
        method: "Delete",
        target: Target::Container,
        args: &["a{sv}={}"],
        action: "delete-container",
        per_container: true,
        fixup: &[],
    },
    Row {
        interface: "Container",
        method: "Exec",
        target: Target::Container,
        args: &[r#"as=["true"]"#, "a{sv}={}"],
        action: "exec",
        per_container: true,
        fixup: &[],
    },
    Row {
        interface: "Container",
        method: "Publish",
        target: Target::Container,
        args: &["a{sv}={}"],
        action: "manage-images",
        per_container: true,
        fixup: &[],
    },
    Row {
        interface: "Container",
        method: "CreateSnapshot",
        target: Target::Container,
        args: &["s=s0", "a{sv}={}"],
        action: "snapshot",
        per_container: true,
        fixup: &[],
    },
    Row {
        interface: "Container",
        method: "CreateSnapshot",
        target: Target::Container,
        args: &["s=s0", r#"a{sv}={"stateful":true}"#],
        action: "checkpoint",
        per_container: true,
        fixup: &[],
    },
    Row {
        interface: "Container",
        method: "GetConfig",
        target: Target::Container,
        args: &["a{sv}={}"],
        action: "exec",
        per_container: true,
        fixup: &[],
    },
    Row {
        interface: "Container",
        method: "SetConfig",
        target: Target::Container,
        args: &[r#"a{ss}={"user.note":"matrix"}"#, "as=[]"],
        action: "set-config",
        per_container: true,
        fixup: &[],
    },
    Row {
        interface: "Container",
        method: "GetCheckpointLog",
        target: Target::Container,
        args: &[],
        action: "checkpoint",
        per_container: true,
        fixup: &[],
    },
    Row {
        interface: "Snapshot",
        method: "Restore",
        target: Target::Snapshot,
        args: &["a{sv}={}"],
        action: "snapshot",
        per_container: true,
        fixup: &[],
    },
    Row {
        interface: "Snapshot",
        method: "Restore",
        target: Target::Snapshot,
        args: &[r#"a{sv}={"stateful":true}"#],
        action: "checkpoint",
        per_container: true,
        fixup: &[],
    },
    Row {
        interface: "Snapshot",
        method: "Delete",
        target: Target::Snapshot,
        args: &[],
        action: "snapshot",
        per_container: true,
        fixup: &["snapshot", "create", "{c}", "s0"],
    },
    Row {
        interface: "Snapshot",
        method: "Rename",
        target: Target::Snapshot,
        args: &["s=s0"],
        action: "snapshot",
        per_container: true,
        fixup: &[],
    },
    Row {
        interface: "Snapshot",
        method: "Publish",
        target: Target::Snapshot,
        args: &["a{sv}={}"],
        action: "manage-images",
        per_container: true,
        fixup: &[],
    },
    Row {
        interface: "Image",
        method: "Delete",
        target: Target::SpareImage,
        args: &[],
        action: "manage-images",
        per_container: false,
        fixup: &["publish", "x/s0", "--alias", "spare"],
    },
    Row {
        interface: "Image",
        method: "Export",
        target: Target::Image,
        args: &["h=/dev/null", "a{sv}={}"],
        action: "manage-images",
        per_container: false,
        fixup: &[],
    },
    Row {
        interface: "Image",
        method: "SetProperties",
        target: Target::Image,
        args: &[r#"a{ss}={"note":"matrix"}"#],
        action: "manage-images",
        per_container: false,
        fixup: &[],
    },
    Row {
        interface: "Image",
        method: "AddAlias",
        target: Target::Image,
        args: &["s=matrix-alias"],
        action: "manage-images",
        per_container: false,
        fixup: &[],
    },
    Row {
        interface: "Image",
        method: "RemoveAlias",
        target: Target::Image,
        args: &["s=no-such-alias"],
        action: "manage-images",
        per_container: false,
        fixup: &[],
    },
];

/// Methods anyone may call: they read, and read nothing secret.
const UNAUTHORIZED_READS: &[(&str, &str)] = &[
    ("Manager", "GetContainer"),
    ("Manager", "ListContainers"),
    ("Manager", "GetImage"),
    ("Manager", "ListImages"),
    ("Manager", "ListOperations"),
    ("Container", "ListSnapshots"),
];

/// Authorized methods the matrix does not call, with the reason (and where they are tested).
const NOT_IN_MATRIX: &[(&str, &str, &str)] = &[(
    "Operation",
    "Cancel",
    "an Operation object lives only while long work runs: \
     cancelling_needs_its_action_and_another_users_operation_the_other_user_one",
)];

/// (interface suffix, method) of every method in the checked-in introspection XML.
fn introspected_methods() -> Vec<(String, String)> {
    let dir = berth_tests::repo().join("interfaces/dbus");
    let mut all = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let xml = std::fs::read_to_string(e.path()).unwrap();
        let mut iface = String::new();
        for part in xml.split('<').skip(1) {
            let name = part
                .split_once("name=\"")
                .and_then(|(_, r)| r.split_once('"'))
                .map(|(n, _)| n.to_string());
            if part.starts_with("interface ") {
                iface = name.unwrap_or_default();
            } else if part.starts_with("method ")
                && let Some(short) = iface.strip_prefix("org.berth.Berth1.")
            {
                all.push((short.to_string(), name.unwrap_or_default()));
            }
        }
    }
    all.sort();
    all.dedup();
    all
}

/// A call's outcome: `ok` or `error NAME: MESSAGE`.
fn call(
    env: &Env,
    user: Option<&str>,
    interactive: bool,
    path: &str,
    row: &Row,
    c: &str,
) -> String {
    let args: Vec<String> = row.args.iter().map(|a| a.replace("{c}", c)).collect();
    authz_call(
        env,
        user,
        interactive,
        path,
        row.interface,
        row.method,
        &args,
    )
}

/// `interface.method(args)` on `path` as `user` (root when `None`) with berth-authz-call:
/// `ok`, or `error NAME: message`.
fn authz_call(
    env: &Env,
    user: Option<&str>,
    interactive: bool,
    path: &str,
    interface: &str,
    method: &str,
    args: &[String],
) -> String {
    let mut cmd = match user {
        Some(u) => {
            let mut cmd = std::process::Command::new("setpriv");
            cmd.args(["--reuid", u, "--regid", u, "--clear-groups", "--"])
                .arg(berth_tests::bin("berth-authz-call"));
            cmd
        }
        None => std::process::Command::new(berth_tests::bin("berth-authz-call")),
    };
    cmd.arg(&env.bus)
        .arg(if interactive { "yes" } else { "no" })
        .arg(path)
        .arg(format!("org.berth.Berth1.{interface}"))
        .arg(method)
        .args(args);
    // no authentication agent runs: an interactive check must end, refused, not hang
    let out = berth_tests::run(&mut cmd, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "berth-authz-call {interface} {method}: {}",
        text(&out.stderr)
    );
    text(&out.stdout).trim().to_string()
}

/// The object path of `target` for container `c` (images resolved now: a fixup may have
/// made the spare image again).
fn target_path(env: &Env, target: Target, c: &str) -> String {
    let image = |reference: &str| {
        let out = env.busctl(&[
            "call",
            "org.berth.Berth1",
            "/org/berth/Berth1",
            "org.berth.Berth1.Manager",
            "GetImage",
            "s",
            reference,
        ]);
        let o = text(&out.stdout);
        o.trim()
            .strip_prefix("o ")
            .unwrap_or_else(|| panic!("GetImage {reference}: {o} {}", text(&out.stderr)))
            .trim_matches('"')
            .to_string()
    };
    match target {
        Target::Manager => "/org/berth/Berth1".into(),
        Target::Container => format!("/org/berth/Berth1/container/{c}"),
        Target::Snapshot => format!("/org/berth/Berth1/container/{c}/snapshot/s0"),
        Target::Image => image("busybox"),
        Target::SpareImage => image("spare"),
    }
}

/// Everything a caller could have changed: every object with its properties.
fn state_snapshot(env: &Env) -> serde_json::Value {
    let out = env.busctl(&[
        "--json=short",
        "call",
        "org.berth.Berth1",
        "/org/berth/Berth1",
        "org.freedesktop.DBus.ObjectManager",
        "GetManagedObjects",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn is_refusal(outcome: &str) -> bool {
    [
        "org.berth.Berth1.Error.NotAuthorized",
        "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
        "org.freedesktop.DBus.Error.AccessDenied",
    ]
    .iter()
    .any(|n| outcome.starts_with(&format!("error {n}")))
}

/// Every authorized D-Bus method × every kind of caller: root and a user a rule grants are
/// allowed; a user without a rule is refused, whether or not the call allows interaction (no
/// agent runs: the interactive check ends refused); a rule that grants container `x` allows
/// on `x` and refuses on `y` and on what concerns no container. Nothing a refused call
/// touched changed.
#[test]
fn every_authorized_method_is_refused_or_allowed_as_polkit_says() {
    if !root_or_skip() {
        return;
    }
    // the matrix covers every method of the API: a new one must be added to it
    let mut covered: Vec<(String, String)> = MATRIX
        .iter()
        .map(|r| (r.interface.to_string(), r.method.to_string()))
        .chain(
            UNAUTHORIZED_READS
                .iter()
                .map(|(i, m)| (i.to_string(), m.to_string())),
        )
        .chain(
            NOT_IN_MATRIX
                .iter()
                .map(|(i, m, _)| (i.to_string(), m.to_string())),
        )
        .collect();
    covered.sort();
    covered.dedup();
    assert_eq!(
        introspected_methods(),
        covered,
        "every D-Bus method is in the authorization matrix (or listed as a read)"
    );
    for u in [NOBODY, GRANTED, ONLY_X] {
        berth_tests::system_user(u);
    }
    let started = std::time::Instant::now();
    let env = Env::with(Options {
        polkit_rules: Some(MATRIX_RULES.to_string()),
        ..Default::default()
    });
    for c in ["x", "y"] {
        env.ok(&["launch", "busybox", c, "-c", "environment.TOKEN=s3cret"]);
        env.ok(&["snapshot", "create", c, "s0"]);
    }
    env.ok(&["publish", "x/s0", "--alias", "spare"]);

    // refused, and nothing changes
    let before = state_snapshot(&env);
    let mut refused = 0;
    for row in MATRIX {
        let action = format!("org.berth.Berth1.{}", row.action);
        let mut expect_refused = |user: &str, interactive: bool, c: &str| {
            let path = target_path(&env, row.target, c);
            let got = call(&env, Some(user), interactive, &path, row, c);
            let want = if interactive {
                "error org.berth.Berth1.Error.NotAuthorized:"
            } else {
                "error org.freedesktop.DBus.Error.InteractiveAuthorizationRequired:"
            };
            assert!(
                got.starts_with(want) && got.contains(&action),
                "{}.{} {:?} as {user} (interactive {interactive}) on {c}: want {want} for \
                 {action}, got {got}",
                row.interface,
                row.method,
                row.args
            );
            refused += 1;
        };
        expect_refused(NOBODY, false, "x");
        expect_refused(NOBODY, true, "x");
        if row.per_container {
            expect_refused(ONLY_X, false, "y");
        } else {
            expect_refused(ONLY_X, false, "x");
        }
    }
    // a rule for x does not reach y's files through a copy of y (or of its snapshot) into x
    for source in ["s=y", "s=y/s0"] {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid", ONLY_X, "--regid", ONLY_X, "--clear-groups", "--"])
            .arg(berth_tests::bin("berth-authz-call"))
            .args([&env.bus, "no", "/org/berth/Berth1"])
            .args(["org.berth.Berth1.Manager", "CopyContainer"])
            .args([source, "s=x", "a{sv}={}"]);
        let got = text(&berth_tests::run(&mut cmd, Duration::from_secs(30)).stdout);
        assert!(
            is_refusal(&got) && got.contains("org.berth.Berth1.create-container"),
            "copy {source} into x as {ONLY_X}: {got}"
        );
        refused += 1;
    }
    assert_eq!(
        state_snapshot(&env),
        before,
        "{refused} refused calls changed something"
    );

    // allowed: past authorization (a success, or berth's own answer to the call)
    let mut allowed = 0;
    for row in MATRIX {
        let mut callers: Vec<Option<&str>> = vec![None, Some(GRANTED)];
        if row.per_container {
            callers.push(Some(ONLY_X));
        }
        for user in callers {
            let path = target_path(&env, row.target, "x");
            let got = call(&env, user, false, &path, row, "x");
            assert!(
                got == "ok"
                    || (got.starts_with("error org.berth.Berth1.Error.") && !is_refusal(&got)),
                "{}.{} {:?} as {}: allowed, got {got}",
                row.interface,
                row.method,
                row.args,
                user.unwrap_or("root")
            );
            allowed += 1;
            if !row.fixup.is_empty() {
                let args: Vec<String> = row.fixup.iter().map(|a| a.replace("{c}", "x")).collect();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                // (a call that failed after authorization may have left nothing to fix)
                let _ = env.berth(&args);
            }
        }
        assert_eq!(
            env.status("x"),
            "Running",
            "{}.{}: the fixture is kept",
            row.interface,
            row.method
        );
    }
    // secrets: `berth info` shows environment.* values to those allowed to exec on the
    // container, `(hidden)` to the others; the CRIU log only to those allowed to checkpoint
    let berth_as = |user: &str, args: &[&str]| {
        let out = berth_tests::run(
            std::process::Command::new("setpriv")
                .args(["--reuid", user, "--regid", user, "--clear-groups", "--"])
                .arg(berth_tests::bin("berth"))
                .args(args)
                .env("DBUS_SYSTEM_BUS_ADDRESS", &env.bus),
            Duration::from_secs(60),
        );
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    for (user, c, shown) in [
        (NOBODY, "x", false),
        (ONLY_X, "y", false),
        (ONLY_X, "x", true),
        (GRANTED, "y", true),
    ] {
        let (ok, out, err) = berth_as(user, &["info", c]);
        assert!(ok, "berth info {c} as {user}: {err}");
        assert!(out.contains("environment.TOKEN"), "{out}");
        assert_eq!(
            out.contains("s3cret"),
            shown,
            "berth info {c} as {user} shows the value: {shown}\n{out}"
        );
        assert_eq!(out.contains("(hidden)"), !shown, "{out}");
        let (ok, out, err) = berth_as(user, &["info", c, "--show-log"]);
        assert_eq!(ok, shown, "berth info {c} --show-log as {user}: {out}{err}");
    }
    eprintln!(
        "authorization matrix: {} rows, {refused} refused and {allowed} allowed calls in {:?}",
        MATRIX.len(),
        started.elapsed()
    );
}

/// Every file and socket under berthd's state and runtime directories — the database, loop
/// file, image archives, CRIU images and logs, console logs, monitor sockets, and the
/// containers' own files — is out of reach of other host users: whatever its mode, they
/// neither read nor write it, nor connect to it, even knowing its path.
#[test]
fn files_under_the_state_and_runtime_directories_are_roots_alone() {
    if !root_or_skip() {
        return;
    }
    let user = berth_tests::unprivileged_user();
    let env = Env::new(Storage::Btrfs);
    env.ok(&["launch", "busybox", "f", "-c", "environment.TOKEN=s3cret"]);
    // a CRIU dump and restore leave their images and logs; the console log has the boot
    env.ok(&["stop", "--stateful", "f"]);
    env.ok(&["start", "f"]);
    env.ok(&["snapshot", "create", "f", "live", "--stateful"]);
    env.ok(&[
        "exec",
        "f",
        "--",
        "sh",
        "-c",
        "echo secret > /root/note; chmod 644 /root/note",
    ]);
    let mut paths = Vec::new();
    let mut stack = vec![env.state.clone(), env.run.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() || t.is_socket() {
                paths.push(e.path());
            }
        }
    }
    // the varlink socket is world-connectable by design, as the system bus is: polkit decides
    // what each caller may do through it
    let varlink = env.run.join("org.berth.Berth");
    assert!(
        paths.contains(&varlink),
        "no varlink socket at {}",
        varlink.display()
    );
    paths.retain(|p| *p != varlink);
    let names: Vec<String> = paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "berth.db",
        "default.img",
        "console.log",
        "criu-restore.log",
        "monitor.sock",
        "note",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "no {want} found: {names:?}"
        );
    }
    let list: String = paths.iter().map(|p| format!("{}\n", p.display())).collect();
    let out = berth_tests::run_input(
        std::process::Command::new("setpriv")
            .args(["--reuid", user, "--regid", user, "--clear-groups", "--"])
            .args([
                "sh",
                "-c",
                r#"while IFS= read -r f; do if [ -r "$f" ] || [ -w "$f" ]; then echo "$f"; fi; done"#,
            ]),
        Some(list.as_bytes()),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "",
        "{user} reaches these of {} files",
        paths.len()
    );
}

/// Operation.Cancel: refused to a user without a rule, and to one allowed to cancel only
/// their own operations when the operation is another user's (root's); a refused Cancel
/// leaves the operation running. Allowed: a user granted everything on root's operation, and
/// the user granted cancel-operation on their own.
#[test]
fn cancelling_needs_its_action_and_another_users_operation_the_other_user_one() {
    if !root_or_skip() {
        return;
    }
    for u in [NOBODY, GRANTED, ONLY_X] {
        berth_tests::system_user(u);
    }
    let rules = r#"
polkit.addRule(function(action, subject) {
    if (action.id.indexOf("org.berth.Berth1.") != 0) {
        return polkit.Result.NOT_HANDLED;
    }
    if (subject.user == "berth-e2e-all") {
        return polkit.Result.YES;
    }
    if (subject.user == "berth-e2e-x" && (action.id == "org.berth.Berth1.cancel-operation"
            || action.id == "org.berth.Berth1.manage-images")) {
        return polkit.Result.YES;
    }
    return polkit.Result.NOT_HANDLED;
});
"#;
    let env = Env::with(Options {
        polkit_rules: Some(rules.to_string()),
        storage: Some(Storage::Dir),
        ..Default::default()
    });
    // incompressible, so that the import runs for seconds; readable by the users
    let file = env.dir.join("big.tar");
    berth_tests::archive::write_noise_image(&file, 600 << 20);
    for p in [&env.dir, &file] {
        use std::os::unix::fs::PermissionsExt;
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let import_as = |user: Option<&str>, alias: &str| {
        let mut cmd = match user {
            Some(u) => {
                let mut c = std::process::Command::new("setpriv");
                c.args(["--reuid", u, "--regid", u, "--clear-groups", "--"])
                    .arg(berth_tests::bin("berth"));
                c
            }
            None => std::process::Command::new(berth_tests::bin("berth")),
        };
        cmd.args(["image", "import", file.to_str().unwrap(), "--alias", alias])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &env.bus)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let status = |op: &str| {
        let o = env.busctl(&[
            "get-property",
            "org.berth.Berth1",
            op,
            "org.berth.Berth1.Operation",
            "Status",
        ]);
        text(&o.stdout).trim().to_string()
    };
    let cancel = |user: Option<&str>, op: &str| {
        authz_call(
            &env,
            user,
            false,
            op,
            "Operation",
            "Cancel",
            &["a{sv}={}".to_string()],
        )
    };
    let ends_cancelled = |child: std::process::Child| {
        let out = child.wait_with_output().unwrap();
        assert!(
            !out.status.success() && text(&out.stderr).contains("Cancelled"),
            "the import ends cancelled: {}",
            text(&out.stderr)
        );
    };

    // root's operation
    let child = import_as(None, "big");
    let op = env.wait_for_operation();
    let got = cancel(Some(NOBODY), &op);
    assert!(
        is_refusal(&got) && got.contains("org.berth.Berth1.cancel-operation"),
        "{NOBODY}: {got}"
    );
    let got = cancel(Some(ONLY_X), &op);
    assert!(
        is_refusal(&got) && got.contains("org.berth.Berth1.cancel-operation-other-user"),
        "{ONLY_X}, on root's operation: {got}"
    );
    assert_eq!(
        status(&op),
        "s \"running\"",
        "a refused Cancel stopped the import"
    );
    assert_eq!(cancel(Some(GRANTED), &op), "ok");
    ends_cancelled(child);

    // the user's own operation
    let child = import_as(Some(ONLY_X), "mine");
    let op = env.wait_for_operation();
    assert_eq!(cancel(Some(ONLY_X), &op), "ok");
    ends_cancelled(child);
    let list = env.ok(&["image", "list", "--format", "json"]);
    assert!(
        !list.contains("\"big\"") && !list.contains("\"mine\""),
        "a cancelled import left an image: {list}"
    );
}
