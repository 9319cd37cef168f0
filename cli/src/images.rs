//! `berth image …`: list, info, import, export, build, delete, aliases and properties.

use crate::{Fail, Format, R, parse_kv, progress, table};
use berth_interfaces::client::{ImageProxy, ManagerProxy};
use berth_interfaces::wire::ImageEntry;
use clap::Subcommand;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use zbus::proxy::CacheProperties;
use zbus::{Connection, OwnedObjectPath, Variant};

/// `berth image` subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum ImageCmd {
    /// List images; FILTERs are KEY=VALUE on properties, or text matched against aliases,
    /// fingerprints and descriptions.
    #[command(alias = "ls")]
    List {
        /// Filters (all must match).
        filters: Vec<String>,
        /// Output format.
        #[arg(long, short = 'f', value_enum, default_value = "table")]
        format: Format,
    },
    /// Show an image.
    Info {
        /// Alias, fingerprint or prefix.
        reference: String,
    },
    /// Import an LXD/Incus image: a unified tarball, or a split image's metadata tarball and
    /// rootfs (tarball or squashfs).
    Import {
        /// Image file (or the metadata file of a split image).
        file: PathBuf,
        /// Rootfs file of a split image.
        rootfs: Option<PathBuf>,
        /// Alias, repeatable.
        #[arg(long)]
        alias: Vec<String>,
        /// Property KEY=VALUE, repeatable.
        #[arg(long = "property", value_name = "KEY=VALUE")]
        property: Vec<String>,
    },
    /// Export an image, byte for byte as imported, into a directory (named as Incus names
    /// them: FP.tar.xz, or meta-FP.tar.xz and FP.squashfs).
    Export {
        /// Alias, fingerprint or prefix.
        reference: String,
        /// Target directory (default: the current one).
        dir: Option<PathBuf>,
        /// Overwrite files of the same names.
        #[arg(long)]
        force: bool,
    },
    /// Build an image from a built-in recipe (busybox).
    Build {
        /// Recipe.
        recipe: String,
        /// Alias to give it, repeatable.
        #[arg(long)]
        alias: Vec<String>,
    },
    /// Delete images (containers made from them keep working).
    #[command(alias = "rm")]
    Delete {
        /// Aliases, fingerprints or prefixes.
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Manage aliases.
    #[command(subcommand)]
    Alias(AliasCmd),
    /// Set an image property.
    SetProperty {
        /// Alias, fingerprint or prefix.
        reference: String,
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// Remove an image property.
    UnsetProperty {
        /// Alias, fingerprint or prefix.
        reference: String,
        /// Key.
        key: String,
    },
}

/// `berth image alias` subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum AliasCmd {
    /// Point a new alias at an image.
    Create {
        /// Alias.
        alias: String,
        /// Alias, fingerprint or prefix of the image.
        reference: String,
    },
    /// Delete an alias.
    #[command(alias = "rm")]
    Delete {
        /// Alias.
        alias: String,
    },
    /// Rename an alias.
    Rename {
        /// Current name.
        from: String,
        /// New name.
        to: String,
    },
    /// List aliases.
    #[command(alias = "ls")]
    List,
}

/// An Image object.
pub(crate) async fn image_at(conn: &Connection, path: OwnedObjectPath) -> R<ImageProxy<'_>> {
    Ok(ImageProxy::builder(conn)
        .path(path)
        .cache_properties(CacheProperties::No)
        .build()
        .await?)
}

async fn image_ref<'a>(
    conn: &'a Connection,
    m: &ManagerProxy<'_>,
    reference: &str,
) -> R<ImageProxy<'a>> {
    let path = m.get_image(reference).await?;
    image_at(conn, path).await
}

pub(crate) fn open(p: &Path) -> R<std::fs::File> {
    std::fs::File::open(p).map_err(|e| Fail(format!("cannot open {}: {e}", p.display()), 1))
}

/// The extension Incus gives a file with these first bytes.
fn extension(head: &[u8]) -> &'static str {
    if head.starts_with(b"hsqs") {
        "squashfs"
    } else if head.starts_with(&[0x1f, 0x8b]) {
        "tar.gz"
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        "tar.xz"
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "tar.zst"
    } else if head.starts_with(b"BZh") {
        "tar.bz2"
    } else {
        "tar"
    }
}

/// Every extension an exported file can have.
const EXTENSIONS: [&str; 6] = ["tar", "tar.gz", "tar.xz", "tar.zst", "tar.bz2", "squashfs"];

