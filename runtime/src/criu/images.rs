//! Reading the little berth needs from CRIU's image files, without CRIU.
//!
//! A dump of a file that is still linked somewhere but whose opened path is gone (renamed
//! away, or one of several hard links removed) makes CRIU link it back as
//! `<dir>/link_remap.<id>` in the container's tree (`--link-remap`); with `--leave-running` it
//! unlinks that name again once the dump is over. The file snapshot is taken in between, while
//! the tree is frozen, so a stateful snapshot's files hold those names: a restore of its
//! running state consumes them, but a copy of its files alone (a stateless restore, a copy, a
//! publish) must drop them. Which names they are is written in the images: a
//! `remap_file_path_entry` of type LINKED in `remap-fpath.img` names the file entry, in
//! `files.img`, whose path is the link.
//!
//! The format (criu/image.c, criu/protobuf.c): two little-endian u32 magics, then entries,
//! each a little-endian u32 length and that many bytes of one protobuf message.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

const COMMON_MAGIC: u32 = 0x5456_4319;
const FILES_MAGIC: u32 = 0x5630_3138;
const REMAP_FPATH_MAGIC: u32 = 0x5913_3954;
/// `fd_types.REG` in fdinfo.proto.
const FD_TYPE_REG: u64 = 1;
/// `remap_type.LINKED` in remap-file-path.proto (the default when absent).
const REMAP_LINKED: u64 = 0;
const PAGEMAP_MAGIC: u32 = 0x5608_4025;
/// `PE_PARENT` and `PE_PRESENT` of a pagemap entry's flags (criu/include/pagemap.h).
const PE_PARENT: u64 = 1 << 0;
const PE_PRESENT: u64 = 1 << 2;
/// An entry larger than this is not one CRIU wrote for berth's trees.
const MAX_ENTRY: usize = 16 << 20;

/// The paths (relative to the container's root) of the links CRIU made for a dump in
/// `images`. Unreadable or missing images give none: the names are then only clutter.
pub fn link_remaps(images: &Path) -> Vec<PathBuf> {
    let Some(remaps) = read_entries(&images.join("remap-fpath.img"), REMAP_FPATH_MAGIC) else {
        return Vec::new();
    };
    let linked: HashSet<u64> = remaps
        .iter()
        .filter_map(|e| {
            let f = fields(e)?;
            let kind = f
                .get(&3)
                .and_then(|v| v.first())
                .map(|v| v.int())
                .unwrap_or(REMAP_LINKED);
            (kind == REMAP_LINKED)
                .then(|| f.get(&2)?.first().map(Value::int))
                .flatten()
        })
        .collect();
    if linked.is_empty() {
        return Vec::new();
    }
    let Some(files) = read_entries(&images.join("files.img"), FILES_MAGIC) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in &files {
        let Some(f) = fields(e) else { continue };
        let one = |n: u32| f.get(&n).and_then(|v| v.first());
        if one(1).map(Value::int) != Some(FD_TYPE_REG)
            || !one(2).is_some_and(|id| linked.contains(&id.int()))
        {
            continue;
        }
        let Some(reg) = one(3).and_then(|r| r.bytes()).and_then(fields) else {
            continue;
        };
        let Some(name) = reg.get(&6).and_then(|v| v.first()).and_then(|v| v.bytes()) else {
            continue;
        };
        if let Some(p) = contained(name) {
            out.push(p);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Unlinks from `rootfs` the links CRIU made for the dump in `images` (regular files only,
/// every path resolved inside `rootfs`); returns how many it removed.
pub fn remove_link_remaps(images: &Path, rootfs: &Path) -> usize {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let names = link_remaps(images);
    if names.is_empty() {
        return 0;
    }
    let Ok(root) = std::fs::File::open(rootfs) else {
        return 0;
    };
    let mut removed = 0;
    for rel in names {
        let (Some(parent), Some(base)) = (rel.parent(), rel.file_name()) else {
            continue;
        };
        let Ok(dir) = crate::image::extract::open_in_root(
            root.as_raw_fd(),
            parent.as_os_str().as_bytes(),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        ) else {
            continue;
        };
        let Ok(base) = std::ffi::CString::new(base.as_bytes()) else {
            continue;
        };
        // SAFETY: stat is plain data; fstatat/unlinkat on our fd and C string.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstatat(dir.as_raw_fd(), base.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } == 0
            && st.st_mode & libc::S_IFMT == libc::S_IFREG
            // SAFETY: as above.
            && unsafe { libc::unlinkat(dir.as_raw_fd(), base.as_ptr(), 0) } == 0
        {
            removed += 1;
        }
    }
    removed
}

/// Checks that every pages image in `images` holds the pages its pagemaps say it does. CRIU
/// 4.2.1 restoring from a shorter one (a truncated copy, a full disk) loops for good in its
/// page reader (`process_async_reads`, on a zero-length read) instead of failing; this names
/// the damage before anything is stopped or replaced. What it cannot read it reports too.
pub fn check_pages(images: &Path) -> Result<(), String> {
    let page = page_size();
    // pages image id -> the bytes its pagemaps say it holds
    let mut want: HashMap<u64, u64> = HashMap::new();
    let rd = std::fs::read_dir(images).map_err(|e| format!("read {}: {e}", images.display()))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("pagemap-") && name.ends_with(".img")) {
            continue;
        }
        let entries = read_entries(&e.path(), PAGEMAP_MAGIC)
            .ok_or_else(|| format!("{name} is not a pagemap image CRIU wrote"))?;
        let bad = || format!("{name} holds a malformed entry");
        let (head, rest) = entries.split_first().ok_or_else(bad)?;
        let id = fields(head)
            .and_then(|f| f.get(&1).and_then(|v| v.first()).map(Value::int))
            .ok_or_else(bad)?;
        let total = want.entry(id).or_default();
        for entry in rest {
            let f = fields(entry).ok_or_else(bad)?;
            let one = |n: u32| f.get(&n).and_then(|v| v.first()).map(Value::int);
            // as CRIU reads them (pagemap.c): an old in_parent, else flags, else present
            let flags = if one(3) == Some(1) {
                PE_PARENT
            } else {
                one(4).unwrap_or(PE_PRESENT)
            };
            let pages = one(5).or_else(|| one(2)).ok_or_else(bad)?;
            if flags & PE_PRESENT != 0 {
                *total = pages
                    .checked_mul(page)
                    .and_then(|b| total.checked_add(b))
                    .ok_or_else(bad)?;
            }
        }
    }
    let mut ids: Vec<_> = want.into_iter().collect();
    ids.sort();
    for (id, bytes) in ids {
        let pages = images.join(format!("pages-{id}.img"));
        let have = match std::fs::metadata(&pages) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && bytes == 0 => 0,
            Err(e) => return Err(format!("pages-{id}.img: {e}")),
        };
        if have < bytes {
            return Err(format!(
                "pages-{id}.img holds {have} bytes of the {bytes} its pagemap names"
            ));
        }
    }
    Ok(())
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as u64,
        _ => 4096,
    }
}

