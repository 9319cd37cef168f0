//! `org.berth.Berth`'s methods, each the twin of a D-Bus method: authorize (same polkit action
//! and details), one engine call, the shared error table. Parameters are camelCase JSON,
//! optional ones nullable; a parameter that does not decode is
//! `org.varlink.service.InvalidParameter`.

use super::json::{container, image, operation, snapshot};
use super::streams::{list, make_image, monitor, transfer_image};
use super::{Item, WireError};
use crate::auth::{self, Caller};
use crate::dbus::Context;
use crate::dbus::options::{CreateForm, ExecForm, StartForm, StopForm};
use crate::errors::{Error, Name};
use berth_actors::types::StartOptions;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use tokio::sync::mpsc;
use zlink::Reply;

macro_rules! methods {
    ($($m:ident),* $(,)?) => {
        /// Every method of `org.berth.Berth`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Method { $($m),* }

        impl Method {
            /// Every method.
            pub const ALL: &'static [Method] = &[$(Method::$m),*];

            /// Its name in the interface.
            pub fn name(self) -> &'static str {
                match self { $(Method::$m => stringify!($m)),* }
            }

            /// The method called `name`.
            pub fn parse(name: &str) -> Option<Method> {
                match name { $(stringify!($m) => Some(Method::$m),)* _ => None }
            }
        }
    };
}

methods!(
    GetHostInfo,
    CreateContainer,
    CopyContainer,
    GetContainer,
    ListContainers,
    StartContainer,
    StopContainer,
    RestartContainer,
    DeleteContainer,
    GetContainerConfig,
    SetContainerConfig,
    CreateSnapshot,
    ListSnapshots,
    RestoreSnapshot,
    RenameSnapshot,
    DeleteSnapshot,
    ListImages,
    GetImage,
    DeleteImage,
    AddImageAlias,
    RemoveImageAlias,
    RenameImageAlias,
    Recover,
    SetImageProperties,
    BuildImage,
    PublishContainer,
    GetCheckpointLog,
    ListOperations,
    GetOperation,
    CancelOperation,
    Monitor,
    Exec,
    ImportImage,
    ExportImage,
);

impl Method {
    /// Methods that only make sense with `more`.
    pub fn needs_more(self) -> bool {
        self == Method::Monitor
    }
}

/// Where a call's replies go: the connection's reply stream.
#[derive(Debug)]
pub struct Sink {
    pub(super) tx: mpsc::Sender<Item>,
    pub(super) more: bool,
}

impl Sink {
    /// A sink for a call that did (`more`) or did not ask for several replies.
    pub fn new(tx: mpsc::Sender<Item>, more: bool) -> Sink {
        Sink { tx, more }
    }

    /// Sends a reply; false once the client is gone.
    pub(super) async fn reply(&self, v: Value, continues: bool) -> bool {
        let r = Reply::new(Some(v)).set_continues(Some(continues));
        self.tx.send((Ok(r), vec![])).await.is_ok()
    }

    async fn error(&self, e: WireError) {
        let _ = self.tx.send((Err(e), vec![])).await;
    }
}

/// The fds that came with a call; parameters name them by their index in it.
#[derive(Debug, Default)]
pub struct Fds(Vec<OwnedFd>);

impl Fds {
    /// The fds of one message, in order.
    pub fn new(fds: Vec<OwnedFd>) -> Fds {
        Fds(fds)
    }

    /// The fd that parameter `name` gives as `index` (a copy: one fd may serve as both stdout
    /// and stderr); an index past the message's fds is InvalidParameter `name`.
    pub(super) fn get(
        &self,
        index: Option<usize>,
        name: &str,
    ) -> Result<Option<OwnedFd>, WireError> {
        let Some(i) = index else { return Ok(None) };
        let fd = self
            .0
            .get(i)
            .ok_or_else(|| WireError::invalid_parameter(name))?;
        fd.try_clone()
            .map(Some)
            .map_err(|e| Error::Fdo(zbus::fdo::Error::Failed(format!("{name}: {e}"))).into())
    }

    /// As [`Fds::get`] for a parameter that must be given.
    pub(super) fn required(&self, index: Option<usize>, name: &str) -> Result<OwnedFd, WireError> {
        self.get(index, name)?
            .ok_or_else(|| WireError::invalid_parameter(name))
    }
}

