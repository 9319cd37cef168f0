//! The squashfs xattr table, read here because backhand does not (the format is that of
//! squashfs-tools and the kernel's fs/squashfs/xattr.c and xattr_id.c). All little-endian:
//!
//! - at the superblock's `xattr_table`: `{u64 table_start, u32 ids, u32 unused}` and then one
//!   u64 disk offset per metadata block of id entries;
//! - an id entry (16 bytes, 512 per 8 KiB metadata block): `{u64 ref, u32 count, u32 size}`,
//!   where `ref` is `(block offset from table_start) << 16 | offset in the block`;
//! - at `ref`, `count` pairs of `{u16 type, u16 name_size, name}` `{u32 value_size, value}`;
//!   `type & 0xff` is the prefix (0 `user.`, 1 `trusted.`, 2 `security.`), `type & 0x100`
//!   means the value is out of line: 8 bytes holding a `ref` to `{u32 size, value}`;
//! - a metadata block is a u16 header (`& 0x7fff` its stored length, `& 0x8000` set when
//!   stored uncompressed) and up to 8 KiB of data once decompressed.
//!
//! The input is hostile: every offset is checked against the filesystem's size, counts and
//! sizes are bounded (names 255 bytes, values 64 KiB, 1024 pairs an inode, 256 MiB read in
//! all), and every failure is [`crate::Error::InvalidImage`]. Only what the tarball path keeps
//! is returned: `user.*` and `security.capability`.

use super::invalid;
use crate::error::Result;
use backhand::SuperBlock;
use backhand::compression::{CompressionAction, Compressor, DefaultCompressor};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};

const NOT_SET: u64 = u64::MAX;
const BLOCK: usize = 8192;
const MAX_NAME: usize = 255;
const MAX_VALUE: usize = 65536;
const MAX_PAIRS: u32 = 1024;
const MAX_READ: u64 = 256 << 20;

/// Extended attributes: (full name, value).
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// The xattr table of one squashfs.
#[derive(Debug)]
pub struct XattrTable {
    /// Where key/value metadata blocks start.
    table_start: u64,
    /// Where the id table's block pointers are.
    pointers: u64,
    ids: u32,
    /// End of the filesystem: nothing is read past it.
    end: u64,
    compressor: Compressor,
    blocks: HashMap<u64, (Vec<u8>, u64)>,
    sets: HashMap<u32, Xattrs>,
    /// Metadata bytes read so far.
    read: u64,
    /// The table's header has been read.
    loaded: bool,
}

fn corrupt(what: &str) -> crate::Error {
    invalid(format!("corrupt squashfs xattr table: {what}"))
}

impl XattrTable {
    /// The table of a filesystem, None when it has none.
    pub fn open(sb: &SuperBlock) -> Result<Option<XattrTable>> {
        if sb.xattr_table == NOT_SET {
            return Ok(None);
        }
        Ok(Some(XattrTable {
            table_start: 0,
            pointers: sb.xattr_table,
            ids: 0,
            end: sb.bytes_used,
            compressor: sb.compressor,
            blocks: HashMap::new(),
            sets: HashMap::new(),
            read: 0,
            loaded: false,
        }))
    }

