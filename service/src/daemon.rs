//! Wiring: state directories, the storage pool, the host runtime, the engine, the bus
//! connection (objects exported before the name is requested), readiness and shutdown.

use crate::config::{Config, InitOptions};
use berth_actors::host::{HostConfig, HostRuntime, SharedHost};
use berth_actors::store::Db;
use berth_actors::types::HostInfo;
use berth_interfaces::auth::PolkitAuthorizer;
use berth_interfaces::dbus::{self, Context};
use berth_interfaces::varlink;
use berth_interfaces::wire::BUS_NAME;
use berth_runtime::storage::{DriverKind, Pool, PoolConfig};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use zbus::connection;
use zbus::fdo::RequestNameFlags;

/// The setting holding the default pool's description.
pub const POOL_SETTING: &str = "pool.default";

fn ensure_dir(p: &Path, mode: u32) -> Result<(), String> {
    std::fs::create_dir_all(p).map_err(|e| format!("create {}: {e}", p.display()))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", p.display()))
}

/// LXD's default loop size: 20% of the free space, between 5 and 30 GiB.
fn default_loop_size(dir: &Path) -> u64 {
    let free = berth_runtime::sys::fs_space(dir).map_or(0, |s| s.available);
    (free / 5).clamp(5 << 30, 30 << 30)
}

/// Creates (or finds) the default pool and records it. Idempotent.
fn ensure_pool(
    db: &Db,
    state_dir: &Path,
    storage: Option<&str>,
    size: Option<u64>,
) -> Result<(PoolConfig, bool), String> {
    if let Some(s) = db.setting(POOL_SETTING).map_err(|e| e.to_string())? {
        let cfg: PoolConfig = serde_json::from_str(&s)
            .map_err(|e| format!("recorded pool config is unreadable: {e}"))?;
        crate::recover::remember_pool(state_dir, &cfg)?;
        return Ok((cfg, false));
    }
    if let Some(cfg) = crate::recover::remembered_pool(state_dir)? {
        // the database was made anew (`berthd recover`): the pool is the one described
        let json = serde_json::to_string(&cfg).map_err(|e| e.to_string())?;
        db.set_setting(POOL_SETTING, &json)
            .map_err(|e| e.to_string())?;
        return Ok((cfg, false));
    }
    let driver = storage.and_then(DriverKind::parse);
    let size = size.unwrap_or_else(|| default_loop_size(state_dir));
    let cfg = Pool::init(
        &state_dir.join("pool"),
        driver,
        &state_dir.join("disks/default.img"),
        size,
    )
    .map_err(|e| format!("create the storage pool: {e}"))?;
    let json = serde_json::to_string(&cfg).map_err(|e| e.to_string())?;
    db.set_setting(POOL_SETTING, &json)
        .map_err(|e| e.to_string())?;
    crate::recover::remember_pool(state_dir, &cfg)?;
    Ok((cfg, true))
}

fn describe(cfg: &PoolConfig) -> String {
    match &cfg.source {
        Some(src) => format!(
            "{} pool at {} (loop file {})",
            cfg.driver.as_str(),
            cfg.path.display(),
            src.display()
        ),
        None => format!("{} pool at {}", cfg.driver.as_str(), cfg.path.display()),
    }
}

/// `berthd init`.
pub fn init_pool(opts: &InitOptions) -> Result<String, String> {
    ensure_dir(&opts.state_dir, 0o711)?;
    let db = crate::recover::open_db(&opts.state_dir, false)?;
    let (cfg, created) = ensure_pool(&db, &opts.state_dir, opts.storage.as_deref(), opts.size)?;
    if let Some(want) = opts.storage.as_deref()
        && want != cfg.driver.as_str()
    {
        return Err(format!(
            "a {} already exists; berth keeps one default pool",
            describe(&cfg)
        ));
    }
    Pool::new(cfg.clone()).mount().map_err(|e| e.to_string())?;
    Ok(if created {
        format!("created the {}", describe(&cfg))
    } else {
        format!("the {} is ready", describe(&cfg))
    })
}

/// Where [`Starting`] is served while berthd starts.
const STARTING_PATH: &str = "/org/berth/Starting";

/// An empty object the bus connection is built serving, removed once the real ones are in.
///
/// zbus starts its object server's dispatcher as a task that subscribes to incoming method
/// calls only after an AddMatch round trip; a call that arrives before then is dropped,
/// unanswered. Objects added with `object_server().at()` start that task without waiting for
/// it, so on a loaded machine an activated berthd could own its name first: the call that
/// activated it hung until berthd's idle exit and its caller got NoReply (CI saw this once).
/// A connection built with an object waits for the dispatcher to listen before it returns.
struct Starting;