/// `image export` of image `fp` into `dir` over either transport: refuses a name that
/// exists (unless `force`) before anything is copied, has `export` write the file (and a
/// split image's rootfs) into hidden files, then gives them their names; prints them.
pub(crate) async fn export_into(
    fp: &str,
    split: bool,
    dir: Option<PathBuf>,
    force: bool,
    export: impl AsyncFnOnce(&std::fs::File, Option<&std::fs::File>) -> R<()>,
) -> R<u8> {
    let dir = dir.unwrap_or_else(|| PathBuf::from("."));
    // refuse before anything is copied when a file of a name the export can take exists
    if !force {
        let prefixes: &[&str] = if split { &["meta-", ""] } else { &[""] };
        for prefix in prefixes {
            if let Some(p) = EXTENSIONS
                .iter()
                .map(|x| dir.join(format!("{prefix}{fp}.{x}")))
                .find(|p| p.symlink_metadata().is_ok())
            {
                return Err(exists_error(&p));
            }
        }
    }
    let create = |name: &str| {
        let p = dir.join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .map(|f| (f, p.clone()))
            .map_err(|e| Fail(format!("cannot create {}: {e}", p.display()), 1))
    };
    let (main, main_tmp) = create(&format!(".{fp}.export"))?;
    let rootfs = if split {
        Some(create(&format!(".{fp}.rootfs.export"))?)
    } else {
        None
    };
    if let Err(e) = export(&main, rootfs.as_ref().map(|(f, _)| f)).await {
        let _ = std::fs::remove_file(&main_tmp);
        if let Some((_, p)) = &rootfs {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    let mut files = vec![(
        main_tmp.clone(),
        export_name(&main_tmp, &dir, if split { "meta-" } else { "" }, fp),
    )];
    if let Some((_, p)) = &rootfs {
        files.push((p.clone(), export_name(p, &dir, "", fp)));
    }
    if let Err(e) = finish_export(&files, force) {
        for (tmp, _) in &files {
            let _ = std::fs::remove_file(tmp);
        }
        return Err(e);
    }
    for (_, dest) in &files {
        println!("{}", dest.display());
    }
    Ok(0)
}

fn exists_error(p: &Path) -> Fail {
    Fail(
        format!(
            "{} already exists; remove it or pass --force to overwrite it",
            p.display()
        ),
        1,
    )
}

/// The name the exported file `tmp` gets in `dir`.
fn export_name(tmp: &Path, dir: &Path, prefix: &str, fp: &str) -> PathBuf {
    let mut head = [0u8; 8];
    let n = std::fs::File::open(tmp)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    dir.join(format!("{prefix}{fp}.{}", extension(&head[..n])))
}

/// Gives the exported temporary files their names: without `force`, atomically refusing to
/// replace a file (a hard link fails on an existing name), and all or none of them.
fn finish_export(files: &[(PathBuf, PathBuf)], force: bool) -> R<()> {
    let mut placed: Vec<&PathBuf> = Vec::new();
    for (tmp, dest) in files {
        let r = if force {
            std::fs::rename(tmp, dest)
        } else {
            std::fs::hard_link(tmp, dest)
        };
        if let Err(e) = r {
            for p in placed {
                let _ = std::fs::remove_file(p);
            }
            return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
                exists_error(dest)
            } else {
                Fail(format!("cannot write {}: {e}", dest.display()), 1)
            });
        }
        placed.push(dest);
    }
    for (tmp, _) in files {
        let _ = std::fs::remove_file(tmp);
    }
    Ok(())
}

