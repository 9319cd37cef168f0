//! One D-Bus method call to `org.berth.Berth1`, with or without the
//! ALLOW_INTERACTIVE_AUTHORIZATION header flag, printing the outcome as one line: `ok`, or
//! `error NAME: MESSAGE` (the error's name, which busctl does not print). The authorization
//! matrix runs it as each caller (setpriv), so that the call comes from that uid.
//!
//! `berth-authz-call BUS yes|no PATH INTERFACE METHOD [ARG…]`, each ARG `TYPE=VALUE`:
//! `s=text`, `as=["a","b"]`, `a{ss}={"k":"v"}`, `a{sv}={"k":true,"n":1,"t":"x"}` (JSON
//! booleans, numbers as u32 and strings) and `h=PATH` (the file opened read-write and passed).

use std::collections::HashMap;
use zbus::message::{Flags, Message, Type};
use zbus::wire::{Fd, StructureBuilder, Variant as Value};

fn arg(spec: &str) -> Value<'static> {
    let (ty, v) = spec.split_once('=').expect("TYPE=VALUE");
    let json = || serde_json::from_str::<serde_json::Value>(v).expect("a JSON value");
    match ty {
        "s" => Value::from(v.to_string()),
        "as" => Value::from(
            json()
                .as_array()
                .expect("a JSON array")
                .iter()
                .map(|s| s.as_str().expect("strings").to_string())
                .collect::<Vec<String>>(),
        ),
        "a{ss}" => Value::from(
            json()
                .as_object()
                .expect("a JSON object")
                .iter()
                .map(|(k, s)| (k.clone(), s.as_str().expect("strings").to_string()))
                .collect::<HashMap<String, String>>(),
        ),
        "a{sv}" => Value::from(
            json()
                .as_object()
                .expect("a JSON object")
                .iter()
                .map(|(k, x)| {
                    let v = match x {
                        serde_json::Value::Bool(b) => Value::from(*b),
                        serde_json::Value::Number(n) => {
                            Value::from(n.as_u64().expect("a u32") as u32)
                        }
                        serde_json::Value::String(s) => Value::from(s.clone()),
                        other => panic!("unsupported option value {other}"),
                    };
                    (k.clone(), v)
                })
                .collect::<HashMap<String, Value<'static>>>(),
        ),
        "h" => {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(v)
                .expect("open the file to pass");
            Value::from(Fd::from(std::os::fd::OwnedFd::from(f)))
        }
        other => panic!("unsupported argument type {other}"),
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    assert!(
        argv.len() >= 5,
        "usage: BUS yes|no PATH INTERFACE METHOD [ARG…]"
    );
    let (bus, interactive, path, iface, method) =
        (&argv[0], &argv[1], &argv[2], &argv[3], &argv[4]);
    let args: Vec<Value<'static>> = argv[5..].iter().map(|a| arg(a)).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let line = rt.block_on(async {
        let conn = zbus::connection::Builder::address(bus.as_str())
            .build()
            .await
            .expect("connect to the bus");
        let flags = if interactive == "yes" {
            Flags::ALLOW_INTERACTIVE_AUTH
        } else {
            Flags::empty()
        };
        let b = Message::method_call(path.as_str(), method.as_str())
            .destination("org.berth.Berth1")
            .interface(iface.as_str())
            .with_flags(flags);
        let msg = if args.is_empty() {
            b.build(&()).expect("a message")
        } else {
            let mut s = StructureBuilder::new();
            for a in args {
                s = s.append_field(a);
            }
            b.build(&s.build().expect("a body")).expect("a message")
        };
        let serial = msg.primary_header().serial_num();
        let mut stream = zbus::MessageStream::from(&conn);
        conn.send(&msg).await.expect("send the call");
        use futures_util::StreamExt;
        while let Some(reply) = stream.next().await {
            let Ok(reply) = reply else { continue };
            let h = reply.header();
            if h.reply_serial() != Some(serial) {
                continue;
            }
            return match reply.message_type() {
                Type::Error => {
                    let text: String = reply.body().deserialize().unwrap_or_default();
                    let name = h.error_name().map(|n| n.to_string()).unwrap_or_default();
                    format!("error {name}: {text}")
                }
                _ => "ok".to_string(),
            };
        }
        "error (connection closed)".to_string()
    });
    println!("{line}");
}
