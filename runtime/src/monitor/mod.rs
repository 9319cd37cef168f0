//! The per-container monitor: a small single-threaded process that creates the container,
//! stays init's parent, reaps it, drains the console into a bounded log, runs `exec`s, and
//! answers berthd on a unix socket. It outlives berthd: berthd may exit, crash or be upgraded
//! while containers keep running, and finds them again through their monitors' sockets.
//!
//! Lifecycle: berthd runs `berth-monitor` ahead of need (a [`Standby`]), writes the
//! [`ContainerSpec`] as JSON on its stdin when a container starts, and reads one
//! [`StartReport`] line from stdout; the monitor then shows as `berth-monitor <name>`. The
//! process forks once (so it is no child of berthd), starts a new session, moves into the
//! monitors' cgroup, binds its socket, starts the container and reports. When init is gone for good it writes `exit.json`, answers every
//! waiter and exits.

pub mod client;
pub mod exec;
pub mod proto;
mod trim;

use crate::error::{Context, Error, Result};
use crate::launch::{self, Started};
use crate::spec::{ContainerSpec, RunFiles};
use crate::{fdpass, sys};
use proto::{ExitInfo, ExitReason, Reply, Request, Status};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};
use trim::{IDLE_TRIM_MS, Trimmer};

/// The one line a starting monitor writes to berthd.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum StartReport {
    /// init exec'd.
    Ok {
        /// init's pid.
        init_pid: i32,
        /// The monitor's pid.
        monitor_pid: i32,
    },
    /// The container could not be started.
    Err {
        /// The failed step.
        step: String,
        /// errno, 0 when none applies.
        errno: i32,
    },
}

impl StartReport {
    fn from_error(e: &Error) -> Self {
        match e {
            Error::Setup { step, errno } => StartReport::Err {
                step: step.clone(),
                errno: *errno,
            },
            other => StartReport::Err {
                step: other.to_string(),
                errno: other.errno().unwrap_or(0),
            },
        }
    }
}

/// What a standby monitor shows in `ps` until it knows its container: as long as the longest
/// container name, so that the name can be written over it (see [`set_title`]).
const STANDBY_TITLE: &str = "(standby)                                                      ";

/// The environment variable that names, one per line, the `cgroup.procs` files a standby
/// joins while it waits (see [`crate::cgroup::ContainerCgroups::monitor_procs`]). It is kept
/// out of stdin so that stdin is the spec alone, as for monitors from before standbys.
const JOIN_ENV: &str = "BERTH_MONITOR_CGROUPS";

/// A monitor process started ahead of need, waiting in the monitors' cgroups and blocked
/// reading its spec on stdin: the start that uses it skips the exec, the dynamic loading and
/// the runtime start-up of a new process and the move into the monitors' cgroups (≈1.7 ms of
/// an 8–10 ms start). It exits, quietly, when its stdin closes: when it is dropped or when
/// berthd dies. Until then it is berthd's child. A start that finds no standby runs one and
/// uses it at once.
#[derive(Debug)]
pub struct Standby {
    child: std::process::Child,
    exe: std::path::PathBuf,
    join: Vec<std::path::PathBuf>,
}

