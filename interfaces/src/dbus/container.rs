//! `org.berth.Berth1.Container` at `/org/berth/Berth1/container/<label>`. The object holds only
//! the container's name; every property and method asks the engine. The free functions are
//! shared with the Manager's by-name twins (`StartContainer`…).

use super::Context;
use super::options::{ExecForm, Options, StartForm, StopForm};
use crate::auth;
use crate::errors::Result;
use berth_actors::types::{StartOptions, StopOptions};
use std::collections::HashMap;
use zbus::message::Header;
use zbus::object_server::ObjectServer;
use zbus::{OwnedVariant, interface};

/// The interface name (a contract).
pub const INTERFACE: &str = "org.berth.Berth1.Container";

/// One container's object.
#[derive(Debug)]
pub struct ContainerIface {
    ctx: Context,
    name: String,
}

impl ContainerIface {
    /// The object for container `name`.
    pub fn new(ctx: Context, name: String) -> Self {
        ContainerIface { ctx, name }
    }

    async fn info(&self) -> Result<berth_actors::types::ContainerInfo> {
        Ok(self.ctx.engine.container(&self.name).await?)
    }
}

/// Start (shared by `Container.Start` and `Manager.StartContainer`). A start that restores
/// the state of a stateful stop runs CRIU: it needs the `checkpoint` action. Which start it is
/// is looked up to authorize, and the container's actor checks it is still so when it starts
/// (a stateful stop in between is answered `Busy`, not run as a restore).
pub(crate) async fn start(
    ctx: &Context,
    name: &str,
    options: HashMap<String, OwnedVariant>,
    h: &Header<'_>,
) -> Result<()> {
    let StartOptions { stateless, .. } = StartForm::from_dbus(options)?.check();
    let restores = !stateless && ctx.engine.container(name).await?.stateful;
    let action = if restores {
        auth::CHECKPOINT
    } else {
        auth::MANAGE_CONTAINERS
    };
    let uid = ctx
        .authorize(h, action, &[("container", name), ("verb", "start")])
        .await?;
    Ok(ctx
        .engine
        .start_container_authorized(name, StartOptions { stateless, uid }, restores)
        .await?)
}

fn stop_options(
    method: &'static str,
    options: HashMap<String, OwnedVariant>,
    stateful_allowed: bool,
) -> Result<StopOptions> {
    StopForm::from_dbus(method, options, stateful_allowed)?.check()
}

/// Stop (shared). A stateful stop runs CRIU: it needs the `checkpoint` action.
pub(crate) async fn stop(
    ctx: &Context,
    name: &str,
    options: HashMap<String, OwnedVariant>,
    h: &Header<'_>,
) -> Result<()> {
    let mut opts = stop_options("Stop", options, true)?;
    let action = if opts.stateful {
        auth::CHECKPOINT
    } else {
        auth::MANAGE_CONTAINERS
    };
    opts.uid = ctx
        .authorize(h, action, &[("container", name), ("verb", "stop")])
        .await?;
    Ok(ctx.engine.stop_container(name, opts).await?)
}

