//! The Store actor: the one owner of the SQLite database (WAL, foreign keys, append-only
//! migrations keyed by `user_version`). Other actors reach it only by message, through the
//! cheap [`Store`] handle; [`Db`] is the synchronous core, also used by `berthd init`.
//!
//! Durability: WAL with `synchronous=NORMAL`: a committed transaction survives any crash of
//! berthd; a power cut may lose the last transactions but never corrupts the database.

use crate::backup;
use crate::error::{Error, Result};
use crate::types::{ContainerRecord, ImageRecord, Pending, SnapshotRecord, Status};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Migrations, in order. Never edit one that has shipped: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: containers, images, aliases, settings
    r#"
    CREATE TABLE containers (
        name          TEXT PRIMARY KEY,
        image         TEXT NOT NULL,
        status        TEXT NOT NULL,
        init_pid      INTEGER NOT NULL DEFAULT 0,
        created_at    INTEGER NOT NULL,
        ephemeral     INTEGER NOT NULL DEFAULT 0,
        profiles      TEXT NOT NULL DEFAULT '["default"]',
        config        TEXT NOT NULL DEFAULT '{}',
        architecture  TEXT NOT NULL,
        pending       TEXT NOT NULL DEFAULT ''
    ) STRICT;
    CREATE TABLE images (
        fingerprint   TEXT PRIMARY KEY,
        architecture  TEXT NOT NULL,
        size          INTEGER NOT NULL,
        created_at    INTEGER NOT NULL,
        uploaded_at   INTEGER NOT NULL,
        last_used_at  INTEGER NOT NULL DEFAULT 0,
        properties    TEXT NOT NULL DEFAULT '{}'
    ) STRICT;
    CREATE TABLE image_aliases (
        name          TEXT PRIMARY KEY,
        image         TEXT NOT NULL REFERENCES images(fingerprint) ON DELETE CASCADE
    ) STRICT;
    CREATE TABLE settings (
        key           TEXT PRIMARY KEY,
        value         TEXT NOT NULL
    ) STRICT;
    "#,
    // 2: split images (metadata + rootfs files)
    r#"
    ALTER TABLE images ADD COLUMN split INTEGER NOT NULL DEFAULT 0;
    "#,
    // 3: snapshots (files under snapshots/<container>/<id> in the pool)
    r#"
    CREATE TABLE snapshots (
        container     TEXT NOT NULL REFERENCES containers(name) ON DELETE CASCADE,
        name          TEXT NOT NULL,
        id            TEXT NOT NULL,
        created_at    INTEGER NOT NULL,
        stateful      INTEGER NOT NULL DEFAULT 0,
        size          INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (container, name)
    ) STRICT;
    "#,
];

/// Everything loaded at startup.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// All containers.
    pub containers: Vec<ContainerRecord>,
    /// All images with their aliases.
    pub images: Vec<ImageRecord>,
    /// All snapshots, by container then creation time.
    pub snapshots: Vec<SnapshotRecord>,
}

/// Where the manifests of [`crate::backup`] live: the pool (container volumes and their
/// snapshots) and `<state>/images` (kept image archives).
#[derive(Debug, Clone)]
pub struct Layout {
    /// The storage pool.
    pub pool: berth_runtime::storage::Pool,
    /// `<state>/images`.
    pub images: PathBuf,
}

/// The synchronous database.
#[derive(Debug)]
pub struct Db {
    conn: Connection,
    /// Set: every change of a row keeps its manifest current.
    layout: Option<Layout>,
}

/// Why an existing database file cannot be used. berthd never replaces such a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// Not an SQLite database, or one that fails SQLite's integrity check.
    Corrupt(String),
    /// Written by a newer berth: its schema is ahead of this one's.
    Newer {
        /// The file's schema version.
        found: i64,
        /// The newest this berth knows.
        known: i64,
    },
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Corrupt(why) => write!(f, "the database is damaged: {why}"),
            Unusable::Newer { found, known } => write!(
                f,
                "the database is at schema version {found}, newer than this berth's ({known})"
            ),
        }
    }
}

/// The SQLite file header.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

