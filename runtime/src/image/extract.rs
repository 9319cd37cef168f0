//! Safe extraction of image archives (tar streams and squashfs) into a staging volume.
//!
//! Archives are hostile input. Every entry is checked before anything is written:
//! - paths are relative, without `..`, and land under `rootfs/`, `templates/` or are
//!   `metadata.yaml`;
//! - symlinks whose relative target climbs out of the tree, and hardlinks to anything outside
//!   it, are refused; `templates/` holds regular files and directories only;
//! - device nodes are refused, except under `rootfs/dev/` where they are skipped: an
//!   unprivileged container cannot use them and gets its own /dev at start (images made with
//!   debootstrap carry the standard nodes there, as LXD's unprivileged unpack skips); owners must be
//!   inside the container's id range, permission bits (setuid included) are applied exactly
//!   as the archive says and never widened;
//! - the unpacked size is bounded (by the pool's free space), so is the entry count.
//!
//! All file system access goes through `openat2(RESOLVE_IN_ROOT)` relative to the staging
//! directory's fd, so even a path that got past the checks cannot leave it. The caller runs
//! this in an unprivileged helper (berth-helper) as the container's mapped root, writing
//! through an idmapped mount of the staging volume: on disk the files belong to uid 0, but the
//! extracting process never had host privileges.

mod links;
mod squashfs;
mod tar;
mod xattrs;

use crate::error::{Error, Result};
use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Largest metadata.yaml accepted.
pub const MAX_METADATA: u64 = 1 << 20;

/// Bounds on one extraction.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Total bytes of file data.
    pub max_bytes: u64,
    /// Entries.
    pub max_entries: u64,
    /// uids and gids must be below this.
    pub id_count: u32,
}

/// How an archive's paths map onto the staging volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A unified image: `metadata.yaml`, `rootfs/…`, `templates/…`.
    Unified,
    /// The metadata tarball of a split image: `metadata.yaml`, `templates/…`.
    Metadata,
    /// The rootfs tarball or squashfs of a split image: everything goes under `rootfs/`.
    Rootfs,
}

/// The kind of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link to the target.
    Symlink(Vec<u8>),
    /// Hard link to another entry (archive path).
    Hardlink(Vec<u8>),
    /// Named pipe.
    Fifo,
    /// Character device (major, minor).
    CharDevice(u32, u32),
    /// Block device (major, minor).
    BlockDevice(u32, u32),
    /// Unix socket (skipped).
    Socket,
}

/// One archive entry's metadata.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Path as in the archive.
    pub path: Vec<u8>,
    /// Kind.
    pub kind: Kind,
    /// Permission bits (07777).
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time (seconds).
    pub mtime: i64,
    /// Data size (regular files).
    pub size: u64,
    /// Extended attributes worth keeping (`user.*`, `security.capability`).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// A sparse file: runs of zeros in its data are left as holes.
    pub sparse: bool,
}

/// Where an entry goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tree {
    Root,
    Rootfs,
    Templates,
}

impl Tree {
    fn prefix(self) -> &'static str {
        match self {
            Tree::Root => "",
            Tree::Rootfs => "rootfs",
            Tree::Templates => "templates",
        }
    }
}

/// What an extraction produced.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Entries written.
    pub entries: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    /// metadata.yaml's bytes, when the archive had one.
    pub metadata: Option<Vec<u8>>,
}