#[zbus::interface(name = "org.berth.Berth1.Starting")]
impl Starting {}

async fn connect(cfg: &Config) -> Result<zbus::Connection, String> {
    let list = cfg
        .bus
        .clone()
        .or_else(|| std::env::var("DBUS_STARTER_ADDRESS").ok())
        .or_else(|| std::env::var("DBUS_SYSTEM_BUS_ADDRESS").ok())
        .unwrap_or_else(|| "unix:path=/run/dbus/system_bus_socket".into());
    let mut last = String::from("no bus address");
    for addr in list.split(';').filter(|a| !a.is_empty()) {
        let built = connection::Builder::address(addr)
            .serve_at(STARTING_PATH, Starting)
            .build()
            .await;
        match built {
            Ok(c) => return Ok(c),
            Err(e) => last = format!("connect to {addr}: {e}"),
        }
    }
    Err(last)
}

/// A berth binary that lives next to berthd or in ../libexec/berth/.
fn find_libexec(name: &str) -> Result<std::path::PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| format!("find my own binary: {e}"))?;
    let dir = me.parent().unwrap_or(Path::new("/"));
    let candidates = [dir.join(name), dir.join("../libexec/berth").join(name)];
    candidates
        .iter()
        .find(|p| p.is_file())
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .ok_or_else(|| {
            format!(
                "{name} not found (looked at {} and {})",
                candidates[0].display(),
                candidates[1].display()
            )
        })
}

/// `<state>/berthd.lock`, opened (root-only) and not locked yet.
pub fn open_lock(state_dir: &Path) -> Result<(std::fs::File, std::path::PathBuf), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = state_dir.join("berthd.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    // files under the state directory are root's alone, also one an older berth made
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    Ok((f, path))
}

/// Tries to take the lock without waiting: false when another process holds it.
pub fn try_lock(f: &std::fs::File, path: &Path) -> Result<bool, String> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(false);
    }
    Err(format!("lock {}: {e}", path.display()))
}

