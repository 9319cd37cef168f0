//! The CLI over varlink (`berth --varlink …`, or `BERTH_TRANSPORT=varlink`): the same verbs and
//! the same output as over D-Bus, as calls of `org.berth.Berth` on berthd's socket
//! (`/run/berth/org.berth.Berth`; `BERTH_VARLINK_ADDRESS` names another, `unix:PATH` or PATH).
//! fds (exec's stdio, an imported or exported image) travel with their call (SCM_RIGHTS).

use crate::images::{AliasCmd, ImageCmd};
use crate::snapshots::SnapshotCmd;
use crate::{
    AdminCmd, Cmd, ConfigCmd, CreateArgs, Extra, Fail, Format, InfoView, R, StopArgs, fmt_time,
};
use berth_interfaces::paths;
use berth_interfaces::wire::{ContainerEntry, ImageEntry};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The socket berthd serves (a contract: docs/api.md).
const DEFAULT_SOCKET: &str = "/run/berth/org.berth.Berth";
const IFACE: &str = "org.berth.Berth";

/// An error reply: its short name (`NoSuchContainer`) and message.
#[derive(Debug)]
pub(crate) struct Remote {
    name: String,
    message: String,
}

impl From<Remote> for Fail {
    fn from(e: Remote) -> Self {
        Fail(
            if e.message.is_empty() {
                e.name
            } else {
                format!("{} ({})", e.message, e.name)
            },
            1,
        )
    }
}

/// A call's outcome: a reply's parameters, an error reply, or a failure to talk at all.
type Called = Result<Result<Value, Remote>, Fail>;

/// One connection to berthd's socket; calls on it are answered in order.
struct Client {
    stream: UnixStream,
    /// Bytes read past the last reply.
    buf: Vec<u8>,
}

fn socket_path() -> PathBuf {
    match std::env::var("BERTH_VARLINK_ADDRESS") {
        Ok(a) if !a.is_empty() => PathBuf::from(a.strip_prefix("unix:").unwrap_or(&a)),
        _ => PathBuf::from(DEFAULT_SOCKET),
    }
}

/// Asks the system bus to start berthd (its D-Bus activation), for hosts where no unit owns
/// the socket while berthd is not running. `Ok(false)`: systemd refused, the host shuts down.
async fn activate() -> R<bool> {
    let conn = zbus::Connection::system()
        .await
        .map_err(|e| Fail(format!("berthd is not running, and the system bus: {e}"), 1))?;
    let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
    let name = berth_interfaces::wire::BUS_NAME
        .try_into()
        .map_err(|e| Fail(format!("bad bus name: {e}"), 1))?;
    match dbus.start_service_by_name(name, 0).await {
        Ok(_) => Ok(true),
        Err(e) => {
            // systemd's refusal is a name zbus does not know: an fdo::Error::ZBus holding a
            // MethodError, which the conversion unwraps
            let e = zbus::Error::from(e);
            if crate::unit::refused_for_shutdown(&e) {
                return Ok(false);
            }
            Err(Fail(
                format!("berthd is not running and could not be started ({e})"),
                1,
            ))
        }
    }
}

impl Client {
    async fn connect() -> R<Client> {
        Client::connect_unless_shutting_down()
            .await?
            .ok_or_else(|| {
                Fail(
                    "berthd is not running and cannot be started: the host shuts down".into(),
                    1,
                )
            })
    }

    /// A connection, or `None` when berthd is not running and the host shuts down.
    async fn connect_unless_shutting_down() -> R<Option<Client>> {
        let path = socket_path();
        let first = UnixStream::connect(&path);
        let stream = match first {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                if !activate().await? {
                    return Ok(None);
                }
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    match UnixStream::connect(&path) {
                        Ok(s) => break s,
                        Err(e) if Instant::now() > deadline => {
                            return Err(Fail(
                                format!("cannot connect to {}: {e}", path.display()),
                                1,
                            ));
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }
            Err(e) => {
                return Err(Fail(
                    format!("cannot connect to {}: {e}", path.display()),
                    1,
                ));
            }
        };
        Ok(Some(Client {
            stream,
            buf: Vec::new(),
        }))
    }

    /// Sends a call of `method` with `fds` attached.
    fn send(&mut self, method: &str, params: Value, more: bool, fds: &[BorrowedFd<'_>]) -> R<()> {
        let mut msg = json!({ "method": format!("{IFACE}.{method}"), "parameters": params });
        if more {
            msg["more"] = true.into();
        }
        let mut bytes = serde_json::to_vec(&msg).map_err(|e| Fail(e.to_string(), 1))?;
        bytes.push(0);
        let io = |e: std::io::Error| Fail(format!("cannot talk to berthd: {e}"), 1);
        if fds.is_empty() {
            return self.stream.write_all(&bytes).map_err(io);
        }
        // the fds ride on the message's first byte; the rest follows as a stream
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&raw)];
        let iov = [std::io::IoSlice::new(&bytes)];
        let n = nix::sys::socket::sendmsg::<()>(
            self.stream.as_raw_fd(),
            &iov,
            &cmsg,
            nix::sys::socket::MsgFlags::empty(),
            None,
        )
        .map_err(|e| io(e.into()))?;
        self.stream.write_all(&bytes[n..]).map_err(io)
    }

