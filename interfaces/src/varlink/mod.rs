//! The varlink service: `org.berth.Berth` (the twin of the D-Bus API) plus
//! `org.varlink.service`, served with zlink on `<run-dir>/org.berth.Berth`.
//!
//! zlink's server is one future that is not `Send`, and it awaits each call's handler before it
//! reads the next message of any connection. So the server runs on a thread of its own (a
//! current-thread runtime), and every `org.berth.Berth` call is answered through a reply
//! stream: the handler spawns the call's work (authorize, one engine call, map the result) on
//! berthd's runtime, and the stream carries its replies back. A slow call (a start, a polkit
//! prompt) never holds up another connection.
//!
//! Limits (documented in docs/api.md): a message is at most [`MAX_MESSAGE`] bytes (a longer
//! one closes its connection) and must arrive whole within [`MESSAGE_TIMEOUT`] of its first
//! byte (a stalled one closes its connection), at most [`MAX_CONNECTIONS`] connections are served at once (more
//! are closed as they come), and malformed JSON closes its connection. An open connection
//! counts as activity for berthd's idle exit.

mod json;
pub mod methods;
mod socket;
mod streams;

use crate::dbus::Context;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use zlink::service::{HandleResult, MethodReply};
use zlink::{Call, Reply};

pub use socket::{Accepting, Guarded, Listener};

/// The interface name (a contract).
pub const INTERFACE: &str = "org.berth.Berth";
/// The socket's file name in berthd's runtime directory (a contract: `/run/berth/...`).
pub const SOCKET_NAME: &str = "org.berth.Berth";
/// The checked-in interface description; GetInterfaceDescription serves it as it is.
pub const IDL: &str = include_str!("../../varlink/org.berth.Berth.varlink");
/// The largest message a client may send, in bytes; a longer one closes its connection.
pub const MAX_MESSAGE: usize = 16 << 20;
/// How long a message may take to arrive once its first byte came; a connection that sends
/// half a message and stalls is closed then (an idle one, between messages, is not).
pub const MESSAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Connections served at once; more are closed as they are accepted.
pub const MAX_CONNECTIONS: usize = 4096;

/// A method call as it arrives: any method, its parameters as JSON (checked by the handler).
#[derive(Debug, Deserialize)]
pub struct RawCall {
    method: String,
    #[serde(default)]
    parameters: Option<Value>,
}

/// An error reply: `{"error": name, "parameters": {...}}`.
#[derive(Debug, Serialize, Clone, PartialEq)]
pub struct WireError {
    /// The error's full name.
    pub error: String,
    /// Its parameters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
}

impl WireError {
    /// `org.varlink.service.<name>` with parameters.
    pub fn service(name: &str, parameters: Value) -> WireError {
        WireError {
            error: format!("org.varlink.service.{name}"),
            parameters: Some(parameters),
        }
    }

    /// `org.varlink.service.InvalidParameter` for `parameter`.
    pub fn invalid_parameter(parameter: &str) -> WireError {
        WireError::service("InvalidParameter", json!({ "parameter": parameter }))
    }
}

impl From<crate::errors::Error> for WireError {
    /// The D-Bus error table, renamed: `org.berth.Berth1.Error.<Name>` becomes
    /// `org.berth.Berth.<Name>`; a standard D-Bus error becomes its varlink equivalent.
    fn from(e: crate::errors::Error) -> Self {
        use crate::errors::Error as E;
        use zbus::fdo::Error as F;
        let (name, message) = match e {
            E::Berth(n, m, _) => (n.as_str(), m),
            E::Fdo(F::InteractiveAuthorizationRequired(m)) => {
                ("InteractiveAuthorizationRequired", m)
            }
            E::Fdo(F::InvalidArgs(m)) => ("InvalidConfig", m),
            E::Fdo(other) => ("Failed", other.to_string()),
        };
        WireError {
            error: format!("{INTERFACE}.{name}"),
            parameters: Some(json!({ "message": message })),
        }
    }
}