/// Runs one call to its end, replying into `sink`.
pub async fn run(ctx: Context, caller: Caller, m: Method, params: Value, fds: Fds, sink: Sink) {
    let r = match m {
        Method::ListContainers => {
            let r = ctx.engine.list_containers().await.map_err(Error::from);
            list(
                &sink,
                r.map(|l| l.iter().map(super::json::container_entry).collect()),
                "containers",
                "container",
            )
            .await
        }
        Method::ListImages => {
            let r = ctx.engine.list_images().await.map_err(Error::from);
            list(
                &sink,
                r.map(|l| l.iter().map(image).collect()),
                "images",
                "image",
            )
            .await
        }
        Method::ListSnapshots => match decode::<ByContainer>(&params) {
            Ok(p) => {
                let r = ctx
                    .engine
                    .list_snapshots(&p.container)
                    .await
                    .map_err(Error::from);
                list(
                    &sink,
                    r.map(|l| l.iter().map(snapshot).collect()),
                    "snapshots",
                    "snapshot",
                )
                .await
            }
            Err(e) => Err(e),
        },
        Method::Monitor => monitor(&ctx, &sink).await,
        Method::BuildImage | Method::PublishContainer => {
            make_image(&ctx, &caller, m, params, &sink).await
        }
        Method::ImportImage | Method::ExportImage => {
            transfer_image(&ctx, &caller, m, params, &fds, &sink).await
        }
        _ => match call(&ctx, &caller, m, params, &fds).await {
            Ok(v) => {
                sink.reply(v, false).await;
                Ok(())
            }
            Err(e) => Err(e),
        },
    };
    if let Err(e) = r {
        sink.error(e).await;
    }
}

/// Decodes a method's parameters; unknown or mistyped ones are InvalidParameter, naming it.
pub(super) fn decode<P: DeserializeOwned>(params: &Value) -> Result<P, WireError> {
    serde_json::from_value(params.clone()).map_err(|e| {
        let msg = e.to_string();
        // serde names a missing or unknown field between backticks: "missing field `name`"
        if msg.contains("field `") {
            let field = msg.split('`').nth(1).unwrap_or("parameters");
            return WireError::invalid_parameter(field);
        }
        // a mistyped one is the field without which the error changes
        let culprit = params.as_object().and_then(|obj| {
            obj.keys().find(|k| {
                let mut rest = obj.clone();
                rest.remove(*k);
                match serde_json::from_value::<P>(Value::Object(rest)) {
                    Ok(_) => true,
                    Err(e2) => e2.to_string() != msg,
                }
            })
        });
        WireError::invalid_parameter(culprit.map_or("parameters", String::as_str))
    })
}

/// The parameters every mutating method may carry besides its own.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ByName {
    name: String,
    #[serde(default)]
    force: Option<bool>,
    #[serde(default)]
    timeout: Option<u32>,
    #[serde(default)]
    stateful: Option<bool>,
    #[serde(default)]
    stateless: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)]
    allow_interactive_authentication: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ByContainer {
    container: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Create {
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    image: Option<String>,
    name: String,
    #[serde(default)]
    start: Option<bool>,
    #[serde(default)]
    profiles: Option<Vec<String>>,
    #[serde(default)]
    config: Option<BTreeMap<String, String>>,
    #[serde(default)]
    ephemeral: Option<bool>,
    #[serde(default)]
    pick_name: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)]
    allow_interactive_authentication: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SnapshotParams {
    container: String,
    name: String,
    #[serde(default)]
    stateful: Option<bool>,
    #[serde(default)]
    new_name: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    allow_interactive_authentication: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SetConfigParams {
    name: String,
    #[serde(default)]
    set: Option<BTreeMap<String, String>>,
    #[serde(default)]
    unset: Option<Vec<String>>,
    #[serde(default)]
    #[allow(dead_code)]
    allow_interactive_authentication: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ImageParams {
    #[serde(default)]
    reference: Option<String>,
    #[serde(default)]
    alias: Option<String>,
    #[serde(default)]
    new_alias: Option<String>,
    #[serde(default)]
    properties: Option<BTreeMap<String, String>>,
    #[serde(default)]
    #[allow(dead_code)]
    allow_interactive_authentication: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OperationParams {
    id: u64,
    #[serde(default)]
    #[allow(dead_code)]
    allow_interactive_authentication: Option<bool>,
}

/// The parameters of the methods that make or move an image (BuildImage, PublishContainer,
/// ImportImage, ExportImage); each refuses those it does not take. fds are indexes into the
/// call's fds.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct MakeImageParams {
    #[serde(default)]
    pub(super) recipe: Option<String>,
    #[serde(default)]
    pub(super) archive: Option<usize>,
    #[serde(default)]
    pub(super) reference: Option<String>,
    #[serde(default)]
    pub(super) fd: Option<usize>,
    #[serde(default)]
    pub(super) rootfs: Option<usize>,
    #[serde(default)]
    pub(super) container: Option<String>,
    #[serde(default)]
    pub(super) snapshot: Option<String>,
    #[serde(default)]
    pub(super) aliases: Option<Vec<String>>,
    #[serde(default)]
    pub(super) properties: Option<BTreeMap<String, String>>,
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) allow_interactive_authentication: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

/// The parameters of a call that takes nothing but may let polkit ask for a password.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InteractiveOnly {
    #[serde(default)]
    #[allow(dead_code)]
    allow_interactive_authentication: Option<bool>,
}

/// Exec's parameters: fds are indexes into the call's fds.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ExecParams {
    name: String,
    argv: Vec<String>,
    #[serde(default)]
    stdin: Option<usize>,
    #[serde(default)]
    stdout: Option<usize>,
    #[serde(default)]
    stderr: Option<usize>,
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    gid: Option<u32>,
    #[serde(default)]
    tty: Option<bool>,
    #[serde(default)]
    rows: Option<u32>,
    #[serde(default)]
    columns: Option<u32>,
    #[serde(default)]
    #[allow(dead_code)]
    allow_interactive_authentication: Option<bool>,
}

