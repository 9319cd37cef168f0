//! systemd's unit manager over D-Bus, for containers' transient scopes
//! (`berth_runtime::systemd::UnitManager`).
//!
//! berthd speaks to systemd on the system bus, as machined does, and subscribes to its signals
//! there. (systemd's private socket, which `systemctl` uses as root, would save the bus
//! daemon's hop, but systemd names itself `org.freedesktop.systemd1` as the sender of its
//! messages there, which zbus refuses as a sender.)

use berth_runtime::systemd::{Scope, ScopeError, UnitManager};
use futures_util::StreamExt;
use std::time::Duration;
use zbus::message::Type;
use zbus::{Connection, MatchRule, MessageStream};
use zbus::{OwnedObjectPath, Variant as Value};

const DEST: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// How long a job may take (systemd's own default job timeout for a scope is infinite).
const JOB_TIMEOUT: Duration = Duration::from_secs(30);

/// systemd, reached from blocking threads (the host runtime's calls run on tokio's blocking
/// pool) through the daemon's runtime.
#[derive(Debug)]
pub struct Systemd {
    rt: tokio::runtime::Handle,
    /// The connection and systemd's unique name on it.
    conn: tokio::sync::Mutex<Option<(Connection, String)>>,
}

impl Systemd {
    /// A client using the runtime `rt`; it connects at its first call.
    pub fn new(rt: tokio::runtime::Handle) -> Self {
        Systemd {
            rt,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// Connects now, off any start's path (the first start would pay for the connection).
    pub fn warm(self: &std::sync::Arc<Self>) {
        let s = self.clone();
        self.rt.spawn(async move {
            if let Err(e) = s.connection().await {
                tracing::warn!("cannot reach systemd yet: {e}");
            }
        });
    }

    async fn connection(&self) -> Result<(Connection, String), ScopeError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = Connection::system().await.map_err(bus)?;
        // systemd sends its signals only while someone subscribed
        c.call_method(Some(DEST), PATH, Some(MANAGER), "Subscribe", &())
            .await
            .map_err(bus)?;
        // only systemd's JobRemoved counts: anyone may send a signal of that name
        let owner: String = c
            .call_method(
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                Some("org.freedesktop.DBus"),
                "GetNameOwner",
                &(DEST,),
            )
            .await
            .map_err(bus)?
            .body()
            .deserialize()
            .map_err(bus)?;
        *slot = Some((c.clone(), owner.clone()));
        Ok((c, owner))
    }

    /// Runs `f` on a connection; after a failure to talk at all (systemd re-executed and
    /// closed its private connections), once more on a new one.
    async fn with_conn<T, F, Fut>(&self, f: F) -> Result<T, ScopeError>
    where
        F: Fn((Connection, String)) -> Fut,
        Fut: std::future::Future<Output = Result<T, ScopeError>>,
    {
        let c = self.connection().await?;
        match f(c).await {
            Err(ScopeError::Bus(e)) => {
                tracing::debug!("systemd connection failed ({e}); connecting again");
                *self.conn.lock().await = None;
                f(self.connection().await?).await
            }
            r => r,
        }
    }
}

fn bus(e: zbus::Error) -> ScopeError {
    ScopeError::Bus(e.to_string())
}

/// The error a method call ended with: systemd's refusals by name, the rest as bus failures.
fn refused(unit: &str, e: zbus::Error) -> ScopeError {
    match &e {
        zbus::Error::MethodError(name, msg, _)
            if name.as_str() == "org.freedesktop.systemd1.UnitExists" =>
        {
            let _ = msg;
            ScopeError::Exists(unit.to_string())
        }
        zbus::Error::MethodError(name, msg, _) => ScopeError::Refused {
            unit: unit.to_string(),
            message: format!("{}: {}", name.as_str(), msg.as_deref().unwrap_or("")),
        },
        _ => bus(e),
    }
}

/// Calls `method` (which queues a job and returns its path) and waits for the job's
/// `JobRemoved` from `systemd` (its unique name); `Ok` when its result is `done`.
async fn run_job<B>(
    (c, systemd): &(Connection, String),
    unit: &str,
    method: &str,
    body: &B,
) -> Result<(), ScopeError>
where
    B: serde::ser::Serialize + zbus::zvariant::DynamicType,
{
    let rule = MatchRule::builder()
        .msg_type(Type::Signal)
        .path(PATH)
        .interface(MANAGER)
        .member("JobRemoved")
        .build()
        .map_err(bus)?;
    // subscribed before the call, so that the job's end cannot be missed
    let mut jobs = MessageStream::for_match_rule(rule, c, None)
        .await
        .map_err(bus)?;
    let reply = c
        .call_method(Some(DEST), PATH, Some(MANAGER), method, body)
        .await
        .map_err(|e| refused(unit, e))?;
    let job: OwnedObjectPath = reply.body().deserialize().map_err(bus)?;
    let wait = async {
        while let Some(m) = jobs.next().await {
            let Ok(m) = m else { continue };
            if m.header().sender().is_none_or(|s| s.as_str() != systemd) {
                continue;
            }
            // JobRemoved(u id, o job, s unit, s result)
            if let Ok((_, path, _, result)) = m
                .body()
                .deserialize::<(u32, OwnedObjectPath, String, String)>()
                && path == job
            {
                return Ok(result);
            }
        }
        Err(ScopeError::Bus("the connection to systemd closed".into()))
    };
    let result = tokio::time::timeout(JOB_TIMEOUT, wait)
        .await
        .map_err(|_| ScopeError::Job {
            unit: unit.to_string(),
            result: format!("not within {} s", JOB_TIMEOUT.as_secs()),
        })??;
    if result == "done" {
        Ok(())
    } else {
        Err(ScopeError::Job {
            unit: unit.to_string(),
            result,
        })
    }
}

impl Systemd {
    async fn start_scope_async(&self, scope: &Scope, pid: u32) -> Result<(), ScopeError> {
        self.with_conn(|c| async move {
            // PIDs, not PIDFDs (systemd 253+): the pid is berthd's own unreaped child, which
            // no other process can take over
            let props: Vec<(&str, Value<'_>)> = vec![
                ("Description", Value::from(scope.description.as_str())),
                ("Slice", Value::from(scope.slice.as_str())),
                ("Delegate", Value::from(true)),
                ("CollectMode", Value::from("inactive-or-failed")),
                // at host shutdown units stop in the reverse of their start order: the
                // scope after berth-shutdown.service, whose ExecStop stops the containers
                // gracefully, lowest boot.autostart.priority first (systemd would otherwise
                // SIGTERM every scope at once, in no order)
                ("Before", Value::from(vec!["berth-shutdown.service"])),
                ("PIDs", Value::from(vec![pid])),
            ];
            let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
            run_job(
                &c,
                &scope.unit,
                "StartTransientUnit",
                &(scope.unit.as_str(), "fail", props, aux),
            )
            .await
        })
        .await
    }

    async fn stop_unit_async(&self, unit: &str) -> Result<(), ScopeError> {
        self.with_conn(|c| async move { run_job(&c, unit, "StopUnit", &(unit, "replace")).await })
            .await
    }
}

impl UnitManager for Systemd {
    fn start_scope(&self, scope: &Scope, pid: u32) -> Result<(), ScopeError> {
        self.rt.block_on(self.start_scope_async(scope, pid))
    }

    fn stop_unit(&self, unit: &str) -> Result<(), ScopeError> {
        self.rt.block_on(self.stop_unit_async(unit))
    }
}
