//! berthd: the berth daemon. Owns `org.berth.Berth1` on the system bus, the SQLite state and
//! the engine's actors; containers run under per-container monitors (the `berth-monitor`
//! binary) that outlive the daemon.
//!
//! Usage:
//!   berthd [--bus ADDRESS] [--state-dir DIR] [--run-dir DIR] [--cgroup-parent NAME]
//!          [--busybox PATH]
//!   berthd init [--storage btrfs|dir] [--size BYTES] [--state-dir DIR]
//!   berthd shutdown [--bus ADDRESS] [the daemon's options]
//!   berthd recover [--state-dir DIR]

mod activation;
mod boot;
mod config;
mod daemon;
mod logging;
mod recover;
mod systemd;

use std::process::ExitCode;

fn main() -> ExitCode {
    #[cfg(feature = "crash-points")]
    if let Err(e) = berth_runtime::crash::arm_from_env() {
        eprintln!("berthd: {e}");
        return ExitCode::from(2);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match config::parse(&args) {
        Ok(p) => p,
        Err(msg) => {
            eprintln!("berthd: {msg}\n\n{}", config::USAGE);
            return ExitCode::from(2);
        }
    };
    match parsed {
        config::Command::Help => {
            println!("{}", config::USAGE);
            ExitCode::SUCCESS
        }
        config::Command::Version => {
            println!("berthd {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        config::Command::Shutdown(cfg) => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("berthd: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // a berthd of our own, if need be, gets our options but `shutdown`
            let mut daemon_args = args.clone();
            if let Some(i) = daemon_args.iter().position(|a| a == "shutdown") {
                daemon_args.remove(i);
            }
            match rt.block_on(boot::shutdown(cfg.bus.as_deref(), &daemon_args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("berthd shutdown: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        config::Command::Recover(state_dir) => match recover::offline(&state_dir) {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("berthd recover: {e}");
                ExitCode::FAILURE
            }
        },
        config::Command::Init(opts) => match daemon::init_pool(&opts) {
            Ok(msg) => {
                println!("{msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("berthd init: {e}");
                ExitCode::FAILURE
            }
        },
        config::Command::Run(cfg) => {
            // before any thread exists: it edits the environment
            let varlink = activation::take_varlink();
            // one socket per running container: 1024 open files would cap them below that
            if let Err(e) = berth_runtime::sys::set_nofile_soft(u64::MAX) {
                eprintln!("berthd: cannot raise the open-file limit: {e}");
            }
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("berthd: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(daemon::run(cfg, varlink)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("berthd: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