/// Extracts archives into one staging directory.
#[derive(Debug)]
pub struct Extractor {
    root: OwnedFd,
    limits: Limits,
    report: Report,
    /// directories whose mtime is set at the end (children change it)
    dir_times: Vec<(Tree, Vec<u8>, i64)>,
    /// symlinks (and hardlinks) were made in the rootfs: check where they lead at the end
    links_made: bool,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidImage(msg.into())
}

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// Turns an I/O error while writing into the right error. The staging volume is new and the
/// helper's alone, so a failure there comes from the archive's shape (a hardlink to a
/// directory, a loop of symlinks in a path, too many links to one file, a name too long once
/// links are followed…): InvalidImage. Trouble of the host itself (a full pool, I/O, memory,
/// descriptors) is a host error: the image is fine, this host cannot take it now.
fn write_err(what: &str, path: &[u8], e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => Error::os(
            format!(
                "the storage pool ran out of space while unpacking {}",
                show(path)
            ),
            e,
        ),
        None
        | Some(
            libc::EIO
            | libc::EROFS
            | libc::ENOMEM
            | libc::ENFILE
            | libc::EMFILE
            | libc::EBADF
            | libc::EFAULT
            | libc::ENOSYS
            | libc::EUCLEAN
            | libc::EINTR
            | libc::EAGAIN,
        ) => Error::os(format!("{what} {}", show(path)), e),
        Some(_) => invalid(format!("{what} {}: {e}", show(path))),
    }
}

/// Normalizes an archive path: strips `./` and trailing `/`, refuses absolute paths, `..`,
/// NUL and over-long paths. Returns the components joined by `/` (empty for the root).
pub fn normalize(p: &[u8]) -> Result<Vec<u8>> {
    if p.len() > 4096 || p.contains(&0) {
        return Err(invalid(format!(
            "path {:?} is too long or contains NUL",
            show(p)
        )));
    }
    if p.first() == Some(&b'/') {
        return Err(invalid(format!(
            "absolute path {:?} in the archive",
            show(p)
        )));
    }
    let mut out: Vec<&[u8]> = Vec::new();
    for c in p.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(invalid(format!("path {:?} contains '..'", show(p)))),
            c if c.len() > 255 => {
                return Err(invalid(format!("path component too long in {:?}", show(p))));
            }
            c => out.push(c),
        }
    }
    Ok(out.join(&b'/'))
}

fn cstr(b: &[u8]) -> Result<CString> {
    CString::new(b).map_err(|_| invalid(format!("path {:?} contains NUL", show(b))))
}

