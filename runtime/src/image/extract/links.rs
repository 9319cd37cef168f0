//! Where the symlinks of an unpacked rootfs lead. One link's text can look harmless while a
//! chain does not (`d/s -> ..` and `d/t -> s/..`: `t` ends above the rootfs), and the links
//! of a chain can arrive in any order, so once everything is written each symlink is resolved
//! inside the tree as the kernel would resolve it — following the links it meets, at most
//! [`MAX_FOLLOW`] — and one whose relative walk climbs above the rootfs root is refused.
//!
//! An absolute target is interpreted inside the container (its `/` is the rootfs), so a walk
//! restarted by one treats `..` at the root as the root, as the kernel does there. A chain the
//! kernel would give up on (a loop, or more than 40 links) cannot be followed by anyone and is
//! left alone. Components that do not exist (yet) are taken lexically.

use super::{invalid, open_in_root, show};
use crate::error::{Error, Result};
use std::collections::VecDeque;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// Symlinks the kernel follows in one path walk (MAXSYMLINKS).
pub const MAX_FOLLOW: usize = 40;

/// What a path inside the tree is, as far as resolving goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A symlink with this target.
    Symlink(Vec<u8>),
    /// Anything else, or nothing.
    Other,
}

/// Whether resolving a link stays inside the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// It ends inside.
    Inside,
    /// Its walk climbs above the root.
    Escapes,
    /// The kernel would give up on it (a loop, or too long a chain).
    Unfollowable,
}

/// Resolves the symlink target `target` found in directory `dir` (components, none of them a
/// symlink), looking paths up with `lookup`.
pub fn resolve(
    dir: &[Vec<u8>],
    target: &[u8],
    lookup: &mut dyn FnMut(&[Vec<u8>]) -> Result<Node>,
) -> Result<Resolution> {
    let mut stack: Vec<Vec<u8>> = dir.to_vec();
    let mut pending: VecDeque<Vec<u8>> = VecDeque::new();
    // after an absolute target the walk is in the container's view, where /.. is /
    let mut anchored = false;
    let mut followed = 0;
    splice(&mut pending, target, &mut stack, &mut anchored);
    while let Some(c) = pending.pop_front() {
        match c.as_slice() {
            b"" | b"." => {}
            b".." => {
                if stack.pop().is_none() && !anchored {
                    return Ok(Resolution::Escapes);
                }
            }
            _ => {
                stack.push(c);
                if let Node::Symlink(t) = lookup(&stack)? {
                    followed += 1;
                    if followed > MAX_FOLLOW {
                        return Ok(Resolution::Unfollowable);
                    }
                    stack.pop();
                    splice(&mut pending, &t, &mut stack, &mut anchored);
                }
            }
        }
    }
    Ok(Resolution::Inside)
}

/// Puts a target's components in front of what is left to walk.
fn splice(
    pending: &mut VecDeque<Vec<u8>>,
    target: &[u8],
    stack: &mut Vec<Vec<u8>>,
    anchored: &mut bool,
) {
    if target.first() == Some(&b'/') {
        stack.clear();
        *anchored = true;
    }
    for c in target.split(|b| *b == b'/').rev() {
        pending.push_front(c.to_vec());
    }
}

/// Whether a relative symlink target, seen from the directory `dir` (components under the
/// tree's root), stays inside the tree by its text alone (a first check, as entries arrive).
pub fn stays_inside(dir: &[u8], target: &[u8]) -> bool {
    let parts: Vec<Vec<u8>> = dir
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    let r = resolve(&parts, target, &mut |_| Ok(Node::Other));
    !matches!(r, Ok(Resolution::Escapes))
}

fn join(p: &[Vec<u8>]) -> Vec<u8> {
    p.join(&b'/')
}

/// What a path is on disk, relative to the tree's fd (components are real directories or
/// missing: the walk never pushes a symlink).
fn lookup_disk(root: RawFd, p: &[Vec<u8>]) -> Result<Node> {
    let path = join(p);
    let c = CString::new(path.clone())
        .map_err(|_| invalid(format!("path {:?} contains NUL", show(&path))))?;
    // SAFETY: stat is plain data; fstatat relative to our fd without following the last link.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers.
    if unsafe { libc::fstatat(root, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => Ok(Node::Other),
            Some(libc::ENAMETOOLONG) => Err(invalid(format!(
                "a symlink chain leads to a path longer than the kernel resolves: {}…",
                show(&path[..64.min(path.len())])
            ))),
            _ => Err(Error::os(format!("stat {}", show(&path)), e)),
        };
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
        return Ok(Node::Other);
    }
    Ok(Node::Symlink(readlink(root, &c).map_err(|e| {
        Error::os(format!("readlink {}", show(&path)), e)
    })?))
}

fn readlink(dir: RawFd, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 4097];
    // SAFETY: readlinkat into our buffer of the length given.
    let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// A symlink found on disk: its directory's components, its name, its target.
type Found = (Vec<Vec<u8>>, Vec<u8>, Vec<u8>);

