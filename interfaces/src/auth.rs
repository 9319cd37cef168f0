//! Authorization: every mutating method checks one polkit action (ids are a contract, see
//! `polkit/org.berth.Berth1.policy`) with the caller as the subject and the object and verb as
//! details, before any message reaches the engine. Root is allowed without asking polkit.

use crate::errors::{Error, Name};
use std::collections::HashMap;
use zbus::Connection;
use zbus::fdo::DBusProxy;
use zbus::names::BusName;
use zbus_polkit::policykit1::{AuthorityProxy, CheckAuthorizationFlags, Subject};

/// `org.berth.Berth1.manage-containers`: start, stop, restart, freeze.
pub const MANAGE_CONTAINERS: &str = "org.berth.Berth1.manage-containers";
/// `org.berth.Berth1.create-container`: create, copy.
pub const CREATE_CONTAINER: &str = "org.berth.Berth1.create-container";
/// `org.berth.Berth1.delete-container`.
pub const DELETE_CONTAINER: &str = "org.berth.Berth1.delete-container";
/// `org.berth.Berth1.snapshot`.
pub const SNAPSHOT: &str = "org.berth.Berth1.snapshot";
/// `org.berth.Berth1.checkpoint`: anything that runs CRIU.
pub const CHECKPOINT: &str = "org.berth.Berth1.checkpoint";
/// `org.berth.Berth1.set-config`.
pub const SET_CONFIG: &str = "org.berth.Berth1.set-config";
/// `org.berth.Berth1.set-privileged-config`.
pub const SET_PRIVILEGED_CONFIG: &str = "org.berth.Berth1.set-privileged-config";
/// `org.berth.Berth1.manage-images`.
pub const MANAGE_IMAGES: &str = "org.berth.Berth1.manage-images";
/// `org.berth.Berth1.manage-profiles`.
pub const MANAGE_PROFILES: &str = "org.berth.Berth1.manage-profiles";
/// `org.berth.Berth1.exec`: Exec, OpenConsole.
pub const EXEC: &str = "org.berth.Berth1.exec";
/// `org.berth.Berth1.cancel-operation`.
pub const CANCEL_OPERATION: &str = "org.berth.Berth1.cancel-operation";
/// `org.berth.Berth1.cancel-operation-other-user`.
pub const CANCEL_OPERATION_OTHER_USER: &str = "org.berth.Berth1.cancel-operation-other-user";

/// `org.berth.Berth1.recover`: register what the pools hold without a database record.
pub const RECOVER: &str = "org.berth.Berth1.recover";

/// Every action id berth uses.
pub const ALL_ACTIONS: &[&str] = &[
    MANAGE_CONTAINERS,
    CREATE_CONTAINER,
    DELETE_CONTAINER,
    SNAPSHOT,
    CHECKPOINT,
    SET_CONFIG,
    SET_PRIVILEGED_CONFIG,
    MANAGE_IMAGES,
    MANAGE_PROFILES,
    EXEC,
    CANCEL_OPERATION,
    CANCEL_OPERATION_OTHER_USER,
    RECOVER,
];

/// Who is calling.
#[derive(Debug)]
pub struct Caller {
    /// The polkit subject for the sender (None on a peer-to-peer connection): its bus name on
    /// D-Bus, its pidfd and uid on varlink.
    pub subject: Option<Subject>,
    /// Asked instead when polkit cannot read `subject` (a pidfd subject needs polkit 124; Debian
    /// 12 has 122): the varlink peer's pid and start time, built only while its pidfd showed
    /// that pid still names the peer.
    pub fallback_subject: Option<Subject>,
    /// Unique bus name of the sender (None on a peer-to-peer connection).
    pub bus_name: Option<String>,
    /// The caller's uid when known.
    pub uid: Option<u32>,
    /// The caller allowed interactive authorization (message flag).
    pub interactive: bool,
}

/// Decides whether a caller may do an action.
#[async_trait::async_trait]
pub trait Authorizer: Send + Sync + 'static {
    /// The caller's uid when allowed; otherwise the error to reply with.
    async fn check(
        &self,
        caller: &Caller,
        action: &str,
        details: &[(&str, &str)],
    ) -> Result<u32, Error>;
}

/// Asks polkit (root callers pass without asking).
#[derive(Debug, Clone)]
pub struct PolkitAuthorizer {
    conn: Connection,
    authority: std::sync::Arc<tokio::sync::OnceCell<AuthorityProxy<'static>>>,
}