impl Db {
    /// Checks an existing database file without changing it (opened read-only): an SQLite
    /// database that passes `PRAGMA quick_check`, at a schema version this berth knows. A
    /// missing or empty file is fine (it is created).
    pub fn check_file(path: &Path) -> std::result::Result<(), Unusable> {
        use std::io::Read;
        let corrupt = |why: String| Unusable::Corrupt(why);
        let mut head = [0u8; 16];
        match std::fs::File::open(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(corrupt(format!("open {}: {e}", path.display()))),
            Ok(mut f) => {
                let mut n = 0;
                while n < head.len() {
                    match f.read(&mut head[n..]) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) => return Err(corrupt(format!("read {}: {e}", path.display()))),
                    }
                }
                if n == 0 {
                    return Ok(());
                }
                if n < head.len() || &head != SQLITE_MAGIC {
                    return Err(corrupt("not an SQLite database".into()));
                }
            }
        }
        // without a write-ahead log, as immutable: SQLite then makes no -wal or -shm file
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
            Connection::open_with_flags(path, flags)
        } else {
            let mut uri = String::from("file:");
            for c in path.to_string_lossy().chars() {
                match c {
                    '%' | '?' | '#' => uri.push_str(&format!("%{:02X}", c as u32)),
                    c => uri.push(c),
                }
            }
            uri.push_str("?immutable=1");
            Connection::open_with_flags(uri, flags | rusqlite::OpenFlags::SQLITE_OPEN_URI)
        }
        .map_err(|e| corrupt(e.to_string()))?;
        let problems: Vec<String> = conn
            .prepare("PRAGMA quick_check")
            .and_then(|mut st| {
                st.query_map([], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(|e| corrupt(e.to_string()))?;
        if problems != ["ok"] {
            let mut why = problems.into_iter().take(3).collect::<Vec<_>>().join("; ");
            if why.is_empty() {
                why = "the integrity check answered nothing".into();
            }
            return Err(corrupt(why));
        }
        let found: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| corrupt(e.to_string()))?;
        let known = MIGRATIONS.len() as i64;
        if found > known {
            return Err(Unusable::Newer { found, known });
        }
        Ok(())
    }

    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Db> {
        // root only (SQLite gives the -wal and -shm files the database's mode)
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| Error::Store(format!("open {}: {e}", path.display())))?;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::Store(format!("chmod {}: {e}", path.display())))?;
        }
        let conn = Connection::open(path)?;
        Self::setup(conn)
    }

    /// An in-memory database (tests).
    pub fn open_in_memory() -> Result<Db> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(conn: Connection) -> Result<Db> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        let mut db = Db { conn, layout: None };
        db.migrate()?;
        Ok(db)
    }

    fn migrate(&mut self) -> Result<()> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version as usize > MIGRATIONS.len() {
            return Err(Error::Store(format!(
                "the database is at schema version {version}, newer than this berth ({}); upgrade berth",
                MIGRATIONS.len()
            )));
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(m)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// From now on, every change of a row keeps its manifest current (see
    /// [`crate::backup`]).
    pub fn set_layout(&mut self, layout: Layout) {
        self.layout = Some(layout);
    }

    /// Where the manifests live, once set.
    pub fn layout(&self) -> Option<&Layout> {
        self.layout.as_ref()
    }

    /// Rewrites a container's manifest from its rows, when its volume exists and no create
    /// or delete is pending. A failure is logged: the row stays the truth meanwhile, and the
    /// next change (or berthd's next start) writes the manifest again.
    fn refresh_container(&self, name: &str) {
        if let Some(l) = &self.layout
            && let Err(e) = self.write_container_backup(l, name)
        {
            tracing::warn!(container = %name, "cannot update backup.yaml: {e}");
        }
    }

    fn write_container_backup(&self, l: &Layout, name: &str) -> Result<bool> {
        let Some(c) = self.container(name)? else {
            return Ok(false);
        };
        let dir = l.pool.container_volume(name);
        if c.pending != Pending::None || !dir.is_dir() {
            return Ok(false);
        }
        let snaps = self.snapshots(Some(name))?;
        let path = dir.join(backup::FILE);
        backup::to_yaml(&backup::ContainerBackup::of(&c, &snaps))
            .and_then(|y| backup::write_if_changed(&path, &y))
            .map_err(|e| Error::Store(format!("write {}: {e}", path.display())))
    }

    /// Rewrites an image's manifest from its row (see [`Db::refresh_container`]).
    fn refresh_image(&self, fingerprint: &str) {
        if let Some(l) = &self.layout
            && let Err(e) = self.write_image_backup(l, fingerprint)
        {
            tracing::warn!(image = %fingerprint, "cannot update backup.yaml: {e}");
        }
    }

    fn write_image_backup(&self, l: &Layout, fingerprint: &str) -> Result<bool> {
        let Some(img) = self.images_where(Some(fingerprint))?.into_iter().next() else {
            return Ok(false);
        };
        let dir = l.images.join(fingerprint);
        if !dir.is_dir() {
            return Ok(false);
        }
        let path = dir.join(backup::FILE);
        backup::to_yaml(&backup::ImageBackup::of(&img))
            .and_then(|y| backup::write_if_changed(&path, &y))
            .map_err(|e| Error::Store(format!("write {}: {e}", path.display())))
    }

    /// Writes the manifests that are missing or stale (rows an older berth wrote, or a write
    /// that failed) of at most `limit` containers or images from `from` on; returns how many
    /// it wrote and where the next step starts (`None` when every one was looked at).
    pub fn refresh_backups(
        &self,
        from: &BackupCursor,
        limit: usize,
    ) -> Result<(usize, Option<BackupCursor>)> {
        let Some(l) = &self.layout else {
            return Ok((0, None));
        };
        let (table, key, after) = match from {
            BackupCursor::Containers(a) => ("containers", "name", a),
            BackupCursor::Images(a) => ("images", "fingerprint", a),
        };
        let keys: Vec<String> = self
            .conn
            .prepare_cached(&format!(
                "SELECT {key} FROM {table} WHERE ?1 IS NULL OR {key} > ?1 ORDER BY {key} LIMIT ?2"
            ))?
            .query_map(params![after, limit as i64], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut n = 0;
        for k in &keys {
            n += usize::from(match from {
                BackupCursor::Containers(_) => self.write_container_backup(l, k)?,
                BackupCursor::Images(_) => self.write_image_backup(l, k)?,
            });
        }
        let next = match (from, keys.last()) {
            (_, Some(last)) if keys.len() == limit => Some(from.after(last)),
            (BackupCursor::Containers(_), _) => Some(BackupCursor::Images(None)),
            (BackupCursor::Images(_), _) => None,
        };
        Ok((n, next))
    }

    /// The image an alias points at.
    fn alias_owner(&self, alias: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT image FROM image_aliases WHERE name=?1",
                params![alias],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The schema version.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// Loads every container and image.
    pub fn load(&self) -> Result<Loaded> {
        Ok(Loaded {
            containers: self.containers_where(None)?,
            images: self.images_where(None)?,
            snapshots: self.snapshots(None)?,
        })
    }

    /// Every container, or the one named.
    fn containers_where(&self, name: Option<&str>) -> Result<Vec<ContainerRecord>> {
        let mut out = Vec::new();
        let mut st = self.conn.prepare(
            "SELECT name, image, status, init_pid, created_at, ephemeral, profiles, config, architecture, pending
             FROM containers WHERE ?1 IS NULL OR name = ?1 ORDER BY name",
        )?;
        let rows = st.query_map(params![name], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, bool>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, String>(8)?,
                r.get::<_, String>(9)?,
            ))
        })?;
        for row in rows {
            let (name, image, status, pid, created, eph, profiles, config, arch, pending) = row?;
            out.push(ContainerRecord {
                status: Status::parse(&status).unwrap_or(Status::Error),
                init_pid: pid.max(0) as u32,
                created_at_us: created.max(0) as u64,
                ephemeral: eph,
                profiles: serde_json::from_str(&profiles)
                    .map_err(|e| Error::Store(format!("profiles of {name}: {e}")))?,
                config: serde_json::from_str(&config)
                    .map_err(|e| Error::Store(format!("config of {name}: {e}")))?,
                architecture: arch,
                pending: Pending::parse(&pending),
                name,
                image,
            });
        }
        Ok(out)
    }

    /// Every image, or the one with this fingerprint, with their aliases.
    fn images_where(&self, fingerprint: Option<&str>) -> Result<Vec<ImageRecord>> {
        let mut out = Vec::new();
        let mut st = self.conn.prepare(
            "SELECT fingerprint, architecture, size, created_at, uploaded_at, last_used_at, properties, split
             FROM images WHERE ?1 IS NULL OR fingerprint = ?1 ORDER BY fingerprint",
        )?;
        let rows = st.query_map(params![fingerprint], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, bool>(7)?,
            ))
        })?;
        for row in rows {
            let (fp, arch, size, created, uploaded, used, props, split) = row?;
            out.push(ImageRecord {
                properties: serde_json::from_str(&props)
                    .map_err(|e| Error::Store(format!("properties of {fp}: {e}")))?,
                aliases: Vec::new(),
                architecture: arch,
                size: size.max(0) as u64,
                created_at_us: created.max(0) as u64,
                uploaded_at_us: uploaded.max(0) as u64,
                last_used_at_us: used.max(0) as u64,
                split,
                fingerprint: fp,
            });
        }
        let mut st = self.conn.prepare(
            "SELECT name, image FROM image_aliases WHERE ?1 IS NULL OR image = ?1 ORDER BY name",
        )?;
        let rows = st.query_map(params![fingerprint], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        for row in rows {
            let (alias, fp) = row?;
            if let Some(img) = out.iter_mut().find(|i| i.fingerprint == fp) {
                img.aliases.push(alias);
            }
        }
        Ok(out)
    }

    /// One container's record.
    pub fn container(&self, name: &str) -> Result<Option<ContainerRecord>> {
        Ok(self.containers_where(Some(name))?.into_iter().next())
    }

    /// The snapshots of one container (or of all), oldest first.
    pub fn snapshots(&self, container: Option<&str>) -> Result<Vec<SnapshotRecord>> {
        let mut st = self.conn.prepare(
            "SELECT container, name, id, created_at, stateful, size FROM snapshots
             WHERE ?1 IS NULL OR container = ?1 ORDER BY container, created_at, name",
        )?;
        let rows = st.query_map(params![container], |r| {
            Ok(SnapshotRecord {
                container: r.get(0)?,
                name: r.get(1)?,
                id: r.get(2)?,
                created_at_us: r.get::<_, i64>(3)?.max(0) as u64,
                stateful: r.get(4)?,
                size: r.get::<_, i64>(5)?.max(0) as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Inserts a snapshot; fails if the container already has one of that name.
    pub fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        let n = self.conn.execute(
            "INSERT INTO snapshots (container, name, id, created_at, stateful, size) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(container, name) DO NOTHING",
            params![s.container, s.name, s.id, s.created_at_us as i64, s.stateful, s.size as i64],
        )?;
        if n == 0 {
            return Err(Error::AlreadyExists {
                kind: "snapshot",
                name: format!("{}/{}", s.container, s.name),
            });
        }
        self.refresh_container(&s.container);
        Ok(())
    }

    /// Renames a snapshot (its files keep their id).
    pub fn rename_snapshot(&self, container: &str, from: &str, to: &str) -> Result<()> {
        let taken: Option<String> = self
            .conn
            .query_row(
                "SELECT name FROM snapshots WHERE container=?1 AND name=?2",
                params![container, to],
                |r| r.get(0),
            )
            .optional()?;
        if taken.is_some() {
            return Err(Error::AlreadyExists {
                kind: "snapshot",
                name: format!("{container}/{to}"),
            });
        }
        let n = self.conn.execute(
            "UPDATE snapshots SET name=?3 WHERE container=?1 AND name=?2",
            params![container, from, to],
        )?;
        if n == 0 {
            return Err(Error::NoSuchSnapshot {
                container: container.to_string(),
                name: from.to_string(),
            });
        }
        self.refresh_container(container);
        Ok(())
    }

    /// Removes a snapshot's row. Missing is fine.
    pub fn delete_snapshot(&self, container: &str, name: &str) -> Result<()> {
        self.conn.execute(
            "DELETE FROM snapshots WHERE container=?1 AND name=?2",
            params![container, name],
        )?;
        self.refresh_container(container);
        Ok(())
    }

    /// Inserts a new container; fails if the name is taken.
    pub fn insert_container(&self, c: &ContainerRecord) -> Result<()> {
        let n = self.write_container(
            "INSERT INTO containers (name, image, status, init_pid, created_at, ephemeral, profiles, config, architecture, pending)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT(name) DO NOTHING",
            c,
        )?;
        if n == 0 {
            return Err(Error::AlreadyExists {
                kind: "container",
                name: c.name.clone(),
            });
        }
        self.refresh_container(&c.name);
        Ok(())
    }

    /// Writes a container's whole record (it must exist).
    pub fn update_container(&self, c: &ContainerRecord) -> Result<()> {
        let n = self.write_container(
            "UPDATE containers SET image=?2, status=?3, init_pid=?4, created_at=?5, ephemeral=?6, profiles=?7,
             config=?8, architecture=?9, pending=?10 WHERE name=?1",
            c,
        )?;
        if n == 0 {
            return Err(Error::NoSuchContainer(c.name.clone()));
        }
        self.refresh_container(&c.name);
        Ok(())
    }

    /// Runs `sql` with a record's columns as ?1..?10; returns the rows changed.
    fn write_container(&self, sql: &str, c: &ContainerRecord) -> Result<usize> {
        Ok(self.conn.execute(
            sql,
            params![
                c.name,
                c.image,
                c.status.as_str(),
                c.init_pid as i64,
                c.created_at_us as i64,
                c.ephemeral,
                json(&c.profiles),
                json(&c.config),
                c.architecture,
                c.pending.as_str()
            ],
        )?)
    }

    /// Removes a container's row. Missing is fine.
    pub fn delete_container(&self, name: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM containers WHERE name=?1", params![name])?;
        Ok(())
    }

    /// Inserts an image and its aliases in one transaction. An alias already pointing at
    /// another image is refused and nothing is written.
    pub fn insert_image(&mut self, img: &ImageRecord) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO images (fingerprint, architecture, size, created_at, uploaded_at, last_used_at, properties, split)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                img.fingerprint,
                img.architecture,
                img.size as i64,
                img.created_at_us as i64,
                img.uploaded_at_us as i64,
                img.last_used_at_us as i64,
                json(&img.properties),
                img.split
            ],
        )?;
        for a in &img.aliases {
            let owner: Option<String> = tx
                .query_row(
                    "SELECT image FROM image_aliases WHERE name=?1",
                    params![a],
                    |r| r.get(0),
                )
                .optional()?;
            if owner.is_some() {
                return Err(Error::AlreadyExists {
                    kind: "image alias",
                    name: a.clone(),
                });
            }
            tx.execute(
                "INSERT INTO image_aliases (name, image) VALUES (?1, ?2)",
                params![a, img.fingerprint],
            )?;
        }
        tx.commit()?;
        self.refresh_image(&img.fingerprint);
        Ok(())
    }

    /// Updates an image's properties and use time.
    pub fn update_image(&self, img: &ImageRecord) -> Result<()> {
        self.conn.execute(
            "UPDATE images SET properties=?2, last_used_at=?3 WHERE fingerprint=?1",
            params![
                img.fingerprint,
                json(&img.properties),
                img.last_used_at_us as i64
            ],
        )?;
        self.refresh_image(&img.fingerprint);
        Ok(())
    }

    /// Removes an alias. Missing is fine.
    pub fn delete_alias(&self, alias: &str) -> Result<()> {
        let owner = self.alias_owner(alias)?;
        self.conn
            .execute("DELETE FROM image_aliases WHERE name=?1", params![alias])?;
        if let Some(fp) = owner {
            self.refresh_image(&fp);
        }
        Ok(())
    }

    /// Points `alias` at `fingerprint` (moving it if it pointed elsewhere).
    pub fn set_alias(&self, alias: &str, fingerprint: &str) -> Result<()> {
        let owner = self.alias_owner(alias)?;
        self.conn.execute(
            "INSERT INTO image_aliases (name, image) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET image=?2",
            params![alias, fingerprint],
        )?;
        if let Some(fp) = owner.filter(|o| o != fingerprint) {
            self.refresh_image(&fp);
        }
        self.refresh_image(fingerprint);
        Ok(())
    }

    /// Removes an image and its aliases.
    pub fn delete_image(&self, fingerprint: &str) -> Result<()> {
        self.conn.execute(
            "DELETE FROM images WHERE fingerprint=?1",
            params![fingerprint],
        )?;
        Ok(())
    }

    /// A setting.
    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM settings WHERE key=?1",
                params![key],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Sets a setting.
    pub fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value=?2",
            params![key, value],
        )?;
        Ok(())
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// Where a manifest refresh goes on: after this container name or image fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupCursor {
    /// The containers after this name (all of them with `None`), then every image.
    Containers(Option<String>),
    /// The images after this fingerprint.
    Images(Option<String>),
}

