//! Squashfs rootfs (split images; Incus and distrobuilder make them xz-compressed). backhand
//! reads the superblock, the inode and id tables, the directory table and file data; its
//! tree view loses what an image needs, so the directory table is walked here instead, which
//! keeps each entry's inode: entries sharing an inode become hardlinks (mksquashfs stores a
//! hardlink as a second directory entry for one inode), and the inode's xattr index leads to
//! its extended attributes in the xattr table ([`super::xattrs`]). Device numbers are decoded
//! as squashfs packs them: `(minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)`.
//!
//! Everything read is bounded and checked: names are single components, an inode a directory
//! entry names must exist, a directory is entered once, and entries count against the limits.

use super::xattrs::XattrTable;
use super::{Entry, Extractor, Kind, Layout, invalid, show};
use crate::error::{Error, Result};
use backhand::v4::inode::InodeInner;
use backhand::{Inode, Squashfs, SquashfsFileReader};
use std::collections::{HashMap, HashSet};
use std::io;

fn bad(e: impl std::fmt::Display) -> Error {
    invalid(format!("unreadable squashfs: {e}"))
}

/// Major and minor of a squashfs device number.
pub fn device(rdev: u32) -> (u32, u32) {
    (
        (rdev >> 8) & 0xfff,
        (rdev & 0xff) | ((rdev >> 12) & 0xfff00),
    )
}

/// The directory listing an inode points at: (block index, listing size + 3, offset).
fn listing(inode: &Inode) -> Option<(u64, u32, usize)> {
    match &inode.inner {
        InodeInner::BasicDirectory(d) => Some((
            d.block_index.into(),
            d.file_size.into(),
            d.block_offset as usize,
        )),
        InodeInner::ExtendedDirectory(d) => {
            Some((d.block_index.into(), d.file_size, d.block_offset as usize))
        }
        _ => None,
    }
}

fn xattr_index(inode: &Inode) -> Option<u32> {
    let i = match &inode.inner {
        InodeInner::ExtendedDirectory(d) => d.xattr_index,
        InodeInner::ExtendedFile(f) => f.xattr_index,
        InodeInner::ExtendedSymlink(s) => s.xattr_index,
        InodeInner::ExtendedBlockDevice(d) | InodeInner::ExtendedCharacterDevice(d) => {
            d.xattr_index
        }
        InodeInner::ExtendedNamedPipe(p) | InodeInner::ExtendedSocket(p) => p.xattr_index,
        _ => return None,
    };
    (i != u32::MAX).then_some(i)
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    b.get(o..o + 2).map(|x| u16::from_le_bytes([x[0], x[1]]))
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    b.get(o..o + 4)
        .map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
}

/// The entries of one directory listing: (name, inode number).
fn parse_listing(bytes: &[u8]) -> Result<Vec<(Vec<u8>, u32)>> {
    let mut out = Vec::new();
    let mut o = 0;
    while o < bytes.len() {
        let short = || invalid("corrupt squashfs directory table");
        let count = u32_at(bytes, o).ok_or_else(short)? as usize + 1;
        let base = u32_at(bytes, o + 8).ok_or_else(short)?;
        if count > 256 {
            return Err(short());
        }
        o += 12;
        for _ in 0..count {
            let offset = u16_at(bytes, o + 2).ok_or_else(short)? as i16;
            let size = u16_at(bytes, o + 6).ok_or_else(short)? as usize + 1;
            let name = bytes.get(o + 8..o + 8 + size).ok_or_else(short)?;
            if name.contains(&b'/') || name.contains(&0) || name == b"." || name == b".." {
                return Err(invalid(format!(
                    "squashfs directory entry {:?} is not a file name",
                    show(name)
                )));
            }
            let ino = u32::try_from(i64::from(base) + i64::from(offset)).map_err(|_| short())?;
            out.push((name.to_vec(), ino));
            o += 8 + size;
        }
    }
    Ok(out)
}

/// Every entry of the filesystem, parents before children: (path, inode).
fn walk(sq: &Squashfs<'_>, max_entries: u64) -> Result<Vec<(Vec<u8>, Inode)>> {
    let mut out = vec![(Vec::new(), sq.root_inode.clone())];
    let mut entered = HashSet::new();
    let mut dirs = vec![(Vec::new(), sq.root_inode.clone())];
    while let Some((path, dir)) = dirs.pop() {
        if !entered.insert(dir.header.inode_number) {
            return Err(invalid(
                "corrupt squashfs: a directory appears twice in the tree",
            ));
        }
        let Some((block, size, offset)) = listing(&dir) else {
            continue;
        };
        if size < 4 {
            continue; // empty
        }
        let start =
            *sq.dir_blocks
                .0
                .get(&block)
                .ok_or_else(|| invalid("corrupt squashfs directory table"))? as usize;
        let bytes = start
            .checked_add(offset)
            .and_then(|s| sq.dir_blocks.1.get(s..s.checked_add(size as usize - 3)?))
            .ok_or_else(|| invalid("corrupt squashfs directory table"))?;
        for (name, ino) in parse_listing(bytes)? {
            let inode = sq.inodes.get(&ino).ok_or_else(|| {
                invalid(format!(
                    "corrupt squashfs: {} names a missing inode",
                    show(&name)
                ))
            })?;
            let mut p = path.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(&name);
            if out.len() as u64 >= max_entries {
                return Err(invalid(format!(
                    "the archive has more than {max_entries} entries"
                )));
            }
            if listing(inode).is_some() {
                dirs.push((p.clone(), inode.clone()));
            }
            out.push((p, inode.clone()));
        }
    }
    Ok(out)
}

