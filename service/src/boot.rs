//! Host boot and host shutdown.
//!
//! After a host boot berthd starts the containers with `boot.autostart=true`, highest
//! `boot.autostart.priority` first, waiting `boot.autostart.delay` after each. At host
//! shutdown `berthd shutdown` (run by berth-shutdown.service's ExecStop, while berthd still
//! serves) stops the running containers the other way round: lowest priority first, those of
//! one priority together, each within its `boot.host_shutdown_timeout`.

use berth_actors::config::{autostart_priority, parse_bool, seconds};
use berth_interfaces::client::{ContainerProxy, ManagerProxy};
use std::collections::HashMap;
use std::time::Duration;
use zbus::Variant;

/// What a graceful stop at host shutdown waits for when the container does not say.
const DEFAULT_HOST_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// After a host boot (the kernel's boot id differs from the one berthd last recorded in
/// `marker`), starts every stopped container with `boot.autostart=true`, in priority order. The
/// id is recorded afterwards, so a berthd that restarts later during the same boot starts
/// nothing. Failures are logged: one container that cannot start does not keep the others.
pub async fn autostart_after_boot(engine: berth_actors::Engine, marker: std::path::PathBuf) {
    let Ok(boot) =
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string())
    else {
        return;
    };
    if std::fs::read_to_string(&marker).is_ok_and(|s| s.trim() == boot) {
        return;
    }
    // delays between starts are not idleness
    let _busy = engine.activity().hold();
    let containers = match engine.list_containers().await {
        Ok(c) => c,
        Err(e) => return tracing::error!("autostart: list containers: {e}"),
    };
    let mut wanted = Vec::new();
    for c in containers
        .into_iter()
        .filter(|c| c.status == berth_actors::types::Status::Stopped)
    {
        if let Ok(info) = engine.container(&c.name).await
            && info
                .config
                .get("boot.autostart")
                .and_then(|v| parse_bool(v))
                == Some(true)
        {
            wanted.push((
                autostart_priority(&info.config),
                c.name,
                seconds(&info.config, "boot.autostart.delay"),
            ));
        }
    }
    wanted.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    for (priority, name, delay) in wanted {
        match engine.start_container(&name, Default::default()).await {
            // not `priority`: in the journal that would be PRIORITY, the entry's level (0 is
            // an emergency, which journald sends to every terminal)
            Ok(()) => {
                tracing::info!(container = %name, autostart_priority = priority, "started at boot (boot.autostart)")
            }
            Err(e) => tracing::error!(container = %name, "boot.autostart: {e}"),
        }
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
    }
    let tmp = marker.with_extension("tmp");
    // files under the state directory are root's alone
    let write = || {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::remove_file(&tmp);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?
            .write_all(format!("{boot}\n").as_bytes())?;
        std::fs::rename(&tmp, &marker)
    };
    if let Err(e) = write() {
        tracing::error!("record the boot id in {}: {e}", marker.display());
    }
}

/// `berthd shutdown`: stops every running container over the bus at `bus` (the system bus
/// when `None`), lowest `boot.autostart.priority` first; prints what it did. Fails when a
/// container could not be stopped.
///
/// When no berthd serves, it runs one of its own (this binary with `daemon_args` and
/// `--no-autostart`) for the while: berthd exits when idle, and once the host shuts down
/// the bus activates nothing (systemd refuses with `org.freedesktop.systemd1.ShuttingDown`
/// as soon as dbus.service is to stop), which left the containers to be killed at the end of
/// the shutdown, ungracefully and in no order.
pub async fn shutdown(bus: Option<&str>, daemon_args: &[String]) -> Result<(), String> {
    let conn = match bus {
        Some(a) => zbus::connection::Builder::address(a).build().await,
        None => zbus::Connection::system().await,
    }
    .map_err(|e| format!("cannot reach the bus: {e}"))?;
    let m = ManagerProxy::new(&conn).await.map_err(|e| e.to_string())?;
    let mut own = None;
    let listed = if served(&conn).await {
        m.list_containers().await
    } else {
        Err(zbus::Error::Failure("no berthd serves".into()))
    };
    let listed = match listed {
        Ok(l) => l,
        // none served, or the one that did exited idle before our call came
        Err(e) if !served(&conn).await => {
            own = Some(
                OwnDaemon::start(&conn, daemon_args)
                    .await
                    .map_err(|s| format!("{e}; {s}"))?,
            );
            m.list_containers()
                .await
                .map_err(|e| format!("list containers: {e}"))?
        }
        Err(e) => return Err(format!("list containers: {e}")),
    };
    let r = stop_all(&conn, listed).await;
    if let Some(d) = own {
        d.stop().await;
    }
    r
}

