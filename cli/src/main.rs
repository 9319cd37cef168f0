//! `berth`: the command-line client of berthd, over D-Bus. lxc/incus users should feel at home:
//! `berth launch busybox c1`, `berth exec c1 -- sh`, `berth list`.

mod images;
mod progress;
mod snapshots;
mod term;
mod unit;
mod varlink;

use berth_interfaces::client::{ContainerProxy, ManagerProxy, error_parts};
use berth_interfaces::wire::{ContainerEntry, ImageEntry};
use clap::{Parser, Subcommand, ValueEnum};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use zbus::proxy::CacheProperties;
use zbus::{Connection, OwnedObjectPath, Variant};

#[derive(Parser, Debug)]
#[command(
    name = "berth",
    version,
    about = "Manage berth system containers",
    disable_help_subcommand = true
)]
struct Cli {
    /// Talk to berthd over its varlink socket instead of D-Bus (also: BERTH_TRANSPORT=varlink).
    #[arg(long, global = true)]
    varlink: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum Format {
    Table,
    Json,
}

/// `berth config …`.
#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Set keys (`KEY=VALUE`…, or `KEY VALUE`); `limits.disk` applies at once, even to a
    /// running container.
    Set {
        /// Container.
        name: String,
        /// KEY=VALUE items, or one KEY and its VALUE.
        #[arg(required = true)]
        items: Vec<String>,
    },
    /// Remove keys.
    Unset {
        /// Container.
        name: String,
        /// Keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

/// `berth admin …`.
#[derive(Subcommand, Debug)]
enum AdminCmd {
    /// Register the containers and images the storage pool holds without a database record,
    /// from their backup.yaml (as `incus admin recover`); with berthd stopped, run `berthd
    /// recover` instead.
    Recover,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a container from an image and start it.
    Launch(CreateArgs),
    /// Create a container from an image without starting it.
    Init(CreateArgs),
    /// Start containers (restoring the running state a stateful stop saved).
    Start {
        /// Containers.
        #[arg(required = true)]
        names: Vec<String>,
        /// Succeed when a container already runs (for units and scripts).
        #[arg(long)]
        if_needed: bool,
        /// Boot afresh, discarding the running state a stateful stop saved.
        #[arg(long)]
        stateless: bool,
    },
    /// Stop containers (gracefully, then kill after the timeout).
    Stop {
        #[command(flatten)]
        stop: StopArgs,
        /// Succeed when a container is already stopped (for units and scripts).
        #[arg(long)]
        if_needed: bool,
        /// Checkpoint the running processes (CRIU) and stop; the next start restores them.
        #[arg(long, conflicts_with_all = ["force", "timeout"])]
        stateful: bool,
    },
    /// Start a container and stay with it as the main process of its `berth@NAME.service`
    /// unit (used by that unit).
    #[command(hide = true)]
    Supervise {
        /// The container.
        name: String,
    },
    /// Restart containers.
    Restart {
        #[command(flatten)]
        stop: StopArgs,
    },
    /// Delete containers.
    #[command(alias = "rm")]
    Delete {
        /// Containers.
        #[arg(required = true)]
        names: Vec<String>,
        /// Stop (kill) running containers first.
        #[arg(short, long)]
        force: bool,
    },
    /// List containers.
    #[command(alias = "ls")]
    List {
        /// Output format.
        #[arg(long, short = 'f', value_enum, default_value = "table")]
        format: Format,
    },
    /// Show a container.
    Info {
        /// Container.
        name: String,
        /// Output format.
        #[arg(long, short = 'f', value_enum, default_value = "table")]
        format: Format,
        /// Show the log of the last checkpoint or restore (CRIU's).
        #[arg(long)]
        show_log: bool,
    },
    /// Manage snapshots.
    #[command(subcommand)]
    Snapshot(snapshots::SnapshotCmd),
    /// Change a container's config.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Copy a container, or one of its snapshots (SOURCE/SNAPSHOT), to a new container.
    #[command(alias = "cp")]
    Copy {
        /// The container, or container/snapshot, to copy.
        source: String,
        /// The new container's name (default: berth picks one).
        name: Option<String>,
        /// Config key=value over the source's, repeatable.
        #[arg(short, long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// Delete the copy when it stops.
        #[arg(short, long)]
        ephemeral: bool,
        /// Start the copy.
        #[arg(long)]
        start: bool,
    },
    /// Run a command in a container; its exit status becomes berth's.
    Exec {
        /// Container.
        name: String,
        /// Environment variables (KEY=VALUE), repeatable.
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// uid[:gid] inside the container (default 0).
        #[arg(long, value_name = "UID[:GID]")]
        user: Option<String>,
        /// Working directory inside the container.
        #[arg(long)]
        cwd: Option<String>,
        /// Force a terminal.
        #[arg(short = 't', long = "force-interactive", conflicts_with = "no_tty")]
        tty: bool,
        /// Never allocate a terminal.
        #[arg(short = 'T', long = "force-noninteractive")]
        no_tty: bool,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Manage images.
    #[command(subcommand)]
    Image(images::ImageCmd),
    /// Administration of the whole installation.
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Make an image of a stopped container, or of a snapshot (NAME/SNAPSHOT).
    Publish {
        /// Container, or container/snapshot.
        name: String,
        /// Alias for the new image, repeatable.
        #[arg(long)]
        alias: Vec<String>,
        /// Property KEY=VALUE for the new image, repeatable.
        #[arg(long = "property", value_name = "KEY=VALUE")]
        property: Vec<String>,
    },
}

#[derive(clap::Args, Debug)]
struct StopArgs {
    /// Containers.
    #[arg(required = true)]
    names: Vec<String>,
    /// Kill at once instead of a graceful stop.
    #[arg(short, long)]
    force: bool,
    /// Seconds to wait for a graceful stop before killing.
    #[arg(long)]
    timeout: Option<u32>,
}

#[derive(clap::Args, Debug)]
struct CreateArgs {
    /// Image alias, fingerprint or unique fingerprint prefix.
    image: String,
    /// Container name (default: berth picks one).
    name: Option<String>,
    /// Config key=value, repeatable.
    #[arg(short, long = "config", value_name = "KEY=VALUE")]
    config: Vec<String>,
    /// Profiles to apply (default: default), repeatable.
    #[arg(short, long = "profile")]
    profile: Vec<String>,
    /// Delete the container when it stops.
    #[arg(short, long)]
    ephemeral: bool,
}

/// A failure: message and exit code.
pub(crate) struct Fail(pub(crate) String, pub(crate) u8);

impl From<zbus::Error> for Fail {
    fn from(e: zbus::Error) -> Self {
        match error_parts(&e) {
            Some((name, msg))
                if name.starts_with("org.freedesktop.DBus.Error.ServiceUnknown")
                    || name.ends_with(".NameHasNoOwner") =>
            {
                Fail(
                    format!("berthd is not running and could not be started ({msg})"),
                    1,
                )
            }
            Some((name, msg)) => {
                let short = name.rsplit('.').next().unwrap_or(&name).to_string();
                Fail(
                    if msg.is_empty() {
                        short
                    } else {
                        format!("{msg} ({short})")
                    },
                    1,
                )
            }
            None => Fail(format!("cannot talk to berthd: {e}"), 1),
        }
    }
}

pub(crate) type R<T> = Result<T, Fail>;

fn main() -> ExitCode {
    // a closed stdout (`berth image info X | head -1`) ends the program quietly, as it does
    // any other command-line tool, instead of a panic in println!
    // SAFETY: setting a signal's disposition to the default before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(Fail(msg, code)) => {
            eprintln!("berth: {msg}");
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> R<u8> {
    if cli.varlink || varlink::from_env()? {
        return varlink::run(cli.cmd).await;
    }
    let conn = Connection::system()
        .await
        .map_err(|e| Fail(format!("cannot reach the system bus: {e}"), 1))?;
    let m = ManagerProxy::builder(&conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    match cli.cmd {
        Cmd::Launch(a) => create(&conn, &m, a, true).await,
        Cmd::Init(a) => create(&conn, &m, a, false).await,
        Cmd::Start {
            names,
            if_needed,
            stateless,
        } => {
            let mut o: HashMap<&str, Variant<'_>> = HashMap::new();
            if stateless {
                o.insert("stateless", true.into());
            }
            let conn2 = &conn;
            each(&conn, &m, &names, |c| {
                let o = o.clone();
                async move {
                    if c.stateful().await.unwrap_or(false) && !stateless {
                        tolerate(
                            progress::with_progress(conn2, "stateful-start", c.start(&o)).await,
                            if_needed,
                        )
                    } else {
                        tolerate(c.start(&o).await, if_needed)
                    }
                }
            })
            .await
        }
        Cmd::Stop {
            stop:
                StopArgs {
                    names,
                    force,
                    timeout,
                },
            if_needed,
            stateful,
        } => {
            let mut o = stop_opts(force, timeout);
            if stateful {
                o.insert("stateful", Variant::from(true));
            }
            let conn2 = &conn;
            each(&conn, &m, &names, |c| {
                let o = o.clone();
                async move {
                    if stateful {
                        tolerate(
                            progress::with_progress(conn2, "stateful-stop", c.stop(&o)).await,
                            if_needed,
                        )
                    } else {
                        tolerate(c.stop(&o).await, if_needed)
                    }
                }
            })
            .await
        }
        Cmd::Supervise { name } => {
            unit::supervise(&mut unit::OverDbus::new(&conn, &m, &name), &name).await
        }
        Cmd::Restart {
            stop:
                StopArgs {
                    names,
                    force,
                    timeout,
                },
        } => {
            let o = stop_opts(force, timeout);
            each(&conn, &m, &names, |c| {
                let o = o.clone();
                async move { c.restart(&o).await }
            })
            .await
        }
        Cmd::Delete { names, force } => {
            let mut o: HashMap<&str, Variant<'_>> = HashMap::new();
            if force {
                o.insert("force", true.into());
            }
            for n in &names {
                m.delete_container(n, &o).await?;
            }
            Ok(0)
        }
        Cmd::Config(ConfigCmd::Set { name, items }) => {
            let set = match items.as_slice() {
                [k, v] if !k.contains('=') => HashMap::from([(k.clone(), v.clone())]),
                _ => parse_kv(&items, "config")?,
            };
            let c = container(&conn, &m, &name).await?;
            let set: HashMap<&str, &str> =
                set.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            c.set_config(set, &[]).await?;
            Ok(0)
        }
        Cmd::Config(ConfigCmd::Unset { name, keys }) => {
            let c = container(&conn, &m, &name).await?;
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            c.set_config(HashMap::new(), &keys).await?;
            Ok(0)
        }
        Cmd::List { format } => list(&conn, &m, format).await,
        Cmd::Info {
            name,
            format,
            show_log,
        } => {
            if show_log {
                let c = container(&conn, &m, &name).await?;
                let (path, log) = c.get_checkpoint_log().await?;
                if path.is_empty() {
                    println!("No checkpoint or restore of {name} has run yet.");
                } else {
                    println!("Log: {path}\n\n{log}");
                }
                return Ok(0);
            }
            info(&conn, &m, &name, format).await
        }
        Cmd::Snapshot(cmd) => snapshots::run(&conn, &m, cmd).await,
        Cmd::Copy {
            source,
            name,
            config,
            ephemeral,
            start,
        } => {
            let config = parse_kv(&config, "config")?;
            snapshots::copy(&conn, &m, &source, name, config, ephemeral, start).await
        }
        Cmd::Exec {
            name,
            env,
            user,
            cwd,
            tty,
            no_tty,
            command,
        } => {
            let o = ExecOptions::parse(env, user, cwd, tty, no_tty)?;
            exec(&conn, &m, &name, o, command).await
        }
        Cmd::Image(cmd) => images::run(&conn, &m, cmd).await,
        Cmd::Admin(AdminCmd::Recover) => {
            let (found, recovered, skipped) = m.recover(&HashMap::new()).await?;
            print_recovered(&found, &recovered, &skipped);
            Ok(0)
        }
        Cmd::Publish {
            name,
            alias,
            property,
        } => {
            let (cname, snap) = match name.split_once('/') {
                Some((c, s)) => (c.to_string(), Some(s.to_string())),
                None => (name.clone(), None),
            };
            let c = container(&conn, &m, &cname).await?;
            let snap_path = match &snap {
                Some(s) => Some(
                    c.list_snapshots()
                        .await?
                        .into_iter()
                        .find(|x| &x.0 == s)
                        .map(|x| x.1)
                        .ok_or_else(|| Fail(format!("container {cname:?} has no snapshot named {s:?} (NoSuchSnapshot)"), 1))?,
                ),
                None => None,
            };
            let mut o: HashMap<&str, Variant<'_>> = HashMap::new();
            if !alias.is_empty() {
                o.insert("aliases", alias.into());
            }
            let props = parse_kv(&property, "property")?;
            if !props.is_empty() {
                o.insert("properties", props.into());
            }
            let path = match snap_path {
                Some(p) => {
                    let sp = berth_interfaces::client::SnapshotProxy::builder(&conn)
                        .path(p)
                        .cache_properties(CacheProperties::No)
                        .build()
                        .await?;
                    progress::with_progress(&conn, "publish", sp.publish(&o)).await?
                }
                None => progress::with_progress(&conn, "publish", c.publish(&o)).await?,
            };
            let img = images::image_at(&conn, path).await?;
            println!(
                "Image {} ({})",
                img.fingerprint().await?,
                img.aliases().await?.join(", ")
            );
            Ok(0)
        }
    }
}

/// With `--if-needed`, "already in that state" (InvalidState) is success.
pub(crate) fn tolerate(r: zbus::Result<()>, if_needed: bool) -> zbus::Result<()> {
    match r {
        Err(e)
            if if_needed
                && error_parts(&e)
                    .is_some_and(|(n, _)| n == "org.berth.Berth1.Error.InvalidState") =>
        {
            Ok(())
        }
        other => other,
    }
}

fn stop_opts(force: bool, timeout: Option<u32>) -> HashMap<&'static str, Variant<'static>> {
    let mut o = HashMap::new();
    if force {
        o.insert("force", Variant::from(true));
    }
    if let Some(t) = timeout {
        o.insert("timeout", Variant::from(t));
    }
    o
}

pub(crate) async fn container<'a>(
    conn: &'a Connection,
    m: &ManagerProxy<'_>,
    name: &str,
) -> R<ContainerProxy<'a>> {
    let path = m.get_container(name).await?;
    container_at(conn, path).await
}

async fn container_at(conn: &Connection, path: OwnedObjectPath) -> R<ContainerProxy<'_>> {
    Ok(ContainerProxy::builder(conn)
        .path(path)
        .cache_properties(CacheProperties::No)
        .build()
        .await?)
}

async fn each<'c, F, Fut>(
    conn: &'c Connection,
    m: &ManagerProxy<'_>,
    names: &[String],
    f: F,
) -> R<u8>
where
    F: Fn(ContainerProxy<'c>) -> Fut,
    Fut: std::future::Future<Output = zbus::Result<()>>,
{
    for n in names {
        let c = container(conn, m, n).await?;
        f(c).await?;
    }
    Ok(0)
}

pub(crate) fn parse_kv(items: &[String], what: &str) -> R<HashMap<String, String>> {
    items
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(Fail(format!("{what} {kv:?} is not KEY=VALUE"), 2)),
        })
        .collect()
}

