//! Client proxies of the D-Bus API, used by the `berth` CLI. Mutating calls allow interactive
//! authorization so that a polkit agent can ask for a password.

use crate::wire::{ContainerEntry, ImageEntry};
use std::collections::HashMap;
use zbus::{OwnedObjectPath, Variant, proxy};

/// `org.berth.Berth1.Manager`.
#[proxy(
    interface = "org.berth.Berth1.Manager",
    default_service = "org.berth.Berth1",
    default_path = "/org/berth/Berth1"
)]
pub trait Manager {
    /// Creates a container.
    #[zbus(allow_interactive_auth)]
    fn create_container(
        &self,
        name: &str,
        image: &str,
        options: &HashMap<&str, Variant<'_>>,
    ) -> zbus::Result<OwnedObjectPath>;
    /// Copies a container or `container/snapshot` to a new container.
    #[zbus(allow_interactive_auth)]
    fn copy_container(
        &self,
        source: &str,
        name: &str,
        options: &HashMap<&str, Variant<'_>>,
    ) -> zbus::Result<OwnedObjectPath>;
    /// Finds a container.
    fn get_container(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    /// Lists containers.
    fn list_containers(&self) -> zbus::Result<Vec<ContainerEntry>>;
    /// Starts a container by name.
    #[zbus(allow_interactive_auth)]
    fn start_container(&self, name: &str, options: &HashMap<&str, Variant<'_>>)
    -> zbus::Result<()>;
    /// Stops a container by name.
    #[zbus(allow_interactive_auth)]
    fn stop_container(&self, name: &str, options: &HashMap<&str, Variant<'_>>) -> zbus::Result<()>;
    /// Deletes a container by name.
    #[zbus(allow_interactive_auth)]
    fn delete_container(
        &self,
        name: &str,
        options: &HashMap<&str, Variant<'_>>,
    ) -> zbus::Result<()>;
    /// Finds an image.
    fn get_image(&self, reference: &str) -> zbus::Result<OwnedObjectPath>;
    /// Lists images.
    fn list_images(&self) -> zbus::Result<Vec<ImageEntry>>;
    /// Builds an image from a recipe.
    #[zbus(allow_interactive_auth)]
    fn build_image(
        &self,
        recipe: &str,
        options: &HashMap<&str, Variant<'_>>,
    ) -> zbus::Result<OwnedObjectPath>;
    /// Imports an image from an open file.
    #[zbus(allow_interactive_auth)]
    fn import_image(
        &self,
        archive: zbus::Fd<'_>,
        options: &HashMap<&str, Variant<'_>>,
    ) -> zbus::Result<OwnedObjectPath>;
    /// Renames an alias.
    #[zbus(allow_interactive_auth)]
    fn rename_image_alias(&self, from: &str, to: &str) -> zbus::Result<()>;
    /// Registers what the pool holds without a record: (found, recovered, skipped).
    #[zbus(allow_interactive_auth)]
    fn recover(
        &self,
        options: &HashMap<&str, Variant<'_>>,
    ) -> zbus::Result<(Vec<String>, Vec<String>, Vec<String>)>;
    /// Operations in progress.
    fn list_operations(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
    /// A long operation started.
    #[zbus(signal)]
    fn operation_new(&self, operation: OwnedObjectPath) -> zbus::Result<()>;
    /// berth's version.
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
    /// cgroup version.
    #[zbus(property)]
    fn cgroup_version(&self) -> zbus::Result<u32>;
    /// Storage driver.
    #[zbus(property)]
    fn storage_driver(&self) -> zbus::Result<String>;
    /// Whether stateful operations work here.
    #[zbus(property)]
    fn stateful_supported(&self) -> zbus::Result<bool>;
    /// Why not.
    #[zbus(property)]
    fn stateful_unsupported_reason(&self) -> zbus::Result<String>;
}

/// `org.berth.Berth1.Container`.
#[proxy(
    interface = "org.berth.Berth1.Container",
    default_service = "org.berth.Berth1"
)]
pub trait Container {
    /// Starts.
    #[zbus(allow_interactive_auth)]
    fn start(&self, options: &HashMap<&str, Variant<'_>>) -> zbus::Result<()>;
    /// Stops.
    #[zbus(allow_interactive_auth)]
    fn stop(&self, options: &HashMap<&str, Variant<'_>>) -> zbus::Result<()>;
    /// Restarts.
    #[zbus(allow_interactive_auth)]
    fn restart(&self, options: &HashMap<&str, Variant<'_>>) -> zbus::Result<()>;
    /// Deletes.
    #[zbus(allow_interactive_auth)]
    fn delete(&self, options: &HashMap<&str, Variant<'_>>) -> zbus::Result<()>;
    /// Runs a process; returns its exit status.
    #[zbus(allow_interactive_auth)]
    fn exec(&self, argv: &[&str], options: &HashMap<&str, Variant<'_>>) -> zbus::Result<i32>;
    /// Makes an image of the (stopped) container.
    #[zbus(allow_interactive_auth)]
    fn publish(&self, options: &HashMap<&str, Variant<'_>>) -> zbus::Result<OwnedObjectPath>;
    /// Takes a snapshot.
    #[zbus(allow_interactive_auth)]
    fn create_snapshot(
        &self,
        name: &str,
        options: &HashMap<&str, Variant<'_>>,
    ) -> zbus::Result<OwnedObjectPath>;
    /// Config and expanded config with `environment.*` values (authorized as exec; never
    /// asks for a password: `berth info` falls back to the properties).
    fn get_config(
        &self,
        options: &HashMap<&str, Variant<'_>>,
    ) -> zbus::Result<(HashMap<String, String>, HashMap<String, String>)>;
    /// Sets and removes config keys; live ones (`limits.disk`) apply at once.
    #[zbus(allow_interactive_auth)]
    fn set_config(&self, set: HashMap<&str, &str>, unset: &[&str]) -> zbus::Result<()>;
    /// The last checkpoint/restore log: (path, text).
    #[zbus(allow_interactive_auth)]
    fn get_checkpoint_log(&self) -> zbus::Result<(String, String)>;
    /// Snapshots: name, object, created (µs), stateful, size.
    fn list_snapshots(&self) -> zbus::Result<Vec<(String, OwnedObjectPath, u64, bool, u64)>>;
    /// Name.
    #[zbus(property)]
    fn name(&self) -> zbus::Result<String>;
    /// A stateful stop saved the running state.
    #[zbus(property)]
    fn stateful(&self) -> zbus::Result<bool>;
    /// Status.
    #[zbus(property)]
    fn status(&self) -> zbus::Result<String>;
    /// init pid.
    #[zbus(property)]
    fn init_pid(&self) -> zbus::Result<u32>;
    /// Image fingerprint.
    #[zbus(property)]
    fn image(&self) -> zbus::Result<String>;
    /// Creation time (µs).
    #[zbus(property)]
    fn created_at(&self) -> zbus::Result<u64>;
    /// Ephemeral.
    #[zbus(property)]
    fn ephemeral(&self) -> zbus::Result<bool>;
    /// Profiles.
    #[zbus(property)]
    fn profiles(&self) -> zbus::Result<Vec<String>>;
    /// Config.
    #[zbus(property)]
    fn config(&self) -> zbus::Result<HashMap<String, String>>;
    /// Architecture.
    #[zbus(property)]
    fn architecture(&self) -> zbus::Result<String>;
}

/// `org.berth.Berth1.Snapshot`.
#[proxy(
    interface = "org.berth.Berth1.Snapshot",
    default_service = "org.berth.Berth1"
)]
pub trait Snapshot {
    /// Restores it.
    #[zbus(allow_interactive_auth)]
    fn restore(&self, options: &HashMap<&str, Variant<'_>>) -> zbus::Result<()>;
    /// Deletes it.
    #[zbus(allow_interactive_auth)]
    fn delete(&self) -> zbus::Result<()>;
    /// Renames it; returns its new object.
    #[zbus(allow_interactive_auth)]
    fn rename(&self, new_name: &str) -> zbus::Result<OwnedObjectPath>;
    /// Publishes its files as an image.
    #[zbus(allow_interactive_auth)]
    fn publish(&self, options: &HashMap<&str, Variant<'_>>) -> zbus::Result<OwnedObjectPath>;
    /// Name.
    #[zbus(property)]
    fn name(&self) -> zbus::Result<String>;
    /// Stateful.
    #[zbus(property)]
    fn stateful(&self) -> zbus::Result<bool>;
    /// Creation time (µs).
    #[zbus(property)]
    fn created_at(&self) -> zbus::Result<u64>;
    /// Size (bytes).
    #[zbus(property)]
    fn size(&self) -> zbus::Result<u64>;
}

/// `org.berth.Berth1.Image`.
#[proxy(
    interface = "org.berth.Berth1.Image",
    default_service = "org.berth.Berth1"
)]
pub trait Image {
    /// Deletes.
    #[zbus(allow_interactive_auth)]
    fn delete(&self) -> zbus::Result<()>;
    /// Writes the image file(s) to open files.
    #[zbus(allow_interactive_auth)]
    fn export(&self, fd: zbus::Fd<'_>, options: &HashMap<&str, Variant<'_>>) -> zbus::Result<u64>;
    /// Sets properties (empty value: remove).
    #[zbus(allow_interactive_auth)]
    fn set_properties(&self, properties: &HashMap<&str, &str>) -> zbus::Result<()>;
    /// Adds an alias.
    #[zbus(allow_interactive_auth)]
    fn add_alias(&self, alias: &str) -> zbus::Result<()>;
    /// Removes an alias.
    #[zbus(allow_interactive_auth)]
    fn remove_alias(&self, alias: &str) -> zbus::Result<()>;
    /// Split image.
    #[zbus(property)]
    fn split(&self) -> zbus::Result<bool>;
    /// Creation date (µs).
    #[zbus(property)]
    fn created_at(&self) -> zbus::Result<u64>;
    /// Upload date (µs).
    #[zbus(property)]
    fn uploaded_at(&self) -> zbus::Result<u64>;
    /// Fingerprint.
    #[zbus(property)]
    fn fingerprint(&self) -> zbus::Result<String>;
    /// Aliases.
    #[zbus(property)]
    fn aliases(&self) -> zbus::Result<Vec<String>>;
    /// Properties.
    #[zbus(property)]
    fn properties(&self) -> zbus::Result<HashMap<String, String>>;
    /// Architecture.
    #[zbus(property)]
    fn architecture(&self) -> zbus::Result<String>;
    /// Size.
    #[zbus(property)]
    fn size(&self) -> zbus::Result<u64>;
}

/// `org.berth.Berth1.Operation`.
#[proxy(
    interface = "org.berth.Berth1.Operation",
    default_service = "org.berth.Berth1"
)]
pub trait Operation {
    /// Cancels it.
    #[zbus(allow_interactive_auth)]
    fn cancel(&self, options: &HashMap<&str, Variant<'_>>) -> zbus::Result<()>;
    /// What it does.
    #[zbus(property, name = "Operation")]
    fn verb(&self) -> zbus::Result<String>;
    /// 0..1.
    #[zbus(property)]
    fn progress(&self) -> zbus::Result<f64>;
    /// Whether Progress is meaningful.
    #[zbus(property)]
    fn progress_valid(&self) -> zbus::Result<bool>;
    /// Bytes processed.
    #[zbus(property)]
    fn bytes(&self) -> zbus::Result<u64>;
    /// Bytes per second.
    #[zbus(property)]
    fn rate(&self) -> zbus::Result<u64>;
    /// Who started it.
    #[zbus(property, name = "StartedByUID")]
    fn started_by_uid(&self) -> zbus::Result<u32>;
    /// Status.
    #[zbus(property)]
    fn status(&self) -> zbus::Result<String>;
}

/// A D-Bus error as `(name, message)` when it is one.
pub fn error_parts(e: &zbus::Error) -> Option<(String, String)> {
    match e {
        zbus::Error::MethodError(name, msg, _) => {
            Some((name.to_string(), msg.clone().unwrap_or_default()))
        }
        zbus::Error::FDO(f) => {
            use zbus::DBusError;
            Some((
                f.name().to_string(),
                f.description().unwrap_or_default().to_string(),
            ))
        }
        _ => None,
    }
}
