//! Stateful snapshot and restore through berth, each against a bare `criu dump` / `criu
//! restore` of the same container's tree in the same run, for an idle busybox container and
//! for one holding 200 MB of touched memory.
//!
//! The bare runs are the criu command line with what this tree needs and nothing of berth's:
//! the same external mounts and ttys, the nftables network lock, TCP, file locks, link-remap
//! and ghost files (as berth passes them); no freezer (plain ptrace seize), no file snapshot,
//! no daemon, no monitor. The bare restore runs onto an idmapped mount of the container's
//! rootfs (CRIU does not recreate one) with a new console pty, in an empty network namespace.

use super::report::{Report, Target};
use super::util::{Api, flag, ms, none, timed};
use berth_runtime::criu::{DEV_MOUNTS, tty_key};
use berth_tests::{Env, text};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn criu() -> PathBuf {
    berth_runtime::criu::find().expect("criu (scripts/setup builds CRIU 4.2.1)")
}

/// Options both directions share, as berth sets them (runtime/src/criu/mod.rs `base_opts`).
fn common(cmd: &mut Command) {
    cmd.args([
        "-v4",
        "--tcp-established",
        "--file-locks",
        "--link-remap",
        "--force-irmap",
    ]);
    cmd.args([
        "--ghost-limit",
        &berth_runtime::criu::GHOST_LIMIT.to_string(),
    ]);
}

/// CRIU's keys of the container's console and of the host's /dev/tty, at dump time.
fn tty_keys(console: &Path) -> [String; 2] {
    [
        tty_key(console).expect("console key"),
        tty_key(Path::new("/dev/tty")).expect("tty key"),
    ]
}

/// `criu dump --leave-running` of the tree of init `pid` into `images`; milliseconds.
fn bare_dump(pid: i32, keys: &[String; 2], images: &Path) -> f64 {
    std::fs::create_dir_all(images).expect("images directory");
    let mut cmd = Command::new(criu());
    cmd.arg("dump")
        .arg("-t")
        .arg(pid.to_string())
        .arg("-D")
        .arg(images)
        .arg("-W")
        .arg(images)
        .args(["-o", "dump.log"]);
    common(&mut cmd);
    cmd.args(["--leave-running", "--network-lock", "nftables"]);
    for n in DEV_MOUNTS {
        cmd.arg("--external").arg(format!("mnt[/dev/{n}]:dev_{n}"));
    }
    for k in keys {
        cmd.arg("--external").arg(k);
    }
    let t = Instant::now();
    let out = cmd.output().expect("run criu dump");
    let took = ms(t.elapsed());
    assert!(
        out.status.success(),
        "bare criu dump failed: {}\n{}",
        text(&out.stderr),
        log_tail(&images.join("dump.log"))
    );
    took
}

fn log_tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    s.lines()
        .filter(|l| l.contains("Error"))
        .take(5)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A descriptor of `fd` without close-on-exec, for a child to inherit.
fn inheritable(fd: std::os::fd::BorrowedFd<'_>) -> OwnedFd {
    // SAFETY: F_DUPFD on an fd we own returns a fresh fd without FD_CLOEXEC.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD, 3) };
    assert!(n >= 0, "dup: {}", std::io::Error::last_os_error());
    // SAFETY: fresh fd, ours.
    unsafe { OwnedFd::from_raw_fd(n) }
}