impl BackupCursor {
    /// The same table, after `key`.
    fn after(&self, key: &str) -> BackupCursor {
        match self {
            BackupCursor::Containers(_) => BackupCursor::Containers(Some(key.to_owned())),
            BackupCursor::Images(_) => BackupCursor::Images(Some(key.to_owned())),
        }
    }
}

/// How many manifests one step of the background refresh looks at: a step holds the store
/// for a few milliseconds, so calls that need it wait at most that long.
const REFRESH_STEP: usize = 32;

/// Messages of the Store actor. Every variant but `RefreshBackups` replies with the
/// operation's result.
#[derive(Debug)]
pub enum StoreMsg {
    /// Load everything (startup).
    Load(RpcReplyPort<Result<Loaded>>),
    /// Read one container's record.
    Container(String, RpcReplyPort<Result<Option<ContainerRecord>>>),
    /// Insert a container (name must be free).
    InsertContainer(Box<ContainerRecord>, RpcReplyPort<Result<()>>),
    /// Write a container's record.
    UpdateContainer(Box<ContainerRecord>, RpcReplyPort<Result<()>>),
    /// Delete a container's row.
    DeleteContainer(String, RpcReplyPort<Result<()>>),
    /// Insert an image with its aliases.
    InsertImage(Box<ImageRecord>, RpcReplyPort<Result<()>>),
    /// Update an image's properties and use time.
    UpdateImage(Box<ImageRecord>, RpcReplyPort<Result<()>>),
    /// Delete an image.
    DeleteImage(String, RpcReplyPort<Result<()>>),
    /// Point an alias at an image.
    SetAlias(String, String, RpcReplyPort<Result<()>>),
    /// Remove an alias.
    DeleteAlias(String, RpcReplyPort<Result<()>>),
    /// Read a setting.
    Setting(String, RpcReplyPort<Result<Option<String>>>),
    /// Write a setting.
    SetSetting(String, String, RpcReplyPort<Result<()>>),
    /// Snapshots of one container, or of all.
    Snapshots(Option<String>, RpcReplyPort<Result<Vec<SnapshotRecord>>>),
    /// Insert a snapshot.
    InsertSnapshot(Box<SnapshotRecord>, RpcReplyPort<Result<()>>),
    /// Rename a snapshot: container, from, to.
    RenameSnapshot(String, String, String, RpcReplyPort<Result<()>>),
    /// Delete a snapshot's row.
    DeleteSnapshot(String, String, RpcReplyPort<Result<()>>),
    /// Register the unrecorded volumes and images of the pools (see [`crate::recover`]).
    Recover(RpcReplyPort<Result<crate::recover::Report>>),
    /// One step of bringing every manifest up to date, off berthd's start path; the actor
    /// sends itself the next step, so other requests are served between steps. Carries how
    /// many were written so far.
    RefreshBackups(BackupCursor, usize),
}

