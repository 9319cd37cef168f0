//! The one mapping table from domain errors to named D-Bus errors
//! (`org.berth.Berth1.Error.*`, a contract). Messages are the domain's: lowercase, specific,
//! saying what to do.

use zbus::message::{Header, Message};
use zbus::names::ErrorName;
use zbus::{DBusError, fdo};

/// Prefix of every berth error name.
pub const PREFIX: &str = "org.berth.Berth1.Error";

/// Error names berth replies with, after [`PREFIX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    /// No such container.
    NoSuchContainer,
    /// No such snapshot.
    NoSuchSnapshot,
    /// No such image.
    NoSuchImage,
    /// No such profile.
    NoSuchProfile,
    /// The name is taken by something different.
    AlreadyExists,
    /// The name is not acceptable.
    InvalidName,
    /// A config key/value or method option is not acceptable.
    InvalidConfig,
    /// Not allowed in the object's current state.
    InvalidState,
    /// Another operation is in progress; try again.
    Busy,
    /// polkit refused.
    NotAuthorized,
    /// polkit would allow it after authentication.
    NotAuthorizedCanObtain,
    /// The user dismissed the authentication dialog.
    NotAuthorizedDismissed,
    /// A CRIU dump failed.
    CheckpointFailed,
    /// A CRIU restore failed.
    RestoreFailed,
    /// The operation was cancelled.
    Cancelled,
    /// The image is malformed.
    InvalidImage,
    /// Not supported here.
    NotSupported,
    /// Creating a container's storage or cgroups failed.
    CreateFailed,
    /// Starting init failed (the message names the setup step).
    StartFailed,
    /// Stopping failed.
    StopFailed,
    /// Running a process failed.
    ExecFailed,
    /// Removing a container or image failed.
    DeleteFailed,
    /// Building an image failed.
    ImageBuildFailed,
    /// Importing an image failed for a reason other than the image itself.
    ImportFailed,
    /// Exporting an image failed.
    ExportFailed,
    /// Publishing a container failed.
    PublishFailed,
    /// The state database failed.
    DatabaseFailed,
    /// Taking, restoring or removing a snapshot's files failed.
    SnapshotFailed,
}

impl Name {
    /// The suffix after the prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            Name::NoSuchContainer => "NoSuchContainer",
            Name::NoSuchSnapshot => "NoSuchSnapshot",
            Name::NoSuchImage => "NoSuchImage",
            Name::NoSuchProfile => "NoSuchProfile",
            Name::AlreadyExists => "AlreadyExists",
            Name::InvalidName => "InvalidName",
            Name::InvalidConfig => "InvalidConfig",
            Name::InvalidState => "InvalidState",
            Name::Busy => "Busy",
            Name::NotAuthorized => "NotAuthorized",
            Name::NotAuthorizedCanObtain => "NotAuthorizedCanObtain",
            Name::NotAuthorizedDismissed => "NotAuthorizedDismissed",
            Name::CheckpointFailed => "CheckpointFailed",
            Name::RestoreFailed => "RestoreFailed",
            Name::Cancelled => "Cancelled",
            Name::InvalidImage => "InvalidImage",
            Name::NotSupported => "NotSupported",
            Name::CreateFailed => "CreateFailed",
            Name::StartFailed => "StartFailed",
            Name::StopFailed => "StopFailed",
            Name::ExecFailed => "ExecFailed",
            Name::DeleteFailed => "DeleteFailed",
            Name::ImageBuildFailed => "ImageBuildFailed",
            Name::ImportFailed => "ImportFailed",
            Name::ExportFailed => "ExportFailed",
            Name::PublishFailed => "PublishFailed",
            Name::DatabaseFailed => "DatabaseFailed",
            Name::SnapshotFailed => "SnapshotFailed",
        }
    }

    /// Every name (for docs and tests).
    pub const ALL: &'static [Name] = &[
        Name::NoSuchContainer,
        Name::NoSuchSnapshot,
        Name::NoSuchImage,
        Name::NoSuchProfile,
        Name::AlreadyExists,
        Name::InvalidName,
        Name::InvalidConfig,
        Name::InvalidState,
        Name::Busy,
        Name::NotAuthorized,
        Name::NotAuthorizedCanObtain,
        Name::NotAuthorizedDismissed,
        Name::CheckpointFailed,
        Name::RestoreFailed,
        Name::Cancelled,
        Name::InvalidImage,
        Name::NotSupported,
        Name::CreateFailed,
        Name::StartFailed,
        Name::StopFailed,
        Name::ExecFailed,
        Name::DeleteFailed,
        Name::ImageBuildFailed,
        Name::ImportFailed,
        Name::ExportFailed,
        Name::PublishFailed,
        Name::DatabaseFailed,
        Name::SnapshotFailed,
    ];
}

