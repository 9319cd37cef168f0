//! Wiring: state directories, the storage pool, the host runtime, the engine, the bus
//! connection (objects exported before the name is requested), readiness and shutdown.

use crate::config::{Config, InitOptions};
use berth_actors::host::{HostConfig, HostRuntime, SharedHost};
use berth_actors::store::Db;
use berth_actors::types::HostInfo;
use berth_interfaces::auth::PolkitAuthorizer;
use berth_interfaces::dbus::{self, Context};
use berth_interfaces::wire::BUS_NAME;
use berth_runtime::storage::{DriverKind, Pool, PoolConfig};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use zbus::connection;
use zbus::fdo::RequestNameFlags;

const POOL_SETTING: &str = "pool.default";

fn ensure_dir(p: &Path, mode: u32) -> Result<(), String> {
    std::fs::create_dir_all(p).map_err(|e| format!("create {}: {e}", p.display()))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("chmod {}: {e}", p.display()))
}

/// LXD's default loop size: 20% of the free space, between 5 and 30 GiB.
fn default_loop_size(dir: &Path) -> u64 {
    let free = berth_runtime::sys::cpath(dir)
        .ok()
        .and_then(|c| {
            // SAFETY: statvfs is plain data; c is a valid C string.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: valid pointers.
            (unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
        })
        .unwrap_or(0);
    (free / 5).clamp(5 << 30, 30 << 30)
}

/// Creates (or finds) the default pool and records it. Idempotent.
fn ensure_pool(db: &Db, state_dir: &Path, storage: Option<&str>, size: Option<u64>) -> Result<(PoolConfig, bool), String> {
    if let Some(s) = db.setting(POOL_SETTING).map_err(|e| e.to_string())? {
        let cfg: PoolConfig = serde_json::from_str(&s).map_err(|e| format!("recorded pool config is unreadable: {e}"))?;
        return Ok((cfg, false));
    }
    let driver = storage.and_then(DriverKind::parse);
    let size = size.unwrap_or_else(|| default_loop_size(state_dir));
    let cfg = Pool::init(&state_dir.join("pool"), driver, &state_dir.join("disks/default.img"), size)
        .map_err(|e| format!("create the storage pool: {e}"))?;
    let json = serde_json::to_string(&cfg).map_err(|e| e.to_string())?;
    db.set_setting(POOL_SETTING, &json).map_err(|e| e.to_string())?;
    Ok((cfg, true))
}

fn describe(cfg: &PoolConfig) -> String {
    match &cfg.source {
        Some(src) => format!("{} pool at {} (loop file {})", cfg.driver.as_str(), cfg.path.display(), src.display()),
        None => format!("{} pool at {}", cfg.driver.as_str(), cfg.path.display()),
    }
}

/// `berthd init`.
pub fn init_pool(opts: &InitOptions) -> Result<String, String> {
    ensure_dir(&opts.state_dir, 0o711)?;
    let db = Db::open(&opts.state_dir.join("berth.db")).map_err(|e| e.to_string())?;
    let (cfg, created) = ensure_pool(&db, &opts.state_dir, opts.storage.as_deref(), opts.size)?;
    if let Some(want) = opts.storage.as_deref()
        && want != cfg.driver.as_str()
    {
        return Err(format!("a {} already exists; berth keeps one default pool", describe(&cfg)));
    }
    Pool::new(cfg.clone()).mount().map_err(|e| e.to_string())?;
    Ok(if created { format!("created the {}", describe(&cfg)) } else { format!("the {} is ready", describe(&cfg)) })
}

async fn connect(cfg: &Config) -> Result<zbus::Connection, String> {
    let list = cfg
        .bus
        .clone()
        .or_else(|| std::env::var("DBUS_STARTER_ADDRESS").ok())
        .or_else(|| std::env::var("DBUS_SYSTEM_BUS_ADDRESS").ok())
        .unwrap_or_else(|| "unix:path=/run/dbus/system_bus_socket".into());
    let mut last = String::from("no bus address");
    for addr in list.split(';').filter(|a| !a.is_empty()) {
        match connection::Builder::address(addr).build().await {
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
        .ok_or_else(|| format!("{name} not found (looked at {} and {})", candidates[0].display(), candidates[1].display()))
}

/// Runs the daemon until SIGTERM/SIGINT or until the bus goes away.
pub async fn run(cfg: Config) -> Result<(), String> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    ensure_dir(&cfg.state_dir, 0o711)?;
    ensure_dir(&cfg.run_dir, 0o711)?;
    ensure_dir(&cfg.run_dir.join("containers"), 0o711)?;
    if !cfg.no_favordynmods {
        use berth_runtime::cgroup::{Favor, favor_dynamic_changes};
        match favor_dynamic_changes(&cfg.run_dir.join(".cgroup2-favor")) {
            Ok(Favor::Already(_)) => {}
            Ok(Favor::Remounted(p)) => tracing::info!("cgroups: remounted {} with favordynmods (moving a process into a cgroup no longer waits for an RCU grace period)", p.display()),
            Ok(Favor::Mounted(_)) => tracing::info!("cgroups: turned on favordynmods (moving a process into a cgroup no longer waits for an RCU grace period)"),
            Err(e) => tracing::warn!("cgroups: cannot turn on favordynmods, starts will be slower: {e}"),
        }
    }
    let db = Db::open(&cfg.state_dir.join("berth.db")).map_err(|e| e.to_string())?;
    let (pool_cfg, created) = ensure_pool(&db, &cfg.state_dir, None, None)?;
    if created {
        tracing::info!("created the {}", describe(&pool_cfg));
    }
    let pool = Pool::new(pool_cfg.clone());
    pool.mount().map_err(|e| format!("storage pool: {e}"))?;
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
        },
        pool,
    )
    .map_err(|e| format!("host runtime: {e}"))?;
    let host = Arc::new(host);
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
    let engine = berth_actors::Engine::start(db, Arc::new(SharedHost(host)), info)
        .await
        .map_err(|e| e.to_string())?;

    let conn = connect(&cfg).await?;
    let auth = Arc::new(PolkitAuthorizer::new(conn.clone()));
    dbus::serve(&conn, Context { engine: engine.clone(), auth }).await.map_err(|e| format!("export objects: {e}"))?;
    match conn.request_name_with_flags(BUS_NAME, RequestNameFlags::DO_NOT_QUEUE).await {
        Ok(zbus::fdo::RequestNameReply::PrimaryOwner) | Ok(zbus::fdo::RequestNameReply::AlreadyOwner) => {}
        Ok(other) => return Err(format!("could not own {BUS_NAME}: {other:?} (is another berthd running?)")),
        Err(e) => return Err(format!("could not own {BUS_NAME}: {e} (is another berthd running?)")),
    }
    tracing::info!(state = %cfg.state_dir.display(), "berthd {} serving {BUS_NAME}", env!("CARGO_PKG_VERSION"));
    crate::notify::notify("READY=1");
    tokio::spawn(autostart_after_boot(engine.clone(), cfg.state_dir.join("boot-id")));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => continue,
            _ = conn.closed() => {
                tracing::warn!("the bus connection closed");
                break;
            }
        }
    }
    tracing::info!("shutting down; containers keep running under their monitors");
    crate::notify::notify("STOPPING=1");
    let _ = conn.release_name(BUS_NAME).await;
    engine.shutdown().await;
    Ok(())
}