async fn create(conn: &Connection, m: &ManagerProxy<'_>, a: CreateArgs, start: bool) -> R<u8> {
    let config = parse_kv(&a.config, "config")?;
    let mut o: HashMap<&str, Variant<'_>> = HashMap::new();
    if !config.is_empty() {
        o.insert("config", config.clone().into());
    }
    if !a.profile.is_empty() {
        o.insert("profiles", a.profile.clone().into());
    }
    if a.ephemeral {
        o.insert("ephemeral", true.into());
    }
    // no NAME: berth picks one (an explicitly empty NAME is an invalid name)
    let pick = a.name.is_none();
    let name = a.name.unwrap_or_default();
    if pick {
        o.insert("pick-name", true.into());
    } else {
        println!("Creating {name}");
    }
    let path = m.create_container(&name, &a.image, &o).await?;
    let c = container_at(conn, path).await?;
    let actual = c.name().await?;
    if pick {
        println!("Creating {actual}");
    }
    if start {
        println!("Starting {actual}");
        c.start(&HashMap::new()).await?;
    }
    Ok(0)
}

/// 1.5 MiB, 312 KiB, 12 B.
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub(crate) fn short_image(fp: &str, images: &[ImageEntry]) -> String {
    images
        .iter()
        .find(|i| i.fingerprint == fp)
        .and_then(|i| i.aliases.first().cloned())
        .unwrap_or_else(|| fp.chars().take(12).collect())
}

pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// What `list` shows of each container beyond ListContainers: init's pid and the address,
/// read for all containers at once from the ObjectManager (one round trip).
#[derive(Default)]
pub(crate) struct Extra {
    pub(crate) init_pid: u32,
    pub(crate) ipv4: String,
}

async fn list_extras(conn: &Connection) -> R<HashMap<String, Extra>> {
    let om = zbus::fdo::ObjectManagerProxy::builder(conn)
        .destination(berth_interfaces::wire::BUS_NAME)
        .path(berth_interfaces::paths::ROOT)
        .build()
        .await?;
    let mut out = HashMap::new();
    for (path, ifaces) in om.get_managed_objects().await.map_err(zbus::Error::from)? {
        let Some(props) = ifaces
            .iter()
            .find(|(i, _)| i.as_str() == "org.berth.Berth1.Container")
            .map(|(_, p)| p)
        else {
            continue;
        };
        let init_pid = props
            .get("InitPid")
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0);
        let ipv4 = props
            .get("Config")
            .and_then(|v| HashMap::<String, String>::try_from(v.try_clone().ok()?).ok())
            .and_then(|c| c.get("volatile.eth0.ipv4").cloned())
            .unwrap_or_default();
        out.insert(path.to_string(), Extra { init_pid, ipv4 });
    }
    Ok(out)
}