impl Extractor {
    /// Extracts a squashfs image (a split image's rootfs).
    pub fn squashfs(&mut self, file: std::fs::File) -> Result<()> {
        let mut sq = Squashfs::from_reader(io::BufReader::new(file)).map_err(bad)?;
        let mut xattrs = XattrTable::open(&sq.superblock)?;
        let entries = walk(&sq, self.limits.max_entries)?;
        let ids: Vec<u32> = sq.id.iter().map(|i| i.num).collect();
        // xattrs are read from the same file before backhand takes it over
        let mut sets = Vec::with_capacity(entries.len());
        for (_, inode) in &entries {
            sets.push(match (xattr_index(inode), xattrs.as_mut()) {
                (Some(i), Some(t)) => t.get(&mut sq.file, i)?,
                (Some(_), None) => {
                    return Err(invalid(
                        "corrupt squashfs: an inode has xattrs but the image has no xattr table",
                    ));
                }
                _ => Vec::new(),
            });
        }
        let fs = sq.into_filesystem_reader().map_err(bad)?;
        let mut seen: HashMap<u32, Vec<u8>> = HashMap::new();
        for ((path, inode), xattrs) in entries.into_iter().zip(sets) {
            let h = &inode.header;
            let id = |i: u16| {
                ids.get(i as usize).copied().ok_or_else(|| {
                    invalid("corrupt squashfs: an owner is missing from the id table")
                })
            };
            let mut meta = Entry {
                path: path.clone(),
                kind: Kind::File,
                mode: u32::from(h.permissions) & 0o7777,
                uid: id(h.uid)?.into(),
                gid: id(h.gid)?.into(),
                mtime: h.mtime.into(),
                size: 0,
                xattrs,
                sparse: false,
            };
            let is_dir = listing(&inode).is_some();
            if !is_dir {
                if let Some(first) = seen.get(&h.inode_number) {
                    meta.kind = Kind::Hardlink(first.clone());
                    self.apply(meta, &mut io::empty(), Layout::Rootfs)?;
                    continue;
                }
                seen.insert(h.inode_number, path);
            }
            let file = match &inode.inner {
                InodeInner::BasicFile(f) => Some(SquashfsFileReader::Basic(f.clone())),
                InodeInner::ExtendedFile(f) => Some(SquashfsFileReader::Extended(f.clone())),
                _ => None,
            };
            if let Some(f) = file {
                meta.size = f.file_len() as u64;
                meta.sparse = f.sparse() > 0;
                let file = fs.file(&f);
                let mut r = file
                    .reader_checked()
                    .map_err(|e| invalid(format!("squashfs file {}: {e}", show(&meta.path))))?;
                self.apply(meta, &mut r, Layout::Rootfs)?;
                continue;
            }
            meta.kind = match &inode.inner {
                InodeInner::BasicDirectory(_) | InodeInner::ExtendedDirectory(_) => Kind::Dir,
                InodeInner::BasicSymlink(s) => Kind::Symlink(s.target_path.clone()),
                InodeInner::ExtendedSymlink(s) => Kind::Symlink(s.target_path.clone()),
                InodeInner::BasicCharacterDevice(d) => char_device(d.device_number),
                InodeInner::ExtendedCharacterDevice(d) => char_device(d.device_number),
                InodeInner::BasicBlockDevice(d) => block_device(d.device_number),
                InodeInner::ExtendedBlockDevice(d) => block_device(d.device_number),
                InodeInner::BasicNamedPipe(_) | InodeInner::ExtendedNamedPipe(_) => Kind::Fifo,
                _ => Kind::Socket,
            };
            self.apply(meta, &mut io::empty(), Layout::Rootfs)?;
        }
        Ok(())
    }
}

fn char_device(rdev: u32) -> Kind {
    let (a, b) = device(rdev);
    Kind::CharDevice(a, b)
}

fn block_device(rdev: u32) -> Kind {
    let (a, b) = device(rdev);
    Kind::BlockDevice(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_decode_as_squashfs_packs_them() {
        // /dev/null: 1:3
        assert_eq!(device(0x103), (1, 3));
        // minor above 255 (e.g. 4:300): (300 & 0xff) | (4 << 8) | ((300 & !0xff) << 12)
        let packed = (300 & 0xff) | (4 << 8) | ((300 & !0xff) << 12);
        assert_eq!(device(packed), (4, 300));
        let packed = (0x12345 & 0xff) | (0xabc << 8) | ((0x12345 & !0xff) << 12);
        assert_eq!(device(packed), (0xabc, 0x12345));
    }

    #[test]
    fn listings_parse_and_refuse_bad_names() {
        let mut b = Vec::new();
        b.extend_from_slice(&1u32.to_le_bytes()); // two entries
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&10u32.to_le_bytes()); // inode base
        for (name, off) in [(&b"etc"[..], 1i16), (&b"usr"[..], -2)] {
            b.extend_from_slice(&0u16.to_le_bytes());
            b.extend_from_slice(&off.to_le_bytes());
            b.extend_from_slice(&1u16.to_le_bytes());
            b.extend_from_slice(&(name.len() as u16 - 1).to_le_bytes());
            b.extend_from_slice(name);
        }
        assert_eq!(
            parse_listing(&b).unwrap(),
            vec![(b"etc".to_vec(), 11), (b"usr".to_vec(), 8)]
        );
        assert!(parse_listing(&b[..b.len() - 1]).is_err(), "truncated");
        let mut evil = b.clone();
        let n = evil.len();
        evil[n - 3..].copy_from_slice(b"..x");
        evil[n - 1] = b'/';
        assert!(parse_listing(&evil).is_err(), "a name with a slash");
    }
}