/// The Store actor.
#[derive(Debug)]
pub struct StoreActor;

#[ractor::async_trait]
impl Actor for StoreActor {
    type Msg = StoreMsg;
    type State = Db;
    type Arguments = Db;

    async fn pre_start(&self, _: ActorRef<StoreMsg>, db: Db) -> Result<Db, ActorProcessingErr> {
        Ok(db)
    }

    async fn handle(
        &self,
        me: ActorRef<StoreMsg>,
        msg: StoreMsg,
        db: &mut Db,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            StoreMsg::Load(r) => drop(r.send(db.load())),
            StoreMsg::Container(n, r) => drop(r.send(db.container(&n))),
            StoreMsg::InsertContainer(c, r) => drop(r.send(db.insert_container(&c))),
            StoreMsg::UpdateContainer(c, r) => drop(r.send(db.update_container(&c))),
            StoreMsg::DeleteContainer(n, r) => drop(r.send(db.delete_container(&n))),
            StoreMsg::InsertImage(i, r) => drop(r.send(db.insert_image(&i))),
            StoreMsg::UpdateImage(i, r) => drop(r.send(db.update_image(&i))),
            StoreMsg::DeleteImage(f, r) => drop(r.send(db.delete_image(&f))),
            StoreMsg::SetAlias(a, f, r) => drop(r.send(db.set_alias(&a, &f))),
            StoreMsg::DeleteAlias(a, r) => drop(r.send(db.delete_alias(&a))),
            StoreMsg::Setting(k, r) => drop(r.send(db.setting(&k))),
            StoreMsg::SetSetting(k, v, r) => drop(r.send(db.set_setting(&k, &v))),
            StoreMsg::Snapshots(c, r) => drop(r.send(db.snapshots(c.as_deref()))),
            StoreMsg::InsertSnapshot(sn, r) => drop(r.send(db.insert_snapshot(&sn))),
            StoreMsg::RenameSnapshot(c, f, t, r) => drop(r.send(db.rename_snapshot(&c, &f, &t))),
            StoreMsg::DeleteSnapshot(c, n, r) => drop(r.send(db.delete_snapshot(&c, &n))),
            StoreMsg::Recover(r) => drop(r.send(crate::recover::recover(db))),
            StoreMsg::RefreshBackups(from, so_far) => {
                match db.refresh_backups(&from, REFRESH_STEP) {
                    Ok((n, Some(next))) => {
                        me.send_message(StoreMsg::RefreshBackups(next, so_far + n))?
                    }
                    Ok((n, None)) if so_far + n > 0 => {
                        tracing::info!(
                            "wrote {} missing or stale backup.yaml manifests",
                            so_far + n
                        )
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!("cannot bring the backup.yaml manifests up to date: {e}")
                    }
                }
            }
        }
        Ok(())
    }
}