/// `name` as a relative path that stays inside the root, and names a `link_remap.N`.
fn contained(name: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let p = Path::new(std::ffi::OsStr::from_bytes(name));
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    let base = out.file_name()?.to_str()?;
    let id = base.strip_prefix("link_remap.")?;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then_some(out)
}

/// The entries of one image file, or None when it is missing or not that image.
fn read_entries(path: &Path, magic: u32) -> Option<Vec<Vec<u8>>> {
    let data = std::fs::read(path).ok()?;
    let u32_at = |i: usize| {
        data.get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if u32_at(0)? != COMMON_MAGIC || u32_at(4)? != magic {
        return None;
    }
    let mut out = Vec::new();
    let mut i = 8;
    while i < data.len() {
        let n = u32_at(i)? as usize;
        if n > MAX_ENTRY {
            return None;
        }
        out.push(data.get(i + 4..i + 4 + n)?.to_vec());
        i += 4 + n;
    }
    Some(out)
}

/// One protobuf field value: a varint, or length-delimited bytes (fixed-width ones are kept as
/// their integer).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Int(u64),
    Bytes(Vec<u8>),
}

impl Value {
    fn int(&self) -> u64 {
        match self {
            Value::Int(v) => *v,
            Value::Bytes(_) => u64::MAX,
        }
    }

