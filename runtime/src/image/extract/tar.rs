//! Tar streams: each header becomes an [`Entry`] for the checks of [`Extractor::apply`].
//! GNU sparse entries (`tar -S`) are regular files whose holes the tar crate reads as zeros;
//! they are written with their holes kept. PAX sparse entries (`GNU.sparse.*`) are refused:
//! the tar crate would hand over their encoded form as file data.

use super::{Entry, Extractor, Kind, Layout, invalid, show};
use crate::error::Result;
use std::io::{self, Read};

impl Extractor {
    /// Extracts a tar stream laid out as `layout`.
    pub fn tar<R: Read>(&mut self, reader: R, layout: Layout) -> Result<()> {
        let mut ar = ::tar::Archive::new(reader);
        let entries = ar
            .entries()
            .map_err(|e| invalid(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| invalid(format!("corrupt or truncated archive: {e}")))?;
            let meta = tar_entry(&mut entry)?;
            if let Some(meta) = meta {
                self.apply(meta, &mut entry, layout)?;
            }
        }
        Ok(())
    }
}

/// An entry's metadata from a tar header (None for entries that carry no file: PAX globals).
fn tar_entry<R: Read>(entry: &mut ::tar::Entry<'_, R>) -> Result<Option<Entry>> {
    use ::tar::EntryType as T;
    let h = entry.header();
    let kind = match h.entry_type() {
        T::Regular | T::Continuous | T::GNUSparse => Kind::File,
        t if t.as_byte() == 0 => Kind::File,
        T::Directory => Kind::Dir,
        T::Symlink => Kind::Symlink(link_name(entry)?),
        T::Link => Kind::Hardlink(link_name(entry)?),
        T::Fifo => Kind::Fifo,
        T::Char => Kind::CharDevice(
            h.device_major().ok().flatten().unwrap_or(0),
            h.device_minor().ok().flatten().unwrap_or(0),
        ),
        T::Block => Kind::BlockDevice(
            h.device_major().ok().flatten().unwrap_or(0),
            h.device_minor().ok().flatten().unwrap_or(0),
        ),
        T::XGlobalHeader => return Ok(None),
        t => {
            return Err(invalid(format!(
                "unsupported tar entry type {:?}",
                t.as_byte() as char
            )));
        }
    };
    let sparse = h.entry_type() == T::GNUSparse;
    let path = entry.path_bytes().into_owned();
    let h = entry.header();
    let field = |r: io::Result<u64>, what: &str| {
        r.map_err(|e| invalid(format!("bad {what} in the header of {}: {e}", show(&path))))
    };
    let mode = field(h.mode().map(u64::from), "mode")? as u32 & 0o7777;
    let uid = field(h.uid(), "uid")?;
    let gid = field(h.gid(), "gid")?;
    let mtime = field(h.mtime(), "mtime")?.min(i64::MAX as u64) as i64;
    let size = if kind == Kind::File { entry.size() } else { 0 };
    let mut xattrs = Vec::new();
    if let Ok(Some(exts)) = entry.pax_extensions() {
        for ext in exts.flatten() {
            let key = ext.key_bytes();
            if key.starts_with(b"GNU.sparse.") {
                return Err(invalid(format!(
                    "{} is a PAX sparse file, which berth cannot read; make the archive with --format=gnu or without -S",
                    show(&path)
                )));
            }
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.")
                && (name.starts_with(b"user.") || name == b"security.capability")
            {
                xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(Some(Entry {
        path,
        kind,
        mode,
        uid,
        gid,
        mtime,
        size,
        xattrs,
        sparse,
    }))
}

fn link_name<R: Read>(entry: &::tar::Entry<'_, R>) -> Result<Vec<u8>> {
    entry
        .link_name_bytes()
        .map(|l| l.into_owned())
        .ok_or_else(|| invalid(format!("link {} has no target", show(&entry.path_bytes()))))
}
