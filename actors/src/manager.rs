//! The Manager actor: root supervisor of every Container and Image actor. It owns the registry
//! of names (so creates and deletes of one name are serialized here), the image index used to
//! resolve references, the list cache that answers `List` without asking each container, the
//! startup reconciliation, and the restart policy for failed children.
//!
//! Restart policy: a Container or Image actor that fails (panics or returns an error) is
//! respawned from the database; its container keeps running meanwhile (the monitor is a
//! separate process) and the new actor finds it again. More than [`MAX_RESTARTS`] failures
//! within [`RESTART_WINDOW`] give up: the name answers `Unavailable` until berthd restarts.

use crate::container::{ContainerActor, ContainerArgs, ContainerMsg};
use crate::error::{Error, Result};
use crate::events::{Event, Events};
use crate::image::{ImageActor, ImageArgs, ImageMsg};
use crate::runtime::Runtime;
use crate::store::{Loaded, Store};
use crate::types::{
    ContainerInfo, ContainerRecord, ContainerSummary, CreateRequest, Created, ImageRecord, Pending, Status,
    now_us, validate_name,
};
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Failures tolerated per child within [`RESTART_WINDOW`].
pub const MAX_RESTARTS: usize = 5;
/// The window for [`MAX_RESTARTS`].
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// Messages of the Manager.
#[derive(Debug)]
pub enum ManagerMsg {
    /// Create a container: validate, register the name, persist it as pending, spawn its actor
    /// and have it provision (and start). Replies once it exists (and runs, if asked), or with
    /// `Identity` when the same container already exists.
    Create(Box<CreateRequest>, RpcReplyPort<Result<(ContainerInfo, Created)>>),
    /// Deliver a message to a container's actor, or fail it with `NoSuchContainer`.
    ToContainer(String, ContainerMsg),
    /// Every container, by name.
    List(RpcReplyPort<Vec<ContainerSummary>>),
    /// Every image.
    ListImages(RpcReplyPort<Vec<ImageRecord>>),
    /// Resolve an image reference (alias, fingerprint or unique prefix).
    ResolveImage(String, RpcReplyPort<Result<ImageRecord>>),
    /// Build an image from a recipe (in a task) and register it with `aliases`.
    BuildImage(String, Vec<String>, RpcReplyPort<Result<(ImageRecord, Created)>>),
    /// Delete an image by reference.
    DeleteImage(String, RpcReplyPort<Result<()>>),
    /// Internal: a child's summary changed.
    Updated(ContainerSummary),
    /// Internal: a container was deleted.
    Removed(String),
    /// Internal: a create finished (successfully or not).
    Provisioned(String),
    /// Internal: an image's record changed.
    ImageUpdated(Box<ImageRecord>),
    /// Internal: an image was deleted.
    ImageRemoved(String),
    /// Internal: a recipe finished building.
    ImageBuilt(Box<std::result::Result<crate::runtime::NewImage, Error>>, Vec<String>, RpcReplyPort<Result<(ImageRecord, Created)>>),
}

/// What the Manager starts with.
pub struct ManagerArgs {
    /// Store handle.
    pub store: Store,
    /// Host.
    pub runtime: Arc<dyn Runtime>,
    /// Events.
    pub events: Events,
}

impl std::fmt::Debug for ManagerArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerArgs").finish_non_exhaustive()
    }
}

/// The actor.
#[derive(Debug)]
pub struct ManagerActor;

enum Slot {
    Live(ActorRef<ContainerMsg>),
    /// The actor failed too often.
    GaveUp,
}

struct Child {
    slot: Slot,
    summary: ContainerSummary,
    failures: Vec<Instant>,
}

struct ImageEntry {
    actor: ActorRef<ImageMsg>,
    record: ImageRecord,
    failures: Vec<Instant>,
}

