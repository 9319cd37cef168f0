//! berth-interfaces: the only crate that speaks wire protocols. The D-Bus service
//! (`org.berth.Berth1`), polkit authorization, the error mapping table, and (feature
//! `client`) the proxies the `berth` CLI uses. `dbus/*.xml` is the checked-in API description; the varlink service
//! (`org.berth.Berth`, twin of the D-Bus one) is described by `varlink/org.berth.Berth.varlink`.

pub mod errors;
pub mod paths;
pub mod sdnotify;
pub mod wire;

#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub mod dbus;
#[cfg(feature = "server")]
pub mod varlink;

#[cfg(feature = "client")]
pub mod client;