/// A handle on the Store actor.
#[derive(Debug, Clone)]
pub struct Store {
    actor: ActorRef<StoreMsg>,
}

macro_rules! store_call {
    ($self:ident, $variant:ident $(, $arg:expr)*) => {
        match ractor::call!($self.actor, StoreMsg::$variant $(, $arg)*) {
            Ok(r) => r,
            Err(e) => Err(Error::Store(format!("the store actor is gone: {e}"))),
        }
    };
}

impl Store {
    /// Wraps a spawned Store actor.
    pub fn new(actor: ActorRef<StoreMsg>) -> Store {
        Store { actor }
    }

    /// The actor.
    pub fn actor(&self) -> &ActorRef<StoreMsg> {
        &self.actor
    }

    /// Loads everything.
    pub async fn load(&self) -> Result<Loaded> {
        store_call!(self, Load)
    }

    /// Brings every missing or stale manifest up to date in the background, a few at a time
    /// between the store's other requests (berthd asks once it serves).
    pub fn refresh_backups_in_background(&self) {
        let _ = self
            .actor
            .send_message(StoreMsg::RefreshBackups(BackupCursor::Containers(None), 0));
    }

    /// One container's record.
    pub async fn container(&self, name: &str) -> Result<Option<ContainerRecord>> {
        store_call!(self, Container, name.to_string())
    }

