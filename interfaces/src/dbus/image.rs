//! `org.berth.Berth1.Image` at `/org/berth/Berth1/image/<sha256>`.

use super::Context;
use super::options::Options;
use crate::auth;
use crate::errors::{Error, Result};
use berth_actors::types::ImageRecord;
use std::collections::HashMap;
use zbus::message::Header;
use zbus::object_server::ObjectServer;
use zbus::{OwnedVariant, interface};

/// One image's object.
#[derive(Debug)]
pub struct ImageIface {
    ctx: Context,
    fingerprint: String,
}

impl ImageIface {
    /// The object for image `fingerprint`.
    pub fn new(ctx: Context, fingerprint: String) -> Self {
        ImageIface { ctx, fingerprint }
    }

    async fn record(&self) -> Result<ImageRecord> {
        Ok(self.ctx.engine.image(&self.fingerprint).await?)
    }
}

/// The interface name.
pub const INTERFACE: &str = "org.berth.Berth1.Image";

#[interface(name = "org.berth.Berth1.Image")]
impl ImageIface {
    /// Deletes the image; containers made from it keep working.
    async fn delete(
        &self,
        #[zbus(header)] h: Header<'_>,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<()> {
        self.ctx
            .authorize(
                &h,
                auth::MANAGE_IMAGES,
                &[("image", &self.fingerprint), ("verb", "delete")],
            )
            .await?;
        self.ctx.engine.delete_image(&self.fingerprint).await?;
        match server
            .remove::<ImageIface, _>(crate::paths::image(&self.fingerprint).as_str())
            .await
        {
            Ok(_) | Err(zbus::Error::InterfaceNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the image's file, byte for byte as it was imported, to `fd`. A split image needs
    /// option `rootfs` (h) for its rootfs file. Returns the bytes written. Runs as an Operation.
    #[zbus(out_args("bytes"))]
    async fn export(
        &self,
        fd: zbus::OwnedFd,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] h: Header<'_>,
    ) -> Result<u64> {
        let mut o = Options::parse("Export", options, &[("rootfs", "h")])?;
        let rootfs = o.fd("rootfs")?;
        let uid = self
            .ctx
            .authorize(
                &h,
                auth::MANAGE_IMAGES,
                &[("image", &self.fingerprint), ("verb", "export")],
            )
            .await?;
        Ok(self
            .ctx
            .engine
            .export_image(&self.fingerprint, fd.into(), rootfs, uid)
            .await?)
    }

    /// Sets properties (an empty value removes one).
    async fn set_properties(
        &self,
        properties: HashMap<String, String>,
        #[zbus(header)] h: Header<'_>,
    ) -> Result<()> {
        let keys: Vec<&str> = properties.keys().map(String::as_str).collect();
        let keys = keys.join(",");
        self.ctx
            .authorize(
                &h,
                auth::MANAGE_IMAGES,
                &[
                    ("image", &self.fingerprint),
                    ("verb", "set-properties"),
                    ("keys", &keys),
                ],
            )
            .await?;
        self.ctx
            .engine
            .set_image_properties(&self.fingerprint, properties.into_iter().collect())
            .await?;
        Ok(())
    }

    /// Points a new alias at this image (an alias names one image).
    async fn add_alias(&self, alias: String, #[zbus(header)] h: Header<'_>) -> Result<()> {
        self.ctx
            .authorize(
                &h,
                auth::MANAGE_IMAGES,
                &[("image", &self.fingerprint), ("verb", "add-alias")],
            )
            .await?;
        self.ctx
            .engine
            .add_image_alias(&self.fingerprint, &alias)
            .await?;
        Ok(())
    }

    /// Removes one of this image's aliases.
    async fn remove_alias(&self, alias: String, #[zbus(header)] h: Header<'_>) -> Result<()> {
        self.ctx
            .authorize(
                &h,
                auth::MANAGE_IMAGES,
                &[("image", &self.fingerprint), ("verb", "remove-alias")],
            )
            .await?;
        if !self.record().await?.aliases.contains(&alias) {
            return Err(Error::new(
                crate::errors::Name::NoSuchImage,
                format!("image {} has no alias {alias:?}", self.fingerprint),
            ));
        }
        Ok(self.ctx.engine.remove_image_alias(&alias).await?)
    }

    /// Whether the image is split (a metadata file and a rootfs file).
    #[zbus(property(emits_changed_signal = "const"))]
    async fn split(&self) -> Result<bool> {
        Ok(self.record().await?.split)
    }

    /// sha256 of the image file(s), as LXD computes it.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    /// Aliases.
    #[zbus(property)]
    async fn aliases(&self) -> Result<Vec<String>> {
        Ok(self.record().await?.aliases)
    }

    /// Properties (description, os, release…).
    #[zbus(property)]
    async fn properties(&self) -> Result<HashMap<String, String>> {
        Ok(self.record().await?.properties.into_iter().collect())
    }

    /// Architecture.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn architecture(&self) -> Result<String> {
        Ok(self.record().await?.architecture)
    }

    /// Size of the archive in bytes.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn size(&self) -> Result<u64> {
        Ok(self.record().await?.size)
    }

    /// Creation date from metadata.yaml, µs.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn created_at(&self) -> Result<u64> {
        Ok(self.record().await?.created_at_us)
    }

    /// When berth stored it, µs.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn uploaded_at(&self) -> Result<u64> {
        Ok(self.record().await?.uploaded_at_us)
    }

    /// When a container was last made from it, µs (0 = never).
    #[zbus(property)]
    async fn last_used_at(&self) -> Result<u64> {
        Ok(self.record().await?.last_used_at_us)
    }
}