impl Standby {
    /// Runs `exe (standby)`, to wait in the cgroups whose `cgroup.procs` files are `join`.
    pub fn spawn(exe: &Path, join: &[std::path::PathBuf]) -> Result<Standby> {
        use std::process::{Command, Stdio};
        let list: Vec<&std::ffi::OsStr> = join.iter().map(|p| p.as_os_str()).collect();
        let child = Command::new(exe)
            .arg(STANDBY_TITLE)
            .env(JOIN_ENV, list.join(std::ffi::OsStr::new("\n")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .step(|| format!("run {}", exe.display()))?;
        Ok(Standby {
            child,
            exe: exe.to_path_buf(),
            join: join.to_vec(),
        })
    }

    /// The waiting process's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still waits and runs the binary now installed (an upgrade since it
    /// started makes it an older monitor than berthd expects).
    pub fn usable(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
            && std::fs::read_link(format!("/proc/{}/exe", self.child.id()))
                .is_ok_and(|p| !p.as_os_str().as_encoded_bytes().ends_with(b" (deleted)"))
    }

    /// Hands `spec` to this monitor and waits for its report. A monitor that is gone before it
    /// could take the spec is replaced by a new one, once.
    /// Returns (init pid, monitor pid).
    pub fn start(self, spec: &ContainerSpec) -> Result<(i32, i32)> {
        // one placed in a systemd unit cannot be swapped for a new process
        let replace = spec.cgroups.unit_dir().is_none();
        self.start_or_replace(spec, replace)
    }

    fn start_or_replace(mut self, spec: &ContainerSpec, replace: bool) -> Result<(i32, i32)> {
        std::fs::create_dir_all(&spec.run_dir)
            .step(|| format!("create {}", spec.run_dir.display()))?;
        let input = proto::encode(spec);
        {
            let mut stdin = self
                .child
                .stdin
                .take()
                .ok_or_else(|| Error::Protocol("monitor stdin".into()))?;
            match stdin.write_all(&input) {
                Ok(()) => {}
                // nothing was started: the spec never reached it
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe && replace => {
                    drop(stdin);
                    let fresh = Standby::spawn(&self.exe, &self.join)?;
                    return fresh.start_or_replace(spec, false);
                }
                Err(e) => return Err(e).step(|| "send the spec to the monitor"),
            }
        }
        let mut out = String::new();
        let mut stdout = self
            .child
            .stdout
            .take()
            .ok_or_else(|| Error::Protocol("monitor stdout".into()))?;
        let read = stdout.read_to_string(&mut out);
        let _ = self.child.wait();
        read.step(|| "read the monitor's report")?;
        let line = out.lines().next().unwrap_or("");
        match serde_json::from_str::<StartReport>(line) {
            Ok(StartReport::Ok {
                init_pid,
                monitor_pid,
            }) => Ok((init_pid, monitor_pid)),
            Ok(StartReport::Err { step, errno }) => Err(Error::Setup { step, errno }),
            Err(_) => Err(Error::Protocol(format!(
                "monitor exited without a report (output {line:?})"
            ))),
        }
    }
}

impl Drop for Standby {
    /// Closing its stdin ends an unused standby; every one is reaped here (after a start, the
    /// status is already known and this returns at once).
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Writes `name` over the standby title in this process's own argument area, so that `ps`
/// and `pgrep -f` show `berth-monitor <name>`: the kernel reads /proc/PID/cmdline from that
/// memory. Does nothing unless the area holds exactly `<exe> <STANDBY_TITLE>` and the name
/// fits (it always does: names are at most 63 bytes).
fn set_title(name: &str) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // fields after the parenthesized command name, which may hold anything
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // arg_start and arg_end are fields 48 and 49 of stat(5); `rest` starts at field 3
    let (Some(Ok(start)), Some(Ok(end))) = (
        fields.get(45).map(|f| f.parse::<usize>()),
        fields.get(46).map(|f| f.parse::<usize>()),
    ) else {
        return;
    };
    let title = STANDBY_TITLE.as_bytes();
    if end <= start
        || end - start < title.len() + 2
        || name.len() > title.len()
        || name.as_bytes().contains(&0)
    {
        return;
    }
    // SAFETY: [arg_start, arg_end) is this process's argument area, mapped writable at the
    // top of its stack for its whole life; nothing else in the process writes it, and the
    // slice ends before this function returns.
    let area = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, end - start) };
    let at = area.len() - 1 - title.len();
    if &area[at..area.len() - 1] != title || area[at - 1] != 0 || area[area.len() - 1] != 0 {
        return;
    }
    let slot = &mut area[at..at + title.len()];
    slot.fill(0);
    slot[..name.len()].copy_from_slice(name.as_bytes());
}

