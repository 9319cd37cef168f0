//! The floor: what starting a container costs the runtime crate alone, with no daemon, no bus
//! and no monitor: clone with every namespace, id maps, cgroups, an idmapped rootfs, /proc,
//! /sys, /dev, pivot_root and exec of busybox's init, in this (still single-threaded) process.

use super::util::ms;
use berth_runtime::{cgroup, idmap, image, launch, spec};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `runs` samples of the floor, in milliseconds. Must run before any thread is spawned.
pub fn measure(runs: usize) -> Vec<f64> {
    let dir = PathBuf::from(format!("/tmp/berth-bench-floor-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("floor directory");
    let archive = dir.join("busybox.tar");
    image::build_busybox(Path::new("/bin/busybox"), &archive).expect("build busybox");
    std::fs::create_dir_all(dir.join("vol")).expect("volume directory");
    let st = std::process::Command::new("tar")
        .arg("-C")
        .arg(dir.join("vol"))
        .arg("-xf")
        .arg(&archive)
        .status()
        .expect("tar");
    assert!(st.success(), "unpack the busybox image");
    let layout = cgroup::Layout::detect().expect("cgroup layout");
    let parent = format!("berth-bench-{}", std::process::id());
    let spec = spec::ContainerSpec {
        name: "floor".into(),
        rootfs: dir.join("vol/rootfs"),
        idmap: idmap::IdMap::host_default(),
        shifted: false,
        cgroups: cgroup::ContainerCgroups::new(layout, &parent, "floor"),
        init: vec!["/sbin/init".into()],
        env: spec::default_init_env(),
        stop_signal: libc::SIGUSR2,
        run_dir: dir.join("run"),
        cap_drop: spec::DEFAULT_CAP_DROP
            .iter()
            .map(|s| s.to_string())
            .collect(),
        console_log_max: 1 << 20,
        nics: Vec::new(),
        restore: None,
    };
    spec.cgroups.create().expect("floor cgroups");
    let mut samples = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let started = launch::start(&spec).expect("floor start");
        samples.push(ms(t.elapsed()));
        let _ = berth_runtime::sys::pidfd_send_signal(
            std::os::fd::AsFd::as_fd(&started.pidfd),
            libc::SIGKILL,
        );
        let _ = berth_runtime::sys::waitpid_blocking(started.pid);
    }
    let _ = spec.cgroups.remove();
    for m in berth_tests::cgroup_mounts() {
        let _ = std::fs::remove_dir(m.join(&parent));
        let _ = std::fs::remove_dir(m.join(format!("{parent}.monitor")));
    }
    let _ = std::fs::remove_dir_all(&dir);
    samples
}
