//! A plain varlink client for tests and berth-bench: JSON messages ended by a NUL on a unix
//! socket, replies read until the one without `continues` (so `more` calls work too).

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// One connection; calls on it are answered in order.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    /// Bytes read past the last message.
    buf: Vec<u8>,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> std::io::Result<Client> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Client {
            stream,
            buf: Vec::new(),
        })
    }

    /// Calls `method` (`org.berth.Berth.` is prefixed to a bare name) and returns every reply
    /// (more than one only with `more`), or the error reply as `Err`.
    pub fn call(&mut self, method: &str, params: Value, more: bool) -> Result<Vec<Value>, Value> {
        let method = if method.contains('.') {
            method.to_string()
        } else {
            format!("org.berth.Berth.{method}")
        };
        let mut msg = json!({ "method": method, "parameters": params });
        if more {
            msg["more"] = json!(true);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("a JSON value serializes");
        bytes.push(0);
        self.stream
            .write_all(&bytes)
            .map_err(|e| json!({ "io": e.to_string() }))?;
        let mut replies = Vec::new();
        loop {
            let reply = self.message().map_err(|e| json!({ "io": e }))?;
            if reply.get("error").is_some() {
                return Err(reply);
            }
            let continues = reply["continues"].as_bool().unwrap_or(false);
            replies.push(reply.get("parameters").cloned().unwrap_or(json!({})));
            if !continues {
                return Ok(replies);
            }
        }
    }

    /// The next message from the server.
    fn message(&mut self) -> Result<Value, String> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == 0) {
                let msg: Vec<u8> = self.buf.drain(..=end).collect();
                return serde_json::from_slice(&msg[..end]).map_err(|e| e.to_string());
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("the server hung up".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}
