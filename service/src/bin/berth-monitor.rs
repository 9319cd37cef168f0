//! berth-monitor: the per-container monitor process (see berth_runtime::monitor). berthd runs
//! it ahead of need and writes a container's spec on its stdin when one starts. It is a
//! binary of its own so that tools aimed at berthd by name (`pkill berthd`, `pidof berthd`, a
//! unit's KillMode) never hit the monitors, and so that each running container costs only
//! this small process.

fn main() {
    #[cfg(feature = "crash-points")]
    if let Err(e) = berth_runtime::crash::arm_from_env() {
        eprintln!("berth-monitor: {e}");
        std::process::exit(2);
    }
    berth_runtime::monitor::main_stdio();
}