    /// Inserts a container.
    pub async fn insert_container(&self, c: &ContainerRecord) -> Result<()> {
        store_call!(self, InsertContainer, Box::new(c.clone()))
    }

    /// Writes a container's record.
    pub async fn update_container(&self, c: &ContainerRecord) -> Result<()> {
        store_call!(self, UpdateContainer, Box::new(c.clone()))
    }

    /// Deletes a container's row.
    pub async fn delete_container(&self, name: &str) -> Result<()> {
        store_call!(self, DeleteContainer, name.to_string())
    }

    /// Inserts an image.
    pub async fn insert_image(&self, i: &ImageRecord) -> Result<()> {
        store_call!(self, InsertImage, Box::new(i.clone()))
    }

    /// Updates an image.
    pub async fn update_image(&self, i: &ImageRecord) -> Result<()> {
        store_call!(self, UpdateImage, Box::new(i.clone()))
    }

    /// Deletes an image.
    pub async fn delete_image(&self, fp: &str) -> Result<()> {
        store_call!(self, DeleteImage, fp.to_string())
    }

    /// Points an alias at an image.
    pub async fn set_alias(&self, alias: &str, fp: &str) -> Result<()> {
        store_call!(self, SetAlias, alias.to_string(), fp.to_string())
    }

    /// Removes an alias.
    pub async fn delete_alias(&self, alias: &str) -> Result<()> {
        store_call!(self, DeleteAlias, alias.to_string())
    }