/// One reply of a stream, and no fds.
pub type Item = (Result<Reply<Value>, WireError>, Vec<OwnedFd>);
/// The replies of one call.
pub type Replies = Pin<Box<dyn Stream<Item = Item>>>;

/// The zlink service: dispatches `org.varlink.service` itself and every `org.berth.Berth` call
/// to [`methods`].
pub struct Service {
    ctx: Context,
    rt: tokio::runtime::Handle,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

impl Service {
    /// The service over `ctx`, running calls on `rt` (berthd's runtime).
    pub fn new(ctx: Context, rt: tokio::runtime::Handle) -> Service {
        Service { ctx, rt }
    }
}

/// `org.varlink.service.GetInfo`'s answer.
fn info() -> Value {
    json!({
        "vendor": "berth",
        "product": "berthd",
        "version": env!("CARGO_PKG_VERSION"),
        "url": "https://example.invalid/berth",
        "interfaces": ["org.varlink.service", INTERFACE],
    })
}

/// The varlink service interface's own description (GetInterfaceDescription of it).
const SERVICE_IDL: &str = "\
# The Varlink Service Interface is provided by every varlink service.
interface org.varlink.service

method GetInfo() -> (
  vendor: string,
  product: string,
  version: string,
  url: string,
  interfaces: []string
)

method GetInterfaceDescription(interface: string) -> (description: string)

error InterfaceNotFound (interface: string)
error MethodNotFound (method: string)
error MethodNotImplemented (method: string)
error InvalidParameter (parameter: string)
error PermissionDenied ()
error ExpectedMore ()
";

type Handled = HandleResult<Value, Replies, WireError, ()>;

fn single(v: Value) -> Handled {
    (MethodReply::Single(Some(v)), vec![])
}

fn error(e: WireError) -> Handled {
    (MethodReply::Error(e), vec![])
}

impl Service {
    fn varlink_service(&self, method: &str, params: &Value) -> Handled {
        match method {
            "GetInfo" => single(info()),
            "GetInterfaceDescription" => match params.get("interface").and_then(Value::as_str) {
                Some(INTERFACE) => single(json!({ "description": IDL })),
                Some("org.varlink.service") => single(json!({ "description": SERVICE_IDL })),
                Some(other) => error(WireError::service(
                    "InterfaceNotFound",
                    json!({ "interface": other }),
                )),
                None => error(WireError::invalid_parameter("interface")),
            },
            other => error(WireError::service(
                "MethodNotFound",
                json!({ "method": format!("org.varlink.service.{other}") }),
            )),
        }
    }
}

impl zlink::Service<Guarded> for Service {
    type MethodCall<'de> = RawCall;
    type ReplyParams<'ser> = Value;
    type ReplyStreamParams = Value;
    type ReplyStreamError = WireError;
    type ReplyStream = Replies;
    type ReplyError<'ser> = WireError;
    type Upgrade = ();

