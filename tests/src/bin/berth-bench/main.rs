//! berth-bench: measures berth against its floor and its references on this machine, and
//! prints a table of median, p10 and p90 per figure, the ratio to a reference measured in the
//! same run, the target of issue #5 and whether it is met.
//!
//! Usage (as root, after scripts/setup):
//!   berth-bench [--runs N] [--only SECTIONS] [--defined 1,100,1000] [--max-running 500]
//! SECTIONS (comma-separated, default all): floor, lifecycle, dir, starts, api, running,
//! checkpoint, images.
//!
//! Everything it uses is set up and torn down here: private system buses with polkitd, berthd
//! activated from the build directory, its own pools (btrfs on a loop file, and dir), cgroups
//! and bridges.

mod checkpoint;
mod floor;
mod images;
mod lifecycle;
mod report;
mod scale;
mod util;

use berth_tests::{Env, Options, Storage};
use report::Report;

/// The floor's figure name (the reference of start and create).
pub const FLOOR: &str = "floor: clone → pivot_root → exec init (runtime alone)";
/// The start figure's name.
pub const START: &str = "start (call → init running)";

const SECTIONS: &[&str] = &[
    "floor",
    "lifecycle",
    "dir",
    "starts",
    "api",
    "running",
    "checkpoint",
    "images",
];
const USAGE: &str = "usage: berth-bench [--runs N] [--only floor,lifecycle,dir,starts,api,running,checkpoint,images] [--defined 1,100,1000] [--max-running 500]";

struct Args {
    runs: usize,
    only: Vec<String>,
    defined: Vec<usize>,
    max_running: usize,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        runs: 20,
        only: SECTIONS.iter().map(|s| s.to_string()).collect(),
        defined: vec![1, 100, 1000],
        max_running: 500,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--runs" => {
                a.runs = value()?
                    .parse()
                    .map_err(|_| "--runs takes a number".to_string())?
            }
            "--max-running" => {
                a.max_running = value()?
                    .parse()
                    .map_err(|_| "--max-running takes a number".to_string())?
            }
            "--defined" => {
                a.defined = value()?
                    .split(',')
                    .map(|n| n.parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| "--defined takes numbers".to_string())?;
                a.defined.sort_unstable();
                if a.defined.first() == Some(&0) {
                    return Err("--defined counts start at 1 (0 is always measured)".into());
                }
            }
            "--only" => {
                a.only = value()?.split(',').map(str::to_string).collect();
                if let Some(bad) = a.only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
                    return Err(format!("unknown section {bad:?}"));
                }
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    Ok(a)
}

/// berthd as the bench runs it: with the favordynmods cgroup option that users opt into for
/// fast starts (docs/operations.md), and no idle exit, which would put an activation inside
/// whatever figure follows a long bare-CRIU or peer measurement.
fn bench_args() -> Vec<String> {
    vec!["--favordynmods".into(), "--idle-timeout".into(), "0".into()]
}

fn btrfs_env(size: &str) -> Env {
    Env::with(Options {
        storage: Some(Storage::Btrfs),
        pool_size: Some(size.into()),
        daemon_args: bench_args(),
        ..Default::default()
    })
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("berth-bench: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    // SAFETY: geteuid has no failure mode.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("berth-bench: run as root (it starts real containers)");
        std::process::exit(1);
    }
    let on = |s: &str| args.only.iter().any(|o| o == s);
    let mut report = Report::default();
    // the floor first: launch::start needs a single-threaded process
    if on("floor") || on("lifecycle") {
        println!("floor ({} runs)", args.runs);
        report.add(FLOOR, "ms", floor::measure(args.runs));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    if on("lifecycle") || on("starts") || on("images") {
        let env = btrfs_env("4GiB");
        if on("lifecycle") {
            println!("one container's life on btrfs ({} runs)", args.runs);
            rt.block_on(lifecycle::measure(
                &env,
                Storage::Btrfs,
                args.runs,
                &mut report,
            ));
        }
        if on("starts") {
            println!("50 starts in a row and at once");
            rt.block_on(lifecycle::many_starts(
                &env,
                args.runs.div_ceil(10).max(3),
                &mut report,
            ));
        }
        if on("images") {
            println!("image import and launch from a cached image");
            rt.block_on(images::measure(&env, &mut report));
        }
    }
    if on("dir") {
        println!("one container's life on dir ({} runs)", args.runs.min(10));
        let env = Env::with(Options {
            storage: Some(Storage::Dir),
            daemon_args: bench_args(),
            ..Default::default()
        });
        rt.block_on(lifecycle::measure(
            &env,
            Storage::Dir,
            args.runs.min(10),
            &mut report,
        ));
    }
    if on("api") {
        println!(
            "calls and memory with {:?} containers defined",
            args.defined
        );
        let env = btrfs_env("8GiB");
        rt.block_on(scale::api(&env, &args.defined, args.runs, &mut report));
    }
    if on("running") {
        println!("many running containers (up to {})", args.max_running);
        let env = btrfs_env("8GiB");
        rt.block_on(scale::running(&env, args.max_running, &mut report));
    }
    if on("checkpoint") {
        println!("stateful snapshots and restores against bare CRIU");
        let env = btrfs_env("4GiB");
        rt.block_on(checkpoint::measure(&env, args.runs.min(15), 0, &mut report));
        rt.block_on(checkpoint::measure(
            &env,
            args.runs.clamp(3, 5),
            200,
            &mut report,
        ));
    }
    report.print();
}