impl PolkitAuthorizer {
    /// Uses `conn` (the system bus berthd serves on) to reach polkit and the bus driver.
    pub fn new(conn: Connection) -> Self {
        PolkitAuthorizer {
            conn,
            authority: Default::default(),
        }
    }

    async fn authority(&self) -> Result<&AuthorityProxy<'static>, Error> {
        self.authority
            .get_or_try_init(|| async {
                AuthorityProxy::builder(&self.conn)
                    .cache_properties(zbus::proxy::CacheProperties::No)
                    .build()
                    .await
            })
            .await
            .map_err(|e| Error::new(Name::NotAuthorized, format!("polkit is not reachable: {e}")))
    }

    /// The uid of a bus peer.
    pub async fn uid_of(&self, bus_name: &str) -> Result<u32, Error> {
        let dbus = DBusProxy::new(&self.conn).await?;
        let name = BusName::try_from(bus_name.to_string())?;
        Ok(dbus.get_connection_unix_user(name).await?)
    }
}

#[async_trait::async_trait]
impl Authorizer for PolkitAuthorizer {
    async fn check(
        &self,
        caller: &Caller,
        action: &str,
        details: &[(&str, &str)],
    ) -> Result<u32, Error> {
        let uid = match (caller.uid, &caller.bus_name) {
            (Some(u), _) => u,
            (None, Some(n)) => self.uid_of(n).await?,
            (None, None) => {
                return Err(Error::new(
                    Name::NotAuthorized,
                    format!("cannot identify the caller for {action}"),
                ));
            }
        };
        if uid == 0 {
            return Ok(0);
        }
        let Some(subject) = &caller.subject else {
            return Err(Error::new(
                Name::NotAuthorized,
                format!("cannot identify the caller for {action}"),
            ));
        };
        let flags = if caller.interactive {
            CheckAuthorizationFlags::ALLOW_USER_INTERACTION
        } else {
            CheckAuthorizationFlags::empty()
        };
        let details: HashMap<&str, &str> = details.iter().copied().collect();
        let authority = self.authority().await?;
        let mut r = authority
            .check_authorization(subject, action, &details, flags, "")
            .await;
        if let (Err(e), Some(fallback)) = (&r, &caller.fallback_subject) {
            tracing::debug!(
                "polkit refused the pidfd subject ({e}); asking with pid and start time"
            );
            r = authority
                .check_authorization(fallback, action, &details, flags, "")
                .await;
        }
        let r = r.map_err(|e| {
            Error::new(
                Name::NotAuthorized,
                format!("polkit could not check {action}: {e}"),
            )
        })?;
        decide(
            action,
            r.is_authorized,
            r.is_challenge,
            r.details.contains_key("polkit.dismissed"),
            caller.interactive,
        )?;
        Ok(uid)
    }
}

/// polkit's answer → ours.
pub fn decide(
    action: &str,
    authorized: bool,
    challenge: bool,
    dismissed: bool,
    interactive: bool,
) -> Result<(), Error> {
    if authorized {
        Ok(())
    } else if dismissed {
        Err(Error::new(
            Name::NotAuthorizedDismissed,
            format!("authentication for {action} was dismissed"),
        ))
    } else if challenge && !interactive {
        Err(Error::Fdo(
            zbus::fdo::Error::InteractiveAuthorizationRequired(format!(
                "{action} needs authentication; call again allowing interactive authorization"
            )),
        ))
    } else {
        Err(Error::new(
            Name::NotAuthorized,
            format!("not authorized for {action} (ask an administrator, or add a polkit rule)"),
        ))
    }
}

/// Allows or denies by action (tests of the interfaces).
#[derive(Debug, Default, Clone)]
pub struct StaticAuthorizer {
    /// Actions refused; everything else is allowed.
    pub deny: Vec<String>,
}

#[async_trait::async_trait]
impl Authorizer for StaticAuthorizer {
    async fn check(
        &self,
        caller: &Caller,
        action: &str,
        _details: &[(&str, &str)],
    ) -> Result<u32, Error> {
        if self.deny.iter().any(|a| a == action) {
            Err(Error::new(
                Name::NotAuthorized,
                format!("not authorized for {action}"),
            ))
        } else {
            Ok(caller.uid.unwrap_or(0))
        }
    }
}