/// Takes `<state>/berthd.lock`, waiting for a berthd that is still draining after an idle
/// exit (the bus may activate its successor the moment it released the name). Held for the
/// life of the process.
async fn lock_state(state_dir: &Path) -> Result<std::fs::File, String> {
    let (f, path) = open_lock(state_dir)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if try_lock(&f, &path)? {
            return Ok(f);
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "another berthd has held {} for 60 s",
                path.display()
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Runs the daemon until SIGTERM/SIGINT, until the bus goes away, or until it has been idle
/// for the configured time.
pub async fn run(cfg: Config, varlink_fd: Option<std::os::fd::OwnedFd>) -> Result<(), String> {
    crate::logging::init();
    ensure_dir(&cfg.state_dir, 0o711)?;
    let _lock = lock_state(&cfg.state_dir).await?;
    ensure_dir(&cfg.run_dir, 0o711)?;
    ensure_dir(&cfg.run_dir.join("containers"), 0o711)?;
    if cfg.favordynmods {
        use berth_runtime::cgroup::{Favor, favor_dynamic_changes};
        match favor_dynamic_changes(&cfg.run_dir.join(".cgroup2-favor")) {
            Ok(Favor::Already(_)) => {}
            Ok(Favor::Remounted(p)) => tracing::info!(
                "cgroups: remounted {} with favordynmods (moving a process into a cgroup no longer waits for an RCU grace period)",
                p.display()
            ),
            Ok(Favor::Mounted(_)) => tracing::info!(
                "cgroups: turned on favordynmods (moving a process into a cgroup no longer waits for an RCU grace period)"
            ),
            Err(e) => {
                tracing::warn!("cgroups: cannot turn on favordynmods, starts will be slower: {e}")
            }
        }
    }
    let t0 = std::time::Instant::now();
    let mut db = crate::recover::open_db(&cfg.state_dir, false)?;
    let (pool_cfg, created) = ensure_pool(&db, &cfg.state_dir, None, None)?;
    if created {
        tracing::info!("created the {}", describe(&pool_cfg));
    }
    let pool = Pool::new(pool_cfg.clone());
    pool.mount().map_err(|e| format!("storage pool: {e}"))?;
    db.set_layout(berth_actors::store::Layout {
        pool: pool.clone(),
        images: cfg.state_dir.join("images"),
    });
    let t_pool = t0.elapsed();
    let exe = match &cfg.monitor {
        Some(p) => p.clone(),
        None => find_libexec("berth-monitor")?,
    };
    let helper = find_libexec("berth-helper")?;
    let host = HostRuntime::new(
        HostConfig {
            state_dir: cfg.state_dir.clone(),
            run_dir: cfg.run_dir.clone(),
            exe,
            cgroup_parent: cfg.cgroup_parent.clone(),
            busybox: cfg.busybox.clone(),
            helper,
            no_idmapped_mounts: cfg.no_idmapped_mounts,
            bridge: cfg.bridge.clone(),
            units: (cfg.scopes && berth_runtime::systemd::booted()).then(|| {
                let s = Arc::new(crate::systemd::Systemd::new(
                    tokio::runtime::Handle::current(),
                ));
                s.warm();
                s as Arc<dyn berth_runtime::systemd::UnitManager>
            }),
        },
        pool,
    )
    .map_err(|e| format!("host runtime: {e}"))?;
    let host = Arc::new(host);
    let t_host = t0.elapsed();
    let probe = {
        let h = host.clone();
        berth_actors::types::StatefulProbe::new(move || h.stateful_support())
    };
    {
        // warm the answer off the start path: `criu check` takes longer than berthd's start
        let p = probe.clone();
        std::thread::spawn(move || drop(p.get()));
    }
    let info = HostInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        cgroup_version: host.cgroup_version(),
        storage_driver: pool_cfg.driver.as_str().to_string(),
        stateful: probe,
    };
    // startup's work (and the actors of every container) waits until both doors serve
    let engine = berth_actors::Engine::start_idle(db, Arc::new(SharedHost(host)), info)
        .await
        .map_err(|e| e.to_string())?;

    let t_engine = t0.elapsed();
    let conn = connect(&cfg).await?;
    let t_connect = t0.elapsed();
    let auth = Arc::new(PolkitAuthorizer::new(conn.clone()));
    let ctx = Context {
        engine: engine.clone(),
        auth,
    };
    dbus::serve(&conn, ctx.clone())
        .await
        .map_err(|e| format!("export objects: {e}"))?;
    conn.object_server()
        .remove::<Starting, _>(STARTING_PATH)
        .await
        .map_err(|e| format!("export objects: {e}"))?;
    let t_export = t0.elapsed();
    // varlink before the bus name: a failure here must not cost calls the name already drew,
    // and READY=1 (below) means both doors serve. A socket that cannot be served leaves D-Bus
    // working.
    let socket = cfg.run_dir.join(varlink::SOCKET_NAME);
    let listener = match varlink_fd {
        Some(fd) => Ok((
            std::os::unix::net::UnixListener::from(fd),
            "passed by systemd",
        )),
        None => varlink::bind(&socket).map(|l| (l, "bound")),
    };
    let varlink = match listener.and_then(|(l, how)| {
        varlink::Server::start(l, ctx.clone(), tokio::runtime::Handle::current()).map(|s| (s, how))
    }) {
        Ok((server, how)) => {
            tracing::info!("serving varlink on {} ({how})", socket.display());
            Some((server, how == "bound"))
        }
        Err(e) => {
            tracing::error!("cannot serve varlink on {}: {e}", socket.display());
            None
        }
    };
    match conn
        .request_name_with_flags(BUS_NAME, RequestNameFlags::DO_NOT_QUEUE)
        .await
    {
        Ok(zbus::fdo::RequestNameReply::PrimaryOwner)
        | Ok(zbus::fdo::RequestNameReply::AlreadyOwner) => {}
        Ok(other) => {
            return Err(format!(
                "could not own {BUS_NAME}: {other:?} (is another berthd running?)"
            ));
        }
        Err(e) => {
            return Err(format!(
                "could not own {BUS_NAME}: {e} (is another berthd running?)"
            ));
        }
    }
    tracing::info!(
        state = %cfg.state_dir.display(),
        "berthd {} serving {BUS_NAME} after {:?} (pool {t_pool:?}, host {t_host:?}, engine {t_engine:?}, bus {t_connect:?}, objects {t_export:?})",
        env!("CARGO_PKG_VERSION"),
        t0.elapsed()
    );
    engine.startup();
    // rows an older berth wrote get their backup.yaml, and a write that failed is made now:
    // off the start path (1,000 manifests take 100–150 ms), between other calls to the store
    engine.refresh_backups();
    let defined = engine.list_containers().await.map(|l| l.len()).unwrap_or(0);
    berth_interfaces::sdnotify::notify(&format!(
        "READY=1\nSTATUS=Serving {BUS_NAME} and {}: {defined} containers defined",
        socket.display()
    ));
    if !cfg.no_autostart {
        tokio::spawn(crate::boot::autostart_after_boot(
            engine.clone(),
            cfg.state_dir.join("boot-id"),
        ));
    }
    tokio::spawn(count_messages(conn.clone(), engine.activity().clone()));
    if let Some(period) = berth_interfaces::sdnotify::watchdog_period() {
        tokio::spawn(watchdog(engine.clone(), period));
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| e.to_string())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| e.to_string())?;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    let why = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => continue,
            _ = conn.closed() => {
                tracing::warn!("the bus connection closed");
                break "the bus connection closed";
            }
            _ = tick.tick() => {
                if let Some(limit) = cfg.idle_timeout
                    && engine.idle_for().is_some_and(|idle| idle >= limit)
                {
                    break "idle";
                }
            }
        }
    };
    tracing::info!("shutting down ({why}); containers keep running under their monitors");
    berth_interfaces::sdnotify::notify(&format!("STOPPING=1\nSTATUS=Shutting down ({why})"));
    // New calls now go to the bus, which activates a successor; it waits for our lock.
    let _ = conn.release_name(BUS_NAME).await;
    // Varlink: a connection berthd accepted is served until its client is done with it (up
    // to CONNECTIONS_DRAIN): closed earlier, a call that had started went unanswered (CI saw
    // an exec that arrived as berthd idled out end with "berthd closed the connection").
    // A socket berthd bound dies with it, and with it what the kernel had queued and berthd
    // not yet accepted: its path goes first, so that a new client finds none and activates a
    // successor (which waits for our lock), while the server accepts and answers what reached
    // it. A socket systemd passed stays open in systemd, and its backlog waits for the next
    // berthd: the server stops accepting at once.
    if let Some((v, bound)) = varlink {
        if bound {
            if let Err(e) = std::fs::remove_file(&socket) {
                tracing::warn!("remove {}: {e}", socket.display());
            }
            if !v.accept_queued(CONNECTIONS_DRAIN).await {
                tracing::warn!("the varlink socket's queue did not empty");
            }
        } else {
            v.stop_accepting();
        }
        drain_connections(&engine).await;
        let _ = tokio::task::spawn_blocking(move || v.stop()).await;
    }
    drain(&engine).await;
    engine.shutdown().await;
    Ok(())
}

