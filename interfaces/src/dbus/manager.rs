//! `org.berth.Berth1.Manager` at `/org/berth/Berth1`: create, find and list containers and
//! images, the by-name twins of the container methods for busctl and units, host facts, and
//! the signals announcing new and removed objects.

use super::options::{CreateForm, ImageForm, Options};
use super::{Context, container, export_container, export_image, path};
use crate::auth;
use crate::errors::Result;
use crate::paths;
use crate::wire::{ContainerEntry, ImageEntry};
use berth_actors::types::ImageOptions;
use std::collections::HashMap;
use zbus::message::Header;
use zbus::object_server::{ObjectServer, SignalEmitter};
use zbus::{Connection, ObjectPath, OwnedObjectPath, OwnedVariant, interface};

/// The Manager object.
#[derive(Debug)]
pub struct ManagerIface {
    ctx: Context,
}

impl ManagerIface {
    /// The Manager over `ctx`.
    pub fn new(ctx: Context) -> Self {
        ManagerIface { ctx }
    }
}

#[interface(name = "org.berth.Berth1.Manager")]
impl ManagerIface {
    /// Creates a container from an image (alias, fingerprint or unique prefix) and returns its
    /// object, exported before the reply. An empty name lets berth pick one. Options: `start`
    /// (b), `profiles` (as), `config` (a{ss}), `ephemeral` (b).
    #[zbus(out_args("container"))]
    async fn create_container(
        &self,
        name: String,
        image: String,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] h: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath> {
        let req = CreateForm::from_dbus("CreateContainer", name.clone(), options)?
            .create(image.clone())?;
        self.ctx
            .authorize(
                &h,
                auth::CREATE_CONTAINER,
                &[("container", &name), ("image", &image), ("verb", "create")],
            )
            .await?;
        if req.start {
            self.ctx
                .authorize(
                    &h,
                    auth::MANAGE_CONTAINERS,
                    &[("container", &name), ("verb", "start")],
                )
                .await?;
        }
        let (info, _) = self.ctx.engine.create_container(req).await?;
        export_container(conn, &self.ctx, &info.name).await?;
        Ok(path(paths::container(&info.name)))
    }

    /// Copies container `source` — or one of its snapshots, as `container/snapshot` — to a new
    /// container `name` (empty: berth picks one) and returns its object. The copy has its own
    /// address and MAC, and no saved running state; image templates with the `copy` trigger
    /// are applied. Options: `config` (a{ss}, over the source's), `profiles` (as),
    /// `ephemeral` (b), `start` (b).
    #[zbus(out_args("container"))]
    async fn copy_container(
        &self,
        source: String,
        name: String,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] h: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath> {
        let req = CreateForm::from_dbus("CopyContainer", name.clone(), options)?.copy(&source)?;
        self.ctx
            .authorize(
                &h,
                auth::CREATE_CONTAINER,
                &[("container", &name), ("source", &source), ("verb", "copy")],
            )
            .await?;
        // the copy holds the source's files and config (environment.* values included): a
        // rule that grants one container must not reach another's through a copy of it
        self.ctx
            .authorize(
                &h,
                auth::CREATE_CONTAINER,
                &[
                    ("container", &req.source),
                    ("source", &source),
                    ("target", &name),
                    ("verb", "copy-from"),
                ],
            )
            .await?;
        if req.start {
            self.ctx
                .authorize(
                    &h,
                    auth::MANAGE_CONTAINERS,
                    &[("container", &name), ("verb", "start")],
                )
                .await?;
        }
        let info = self.ctx.engine.copy_container(req).await?;
        export_container(conn, &self.ctx, &info.name).await?;
        Ok(path(paths::container(&info.name)))
    }

    /// The object of container `name`.
    #[zbus(out_args("container"))]
    async fn get_container(&self, name: String) -> Result<OwnedObjectPath> {
        let info = self.ctx.engine.container(&name).await?;
        Ok(path(paths::container(&info.name)))
    }

