//! berth-actors: the engine. One supervised ractor actor per container and per image, a
//! Manager supervising them, and a Store actor owning the SQLite database. Actors talk only by
//! message; [`Engine`] is the handle the wire interfaces use. Nothing here knows D-Bus,
//! varlink or polkit.
//!
//! See `docs/architecture.md` for the runtime semantics (mailbox order, restart policy, what
//! is persisted when, what survives a crash).

pub mod activity;
pub mod backup;
pub mod config;
pub mod container;
pub mod engine;
pub mod error;
pub mod events;
pub mod fake;
pub mod host;
pub mod image;
pub mod manager;
pub mod operation;
pub mod recover;
pub mod runtime;
pub mod snapshot;
pub mod store;
pub mod types;

pub use engine::Engine;
pub use error::{Error, Result};
pub use events::Event;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_snapshots;
