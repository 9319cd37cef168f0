//! The Manager's image side: the index used to resolve references, alias ownership (an alias
//! points at exactly one image), and the registration of images produced by imports, recipes
//! and publishes, which run as operations outside the mailbox.

use super::{ImageEntry, ManagerMsg, ManagerState};
use crate::error::{Error, Op, Result};
use crate::events::Event;
use crate::image::ImageMsg;
use crate::operation::{OpStatus, Operation};
use crate::runtime::{NewImage, RuntimeError};
use crate::types::{Created, ImageOptions, ImageRecord, now_us};
use ractor::{ActorRef, RpcReplyPort};
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;

/// Reply port of image-producing requests.
pub type ImageReply = RpcReplyPort<Result<(ImageRecord, Created)>>;

/// What an image-producing job is about.
pub(super) struct JobSpec {
    /// Operation verb.
    pub verb: &'static str,
    /// Object the operation concerns (`image:recipe`, `container:name`).
    pub object: String,
    /// Caller.
    pub uid: u32,
    /// Which failure name a host error gets.
    pub op_kind: Op,
    /// Aliases and properties asked for.
    pub opts: ImageOptions,
    /// Reply.
    pub reply: ImageReply,
}

impl ManagerState {
    /// Alias, full fingerprint, or unique fingerprint prefix.
    pub(super) fn resolve_image(&self, reference: &str) -> Result<&ImageEntry> {
        if reference.is_empty() {
            return Err(Error::NoSuchImage(reference.to_string()));
        }
        if let Some(e) = self
            .images
            .values()
            .find(|e| e.record.aliases.iter().any(|a| a == reference))
        {
            return Ok(e);
        }
        if !reference.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::NoSuchImage(reference.to_string()));
        }
        let lower = reference.to_ascii_lowercase();
        let matches: Vec<&ImageEntry> = self
            .images
            .range(lower.clone()..)
            .take_while(|(k, _)| k.starts_with(&lower))
            .map(|(_, e)| e)
            .collect();
        match matches.as_slice() {
            [one] => Ok(one),
            [] => Err(Error::NoSuchImage(reference.to_string())),
            many => Err(Error::AmbiguousImage {
                reference: reference.to_string(),
                candidates: many
                    .iter()
                    .map(|e| e.record.fingerprint.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Registered fingerprints.
    pub(super) fn known_images(&self) -> HashSet<String> {
        self.images.keys().cloned().collect()
    }

    /// Which image an alias points at.
    fn alias_owner(&self, alias: &str) -> Option<&str> {
        self.images
            .values()
            .find(|e| e.record.aliases.iter().any(|a| a == alias))
            .map(|e| e.record.fingerprint.as_str())
    }

    /// Checks aliases asked for a new image: valid names, not taken by another image.
    pub(super) fn check_new_aliases(
        &self,
        opts: &ImageOptions,
        for_fp: Option<&str>,
    ) -> Result<()> {
        validate_options(opts)?;
        for a in &opts.aliases {
            if let Some(owner) = self.alias_owner(a)
                && Some(owner) != for_fp
            {
                return Err(Error::AlreadyExists {
                    kind: "image alias",
                    name: a.clone(),
                });
            }
        }
        Ok(())
    }

    /// Runs `job` (a runtime call producing an image) as an operation; the result comes back as
    /// `ImageReady` and is registered there. Returns false (having replied) when the request is
    /// refused before anything runs.
    pub(super) fn spawn_image_job<F>(
        &self,
        me: &ActorRef<ManagerMsg>,
        spec: JobSpec,
        job: impl FnOnce(Arc<Operation>, HashSet<String>) -> F + Send + 'static,
    ) -> bool
    where
        F: Future<Output = std::result::Result<NewImage, RuntimeError>> + Send + 'static,
    {
        let JobSpec {
            verb,
            object,
            uid,
            op_kind,
            opts,
            reply,
        } = spec;
        // whose the aliases may be is known once the job knows its fingerprint: an alias the
        // same image already has is no conflict (a retry, or the same image imported again)
        if let Err(e) = validate_options(&opts) {
            let _ = reply.send(Err(e));
            return false;
        }
        let op = self.ops.start(verb, vec![object.clone()], uid, true);
        let known = self.known_images();
        let me = me.clone();
        tokio::spawn(async move {
            let res = job(op.clone(), known).await.map_err(|e| match e {
                RuntimeError::Cancelled => Error::Cancelled,
                e => crate::container::map_rt(op_kind, object, e),
            });
            if let Err(ractor::MessagingErr::SendErr(ManagerMsg::ImageReady {
                reply, op, ..
            })) = me.send_message(ManagerMsg::ImageReady {
                result: Box::new(res),
                opts,
                op,
                reply,
            }) {
                let _ = reply.send(Err(Error::Unavailable("the manager".into())));
                let _ = op;
            }
        });
        true
    }

    /// A job finished: register its image (or find it known), end the operation, reply.
    pub(super) async fn image_ready(
        &mut self,
        me: &ActorRef<ManagerMsg>,
        result: Result<NewImage>,
        opts: ImageOptions,
        op: Arc<Operation>,
        reply: ImageReply,
    ) {
        let out = match result {
            Ok(new) => {
                if let Ok(mut objs) = op.objects.lock() {
                    objs.push(format!("image:{}", new.fingerprint));
                }
                self.register_image(me, new, opts).await
            }
            Err(e) => Err(e),
        };
        let status = match &out {
            Ok(_) => OpStatus::Succeeded,
            Err(Error::Cancelled) => OpStatus::Cancelled,
            Err(e) => OpStatus::Failed(e.to_string()),
        };
        self.ops.finish(&op, status);
        let _ = reply.send(out);
    }

    /// Records an image the runtime stored (or recognizes one already known: Identity, with the
    /// requested aliases added).
    pub(super) async fn register_image(
        &mut self,
        me: &ActorRef<ManagerMsg>,
        mut new: NewImage,
        opts: ImageOptions,
    ) -> Result<(ImageRecord, Created)> {
        // released when this returns: a concurrent import of the same bytes then finds the
        // image registered (or, if registering failed, its files removed)
        let _claim = std::mem::take(&mut new.claim);
        if self.images.contains_key(&new.fingerprint) {
            self.check_new_aliases(&opts, Some(&new.fingerprint))?;
            for a in &opts.aliases {
                self.store.set_alias(a, &new.fingerprint).await?;
            }
            let entry = self
                .images
                .get_mut(&new.fingerprint)
                .ok_or_else(|| Error::NoSuchImage(new.fingerprint.clone()))?;
            for a in &opts.aliases {
                if !entry.record.aliases.contains(a) {
                    entry.record.aliases.push(a.clone());
                }
            }
            let rec = entry.record.clone();
            let _ = entry.actor.cast(ImageMsg::Replace(Box::new(rec.clone())));
            if !opts.aliases.is_empty() {
                self.events.publish(Event::ImageChanged {
                    fingerprint: rec.fingerprint.clone(),
                });
            }
            return Ok((rec, Created::Identity));
        }
        if new.known {
            // known when the job started, deleted since: nothing was stored this time
            return Err(Error::Busy(
                "the image was deleted while it was being imported; import it again".into(),
            ));
        }
        let mut properties = new.properties;
        properties.extend(opts.properties.clone());
        let rec = ImageRecord {
            fingerprint: new.fingerprint.clone(),
            aliases: opts.aliases.clone(),
            properties,
            architecture: new.architecture,
            size: new.size,
            created_at_us: new.created_at_us,
            uploaded_at_us: now_us(),
            last_used_at_us: 0,
            split: new.split,
        };
        if let Err(e) = self.check_new_aliases(&opts, None) {
            let _ = self.rt.remove_image(&rec.fingerprint).await;
            return Err(e);
        }
        if let Err(e) = self.store.insert_image(&rec).await {
            let _ = self.rt.remove_image(&rec.fingerprint).await;
            return Err(e);
        }
        berth_runtime::crash::point("berthd.image.recorded");
        self.spawn_image(me, rec.clone()).await?;
        self.events.publish(Event::ImageAdded {
            fingerprint: rec.fingerprint.clone(),
        });
        Ok((rec, Created::New))
    }

    fn replace_record(&mut self, rec: ImageRecord) {
        if let Some(e) = self.images.get_mut(&rec.fingerprint) {
            e.record = rec.clone();
            let _ = e.actor.cast(ImageMsg::Replace(Box::new(rec.clone())));
        }
        self.events.publish(Event::ImageChanged {
            fingerprint: rec.fingerprint,
        });
    }

    /// Points a new alias at an image.
    pub(super) async fn add_alias(&mut self, reference: &str, alias: &str) -> Result<ImageRecord> {
        validate_alias(alias)?;
        let mut rec = self.resolve_image(reference)?.record.clone();
        match self.alias_owner(alias) {
            Some(owner) if owner == rec.fingerprint => return Ok(rec),
            Some(_) => {
                return Err(Error::AlreadyExists {
                    kind: "image alias",
                    name: alias.to_string(),
                });
            }
            None => {}
        }
        self.store.set_alias(alias, &rec.fingerprint).await?;
        rec.aliases.push(alias.to_string());
        self.replace_record(rec.clone());
        Ok(rec)
    }

    /// Removes an alias.
    pub(super) async fn remove_alias(&mut self, alias: &str) -> Result<()> {
        let fp = self
            .alias_owner(alias)
            .ok_or_else(|| Error::NoSuchImage(alias.to_string()))?
            .to_string();
        self.store.delete_alias(alias).await?;
        if let Some(e) = self.images.get(&fp) {
            let mut rec = e.record.clone();
            rec.aliases.retain(|a| a != alias);
            self.replace_record(rec);
        }
        Ok(())
    }

    /// Renames an alias (it keeps pointing at the same image).
    pub(super) async fn rename_alias(&mut self, from: &str, to: &str) -> Result<()> {
        validate_alias(to)?;
        let fp = self
            .alias_owner(from)
            .ok_or_else(|| Error::NoSuchImage(from.to_string()))?
            .to_string();
        if self.alias_owner(to).is_some() {
            return Err(Error::AlreadyExists {
                kind: "image alias",
                name: to.to_string(),
            });
        }
        self.store.set_alias(to, &fp).await?;
        self.store.delete_alias(from).await?;
        if let Some(e) = self.images.get(&fp) {
            let mut rec = e.record.clone();
            for a in rec.aliases.iter_mut() {
                if a == from {
                    *a = to.to_string();
                }
            }
            self.replace_record(rec);
        }
        Ok(())
    }

    /// Sets (and with an empty value, removes) image properties.
    pub(super) async fn set_properties(
        &mut self,
        reference: &str,
        props: BTreeMap<String, String>,
    ) -> Result<ImageRecord> {
        for (k, v) in &props {
            validate_property(k, v)?;
        }
        let mut rec = self.resolve_image(reference)?.record.clone();
        for (k, v) in props {
            if v.is_empty() {
                rec.properties.remove(&k);
            } else {
                rec.properties.insert(k, v);
            }
        }
        self.store.update_image(&rec).await?;
        self.replace_record(rec.clone());
        Ok(rec)
    }
}

/// Aliases and properties asked for an image are well formed.
fn validate_options(opts: &ImageOptions) -> Result<()> {
    for a in &opts.aliases {
        validate_alias(a)?;
    }
    for (k, v) in &opts.properties {
        validate_property(k, v)?;
    }
    Ok(())
}

/// Checks an image alias: 1–255 printable characters without whitespace, control characters
/// or `:`, no empty, `.` or `..` segments between `/`, and not made only of hex digits (it would
/// shadow fingerprint prefixes).
pub fn validate_alias(a: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::InvalidName {
            name: a.to_string(),
            reason: reason.to_string(),
        })
    };
    if a.is_empty() || a.len() > 255 {
        return bad("an alias has 1 to 255 characters");
    }
    if a.chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == ':')
    {
        return bad("an alias cannot contain whitespace, control characters or ':'");
    }
    if a.starts_with('/')
        || a.ends_with('/')
        || a.contains("//")
        || a.split('/').any(|p| p == "." || p == "..")
    {
        return bad("an alias cannot start or end with '/' or contain '.' or '..' segments");
    }
    if a.chars().all(|c| c.is_ascii_hexdigit()) {
        return bad("an alias made only of hex digits would shadow fingerprints");
    }
    Ok(())
}

/// Checks an image property.
pub fn validate_property(k: &str, v: &str) -> Result<()> {
    if k.is_empty() || k.len() > 255 || k.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::InvalidConfig(format!(
            "invalid image property name {k:?}"
        )));
    }
    if v.len() > 64 * 1024 || v.contains('\0') {
        return Err(Error::InvalidConfig(format!(
            "image property {k:?}: value too long or contains NUL"
        )));
    }
    Ok(())
}