    /// Reads a setting.
    pub async fn setting(&self, key: &str) -> Result<Option<String>> {
        store_call!(self, Setting, key.to_string())
    }

    /// Writes a setting.
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        store_call!(self, SetSetting, key.to_string(), value.to_string())
    }

    /// Snapshots of a container, oldest first.
    pub async fn snapshots(&self, container: &str) -> Result<Vec<SnapshotRecord>> {
        store_call!(self, Snapshots, Some(container.to_string()))
    }

    /// Every snapshot.
    pub async fn all_snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        store_call!(self, Snapshots, None)
    }

    /// Inserts a snapshot.
    pub async fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        store_call!(self, InsertSnapshot, Box::new(s.clone()))
    }

    /// Renames a snapshot.
    pub async fn rename_snapshot(&self, container: &str, from: &str, to: &str) -> Result<()> {
        store_call!(
            self,
            RenameSnapshot,
            container.to_string(),
            from.to_string(),
            to.to_string()
        )
    }

    /// Registers the unrecorded volumes and images of the pools.
    pub async fn recover(&self) -> Result<crate::recover::Report> {
        store_call!(self, Recover)
    }

    /// Deletes a snapshot's row.
    pub async fn delete_snapshot(&self, container: &str, name: &str) -> Result<()> {
        store_call!(
            self,
            DeleteSnapshot,
            container.to_string(),
            name.to_string()
        )
    }
}

