//! The methods that reply more than once: lists with `more`, image-making operations with their
//! progress, and Monitor.

use super::WireError;
use super::json::{event, image, operation};
use super::methods::{Fds, MakeImageParams, Method, Sink, decode, no, required};
use crate::auth::{self, Caller};
use crate::dbus::Context;
use crate::dbus::options::ImageForm;
use crate::errors::Error;
use berth_actors::Event;
use serde_json::{Value, json};
use std::time::Duration;

/// A list: one reply, or with `more` one per item.
pub(super) async fn list(
    sink: &Sink,
    items: Result<Vec<Value>, Error>,
    plural: &str,
    singular: &str,
) -> Result<(), WireError> {
    let items = items?;
    if !sink.more {
        sink.reply(json!({ plural: items }), false).await;
        return Ok(());
    }
    if items.is_empty() {
        sink.reply(json!({}), false).await;
        return Ok(());
    }
    let last = items.len() - 1;
    for (i, item) in items.into_iter().enumerate() {
        if !sink.reply(json!({ singular: item }), i < last).await {
            break;
        }
    }
    Ok(())
}

/// BuildImage and PublishContainer: an image made as an operation.
pub(super) async fn make_image(
    ctx: &Context,
    caller: &Caller,
    m: Method,
    params: Value,
    sink: &Sink,
) -> Result<(), WireError> {
    let p: MakeImageParams = decode(&params)?;
    no(&[
        ("archive", p.archive.is_some()),
        ("reference", p.reference.is_some()),
        ("fd", p.fd.is_some()),
        ("rootfs", p.rootfs.is_some()),
    ])?;
    let opts = ImageForm {
        aliases: p.aliases,
        properties: p.properties.map(|m| m.into_iter().collect()),
    }
    .check();
    let e = &ctx.engine;
    let img = if m == Method::BuildImage {
        let recipe = required(p.recipe, "recipe")?;
        no(&[
            ("container", p.container.is_some()),
            ("snapshot", p.snapshot.is_some()),
        ])?;
        let uid = ctx
            .authorize_caller(
                caller,
                auth::MANAGE_IMAGES,
                &[("image", &recipe), ("verb", "build")],
            )
            .await?;
        progress(
            ctx,
            sink,
            uid,
            "image-build",
            e.build_image(&recipe, opts, uid),
        )
        .await?
        .0
    } else {
        let container = required(p.container, "container")?;
        no(&[("recipe", p.recipe.is_some())])?;
        let snap = p.snapshot.unwrap_or_default();
        let mut details = vec![("container", container.as_str())];
        if !snap.is_empty() {
            details.push(("snapshot", snap.as_str()));
        }
        details.push(("verb", "publish"));
        let uid = ctx
            .authorize_caller(caller, auth::MANAGE_IMAGES, &details)
            .await?;
        let snapshot = (!snap.is_empty()).then_some(snap.as_str());
        progress(
            ctx,
            sink,
            uid,
            "publish",
            e.publish(&container, snapshot, opts, uid),
        )
        .await?
        .0
    };
    sink.reply(json!({ "image": image(&img) }), false).await;
    Ok(())
}

/// ImportImage (from the call's fd `archive`, and `rootfs` for a split image) and ExportImage
/// (to fd `fd`, and `rootfs`): the twins of D-Bus ImportImage and Image.Export, operations with
/// their progress as BuildImage's.
pub(super) async fn transfer_image(
    ctx: &Context,
    caller: &Caller,
    m: Method,
    params: Value,
    fds: &Fds,
    sink: &Sink,
) -> Result<(), WireError> {
    let p: MakeImageParams = decode(&params)?;
    no(&[
        ("recipe", p.recipe.is_some()),
        ("container", p.container.is_some()),
        ("snapshot", p.snapshot.is_some()),
    ])?;
    let e = &ctx.engine;
    let rootfs = fds.get(p.rootfs, "rootfs")?;
    if m == Method::ImportImage {
        no(&[("reference", p.reference.is_some()), ("fd", p.fd.is_some())])?;
        let archive = fds.required(p.archive, "archive")?;
        let opts = ImageForm {
            aliases: p.aliases,
            properties: p.properties.map(|m| m.into_iter().collect()),
        }
        .check();
        let uid = ctx
            .authorize_caller(caller, auth::MANAGE_IMAGES, &[("verb", "import")])
            .await?;
        let img = progress(
            ctx,
            sink,
            uid,
            "image-import",
            e.import_image(archive, rootfs, opts, uid),
        )
        .await?
        .0;
        sink.reply(json!({ "image": image(&img) }), false).await;
    } else {
        no(&[
            ("archive", p.archive.is_some()),
            ("aliases", p.aliases.is_some()),
            ("properties", p.properties.is_some()),
        ])?;
        let reference = required(p.reference, "reference")?;
        let out = fds.required(p.fd, "fd")?;
        // the D-Bus twin lives on the image's object: its fingerprint is the detail
        let fp = e.image(&reference).await.map_err(Error::from)?.fingerprint;
        let uid = ctx
            .authorize_caller(
                caller,
                auth::MANAGE_IMAGES,
                &[("image", &fp), ("verb", "export")],
            )
            .await?;
        let bytes = progress(
            ctx,
            sink,
            uid,
            "image-export",
            e.export_image(&fp, out, rootfs, uid),
        )
        .await?;
        sink.reply(json!({ "bytes": bytes }), false).await;
    }
    Ok(())
}

/// Runs `work`, an operation of `verb` started by `uid`; with `more`, replies with its progress
/// about four times a second meanwhile. A client that hangs up cancels it.
async fn progress<T>(
    ctx: &Context,
    sink: &Sink,
    uid: u32,
    verb: &str,
    work: impl std::future::Future<Output = berth_actors::Result<T>>,
) -> Result<T, WireError> {
    let mut events = ctx.engine.subscribe();
    tokio::pin!(work);
    let mut op_id = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            r = &mut work => return Ok(r.map_err(Error::from)?),
            ev = events.recv(), if sink.more && op_id.is_none() => {
                if let Ok(Event::OperationNew { id }) = ev
                    && ctx.engine.operation(id).is_some_and(|o| o.verb == verb && o.started_by_uid == uid)
                {
                    op_id = Some(id);
                }
            }
            _ = tick.tick(), if sink.more => {
                if let Some(op) = op_id.and_then(|id| ctx.engine.operation(id))
                    && !sink.reply(json!({ "operation": operation(&op) }), true).await
                {
                    // the client hung up: cancel what it asked for
                    op.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }
}

/// Monitor: a Monitoring reply, then one per event until the client hangs up.
pub(super) async fn monitor(ctx: &Context, sink: &Sink) -> Result<(), WireError> {
    use tokio::sync::broadcast::error::RecvError;
    let mut events = ctx.engine.subscribe();
    if !sink
        .reply(json!({ "event": { "type": "Monitoring" } }), true)
        .await
    {
        return Ok(());
    }
    loop {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = sink.tx.closed() => return Ok(()),
        };
        let v = match ev {
            Ok(ev) => event(&ev),
            Err(RecvError::Lagged(_)) => json!({ "type": "Lagged" }),
            Err(RecvError::Closed) => return Ok(()),
        };
        if !sink.reply(json!({ "event": v }), true).await {
            return Ok(());
        }
    }
}