/// An error as sent on the bus: one of berth's names, or a standard fdo error
/// (`InvalidArgs`, `InteractiveAuthorizationRequired`).
#[derive(Debug)]
pub enum Error {
    /// `org.berth.Berth1.Error.<name>` with a message.
    Berth(Name, String, zbus::names::OwnedErrorName),
    /// A standard error.
    Fdo(fdo::Error),
}

impl Error {
    /// A berth error.
    pub fn new(name: Name, message: impl Into<String>) -> Error {
        let full = zbus::names::OwnedErrorName::try_from(format!("{PREFIX}.{}", name.as_str()))
            .expect("berth error names are valid D-Bus names");
        Error::Berth(name, message.into(), full)
    }

    /// `InvalidConfig` for a bad method option.
    pub fn option(message: impl Into<String>) -> Error {
        Error::new(Name::InvalidConfig, message)
    }

    /// The berth name, if this is one.
    pub fn name_kind(&self) -> Option<Name> {
        match self {
            Error::Berth(n, ..) => Some(*n),
            Error::Fdo(_) => None,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Berth(_, m, full) => write!(f, "{full}: {m}"),
            Error::Fdo(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

impl DBusError for Error {
    fn create_reply(&self, call: &Header<'_>) -> zbus::Result<Message> {
        match self {
            Error::Berth(_, msg, name) => Message::error(call, name).build(&(msg.as_str(),)),
            Error::Fdo(e) => e.create_reply(call),
        }
    }

    fn name(&self) -> ErrorName<'_> {
        match self {
            Error::Berth(_, _, name) => name.as_ref(),
            Error::Fdo(e) => e.name(),
        }
    }

    fn description(&self) -> Option<&str> {
        match self {
            Error::Berth(_, m, _) => Some(m),
            Error::Fdo(e) => e.description(),
        }
    }
}

impl From<zbus::Error> for Error {
    fn from(e: zbus::Error) -> Self {
        Error::Fdo(e.into())
    }
}

impl From<fdo::Error> for Error {
    fn from(e: fdo::Error) -> Self {
        Error::Fdo(e)
    }
}

#[cfg(feature = "server")]
impl From<berth_actors::Error> for Error {
    /// The mapping table.
    fn from(e: berth_actors::Error) -> Self {
        use berth_actors::Error as E;
        use berth_actors::error::Op;
        let msg = e.to_string();
        let name = match &e {
            E::NoSuchContainer(_) => Name::NoSuchContainer,
            E::NoSuchSnapshot { .. } => Name::NoSuchSnapshot,
            E::NoSuchImage(_) | E::AmbiguousImage { .. } => Name::NoSuchImage,
            E::NoSuchProfile(_) => Name::NoSuchProfile,
            E::AlreadyExists { .. } => Name::AlreadyExists,
            E::InvalidName { .. } => Name::InvalidName,
            E::InvalidConfig(_) => Name::InvalidConfig,
            E::InvalidState { .. } => Name::InvalidState,
            E::Busy(_) | E::Unavailable(_) => Name::Busy,
            E::InvalidImage(_) => Name::InvalidImage,
            E::NotSupported(_) => Name::NotSupported,
            E::Store(_) => Name::DatabaseFailed,
            E::Cancelled => Name::Cancelled,
            E::Runtime { op, .. } => match op {
                Op::Create => Name::CreateFailed,
                Op::Start => Name::StartFailed,
                Op::Stop => Name::StopFailed,
                Op::Exec => Name::ExecFailed,
                Op::Delete | Op::DeleteImage => Name::DeleteFailed,
                Op::BuildImage => Name::ImageBuildFailed,
                Op::ImportImage => Name::ImportFailed,
                Op::ExportImage => Name::ExportFailed,
                Op::Publish => Name::PublishFailed,
                Op::Snapshot => Name::SnapshotFailed,
                Op::Checkpoint => Name::CheckpointFailed,
                Op::Restore => Name::RestoreFailed,
                // the host could not apply the config (nothing of it was kept)
                Op::Configure => Name::InvalidConfig,
            },
        };
        Error::new(name, msg)
    }
}

/// Result alias for interface methods.
pub type Result<T, E = Error> = std::result::Result<T, E>;