pub(super) fn required(v: Option<String>, name: &str) -> Result<String, WireError> {
    v.ok_or_else(|| WireError::invalid_parameter(name))
}

/// The single-reply methods.
async fn call(
    ctx: &Context,
    caller: &Caller,
    m: Method,
    p: Value,
    fds: &Fds,
) -> Result<Value, WireError> {
    let e = &ctx.engine;
    let authorize = |action: &'static str, details: Vec<(&'static str, String)>| async move {
        let d: Vec<(&str, &str)> = details.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ctx.authorize_caller(caller, action, &d).await
    };
    Ok(match m {
        Method::GetHostInfo => {
            decode::<NoParams>(&p)?;
            let probe = e.host().stateful.clone();
            let stateful = tokio::task::spawn_blocking(move || probe.get())
                .await
                .unwrap_or_else(|_| Err("the probe failed".into()));
            let h = e.host();
            json!({ "info": {
                "version": h.version,
                "statefulSupported": stateful.is_ok(),
                "statefulUnsupportedReason": stateful.err().unwrap_or_default(),
                "cgroupVersion": h.cgroup_version,
                "storageDriver": h.storage_driver,
            }})
        }
        Method::CreateContainer | Method::CopyContainer => {
            let p: Create = decode(&p)?;
            let form = CreateForm {
                name: p.name,
                pick_name: p.pick_name.unwrap_or(false),
                start: p.start.unwrap_or(false),
                profiles: p.profiles,
                config: p.config.unwrap_or_default().into_iter().collect(),
                ephemeral: p.ephemeral.unwrap_or(false),
            };
            form.check_name()?;
            let name = form.name.clone();
            let start = form.start;
            let info = if m == Method::CreateContainer {
                let image = required(p.image, "image")?;
                if p.source.is_some() {
                    return Err(WireError::invalid_parameter("source"));
                }
                let req = form.create(image.clone())?;
                authorize(
                    auth::CREATE_CONTAINER,
                    vec![
                        ("container", name.clone()),
                        ("image", image),
                        ("verb", "create".into()),
                    ],
                )
                .await?;
                if start {
                    authorize(
                        auth::MANAGE_CONTAINERS,
                        vec![("container", name.clone()), ("verb", "start".into())],
                    )
                    .await?;
                }
                e.create_container(req).await.map_err(Error::from)?.0
            } else {
                let source = required(p.source, "source")?;
                if p.image.is_some() {
                    return Err(WireError::invalid_parameter("image"));
                }
                let req = form.copy(&source)?;
                authorize(
                    auth::CREATE_CONTAINER,
                    vec![
                        ("container", name.clone()),
                        ("source", source.clone()),
                        ("verb", "copy".into()),
                    ],
                )
                .await?;
                // as on D-Bus: the copy holds the source's files and config, so the source
                // is authorized too
                authorize(
                    auth::CREATE_CONTAINER,
                    vec![
                        ("container", req.source.clone()),
                        ("source", source.clone()),
                        ("target", name.clone()),
                        ("verb", "copy-from".into()),
                    ],
                )
                .await?;
                if start {
                    authorize(
                        auth::MANAGE_CONTAINERS,
                        vec![("container", name.clone()), ("verb", "start".into())],
                    )
                    .await?;
                }
                e.copy_container(req).await.map_err(Error::from)?
            };
            json!({ "container": container(&info) })
        }
        Method::GetContainer => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                name: String,
            }
            let p: P = decode(&p)?;
            let info = e.container(&p.name).await.map_err(Error::from)?;
            json!({ "container": container(&info) })
        }
        Method::StartContainer => {
            let p: ByName = decode(&p)?;
            no(&[
                ("force", p.force.is_some()),
                ("timeout", p.timeout.is_some()),
                ("stateful", p.stateful.is_some()),
            ])?;
            let stateless = StartForm {
                stateless: p.stateless,
            }
            .check()
            .stateless;
            let restores = !stateless && e.container(&p.name).await.map_err(Error::from)?.stateful;
            let action = if restores {
                auth::CHECKPOINT
            } else {
                auth::MANAGE_CONTAINERS
            };
            let uid = authorize(
                action,
                vec![("container", p.name.clone()), ("verb", "start".into())],
            )
            .await?;
            e.start_container_authorized(&p.name, StartOptions { stateless, uid }, restores)
                .await
                .map_err(Error::from)?;
            json!({})
        }
        Method::StopContainer | Method::RestartContainer => {
            let p: ByName = decode(&p)?;
            no(&[("stateless", p.stateless.is_some())])?;
            let restart = m == Method::RestartContainer;
            if restart {
                no(&[("stateful", p.stateful.is_some())])?;
            }
            let mut opts = StopForm {
                force: p.force,
                timeout: p.timeout,
                stateful: p.stateful,
            }
            .check()?;
            let action = if opts.stateful {
                auth::CHECKPOINT
            } else {
                auth::MANAGE_CONTAINERS
            };
            let verb = if restart { "restart" } else { "stop" };
            opts.uid = authorize(
                action,
                vec![("container", p.name.clone()), ("verb", verb.into())],
            )
            .await?;
            if restart {
                e.restart_container(&p.name, opts).await
            } else {
                e.stop_container(&p.name, opts).await
            }
            .map_err(Error::from)?;
            json!({})
        }
        Method::DeleteContainer => {
            let p: ByName = decode(&p)?;
            no(&[
                ("timeout", p.timeout.is_some()),
                ("stateful", p.stateful.is_some()),
                ("stateless", p.stateless.is_some()),
            ])?;
            authorize(
                auth::DELETE_CONTAINER,
                vec![("container", p.name.clone()), ("verb", "delete".into())],
            )
            .await?;
            e.delete_container(&p.name, p.force.unwrap_or(false))
                .await
                .map_err(Error::from)?;
            json!({})
        }
        Method::GetContainerConfig => {
            let p: ByName = decode(&p)?;
            no(&[
                ("force", p.force.is_some()),
                ("timeout", p.timeout.is_some()),
                ("stateful", p.stateful.is_some()),
                ("stateless", p.stateless.is_some()),
            ])?;
            authorize(
                auth::EXEC,
                vec![("container", p.name.clone()), ("verb", "get-config".into())],
            )
            .await?;
            let info = e.container(&p.name).await.map_err(Error::from)?;
            json!({ "config": info.config, "expandedConfig": info.expanded_config })
        }
        Method::SetContainerConfig => {
            let p: SetConfigParams = decode(&p)?;
            authorize(
                auth::SET_CONFIG,
                vec![("container", p.name.clone()), ("verb", "set-config".into())],
            )
            .await?;
            e.set_config(
                &p.name,
                p.set.unwrap_or_default().into_iter().collect(),
                p.unset.unwrap_or_default(),
            )
            .await
            .map_err(Error::from)?;
            json!({})
        }
        Method::GetCheckpointLog => {
            let p: ByName = decode(&p)?;
            no(&[
                ("force", p.force.is_some()),
                ("timeout", p.timeout.is_some()),
                ("stateful", p.stateful.is_some()),
                ("stateless", p.stateless.is_some()),
            ])?;
            authorize(
                auth::CHECKPOINT,
                vec![("container", p.name.clone()), ("verb", "read-log".into())],
            )
            .await?;
            let (path, log) = e
                .criu_log(&p.name)
                .await
                .map_err(Error::from)?
                .unwrap_or_default();
            json!({ "path": path, "log": log })
        }
        Method::CreateSnapshot => {
            let p: SnapshotParams = decode(&p)?;
            no(&[("newName", p.new_name.is_some())])?;
            let stateful = p.stateful.unwrap_or(false);
            let action = if stateful {
                auth::CHECKPOINT
            } else {
                auth::SNAPSHOT
            };
            let uid = authorize(
                action,
                vec![
                    ("container", p.container.clone()),
                    ("snapshot", p.name.clone()),
                    ("verb", "snapshot".into()),
                ],
            )
            .await?;
            let rec = e
                .create_snapshot(&p.container, &p.name, stateful, uid)
                .await
                .map_err(Error::from)?;
            json!({ "snapshot": snapshot(&rec) })
        }
        Method::RestoreSnapshot => {
            let p: SnapshotParams = decode(&p)?;
            no(&[("newName", p.new_name.is_some())])?;
            let snap = e
                .snapshot(&p.container, &p.name)
                .await
                .map_err(Error::from)?;
            let action = if p.stateful.unwrap_or(snap.stateful) {
                auth::CHECKPOINT
            } else {
                auth::SNAPSHOT
            };
            let uid = authorize(
                action,
                vec![
                    ("container", p.container.clone()),
                    ("snapshot", p.name.clone()),
                    ("verb", "restore".into()),
                ],
            )
            .await?;
            e.restore_snapshot(&p.container, &p.name, p.stateful, uid)
                .await
                .map_err(Error::from)?;
            json!({})
        }
        Method::RenameSnapshot | Method::DeleteSnapshot => {
            let p: SnapshotParams = decode(&p)?;
            no(&[("stateful", p.stateful.is_some())])?;
            let rename = m == Method::RenameSnapshot;
            if !rename {
                no(&[("newName", p.new_name.is_some())])?;
            }
            let verb = if rename { "rename" } else { "delete" };
            authorize(
                auth::SNAPSHOT,
                vec![
                    ("container", p.container.clone()),
                    ("snapshot", p.name.clone()),
                    ("verb", verb.into()),
                ],
            )
            .await?;
            if rename {
                let to = required(p.new_name, "newName")?;
                let rec = e
                    .rename_snapshot(&p.container, &p.name, &to)
                    .await
                    .map_err(Error::from)?;
                json!({ "snapshot": snapshot(&rec) })
            } else {
                e.delete_snapshot(&p.container, &p.name)
                    .await
                    .map_err(Error::from)?;
                json!({})
            }
        }
        Method::GetImage => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct P {
                reference: String,
            }
            let p: P = decode(&p)?;
            let img = e.image(&p.reference).await.map_err(Error::from)?;
            json!({ "image": image(&img) })
        }
        Method::DeleteImage
        | Method::AddImageAlias
        | Method::RemoveImageAlias
        | Method::SetImageProperties => {
            let p: ImageParams = decode(&p)?;
            no(&[("newAlias", p.new_alias.is_some())])?;
            let reference = required(p.reference, "reference")?;
            // the D-Bus twins live on the image's object: its fingerprint is their detail
            let fp = e.image(&reference).await.map_err(Error::from)?.fingerprint;
            match m {
                Method::DeleteImage => {
                    no(&[
                        ("alias", p.alias.is_some()),
                        ("properties", p.properties.is_some()),
                    ])?;
                    authorize(
                        auth::MANAGE_IMAGES,
                        vec![("image", fp.clone()), ("verb", "delete".into())],
                    )
                    .await?;
                    e.delete_image(&fp).await.map_err(Error::from)?;
                }
                Method::AddImageAlias => {
                    no(&[("properties", p.properties.is_some())])?;
                    let alias = required(p.alias, "alias")?;
                    authorize(
                        auth::MANAGE_IMAGES,
                        vec![("image", fp.clone()), ("verb", "add-alias".into())],
                    )
                    .await?;
                    e.add_image_alias(&fp, &alias).await.map_err(Error::from)?;
                }
                Method::RemoveImageAlias => {
                    no(&[("properties", p.properties.is_some())])?;
                    let alias = required(p.alias, "alias")?;
                    authorize(
                        auth::MANAGE_IMAGES,
                        vec![("image", fp.clone()), ("verb", "remove-alias".into())],
                    )
                    .await?;
                    if !e
                        .image(&fp)
                        .await
                        .map_err(Error::from)?
                        .aliases
                        .contains(&alias)
                    {
                        return Err(Error::new(
                            Name::NoSuchImage,
                            format!("image {fp} has no alias {alias:?}"),
                        )
                        .into());
                    }
                    e.remove_image_alias(&alias).await.map_err(Error::from)?;
                }
                _ => {
                    no(&[("alias", p.alias.is_some())])?;
                    let props = p
                        .properties
                        .ok_or_else(|| WireError::invalid_parameter("properties"))?;
                    let keys: Vec<&str> = props.keys().map(String::as_str).collect();
                    authorize(
                        auth::MANAGE_IMAGES,
                        vec![
                            ("image", fp.clone()),
                            ("verb", "set-properties".into()),
                            ("keys", keys.join(",")),
                        ],
                    )
                    .await?;
                    e.set_image_properties(&fp, props.into_iter().collect())
                        .await
                        .map_err(Error::from)?;
                }
            }
            json!({})
        }
        Method::RenameImageAlias => {
            let p: ImageParams = decode(&p)?;
            no(&[
                ("reference", p.reference.is_some()),
                ("properties", p.properties.is_some()),
            ])?;
            let from = required(p.alias, "alias")?;
            let to = required(p.new_alias, "newAlias")?;
            authorize(
                auth::MANAGE_IMAGES,
                vec![("image", from.clone()), ("verb", "rename-alias".into())],
            )
            .await?;
            e.rename_image_alias(&from, &to)
                .await
                .map_err(Error::from)?;
            json!({})
        }
        Method::Recover => {
            decode::<InteractiveOnly>(&p)?;
            authorize(auth::RECOVER, vec![("verb", "recover".into())]).await?;
            let r = e.recover().await.map_err(Error::from)?;
            json!({ "found": r.found, "recovered": r.recovered, "skipped": r.skipped })
        }
        Method::ListOperations => {
            decode::<NoParams>(&p)?;
            let ops: Vec<Value> = e.operations().iter().map(|o| operation(o)).collect();
            json!({ "operations": ops })
        }
        Method::GetOperation => {
            let p: OperationParams = decode(&p)?;
            json!({ "operation": operation(&*find_operation(ctx, p.id)?) })
        }
        Method::CancelOperation => {
            let p: OperationParams = decode(&p)?;
            let op = find_operation(ctx, p.id)?;
            let id = op.id.to_string();
            let details = vec![("operation", id.clone()), ("verb", "cancel".into())];
            let uid = authorize(auth::CANCEL_OPERATION, details.clone()).await?;
            if uid != 0 && uid != op.started_by_uid {
                authorize(auth::CANCEL_OPERATION_OTHER_USER, details).await?;
            }
            if !op.cancelable {
                return Err(
                    Error::new(Name::NotSupported, "this operation cannot be cancelled").into(),
                );
            }
            op.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
            json!({})
        }
        Method::Exec => {
            let p: ExecParams = decode(&p)?;
            let req = ExecForm {
                argv: p.argv,
                env: p.env.unwrap_or_default().into_iter().collect(),
                cwd: p.cwd,
                uid: p.uid,
                gid: p.gid,
                tty: p.tty,
                rows: p.rows,
                columns: p.columns,
                stdio: [
                    fds.get(p.stdin, "stdin")?,
                    fds.get(p.stdout, "stdout")?,
                    fds.get(p.stderr, "stderr")?,
                ],
            }
            .check()?;
            authorize(
                auth::EXEC,
                vec![("container", p.name.clone()), ("verb", "exec".into())],
            )
            .await?;
            let status = e.exec(&p.name, req).await.map_err(Error::from)?;
            json!({ "exitStatus": status })
        }
        Method::ListContainers
        | Method::ListImages
        | Method::ListSnapshots
        | Method::BuildImage
        | Method::PublishContainer
        | Method::ImportImage
        | Method::ExportImage
        | Method::Monitor => unreachable!("streamed methods are run by `run`"),
    })
}

/// Refuses parameters a method shares a struct with but does not take.
pub(super) fn no(given: &[(&str, bool)]) -> Result<(), WireError> {
    match given.iter().find(|(_, g)| *g) {
        Some((name, _)) => Err(WireError::invalid_parameter(name)),
        None => Ok(()),
    }
}

fn find_operation(
    ctx: &Context,
    id: u64,
) -> Result<std::sync::Arc<berth_actors::operation::Operation>, WireError> {
    ctx.engine.operation(id).ok_or_else(|| WireError {
        error: format!("{}.NoSuchOperation", super::INTERFACE),
        parameters: Some(json!({ "message": format!("no operation {id} is in progress") })),
    })
}