/// How long a new monitor waits for the container's previous one to exit.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The monitor's command name in /proc/PID/comm, which its children keep until they exec
/// (an exec being set up inside a container shows as this).
pub const COMM: &str = "berth-monitor";

/// Entry point of `berth-monitor`: never returns.
pub fn main_stdio() -> ! {
    use std::os::unix::ffi::OsStrExt;
    // wait in the monitors' cgroups: the start that uses this standby need not move it
    let join: Vec<std::path::PathBuf> = std::env::var_os(JOIN_ENV)
        .map(|v| {
            v.as_encoded_bytes()
                .split(|b| *b == b'\n')
                .filter(|p| !p.is_empty())
                .map(|p| std::path::PathBuf::from(std::ffi::OsStr::from_bytes(p)))
                .collect()
        })
        .unwrap_or_default();
    // SAFETY: single-threaded; the container and CRIU need not see it.
    unsafe { std::env::remove_var(JOIN_ENV) };
    let joined = if !join.is_empty() && join.iter().all(|p| sys::write_file(p, b"0").is_ok()) {
        join
    } else {
        Vec::new()
    };
    let mut input = Vec::new();
    let read = std::io::stdin().read_to_end(&mut input);
    if read.is_ok() && input.is_empty() {
        // a standby berthd no longer needs
        sys::exit_now(0);
    }
    let spec: ContainerSpec = match read.ok().and_then(|_| serde_json::from_slice(&input).ok()) {
        Some(s) => s,
        None => report_and_exit(
            &StartReport::Err {
                step: "read the container spec".into(),
                errno: libc::EINVAL,
            },
            2,
        ),
    };
    set_title(&spec.name);
    crate::crash::point("monitor.start.spec-read");
    // Leave berthd: our parent exits at once, we are re-parented and start a new session.
    // SAFETY: single-threaded at this point (nothing has spawned threads).
    match unsafe { libc::fork() } {
        -1 => report_and_exit(
            &StartReport::Err {
                step: "fork the monitor".into(),
                errno: errno(),
            },
            1,
        ),
        0 => {}
        _ => sys::exit_now(0),
    }
    // SAFETY: plain syscall.
    unsafe { libc::setsid() };
    // berthd runs with its soft limit raised; the container gets the usual default
    let _ = sys::set_nofile_soft(1024);
    match prepare(&spec, &joined) {
        Ok(mut m) => {
            report(&StartReport::Ok {
                init_pid: m.init.pid,
                monitor_pid: std::process::id() as i32,
            });
            // stdout (berthd's pipe) is done: berthd reads EOF and returns.
            if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
                let _ = sys::dup2(null.as_raw_fd(), 1);
            }
            crate::crash::point("monitor.start.init-running");
            let code = m.run();
            sys::exit_now(code)
        }
        Err(e) => {
            log(&format!("start failed: {e}"));
            let _ = std::fs::remove_file(RunFiles::at(&spec.run_dir).socket());
            report_and_exit(&StartReport::from_error(&e), 1)
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn report(r: &StartReport) {
    let mut line = proto::encode(r);
    line.push(b'\n');
    let _ = sys::write_all_fd(1, &line);
}

fn report_and_exit(r: &StartReport, code: i32) -> ! {
    report(r);
    sys::exit_now(code)
}

pub(crate) fn log(msg: &str) {
    let _ = sys::write_all_fd(
        2,
        format!(
            "{} monitor[{}]: {msg}\n",
            proto::now_us(),
            std::process::id()
        )
        .as_bytes(),
    );
}

/// Sets up the monitor's files, cgroup and socket, then starts the container. `joined`: the
/// `cgroup.procs` files this process joined as a standby (it joins them now otherwise, as on
/// the first start after boot, before the monitors' cgroups exist).
fn prepare(spec: &ContainerSpec, joined: &[std::path::PathBuf]) -> Result<Monitor> {
    let files = RunFiles::at(&spec.run_dir);
    std::fs::create_dir_all(files.dir()).step(|| format!("create {}", files.dir().display()))?;
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(files.monitor_log())
        .step(|| "open the monitor log")?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .open("/dev/null")
        .step(|| "open /dev/null")?;
    sys::dup2(null.as_raw_fd(), 0).step(|| "stdin")?;
    sys::dup2(logf.as_raw_fd(), 2).step(|| "stderr")?;

    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(files.dir().join("monitor.lock"))
        .step(|| "open the monitor lock")?;
    // (one an older berth made 0644 too: the directory is the container root's to traverse)
    let _ = lock.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600));
    // The container's previous monitor holds the lock until its process is gone, a moment
    // after it reported the container stopped: a start right after a stop waits for it.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    // SAFETY: flock on an fd we own.
    while unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        if std::time::Instant::now() >= deadline {
            return Err(Error::AlreadyRunning(spec.name.clone()));
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    if !spec.cgroups.exists() {
        spec.cgroups.create()?;
    }
    // in a systemd unit berthd has put this process in its group already (see
    // `ContainerCgroups::settle_monitor`)
    let in_unit = spec.cgroups.unit_dir().is_some();
    if !in_unit && joined != spec.cgroups.monitor_procs() {
        spec.cgroups.attach_monitor(0)?;
    }
    let _ = std::fs::remove_file(files.exit_record());
    let listener = bind_seqpacket(&files.socket())?;
    let init = match &spec.restore {
        Some(plan) => crate::criu::restore::restore(spec, plan)?,
        None => launch::start(spec)?,
    };
    set_nonblocking(init.console.as_raw_fd());
    let console_log = ConsoleLog::open(&files.console_log(), spec.console_log_max)?;
    log(&format!(
        "container {} started, init pid {}",
        spec.name, init.pid
    ));
    Ok(Monitor {
        spec: spec.clone(),
        files,
        lock: Some(lock),
        listener,
        init,
        started_at_us: proto::now_us(),
        clients: Vec::new(),
        next_client: 0,
        execs: Vec::new(),
        stopping: false,
        killed: false,
        checkpointing: false,
        exec_hold: None,
        deadline: None,
        console_log,
        term: None,
    })
}

/// Binds a non-blocking, close-on-exec SOCK_SEQPACKET listener at `path` (mode 0600).
fn bind_seqpacket(path: &Path) -> Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let _ = std::fs::remove_file(path);
    // SAFETY: plain syscall.
    let fd = sys::cvt(unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })
    .step(|| "create the monitor socket")?;
    // SAFETY: fresh fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let (addr, len) = sockaddr_un(path.as_os_str().as_bytes())?;
    // SAFETY: addr is a valid sockaddr_un of length len.
    sys::cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    })
    .step(|| format!("bind {}", path.display()))?;
    // SAFETY: chmod via path.
    let _ = std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600));
    // SAFETY: plain syscall.
    sys::cvt(unsafe { libc::listen(fd.as_raw_fd(), 64) }).step(|| "listen")?;
    Ok(fd)
}