/// Whether a berthd owns the bus name.
async fn served(conn: &zbus::Connection) -> bool {
    let Ok(dbus) = zbus::fdo::DBusProxy::new(conn).await else {
        return false;
    };
    let Ok(name) = zbus::names::BusName::try_from(berth_interfaces::wire::BUS_NAME) else {
        return false;
    };
    dbus.name_has_owner(name).await.unwrap_or(false)
}

/// A berthd that `berthd shutdown` runs when none serves.
struct OwnDaemon(tokio::process::Child);

impl OwnDaemon {
    /// Starts it and waits until it owns the bus name.
    async fn start(conn: &zbus::Connection, args: &[String]) -> Result<OwnDaemon, String> {
        let exe = std::env::current_exe().map_err(|e| format!("find berthd: {e}"))?;
        eprintln!(
            "berthd shutdown: no berthd serves: running {} for the while",
            exe.display()
        );
        let mut child = tokio::process::Command::new(&exe)
            .args(args)
            .arg("--no-autostart")
            // our unit's notifications are not its to send
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("run {}: {e}", exe.display()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            if served(conn).await {
                return Ok(OwnDaemon(child));
            }
            if let Ok(Some(st)) = child.try_wait() {
                return Err(format!("the berthd it ran exited ({st})"));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err("the berthd it ran did not serve within 90 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then a wait for it to exit (killed after 30 s).
    async fn stop(mut self) {
        if let Some(pid) = self.0.id() {
            // SAFETY: kill of our own child, which we have not reaped yet.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        if tokio::time::timeout(Duration::from_secs(30), self.0.wait())
            .await
            .is_err()
        {
            let _ = self.0.kill().await;
        }
    }
}

/// Stops the running ones of `listed`, lowest priority first, those of one priority together.
async fn stop_all(
    conn: &zbus::Connection,
    listed: Vec<berth_interfaces::wire::ContainerEntry>,
) -> Result<(), String> {
    let mut running = Vec::new();
    for c in listed {
        if c.status != "Running" {
            continue;
        }
        let proxy = ContainerProxy::builder(conn)
            .path(c.path.clone())
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let config = proxy
            .config()
            .await
            .unwrap_or_default()
            .into_iter()
            .collect();
        let timeout =
            seconds(&config, "boot.host_shutdown_timeout").unwrap_or(DEFAULT_HOST_SHUTDOWN_TIMEOUT);
        running.push((autostart_priority(&config), c.name, proxy, timeout));
    }
    running.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let mut failed = Vec::new();
    let mut rest = running.as_slice();
    while let Some(first) = rest.first() {
        let n = rest.iter().take_while(|c| c.0 == first.0).count();
        let (group, later) = rest.split_at(n);
        rest = later;
        let stops = group
            .iter()
            .map(|(priority, name, proxy, timeout)| async move {
                let secs = u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX);
                let opts = HashMap::from([("timeout", Variant::from(secs))]);
                let r = proxy.stop(&opts).await;
                (priority, name, r)
            });
        for (priority, name, r) in futures_util::future::join_all(stops).await {
            match r {
                Ok(()) => println!("stopped {name} (priority {priority})"),
                Err(e) => {
                    eprintln!("berthd shutdown: stop {name}: {e}");
                    failed.push(name.clone());
                }
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("could not stop {}", failed.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_order_starts_and_stops() {
        let cfg = |p: &str| {
            std::collections::BTreeMap::from([(
                "boot.autostart.priority".to_string(),
                p.to_string(),
            )])
        };
        assert_eq!(autostart_priority(&cfg("10")), 10);
        assert_eq!(autostart_priority(&cfg("-3")), -3);
        assert_eq!(autostart_priority(&Default::default()), 0);
        assert_eq!(
            seconds(
                &std::collections::BTreeMap::from([(
                    "boot.autostart.delay".to_string(),
                    "2".to_string()
                )]),
                "boot.autostart.delay"
            ),
            Some(Duration::from_secs(2))
        );
    }
}
