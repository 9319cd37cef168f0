//! What the fuzz targets share: fresh scratch directories for the targets that write files
//! (archive extraction, template rendering) and the checks that hostile paths stayed inside
//! the directory they were aimed at.

use berth_runtime::image::extract::{Extractor, Limits};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A directory made for one input and removed after it: `outer/` holds `inner/` (where the code
/// under test writes) and nothing else, so anything that escapes `inner/` by a path trick shows
/// up next to it.
#[derive(Debug)]
pub struct Scratch {
    /// The directory around the one under test.
    pub outer: PathBuf,
    /// The directory the code under test is given.
    pub inner: PathBuf,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

impl Scratch {
    /// A new, empty pair of directories under the temporary directory.
    pub fn new() -> Scratch {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let outer = std::env::temp_dir().join(format!("berth-fuzz-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&outer);
        let inner = outer.join("inner");
        std::fs::create_dir_all(&inner).expect("create the scratch directory");
        Scratch { outer, inner }
    }

    /// An extractor writing into `inner/`, with small limits (4 MiB, 4096 entries) and a
    /// container's 65536 ids.
    pub fn extractor(&self) -> Extractor {
        let root = std::fs::File::open(&self.inner).expect("open the staging directory");
        Extractor::new(
            OwnedFd::from(root),
            Limits {
                max_bytes: 4 << 20,
                max_entries: 4096,
                id_count: 65536,
            },
        )
    }

    /// Panics (a finding) when `outer/` holds anything but `inner/`.
    pub fn assert_nothing_escaped(&self) {
        let names: Vec<_> = std::fs::read_dir(&self.outer)
            .expect("list the scratch directory")
            .map(|e| e.expect("read the scratch directory").file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("inner")],
            "something was written outside the directory under test"
        );
        let m = std::fs::symlink_metadata(&self.inner).expect("stat the directory under test");
        assert!(m.is_dir(), "the directory under test was replaced");
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.outer);
    }
}

/// Panics unless `path` is `base` followed by exactly `depth` plain components (no `..`, no
/// root, no `.`): a path built from a name stays inside the directory it is meant for.
pub fn assert_under(base: &Path, path: &Path, depth: usize) {
    let rest = path
        .strip_prefix(base)
        .unwrap_or_else(|_| panic!("{} is not under {}", path.display(), base.display()));
    let comps: Vec<_> = rest.components().collect();
    assert!(
        comps.iter().all(|c| matches!(c, Component::Normal(_))),
        "{} leaves {} ({comps:?})",
        path.display(),
        base.display()
    );
    assert_eq!(
        comps.len(),
        depth,
        "{} is not {depth} level(s) below {}",
        path.display(),
        base.display()
    );
}