    fn read_at<R: Read + Seek + ?Sized>(
        &mut self,
        f: &mut R,
        at: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        if at
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.end)
        {
            return Err(corrupt("an offset lies outside the filesystem"));
        }
        f.seek(SeekFrom::Start(at))
            .map_err(|e| corrupt(&e.to_string()))?;
        f.read_exact(buf).map_err(|e| corrupt(&e.to_string()))
    }

    fn header<R: Read + Seek + ?Sized>(&mut self, f: &mut R) -> Result<()> {
        if self.loaded {
            return Ok(());
        }
        let mut h = [0u8; 16];
        let at = self.pointers;
        self.read_at(f, at, &mut h)?;
        self.table_start = u64::from_le_bytes(h[0..8].try_into().unwrap_or_default());
        self.ids = u32::from_le_bytes(h[8..12].try_into().unwrap_or_default());
        self.pointers = at + 16;
        self.loaded = true;
        if self.table_start >= self.end {
            return Err(corrupt("the table starts outside the filesystem"));
        }
        Ok(())
    }

    /// The metadata block at disk offset `at`: (its data, the offset of the next block).
    fn block<R: Read + Seek + ?Sized>(&mut self, f: &mut R, at: u64) -> Result<(Vec<u8>, u64)> {
        if let Some(b) = self.blocks.get(&at) {
            return Ok(b.clone());
        }
        let mut h = [0u8; 2];
        self.read_at(f, at, &mut h)?;
        let h = u16::from_le_bytes(h);
        let len = (h & 0x7fff) as usize;
        if len == 0 || len > BLOCK {
            return Err(corrupt("a metadata block has an impossible size"));
        }
        let mut raw = vec![0u8; len];
        self.read_at(f, at + 2, &mut raw)?;
        let data = if h & 0x8000 != 0 {
            raw
        } else {
            let mut out = Vec::with_capacity(BLOCK);
            DefaultCompressor
                .decompress(&raw, &mut out, self.compressor)
                .map_err(|e| corrupt(&e.to_string()))?;
            if out.len() > BLOCK {
                return Err(corrupt("a metadata block is larger than 8 KiB"));
            }
            out
        };
        self.read = self.read.saturating_add(data.len() as u64);
        if self.read > MAX_READ {
            return Err(invalid(
                "the squashfs xattrs are larger than berth reads (256 MiB)",
            ));
        }
        if self.blocks.len() > 4096 {
            self.blocks.clear();
        }
        let next = at + 2 + len as u64;
        self.blocks.insert(at, (data.clone(), next));
        Ok((data, next))
    }

    /// Reads `n` bytes of metadata starting at `pos` = (disk offset of a block, offset in it),
    /// moving `pos` past them.
    fn meta<R: Read + Seek + ?Sized>(
        &mut self,
        f: &mut R,
        pos: &mut (u64, usize),
        n: usize,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(n.min(MAX_VALUE));
        while out.len() < n {
            let (data, next) = self.block(f, pos.0)?;
            if pos.1 > data.len() {
                return Err(corrupt("an offset lies outside its block"));
            }
            let take = (n - out.len()).min(data.len() - pos.1);
            out.extend_from_slice(&data[pos.1..pos.1 + take]);
            pos.1 += take;
            if pos.1 == data.len() {
                *pos = (next, 0);
            }
        }
        Ok(out)
    }

    fn at_ref(&self, r: u64) -> Result<(u64, usize)> {
        let block = self
            .table_start
            .checked_add(r >> 16)
            .ok_or_else(|| corrupt("a reference overflows"))?;
        Ok((block, (r & 0xffff) as usize))
    }

    /// The kept xattrs of xattr id `index`.
    pub fn get<R: Read + Seek + ?Sized>(&mut self, f: &mut R, index: u32) -> Result<Xattrs> {
        if let Some(s) = self.sets.get(&index) {
            return Ok(s.clone());
        }
        self.header(f)?;
        if index >= self.ids {
            return Err(corrupt("an inode names an xattr id past the table"));
        }
        // the id entry
        let per_block = (BLOCK / 16) as u32;
        let mut p = [0u8; 8];
        let slot = self.pointers + 8 * u64::from(index / per_block);
        self.read_at(f, slot, &mut p)?;
        let mut pos = (u64::from_le_bytes(p), (index % per_block) as usize * 16);
        let id = self.meta(f, &mut pos, 16)?;
        let r = u64::from_le_bytes(id[0..8].try_into().unwrap_or_default());
        let count = u32::from_le_bytes(id[8..12].try_into().unwrap_or_default());
        if count > MAX_PAIRS {
            return Err(corrupt("an inode has too many xattrs"));
        }
        let mut pos = self.at_ref(r)?;
        let mut set = Vec::new();
        for _ in 0..count {
            let h = self.meta(f, &mut pos, 4)?;
            let kind = u16::from_le_bytes([h[0], h[1]]);
            let name_len = u16::from_le_bytes([h[2], h[3]]) as usize;
            if name_len > MAX_NAME {
                return Err(corrupt("an xattr name is too long"));
            }
            let name = self.meta(f, &mut pos, name_len)?;
            let vh = self.meta(f, &mut pos, 4)?;
            let vlen = u32::from_le_bytes([vh[0], vh[1], vh[2], vh[3]]) as usize;
            let value = if kind & 0x100 != 0 {
                if vlen != 8 {
                    return Err(corrupt("an out-of-line value reference is not 8 bytes"));
                }
                let vr = self.meta(f, &mut pos, 8)?;
                let mut vpos =
                    self.at_ref(u64::from_le_bytes(vr[..8].try_into().unwrap_or_default()))?;
                let sh = self.meta(f, &mut vpos, 4)?;
                let size = u32::from_le_bytes([sh[0], sh[1], sh[2], sh[3]]) as usize;
                if size > MAX_VALUE {
                    return Err(corrupt("an xattr value is too large"));
                }
                self.meta(f, &mut vpos, size)?
            } else {
                if vlen > MAX_VALUE {
                    return Err(corrupt("an xattr value is too large"));
                }
                self.meta(f, &mut pos, vlen)?
            };
            let prefix: &[u8] = match kind & 0xff {
                0 => b"user.",
                1 => b"trusted.",
                2 => b"security.",
                _ => return Err(corrupt("an xattr has an unknown prefix")),
            };
            let mut full = prefix.to_vec();
            full.extend_from_slice(&name);
            if full.contains(&0) {
                return Err(corrupt("an xattr name contains NUL"));
            }
            if full.starts_with(b"user.") || full == b"security.capability" {
                set.push((full, value));
            }
        }
        self.sets.insert(index, set.clone());
        Ok(set)
    }
}
