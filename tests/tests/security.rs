//! End-to-end: what confines a container's processes besides its namespaces — the process
//! limit.

use berth_tests::{Env, Storage};

fn root_or_skip() -> bool {
    // SAFETY: geteuid has no failure mode.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(root || std::env::var_os("BERTH_E2E_ALLOW_SKIP").is_some(), "end-to-end tests need root");
    root
}

/// The container's `pids.max` as the host sees it (its group in the pids hierarchy).
fn pids_max(env: &Env, c: &str) -> String {
    let f = env.cgroup_dirs(c).into_iter().map(|d| d.join("pids.max")).find(|p| p.exists()).expect("a pids hierarchy");
    std::fs::read_to_string(f).unwrap().trim().to_string()
}

#[test]
fn containers_get_a_default_process_limit_that_config_overrides() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    env.ok(&["launch", "busybox", "p1"]);
    env.ok(&["launch", "busybox", "p2", "-c", "limits.processes=50"]);
    assert_eq!(pids_max(&env, "p1"), "10000");
    assert_eq!(pids_max(&env, "p2"), "50");
    // enforced: of 60 processes asked for, the ones past 50 are refused
    // (sh gives up at the first fork refused: its status says nothing more)
    let _ = env.berth(&["exec", "p2", "--", "sh", "-c", "for i in $(seq 60); do sleep 100 </dev/null >/dev/null 2>&1 & done"]);
    let pids = env.cgroup_dirs("p2").into_iter().find(|d| d.join("pids.max").exists()).unwrap();
    let current: u32 = std::fs::read_to_string(pids.join("pids.current")).unwrap().trim().parse().unwrap();
    assert!(current <= 50, "{current} processes");
    let events = std::fs::read_to_string(pids.join("pids.events")).unwrap();
    let refused: u64 = events.lines().find_map(|l| l.strip_prefix("max ")).and_then(|n| n.trim().parse().ok()).unwrap_or(0);
    assert!(refused > 0, "forks past the limit were refused: {events}");
    // the default holds for a container started again
    env.ok(&["restart", "--force", "p1"]);
    assert_eq!(pids_max(&env, "p1"), "10000");
}
