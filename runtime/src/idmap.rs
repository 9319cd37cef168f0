//! The id mapping of unprivileged containers: container uid/gid 0..count ↔ a host range.
//!
//! The host range comes from the `root` entries of `/etc/subuid` and `/etc/subgid` when they
//! exist (as LXD does), otherwise from berth's default of 1000000 + 65536.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Default first host id when /etc/subuid has no `root` entry.
pub const DEFAULT_BASE: u32 = 1_000_000;
/// Ids per container: a full 16-bit range, enough for any distribution.
pub const DEFAULT_COUNT: u32 = 65_536;

/// One container's id mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// Host uid that container uid 0 maps to.
    pub uid_base: u32,
    /// Host gid that container gid 0 maps to.
    pub gid_base: u32,
    /// Number of ids mapped (both uids and gids).
    pub count: u32,
}

impl IdMap {
    /// The host's mapping for containers: `root` entries of /etc/subuid and /etc/subgid, or the
    /// default range.
    pub fn host_default() -> IdMap {
        let from = |p: &str| std::fs::read_to_string(p).ok().and_then(|s| root_range(&s));
        let (ub, uc) = from("/etc/subuid").unwrap_or((DEFAULT_BASE, DEFAULT_COUNT));
        let (gb, gc) = from("/etc/subgid").unwrap_or((DEFAULT_BASE, DEFAULT_COUNT));
        IdMap {
            uid_base: ub,
            gid_base: gb,
            count: uc.min(gc).min(DEFAULT_COUNT),
        }
    }

    /// The `uid_map` line for `/proc/<pid>/uid_map`.
    pub fn uid_map_line(&self) -> String {
        format!("0 {} {}\n", self.uid_base, self.count)
    }

    /// The `gid_map` line for `/proc/<pid>/gid_map`.
    pub fn gid_map_line(&self) -> String {
        format!("0 {} {}\n", self.gid_base, self.count)
    }

    /// Host uid for a container uid, if mapped.
    pub fn host_uid(&self, uid: u32) -> Option<u32> {
        (uid < self.count).then(|| self.uid_base + uid)
    }

    /// Host gid for a container gid, if mapped.
    pub fn host_gid(&self, gid: u32) -> Option<u32> {
        (gid < self.count).then(|| self.gid_base + gid)
    }

    /// Writes both maps for process `pid` (which must be in a fresh user namespace).
    pub fn write_for(&self, pid: libc::pid_t) -> crate::Result<()> {
        use crate::error::Context;
        let uid = format!("/proc/{pid}/uid_map");
        let gid = format!("/proc/{pid}/gid_map");
        crate::sys::write_file(Path::new(&uid), self.uid_map_line().as_bytes())
            .step(|| format!("write {uid}"))?;
        crate::sys::write_file(Path::new(&gid), self.gid_map_line().as_bytes())
            .step(|| format!("write {gid}"))?;
        Ok(())
    }
}

/// The first `root:<start>:<count>` range of a subuid/subgid file with at least 65536 ids.
fn root_range(contents: &str) -> Option<(u32, u32)> {
    contents.lines().find_map(|l| {
        let mut it = l.trim().split(':');
        let (who, start, count) = (it.next()?, it.next()?, it.next()?);
        if who != "root" && who != "0" {
            return None;
        }
        let (s, c) = (start.parse::<u32>().ok()?, count.parse::<u32>().ok()?);
        (c >= DEFAULT_COUNT && s.checked_add(c).is_some() && s > 0).then_some((s, c))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_first_large_enough_root_range() {
        let f = "alice:100000:65536\nroot:200000:1000\nroot:300000:65536\n";
        assert_eq!(root_range(f), Some((300000, 65536)));
        assert_eq!(root_range("bob:1:65536\n"), None);
        assert_eq!(root_range("root:x:65536\n"), None);
        assert_eq!(root_range("root:4294967295:65536\n"), None);
    }

    #[test]
    fn map_lines() {
        let m = IdMap {
            uid_base: 1_000_000,
            gid_base: 2_000_000,
            count: 65536,
        };
        assert_eq!(m.uid_map_line(), "0 1000000 65536\n");
        assert_eq!(m.gid_map_line(), "0 2000000 65536\n");
        assert_eq!(m.host_uid(0), Some(1_000_000));
        assert_eq!(m.host_uid(65536), None);
    }
}