/// After a host boot (the kernel's boot id differs from the one berthd last recorded in
/// `marker`), starts every stopped container with `boot.autostart=true`, as LXD does. The id
/// is recorded afterwards, so a berthd that restarts later during the same boot starts
/// nothing. Failures are logged: one container that cannot start does not keep the others.
async fn autostart_after_boot(engine: berth_actors::Engine, marker: std::path::PathBuf) {
    let Ok(boot) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()) else { return };
    if std::fs::read_to_string(&marker).is_ok_and(|s| s.trim() == boot) {
        return;
    }
    let containers = match engine.list_containers().await {
        Ok(c) => c,
        Err(e) => return tracing::error!("autostart: list containers: {e}"),
    };
    for c in containers.into_iter().filter(|c| c.status == berth_actors::types::Status::Stopped) {
        let wanted = match engine.container(&c.name).await {
            Ok(info) => info.config.get("boot.autostart").and_then(|v| berth_actors::config::parse_bool(v)) == Some(true),
            Err(_) => false,
        };
        if wanted {
            match engine.start_container(&c.name, Default::default()).await {
                Ok(()) => tracing::info!(container = %c.name, "started at boot (boot.autostart)"),
                Err(e) => tracing::error!(container = %c.name, "boot.autostart: {e}"),
            }
        }
    }
    let tmp = marker.with_extension("tmp");
    if let Err(e) = std::fs::write(&tmp, format!("{boot}\n")).and_then(|()| std::fs::rename(&tmp, &marker)) {
        tracing::error!("record the boot id in {}: {e}", marker.display());
    }
}
