//! The monitor's control protocol: one JSON object per SOCK_SEQPACKET message, fds attached
//! with SCM_RIGHTS (the three stdio fds of an `exec`).
//!
//! A connection carries requests from berthd and replies from the monitor. `Stop` is answered
//! when init is gone, `Watch` turns the connection into an event stream, and `Exec` is
//! answered twice: when the process started and when it exited.

use serde::{Deserialize, Serialize};

/// Largest message either side sends.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// A request to a monitor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Answered with [`Reply::Status`].
    Status,
    /// Ask init to power off with `signal`, SIGKILL after `timeout_ms` (0 = kill now).
    /// Answered with [`Reply::Exited`] once init has been reaped.
    Stop {
        /// Signal to send first.
        signal: i32,
        /// Grace period before SIGKILL, in milliseconds.
        timeout_ms: u64,
    },
    /// Subscribe to [`Reply::Exited`] and [`Reply::Restarted`] events.
    Watch,
    /// Run a process in the container (three fds attached: stdin, stdout, stderr).
    Exec(ExecRequest),
    /// A checkpoint that kills the tree once dumped begins (`true`) or failed (`false`): the
    /// kill is recorded as [`ExitReason::Checkpointed`]. Answered with [`Reply::Ok`].
    Checkpointing {
        /// Whether it is under way.
        active: bool,
    },
    /// Hold new execs back (`true`) while a checkpoint is taken, or let them start again
    /// (`false`). While held, an `Exec` is answered [`Reply::ExecsHeld`] at once; the hold ends
    /// with this request, or when the connection that asked for it closes (berthd gone, or
    /// the checkpoint over), so a monitor never stays refusing. Answered with
    /// [`Reply::Execs`]. A monitor older than this request answers [`Reply::Error`].
    HoldExecs {
        /// Hold (`true`) or release (`false`).
        hold: bool,
    },
    /// Set the window size of the running exec's terminal (on the exec's connection).
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
}

/// What to run in the container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ExecRequest {
    /// Program and arguments; the program is looked up in the container's PATH.
    pub argv: Vec<String>,
    /// Extra environment (overrides the defaults).
    pub env: Vec<(String, String)>,
    /// Working directory (default: the user's home, or `/`).
    pub cwd: Option<String>,
    /// User id inside the container.
    pub uid: u32,
    /// Group id inside the container.
    pub gid: u32,
    /// Allocate a terminal of this size and relay the stdio fds through it.
    pub tty: Option<TtySize>,
}

/// A terminal size.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct TtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// A monitor's answer or event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// The container is running.
    Status(Status),
    /// init is gone; the monitor exits after sending this.
    Exited(ExitInfo),
    /// init rebooted the container; this is the new init.
    Restarted {
        /// New init pid (host pid namespace).
        init_pid: i32,
    },
    /// The exec'd process started.
    ExecStarted {
        /// Its pid as seen from the host.
        pid: i32,
    },
    /// The exec'd process ended: its exit code, or 128 + signal.
    ExecExited {
        /// Exit status as a shell reports it.
        code: i32,
    },
    /// Done.
    Ok,
    /// Answer to [`Request::HoldExecs`]: how many execs are under way (their helper
    /// processes not yet reaped, including any still being set up in the container).
    Execs {
        /// Execs under way.
        running: u32,
    },
    /// An `Exec` refused because a checkpoint holds execs back: try again after it.
    ExecsHeld,
    /// The request needs a running container and this one is stopping.
    Stopping,
    /// The request failed.
    Error {
        /// Why, lowercase.
        message: String,
    },
}

/// State of a running container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// init's pid in the host pid namespace.
    pub init_pid: i32,
    /// The monitor's pid.
    pub monitor_pid: i32,
    /// When init was started (µs since the epoch).
    pub started_at_us: u64,
    /// A stop has been requested and init has not exited yet.
    pub stopping: bool,
    /// Host path of the console pty slave.
    #[serde(default)]
    pub console: String,
}

/// How init ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// Powered off or halted from inside (init killed by SIGINT via reboot(2)).
    Poweroff,
    /// Killed by berth (SIGKILL after a timeout, or a forced stop).
    Killed,
    /// init exited by itself.
    Exited,
    /// init died of another signal.
    Crashed,
    /// CRIU killed the tree after checkpointing it (a stateful stop).
    Checkpointed,
}

/// The exit record: sent to waiters and written to `exit.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExitInfo {
    /// init's pid.
    pub init_pid: i32,
    /// Exit code when init exited.
    pub code: Option<i32>,
    /// Signal when init was killed.
    pub signal: Option<i32>,
    /// Classification.
    pub reason: ExitReason,
    /// When (µs since the epoch).
    pub at_us: u64,
}

/// Encodes a message.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    serde_json::to_vec(msg).unwrap_or_default()
}

/// Decodes a message, with a protocol error on malformed input.
pub fn decode<'a, T: Deserialize<'a>>(buf: &'a [u8]) -> crate::Result<T> {
    serde_json::from_slice(buf).map_err(|e| crate::Error::Protocol(e.to_string()))
}

/// Microseconds since the epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let r = Request::Exec(ExecRequest {
            argv: vec!["true".into()],
            tty: Some(TtySize { rows: 24, cols: 80 }),
            ..Default::default()
        });
        let b = encode(&r);
        assert_eq!(decode::<Request>(&b).unwrap(), r);
        let s = String::from_utf8(encode(&Request::Stop {
            signal: 10,
            timeout_ms: 5,
        }))
        .unwrap();
        assert_eq!(s, r#"{"op":"stop","signal":10,"timeout_ms":5}"#);
        assert!(decode::<Request>(b"{\"op\":\"nope\"}").is_err());
    }
}
