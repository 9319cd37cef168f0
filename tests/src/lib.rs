//! End-to-end test harness: a private "system" bus (dbus-daemon with `<type>system</type>`),
//! a real polkitd on it, berthd D-Bus-activated from the build directory with its own state
//! and runtime directories and cgroup parent, and the real `berth` CLI and `busctl`.
//!
//! Every [`Env`] cleans up when dropped, also after a failed assertion: containers are deleted
//! through berthd, then anything left in its cgroups is killed, its cgroups removed, the pool
//! unmounted, the daemons stopped and the directory removed.

pub mod archive;
pub mod varlink;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Which storage pool a test environment gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// Plain directories.
    Dir,
    /// A loop-backed btrfs file of 1 GiB.
    Btrfs,
}

/// How to set up an [`Env`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Pool kind.
    pub storage: Option<Storage>,
    /// Extra berthd flags.
    pub daemon_args: Vec<String>,
    /// Run the bus (and so berthd, its monitors and containers) in a mount namespace whose
    /// /sys/fs/cgroup is the cgroup2 tree alone: a pure cgroup v2 host.
    pub cgroup_v2: bool,
    /// Size of a btrfs pool's loop file (default 1GiB).
    pub pool_size: Option<String>,
    /// polkit rules (JavaScript) for this environment's polkitd alone: it runs in a mount
    /// namespace of its own where a private directory holding them hides the host's
    /// /etc/polkit-1/rules.d, so a test's rules neither reach the host nor other tests.
    pub polkit_rules: Option<String>,
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// Where the workspace's binaries were built (`BERTH_BIN_DIR` overrides).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BERTH_BIN_DIR") {
        return d.into();
    }
    // tests run from target/<profile>/deps/<test>-<hash>, berth-bench from target/<profile>
    let exe = std::env::current_exe().expect("own executable");
    let dir = exe.parent().expect("executable directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    }
    .to_path_buf()
}

/// A binary of the workspace, built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the workspace's binaries first (make test does)",
        p.display()
    );
    p
}

/// Copies an executable to `to` so that it can be exec'd right after, while other test threads
/// fork. A copy made in this process holds a writable fd on `to` that a child forked meanwhile
/// inherits until it execs, and an exec of `to` in that window fails with ETXTBSY; `cp` holds
/// that fd in its own process, which has exited when this returns.
pub fn copy_executable(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("--")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(st.success(), "cp {} {}: {st}", from.display(), to.display());
}

/// Every test process runs in a mount namespace of its own whose root mount is shared, as
/// systemd makes it on users' hosts: this machine's root is private, which hid a bug that kept
/// every container from starting on a systemd host. Runs before `main`, while the process is
/// still single-threaded (unshare of the mount namespace refuses threaded callers); the bench
/// keeps the machine's namespace.
#[used]
#[unsafe(link_section = ".init_array")]
static SHARED_ROOT: extern "C" fn() = shared_root_namespace;

/// Whether this process is a test binary (the bench is not).
fn in_test_harness() -> bool {
    std::fs::read_link("/proc/self/exe")
        .ok()
        .and_then(|p| p.parent().and_then(|d| d.file_name()).map(|n| n == "deps"))
        .unwrap_or(false)
}

extern "C" fn shared_root_namespace() {
    // SAFETY: plain syscalls with valid C strings; nothing else runs yet.
    unsafe {
        if !in_test_harness() || libc::geteuid() != 0 || libc::unshare(libc::CLONE_NEWNS) != 0 {
            return;
        }
        libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SHARED,
            std::ptr::null(),
        );
    }
}

/// Whether `/` is a shared mount in this process's mount namespace.
pub fn root_is_shared() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some("/"))
        .is_some_and(|l| {
            l.split(" - ")
                .next()
                .unwrap_or("")
                .split(' ')
                .skip(6)
                .any(|f| f.starts_with("shared:"))
        })
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One isolated berth installation on a private bus.
#[derive(Debug)]
pub struct Env {
    /// The environment's directory.
    pub dir: PathBuf,
    /// The bus address.
    pub bus: String,
    /// berthd's state directory.
    pub state: PathBuf,
    /// berthd's runtime directory.
    pub run: PathBuf,
    /// The cgroup parent of this environment's containers.
    pub cgroup_parent: String,
    /// The bridge this environment's berthd creates.
    pub bridge: String,
    /// The CLI talks varlink (`BERTH_TRANSPORT=varlink`) instead of D-Bus. It starts set when
    /// the tests run with `BERTH_TEST_TRANSPORT=varlink` (`make test` runs the CLI's test
    /// files once per transport).
    pub varlink: bool,
    dbus: Option<Child>,
    polkitd: Option<Child>,
}

