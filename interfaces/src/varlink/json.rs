//! What varlink replies carry: the engine's records as camelCase JSON objects, as the IDL
//! declares them.

use berth_actors::Event;
use berth_actors::types::{ContainerInfo, ContainerSummary, ImageRecord, SnapshotRecord};
use serde_json::{Value, json};

pub(super) fn event(ev: &Event) -> Value {
    let mut v = serde_json::Map::new();
    let mut put = |k: &str, x: Value| {
        v.insert(k.into(), x);
    };
    match ev {
        Event::ContainerCreated { name } => {
            put("type", "ContainerCreated".into());
            put("container", name.as_str().into());
        }
        Event::ContainerChanged {
            name,
            status,
            init_pid,
        } => {
            put("type", "ContainerChanged".into());
            put("container", name.as_str().into());
            put("status", status.as_str().into());
            put("initPid", (*init_pid).into());
        }
        Event::ContainerConfigChanged { name } => {
            put("type", "ContainerConfigChanged".into());
            put("container", name.as_str().into());
        }
        Event::ContainerRemoved { name } => {
            put("type", "ContainerRemoved".into());
            put("container", name.as_str().into());
        }
        Event::SnapshotCreated { container, name } => {
            put("type", "SnapshotCreated".into());
            put("container", container.as_str().into());
            put("snapshot", name.as_str().into());
        }
        Event::SnapshotRemoved { container, name } => {
            put("type", "SnapshotRemoved".into());
            put("container", container.as_str().into());
            put("snapshot", name.as_str().into());
        }
        Event::ImageAdded { fingerprint } => {
            put("type", "ImageAdded".into());
            put("fingerprint", fingerprint.as_str().into());
        }
        Event::ImageRemoved { fingerprint } => {
            put("type", "ImageRemoved".into());
            put("fingerprint", fingerprint.as_str().into());
        }
        Event::ImageChanged { fingerprint } => {
            put("type", "ImageChanged".into());
            put("fingerprint", fingerprint.as_str().into());
        }
        Event::OperationNew { id } => {
            put("type", "OperationNew".into());
            put("operation", (*id).into());
        }
        Event::OperationDone {
            id,
            success,
            message,
        } => {
            put("type", "OperationDone".into());
            put("operation", (*id).into());
            put("success", (*success).into());
            put("message", message.as_str().into());
        }
    }
    Value::Object(v)
}

pub(super) fn container_entry(c: &ContainerSummary) -> Value {
    json!({
        "name": c.name,
        "status": c.status.as_str(),
        "image": c.image,
        "initPid": c.init_pid,
    })
}

pub(super) fn container(c: &ContainerInfo) -> Value {
    json!({
        "name": c.name,
        "status": c.status.as_str(),
        "initPid": c.init_pid,
        "image": c.image,
        "createdAt": c.created_at_us,
        "ephemeral": c.ephemeral,
        "profiles": c.profiles,
        "config": crate::dbus::container::redact(c.config.clone()),
        "expandedConfig": crate::dbus::container::redact(c.expanded_config.clone()),
        "stateful": c.stateful,
        "architecture": c.architecture,
    })
}

pub(super) fn image(i: &ImageRecord) -> Value {
    json!({
        "fingerprint": i.fingerprint,
        "aliases": i.aliases,
        "description": i.description(),
        "properties": i.properties,
        "architecture": i.architecture,
        "size": i.size,
        "createdAt": i.created_at_us,
        "uploadedAt": i.uploaded_at_us,
        "lastUsedAt": i.last_used_at_us,
        "split": i.split,
    })
}

pub(super) fn snapshot(s: &SnapshotRecord) -> Value {
    json!({
        "container": s.container,
        "name": s.name,
        "createdAt": s.created_at_us,
        "stateful": s.stateful,
        "size": s.size,
    })
}

pub(super) fn operation(o: &berth_actors::operation::Operation) -> Value {
    let objects = o.objects.lock().map(|g| g.clone()).unwrap_or_default();
    json!({
        "id": o.id,
        "verb": o.verb,
        "status": o.status().as_str(),
        "progress": o.progress(),
        "bytes": o.done.load(std::sync::atomic::Ordering::Relaxed),
        "rate": o.rate(),
        "startTime": o.started_at_us,
        "objects": objects,
        "startedByUid": o.started_by_uid,
        "cancelable": o.cancelable,
    })
}