    fn bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            Value::Int(_) => None,
        }
    }
}

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The fields of one protobuf message by number, or None when it is malformed.
fn fields(b: &[u8]) -> Option<HashMap<u32, Vec<Value>>> {
    let mut out: HashMap<u32, Vec<Value>> = HashMap::new();
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i)?;
        let number = u32::try_from(key >> 3).ok()?;
        let v = match key & 7 {
            0 => Value::Int(varint(b, &mut i)?),
            1 => {
                let s = b.get(i..i + 8)?;
                i += 8;
                Value::Int(u64::from_le_bytes(s.try_into().ok()?))
            }
            2 => {
                let n = usize::try_from(varint(b, &mut i)?).ok()?;
                let s = b.get(i..i.checked_add(n)?)?;
                i += n;
                Value::Bytes(s.to_vec())
            }
            5 => {
                let s = b.get(i..i + 4)?;
                i += 4;
                Value::Int(u64::from(u32::from_le_bytes(s.try_into().ok()?)))
            }
            _ => return None,
        };
        out.entry(number).or_default().push(v);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn int(out: &mut Vec<u8>, n: u32, v: u64) {
        put_varint(out, u64::from(n) << 3);
        put_varint(out, v);
    }

    fn bytes(out: &mut Vec<u8>, n: u32, v: &[u8]) {
        put_varint(out, (u64::from(n) << 3) | 2);
        put_varint(out, v.len() as u64);
        out.extend_from_slice(v);
    }

    fn image(magic: u32, entries: &[Vec<u8>]) -> Vec<u8> {
        let mut out = COMMON_MAGIC.to_le_bytes().to_vec();
        out.extend_from_slice(&magic.to_le_bytes());
        for e in entries {
            out.extend_from_slice(&(e.len() as u32).to_le_bytes());
            out.extend_from_slice(e);
        }
        out
    }

    fn reg(id: u64, name: &str) -> Vec<u8> {
        let mut r = Vec::new();
        int(&mut r, 1, id);
        int(&mut r, 2, 0o2);
        int(&mut r, 3, 0);
        bytes(&mut r, 5, &[8, 0, 16, 0]);
        bytes(&mut r, 6, name.as_bytes());
        let mut f = Vec::new();
        int(&mut f, 1, FD_TYPE_REG);
        int(&mut f, 2, id);
        bytes(&mut f, 3, &r);
        f
    }

    fn remap(orig: u64, remap: u64, kind: Option<u64>) -> Vec<u8> {
        let mut e = Vec::new();
        int(&mut e, 1, orig);
        int(&mut e, 2, remap);
        if let Some(k) = kind {
            int(&mut e, 3, k);
        }
        e
    }

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("berth-criu-images-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn linked_remaps_are_named_and_nothing_else() {
        let d = dir("linked");
        let files = [
            reg(7, "/tmp/a"),
            reg(9, "/tmp/link_remap.9"),
            reg(12, "/var/lib/x/link_remap.12"),
            reg(13, "/tmp/link_remap.13"),
            reg(14, "/../link_remap.14"),
        ];
        std::fs::write(d.join("files.img"), image(FILES_MAGIC, &files)).unwrap();
        // 9 and 12 are linked (the type once absent, once explicit), 13 a ghost, 14 hostile
        let remaps = [
            remap(7, 9, None),
            remap(8, 12, Some(REMAP_LINKED)),
            remap(10, 13, Some(1)),
            remap(11, 14, None),
        ];
        std::fs::write(d.join("remap-fpath.img"), image(REMAP_FPATH_MAGIC, &remaps)).unwrap();
        assert_eq!(
            link_remaps(&d),
            vec![
                PathBuf::from("tmp/link_remap.9"),
                PathBuf::from("var/lib/x/link_remap.12")
            ]
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn removal_stays_inside_the_rootfs_and_spares_what_is_not_a_file() {
        let d = dir("remove");
        let files = [
            reg(9, "/tmp/link_remap.9"),
            reg(12, "/var/x/link_remap.12"),
            reg(15, "/run/link_remap.15"),
        ];
        std::fs::write(d.join("files.img"), image(FILES_MAGIC, &files)).unwrap();
        let remaps = [remap(1, 9, None), remap(2, 12, None), remap(3, 15, None)];
        std::fs::write(d.join("remap-fpath.img"), image(REMAP_FPATH_MAGIC, &remaps)).unwrap();
        let root = d.join("rootfs");
        for p in ["tmp", "var", "run/link_remap.15", "outside"] {
            std::fs::create_dir_all(if p == "outside" {
                d.join(p)
            } else {
                root.join(p)
            })
            .unwrap();
        }
        std::fs::write(root.join("tmp/link_remap.9"), "x").unwrap();
        std::fs::write(root.join("tmp/keep"), "x").unwrap();
        // a link planted by the container that climbs out of its root
        std::os::unix::fs::symlink("../../../outside", root.join("var/x")).unwrap();
        std::fs::write(d.join("outside/link_remap.12"), "host").unwrap();
        assert_eq!(remove_link_remaps(&d, &root), 1);
        assert!(!root.join("tmp/link_remap.9").exists());
        assert!(root.join("tmp/keep").exists());
        assert!(
            d.join("outside/link_remap.12").exists(),
            "resolved outside the rootfs"
        );
        assert!(
            root.join("run/link_remap.15").is_dir(),
            "a directory is not CRIU's link"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_file_criu_wrote_is_read() {
        // remap-fpath.img of a CRIU 4.2.1 dump on this machine: file 11 remapped to link 12
        let real = [
            0x19, 0x43, 0x56, 0x54, 0x54, 0x39, 0x13, 0x59, 6, 0, 0, 0, 0x08, 0x0b, 0x10, 0x0c,
            0x18, 0x00,
        ];
        let d = dir("real");
        std::fs::write(d.join("remap-fpath.img"), real).unwrap();
        let e = read_entries(&d.join("remap-fpath.img"), REMAP_FPATH_MAGIC).unwrap();
        let f = fields(&e[0]).unwrap();
        assert_eq!(
            (f[&1][0].int(), f[&2][0].int(), f[&3][0].int()),
            (11, 12, REMAP_LINKED)
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn missing_truncated_or_foreign_images_give_nothing() {
        let d = dir("broken");
        assert!(link_remaps(&d).is_empty());
        std::fs::write(
            d.join("remap-fpath.img"),
            image(REMAP_FPATH_MAGIC, &[remap(1, 2, None)]),
        )
        .unwrap();
        let mut files = image(FILES_MAGIC, &[reg(2, "/tmp/link_remap.2")]);
        std::fs::write(d.join("files.img"), &files[..files.len() - 3]).unwrap();
        assert!(link_remaps(&d).is_empty());
        files[4] ^= 1;
        std::fs::write(d.join("files.img"), &files).unwrap();
        assert!(link_remaps(&d).is_empty());
        files[4] ^= 1;
        std::fs::write(d.join("files.img"), &files).unwrap();
        assert_eq!(link_remaps(&d), vec![PathBuf::from("tmp/link_remap.2")]);
        // a name that is not CRIU's is never offered for removal
        std::fs::write(
            d.join("files.img"),
            image(FILES_MAGIC, &[reg(2, "/etc/passwd")]),
        )
        .unwrap();
        assert!(link_remaps(&d).is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A pagemap image: its head naming pages image `id`, then (pages, flags) entries.
    fn pagemap(id: u64, entries: &[(u64, Option<u64>)]) -> Vec<u8> {
        let mut head = Vec::new();
        int(&mut head, 1, id);
        let mut all = vec![head];
        for (i, (pages, flags)) in entries.iter().enumerate() {
            let mut e = Vec::new();
            int(&mut e, 1, 0x40_0000 + (i as u64) * 0x10_0000);
            int(&mut e, 2, 0);
            if let Some(f) = flags {
                int(&mut e, 4, *f);
            }
            int(&mut e, 5, *pages);
            all.push(e);
        }
        image(PAGEMAP_MAGIC, &all)
    }

    #[test]
    fn pages_images_shorter_than_their_pagemaps_are_named() {
        let d = dir("pages");
        let page = page_size();
        // 3 pages present, 5 in a parent (not in this image), 1 with no flags (present)
        std::fs::write(
            d.join("pagemap-1.img"),
            pagemap(2, &[(3, Some(PE_PRESENT)), (5, Some(PE_PARENT)), (1, None)]),
        )
        .unwrap();
        std::fs::write(d.join("pages-2.img"), vec![0u8; (4 * page) as usize]).unwrap();
        assert_eq!(check_pages(&d), Ok(()));
        std::fs::write(d.join("pages-2.img"), vec![0u8; (3 * page) as usize]).unwrap();
        let e = check_pages(&d).unwrap_err();
        assert!(
            e.contains("pages-2.img") && e.contains(&format!("{}", 4 * page)),
            "{e}"
        );
        std::fs::remove_file(d.join("pages-2.img")).unwrap();
        assert!(check_pages(&d).unwrap_err().contains("pages-2.img"));
        // a pagemap with nothing present needs no pages image
        std::fs::write(d.join("pagemap-1.img"), pagemap(2, &[(5, Some(PE_PARENT))])).unwrap();
        assert_eq!(check_pages(&d), Ok(()));
        // what is not a pagemap CRIU wrote is named, not passed
        std::fs::write(d.join("pagemap-1.img"), b"garbage").unwrap();
        assert!(check_pages(&d).unwrap_err().contains("pagemap-1.img"));
        let mut bad = pagemap(2, &[(1, Some(PE_PRESENT))]);
        bad.truncate(bad.len() - 1);
        std::fs::write(d.join("pagemap-1.img"), bad).unwrap();
        assert!(check_pages(&d).unwrap_err().contains("pagemap-1.img"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