/// The Manager's state.
pub struct ManagerState {
    store: Store,
    rt: Arc<dyn Runtime>,
    events: Events,
    containers: BTreeMap<String, Child>,
    by_id: HashMap<ActorId, String>,
    images: BTreeMap<String, ImageEntry>,
    image_ids: HashMap<ActorId, String>,
    /// Names being created (registered but not provisioned yet).
    creating: HashMap<String, ()>,
}

impl std::fmt::Debug for ManagerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerState")
            .field("containers", &self.containers.len())
            .field("images", &self.images.len())
            .finish_non_exhaustive()
    }
}

#[ractor::async_trait]
impl Actor for ManagerActor {
    type Msg = ManagerMsg;
    type State = ManagerState;
    type Arguments = ManagerArgs;

    async fn pre_start(&self, me: ActorRef<ManagerMsg>, a: ManagerArgs) -> Result<ManagerState, ActorProcessingErr> {
        let mut s = ManagerState {
            store: a.store,
            rt: a.runtime,
            events: a.events,
            containers: BTreeMap::new(),
            by_id: HashMap::new(),
            images: BTreeMap::new(),
            image_ids: HashMap::new(),
            creating: HashMap::new(),
        };
        let loaded = s.store.load().await?;
        s.startup(&me, loaded).await?;
        Ok(s)
    }