async fn list(conn: &Connection, m: &ManagerProxy<'_>, format: Format) -> R<u8> {
    let list: Vec<ContainerEntry> = m.list_containers().await?;
    let images = m.list_images().await?;
    let extras = list_extras(conn).await?;
    print_list(&list, &images, &extras, format);
    Ok(0)
}

/// `berth list`'s output (either transport): `extras` by object path.
pub(crate) fn print_list(
    list: &[ContainerEntry],
    images: &[ImageEntry],
    extras: &HashMap<String, Extra>,
    format: Format,
) {
    let none = Extra::default();
    let extra = |c: &ContainerEntry| extras.get(c.path.as_str()).unwrap_or(&none);
    match format {
        Format::Json => {
            let v: Vec<serde_json::Value> = list
                .iter()
                .map(|c| {
                    let x = extra(c);
                    serde_json::json!({
                        "name": c.name, "status": c.status, "image": c.image,
                        "image_alias": images.iter().find(|i| i.fingerprint == c.image).and_then(|i| i.aliases.first()),
                        "init_pid": x.init_pid, "ipv4": x.ipv4,
                        "path": c.path.as_str(),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|c| {
                    let x = extra(c);
                    let running = x.init_pid != 0;
                    vec![
                        c.name.clone(),
                        c.status.to_uppercase(),
                        if running {
                            x.init_pid.to_string()
                        } else {
                            "-".into()
                        },
                        if running && !x.ipv4.is_empty() {
                            x.ipv4.split('/').next().unwrap_or("").to_string()
                        } else {
                            "-".into()
                        },
                        short_image(&c.image, images),
                    ]
                })
                .collect();
            table(&["NAME", "STATUS", "PID", "IPV4", "IMAGE"], &rows);
        }
    }
}

async fn info(conn: &Connection, m: &ManagerProxy<'_>, name: &str, format: Format) -> R<u8> {
    let c = container(conn, m, name).await?;
    let images = m.list_images().await?;
    let (status, pid, image, created, eph, profiles, config, arch) = (
        c.status().await?,
        c.init_pid().await?,
        c.image().await?,
        c.created_at().await?,
        c.ephemeral().await?,
        c.profiles().await?,
        c.config().await?,
        c.architecture().await?,
    );
    // environment.* values for those allowed to exec; `(hidden)` for the others
    let config = match c.get_config(&HashMap::new()).await {
        Ok((full, _)) => full,
        Err(e)
            if error_parts(&e).is_some_and(|(n, _)| {
                n == "org.berth.Berth1.Error.NotAuthorized"
                    || n == "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"
            }) =>
        {
            config
        }
        Err(e) => return Err(e.into()),
    };
    let mut config: Vec<(String, String)> = config.into_iter().collect();
    config.sort();
    let v = InfoView {
        status,
        pid,
        image,
        created,
        eph,
        profiles,
        config,
        arch,
    };
    print_info(name, v, &images, format);
    Ok(0)
}

/// What `berth info` shows (either transport).
pub(crate) struct InfoView {
    pub(crate) status: String,
    pub(crate) pid: u32,
    pub(crate) image: String,
    pub(crate) created: u64,
    pub(crate) eph: bool,
    pub(crate) profiles: Vec<String>,
    /// Sorted.
    pub(crate) config: Vec<(String, String)>,
    pub(crate) arch: String,
}

/// `berth info`'s output.
pub(crate) fn print_info(name: &str, v: InfoView, images: &[ImageEntry], format: Format) {
    if format == Format::Json {
        let j = serde_json::json!({
            "name": name, "status": v.status, "init_pid": v.pid, "image": v.image,
            "created_at_us": v.created, "ephemeral": v.eph, "profiles": v.profiles,
            "architecture": v.arch,
            "config": v.config.iter().map(|(k, x)| (k.clone(), serde_json::Value::from(x.clone()))).collect::<serde_json::Map<_, _>>(),
        });
        println!("{}", serde_json::to_string_pretty(&j).unwrap_or_default());
        return;
    }
    println!("Name: {name}");
    println!("Status: {}", v.status.to_uppercase());
    let pid = if v.pid == 0 {
        "-".to_string()
    } else {
        v.pid.to_string()
    };
    println!("Init PID: {pid}");
    println!("Image: {} ({})", short_image(&v.image, images), v.image);
    println!("Architecture: {}", v.arch);
    println!("Created: {}", fmt_time(v.created));
    println!("Ephemeral: {}", v.eph);
    println!("Profiles: {}", v.profiles.join(", "));
    println!("Config:");
    for (k, x) in v.config {
        println!("  {k}: {x}");
    }
}

pub(crate) fn fmt_time(us: u64) -> String {
    let secs = (us / 1_000_000) as i64;
    // civil-from-days (UTC), no extra dependency
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `berth exec`'s options, checked: the same over either transport.
pub(crate) struct ExecOptions {
    pub(crate) env: HashMap<String, String>,
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
    pub(crate) cwd: Option<String>,
    force_tty: bool,
    no_tty: bool,
}

impl ExecOptions {
    fn parse(
        env: Vec<String>,
        user: Option<String>,
        cwd: Option<String>,
        force_tty: bool,
        no_tty: bool,
    ) -> R<ExecOptions> {
        let env = parse_kv(&env, "environment variable")?;
        let (uid, gid) = match user.as_deref() {
            None => (None, None),
            Some(u) => {
                let bad = || Fail(format!("--user {u:?}: expected a numeric uid[:gid]"), 2);
                let (a, b) = u.split_once(':').map_or((u, None), |(a, b)| (a, Some(b)));
                let uid: u32 = a.parse().map_err(|_| bad())?;
                let gid: Option<u32> = b.map(|g| g.parse().map_err(|_| bad())).transpose()?;
                (Some(uid), gid)
            }
        };
        Ok(ExecOptions {
            env,
            uid,
            gid,
            cwd,
            force_tty,
            no_tty,
        })
    }

    /// Whether to run on a terminal, given whether the caller's stdin and stdout are ones.
    pub(crate) fn wants_tty(&self, on_terminal: bool) -> bool {
        !self.no_tty && (self.force_tty || on_terminal)
    }
}

async fn exec(
    conn: &Connection,
    m: &ManagerProxy<'_>,
    name: &str,
    o: ExecOptions,
    command: Vec<String>,
) -> R<u8> {
    let c = container(conn, m, name).await?;
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let tty = o.wants_tty(stdin.is_terminal() && stdout.is_terminal());
    let ExecOptions {
        env, uid, gid, cwd, ..
    } = o;
    let mut o: HashMap<&str, Variant<'_>> = HashMap::new();
    o.insert("stdin", zbus::Fd::from(&stdin).into());
    o.insert("stdout", zbus::Fd::from(&stdout).into());
    o.insert("stderr", zbus::Fd::from(&stderr).into());
    if !env.is_empty() {
        o.insert("env", env.into());
    }
    if let Some(d) = cwd {
        o.insert("cwd", d.into());
    }
    if let Some(u) = uid {
        o.insert("uid", u.into());
    }
    if let Some(g) = gid {
        o.insert("gid", g.into());
    }
    let _raw = if tty {
        let (rows, cols) = term::size().unwrap_or((24, 80));
        o.insert("tty", true.into());
        o.insert("rows", u32::from(rows).into());
        o.insert("columns", u32::from(cols).into());
        term::RawMode::enter()
    } else {
        None
    };
    let argv: Vec<&str> = command.iter().map(String::as_str).collect();
    let code = c.exec(&argv, &o).await?;
    Ok(code.clamp(0, 255) as u8)
}

/// What `berth admin recover` found, brought back and left alone, one line each, then counts.
pub(crate) fn print_recovered(found: &[String], recovered: &[String], skipped: &[String]) {
    for (tag, list) in [
        ("found", found),
        ("recovered", recovered),
        ("skipped", skipped),
    ] {
        for l in list {
            println!("{tag}: {l}");
        }
    }
    println!(
        "{} found without a database record, {} recovered, {} skipped",
        found.len(),
        recovered.len(),
        skipped.len()
    );
}
