//! Keeping an idle monitor's resident set small.

/// How long the monitor waits after its last event before trimming its resident set.
pub(super) const IDLE_TRIM_MS: i32 = 1000;

/// Keeps an idle monitor small. Starting a container, parsing JSON or running an exec fault in
/// code from the binary and libc (with the kernel's 64 KiB fault-around) that an idle monitor
/// blocked in poll(2) does not need. When idle, every file-backed, read-only private mapping
/// without anonymous (copied-on-write) pages is `MADV_DONTNEED`ed, as is the receive buffer:
/// those pages come back from the page cache (or as zeroes) on the next access. Mappings
/// holding copied pages (relocations, data) are never touched, since that would lose them.
pub(super) struct Trimmer {
    ranges: Vec<(usize, usize)>,
}

impl Trimmer {
    /// Finds the droppable mappings once (they do not change while the monitor runs) and the
    /// page-aligned interior of the receive buffer.
    pub(super) fn new(scratch: &[u8]) -> Trimmer {
        let mut ranges = Vec::new();
        let page = 4096usize;
        let (a, b) = (
            scratch.as_ptr() as usize,
            scratch.as_ptr() as usize + scratch.len(),
        );
        let (a, b) = (a.div_ceil(page) * page, b / page * page);
        if b > a {
            ranges.push((a, b - a));
        }
        let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
            return Trimmer { ranges };
        };
        let mut cur: Option<(usize, usize, bool)> = None;
        let keep = |c: Option<(usize, usize, bool)>, ranges: &mut Vec<(usize, usize)>| {
            if let Some((start, len, true)) = c {
                ranges.push((start, len));
            }
        };
        for line in smaps.lines() {
            let mut f = line.split_whitespace();
            let first = f.next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-')
                && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                keep(cur.take(), &mut ranges);
                let perms = f.next().unwrap_or("");
                let path = f.nth(3).unwrap_or("");
                let candidate = (perms == "r-xp" || perms == "r--p") && path.starts_with('/');
                cur = Some((a, b - a, candidate));
            } else if first == "Anonymous:"
                && f.next().is_some_and(|v| v != "0")
                && let Some(c) = cur.as_mut()
            {
                c.2 = false;
            }
        }
        keep(cur, &mut ranges);
        Trimmer { ranges }
    }

    pub(super) fn trim(&self) {
        for &(start, len) in &self.ranges {
            // SAFETY: each range is either a clean, read-only, file-backed private mapping of
            // this process (its pages refault from the file unchanged) or the interior of the
            // receive buffer, whose contents are scratch (it refaults as zeroes).
            unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        }
    }
}