    /// The next reply: its parameters (or its error) and whether more follow.
    fn reply(&mut self) -> R<(Result<Value, Remote>, bool)> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == 0) {
                let msg: Vec<u8> = self.buf.drain(..=i).collect();
                let v: Value = serde_json::from_slice(&msg[..i])
                    .map_err(|e| Fail(format!("berthd sent a bad reply: {e}"), 1))?;
                let continues = v["continues"].as_bool().unwrap_or(false);
                if let Some(name) = v["error"].as_str() {
                    let short = name.rsplit('.').next().unwrap_or(name).to_string();
                    let message = v["parameters"]["message"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| {
                            // the org.varlink.service errors name what is wrong
                            v["parameters"]
                                .as_object()
                                .map(|o| {
                                    o.iter()
                                        .map(|(k, x)| format!("{k}: {x}"))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                })
                                .unwrap_or_default()
                        });
                    return Ok((
                        Err(Remote {
                            name: short,
                            message,
                        }),
                        false,
                    ));
                }
                return Ok((Ok(v["parameters"].clone()), continues));
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|e| Fail(format!("cannot talk to berthd: {e}"), 1))?;
            if n == 0 {
                return Err(Fail("berthd closed the connection".into(), 1));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn call_raw(&mut self, method: &str, params: Value, fds: &[BorrowedFd<'_>]) -> Called {
        self.send(method, params, false, fds)?;
        Ok(self.reply()?.0)
    }

    fn call(&mut self, method: &str, params: Value) -> R<Value> {
        Ok(self.call_raw(method, params, &[])??)
    }

    /// A call that changes something: polkit may ask for a password, as over D-Bus.
    fn change(&mut self, method: &str, mut params: Value) -> R<Value> {
        params["allowInteractiveAuthentication"] = true.into();
        self.call(method, params)
    }
}

/// The transport `BERTH_TRANSPORT` asks for: Ok(true) for varlink.
pub(crate) fn from_env() -> R<bool> {
    match std::env::var("BERTH_TRANSPORT").as_deref() {
        Err(_) | Ok("") | Ok("dbus") => Ok(false),
        Ok("varlink") => Ok(true),
        Ok(other) => Err(Fail(
            format!("BERTH_TRANSPORT={other:?}: expected \"dbus\" or \"varlink\""),
            2,
        )),
    }
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn dict(v: &Value) -> Vec<(String, String)> {
    let mut d: Vec<(String, String)> = v
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, x)| (k.clone(), x.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    d.sort();
    d
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// `berth … ` over varlink.
pub(crate) async fn run(cmd: Cmd) -> R<u8> {
    let cmd = match cmd {
        Cmd::Supervise { name } => {
            return crate::unit::supervise(&mut Supervised(name.clone()), &name).await;
        }
        other => other,
    };
    let mut c = Client::connect().await?;
    match cmd {
        Cmd::Launch(a) => create(&mut c, a, true),
        Cmd::Init(a) => create(&mut c, a, false),
        Cmd::Start {
            names,
            if_needed,
            stateless,
        } => {
            for n in &names {
                let mut p = json!({ "name": n });
                if stateless {
                    p["stateless"] = true.into();
                }
                tolerate(
                    c.call_raw("StartContainer", interactive(p), &[])?,
                    if_needed,
                )?;
            }
            Ok(0)
        }
        Cmd::Stop {
            stop,
            if_needed,
            stateful,
        } => {
            for n in &stop.names {
                let mut p = stop_params(n, &stop);
                if stateful {
                    p["stateful"] = true.into();
                }
                tolerate(c.call_raw("StopContainer", interactive(p), &[])?, if_needed)?;
            }
            Ok(0)
        }
        Cmd::Restart { stop } => {
            for n in &stop.names {
                c.change("RestartContainer", stop_params(n, &stop))?;
            }
            Ok(0)
        }
        Cmd::Delete { names, force } => {
            for n in &names {
                let mut p = json!({ "name": n });
                if force {
                    p["force"] = true.into();
                }
                c.change("DeleteContainer", p)?;
            }
            Ok(0)
        }
        // run above, without a connection held for its whole life
        Cmd::Supervise { name } => Err(Fail(
            format!("internal: supervise {name} reached the shared connection"),
            2,
        )),
        Cmd::Admin(AdminCmd::Recover) => {
            let r = c.change("Recover", json!({}))?;
            let list = |k: &str| -> Vec<String> {
                r[k].as_array()
                    .map(|a| a.iter().map(s).collect())
                    .unwrap_or_default()
            };
            crate::print_recovered(&list("found"), &list("recovered"), &list("skipped"));
            Ok(0)
        }
        Cmd::Config(ConfigCmd::Set { name, items }) => {
            let set = match items.as_slice() {
                [k, v] if !k.contains('=') => HashMap::from([(k.clone(), v.clone())]),
                _ => crate::parse_kv(&items, "config")?,
            };
            c.change("SetContainerConfig", json!({ "name": name, "set": set }))?;
            Ok(0)
        }
        Cmd::Config(ConfigCmd::Unset { name, keys }) => {
            c.change("SetContainerConfig", json!({ "name": name, "unset": keys }))?;
            Ok(0)
        }
        Cmd::List { format } => list(&mut c, format),
        Cmd::Info {
            name,
            format,
            show_log,
        } => {
            if show_log {
                let r = c.change("GetCheckpointLog", json!({ "name": name }))?;
                if s(&r["path"]).is_empty() {
                    println!("No checkpoint or restore of {name} has run yet.");
                } else {
                    println!("Log: {}\n\n{}", s(&r["path"]), s(&r["log"]));
                }
                return Ok(0);
            }
            info(&mut c, &name, format)
        }
        Cmd::Snapshot(cmd) => snapshot(&mut c, cmd),
        Cmd::Copy {
            source,
            name,
            config,
            ephemeral,
            start,
        } => {
            let config = crate::parse_kv(&config, "config")?;
            let mut p = json!({
                "source": source,
                "name": name.clone().unwrap_or_default(),
                "pickName": name.is_none(),
                "ephemeral": ephemeral,
                "start": start,
            });
            if !config.is_empty() {
                p["config"] = json!(config);
            }
            let r = c.change("CopyContainer", p)?;
            println!("Copied {source} to {}", s(&r["container"]["name"]));
            Ok(0)
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
            let o = crate::ExecOptions::parse(env, user, cwd, tty, no_tty)?;
            exec(&mut c, &name, o, command)
        }
        Cmd::Image(cmd) => image(&mut c, cmd).await,
        Cmd::Publish {
            name,
            alias,
            property,
        } => {
            let (cname, snap) = match name.split_once('/') {
                Some((a, b)) => (a.to_string(), Some(b.to_string())),
                None => (name.clone(), None),
            };
            let props = crate::parse_kv(&property, "property")?;
            let mut p = json!({ "container": cname, "snapshot": snap });
            if !alias.is_empty() {
                p["aliases"] = json!(alias);
            }
            if !props.is_empty() {
                p["properties"] = json!(props);
            }
            let r = c.change("PublishContainer", p)?;
            print_image(&r["image"]);
            Ok(0)
        }
    }
}

fn interactive(mut p: Value) -> Value {
    p["allowInteractiveAuthentication"] = true.into();
    p
}

/// A container `berth supervise` follows over varlink. Each call is a connection of its own:
/// an open connection counts as activity and would keep berthd from exiting when idle.
struct Supervised(String);

impl crate::unit::Berthd for Supervised {
    async fn state(&mut self) -> R<(String, u32)> {
        let r = Client::connect()
            .await?
            .call("GetContainer", json!({ "name": self.0 }))?;
        let k = &r["container"];
        Ok((s(&k["status"]), k["initPid"].as_u64().unwrap_or(0) as u32))
    }

    async fn start(&mut self) -> R<()> {
        let p = interactive(json!({ "name": self.0 }));
        let mut c = Client::connect().await?;
        // off the runtime's one thread: supervise must see a SIGTERM while the start runs
        let r = tokio::task::spawn_blocking(move || c.call_raw("StartContainer", p, &[]))
            .await
            .map_err(|e| Fail(format!("start: {e}"), 1))??;
        tolerate(r, true)
    }

    async fn stop(&mut self) -> R<bool> {
        let Some(mut c) = Client::connect_unless_shutting_down().await? else {
            return Ok(false);
        };
        let p = interactive(json!({ "name": self.0 }));
        match c.call_raw("StopContainer", p, &[]) {
            Ok(r) => tolerate(r, true).map(|()| true),
            // no reply at all: at host shutdown systemd still holds berthd.socket but starts
            // nothing for it any more, and closes the connection
            Err(_) if crate::unit::host_shuts_down().await => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// With `--if-needed`, "already in that state" (InvalidState) is success.
fn tolerate(r: Result<Value, Remote>, if_needed: bool) -> R<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if if_needed && e.name == "InvalidState" => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn stop_params(name: &str, a: &StopArgs) -> Value {
    let mut p = json!({ "name": name });
    if a.force {
        p["force"] = true.into();
    }
    if let Some(t) = a.timeout {
        p["timeout"] = t.into();
    }
    p
}

fn create(c: &mut Client, a: CreateArgs, start: bool) -> R<u8> {
    let config = crate::parse_kv(&a.config, "config")?;
    let pick = a.name.is_none();
    let name = a.name.unwrap_or_default();
    let mut p = json!({ "name": name, "image": a.image, "pickName": pick });
    if !config.is_empty() {
        p["config"] = json!(config);
    }
    if !a.profile.is_empty() {
        p["profiles"] = json!(a.profile);
    }
    if a.ephemeral {
        p["ephemeral"] = true.into();
    }
    if !pick {
        println!("Creating {name}");
    }
    let r = c.change("CreateContainer", p)?;
    let actual = s(&r["container"]["name"]);
    if pick {
        println!("Creating {actual}");
    }
    if start {
        println!("Starting {actual}");
        c.change("StartContainer", json!({ "name": actual }))?;
    }
    Ok(0)
}

/// ListImages as D-Bus lists them, for the shared output.
fn list_images(c: &mut Client) -> R<Vec<ImageEntry>> {
    Ok(c.call("ListImages", json!({}))?["images"]
        .as_array()
        .map(|a| a.iter().map(image_entry).collect())
        .unwrap_or_default())
}

fn image_entry(i: &Value) -> ImageEntry {
    let fp = s(&i["fingerprint"]);
    ImageEntry {
        path: object_path(paths::image(&fp)),
        aliases: strs(&i["aliases"]),
        description: s(&i["description"]),
        fingerprint: fp,
    }
}

/// The D-Bus object path of an object (the JSON output shows it, as over D-Bus).
fn object_path(p: String) -> zbus::OwnedObjectPath {
    zbus::ObjectPath::try_from(p)
        .map(Into::into)
        .unwrap_or_else(|_| zbus::ObjectPath::from_static_str_unchecked("/").into())
}

fn list(c: &mut Client, format: Format) -> R<u8> {
    let list: Vec<ContainerEntry> = c.call("ListContainers", json!({}))?["containers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| ContainerEntry {
                    name: s(&e["name"]),
                    status: s(&e["status"]),
                    image: s(&e["image"]),
                    path: object_path(paths::container(&s(&e["name"]))),
                })
                .collect()
        })
        .unwrap_or_default();
    let images = list_images(c)?;
    // init's pid and the address (in the config) of each
    let mut extras = HashMap::new();
    for e in &list {
        let Ok(v) = c.call_raw("GetContainer", json!({ "name": e.name }), &[])? else {
            continue;
        };
        let k = &v["container"];
        let init_pid = k["initPid"].as_u64().unwrap_or(0) as u32;
        let ipv4 = s(&k["config"]["volatile.eth0.ipv4"]);
        extras.insert(e.path.to_string(), Extra { init_pid, ipv4 });
    }
    crate::print_list(&list, &images, &extras, format);
    Ok(0)
}

fn info(c: &mut Client, name: &str, format: Format) -> R<u8> {
    let k = c.call("GetContainer", json!({ "name": name }))?["container"].clone();
    let images = list_images(c)?;
    // environment.* values for those allowed to exec; `(hidden)` for the others
    let config = match c.call_raw("GetContainerConfig", json!({ "name": name }), &[])? {
        Ok(v) => dict(&v["config"]),
        Err(e) if e.name == "NotAuthorized" || e.name == "InteractiveAuthorizationRequired" => {
            dict(&k["config"])
        }
        Err(e) => return Err(e.into()),
    };
    let v = InfoView {
        status: s(&k["status"]),
        pid: k["initPid"].as_u64().unwrap_or(0) as u32,
        image: s(&k["image"]),
        created: k["createdAt"].as_u64().unwrap_or(0),
        eph: k["ephemeral"].as_bool().unwrap_or(false),
        profiles: strs(&k["profiles"]),
        config,
        arch: s(&k["architecture"]),
    };
    crate::print_info(name, v, &images, format);
    Ok(0)
}

fn exec(c: &mut Client, name: &str, o: crate::ExecOptions, command: Vec<String>) -> R<u8> {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let tty = o.wants_tty(stdin.is_terminal() && stdout.is_terminal());
    let mut p = json!({
        "name": name, "argv": command, "stdin": 0, "stdout": 1, "stderr": 2,
        "allowInteractiveAuthentication": true,
    });
    if !o.env.is_empty() {
        p["env"] = json!(o.env);
    }
    if let Some(d) = &o.cwd {
        p["cwd"] = d.clone().into();
    }
    if let Some(u) = o.uid {
        p["uid"] = u.into();
    }
    if let Some(g) = o.gid {
        p["gid"] = g.into();
    }
    let _raw = if tty {
        let (rows, cols) = crate::term::size().unwrap_or((24, 80));
        p["tty"] = true.into();
        p["rows"] = rows.into();
        p["columns"] = cols.into();
        crate::term::RawMode::enter()
    } else {
        None
    };
    let fds = [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()];
    let r = c.call_raw("Exec", p, &fds)??;
    Ok(r["exitStatus"].as_i64().unwrap_or(1).clamp(0, 255) as u8)
}

fn snapshot(c: &mut Client, cmd: SnapshotCmd) -> R<u8> {
    match cmd {
        SnapshotCmd::Create {
            name,
            snapshot,
            stateful,
        } => {
            let r = c.change(
                "CreateSnapshot",
                json!({ "container": name, "name": snapshot.unwrap_or_default(), "stateful": stateful }),
            )?;
            println!(
                "Snapshot {}/{}{}",
                name,
                s(&r["snapshot"]["name"]),
                if stateful { " (stateful)" } else { "" }
            );
        }
        SnapshotCmd::List { name, format } => {
            let r = c.call("ListSnapshots", json!({ "container": name }))?;
            let list: Vec<_> = r["snapshots"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| {
                            let n = s(&x["name"]);
                            let path = object_path(paths::snapshot(&name, &n));
                            let created = x["createdAt"].as_u64().unwrap_or(0);
                            let stateful = x["stateful"].as_bool().unwrap_or(false);
                            (n, path, created, stateful, x["size"].as_u64().unwrap_or(0))
                        })
                        .collect()
                })
                .unwrap_or_default();
            crate::snapshots::print_snapshots(&list, format);
        }
        SnapshotCmd::Restore {
            name,
            snapshot,
            stateful,
            stateless,
        } => {
            let mut p = json!({ "container": name, "name": snapshot });
            if stateful {
                p["stateful"] = true.into();
            }
            if stateless {
                p["stateful"] = false.into();
            }
            c.change("RestoreSnapshot", p)?;
        }
        SnapshotCmd::Delete { name, snapshot } => {
            c.change(
                "DeleteSnapshot",
                json!({ "container": name, "name": snapshot }),
            )?;
        }
        SnapshotCmd::Rename {
            name,
            snapshot,
            new_name,
        } => {
            c.change(
                "RenameSnapshot",
                json!({ "container": name, "name": snapshot, "newName": new_name }),
            )?;
        }
    }
    Ok(0)
}

fn print_image(img: &Value) {
    println!(
        "Image {} ({})",
        s(&img["fingerprint"]),
        strs(&img["aliases"]).join(", ")
    );
}

async fn image(c: &mut Client, cmd: ImageCmd) -> R<u8> {
    match cmd {
        ImageCmd::List { filters, format } => {
            let raw = c.call("ListImages", json!({}))?["images"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let props = raw
                .iter()
                .map(|i| {
                    (
                        s(&i["fingerprint"]),
                        dict(&i["properties"]).into_iter().collect(),
                    )
                })
                .collect();
            let images = raw.iter().map(image_entry).collect();
            crate::images::print_images(images, &filters, &props, format);
        }
        ImageCmd::Info { reference } => {
            let i = c.call("GetImage", json!({ "reference": reference }))?["image"].clone();
            println!("Fingerprint: {}", s(&i["fingerprint"]));
            println!("Aliases: {}", strs(&i["aliases"]).join(", "));
            println!("Architecture: {}", s(&i["architecture"]));
            println!(
                "Type: {}",
                if i["split"].as_bool().unwrap_or(false) {
                    "split"
                } else {
                    "unified"
                }
            );
            println!("Size: {} bytes", i["size"].as_u64().unwrap_or(0));
            println!(
                "Created: {}",
                fmt_time(i["createdAt"].as_u64().unwrap_or(0))
            );
            println!(
                "Uploaded: {}",
                fmt_time(i["uploadedAt"].as_u64().unwrap_or(0))
            );
            println!("Properties:");
            for (k, v) in dict(&i["properties"]) {
                println!("  {k}: {v}");
            }
        }
        ImageCmd::Import {
            file,
            rootfs,
            alias,
            property,
        } => {
            let archive = crate::images::open(&file)?;
            let root = rootfs.as_deref().map(crate::images::open).transpose()?;
            let props = crate::parse_kv(&property, "property")?;
            let mut p = json!({ "archive": 0, "allowInteractiveAuthentication": true });
            if !alias.is_empty() {
                p["aliases"] = json!(alias);
            }
            if !props.is_empty() {
                p["properties"] = json!(props);
            }
            let mut fds = vec![archive.as_fd()];
            if let Some(r) = &root {
                p["rootfs"] = 1.into();
                fds.push(r.as_fd());
            }
            let r = c.call_raw("ImportImage", p, &fds)??;
            print_image(&r["image"]);
        }
        ImageCmd::Export {
            reference,
            dir,
            force,
        } => {
            let img = c.call("GetImage", json!({ "reference": reference }))?["image"].clone();
            let fp = s(&img["fingerprint"]);
            let split = img["split"].as_bool().unwrap_or(false);
            return crate::images::export_into(&fp, split, dir, force, async |main, rootfs| {
                let mut p = interactive(json!({ "reference": fp, "fd": 0 }));
                let mut fds = vec![main.as_fd()];
                if let Some(r) = rootfs {
                    p["rootfs"] = 1.into();
                    fds.push(r.as_fd());
                }
                c.call_raw("ExportImage", p, &fds)??;
                Ok(())
            })
            .await;
        }
        ImageCmd::Build { recipe, alias } => {
            let mut p = json!({ "recipe": recipe });
            if !alias.is_empty() {
                p["aliases"] = json!(alias);
            }
            let r = c.change("BuildImage", p)?;
            print_image(&r["image"]);
        }
        ImageCmd::Delete { references } => {
            for r in references {
                c.change("DeleteImage", json!({ "reference": r }))?;
            }
        }
        ImageCmd::Alias(AliasCmd::Create { alias, reference }) => {
            c.change(
                "AddImageAlias",
                json!({ "reference": reference, "alias": alias }),
            )?;
        }
        ImageCmd::Alias(AliasCmd::Delete { alias }) => {
            c.change(
                "RemoveImageAlias",
                json!({ "reference": alias, "alias": alias }),
            )?;
        }
        ImageCmd::Alias(AliasCmd::Rename { from, to }) => {
            c.change("RenameImageAlias", json!({ "alias": from, "newAlias": to }))?;
        }
        ImageCmd::Alias(AliasCmd::List) => crate::images::print_aliases(&list_images(c)?),
        ImageCmd::SetProperty {
            reference,
            key,
            value,
        } => {
            crate::images::refuse_empty_property(&value)?;
            c.change(
                "SetImageProperties",
                json!({ "reference": reference, "properties": { key: value } }),
            )?;
        }
        ImageCmd::UnsetProperty { reference, key } => {
            c.change(
                "SetImageProperties",
                json!({ "reference": reference, "properties": { key: "" } }),
            )?;
        }
    }
    Ok(0)
}