/// A `sockaddr_un` for `path`.
pub(crate) fn sockaddr_un(path: &[u8]) -> Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if path.len() >= addr.sun_path.len() {
        return Err(Error::Invalid(format!(
            "socket path too long: {}",
            String::from_utf8_lossy(path)
        )));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + path.len() + 1) as libc::socklen_t;
    Ok((addr, len))
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

/// How long a container whose systemd unit is stopped (`systemctl stop berth-web.scope`) gets
/// to power off before its init is killed: well within the default 90 s systemd waits.
const UNIT_STOP_MS: u64 = 30_000;

/// The write end of the pipe that SIGTERM is reported on, and the monitor's pid (a child
/// forked from the monitor inherits the handler until it execs, and must not report).
static TERM_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);
static TERM_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn on_term(_: libc::c_int) {
    use std::sync::atomic::Ordering;
    // SAFETY: getpid and write are async-signal-safe; the fd stays open for the process's life.
    unsafe {
        let fd = TERM_PIPE.load(Ordering::Relaxed);
        if fd >= 0 && libc::getpid() == TERM_PID.load(Ordering::Relaxed) {
            let b = 1u8;
            libc::write(fd, (&b as *const u8).cast(), 1);
        }
    }
}

/// Reports SIGTERM on a pipe, whose read end is returned: in a systemd unit, stopping the unit
/// (`systemctl stop`) sends SIGTERM to every process in it, and the monitor answers by stopping
/// its container as `berth stop` would, so that berthd hears that it stopped.
fn watch_sigterm() -> Option<OwnedFd> {
    use std::sync::atomic::Ordering;
    let (r, w) = sys::pipe_cloexec().ok()?;
    set_nonblocking(r.as_raw_fd());
    set_nonblocking(w.as_raw_fd());
    TERM_PID.store(std::process::id() as i32, Ordering::Relaxed);
    TERM_PIPE.store(std::os::fd::IntoRawFd::into_raw_fd(w), Ordering::Relaxed);
    // SAFETY: installing a handler that only calls async-signal-safe functions.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_term as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut()) != 0 {
            return None;
        }
    }
    Some(r)
}