/// Parses a map stored as JSON (used by callers holding raw settings).
pub fn parse_map(s: &str) -> BTreeMap<String, String> {
    serde_json::from_str(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn rec(name: &str) -> ContainerRecord {
        ContainerRecord {
            name: name.into(),
            image: "f".repeat(64),
            status: Status::Stopped,
            init_pid: 0,
            created_at_us: 1,
            ephemeral: false,
            profiles: vec!["default".into()],
            config: BTreeMap::from([("user.a".into(), "b".into())]),
            architecture: "x86_64".into(),
            pending: Pending::Create,
        }
    }

    #[test]
    fn containers_round_trip() {
        let db = Db::open_in_memory().unwrap();
        assert_eq!(db.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let mut c = rec("c1");
        db.insert_container(&c).unwrap();
        assert!(matches!(
            db.insert_container(&c),
            Err(Error::AlreadyExists { .. })
        ));
        c.status = Status::Running;
        c.init_pid = 42;
        c.pending = Pending::None;
        db.update_container(&c).unwrap();
        assert_eq!(db.load().unwrap().containers, vec![c.clone()]);
        db.delete_container("c1").unwrap();
        assert!(db.load().unwrap().containers.is_empty());
        assert!(matches!(
            db.update_container(&c),
            Err(Error::NoSuchContainer(_))
        ));
    }

    #[test]
    fn images_and_aliases() {
        let mut db = Db::open_in_memory().unwrap();
        let img = ImageRecord {
            fingerprint: "a".repeat(64),
            aliases: vec!["busybox".into()],
            properties: BTreeMap::from([("os".into(), "busybox".into())]),
            architecture: "x86_64".into(),
            size: 10,
            created_at_us: 1,
            uploaded_at_us: 2,
            last_used_at_us: 0,
            split: true,
        };
        db.insert_image(&img).unwrap();
        let mut other = img.clone();
        other.fingerprint = "b".repeat(64);
        // the alias is taken: nothing of `other` is written
        assert!(matches!(
            db.insert_image(&other),
            Err(Error::AlreadyExists { .. })
        ));
        let loaded = db.load().unwrap();
        assert_eq!(loaded.images, vec![img.clone()]);
        db.delete_image(&img.fingerprint).unwrap();
        assert!(db.load().unwrap().images.is_empty());
    }

    #[test]
    fn damaged_and_newer_databases_are_found_without_a_change() {
        let dir = std::env::temp_dir().join(format!("berth-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        assert_eq!(Db::check_file(&path), Ok(()), "a missing file is made");
        {
            let db = Db::open(&path).unwrap();
            for i in 0..200 {
                db.insert_container(&rec(&format!("c{i}"))).unwrap();
            }
        }
        assert_eq!(Db::check_file(&path), Ok(()));
        for side in ["t.db-wal", "t.db-shm"] {
            assert!(!dir.join(side).exists(), "the check made {side}");
        }
        // a page of the containers' table overwritten
        let mut bytes = std::fs::read(&path).unwrap();
        let good = bytes.clone();
        let page = 4096;
        assert!(bytes.len() > 3 * page, "{}", bytes.len());
        for b in &mut bytes[page + 8..2 * page] {
            *b = 0x5a;
        }
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(Db::check_file(&path), Err(Unusable::Corrupt(_))));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "the check changed the file"
        );
        std::fs::write(&path, b"not a database at all, but long enough").unwrap();
        assert!(matches!(Db::check_file(&path), Err(Unusable::Corrupt(_))));
        std::fs::write(&path, &good).unwrap();
        {
            let db = Db::open(&path).unwrap();
            db.conn.pragma_update(None, "user_version", 99).unwrap();
        }
        assert_eq!(
            Db::check_file(&path),
            Err(Unusable::Newer {
                found: 99,
                known: MIGRATIONS.len() as i64
            })
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reopen_keeps_data_and_refuses_newer_schema() {
        let dir = std::env::temp_dir().join(format!("berth-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        {
            let db = Db::open(&path).unwrap();
            db.insert_container(&rec("keep")).unwrap();
            db.set_setting("k", "v").unwrap();
        }
        {
            let db = Db::open(&path).unwrap();
            assert_eq!(db.load().unwrap().containers.len(), 1);
            assert_eq!(db.setting("k").unwrap().as_deref(), Some("v"));
            db.conn.pragma_update(None, "user_version", 99).unwrap();
        }
        assert!(matches!(Db::open(&path), Err(Error::Store(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod refresh_tests {
    use super::*;
    use berth_runtime::storage::{DriverKind, Pool, PoolConfig};

    /// A pool of 70 containers (more than two refresh steps) with manifests, and a store
    /// whose rows say something the manifests do not.
    fn stale_pool(tag: &str) -> (std::path::PathBuf, Db, Vec<String>) {
        let dir = std::env::temp_dir().join(format!("berth-refresh-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pool = Pool::new(PoolConfig {
            driver: DriverKind::Dir,
            path: dir.join("pool"),
            source: None,
        });
        pool.mount().unwrap();
        let layout = Layout {
            pool: pool.clone(),
            images: dir.join("images"),
        };
        let mut db = Db::open_in_memory().unwrap();
        db.set_layout(layout);
        let names: Vec<String> = (0..70).map(|i| format!("c{i:03}")).collect();
        for n in &names {
            std::fs::create_dir_all(pool.rootfs(n)).unwrap();
            let mut c = super::tests::rec(n);
            c.config = BTreeMap::from([("user.a".into(), "old".into())]);
            db.insert_container(&c).unwrap();
            c.pending = Pending::None;
            db.update_container(&c).unwrap();
        }
        // an older berth changed the rows and not the manifests (or its writes failed): the
        // first, one at a step's edge, the last; and one manifest is gone
        for (i, n) in names.iter().enumerate() {
            let path = pool.container_volume(n).join(crate::backup::FILE);
            match i {
                0 | 31 | 32 | 69 => {
                    let y = std::fs::read_to_string(&path).unwrap();
                    std::fs::write(&path, y.replace("old", "older")).unwrap();
                }
                40 => std::fs::remove_file(&path).unwrap(),
                _ => {}
            }
        }
        (dir, db, names)
    }

    fn all_current(dir: &std::path::Path, names: &[String]) -> bool {
        names.iter().all(|n| {
            std::fs::read_to_string(
                dir.join("pool/containers")
                    .join(n)
                    .join(crate::backup::FILE),
            )
            .is_ok_and(|y| y.contains("old") && !y.contains("older"))
        })
    }

    #[test]
    fn the_refresh_goes_step_by_step_and_misses_no_manifest() {
        let (dir, db, names) = stale_pool("steps");
        assert!(!all_current(&dir, &names));
        let refresh_to_end = || {
            let mut at = Some(BackupCursor::Containers(None));
            let (mut steps, mut wrote) = (0, 0);
            while let Some(from) = at {
                let (n, next) = db.refresh_backups(&from, REFRESH_STEP).unwrap();
                wrote += n;
                steps += 1;
                at = next;
            }
            (steps, wrote)
        };
        // 32 + 32 + 6 containers, then the (empty) images
        assert_eq!(refresh_to_end(), (4, 5));
        assert!(all_current(&dir, &names));
        assert_eq!(refresh_to_end(), (4, 0));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn the_store_actor_refreshes_in_the_background_and_answers_meanwhile() {
        let (dir, db, names) = stale_pool("actor");
        let (actor, handle) = Actor::spawn(None, StoreActor, db).await.unwrap();
        let store = Store::new(actor.clone());
        store.refresh_backups_in_background();
        // calls are served between the steps
        assert_eq!(store.container("c050").await.unwrap().unwrap().name, "c050");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !all_current(&dir, &names) {
            assert!(
                std::time::Instant::now() < deadline,
                "manifests not refreshed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        actor.stop(None);
        handle.await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