/// openat2 with RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS relative to `dirfd`: `path` is
/// resolved as if `dirfd` were `/`, symlinks included.
pub fn open_in_root(dirfd: RawFd, path: &[u8], flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let p = CString::new(if path.is_empty() { &b"."[..] } else { path })
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is plain data.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & libc::O_CREAT != 0 {
        mode as u64
    } else {
        0
    };
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid fd, C string and open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            p.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn cvt(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Extractor {
    /// Extracts into the directory `root` (an fd on the staging volume's root).
    pub fn new(root: OwnedFd, limits: Limits) -> Extractor {
        Extractor {
            root,
            limits,
            report: Report::default(),
            dir_times: Vec::new(),
            links_made: false,
        }
    }

    /// Checks where the rootfs's symlinks lead (see [`links`]), sets directory times and
    /// returns what was extracted.
    pub fn finish(mut self) -> Result<Report> {
        if self.links_made {
            let rootfs = self
                .tree_fd(Tree::Rootfs)
                .map_err(|err| write_err("open", b"rootfs", err))?;
            links::check_tree(rootfs.as_raw_fd())?;
        }
        // deepest first, so a parent's time is set after its children's
        self.dir_times
            .sort_by_key(|(_, p, _)| std::cmp::Reverse(p.iter().filter(|b| **b == b'/').count()));
        for (tree, p, mtime) in std::mem::take(&mut self.dir_times) {
            if let Ok(base) = self.tree_fd(tree)
                && let Ok(fd) = open_in_root(
                    base.as_raw_fd(),
                    &p,
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                )
            {
                let ts = [libc::timespec {
                    tv_sec: mtime,
                    tv_nsec: 0,
                }; 2];
                // SAFETY: futimens on our fd with two timespecs.
                unsafe { libc::futimens(fd.as_raw_fd(), ts.as_ptr()) };
            }
        }
        Ok(self.report)
    }

    fn tree_fd(&self, tree: Tree) -> io::Result<OwnedFd> {
        open_in_root(
            self.root.as_raw_fd(),
            tree.prefix().as_bytes(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
    }

    /// Where `path` goes: (tree, path inside the tree).
    fn place(path: &[u8], layout: Layout) -> Result<Option<(Tree, Vec<u8>)>> {
        let p = normalize(path)?;
        if layout == Layout::Rootfs {
            return Ok(Some((Tree::Rootfs, p)));
        }
        if p.is_empty() {
            return Ok(None); // "./"
        }
        let (first, rest) = match p.iter().position(|b| *b == b'/') {
            Some(i) => (&p[..i], p[i + 1..].to_vec()),
            None => (&p[..], Vec::new()),
        };
        match (first, layout) {
            (b"metadata.yaml", _) if rest.is_empty() => {
                Ok(Some((Tree::Root, b"metadata.yaml".to_vec())))
            }
            (b"rootfs", Layout::Unified) => Ok(Some((Tree::Rootfs, rest))),
            (b"templates", _) => Ok(Some((Tree::Templates, rest))),
            _ => Err(invalid(format!(
                "unexpected entry {:?}: a {} image holds only metadata.yaml{}",
                show(&p),
                if layout == Layout::Unified {
                    "unified"
                } else {
                    "split image's metadata"
                },
                if layout == Layout::Unified {
                    ", rootfs/ and templates/"
                } else {
                    " and templates/"
                }
            ))),
        }
    }

    /// Checks and writes one entry.
    pub fn apply(&mut self, e: Entry, data: &mut dyn Read, layout: Layout) -> Result<()> {
        let Some((tree, rel)) = Self::place(&e.path, layout)? else {
            return Ok(());
        };
        self.report.entries += 1;
        if self.report.entries > self.limits.max_entries {
            return Err(invalid(format!(
                "the archive has more than {} entries",
                self.limits.max_entries
            )));
        }
        if e.uid >= self.limits.id_count as u64 || e.gid >= self.limits.id_count as u64 {
            return Err(invalid(format!(
                "{} is owned by {}:{}, outside the container's id range (0-{})",
                show(&e.path),
                e.uid,
                e.gid,
                self.limits.id_count - 1
            )));
        }
        if tree == Tree::Root {
            return self.metadata(&e, data);
        }
        if tree == Tree::Templates && !matches!(e.kind, Kind::File | Kind::Dir) {
            return Err(invalid(format!(
                "templates/ may hold only files and directories, not {}",
                show(&e.path)
            )));
        }
        // the top directory of a tree (rootfs/ itself)
        self.ensure_tree(tree)?;
        if rel.is_empty() {
            if e.kind != Kind::Dir {
                return Err(invalid(format!("{} must be a directory", tree.prefix())));
            }
            return self.set_dir_meta(tree, &rel, &e);
        }
        let (dir, name) = match rel.iter().rposition(|b| *b == b'/') {
            Some(i) => (rel[..i].to_vec(), rel[i + 1..].to_vec()),
            None => (Vec::new(), rel.clone()),
        };
        let base = self
            .tree_fd(tree)
            .map_err(|err| write_err("open", tree.prefix().as_bytes(), err))?;
        let parent = match open_in_root(
            base.as_raw_fd(),
            &dir,
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        ) {
            Ok(fd) => fd,
            // as tar does, directories the archive does not list are made (root's, 0755)
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                self.make_parents(base.as_raw_fd(), &dir, &e.path)?
            }
            Err(err) if err.raw_os_error() == Some(libc::ENOTDIR) => {
                return Err(invalid(format!(
                    "{}: a parent of it is not a directory",
                    show(&e.path)
                )));
            }
            Err(err) => return Err(write_err("open the directory of", &e.path, err)),
        };
        let pfd = parent.as_raw_fd();
        let cname = cstr(&name)?;
        match &e.kind {
            Kind::Dir => {
                // SAFETY: mkdirat relative to our parent fd with a single-component name.
                match cvt(unsafe { libc::mkdirat(pfd, cname.as_ptr(), 0o700) }) {
                    Ok(()) => {}
                    Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                        if !self.is_dir(pfd, &cname) {
                            return Err(invalid(format!(
                                "conflicting entries for {}",
                                show(&e.path)
                            )));
                        }
                    }
                    Err(err) => return Err(write_err("create directory", &e.path, err)),
                }
                self.set_dir_meta(tree, &rel, &e)?;
            }
            Kind::File => {
                self.replace(pfd, &cname, &e.path)?;
                // SAFETY: openat of a single component relative to our parent fd, never
                // following a symlink, creating exclusively.
                let fd = unsafe {
                    libc::openat(
                        pfd,
                        cname.as_ptr(),
                        libc::O_WRONLY
                            | libc::O_CREAT
                            | libc::O_EXCL
                            | libc::O_NOFOLLOW
                            | libc::O_CLOEXEC,
                        0o600,
                    )
                };
                if fd < 0 {
                    return Err(write_err("create", &e.path, io::Error::last_os_error()));
                }
                // SAFETY: fresh fd.
                let file = unsafe { std::fs::File::from_raw_fd(fd) };
                // No more is written than the pool can hold (one byte past it tells): a header
                // may claim any size, so what counts is the data that comes. An archive that
                // ends first is truncated (the image's fault); one whose data goes on past
                // the pool's room is too big for this host (not the image's fault).
                let room = self.limits.max_bytes.saturating_sub(self.report.bytes);
                let want = e.size.min(room.saturating_add(1));
                let written = copy_exact(data, &file, want, &e.path, e.sparse)?;
                if written != want {
                    return Err(invalid(format!(
                        "truncated archive: {} is shorter than its header says",
                        show(&e.path)
                    )));
                }
                if want < e.size {
                    return Err(Error::os(
                        format!(
                            "the image unpacks to more than {} bytes, more than the storage pool can hold",
                            self.limits.max_bytes
                        ),
                        io::Error::from_raw_os_error(libc::ENOSPC),
                    ));
                }
                self.report.bytes = self.report.bytes.saturating_add(e.size);
                set_owner_mode(file.as_raw_fd(), &e)?;
                set_xattrs(file.as_raw_fd(), &e);
                let ts = [libc::timespec {
                    tv_sec: e.mtime,
                    tv_nsec: 0,
                }; 2];
                // SAFETY: futimens on our fd.
                unsafe { libc::futimens(file.as_raw_fd(), ts.as_ptr()) };
            }
            Kind::Symlink(target) => {
                if target.is_empty() || target.len() > 4096 || target.contains(&0) {
                    return Err(invalid(format!(
                        "symlink {} has an invalid target",
                        show(&e.path)
                    )));
                }
                if !links::stays_inside(&dir, target) {
                    return Err(invalid(format!(
                        "symlink {} -> {} leads outside the rootfs",
                        show(&e.path),
                        show(target)
                    )));
                }
                self.replace(pfd, &cname, &e.path)?;
                let t = cstr(target)?;
                // SAFETY: symlinkat relative to our parent fd.
                cvt(unsafe { libc::symlinkat(t.as_ptr(), pfd, cname.as_ptr()) })
                    .map_err(|err| write_err("create symlink", &e.path, err))?;
                self.chown_at(pfd, &cname, &e)?;
                self.links_made |= tree == Tree::Rootfs;
                let ts = [libc::timespec {
                    tv_sec: e.mtime,
                    tv_nsec: 0,
                }; 2];
                // SAFETY: utimensat on a name relative to our fd, not following it.
                unsafe {
                    libc::utimensat(pfd, cname.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
                };
            }
            Kind::Hardlink(target) => {
                let Some((ttree, trel)) = Self::place(target, layout)? else {
                    return Err(invalid(format!(
                        "hardlink {} to the archive root",
                        show(&e.path)
                    )));
                };
                if ttree != tree || trel.is_empty() {
                    return Err(invalid(format!(
                        "hardlink {} -> {} leads outside its tree",
                        show(&e.path),
                        show(target)
                    )));
                }
                let (tdir, tname) = match trel.iter().rposition(|b| *b == b'/') {
                    Some(i) => (trel[..i].to_vec(), trel[i + 1..].to_vec()),
                    None => (Vec::new(), trel.clone()),
                };
                let tparent = open_in_root(
                    base.as_raw_fd(),
                    &tdir,
                    libc::O_RDONLY | libc::O_DIRECTORY,
                    0,
                )
                .map_err(|_| {
                    invalid(format!(
                        "hardlink {} -> {}: no such entry",
                        show(&e.path),
                        show(target)
                    ))
                })?;
                let ctname = cstr(&tname)?;
                if self.is_dir(tparent.as_raw_fd(), &ctname) {
                    return Err(invalid(format!(
                        "hardlink {} -> {}: the target is a directory",
                        show(&e.path),
                        show(target)
                    )));
                }
                self.replace(pfd, &cname, &e.path)?;
                // a hardlink to a symlink is a symlink in another directory
                self.links_made |= tree == Tree::Rootfs;
                // SAFETY: linkat between two single components relative to our fds, without
                // following a symlink at the source.
                cvt(unsafe {
                    libc::linkat(tparent.as_raw_fd(), ctname.as_ptr(), pfd, cname.as_ptr(), 0)
                })
                .map_err(|err| match err.raw_os_error() {
                    Some(libc::ENOENT) => invalid(format!(
                        "hardlink {} -> {}: no such entry",
                        show(&e.path),
                        show(target)
                    )),
                    _ => write_err("link", &e.path, err),
                })?;
            }
            Kind::Fifo => {
                self.replace(pfd, &cname, &e.path)?;
                // SAFETY: mknodat of a FIFO relative to our parent fd.
                cvt(unsafe { libc::mknodat(pfd, cname.as_ptr(), libc::S_IFIFO | 0o600, 0) })
                    .map_err(|err| write_err("create fifo", &e.path, err))?;
                self.chown_at(pfd, &cname, &e)?;
                // SAFETY: fchmodat on a name relative to our fd.
                unsafe { libc::fchmodat(pfd, cname.as_ptr(), e.mode & 0o7777, 0) };
            }
            Kind::CharDevice(..) | Kind::BlockDevice(..)
                if tree == Tree::Rootfs
                    && dir.starts_with(b"dev")
                    && (dir.len() == 3 || dir[3] == b'/') => {}
            Kind::CharDevice(maj, min) | Kind::BlockDevice(maj, min) => {
                return Err(invalid(format!(
                    "device node {} ({maj}:{min}): images for unprivileged containers carry device nodes only under /dev",
                    show(&e.path)
                )));
            }
            Kind::Socket => {}
        }
        Ok(())
    }

    fn metadata(&mut self, e: &Entry, data: &mut dyn Read) -> Result<()> {
        if e.kind != Kind::File {
            return Err(invalid("metadata.yaml is not a regular file"));
        }
        if e.size > MAX_METADATA {
            return Err(invalid(format!(
                "metadata.yaml is larger than {MAX_METADATA} bytes"
            )));
        }
        let mut buf = Vec::with_capacity(e.size as usize);
        data.take(MAX_METADATA + 1)
            .read_to_end(&mut buf)
            .map_err(|err| invalid(format!("corrupt archive at metadata.yaml: {err}")))?;
        if buf.len() as u64 != e.size {
            return Err(invalid(
                "truncated archive: metadata.yaml is shorter than its header says",
            ));
        }
        let root = self.root.as_raw_fd();
        let name = c"metadata.yaml";
        // SAFETY: unlinkat/openat of a fixed name relative to the staging root.
        unsafe { libc::unlinkat(root, name.as_ptr(), 0) };
        // SAFETY: as above.
        let fd = unsafe {
            libc::openat(
                root,
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o644,
            )
        };
        if fd < 0 {
            return Err(write_err(
                "create",
                b"metadata.yaml",
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: fresh fd.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        io::Write::write_all(&mut f, &buf)
            .map_err(|err| write_err("write", b"metadata.yaml", err))?;
        self.report.metadata = Some(buf);
        Ok(())
    }

    /// Creates the missing directories of `dir` (components under `base`), one by one, each
    /// relative to the previous one's fd; returns the last one.
    fn make_parents(&self, base: RawFd, dir: &[u8], path: &[u8]) -> Result<OwnedFd> {
        let mut cur = open_in_root(base, b"", libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(|err| write_err("open", path, err))?;
        for comp in dir.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            let c = cstr(comp)?;
            // SAFETY: mkdirat of one component relative to our fd.
            match cvt(unsafe { libc::mkdirat(cur.as_raw_fd(), c.as_ptr(), 0o755) }) {
                Ok(()) | Err(_) if self.is_dir(cur.as_raw_fd(), &c) => {}
                Ok(()) => {}
                Err(err) => return Err(write_err("create the directory of", path, err)),
            }
            cur = open_in_root(
                cur.as_raw_fd(),
                comp,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )
            .map_err(|_| invalid(format!("{}: a parent of it is not a directory", show(path))))?;
        }
        Ok(cur)
    }

    fn ensure_tree(&self, tree: Tree) -> Result<()> {
        let name = cstr(tree.prefix().as_bytes())?;
        // SAFETY: mkdirat of a fixed top-level name relative to the staging root.
        match cvt(unsafe { libc::mkdirat(self.root.as_raw_fd(), name.as_ptr(), 0o755) }) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                if self.is_dir(self.root.as_raw_fd(), &name) {
                    Ok(())
                } else {
                    Err(invalid(format!("{} is not a directory", tree.prefix())))
                }
            }
            Err(e) => Err(write_err("create", tree.prefix().as_bytes(), e)),
        }
    }

    fn set_dir_meta(&mut self, tree: Tree, rel: &[u8], e: &Entry) -> Result<()> {
        let base = self
            .tree_fd(tree)
            .map_err(|err| write_err("open", tree.prefix().as_bytes(), err))?;
        let fd = open_in_root(
            base.as_raw_fd(),
            rel,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .map_err(|err| write_err("open directory", &e.path, err))?;
        set_owner_mode(fd.as_raw_fd(), e)?;
        set_xattrs(fd.as_raw_fd(), e);
        self.dir_times.push((tree, rel.to_vec(), e.mtime));
        Ok(())
    }

    fn is_dir(&self, dirfd: RawFd, name: &CString) -> bool {
        // SAFETY: stat is plain data; fstatat without following symlinks.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers.
        (unsafe { libc::fstatat(dirfd, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } == 0)
            && st.st_mode & libc::S_IFMT == libc::S_IFDIR
    }

    /// A later entry for an existing non-directory replaces it; a directory is never replaced.
    fn replace(&self, dirfd: RawFd, name: &CString, path: &[u8]) -> Result<()> {
        if self.is_dir(dirfd, name) {
            return Err(invalid(format!("conflicting entries for {}", show(path))));
        }
        // SAFETY: unlinkat of a single component relative to our fd.
        let r = unsafe { libc::unlinkat(dirfd, name.as_ptr(), 0) };
        if r < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENOENT) {
                return Err(write_err("replace", path, err));
            }
        }
        Ok(())
    }

    fn chown_at(&self, dirfd: RawFd, name: &CString, e: &Entry) -> Result<()> {
        // SAFETY: fchownat on a single component relative to our fd, not following it.
        cvt(unsafe {
            libc::fchownat(
                dirfd,
                name.as_ptr(),
                e.uid as u32,
                e.gid as u32,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map_err(|err| write_err("chown", &e.path, err))
    }
}

/// Owner first (it clears setuid bits), then the exact mode.
fn set_owner_mode(fd: RawFd, e: &Entry) -> Result<()> {
    // SAFETY: fchown/fchmod on our fd.
    cvt(unsafe { libc::fchown(fd, e.uid as u32, e.gid as u32) })
        .map_err(|err| write_err("chown", &e.path, err))?;
    // SAFETY: as above.
    cvt(unsafe { libc::fchmod(fd, e.mode & 0o7777) })
        .map_err(|err| write_err("chmod", &e.path, err))
}

/// Best effort: file capabilities and user xattrs.
fn set_xattrs(fd: RawFd, e: &Entry) {
    for (k, v) in &e.xattrs {
        let Ok(name) = CString::new(k.clone()) else {
            continue;
        };
        // SAFETY: fsetxattr with a valid name and value buffer.
        unsafe { libc::fsetxattr(fd, name.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    }
}

/// Copies up to `size` bytes of entry data; returns how many arrived. A read error is a
/// corrupt archive, a write error a storage problem. For a sparse file, blocks of zeros are
/// skipped (left as holes) and the size is set at the end.
fn copy_exact(
    r: &mut dyn Read,
    mut out: &std::fs::File,
    size: u64,
    path: &[u8],
    sparse: bool,
) -> Result<u64> {
    use std::io::{Seek, Write};
    const HOLE: usize = 4096;
    let mut buf = vec![0u8; (size.min(256 * 1024) as usize).max(1)];
    let mut done = 0u64;
    let mut skipped = false;
    while done < size {
        let want = ((size - done) as usize).min(buf.len());
        let n = loop {
            match r.read(&mut buf[..want]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(invalid(format!(
                        "corrupt or truncated archive at {}: {e}",
                        show(path)
                    )));
                }
            }
        };
        if n == 0 {
            break;
        }
        if sparse {
            for chunk in buf[..n].chunks(HOLE) {
                if chunk.iter().all(|b| *b == 0) {
                    out.seek(io::SeekFrom::Current(chunk.len() as i64))
                        .map_err(|e| write_err("seek in", path, e))?;
                    skipped = true;
                } else {
                    out.write_all(chunk)
                        .map_err(|e| write_err("write", path, e))?;
                }
            }
        } else {
            out.write_all(&buf[..n])
                .map_err(|e| write_err("write", path, e))?;
        }
        done += n as u64;
    }
    if skipped {
        out.set_len(done).map_err(|e| write_err("size", path, e))?;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalize_or_are_refused() {
        assert_eq!(normalize(b"./rootfs/etc/").unwrap(), b"rootfs/etc");
        assert_eq!(normalize(b"rootfs//a/./b").unwrap(), b"rootfs/a/b");
        assert_eq!(normalize(b"./").unwrap(), b"");
        assert!(normalize(b"/etc/passwd").is_err());
        assert!(normalize(b"rootfs/../../etc").is_err());
        assert!(normalize(b"..").is_err());
        assert!(normalize(&[b'a'; 5000]).is_err());
    }

    #[test]
    fn places_entries_by_layout() {
        let p = |s: &[u8], l| {
            Extractor::place(s, l).map(|o| o.map(|(t, r)| (t, String::from_utf8(r).unwrap())))
        };
        assert_eq!(
            p(b"rootfs/etc/hosts", Layout::Unified).unwrap(),
            Some((Tree::Rootfs, "etc/hosts".into()))
        );
        assert_eq!(
            p(b"./metadata.yaml", Layout::Unified).unwrap(),
            Some((Tree::Root, "metadata.yaml".into()))
        );
        assert_eq!(
            p(b"templates/a.tpl", Layout::Metadata).unwrap(),
            Some((Tree::Templates, "a.tpl".into()))
        );
        assert!(p(b"rootfs/x", Layout::Metadata).is_err());
        assert!(p(b"evil", Layout::Unified).is_err());
        assert_eq!(
            p(b"etc/hosts", Layout::Rootfs).unwrap(),
            Some((Tree::Rootfs, "etc/hosts".into()))
        );
    }
}