/// The console log: appended, rotated to `.1` when it passes its size limit.
struct ConsoleLog {
    path: std::path::PathBuf,
    file: std::fs::File,
    size: u64,
    max: u64,
}

impl ConsoleLog {
    fn open(path: &Path, max: u64) -> Result<Self> {
        // what a container writes on its console is its own business, not other host users'
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .step(|| format!("open {}", path.display()))?;
        let _ = file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600));
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(ConsoleLog {
            path: path.to_path_buf(),
            file,
            size,
            max: max.max(4096),
        })
    }

    fn append(&mut self, data: &[u8]) {
        if self.size + data.len() as u64 > self.max {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            let _ = std::fs::rename(&self.path, &old);
            if let Ok(f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)
            {
                self.file = f;
                self.size = 0;
            }
        }
        if self.file.write_all(data).is_ok() {
            self.size += data.len() as u64;
        }
    }
}

struct Client {
    id: u64,
    fd: OwnedFd,
    watch: bool,
    stop_waiter: bool,
    /// Handed to an exec helper: the monitor no longer reads it.
    exec: bool,
}

struct Exec {
    child: exec::ExecChild,
    client: u64,
}

/// The running monitor.
struct Monitor {
    spec: ContainerSpec,
    files: RunFiles,
    /// Held while this monitor owns the container; let go before `Exited` is reported.
    lock: Option<std::fs::File>,
    listener: OwnedFd,
    init: Started,
    started_at_us: u64,
    clients: Vec<Client>,
    next_client: u64,
    execs: Vec<Exec>,
    stopping: bool,
    killed: bool,
    /// A checkpoint that ends by killing the tree is running: that kill is no crash.
    checkpointing: bool,
    /// The client whose checkpoint holds new execs back (see [`Request::HoldExecs`]); the
    /// hold lasts while that connection is open.
    exec_hold: Option<u64>,
    deadline: Option<Instant>,
    console_log: ConsoleLog,
    /// SIGTERM arrives here (in a systemd unit only).
    term: Option<OwnedFd>,
}

enum Slot {
    Term,
    Listener,
    Init,
    Console,
    Client(u64),
    Exec(usize),
}

