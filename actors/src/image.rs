//! The Image actor: one per image. It owns the image's record and files (the archive as
//! received and the unpacked base volume in the pool).

use crate::error::{Error, Result};
use crate::events::{Event, Events};
use crate::manager::ManagerMsg;
use crate::runtime::Runtime;
use crate::store::Store;
use crate::types::ImageRecord;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::Arc;

/// Messages of an Image actor.
#[derive(Debug)]
pub enum ImageMsg {
    /// The image's record. Always allowed.
    Info(RpcReplyPort<ImageRecord>),
    /// Record that a container was just made from it.
    Used(u64),
    /// The Manager changed aliases or properties: take this record.
    Replace(Box<ImageRecord>),
    /// Delete the image's files and record; containers made from it keep their own copies.
    /// Replies once gone; the actor then stops.
    Delete(RpcReplyPort<Result<()>>),
}

/// What an Image actor starts with.
pub struct ImageArgs {
    /// Its record.
    pub record: ImageRecord,
    /// Store.
    pub store: Store,
    /// Host.
    pub runtime: Arc<dyn Runtime>,
    /// Events.
    pub events: Events,
    /// The manager.
    pub manager: ActorRef<ManagerMsg>,
}

impl std::fmt::Debug for ImageArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageArgs")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// The actor.
#[derive(Debug)]
pub struct ImageActor;

#[ractor::async_trait]
impl Actor for ImageActor {
    type Msg = ImageMsg;
    type State = ImageArgs;
    type Arguments = ImageArgs;

    async fn pre_start(
        &self,
        _: ActorRef<ImageMsg>,
        a: ImageArgs,
    ) -> Result<ImageArgs, ActorProcessingErr> {
        Ok(a)
    }

    async fn handle(
        &self,
        me: ActorRef<ImageMsg>,
        msg: ImageMsg,
        s: &mut ImageArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ImageMsg::Info(r) => drop(r.send(s.record.clone())),
            ImageMsg::Replace(rec) => s.record = *rec,
            ImageMsg::Used(at) => {
                s.record.last_used_at_us = at;
                if let Err(e) = s.store.update_image(&s.record).await {
                    tracing::warn!(image = %s.record.fingerprint, "record use: {e}");
                }
                let _ = s.manager.cast(ManagerMsg::ImageUpdated(
                    Box::new(s.record.clone()),
                    me.get_id(),
                ));
            }
            ImageMsg::Delete(r) => {
                let fp = s.record.fingerprint.clone();
                let res = async {
                    s.runtime.remove_image(&fp).await.map_err(|e| {
                        crate::container::map_rt(
                            crate::error::Op::DeleteImage,
                            format!("image {fp}"),
                            e,
                        )
                    })?;
                    s.store.delete_image(&fp).await?;
                    Ok::<(), Error>(())
                }
                .await;
                if res.is_ok() {
                    let _ = s
                        .manager
                        .cast(ManagerMsg::ImageRemoved(fp.clone(), me.get_id()));
                    s.events.publish(Event::ImageRemoved { fingerprint: fp });
                    me.stop(Some("deleted".into()));
                }
                let _ = r.send(res);
            }
        }
        Ok(())
    }
}

/// Shared helper: the image's record as of now.
pub async fn info(actor: &ActorRef<ImageMsg>) -> Result<ImageRecord> {
    ractor::call!(actor, ImageMsg::Info).map_err(|_| Error::Unavailable("the image".into()))
}
