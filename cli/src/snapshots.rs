//! `berth snapshot …` and `berth copy`.

use crate::{Fail, Format, R, container, fmt_time, progress, table};
use berth_interfaces::client::{ManagerProxy, SnapshotProxy};
use clap::Subcommand;
use std::collections::HashMap;
use zbus::proxy::CacheProperties;
use zbus::{Connection, OwnedObjectPath, Variant};

#[derive(Subcommand, Debug)]
pub(crate) enum SnapshotCmd {
    /// Take a snapshot (auto-named snap0, snap1… without a name).
    Create {
        /// Container.
        name: String,
        /// Snapshot name.
        snapshot: Option<String>,
        /// Checkpoint the running processes too (CRIU).
        #[arg(long)]
        stateful: bool,
    },
    /// List a container's snapshots.
    #[command(alias = "ls")]
    List {
        /// Container.
        name: String,
        /// Output format.
        #[arg(long, short = 'f', value_enum, default_value = "table")]
        format: Format,
    },
    /// Restore a snapshot (files; and the running processes of a stateful one).
    Restore {
        /// Container.
        name: String,
        /// Snapshot.
        snapshot: String,
        /// Restore the running state (default: when the snapshot has one).
        #[arg(long, conflicts_with = "stateless")]
        stateful: bool,
        /// Restore only the files, even of a stateful snapshot.
        #[arg(long)]
        stateless: bool,
    },
    /// Delete a snapshot.
    #[command(alias = "rm")]
    Delete {
        /// Container.
        name: String,
        /// Snapshot.
        snapshot: String,
    },
    /// Rename a snapshot.
    #[command(alias = "mv")]
    Rename {
        /// Container.
        name: String,
        /// Snapshot.
        snapshot: String,
        /// New name.
        new_name: String,
    },
}

async fn snapshot<'a>(
    conn: &'a Connection,
    m: &ManagerProxy<'_>,
    name: &str,
    snap: &str,
) -> R<SnapshotProxy<'a>> {
    let c = container(conn, m, name).await?;
    let list = c.list_snapshots().await?;
    let Some((_, path, ..)) = list.into_iter().find(|s| s.0 == snap) else {
        return Err(Fail(
            format!("container {name:?} has no snapshot named {snap:?} (NoSuchSnapshot)"),
            1,
        ));
    };
    Ok(SnapshotProxy::builder(conn)
        .path(path)
        .cache_properties(CacheProperties::No)
        .build()
        .await?)
}

pub(crate) async fn run(conn: &Connection, m: &ManagerProxy<'_>, cmd: SnapshotCmd) -> R<u8> {
    match cmd {
        SnapshotCmd::Create {
            name,
            snapshot,
            stateful,
        } => {
            let c = container(conn, m, &name).await?;
            let mut o: HashMap<&str, Variant<'_>> = HashMap::new();
            if stateful {
                o.insert("stateful", true.into());
            }
            let call = c.create_snapshot(snapshot.as_deref().unwrap_or(""), &o);
            let path = if stateful {
                progress::with_progress(conn, "snapshot-create", call).await?
            } else {
                call.await?
            };
            // the snapshot exists once the call returned: another client may delete it before
            // its name is read back, so the name is also read from its object path
            let from_path = path
                .as_str()
                .rsplit('/')
                .next()
                .and_then(berth_interfaces::paths::unescape_label);
            let s = SnapshotProxy::builder(conn)
                .path(path)
                .cache_properties(CacheProperties::No)
                .build()
                .await?;
            let taken = match s.name().await {
                Ok(n) => n,
                Err(e) => from_path.ok_or(e)?,
            };
            println!(
                "Snapshot {}/{}{}",
                name,
                taken,
                if stateful { " (stateful)" } else { "" }
            );
            Ok(0)
        }
        SnapshotCmd::List { name, format } => {
            let c = container(conn, m, &name).await?;
            let list = c.list_snapshots().await?;
            print_snapshots(&list, format);
            Ok(0)
        }
        SnapshotCmd::Restore {
            name,
            snapshot: snap,
            stateful,
            stateless,
        } => {
            let s = snapshot(conn, m, &name, &snap).await?;
            let mut o: HashMap<&str, Variant<'_>> = HashMap::new();
            if stateful {
                o.insert("stateful", true.into());
            }
            if stateless {
                o.insert("stateful", false.into());
            }
            let runs_criu = stateful || (!stateless && s.stateful().await?);
            if runs_criu {
                progress::with_progress(conn, "snapshot-restore", s.restore(&o)).await?;
            } else {
                s.restore(&o).await?;
            }
            Ok(0)
        }
        SnapshotCmd::Delete {
            name,
            snapshot: snap,
        } => {
            snapshot(conn, m, &name, &snap).await?.delete().await?;
            Ok(0)
        }
        SnapshotCmd::Rename {
            name,
            snapshot: snap,
            new_name,
        } => {
            snapshot(conn, m, &name, &snap)
                .await?
                .rename(&new_name)
                .await?;
            Ok(0)
        }
    }
}

/// `berth copy SOURCE[/SNAPSHOT] [NAME]`.
pub(crate) async fn copy(
    conn: &Connection,
    m: &ManagerProxy<'_>,
    source: &str,
    name: Option<String>,
    config: HashMap<String, String>,
    ephemeral: bool,
    start: bool,
) -> R<u8> {
    let mut o: HashMap<&str, Variant<'_>> = HashMap::new();
    if !config.is_empty() {
        o.insert("config", config.into());
    }
    if ephemeral {
        o.insert("ephemeral", true.into());
    }
    if start {
        o.insert("start", true.into());
    }
    if name.is_none() {
        o.insert("pick-name", true.into());
    }
    let path = m
        .copy_container(source, name.as_deref().unwrap_or(""), &o)
        .await?;
    let c = crate::container_at(conn, path).await?;
    println!("Copied {source} to {}", c.name().await?);
    Ok(0)
}

/// `berth snapshot list`'s output (either transport): name, object, created (µs), stateful,
/// size.
pub(crate) fn print_snapshots(list: &[(String, OwnedObjectPath, u64, bool, u64)], format: Format) {
    match format {
        Format::Json => {
            let v: Vec<serde_json::Value> = list
                .iter()
                .map(|(n, p, created, stateful, size)| {
                    serde_json::json!({"name": n, "path": p.as_str(), "created_at_us": created, "stateful": stateful, "size": size})
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|(n, _, created, stateful, size)| {
                    vec![
                        n.clone(),
                        fmt_time(*created),
                        if *stateful { "YES".into() } else { "NO".into() },
                        crate::human(*size),
                    ]
                })
                .collect();
            table(&["NAME", "TAKEN AT", "STATEFUL", "SIZE"], &rows);
        }
    }
}