impl Env {
    /// A fresh environment with a pool of the given kind. berthd is not running yet: the
    /// first call to `org.berth.Berth1` activates it.
    pub fn new(storage: Storage) -> Env {
        Env::with(Options {
            storage: Some(storage),
            ..Default::default()
        })
    }

    /// A fresh environment set up as `opts` says.
    pub fn with(opts: Options) -> Env {
        let storage = opts.storage.unwrap_or(Storage::Dir);
        check_installed_policy();
        assert!(
            !in_test_harness() || root_is_shared(),
            "tests run where / is a shared mount, as on a systemd host"
        );
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}-{n}", std::process::id());
        let dir = PathBuf::from(format!("/tmp/berth-e2e-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("services")).unwrap();
        set_mode(&dir, 0o755);
        let bus = format!("unix:path={}/bus.sock", dir.display());
        let mut env = Env {
            state: dir.join("state"),
            run: dir.join("run"),
            cgroup_parent: format!("berth-e2e-{id}"),
            bridge: format!("bt{:x}x{n}", std::process::id()),
            bus,
            dir,
            varlink: std::env::var("BERTH_TEST_TRANSPORT").as_deref() == Ok("varlink"),
            dbus: None,
            polkitd: None,
        };
        env.write_bus_config(&opts.daemon_args);
        env.start_bus(opts.cgroup_v2);
        env.start_polkitd(opts.polkit_rules.as_deref());
        env.init_pool(storage, opts.pool_size.as_deref().unwrap_or("1GiB"));
        env.ok(&["image", "build", "busybox", "--alias", "busybox"]);
        env
    }

    fn write_bus_config(&self, daemon_args: &[String]) {
        let conf = format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={dir}/bus.sock</listen>
  <auth>EXTERNAL</auth>
  <servicedir>{dir}/services</servicedir>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <include ignore_missing="yes">/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf</include>
  <include>{repo}/systemd/org.berth.Berth1.conf</include>
</busconfig>
"#,
            dir = self.dir.display(),
            repo = repo().display()
        );
        std::fs::write(self.dir.join("bus.conf"), conf).unwrap();
        let service = format!(
            "[D-BUS Service]\nName=org.berth.Berth1\nExec={berthd} --state-dir {state} --run-dir {run} --cgroup-parent {cg} --bridge {br} --monitor {monitor}{extra}\nUser=root\n",
            br = self.bridge,
            extra = daemon_args
                .iter()
                .map(|a| format!(" {a}"))
                .collect::<String>(),
            berthd = bin("berthd").display(),
            monitor = bin("berth-monitor").display(),
            state = self.state.display(),
            run = self.run.display(),
            cg = self.cgroup_parent,
        );
        std::fs::write(self.dir.join("services/org.berth.Berth1.service"), service).unwrap();
    }

    fn start_bus(&mut self, cgroup_v2: bool) {
        // O_APPEND, as every other writer of it: one at its own offset would overwrite the
        // lines the others appended
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemons.log"))
            .unwrap();
        let daemon = format!(
            "exec /usr/bin/dbus-daemon --config-file={} --nofork --nopidfile",
            self.dir.join("bus.conf").display()
        );
        let mut cmd = if cgroup_v2 {
            let mut c = Command::new("/usr/bin/unshare");
            c.args(["--mount", "--propagation", "slave", "--", "sh", "-c"]).arg(format!(
                "umount -R /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup && {daemon}"
            ));
            c
        } else {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(&daemon);
            c
        };
        // The system bus starts the services it activates through its launch helper, which
        // clears the environment: no PATH, so a tool berthd runs by its bare name (nft lives
        // in /usr/sbin) is not found there. This bus passes its own environment on; an empty
        // one makes every test's berthd live as an activated one on a host does.
        let child = cmd
            .env_clear()
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dbus-daemon (install with scripts/setup)");
        self.dbus = Some(child);
        wait_for(Duration::from_secs(10), "the private bus", || {
            self.dir.join("bus.sock").exists()
        });
    }