/// Delete (shared); removes the object before replying.
pub(crate) async fn delete(
    ctx: &Context,
    name: &str,
    options: HashMap<String, OwnedVariant>,
    h: &Header<'_>,
    server: &ObjectServer,
) -> Result<()> {
    let o = Options::parse("Delete", options, &[("force", "b")])?;
    let force = o.bool("force")?.unwrap_or(false);
    ctx.authorize(
        h,
        auth::DELETE_CONTAINER,
        &[("container", name), ("verb", "delete")],
    )
    .await?;
    ctx.engine.delete_container(name, force).await?;
    match server
        .remove::<ContainerIface, _>(crate::paths::container(name).as_str())
        .await
    {
        Ok(_) | Err(zbus::Error::InterfaceNotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[interface(name = "org.berth.Berth1.Container")]
impl ContainerIface {
    /// Starts init; returns once it runs.
    async fn start(
        &self,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] h: Header<'_>,
    ) -> Result<()> {
        start(&self.ctx, &self.name, options, &h).await
    }

    /// Stops the container: the init's power-off signal, then SIGKILL after `timeout` seconds
    /// (default 30, or `boot.stop_timeout`); `force` kills at once. Returns once it stopped.
    async fn stop(
        &self,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] h: Header<'_>,
    ) -> Result<()> {
        stop(&self.ctx, &self.name, options, &h).await
    }

    /// Stops (as `Stop`) and starts again.
    async fn restart(
        &self,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] h: Header<'_>,
    ) -> Result<()> {
        let opts = stop_options("Restart", options, false)?;
        self.ctx
            .authorize(
                &h,
                auth::MANAGE_CONTAINERS,
                &[("container", &self.name), ("verb", "restart")],
            )
            .await?;
        Ok(self.ctx.engine.restart_container(&self.name, opts).await?)
    }

    /// Deletes the container (`force` kills it first if it runs).
    async fn delete(
        &self,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] h: Header<'_>,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<()> {
        delete(&self.ctx, &self.name, options, &h, server).await
    }

    /// Runs `argv` in the container and returns its exit status (128 + signal when killed).
    /// Options: `stdin`/`stdout`/`stderr` (h; default /dev/null), `env` (a{ss}), `cwd` (s),
    /// `uid`/`gid` (u), `tty` (b: run on a new terminal of `rows` × `columns`, relayed to the
    /// passed fds).
    #[zbus(out_args("exit_status"))]
    async fn exec(
        &self,
        argv: Vec<String>,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] h: Header<'_>,
    ) -> Result<i32> {
        let req = ExecForm::from_dbus(argv, options)?.check()?;
        self.ctx
            .authorize(
                &h,
                auth::EXEC,
                &[("container", &self.name), ("verb", "exec")],
            )
            .await?;
        Ok(self.ctx.engine.exec(&self.name, req).await?)
    }

    /// Makes a new image of this (stopped) container and returns its object. Options:
    /// `aliases` (as), `properties` (a{ss}, over those of the container's image). The image is a
    /// zstd-compressed unified tarball. Runs as an Operation.
    #[zbus(out_args("image"))]
    async fn publish(
        &self,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] h: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<zbus::OwnedObjectPath> {
        let opts = super::manager::image_options("Publish", options, &[])?.0;
        let uid = self
            .ctx
            .authorize(
                &h,
                auth::MANAGE_IMAGES,
                &[("container", &self.name), ("verb", "publish")],
            )
            .await?;
        let (img, _) = self.ctx.engine.publish(&self.name, None, opts, uid).await?;
        super::export_image(conn, &self.ctx, &img.fingerprint).await?;
        Ok(super::path(crate::paths::image(&img.fingerprint)))
    }

    /// Takes a snapshot and returns its object. An empty name picks `snapN`. Option
    /// `stateful` (b): checkpoint the running processes too (CRIU; the container keeps
    /// running, frozen for the dump). Runs as an Operation when stateful.
    #[zbus(out_args("snapshot"))]
    async fn create_snapshot(
        &self,
        name: String,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] h: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<zbus::OwnedObjectPath> {
        let o = Options::parse("CreateSnapshot", options, &[("stateful", "b")])?;
        let stateful = o.bool("stateful")?.unwrap_or(false);
        let action = if stateful {
            auth::CHECKPOINT
        } else {
            auth::SNAPSHOT
        };
        let uid = self
            .ctx
            .authorize(
                &h,
                action,
                &[
                    ("container", &self.name),
                    ("snapshot", &name),
                    ("verb", "snapshot"),
                ],
            )
            .await?;
        let rec = self
            .ctx
            .engine
            .create_snapshot(&self.name, &name, stateful, uid)
            .await?;
        super::export_snapshot(conn, &self.ctx, &rec.container, &rec.name).await?;
        Ok(super::path(crate::paths::snapshot(
            &rec.container,
            &rec.name,
        )))
    }

    /// Sets the `set` keys and removes the `unset` ones, in any state; changes that apply
    /// live (`limits.disk`) are applied before it returns, the others at the next start.
    /// Nothing changes when any key or value is refused (`InvalidConfig`) or the pool cannot
    /// honour it (`NotSupported`: `limits.disk` on a dir pool).
    async fn set_config(
        &self,
        set: HashMap<String, String>,
        unset: Vec<String>,
        #[zbus(header)] h: Header<'_>,
    ) -> Result<()> {
        self.ctx
            .authorize(
                &h,
                auth::SET_CONFIG,
                &[("container", &self.name), ("verb", "set-config")],
            )
            .await?;
        Ok(self
            .ctx
            .engine
            .set_config(&self.name, set.into_iter().collect(), unset)
            .await?)
    }

    /// The container's config and expanded config with every value, `environment.*` ones
    /// included (the `Config` properties, readable by anyone, show those as `(hidden)`): as
    /// secret as what runs in the container, so authorized as exec. No options yet.
    #[zbus(out_args("config", "expanded_config"))]
    async fn get_config(
        &self,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] h: Header<'_>,
    ) -> Result<(HashMap<String, String>, HashMap<String, String>)> {
        Options::parse("GetConfig", options, &[])?;
        self.ctx
            .authorize(
                &h,
                auth::EXEC,
                &[("container", &self.name), ("verb", "get-config")],
            )
            .await?;
        let info = self.info().await?;
        Ok((
            info.config.into_iter().collect(),
            info.expanded_config.into_iter().collect(),
        ))
    }

    /// The log of the container's last checkpoint or restore (CRIU's, at most its last
    /// 256 KiB) and where it is kept; empty when there was none.
    #[zbus(out_args("path", "log"))]
    async fn get_checkpoint_log(&self, #[zbus(header)] h: Header<'_>) -> Result<(String, String)> {
        self.ctx
            .authorize(
                &h,
                auth::CHECKPOINT,
                &[("container", &self.name), ("verb", "read-log")],
            )
            .await?;
        Ok(self
            .ctx
            .engine
            .criu_log(&self.name)
            .await?
            .unwrap_or_default())
    }

    /// The container's snapshots, oldest first: name, object, creation time (µs), stateful,
    /// size in bytes.
    #[zbus(out_args("snapshots"))]
    async fn list_snapshots(&self) -> Result<Vec<(String, zbus::OwnedObjectPath, u64, bool, u64)>> {
        let list = self.ctx.engine.list_snapshots(&self.name).await?;
        Ok(list
            .into_iter()
            .map(|s| {
                let p = super::path(crate::paths::snapshot(&s.container, &s.name));
                (s.name, p, s.created_at_us, s.stateful, s.size)
            })
            .collect())
    }

    /// Name.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn name(&self) -> String {
        self.name.clone()
    }

    /// Stopped, Starting, Running, Stopping, Frozen or Error.
    #[zbus(property)]
    async fn status(&self) -> Result<String> {
        Ok(self.info().await?.status.as_str().to_string())
    }

    /// init's pid in the host's pid namespace (0 when stopped).
    #[zbus(property)]
    async fn init_pid(&self) -> Result<u32> {
        Ok(self.info().await?.init_pid)
    }

    /// Fingerprint of the image it was made from.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn image(&self) -> Result<String> {
        Ok(self.info().await?.image)
    }

    /// Creation time, µs since the epoch.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn created_at(&self) -> Result<u64> {
        Ok(self.info().await?.created_at_us)
    }

    /// Deleted when it stops.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn ephemeral(&self) -> Result<bool> {
        Ok(self.info().await?.ephemeral)
    }

    /// Applied profiles (only `default` exists so far, and it is never changed).
    #[zbus(property(emits_changed_signal = "const"))]
    async fn profiles(&self) -> Result<Vec<String>> {
        Ok(self.info().await?.profiles)
    }

    /// Local config; `environment.*` values read `(hidden)` (GetConfig has them).
    #[zbus(property)]
    async fn config(&self) -> Result<HashMap<String, String>> {
        Ok(redact(self.info().await?.config))
    }

    /// Config with profiles applied; `environment.*` values read `(hidden)`.
    #[zbus(property)]
    async fn expanded_config(&self) -> Result<HashMap<String, String>> {
        Ok(redact(self.info().await?.expanded_config))
    }

    /// Saved running state exists (after a stateful stop).
    #[zbus(property)]
    async fn stateful(&self) -> Result<bool> {
        Ok(self.info().await?.stateful)
    }

    /// Architecture.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn architecture(&self) -> Result<String> {
        Ok(self.info().await?.architecture)
    }
}

/// What anyone may read of a config: `environment.*` values (passwords, tokens) are hidden.
pub(crate) fn redact(
    config: std::collections::BTreeMap<String, String>,
) -> HashMap<String, String> {
    config
        .into_iter()
        .map(|(k, v)| {
            if k.starts_with("environment.") {
                (k, HIDDEN.to_string())
            } else {
                (k, v)
            }
        })
        .collect()
}

/// What a hidden value reads as.
pub const HIDDEN: &str = "(hidden)";