/// How long an idle exit waits for the varlink connections open at its start (a Monitor
/// stream, say) before it closes them.
const CONNECTIONS_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits until no varlink connection is open (each holds the activity), or for
/// [`CONNECTIONS_DRAIN`].
async fn drain_connections(engine: &berth_actors::Engine) {
    let deadline = tokio::time::Instant::now() + CONNECTIONS_DRAIN;
    while engine.activity().idle_for().is_none() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("closing the varlink connections still open");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits until the calls that reached us before the name was released are answered: nothing
/// in flight and no message for 200 ms.
async fn drain(engine: &berth_actors::Engine) {
    let quiet = std::time::Duration::from_millis(200);
    loop {
        match engine.activity().idle_for() {
            Some(idle) if idle >= quiet && engine.idle_for().is_some() => return,
            _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}

/// Every message that reaches berthd (a method call, a property read, an introspection)
/// counts as activity for the idle exit.
async fn count_messages(conn: zbus::Connection, activity: berth_actors::activity::Activity) {
    use futures_util::StreamExt;
    let mut stream = zbus::MessageStream::from(&conn);
    while let Some(m) = stream.next().await {
        if let Ok(m) = m
            && m.message_type() == zbus::message::Type::MethodCall
        {
            activity.touch();
        }
    }
}

/// Pings systemd's watchdog while the Manager answers: a wedged actor system stops the
/// pings and systemd restarts berthd (containers keep running under their monitors).
async fn watchdog(engine: berth_actors::Engine, period: std::time::Duration) {
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        match tokio::time::timeout(period, engine.ping()).await {
            Ok(Ok(())) => berth_interfaces::sdnotify::notify("WATCHDOG=1"),
            Ok(Err(e)) => tracing::error!("watchdog: the manager does not answer: {e}"),
            Err(_) => tracing::error!("watchdog: the manager did not answer within {period:?}"),
        }
    }
}