    fn start_polkitd(&mut self, rules: Option<&str>) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("daemons.log"))
            .unwrap();
        const POLKITD: &str = "/usr/lib/polkit-1/polkitd";
        let mut cmd = match rules {
            None => Command::new(POLKITD),
            Some(js) => {
                let d = self.dir.join("polkit-rules.d");
                std::fs::create_dir_all(&d).unwrap();
                std::fs::write(d.join("50-berth-e2e.rules"), js).unwrap();
                // unshare's new namespace is private: the bind mount stays in it
                let mut c = Command::new("unshare");
                c.args(["--mount", "--", "sh", "-c"])
                    .arg(format!(
                        "mount --bind \"$1\" /etc/polkit-1/rules.d && exec {POLKITD} --no-debug"
                    ))
                    .arg("sh")
                    .arg(&d);
                c
            }
        };
        if rules.is_none() {
            cmd.arg("--no-debug");
        }
        let child = cmd
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("polkitd (install with scripts/setup)");
        self.polkitd = Some(child);
        // polkitd loads its actions and rules and starts a JS engine first: on a loaded
        // 2-core machine that once took longer than 10 s (CI); its log says why if it fails
        let start = Instant::now();
        while !self.name_owned("org.freedesktop.PolicyKit1") {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for polkitd\n{}",
                self.daemon_log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn init_pool(&self, storage: Storage, size: &str) {
        let mut cmd = Command::new(bin("berthd"));
        cmd.arg("init").arg("--state-dir").arg(&self.state);
        match storage {
            Storage::Dir => cmd.args(["--storage", "dir"]),
            Storage::Btrfs => cmd.args(["--storage", "btrfs", "--size", size]),
        };
        let out = run(&mut cmd, Duration::from_secs(60));
        assert!(out.status.success(), "berthd init: {}", text(&out.stderr));
    }

    /// Whether `name` has an owner on the private bus.
    pub fn name_owned(&self, name: &str) -> bool {
        let out = self.busctl(&[
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameHasOwner",
            "s",
            name,
        ]);
        text(&out.stdout).trim() == "b true"
    }

    /// Runs the `berth` CLI against this environment.
    pub fn berth(&self, args: &[&str]) -> Output {
        self.berth_stdin(args, None)
    }

    /// What the CLI needs to reach this environment's berthd, over the transport the
    /// environment's tests use (D-Bus, or varlink when `varlink` is set).
    pub fn cli_env(&self, cmd: &mut Command) {
        cmd.env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus);
        if self.varlink {
            cmd.env("BERTH_TRANSPORT", "varlink").env(
                "BERTH_VARLINK_ADDRESS",
                format!("unix:{}", self.run.join("org.berth.Berth").display()),
            );
        } else {
            cmd.env_remove("BERTH_TRANSPORT");
        }
    }

    /// Runs the CLI with `input` on stdin.
    pub fn berth_stdin(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut cmd = Command::new(bin("berth"));
        cmd.args(args);
        self.cli_env(&mut cmd);
        // building an image from the Debian archive is slow work on a loaded 2-core machine
        let limit = if args.starts_with(&["image", "build"]) && args.get(2) != Some(&"busybox") {
            900
        } else {
            120
        };
        run_input(&mut cmd, input, Duration::from_secs(limit))
    }

    /// Runs the CLI and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.berth(args);
        assert!(
            out.status.success(),
            "berth {args:?} failed ({}): {}\n{}",
            out.status,
            text(&out.stderr),
            self.daemon_log_tail()
        );
        text(&out.stdout)
    }

    /// Sets variables in the environment the bus gives the services it activates from now on
    /// (the next berthd, and so its monitors).
    pub fn activation_env(&self, vars: &[(&str, &str)]) {
        let n = vars.len().to_string();
        let mut args = vec![
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "UpdateActivationEnvironment",
            "a{ss}",
            n.as_str(),
        ];
        for (k, v) in vars {
            args.extend([*k, *v]);
        }
        let out = self.busctl(&args);
        assert!(
            out.status.success(),
            "UpdateActivationEnvironment: {}",
            text(&out.stderr)
        );
    }

    /// `busctl --address=… ARGS`.
    pub fn busctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("busctl");
        cmd.arg(format!("--address={}", self.bus)).args(args);
        run(&mut cmd, Duration::from_secs(60))
    }

    /// `busctl` as another user (by name).
    pub fn busctl_as(&self, user: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid", user, "--regid", user, "--clear-groups", "busctl"])
            .arg(format!("--address={}", self.bus))
            .args(args);
        run(&mut cmd, Duration::from_secs(60))
    }

    /// `gdbus call` as another user (it prints error names): `dest path method args…`.
    pub fn gdbus_call_as(&self, user: &str, path: &str, method: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid",
            user,
            "--regid",
            user,
            "--clear-groups",
            "gdbus",
            "call",
        ])
        .arg(format!("--address={}", self.bus))
        .args([
            "--dest",
            "org.berth.Berth1",
            "--object-path",
            path,
            "--method",
            method,
        ])
        .args(args);
        run(&mut cmd, Duration::from_secs(60))
    }

    /// berthd's pid, asked from the bus.
    pub fn daemon_pid(&self) -> Option<u32> {
        let out = self.busctl(&[
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "GetConnectionUnixProcessID",
            "s",
            "org.berth.Berth1",
        ]);
        text(&out.stdout)
            .trim()
            .strip_prefix("u ")
            .and_then(|p| p.parse().ok())
    }

    /// `activator` (systemd-socket-activate) holding `sock` and starting this environment's
    /// berthd, with the socket as its varlink fd, on the first connection.
    pub fn socket_activated_berthd(&self, activator: &Path, sock: &Path) -> Command {
        let mut c = Command::new(activator);
        c.arg("-l")
            .arg(sock)
            .arg("--fdname=varlink")
            .arg(bin("berthd"))
            .args(["--bus", &self.bus, "--state-dir"])
            .arg(&self.state)
            .arg("--run-dir")
            .arg(&self.run)
            .args([
                "--cgroup-parent",
                &self.cgroup_parent,
                "--bridge",
                &self.bridge,
            ])
            .arg("--monitor")
            .arg(bin("berth-monitor"));
        // its log goes where the bus-activated berthd's goes
        match std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("daemons.log"))
        {
            Ok(log) => c.stdout(Stdio::null()).stderr(log),
            Err(_) => c.stdout(Stdio::null()).stderr(Stdio::null()),
        };
        c
    }

    /// The object path of the one Operation that runs, once it appears (within 30 s).
    pub fn wait_for_operation(&self) -> String {
        let mut op = String::new();
        wait_for(Duration::from_secs(30), "an operation", || {
            let o = self.busctl(&[
                "call",
                "org.berth.Berth1",
                "/org/berth/Berth1",
                "org.berth.Berth1.Manager",
                "ListOperations",
            ]);
            match text(&o.stdout).split_whitespace().nth(2) {
                Some(p) => {
                    op = p.trim_matches('"').to_string();
                    true
                }
                None => false,
            }
        });
        op
    }

    /// The last lines of the daemons' log (dbus-daemon passes activated berthd's stderr on).
    pub fn daemon_log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("daemons.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().rev().take(30).collect();
        format!(
            "--- daemons.log (tail) ---\n{}",
            lines.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    /// A container's init pid from `berth info --format json`.
    pub fn init_pid(&self, name: &str) -> u32 {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["info", name, "--format", "json"])).unwrap();
        v["init_pid"].as_u64().unwrap() as u32
    }

    /// The monitor of a running container, asked on its socket.
    pub fn monitor_status(&self, name: &str) -> Option<berth_runtime::monitor::proto::Status> {
        use berth_runtime::monitor::{client::Conn, proto};
        let conn =
            Conn::connect(&self.run.join("containers").join(name).join("monitor.sock")).ok()?;
        match conn.call(&proto::Request::Status).ok()? {
            proto::Reply::Status(s) => Some(s),
            _ => None,
        }
    }

    /// A container's status.
    pub fn status(&self, name: &str) -> String {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["info", name, "--format", "json"])).unwrap();
        v["status"].as_str().unwrap().to_string()
    }

    /// The storage pool's mount point / directory.
    pub fn pool(&self) -> PathBuf {
        self.state.join("pool")
    }

    /// Host cgroup directories of a container (one per hierarchy).
    pub fn cgroup_dirs(&self, name: &str) -> Vec<PathBuf> {
        cgroup_mounts()
            .into_iter()
            .map(|m| m.join(&self.cgroup_parent).join(name))
            .collect()
    }

    /// Pids of processes whose cgroup path mentions this environment.
    pub fn processes(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok(cg) = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                && cg.contains(&format!("/{}/", self.cgroup_parent))
            {
                pids.push(pid);
            }
        }
        pids
    }

    /// Mounts whose source or target mentions `needle`.
    pub fn mounts_mentioning(needle: &str) -> Vec<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // 1. through berthd, as a user would
        let list = self.berth(&["list", "--format", "json"]);
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&list.stdout)
            && let Some(arr) = v.as_array()
        {
            for c in arr {
                if let Some(n) = c["name"].as_str() {
                    let _ = self.berth(&["delete", "--force", n]);
                }
            }
        }
        // 2. berthd itself
        if let Some(pid) = self.daemon_pid() {
            kill(pid, libc::SIGKILL);
        }
        // 3. anything left in this environment's cgroups (monitors included), then the cgroups
        for _ in 0..3 {
            for pid in self.processes() {
                kill(pid, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for m in cgroup_mounts() {
            for d in [
                m.join(&self.cgroup_parent),
                m.join(format!("{}.monitor", self.cgroup_parent)),
            ] {
                remove_cgroup_tree(&d);
            }
        }
        // 4. the pool (a loop-backed btrfs detaches its loop device when unmounted)
        let pool = self.pool();
        let c = std::ffi::CString::new(pool.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: umount2 with a valid C string.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        // 5. the bridge
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        let _ = Command::new("nft")
            .args([
                "delete",
                "table",
                "bridge",
                &format!("berth_{}", self.bridge),
            ])
            .output();
        // 6. the daemons
        for child in [self.polkitd.take(), self.dbus.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("BERTH_KEEP_E2E").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Host cgroup mount points (v1 hierarchies and the v2 tree).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split(' ').next()?;
            let mountpoint = pre.split(' ').nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(mountpoint))
        })
        .collect()
}

fn remove_cgroup_tree(d: &Path) {
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(d);
}

fn kill(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid we identified as ours.
    unsafe { libc::kill(pid as i32, sig) };
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The polkit policy polkitd reads must be the repository's (scripts/setup installs it).
fn check_installed_policy() {
    let ours = std::fs::read(repo().join("polkit/org.berth.Berth1.policy")).unwrap();
    let installed =
        std::fs::read("/usr/share/polkit-1/actions/org.berth.Berth1.policy").unwrap_or_default();
    assert!(
        ours == installed,
        "the installed polkit policy differs from polkit/org.berth.Berth1.policy: run scripts/setup"
    );
}

/// Output as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Polls `f` until true or the timeout.
pub fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command with a timeout (killing it on expiry).
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    run_input(cmd, None, timeout)
}

/// Runs a command with optional stdin and a timeout.
pub fn run_input(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if let Some(data) = input {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(data).unwrap();
    }
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}

/// Creates a system user for polkit tests if it does not exist; returns its name.
pub fn unprivileged_user() -> &'static str {
    system_user("berth-e2e")
}

/// Creates system user `user` (for polkit tests) if it does not exist; returns its name.
pub fn system_user(user: &'static str) -> &'static str {
    let exists = Command::new("id")
        .arg(user)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    if !exists {
        let out = run(
            Command::new("useradd").args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                user,
            ]),
            Duration::from_secs(30),
        );
        // a parallel test may have created it meanwhile
        assert!(
            out.status.success() || text(&out.stderr).contains("already exists"),
            "useradd: {}",
            text(&out.stderr)
        );
    }
    user
}

/// Whether the test can run: end-to-end tests need root; without it they fail, unless
/// `BERTH_E2E_ALLOW_SKIP` is set, when they skip.
pub fn root_or_skip() -> bool {
    // SAFETY: geteuid has no failure mode.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root || std::env::var_os("BERTH_E2E_ALLOW_SKIP").is_some(),
        "end-to-end tests need root"
    );
    root
}