impl Monitor {
    /// The event loop; returns the process exit code.
    fn run(&mut self) -> i32 {
        // SAFETY: ignoring SIGPIPE so a vanished client cannot kill us.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let mut buf = vec![0u8; proto::MAX_MESSAGE];
        let mut trimmer: Option<Trimmer> = None; // built at the first idle moment, off the start path
        let mut busy = true; // something happened since the last trim
        if self.spec.cgroups.unit_dir().is_some() {
            self.term = watch_sigterm();
        }
        loop {
            let mut pfds = Vec::with_capacity(4 + self.clients.len() + self.execs.len());
            let mut slots = Vec::with_capacity(pfds.capacity());
            let mut add = |fd: RawFd, slot: Slot| {
                pfds.push(libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
                slots.push(slot);
            };
            if let Some(t) = &self.term {
                add(t.as_raw_fd(), Slot::Term);
            }
            add(self.listener.as_raw_fd(), Slot::Listener);
            add(self.init.pidfd.as_raw_fd(), Slot::Init);
            add(self.init.console.as_raw_fd(), Slot::Console);
            for c in self.clients.iter().filter(|c| !c.exec) {
                add(c.fd.as_raw_fd(), Slot::Client(c.id));
            }
            for (i, e) in self.execs.iter().enumerate() {
                add(e.child.pidfd.as_raw_fd(), Slot::Exec(i));
            }
            let timeout = match self.deadline {
                Some(d) => d
                    .saturating_duration_since(Instant::now())
                    .as_millis()
                    .min(i32::MAX as u128) as i32,
                None if busy => IDLE_TRIM_MS,
                None => -1,
            };
            // SAFETY: pfds is a valid array.
            let mut n =
                unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
            if n == 0 && busy && self.deadline.is_none() {
                // Idle for a while: give back what handling the last events faulted in, then
                // wait with the same poll set (so nothing else runs between the two).
                trimmer.get_or_insert_with(|| Trimmer::new(&buf)).trim();
                busy = false;
                // SAFETY: as above.
                n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
            }
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                log(&format!("poll: {}", std::io::Error::last_os_error()));
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            busy = true;
            if let Some(d) = self.deadline
                && Instant::now() >= d
            {
                self.deadline = None;
                self.kill_init();
            }
            let mut finished_execs = Vec::new();
            for (pfd, slot) in pfds.iter().zip(slots) {
                if pfd.revents == 0 {
                    continue;
                }
                match slot {
                    Slot::Term => {
                        self.take_sigterm();
                    }
                    Slot::Listener => self.accept(),
                    Slot::Console => self.drain_console(&mut buf),
                    Slot::Client(id) => self.read_client(id, &mut buf),
                    Slot::Exec(i) => finished_execs.push(i),
                    Slot::Init => {
                        if let Some(code) = self.init_exited() {
                            return code;
                        }
                    }
                }
            }
            finished_execs.sort_unstable_by(|a, b| b.cmp(a));
            for i in finished_execs {
                let e = self.execs.remove(i);
                let code = match wait_pidfd(e.child.pidfd.as_fd()) {
                    Some(status) => exec::shell_status(status),
                    None => 255,
                };
                self.send_to(e.client, &Reply::ExecExited { code });
                self.clients.retain(|c| c.id != e.client);
            }
        }
    }

    /// Whether SIGTERM came (drains its pipe); if so, stops the container: its unit is being
    /// stopped.
    fn take_sigterm(&mut self) -> bool {
        let Some(t) = &self.term else { return false };
        let mut buf = [0u8; 16];
        // SAFETY: reading into a local buffer from our non-blocking pipe.
        let n = unsafe { libc::read(t.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return false;
        }
        if !self.stopping {
            log("SIGTERM: the container's systemd unit is stopping; stopping the container");
            self.stop(self.spec.stop_signal, UNIT_STOP_MS);
        }
        true
    }

    fn accept(&mut self) {
        loop {
            // SAFETY: accept4 on our listener; NULL address is allowed.
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if fd < 0 {
                return;
            }
            self.next_client += 1;
            // SAFETY: fresh fd.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            self.clients.push(Client {
                id: self.next_client,
                fd,
                watch: false,
                stop_waiter: false,
                exec: false,
            });
        }
    }