    async fn handle<'ser>(
        &'ser mut self,
        call: &'ser Call<Self::MethodCall<'_>>,
        conn: &mut zlink::Connection<Guarded>,
        fds: Vec<OwnedFd>,
    ) -> Handled {
        let raw = call.method();
        let params = raw.parameters.clone().unwrap_or_else(|| json!({}));
        if !params.is_object() {
            return error(WireError::invalid_parameter("parameters"));
        }
        let (iface, method) = raw.method.rsplit_once('.').unwrap_or(("", &raw.method));
        if iface == "org.varlink.service" {
            return self.varlink_service(method, &params);
        }
        if iface != INTERFACE {
            return error(WireError::service(
                "InterfaceNotFound",
                json!({ "interface": iface }),
            ));
        }
        let Some(m) = methods::Method::parse(method) else {
            return error(WireError::service(
                "MethodNotFound",
                json!({ "method": raw.method }),
            ));
        };
        if m.needs_more() && !call.more() {
            return error(WireError::service("ExpectedMore", json!({})));
        }
        let caller = match conn.peer_credentials().await {
            Ok(creds) => socket::caller(creds, &params),
            Err(e) => {
                tracing::warn!("varlink: cannot read the peer's credentials: {e}");
                return error(WireError::service("PermissionDenied", json!({})));
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Item>(64);
        let sink = methods::Sink::new(tx, call.more());
        let fds = methods::Fds::new(fds);
        let work = methods::run(self.ctx.clone(), caller, m, params, fds, sink);
        self.rt.spawn(work);
        if call.oneway() {
            // no reply is wanted: the work runs, its replies go nowhere
            return (MethodReply::Single(None), vec![]);
        }
        let mut rx = rx;
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        (MethodReply::Multi(Box::pin(stream)), vec![])
    }
}

/// The varlink server of a running berthd: a thread serving the socket until [`Server::stop`].
#[derive(Debug)]
pub struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    mode: Arc<tokio::sync::watch::Sender<Accepting>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Serves `listener` (bound by berthd, or passed by systemd) on a thread of its own; calls
    /// run on `rt`. An open connection holds `ctx.engine`'s activity.
    pub fn start(
        listener: std::os::unix::net::UnixListener,
        ctx: Context,
        rt: tokio::runtime::Handle,
    ) -> std::io::Result<Server> {
        listener.set_nonblocking(true)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mode = Arc::new(tokio::sync::watch::Sender::new(Accepting::All));
        let listener_mode = mode.clone();
        let activity = ctx.engine.activity().clone();
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let thread = std::thread::Builder::new()
            .name("varlink".into())
            .spawn(move || {
                let local = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!("varlink: cannot start a runtime: {e}");
                        return;
                    }
                };
                local.block_on(async move {
                    let listener = match tokio::net::UnixListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!("varlink: cannot serve the socket: {e}");
                            return;
                        }
                    };
                    let server = zlink::Server::new(
                        Listener::new(listener, slots, activity, listener_mode),
                        Service::new(ctx, rt),
                    );
                    tokio::select! {
                        r = server.run() => {
                            if let Err(e) = r {
                                tracing::error!("varlink: the server stopped: {e}");
                            }
                        }
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(Server {
            stop: Some(stop),
            mode,
            thread: Some(thread),
        })
    }

    /// Accepts no more connections; those open are served on. What connects meanwhile waits
    /// in the socket's queue: with a socket systemd passed (and keeps open), for the next
    /// berthd.
    pub fn stop_accepting(&self) {
        self.mode.send_replace(Accepting::None);
    }

    /// Accepts the connections the kernel has queued, then no more, and returns once the queue
    /// is empty (or after `limit`): for a socket whose path is gone, so that nothing new
    /// arrives, and whose queue would die with it. Those accepted are served on.
    pub async fn accept_queued(&self, limit: std::time::Duration) -> bool {
        let mut rx = self.mode.subscribe();
        self.mode.send_replace(Accepting::Queued);
        tokio::time::timeout(limit, rx.wait_for(|m| *m == Accepting::Drained))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops serving: closes the listener and every connection (their calls in flight finish on
    /// berthd's runtime; their replies go nowhere).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Binds `path` for the service: a stale socket file is replaced, and the socket is
/// world-connectable (mode 0666): polkit decides what each caller may do.
pub fn bind(path: &std::path::Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The method names the IDL declares.
    fn idl_methods() -> Vec<String> {
        IDL.lines()
            .filter_map(|l| l.strip_prefix("method "))
            .map(|l| l.split('(').next().unwrap_or("").trim().to_string())
            .collect()
    }

    #[test]
    fn every_idl_method_is_dispatched_and_every_dispatched_method_is_declared() {
        let declared = idl_methods();
        for m in &declared {
            assert!(methods::Method::parse(m).is_some(), "{m} has no handler");
        }
        for m in methods::Method::ALL {
            assert!(
                declared.iter().any(|d| d == m.name()),
                "{} is not in the IDL",
                m.name()
            );
        }
    }

    /// Each D-Bus method's varlink twin.
    const TWINS: &[(&str, &str, &str)] = &[
        ("Manager", "CreateContainer", "CreateContainer"),
        ("Manager", "CopyContainer", "CopyContainer"),
        ("Manager", "GetContainer", "GetContainer"),
        ("Manager", "ListContainers", "ListContainers"),
        ("Manager", "StartContainer", "StartContainer"),
        ("Manager", "StopContainer", "StopContainer"),
        ("Manager", "DeleteContainer", "DeleteContainer"),
        ("Manager", "GetImage", "GetImage"),
        ("Manager", "ListImages", "ListImages"),
        ("Manager", "BuildImage", "BuildImage"),
        ("Manager", "ImportImage", "ImportImage"),
        ("Manager", "RenameImageAlias", "RenameImageAlias"),
        ("Manager", "Recover", "Recover"),
        ("Manager", "ListOperations", "ListOperations"),
        ("Container", "Start", "StartContainer"),
        ("Container", "Stop", "StopContainer"),
        ("Container", "Restart", "RestartContainer"),
        ("Container", "Delete", "DeleteContainer"),
        ("Container", "Exec", "Exec"),
        ("Container", "Publish", "PublishContainer"),
        ("Container", "CreateSnapshot", "CreateSnapshot"),
        ("Container", "GetConfig", "GetContainerConfig"),
        ("Container", "SetConfig", "SetContainerConfig"),
        ("Container", "GetCheckpointLog", "GetCheckpointLog"),
        ("Container", "ListSnapshots", "ListSnapshots"),
        ("Snapshot", "Restore", "RestoreSnapshot"),
        ("Snapshot", "Delete", "DeleteSnapshot"),
        ("Snapshot", "Rename", "RenameSnapshot"),
        ("Snapshot", "Publish", "PublishContainer"),
        ("Image", "Delete", "DeleteImage"),
        ("Image", "Export", "ExportImage"),
        ("Image", "SetProperties", "SetImageProperties"),
        ("Image", "AddAlias", "AddImageAlias"),
        ("Image", "RemoveAlias", "RemoveImageAlias"),
        ("Operation", "Cancel", "CancelOperation"),
    ];

    #[test]
    fn every_dbus_method_has_a_varlink_twin() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dbus");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_string_lossy().to_string();
            let Some(iface) = file
                .strip_prefix("org.berth.Berth1.")
                .and_then(|f| f.strip_suffix(".xml"))
            else {
                continue;
            };
            let xml = std::fs::read_to_string(&path).unwrap();
            for method in xml
                .split("<method name=\"")
                .skip(1)
                .filter_map(|s| s.split('"').next())
            {
                seen += 1;
                let twin = TWINS
                    .iter()
                    .find(|(i, m, _)| *i == iface && *m == method)
                    .unwrap_or_else(|| {
                        panic!("D-Bus {iface}.{method} has no varlink twin: add one (and to TWINS)")
                    });
                let t = twin.2;
                assert!(methods::Method::parse(t).is_some(), "{t} is not served");
            }
        }
        assert!(
            seen >= TWINS.len(),
            "read {seen} D-Bus methods from {}",
            dir.display()
        );
    }

    #[test]
    fn every_dbus_error_name_has_its_varlink_twin() {
        for n in crate::errors::Name::ALL {
            let line = format!("error {} (", n.as_str());
            assert!(IDL.contains(&line), "the IDL lacks {line}");
            let wire: WireError = crate::errors::Error::new(*n, "m").into();
            assert_eq!(wire.error, format!("org.berth.Berth.{}", n.as_str()));
        }
        assert!(IDL.contains("error InteractiveAuthorizationRequired ("));
        assert!(IDL.contains("error Failed ("));
    }

    #[test]
    fn every_method_field_and_error_has_a_comment() {
        let lines: Vec<&str> = IDL.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim();
            let declares = t.starts_with("method ")
                || t.starts_with("error ")
                || t.starts_with("type ")
                || (t.contains(':') && !t.starts_with('#'));
            if declares && !t.starts_with("interface") {
                let prev = lines[..i].iter().rev().find(|p| !p.trim().is_empty());
                assert!(
                    prev.is_some_and(|p| p.trim().starts_with('#')),
                    "line {} has no comment above it: {t}",
                    i + 1
                );
            }
        }
    }
}