    async fn handle(&self, me: ActorRef<ManagerMsg>, msg: ManagerMsg, s: &mut ManagerState) -> Result<(), ActorProcessingErr> {
        match msg {
            ManagerMsg::Create(req, reply) => s.create(&me, *req, reply).await,
            ManagerMsg::ToContainer(name, m) => match s.containers.get(&name).map(|c| &c.slot) {
                Some(Slot::Live(a)) => {
                    if let Err(ractor::MessagingErr::SendErr(m)) = a.send_message(m) {
                        m.fail(Error::Unavailable(format!("container {name:?}")));
                    }
                }
                Some(Slot::GaveUp) => m.fail(Error::Unavailable(format!(
                    "container {name:?} (its actor failed {MAX_RESTARTS} times within {} s; restart berthd)",
                    RESTART_WINDOW.as_secs()
                ))),
                None => m.fail(Error::NoSuchContainer(name)),
            },
            ManagerMsg::List(r) => drop(r.send(s.containers.values().map(|c| c.summary.clone()).collect())),
            ManagerMsg::ListImages(r) => drop(r.send(s.images.values().map(|i| i.record.clone()).collect())),
            ManagerMsg::ResolveImage(reference, r) => drop(r.send(s.resolve_image(&reference).map(|e| e.record.clone()))),
            ManagerMsg::BuildImage(recipe, aliases, reply) => {
                for a in &aliases {
                    if let Err(e) = validate_alias(a) {
                        let _ = reply.send(Err(e));
                        return Ok(());
                    }
                }
                let (rt, me) = (s.rt.clone(), me.clone());
                tokio::spawn(async move {
                    let res = rt
                        .build_image(&recipe)
                        .await
                        .map_err(|e| crate::container::map_rt(crate::error::Op::BuildImage, format!("image {recipe}"), e));
                    if let Err(ractor::MessagingErr::SendErr(ManagerMsg::ImageBuilt(_, _, reply))) =
                        me.send_message(ManagerMsg::ImageBuilt(Box::new(res), aliases, reply))
                    {
                        let _ = reply.send(Err(Error::Unavailable("the manager".into())));
                    }
                });
            }
            ManagerMsg::ImageBuilt(res, aliases, reply) => {
                let out = match *res {
                    Ok(new) => s.register_image(&me, new, aliases).await,
                    Err(e) => Err(e),
                };
                let _ = reply.send(out);
            }
            ManagerMsg::DeleteImage(reference, reply) => match s.resolve_image(&reference) {
                Ok(e) => {
                    if let Err(ractor::MessagingErr::SendErr(ImageMsg::Delete(r))) = e.actor.send_message(ImageMsg::Delete(reply)) {
                        let _ = r.send(Err(Error::Unavailable(format!("image {reference}"))));
                    }
                }
                Err(e) => drop(reply.send(Err(e))),
            },
            ManagerMsg::Updated(summary) => {
                if let Some(c) = s.containers.get_mut(&summary.name) {
                    c.summary = summary;
                }
            }
            ManagerMsg::Removed(name) => {
                s.creating.remove(&name);
                if let Some(c) = s.containers.remove(&name)
                    && let Slot::Live(a) = c.slot
                {
                    s.by_id.remove(&a.get_id());
                }
            }
            ManagerMsg::Provisioned(name) => {
                s.creating.remove(&name);
            }
            ManagerMsg::ImageUpdated(rec) => {
                if let Some(e) = s.images.get_mut(&rec.fingerprint) {
                    e.record = *rec;
                }
            }
            ManagerMsg::ImageRemoved(fp) => {
                if let Some(e) = s.images.remove(&fp) {
                    s.image_ids.remove(&e.actor.get_id());
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<ManagerMsg>,
        evt: SupervisionEvent,
        s: &mut ManagerState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => s.child_failed(&me, cell, err.to_string()).await,
            SupervisionEvent::ActorTerminated(cell, ..) => {
                // a clean stop (deleted, or failed provisioning): forget its id
                if let Some(name) = s.by_id.remove(&cell.get_id())
                    && let Some(c) = s.containers.get(&name)
                    && matches!(&c.slot, Slot::Live(a) if a.get_id() == cell.get_id())
                {
                    s.containers.remove(&name);
                }
                if let Some(fp) = s.image_ids.remove(&cell.get_id()) {
                    s.images.remove(&fp);
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(&self, me: ActorRef<ManagerMsg>, _s: &mut ManagerState) -> Result<(), ActorProcessingErr> {
        // Stop children gracefully (their post_stop cancels watch tasks); containers keep
        // running under their monitors.
        me.stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5))).await;
        Ok(())
    }
}

impl ManagerState {
    /// Finishes or undoes interrupted changes, removes orphaned files, then spawns every
    /// container and image actor (each reconciles its own state).
    async fn startup(&mut self, me: &ActorRef<ManagerMsg>, loaded: Loaded) -> Result<()> {
        for rec in &loaded.images {
            self.spawn_image(me, rec.clone()).await?;
        }
        let mut live = Vec::new();
        for rec in loaded.containers {
            match rec.pending {
                Pending::Create | Pending::Delete => {
                    tracing::info!(container = %rec.name, pending = rec.pending.as_str(), "finishing interrupted change");
                    if let Err(e) = self.rt.deprovision(&rec.name).await {
                        tracing::error!(container = %rec.name, "cleanup failed, will retry next start: {e}");
                        continue;
                    }
                    self.store.delete_container(&rec.name).await?;
                }
                Pending::None => live.push(rec),
            }
        }
        for rec in live {
            self.spawn_container(me, rec).await?;
        }
        Ok(())
    }

    async fn spawn_container(&mut self, me: &ActorRef<ManagerMsg>, rec: ContainerRecord) -> Result<ActorRef<ContainerMsg>> {
        let summary = ContainerSummary {
            name: rec.name.clone(),
            status: rec.status,
            image: rec.image.clone(),
            init_pid: rec.init_pid,
        };
        let name = rec.name.clone();
        let args = ContainerArgs {
            record: rec,
            store: self.store.clone(),
            runtime: self.rt.clone(),
            events: self.events.clone(),
            manager: me.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, ContainerActor, args, me.get_cell())
            .await
            .map_err(|e| Error::Unavailable(format!("container {name:?} actor ({e})")))?;
        self.by_id.insert(actor.get_id(), name.clone());
        let failures = self.containers.remove(&name).map(|c| c.failures).unwrap_or_default();
        self.containers.insert(name, Child { slot: Slot::Live(actor.clone()), summary, failures });
        Ok(actor)
    }

    async fn spawn_image(&mut self, me: &ActorRef<ManagerMsg>, rec: ImageRecord) -> Result<()> {
        let fp = rec.fingerprint.clone();
        let args = ImageArgs {
            record: rec.clone(),
            store: self.store.clone(),
            runtime: self.rt.clone(),
            events: self.events.clone(),
            manager: me.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, ImageActor, args, me.get_cell())
            .await
            .map_err(|e| Error::Unavailable(format!("image {fp} actor ({e})")))?;
        self.image_ids.insert(actor.get_id(), fp.clone());
        let failures = self.images.remove(&fp).map(|e| e.failures).unwrap_or_default();
        self.images.insert(fp, ImageEntry { actor, record: rec, failures });
        Ok(())
    }

    /// Restart policy.
    async fn child_failed(&mut self, me: &ActorRef<ManagerMsg>, cell: ActorCell, err: String) {
        let now = Instant::now();
        let recent = |f: &mut Vec<Instant>| {
            f.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
            f.push(now);
            f.len()
        };
        if let Some(name) = self.by_id.remove(&cell.get_id()) {
            tracing::error!(container = %name, "container actor failed: {err}");
            let Some(child) = self.containers.get_mut(&name) else { return };
            if recent(&mut child.failures) > MAX_RESTARTS {
                tracing::error!(container = %name, "giving up after {MAX_RESTARTS} failures in {:?}", RESTART_WINDOW);
                child.slot = Slot::GaveUp;
                return;
            }
            match self.store.container(&name).await {
                Ok(Some(rec)) => match self.spawn_container(me, rec).await {
                    Ok(_) => tracing::info!(container = %name, "container actor respawned from the database"),
                    Err(e) => {
                        tracing::error!(container = %name, "respawn failed: {e}");
                        if let Some(c) = self.containers.get_mut(&name) {
                            c.slot = Slot::GaveUp;
                        }
                    }
                },
                Ok(None) => {
                    self.containers.remove(&name);
                }
                Err(e) => {
                    tracing::error!(container = %name, "respawn failed, cannot read its record: {e}");
                    if let Some(c) = self.containers.get_mut(&name) {
                        c.slot = Slot::GaveUp;
                    }
                }
            }
        } else if let Some(fp) = self.image_ids.remove(&cell.get_id()) {
            tracing::error!(image = %fp, "image actor failed: {err}");
            let Some(entry) = self.images.get_mut(&fp) else { return };
            if recent(&mut entry.failures) > MAX_RESTARTS {
                tracing::error!(image = %fp, "giving up on the image actor");
                self.images.remove(&fp);
                return;
            }
            let rec = entry.record.clone();
            if let Err(e) = self.spawn_image(me, rec).await {
                tracing::error!(image = %fp, "respawn failed: {e}");
            }
        }
    }

    async fn create(&mut self, me: &ActorRef<ManagerMsg>, req: CreateRequest, reply: RpcReplyPort<Result<(ContainerInfo, Created)>>) {
        match self.prepare_create(req).await {
            Err(e) => drop(reply.send(Err(e))),
            Ok(Prepared::Identity(actor)) => {
                tokio::spawn(async move {
                    let r = ractor::call!(actor, ContainerMsg::Info)
                        .unwrap_or_else(|_| Err(Error::Unavailable("the container".into())));
                    let _ = reply.send(r.map(|i| (i, Created::Identity)));
                });
            }
            Ok(Prepared::New(rec, start)) => {
                let name = rec.name.clone();
                let image = rec.image.clone();
                if let Err(e) = self.store.insert_container(&rec).await {
                    let _ = reply.send(Err(e));
                    return;
                }
                let actor = match self.spawn_container(me, rec).await {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = self.store.delete_container(&name).await;
                        let _ = reply.send(Err(e));
                        return;
                    }
                };
                self.creating.insert(name.clone(), ());
                if let Some(img) = self.images.get(&image) {
                    let _ = img.actor.cast(ImageMsg::Used(now_us()));
                }
                let me = me.clone();
                tokio::spawn(async move {
                    let r = ractor::call!(actor, |reply| ContainerMsg::Provision { start, reply })
                        .unwrap_or_else(|_| Err(Error::Unavailable(format!("container {name:?}"))));
                    let _ = me.cast(ManagerMsg::Provisioned(name));
                    let _ = reply.send(r.map(|i| (i, Created::New)));
                });
            }
        }
    }

    async fn prepare_create(&mut self, req: CreateRequest) -> Result<Prepared> {
        let name = if req.name.is_empty() { self.pick_name() } else { req.name.clone() };
        validate_name(&name)?;
        crate::config::validate_user_config(&req.config)?;
        let profiles = req.profiles.clone().unwrap_or_else(|| vec!["default".to_string()]);
        for p in &profiles {
            if p != "default" {
                return Err(Error::NoSuchProfile(p.clone()));
            }
        }
        let image = self.resolve_image(&req.image)?.record.clone();
        if let Some(existing) = self.containers.get(&name) {
            // Typed idempotence: the same definition again is Identity, anything else a clash.
            if let Slot::Live(actor) = &existing.slot
                && existing.summary.image == image.fingerprint
                && !self.creating.contains_key(&name)
            {
                let info = ractor::call!(actor, ContainerMsg::Info)
                    .map_err(|_| Error::Unavailable(format!("container {name:?}")))??;
                let user: BTreeMap<_, _> =
                    info.config.iter().filter(|(k, _)| !k.starts_with("volatile.") && !k.starts_with("image.")).map(|(k, v)| (k.clone(), v.clone())).collect();
                let wanted: BTreeMap<_, _> = req.config.iter().filter(|(k, _)| !k.starts_with("image.")).map(|(k, v)| (k.clone(), v.clone())).collect();
                if user == wanted && info.profiles == profiles && info.ephemeral == req.ephemeral {
                    return Ok(Prepared::Identity(actor.clone()));
                }
            }
            return Err(Error::AlreadyExists { kind: "container", name });
        }
        let mut config = req.config.clone();
        for (k, v) in &image.properties {
            config.entry(format!("image.{k}")).or_insert_with(|| v.clone());
        }
        let rec = ContainerRecord {
            name,
            image: image.fingerprint.clone(),
            status: Status::Stopped,
            init_pid: 0,
            created_at_us: now_us(),
            ephemeral: req.ephemeral,
            profiles,
            config,
            architecture: image.architecture.clone(),
            pending: Pending::Create,
        };
        Ok(Prepared::New(rec, req.start))
    }

    /// A free name such as `brisk-otter`.
    fn pick_name(&self) -> String {
        const ADJ: &[&str] = &["brisk", "calm", "eager", "fond", "keen", "lucid", "merry", "noble", "quiet", "sunny", "tidy", "vivid"];
        const NOUN: &[&str] = &["otter", "heron", "lynx", "finch", "marten", "puffin", "wren", "ibex", "tern", "vole", "koi", "gecko"];
        let mut seed = now_us() ^ (std::process::id() as u64).rotate_left(32);
        for _ in 0..1000 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let n = format!("{}-{}", ADJ[(seed >> 33) as usize % ADJ.len()], NOUN[(seed >> 17) as usize % NOUN.len()]);
            if !self.containers.contains_key(&n) {
                return n;
            }
        }
        format!("c-{}", now_us())
    }

    /// Alias, full fingerprint, or unique fingerprint prefix.
    fn resolve_image(&self, reference: &str) -> Result<&ImageEntry> {
        if reference.is_empty() {
            return Err(Error::NoSuchImage(reference.to_string()));
        }
        if let Some(e) = self.images.values().find(|e| e.record.aliases.iter().any(|a| a == reference)) {
            return Ok(e);
        }
        if !reference.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::NoSuchImage(reference.to_string()));
        }
        let lower = reference.to_ascii_lowercase();
        let matches: Vec<&ImageEntry> = self.images.range(lower.clone()..).take_while(|(k, _)| k.starts_with(&lower)).map(|(_, e)| e).collect();
        match matches.as_slice() {
            [one] => Ok(one),
            [] => Err(Error::NoSuchImage(reference.to_string())),
            many => Err(Error::AmbiguousImage {
                reference: reference.to_string(),
                candidates: many.iter().map(|e| e.record.fingerprint.as_str()).collect::<Vec<_>>().join(", "),
            }),
        }
    }

    async fn register_image(&mut self, me: &ActorRef<ManagerMsg>, new: crate::runtime::NewImage, aliases: Vec<String>) -> Result<(ImageRecord, Created)> {
        if let Some(e) = self.images.get(&new.fingerprint) {
            // Same bytes again: Identity. Requested aliases move to it.
            let mut rec = e.record.clone();
            for a in &aliases {
                self.store_alias(a, &rec.fingerprint).await?;
                if !rec.aliases.contains(a) {
                    rec.aliases.push(a.clone());
                }
            }
            if let Some(e) = self.images.get_mut(&new.fingerprint) {
                e.record = rec.clone();
            }
            return Ok((rec, Created::Identity));
        }
        // Aliases requested for the new image are taken from older images.
        for a in &aliases {
            for e in self.images.values_mut() {
                e.record.aliases.retain(|x| x != a);
            }
        }
        let rec = ImageRecord {
            fingerprint: new.fingerprint.clone(),
            aliases: Vec::new(),
            properties: new.properties,
            architecture: new.architecture,
            size: new.size,
            created_at_us: new.created_at_us,
            uploaded_at_us: now_us(),
            last_used_at_us: 0,
        };
        if let Err(e) = self.store.insert_image(&rec).await {
            let _ = self.rt.remove_image(&rec.fingerprint).await;
            return Err(e);
        }
        let mut rec = rec;
        for a in &aliases {
            self.store_alias(a, &rec.fingerprint).await?;
            rec.aliases.push(a.clone());
        }
        self.spawn_image(me, rec.clone()).await?;
        self.events.publish(Event::ImageAdded { fingerprint: rec.fingerprint.clone() });
        Ok((rec, Created::New))
    }

    async fn store_alias(&mut self, alias: &str, fp: &str) -> Result<()> {
        self.store.set_alias(alias, fp).await?;
        for e in self.images.values_mut() {
            if e.record.fingerprint != fp {
                e.record.aliases.retain(|x| x != alias);
            }
        }
        Ok(())
    }
}

enum Prepared {
    New(ContainerRecord, bool),
    Identity(ActorRef<ContainerMsg>),
}

/// Checks an image alias: 1–255 printable characters without `/`, whitespace or control
/// characters, and not a bare hex string (it would shadow fingerprint prefixes).
pub fn validate_alias(a: &str) -> Result<()> {
    let bad = |reason: &str| Err(Error::InvalidName { name: a.to_string(), reason: reason.to_string() });
    if a.is_empty() || a.len() > 255 {
        return bad("an alias has 1 to 255 characters");
    }
    if a.chars().any(|c| c.is_control() || c.is_whitespace() || c == ':') {
        return bad("an alias cannot contain whitespace, control characters or ':'");
    }
    if a.starts_with('/') || a.ends_with('/') || a.contains("//") || a.split('/').any(|p| p == "." || p == "..") {
        return bad("an alias cannot start or end with '/' or contain '.' or '..' segments");
    }
    if a.chars().all(|c| c.is_ascii_hexdigit()) {
        return bad("an alias made only of hex digits would shadow fingerprints");
    }
    Ok(())
}