/// Every symlink under the directory `root`.
fn symlinks(root: RawFd) -> Result<Vec<Found>> {
    let mut found = Vec::new();
    let mut dirs: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
    while let Some(d) = dirs.pop() {
        let path = join(&d);
        let fd = open_in_root(
            root,
            &path,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENAMETOOLONG) => {
                invalid("the rootfs nests directories deeper than a path can name")
            }
            _ => Error::os(format!("open {}", show(&path)), e),
        })?;
        // SAFETY: dup so that fdopendir owns its own fd.
        let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        // SAFETY: fdopendir takes ownership of `dup` (or fails and we close nothing twice:
        // on failure the caller keeps it, and it is closed below).
        let dirp = unsafe { libc::fdopendir(dup) };
        if dirp.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fdopendir failed, `dup` is still ours.
            unsafe { libc::close(dup) };
            return Err(Error::os(format!("read {}", show(&path)), e));
        }
        loop {
            // SAFETY: readdir on our DIR*.
            let ent = unsafe { libc::readdir(dirp) };
            if ent.is_null() {
                break;
            }
            // SAFETY: d_name is NUL-terminated; d_type is plain data.
            let (name, dtype) = unsafe {
                (
                    CStr::from_ptr((*ent).d_name.as_ptr()).to_owned(),
                    (*ent).d_type,
                )
            };
            if name.as_bytes() == b"." || name.as_bytes() == b".." {
                continue;
            }
            let dtype = if dtype == libc::DT_UNKNOWN {
                // SAFETY: stat is plain data; fstatat relative to our fd, not following.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: valid pointers.
                if unsafe {
                    libc::fstatat(
                        fd.as_raw_fd(),
                        name.as_ptr(),
                        &mut st,
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                } != 0
                {
                    continue;
                }
                match st.st_mode & libc::S_IFMT {
                    libc::S_IFDIR => libc::DT_DIR,
                    libc::S_IFLNK => libc::DT_LNK,
                    _ => libc::DT_REG,
                }
            } else {
                dtype
            };
            if dtype == libc::DT_DIR {
                let mut sub = d.clone();
                sub.push(name.as_bytes().to_vec());
                dirs.push(sub);
            } else if dtype == libc::DT_LNK {
                let t = readlink(fd.as_raw_fd(), &name)
                    .map_err(|e| Error::os(format!("readlink {}", show(&path)), e))?;
                found.push((d.clone(), name.as_bytes().to_vec(), t));
            }
        }
        // SAFETY: closedir of our DIR*.
        unsafe { libc::closedir(dirp) };
    }
    Ok(found)
}

/// Refuses the tree under the directory `root` if one of its symlinks resolves outside it.
pub fn check_tree(root: RawFd) -> Result<()> {
    for (dir, name, target) in symlinks(root)? {
        if resolve(&dir, &target, &mut |p| lookup_disk(root, p))? == Resolution::Escapes {
            let mut at = dir.clone();
            at.push(name);
            return Err(invalid(format!(
                "symlink {} -> {} leads outside the rootfs (through the links it meets)",
                show(&join(&at)),
                show(&target)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parts(p: &str) -> Vec<Vec<u8>> {
        p.split('/')
            .filter(|c| !c.is_empty())
            .map(|c| c.as_bytes().to_vec())
            .collect()
    }

    fn check(links: &[(&str, &str)], which: &str) -> Resolution {
        let map: HashMap<Vec<u8>, Vec<u8>> = links
            .iter()
            .map(|(p, t)| (p.as_bytes().to_vec(), t.as_bytes().to_vec()))
            .collect();
        let (dir, _) = which.rsplit_once('/').unwrap_or(("", which));
        let target = &map[which.as_bytes()];
        resolve(&parts(dir), target, &mut |p| {
            Ok(map
                .get(&join(p))
                .map_or(Node::Other, |t| Node::Symlink(t.clone())))
        })
        .unwrap()
    }

    #[test]
    fn text_alone() {
        assert!(stays_inside(b"usr/bin", b"../lib/x"));
        assert!(stays_inside(b"usr/bin", b"../../etc/passwd"));
        assert!(!stays_inside(b"usr/bin", b"../../../etc/passwd"));
        assert!(!stays_inside(b"", b".."));
        assert!(stays_inside(b"", b"/etc/passwd"));
        assert!(
            stays_inside(b"", b"/../../etc"),
            "absolute targets are the container's: /.. is /"
        );
        assert!(stays_inside(b"a", b"./b/../c"));
    }

    #[test]
    fn chains_are_followed() {
        let links = [("d/s", ".."), ("d/t", "s/..")];
        assert_eq!(check(&links, "d/s"), Resolution::Inside);
        assert_eq!(
            check(&links, "d/t"),
            Resolution::Escapes,
            "s leads to the root, and .. above it"
        );
        // through an absolute link the walk is the container's, where /.. is /
        assert_eq!(
            check(&[("d/s", "/"), ("d/t", "s/..")], "d/t"),
            Resolution::Inside
        );
        // a link into a deeper directory makes the same text harmless
        assert_eq!(
            check(&[("l", "a/b/c"), ("t", "l/../../..")], "t"),
            Resolution::Inside
        );
        assert_eq!(
            check(&[("l", "a/b/c"), ("t", "l/../../../..")], "t"),
            Resolution::Escapes
        );
        // a loop cannot be followed by anyone
        assert_eq!(
            check(&[("a", "b"), ("b", "a")], "a"),
            Resolution::Unfollowable
        );
        // components that do not exist are taken lexically
        assert_eq!(check(&[("x", "nothing/../..")], "x"), Resolution::Escapes);
        // the kernel's own idiom, usr/bin/X11 -> .
        assert_eq!(
            check(&[("usr/bin/X11", ".")], "usr/bin/X11"),
            Resolution::Inside
        );
    }
}