/// `criu restore` of `images` onto the stopped container `name`'s rootfs; kills and reaps the
/// restored tree afterwards. Milliseconds of the restore.
fn bare_restore(env: &Env, name: &str, images: &Path, keys: &[String; 2]) -> f64 {
    // from here: what restoring this tree takes by hand (a console, the idmapped root, criu)
    let t = Instant::now();
    let idmap = berth_runtime::idmap::IdMap::host_default();
    let console =
        berth_runtime::pty::open_console(idmap.uid_base, idmap.gid_base).expect("a console pty");
    let (con, ctty) = (
        inheritable(console.slave.as_fd()),
        inheritable(console.slave.as_fd()),
    );
    let root = env.dir.join("bare-root");
    let _ = berth_runtime::sys::umount2(&root, libc::MNT_DETACH);
    std::fs::create_dir_all(&root).expect("restore root");
    let rootfs = env.pool().join("containers").join(name).join("rootfs");
    let tree = berth_runtime::storage::idmapped_tree(&rootfs, &idmap).expect("idmapped rootfs");
    berth_runtime::sys::move_mount_to(tree.as_fd(), &root).expect("attach the idmapped rootfs");
    let pidfile = images.join("restored.pid");
    let _ = std::fs::remove_file(&pidfile);
    let mut cmd = Command::new(criu());
    cmd.arg("restore")
        .arg("-D")
        .arg(images)
        .arg("-W")
        .arg(images)
        .args(["-o", "restore.log"]);
    common(&mut cmd);
    cmd.arg("--root")
        .arg(&root)
        .args([
            "--restore-detached",
            "--restore-sibling",
            "--empty-ns",
            "net",
        ])
        .arg("--pidfile")
        .arg(&pidfile);
    for n in DEV_MOUNTS {
        let to = if *n == "console" {
            console.slave_path.display().to_string()
        } else {
            format!("/dev/{n}")
        };
        cmd.arg("--external").arg(format!("mnt[dev_{n}]:{to}"));
    }
    for (fd, key) in [(&con, &keys[0]), (&ctty, &keys[1])] {
        cmd.arg("--inherit-fd")
            .arg(format!("fd[{}]:{key}", fd.as_raw_fd()));
    }
    let out = cmd.output().expect("run criu restore");
    let took = ms(t.elapsed());
    drop((con, ctty));
    let _ = berth_runtime::sys::umount2(&root, libc::MNT_DETACH);
    assert!(
        out.status.success(),
        "bare criu restore failed: {}\n{}",
        text(&out.stderr),
        log_tail(&images.join("restore.log"))
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("restored pid")
        .trim()
        .parse()
        .expect("a pid");
    // SAFETY: kill(2) of the tree we restored; it is our child (--restore-sibling).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = berth_runtime::sys::waitpid_blocking(pid);
    took
}

/// Starts a process in `name` that holds `mb` MB of touched memory; returns its RSS in MB.
fn start_hog(env: &Env, mb: u64) -> f64 {
    let prog = format!(
        "awk 'BEGIN{{s=sprintf(\"%{}s\",\"\"); system(\"sleep 100000\")}}' >/dev/null 2>&1 </dev/null &",
        mb * 1_000_000
    );
    env.ok(&["exec", "ck", "--", "sh", "-c", &prog]);
    let mut rss = 0.0;
    // done with its string once it has run sleep: while it builds it, its memory comes and goes
    berth_tests::wait_for(Duration::from_secs(30), "the memory hog", || {
        let procs = env.processes();
        let comm = |p: &u32| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        if !procs.iter().any(|p| comm(p) == "sleep") {
            return false;
        }
        rss = procs
            .iter()
            .filter(|p| comm(p) == "awk")
            .copied()
            .filter_map(|p| super::util::rss_mib(p as i32))
            .fold(0.0, f64::max)
            * 1.048_576;
        rss >= mb as f64 * 0.98
    });
    rss
}

/// `rounds` of: berth stateful snapshot, bare dump, berth restore onto the running container
/// and onto the stopped one, bare restore (onto the stopped one).
pub async fn measure(env: &Env, rounds: usize, hog_mb: u64, report: &mut Report) {
    let api = Api::new(env).await;
    if !api.m.stateful_supported().await.unwrap_or(false) {
        report.note(format!(
            "stateful figures skipped: {}",
            api.m
                .stateful_unsupported_reason()
                .await
                .unwrap_or_default()
        ));
        return;
    }
    let c = api.container(api.launch("ck").await.expect("launch")).await;
    let what = if hog_mb == 0 {
        "idle".to_string()
    } else {
        format!("{hog_mb} MB touched")
    };
    let (mut snap, mut dump, mut restore, mut replace, mut bare) =
        (vec![], vec![], vec![], vec![], vec![]);
    let bare_dir = env.pool().join("bare-criu");
    let mut touched = 0.0;
    for round in 0..rounds {
        if hog_mb > 0 {
            touched = start_hog(env, hog_mb);
        } else {
            std::thread::sleep(Duration::from_millis(200));
        }
        let (t, s) = timed(c.create_snapshot(&format!("s{round}"), &flag("stateful"))).await;
        let s = api
            .snapshot(s.unwrap_or_else(|e| panic!("stateful snapshot: {e}")))
            .await;
        snap.push(t);
        let st = env.monitor_status("ck").expect("the container runs");
        let keys = tty_keys(Path::new(&st.console));
        let images = bare_dir.join(format!("r{round}"));
        dump.push(bare_dump(st.init_pid, &keys, &images));
        // onto the running container: its tree is killed first (the kernel frees its memory)
        let (t, r) = timed(s.restore(&none())).await;
        r.unwrap_or_else(|e| panic!("restore: {e}"));
        replace.push(t);
        // onto the stopped container: the same work as the bare restore
        c.stop(&flag("force")).await.expect("stop");
        let (t, r) = timed(s.restore(&none())).await;
        r.unwrap_or_else(|e| panic!("restore onto the stopped container: {e}"));
        restore.push(t);
        c.stop(&flag("force")).await.expect("stop");
        bare.push(bare_restore(env, "ck", &images, &keys));
        s.delete().await.expect("delete the snapshot");
        let _ = std::fs::remove_dir_all(&images);
        c.start(&none()).await.expect("start again");
    }
    api.delete("ck").await;
    let _ = std::fs::remove_dir_all(&bare_dir);
    let (dname, rname) = (
        format!("bare criu dump --leave-running ({what})"),
        format!("bare criu restore ({what})"),
    );
    let f = report.add(&format!("stateful snapshot ({what})"), "ms", snap);
    f.target = Some(Target::Ratio(1.2));
    f.reference = Some(dname.clone());
    f.peers = "Incus adds ~750";
    report.add(&dname, "ms", dump);
    let f = report.add(
        &format!("restore of a stateful snapshot onto the stopped container ({what})"),
        "ms",
        restore,
    );
    f.target = Some(Target::Ratio(1.2));
    f.reference = Some(rname.clone());
    report
        .add(
            &format!("restore of a stateful snapshot replacing the running tree ({what})"),
            "ms",
            replace,
        )
        .reference = Some(rname.clone());
    report.add(&rname, "ms", bare);
    if hog_mb > 0 {
        report.note(format!(
            "the {hog_mb} MB container's hog had {touched:.0} MB resident"
        ));
    }
}
