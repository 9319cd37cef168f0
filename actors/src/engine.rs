//! The engine's front door: a cheap, cloneable handle with one async method per domain
//! operation. Interfaces (D-Bus, varlink) call only these; each is a message to the Manager
//! (which forwards container operations to the container's own actor).

use crate::container::ContainerMsg;
use crate::error::{Error, Result};
use crate::events::{Event, Events};
use crate::manager::{ManagerActor, ManagerArgs, ManagerMsg};
use crate::runtime::Runtime;
use crate::store::{Db, Store, StoreActor};
use crate::types::{
    ContainerInfo, ContainerSummary, CreateRequest, Created, ExecRequest, HostInfo, ImageRecord, StopOptions,
    validate_name,
};
use ractor::{Actor, ActorRef, RactorErr, RpcReplyPort};
use std::sync::Arc;
use tokio::sync::broadcast;

/// Handle on a running engine.
#[derive(Debug, Clone)]
pub struct Engine {
    manager: ActorRef<ManagerMsg>,
    store: Store,
    events: Events,
    host: Arc<HostInfo>,
}

fn gone<T>(what: &str) -> impl FnOnce(RactorErr<T>) -> Error + '_ {
    move |_| Error::Unavailable(what.to_string())
}

impl Engine {
    /// Starts the Store and Manager actors over `db`; the Manager reconciles every container
    /// with what runs before this returns.
    pub async fn start(db: Db, runtime: Arc<dyn Runtime>, host: HostInfo) -> Result<Engine> {
        let (store_actor, _) = Actor::spawn(None, StoreActor, db)
            .await
            .map_err(|e| Error::Store(format!("start the store actor: {e}")))?;
        let store = Store::new(store_actor);
        let events = Events::default();
        let args = ManagerArgs { store: store.clone(), runtime, events: events.clone() };
        let (manager, _) = Actor::spawn(None, ManagerActor, args)
            .await
            .map_err(|e| Error::Store(format!("start the manager: {e}")))?;
        Ok(Engine { manager, store, events, host: Arc::new(host) })
    }

    /// Stops the actors (containers keep running under their monitors).
    pub async fn shutdown(&self) {
        let _ = self.manager.stop_and_wait(Some("shutdown".into()), Some(std::time::Duration::from_secs(10))).await;
        let _ = self.store.actor().stop_and_wait(None, Some(std::time::Duration::from_secs(5))).await;
    }

    /// Host facts.
    pub fn host(&self) -> &HostInfo {
        &self.host
    }

    /// A subscription to domain events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Creates a container (and starts it if asked).
    pub async fn create_container(&self, req: CreateRequest) -> Result<(ContainerInfo, Created)> {
        if !req.name.is_empty() {
            validate_name(&req.name)?;
        }
        ractor::call!(self.manager, ManagerMsg::Create, Box::new(req)).map_err(gone("the manager"))?
    }

    /// Every container.
    pub async fn list_containers(&self) -> Result<Vec<ContainerSummary>> {
        ractor::call!(self.manager, ManagerMsg::List).map_err(gone("the manager"))
    }

    async fn to_container<T: Send + 'static>(
        &self,
        name: &str,
        build: impl FnOnce(RpcReplyPort<Result<T>>) -> ContainerMsg,
    ) -> Result<T> {
        validate_name(name)?;
        let (tx, rx) = ractor::concurrency::oneshot();
        self.manager
            .send_message(ManagerMsg::ToContainer(name.to_string(), build(tx.into())))
            .map_err(|_| Error::Unavailable("the manager".into()))?;
        rx.await.unwrap_or_else(|_| Err(Error::Unavailable(format!("container {name:?}"))))
    }

    /// A container's current info.
    pub async fn container(&self, name: &str) -> Result<ContainerInfo> {
        self.to_container(name, ContainerMsg::Info).await
    }

    /// Starts a container.
    pub async fn start_container(&self, name: &str) -> Result<()> {
        self.to_container(name, ContainerMsg::Start).await
    }

    /// Stops a container.
    pub async fn stop_container(&self, name: &str, opts: StopOptions) -> Result<()> {
        self.to_container(name, |r| ContainerMsg::Stop(opts, r)).await
    }

    /// Restarts a container.
    pub async fn restart_container(&self, name: &str, opts: StopOptions) -> Result<()> {
        self.to_container(name, |r| ContainerMsg::Restart(opts, r)).await
    }

    /// Deletes a container.
    pub async fn delete_container(&self, name: &str, force: bool) -> Result<()> {
        self.to_container(name, |reply| ContainerMsg::Delete { force, reply }).await
    }

    /// Runs a process in a container; returns its exit status.
    pub async fn exec(&self, name: &str, req: ExecRequest) -> Result<i32> {
        self.to_container(name, |r| ContainerMsg::Exec(Box::new(req), r)).await
    }

    /// Every image.
    pub async fn list_images(&self) -> Result<Vec<ImageRecord>> {
        ractor::call!(self.manager, ManagerMsg::ListImages).map_err(gone("the manager"))
    }

    /// An image by alias, fingerprint or unique prefix.
    pub async fn image(&self, reference: &str) -> Result<ImageRecord> {
        ractor::call!(self.manager, ManagerMsg::ResolveImage, reference.to_string()).map_err(gone("the manager"))?
    }

    /// Builds an image from a built-in recipe.
    pub async fn build_image(&self, recipe: &str, aliases: Vec<String>) -> Result<(ImageRecord, Created)> {
        ractor::call!(self.manager, ManagerMsg::BuildImage, recipe.to_string(), aliases).map_err(gone("the manager"))?
    }

    /// Deletes an image.
    pub async fn delete_image(&self, reference: &str) -> Result<()> {
        ractor::call!(self.manager, ManagerMsg::DeleteImage, reference.to_string()).map_err(gone("the manager"))?
    }

    /// The Manager actor (tests).
    pub fn manager(&self) -> &ActorRef<ManagerMsg> {
        &self.manager
    }
}
