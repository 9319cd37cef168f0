//! A progress bar for long operations, drawn on stderr when it is a terminal: while a method
//! call is pending, the operation it started (announced by `OperationNew`, started by our
//! uid, of the expected verb) is polled four times a second.

use berth_interfaces::client::{ManagerProxy, OperationProxy};
use futures_util::StreamExt;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::Duration;
use zbus::Connection;
use zbus::proxy::CacheProperties;

/// Awaits `call`, showing the progress of the `verb` operation it starts.
pub(crate) async fn with_progress<T>(
    conn: &Connection,
    verb: &str,
    call: impl Future<Output = zbus::Result<T>>,
) -> zbus::Result<T> {
    if !std::io::stderr().is_terminal() {
        return call.await;
    }
    let Ok(m) = ManagerProxy::new(conn).await else {
        return call.await;
    };
    let Ok(mut new_ops) = m.receive_operation_new().await else {
        return call.await;
    };
    // SAFETY: getuid has no failure mode.
    let me = unsafe { libc::getuid() };
    let watch = async {
        // find our operation, then draw until the call returns
        let op = loop {
            let Some(sig) = new_ops.next().await else {
                return std::future::pending::<()>().await;
            };
            let Ok(args) = sig.args() else { continue };
            let builder = OperationProxy::builder(conn)
                .path(args.operation().to_owned())
                .cache_properties(CacheProperties::No);
            let Ok(p) = builder.build().await else {
                continue;
            };
            if p.verb().await.is_ok_and(|v| v == verb)
                && p.started_by_uid().await.is_ok_and(|u| u == me)
            {
                break p;
            }
        };
        loop {
            draw(&op).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let r = tokio::select! {
        r = call => r,
        _ = watch => unreachable!("the watcher never ends by itself"),
    };
    eprint!("\r\x1b[2K");
    let _ = std::io::stderr().flush();
    r
}

async fn draw(op: &OperationProxy<'_>) {
    let (Ok(bytes), Ok(rate)) = (op.bytes().await, op.rate().await) else {
        return;
    };
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let line = match (op.progress_valid().await, op.progress().await) {
        (Ok(true), Ok(p)) => {
            let width = 30usize;
            let filled = ((p * width as f64) as usize).min(width);
            format!(
                "[{}{}] {:>3.0}%  {:.1} MiB  {:.1} MiB/s",
                "=".repeat(filled),
                " ".repeat(width - filled),
                p * 100.0,
                mib(bytes),
                mib(rate)
            )
        }
        _ => format!("{:.1} MiB  {:.1} MiB/s", mib(bytes), mib(rate)),
    };
    eprint!("\r\x1b[2K{line}");
    let _ = std::io::stderr().flush();
}