    fn drain_console(&mut self, buf: &mut [u8]) {
        for _ in 0..16 {
            // SAFETY: buf is valid for its length.
            let n = unsafe {
                libc::read(
                    self.init.console.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n <= 0 {
                return;
            }
            self.console_log.append(&buf[..n as usize]);
        }
    }

    fn read_client(&mut self, id: u64, buf: &mut [u8]) {
        let Some(pos) = self.clients.iter().position(|c| c.id == id) else {
            return;
        };
        let res = fdpass::recv(self.clients[pos].fd.as_fd(), buf);
        let (n, fds) = match res {
            Ok((0, _)) => {
                self.clients.remove(pos);
                return;
            }
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(_) => {
                self.clients.remove(pos);
                return;
            }
        };
        let req = match proto::decode::<Request>(&buf[..n]) {
            Ok(r) => r,
            Err(e) => {
                self.send_to(
                    id,
                    &Reply::Error {
                        message: e.to_string(),
                    },
                );
                return;
            }
        };
        match req {
            Request::Status => {
                let st = Status {
                    init_pid: self.init.pid,
                    monitor_pid: std::process::id() as i32,
                    started_at_us: self.started_at_us,
                    stopping: self.stopping,
                    console: self.init.console_path.to_string_lossy().into_owned(),
                };
                self.send_to(id, &Reply::Status(st));
            }
            Request::Watch => self.clients[pos].watch = true,
            Request::Checkpointing { active } => {
                self.checkpointing = active;
                self.send_to(id, &Reply::Ok);
            }
            Request::Stop { signal, timeout_ms } => {
                self.clients[pos].stop_waiter = true;
                self.stop(signal, timeout_ms);
            }
            Request::HoldExecs { hold } => {
                self.exec_hold = hold.then_some(id);
                let running = self.execs.len() as u32;
                self.send_to(id, &Reply::Execs { running });
            }
            Request::Exec(req) => {
                if self.stopping {
                    self.send_to(id, &Reply::Stopping);
                    return;
                }
                if self.execs_held() {
                    self.send_to(id, &Reply::ExecsHeld);
                    return;
                }
                let Ok(stdio) = <[OwnedFd; 3]>::try_from(fds) else {
                    self.send_to(
                        id,
                        &Reply::Error {
                            message: "exec needs exactly three fds (stdin, stdout, stderr)".into(),
                        },
                    );
                    return;
                };
                let conn = self.clients[pos].fd.as_raw_fd();
                match exec::spawn(
                    self.init.pid,
                    self.init.pidfd.as_fd(),
                    &self.spec.cgroups,
                    &req,
                    &stdio,
                    conn,
                ) {
                    Ok(child) => {
                        self.clients[pos].exec = true;
                        self.send_to(id, &Reply::ExecStarted { pid: child.pid });
                        self.execs.push(Exec { child, client: id });
                    }
                    Err(e) => self.send_to(
                        id,
                        &Reply::Error {
                            message: e.to_string(),
                        },
                    ),
                }
            }
            Request::Resize { .. } => self.send_to(
                id,
                &Reply::Error {
                    message: "resize applies to an exec's own connection".into(),
                },
            ),
        }
    }

    /// Whether a checkpoint holds execs back: its connection is still open.
    fn execs_held(&mut self) -> bool {
        let held = self
            .exec_hold
            .is_some_and(|h| self.clients.iter().any(|c| c.id == h));
        if !held {
            self.exec_hold = None;
        }
        held
    }

    fn stop(&mut self, signal: i32, timeout_ms: u64) {
        if timeout_ms == 0 || signal == libc::SIGKILL {
            self.stopping = true;
            self.kill_init();
            return;
        }
        if self.stopping {
            return;
        }
        self.stopping = true;
        if let Err(e) = sys::pidfd_send_signal(self.init.pidfd.as_fd(), signal) {
            log(&format!("signal {signal} to init: {e}; killing it"));
            self.kill_init();
            return;
        }
        self.deadline = Some(Instant::now() + Duration::from_millis(timeout_ms));
        crate::crash::point("monitor.stop.signalled");
    }

    fn kill_init(&mut self) {
        self.killed = true;
        let _ = sys::pidfd_send_signal(self.init.pidfd.as_fd(), libc::SIGKILL);
        crate::crash::point("monitor.stop.signalled");
    }

    /// init's pidfd is readable: reap it. Returns the exit code when the monitor should exit.
    fn init_exited(&mut self) -> Option<i32> {
        let status = wait_pidfd(self.init.pidfd.as_fd())?;
        let (code, signal) = if libc::WIFEXITED(status) {
            (Some(libc::WEXITSTATUS(status)), None)
        } else {
            (None, Some(libc::WTERMSIG(status)))
        };
        // reboot(2) inside a pid namespace kills its init with SIGHUP (restart) or SIGINT
        // (power off / halt). A unit stop also signals init (busybox's reboots on SIGTERM):
        // no restart then.
        self.take_sigterm();
        if signal == Some(libc::SIGHUP) && !self.stopping {
            log("init asked for a reboot; starting the container again");
            match launch::start(&self.spec) {
                Ok(init) => {
                    set_nonblocking(init.console.as_raw_fd());
                    self.init = init;
                    self.started_at_us = proto::now_us();
                    let ev = Reply::Restarted {
                        init_pid: self.init.pid,
                    };
                    for id in self
                        .clients
                        .iter()
                        .filter(|c| c.watch)
                        .map(|c| c.id)
                        .collect::<Vec<_>>()
                    {
                        self.send_to(id, &ev);
                    }
                    return None;
                }
                Err(e) => log(&format!("restart after reboot failed: {e}")),
            }
        }
        let reason = match signal {
            Some(libc::SIGKILL) if self.checkpointing => ExitReason::Checkpointed,
            None => ExitReason::Exited,
            Some(libc::SIGKILL) if self.killed => ExitReason::Killed,
            Some(libc::SIGINT) | Some(libc::SIGHUP) => ExitReason::Poweroff,
            Some(_) => ExitReason::Crashed,
        };
        let info = ExitInfo {
            init_pid: self.init.pid,
            code,
            signal,
            reason,
            at_us: proto::now_us(),
        };
        log(&format!("init {} ended: {:?}", self.init.pid, info));
        if let Err(e) = write_atomic(&self.files.exit_record(), &proto::encode(&info)) {
            log(&format!("write exit record: {e}"));
        }
        let _ = std::fs::remove_file(self.files.socket());
        // the container is free before anyone hears it stopped: a start that follows the
        // reply at once (a restart) must not find this monitor still holding it
        self.lock = None;
        let ev = Reply::Exited(info);
        let targets: Vec<u64> = self
            .clients
            .iter()
            .filter(|c| c.watch || c.stop_waiter)
            .map(|c| c.id)
            .collect();
        for id in targets {
            self.send_to(id, &ev);
        }
        Some(0)
    }

    fn send_to(&mut self, id: u64, reply: &Reply) {
        if let Some(pos) = self.clients.iter().position(|c| c.id == id) {
            let data = proto::encode(reply);
            // SAFETY: send on a connected socket; MSG_DONTWAIT so a stuck client cannot block us.
            let r = unsafe {
                libc::send(
                    self.clients[pos].fd.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if r < 0 {
                self.clients.remove(pos);
            }
        }
    }
}

/// Reaps the process behind `pidfd` if it has exited; returns its wait status.
fn wait_pidfd(pidfd: std::os::fd::BorrowedFd<'_>) -> Option<libc::c_int> {
    // SAFETY: siginfo_t is plain data.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid with P_PIDFD on a pidfd we own.
    let r = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    // SAFETY: reading the union fields waitid filled for a CLD_* event.
    let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
    if r < 0 || pid == 0 {
        return None;
    }
    Some(match code {
        libc::CLD_EXITED => (status & 0xff) << 8,
        _ => status & 0x7f,
    })
}

/// Writes `data` to `path` through a temporary file, fsync and rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}