/// Runs an image subcommand.
pub(crate) async fn run(conn: &Connection, m: &ManagerProxy<'_>, cmd: ImageCmd) -> R<u8> {
    match cmd {
        ImageCmd::List { filters, format } => {
            let images = m.list_images().await?;
            let mut props = HashMap::new();
            if filters.iter().any(|f| f.contains('=')) {
                for i in &images {
                    let img = image_at(conn, i.path.clone()).await?;
                    props.insert(i.fingerprint.clone(), img.properties().await?);
                }
            }
            print_images(images, &filters, &props, format);
            Ok(0)
        }
        ImageCmd::Info { reference } => {
            let img = image_ref(conn, m, &reference).await?;
            println!("Fingerprint: {}", img.fingerprint().await?);
            println!("Aliases: {}", img.aliases().await?.join(", "));
            println!("Architecture: {}", img.architecture().await?);
            println!(
                "Type: {}",
                if img.split().await? {
                    "split"
                } else {
                    "unified"
                }
            );
            println!("Size: {} bytes", img.size().await?);
            println!("Created: {}", crate::fmt_time(img.created_at().await?));
            println!("Uploaded: {}", crate::fmt_time(img.uploaded_at().await?));
            let mut props: Vec<(String, String)> = img.properties().await?.into_iter().collect();
            props.sort();
            println!("Properties:");
            for (k, v) in props {
                println!("  {k}: {v}");
            }
            Ok(0)
        }
        ImageCmd::Import {
            file,
            rootfs,
            alias,
            property,
        } => {
            let archive = open(&file)?;
            let root = rootfs.as_deref().map(open).transpose()?;
            let mut o: HashMap<&str, Variant<'_>> = HashMap::new();
            if !alias.is_empty() {
                o.insert("aliases", alias.into());
            }
            let props = parse_kv(&property, "property")?;
            if !props.is_empty() {
                o.insert("properties", props.into());
            }
            if let Some(r) = &root {
                o.insert("rootfs", zbus::Fd::from(r).into());
            }
            let path = progress::with_progress(
                conn,
                "image-import",
                m.import_image(zbus::Fd::from(&archive), &o),
            )
            .await?;
            let img = image_at(conn, path).await?;
            println!(
                "Image {} ({})",
                img.fingerprint().await?,
                img.aliases().await?.join(", ")
            );
            Ok(0)
        }
        ImageCmd::Export {
            reference,
            dir,
            force,
        } => {
            let img = image_ref(conn, m, &reference).await?;
            let fp = img.fingerprint().await?;
            let split = img.split().await?;
            export_into(&fp, split, dir, force, async |main, rootfs| {
                let mut o: HashMap<&str, Variant<'_>> = HashMap::new();
                if let Some(r) = rootfs {
                    o.insert("rootfs", zbus::Fd::from(r).into());
                }
                progress::with_progress(conn, "image-export", img.export(zbus::Fd::from(main), &o))
                    .await?;
                Ok(())
            })
            .await
        }
        ImageCmd::Build { recipe, alias } => {
            let mut o: HashMap<&str, Variant<'_>> = HashMap::new();
            if !alias.is_empty() {
                o.insert("aliases", alias.into());
            }
            let path =
                progress::with_progress(conn, "image-build", m.build_image(&recipe, &o)).await?;
            let img = image_at(conn, path).await?;
            println!(
                "Image {} ({})",
                img.fingerprint().await?,
                img.aliases().await?.join(", ")
            );
            Ok(0)
        }
        ImageCmd::Delete { references } => {
            for r in references {
                image_ref(conn, m, &r).await?.delete().await?;
            }
            Ok(0)
        }
        ImageCmd::Alias(AliasCmd::Create { alias, reference }) => {
            image_ref(conn, m, &reference)
                .await?
                .add_alias(&alias)
                .await?;
            Ok(0)
        }
        ImageCmd::Alias(AliasCmd::Delete { alias }) => {
            image_ref(conn, m, &alias)
                .await?
                .remove_alias(&alias)
                .await?;
            Ok(0)
        }
        ImageCmd::Alias(AliasCmd::Rename { from, to }) => {
            m.rename_image_alias(&from, &to).await?;
            Ok(0)
        }
        ImageCmd::Alias(AliasCmd::List) => {
            print_aliases(&m.list_images().await?);
            Ok(0)
        }
        ImageCmd::SetProperty {
            reference,
            key,
            value,
        } => {
            refuse_empty_property(&value)?;
            image_ref(conn, m, &reference)
                .await?
                .set_properties(&HashMap::from([(key.as_str(), value.as_str())]))
                .await?;
            Ok(0)
        }
        ImageCmd::UnsetProperty { reference, key } => {
            image_ref(conn, m, &reference)
                .await?
                .set_properties(&HashMap::from([(key.as_str(), "")]))
                .await?;
            Ok(0)
        }
    }
}

/// `berth image list`'s output (either transport): FILTERs are KEY=VALUE on `props` (by
/// fingerprint), or text matched against aliases, fingerprints and descriptions.
pub(crate) fn print_images(
    mut images: Vec<ImageEntry>,
    filters: &[String],
    props: &HashMap<String, HashMap<String, String>>,
    format: Format,
) {
    images.retain(|i| {
        filters.iter().all(|f| match f.split_once('=') {
            Some((k, v)) => props
                .get(&i.fingerprint)
                .and_then(|p| p.get(k))
                .is_some_and(|x| x == v),
            None => {
                i.fingerprint.starts_with(f.as_str())
                    || i.aliases.iter().any(|a| a.contains(f.as_str()))
                    || i.description.to_lowercase().contains(&f.to_lowercase())
            }
        })
    });
    if format == Format::Json {
        let v: Vec<serde_json::Value> = images
            .iter()
            .map(|i| serde_json::json!({"fingerprint": i.fingerprint, "aliases": i.aliases, "description": i.description, "path": i.path.as_str()}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        let rows: Vec<Vec<String>> = images
            .iter()
            .map(|i| {
                vec![
                    i.aliases.join(","),
                    i.fingerprint.chars().take(12).collect(),
                    i.description.clone(),
                ]
            })
            .collect();
        table(&["ALIAS", "FINGERPRINT", "DESCRIPTION"], &rows);
    }
}

/// `berth image alias list`'s output.
pub(crate) fn print_aliases(images: &[ImageEntry]) {
    let mut rows: Vec<Vec<String>> = images
        .iter()
        .flat_map(|i| {
            i.aliases.iter().map(move |a| {
                vec![
                    a.clone(),
                    i.fingerprint.chars().take(12).collect(),
                    i.description.clone(),
                ]
            })
        })
        .collect();
    rows.sort();
    table(&["ALIAS", "FINGERPRINT", "DESCRIPTION"], &rows);
}

/// `set-property` with an empty value would remove the property: refused (either transport).
pub(crate) fn refuse_empty_property(value: &str) -> R<()> {
    if value.is_empty() {
        return Err(Fail(
            "an empty value removes a property: use unset-property".into(),
            2,
        ));
    }
    Ok(())
}