    /// Every container: name, status, image fingerprint, object path.
    #[zbus(out_args("containers"))]
    async fn list_containers(&self) -> Result<Vec<ContainerEntry>> {
        Ok(self
            .ctx
            .engine
            .list_containers()
            .await?
            .into_iter()
            .map(|c| ContainerEntry {
                path: path(paths::container(&c.name)),
                name: c.name,
                status: c.status.as_str().to_string(),
                image: c.image,
            })
            .collect())
    }

    /// `Container.Start` by name.
    async fn start_container(
        &self,
        name: String,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] h: Header<'_>,
    ) -> Result<()> {
        container::start(&self.ctx, &name, options, &h).await
    }

    /// `Container.Stop` by name.
    async fn stop_container(
        &self,
        name: String,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] h: Header<'_>,
    ) -> Result<()> {
        container::stop(&self.ctx, &name, options, &h).await
    }

    /// `Container.Delete` by name.
    async fn delete_container(
        &self,
        name: String,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] h: Header<'_>,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<()> {
        container::delete(&self.ctx, &name, options, &h, server).await
    }

    /// The object of an image (alias, full fingerprint or unique prefix).
    #[zbus(out_args("image"))]
    async fn get_image(&self, reference: String) -> Result<OwnedObjectPath> {
        let img = self.ctx.engine.image(&reference).await?;
        Ok(path(paths::image(&img.fingerprint)))
    }

    /// Every image: fingerprint, aliases, description, object path.
    #[zbus(out_args("images"))]
    async fn list_images(&self) -> Result<Vec<ImageEntry>> {
        Ok(self
            .ctx
            .engine
            .list_images()
            .await?
            .into_iter()
            .map(|i| ImageEntry {
                path: path(paths::image(&i.fingerprint)),
                description: i.description().to_string(),
                fingerprint: i.fingerprint,
                aliases: i.aliases,
            })
            .collect())
    }

    /// Builds an image from a built-in recipe (`busybox`: from the host's busybox-static) and
    /// returns its object. Options: `aliases` (as), `properties` (a{ss}). Building the same
    /// bytes again is not an error: the existing image gets the aliases. Runs as an Operation.
    #[zbus(out_args("image"))]
    async fn build_image(
        &self,
        recipe: String,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] h: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath> {
        let opts = image_options("BuildImage", options, &[])?.0;
        let uid = self
            .ctx
            .authorize(
                &h,
                auth::MANAGE_IMAGES,
                &[("image", &recipe), ("verb", "build")],
            )
            .await?;
        let (img, _) = self.ctx.engine.build_image(&recipe, opts, uid).await?;
        export_image(conn, &self.ctx, &img.fingerprint).await?;
        Ok(path(paths::image(&img.fingerprint)))
    }

    /// Imports an LXD/Incus image read from `archive` (a unified tarball, or a split image's
    /// metadata tarball with its rootfs passed as option `rootfs` h), compressed with gzip, xz,
    /// zstd, bzip2 or not. Options: `aliases` (as), `properties` (a{ss}), `rootfs` (h). The
    /// same image again is not an error. Runs as an Operation.
    #[zbus(out_args("image"))]
    async fn import_image(
        &self,
        archive: zbus::OwnedFd,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] h: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath> {
        let (opts, rootfs) = image_options("ImportImage", options, &[("rootfs", "h")])?;
        let uid = self
            .ctx
            .authorize(&h, auth::MANAGE_IMAGES, &[("verb", "import")])
            .await?;
        let (img, _) = self
            .ctx
            .engine
            .import_image(archive.into(), rootfs, opts, uid)
            .await?;
        export_image(conn, &self.ctx, &img.fingerprint).await?;
        Ok(path(paths::image(&img.fingerprint)))
    }

    /// Renames an image alias.
    async fn rename_image_alias(
        &self,
        from: String,
        to: String,
        #[zbus(header)] h: Header<'_>,
    ) -> Result<()> {
        self.ctx
            .authorize(
                &h,
                auth::MANAGE_IMAGES,
                &[("image", &from), ("verb", "rename-alias")],
            )
            .await?;
        Ok(self.ctx.engine.rename_image_alias(&from, &to).await?)
    }

    /// Registers what the storage pool holds without a database record, as `incus admin
    /// recover`: each container volume and kept image whose `backup.yaml` describes it gets
    /// its record back (a container with its config, profiles and snapshots; one that kept
    /// running is found running). Returns what was found without a record, what was recovered
    /// and what was skipped with the reason (skipped volumes are left as they are). No options
    /// are defined yet. Action `org.berth.Berth1.recover`.
    #[zbus(out_args("found", "recovered", "skipped"))]
    async fn recover(
        &self,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] h: Header<'_>,
    ) -> Result<(Vec<String>, Vec<String>, Vec<String>)> {
        Options::parse("Recover", options, &[])?;
        self.ctx
            .authorize(&h, auth::RECOVER, &[("verb", "recover")])
            .await?;
        let r = self.ctx.engine.recover().await?;
        Ok((r.found, r.recovered, r.skipped))
    }

    /// Operations in progress.
    #[zbus(out_args("operations"))]
    async fn list_operations(&self) -> Vec<OwnedObjectPath> {
        self.ctx
            .engine
            .operations()
            .iter()
            .map(|o| path(paths::operation(o.id)))
            .collect()
    }

    /// berth's version.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn version(&self) -> String {
        self.ctx.engine.host().version.clone()
    }

    /// Whether stateful snapshots and stops (CRIU) can work on this host.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn stateful_supported(&self) -> bool {
        let p = self.ctx.engine.host().stateful.clone();
        tokio::task::spawn_blocking(move || p.get())
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Why not, when they cannot.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn stateful_unsupported_reason(&self) -> String {
        let p = self.ctx.engine.host().stateful.clone();
        tokio::task::spawn_blocking(move || p.get())
            .await
            .map(|r| r.err().unwrap_or_default())
            .unwrap_or_default()
    }

    /// 1 (v1 or hybrid) or 2.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn cgroup_version(&self) -> u32 {
        self.ctx.engine.host().cgroup_version
    }

    /// Driver of the default storage pool (`btrfs` or `dir`).
    #[zbus(property(emits_changed_signal = "const"))]
    async fn storage_driver(&self) -> String {
        self.ctx.engine.host().storage_driver.clone()
    }

    /// A container was created.
    #[zbus(signal)]
    pub async fn container_new(
        emitter: &SignalEmitter<'_>,
        name: &str,
        container: ObjectPath<'_>,
    ) -> zbus::Result<()>;

    /// A container was deleted.
    #[zbus(signal)]
    pub async fn container_removed(
        emitter: &SignalEmitter<'_>,
        name: &str,
        container: ObjectPath<'_>,
    ) -> zbus::Result<()>;

    /// An image was added.
    #[zbus(signal)]
    pub async fn image_new(
        emitter: &SignalEmitter<'_>,
        fingerprint: &str,
        image: ObjectPath<'_>,
    ) -> zbus::Result<()>;

    /// An image was removed.
    #[zbus(signal)]
    pub async fn image_removed(
        emitter: &SignalEmitter<'_>,
        fingerprint: &str,
        image: ObjectPath<'_>,
    ) -> zbus::Result<()>;

    /// A long operation started (its object exists until it completes).
    #[zbus(signal)]
    pub async fn operation_new(
        emitter: &SignalEmitter<'_>,
        operation: ObjectPath<'_>,
    ) -> zbus::Result<()>;
}

/// Parses `aliases` (as) and `properties` (a{ss}) plus `extra` options; returns the options and
/// an fd given as `rootfs`.
pub(crate) fn image_options(
    method: &'static str,
    options: HashMap<String, OwnedVariant>,
    extra: &[(&str, &str)],
) -> Result<(ImageOptions, Option<std::os::fd::OwnedFd>)> {
    let (form, rootfs) = ImageForm::from_dbus(method, options, extra)?;
    Ok((form.check(), rootfs))
}
