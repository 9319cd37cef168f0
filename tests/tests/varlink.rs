//! End-to-end over varlink: berthd's socket driven by clients not written here — the reference
//! Python `varlink` package (installed into a private virtualenv by scripts/setup) — and by
//! raw bytes for what no well-behaved client sends. Runs as root (CI is root).

use berth_tests::{Env, Storage, repo, run, text, unprivileged_user, wait_for};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where scripts/setup puts the virtualenv with the reference `varlink` package.
const VENV_PYTHON: &str = "/var/lib/berth-test/venv/bin/python";

fn root_or_skip() -> bool {
    // SAFETY: geteuid has no failure mode.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root || std::env::var_os("BERTH_E2E_ALLOW_SKIP").is_some(),
        "end-to-end tests need root"
    );
    root
}

fn python() -> &'static str {
    assert!(
        Path::new(VENV_PYTHON).exists(),
        "{VENV_PYTHON} is missing: run scripts/setup (it installs the Python varlink package)"
    );
    VENV_PYTHON
}

fn socket(env: &Env) -> PathBuf {
    env.run.join("org.berth.Berth")
}

/// A running berthd (it exits when idle; a D-Bus call activates it again) and its socket.
fn serving(env: &Env) -> PathBuf {
    env.ok(&["list"]);
    let s = socket(env);
    wait_for(Duration::from_secs(10), "the varlink socket", || {
        UnixStream::connect(&s).is_ok()
    });
    s
}

/// Calls `method` with the Python client (as `user` when given): the replies' parameters, or
/// the error reply as `Err`.
fn call_as(
    user: Option<&str>,
    sock: &Path,
    method: &str,
    params: Value,
    more: bool,
) -> Result<Vec<Value>, Value> {
    let mut cmd = client(user, sock, method, params);
    if more {
        cmd.arg("--more");
    }
    let out = run(&mut cmd, Duration::from_secs(120));
    let lines = json_lines(&out.stdout);
    if out.status.success() {
        Ok(lines)
    } else {
        match lines.last() {
            Some(e) if e.get("error").is_some() => Err(e.clone()),
            _ => panic!(
                "{method}: the client failed: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            ),
        }
    }
}

/// The Python client's command for one call of `method` (as `user` when given).
fn client(user: Option<&str>, sock: &Path, method: &str, params: Value) -> Command {
    let script = repo().join("tests/varlink/client.py");
    let mut cmd = match user {
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.args(["--reuid", u, "--regid", u, "--clear-groups", python()]);
            c
        }
        None => Command::new(python()),
    };
    cmd.arg(&script)
        .arg(sock)
        .arg(method)
        .arg(params.to_string());
    cmd
}

/// Empties every CRIU pages image under `dir` (there must be one).
fn empty_pages(dir: &Path) {
    let mut pages = Vec::new();
    find_files(dir, "pages-", &mut pages);
    assert!(
        !pages.is_empty(),
        "no CRIU pages image under {}",
        dir.display()
    );
    for p in &pages {
        std::fs::write(p, b"").unwrap();
    }
}

/// Every file under `dir` whose name starts with `prefix`, into `out`.
fn find_files(dir: &Path, prefix: &str, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => find_files(&p, prefix, out),
            Ok(t) if t.is_file() && e.file_name().to_string_lossy().starts_with(prefix) => {
                out.push(p)
            }
            _ => {}
        }
    }
}

/// A client's output: one JSON value a line.
fn json_lines(out: &[u8]) -> Vec<Value> {
    text(out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn call(sock: &Path, method: &str, params: Value) -> Result<Value, Value> {
    call_as(None, sock, method, params, false).map(|mut v| v.pop().expect("one reply"))
}

fn ok(sock: &Path, method: &str, params: Value) -> Value {
    call(sock, method, params).unwrap_or_else(|e| panic!("{method}: {e}"))
}

fn error_name(r: Result<Value, Value>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v}"),
        Err(e) => e["error"].as_str().unwrap_or_default().to_string(),
    }
}

/// One raw exchange: writes `msg` (a NUL is appended) and reads one reply.
fn raw_call(stream: &mut UnixStream, msg: &str) -> Option<Value> {
    stream.write_all(msg.as_bytes()).ok()?;
    stream.write_all(b"\0").ok()?;
    raw_reply(stream)
}

fn raw_reply(stream: &mut UnixStream) -> Option<Value> {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // one call in flight at a time: nothing follows the reply's NUL
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.last() == Some(&0) {
            buf.pop();
            break;
        }
    }
    serde_json::from_slice(&buf).ok()
}

/// Whether the server closed `stream` (a read sees EOF or a reset).
fn closed(stream: &mut UnixStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut b = [0u8; 64];
    loop {
        match stream.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn varlink_serves_the_checked_in_interface_description() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    let sock = serving(&env);
    let script = repo().join("tests/varlink/client.py");
    let out = run(
        Command::new(python())
            .arg(&script)
            .arg(&sock)
            .arg("org.berth.Berth")
            .arg("--describe"),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let file =
        std::fs::read_to_string(repo().join("interfaces/varlink/org.berth.Berth.varlink")).unwrap();
    assert_eq!(
        text(&out.stdout),
        file,
        "what berthd serves differs from interfaces/varlink/org.berth.Berth.varlink"
    );
    let out = run(
        Command::new(python())
            .arg(&script)
            .arg(&sock)
            .arg("-")
            .arg("--info"),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ifaces = info["interfaces"].as_array().unwrap();
    assert!(ifaces.contains(&json!("org.berth.Berth")), "{info}");
    assert!(ifaces.contains(&json!("org.varlink.service")), "{info}");
    // the socket is world-connectable: polkit decides
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);
}

#[test]
fn varlink_drives_a_container_lifecycle_and_monitor_sees_it() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    let sock = serving(&env);

    // a Monitor stream from the start (its first reply says it is watching)
    let mut monitor = Command::new(python())
        .arg(repo().join("tests/varlink/client.py"))
        .arg(&sock)
        .arg("Monitor")
        .arg("{}")
        .arg("--more")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut events = BufReader::new(monitor.stdout.take().unwrap());
    let mut first = String::new();
    events.read_line(&mut first).unwrap();
    assert!(first.contains("Monitoring"), "{first:?}");

    let c = ok(
        &sock,
        "CreateContainer",
        json!({ "name": "v1", "image": "busybox" }),
    );
    assert_eq!(c["container"]["name"], "v1");
    assert_eq!(c["container"]["status"], "Stopped");
    // creating the same again is not an error (typed idempotence)
    ok(
        &sock,
        "CreateContainer",
        json!({ "name": "v1", "image": "busybox" }),
    );
    ok(&sock, "StartContainer", json!({ "name": "v1" }));
    let g = ok(&sock, "GetContainer", json!({ "name": "v1" }));
    assert_eq!(g["container"]["status"], "Running", "{g}");
    assert!(g["container"]["initPid"].as_u64().unwrap() > 0, "{g}");
    // the D-Bus side sees the same container
    assert_eq!(env.status("v1"), "Running");

    ok(
        &sock,
        "CreateContainer",
        json!({ "name": "v2", "image": "busybox", "config": { "user.note": "x" } }),
    );
    // without more: one reply with the list
    let all = call_as(None, &sock, "ListContainers", json!({}), false).unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    let names: Vec<&str> = all[0]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["v1", "v2"]);
    // with more: one reply per container
    let each = call_as(None, &sock, "ListContainers", json!({}), true).unwrap();
    assert_eq!(each.len(), 2, "{each:?}");
    assert_eq!(each[0]["container"]["name"], "v1");
    assert_eq!(each[1]["container"]["name"], "v2");
    assert!(each[0].get("containers").is_none_or(Value::is_null));

    let img = ok(&sock, "GetImage", json!({ "reference": "busybox" }));
    let fp = img["image"]["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(fp.len(), 64);
    let imgs = call_as(None, &sock, "ListImages", json!({}), true).unwrap();
    assert!(
        imgs.iter()
            .any(|i| i["image"]["fingerprint"] == fp.as_str())
    );

    let snap = ok(
        &sock,
        "CreateSnapshot",
        json!({ "container": "v2", "name": "s0" }),
    );
    assert_eq!(snap["snapshot"]["name"], "s0");
    let snaps = ok(&sock, "ListSnapshots", json!({ "container": "v2" }));
    assert_eq!(snaps["snapshots"].as_array().unwrap().len(), 1, "{snaps}");
    ok(
        &sock,
        "RestoreSnapshot",
        json!({ "container": "v2", "name": "s0" }),
    );
    ok(
        &sock,
        "DeleteSnapshot",
        json!({ "container": "v2", "name": "s0" }),
    );

    ok(
        &sock,
        "StopContainer",
        json!({ "name": "v1", "force": true }),
    );
    let g = ok(&sock, "GetContainer", json!({ "name": "v1" }));
    assert_eq!(g["container"]["status"], "Stopped", "{g}");
    // a long operation: with more, progress replies (if any) and then the image
    let published = call_as(
        None,
        &sock,
        "PublishContainer",
        json!({ "container": "v1", "aliases": ["v1-img"] }),
        true,
    )
    .unwrap();
    let last = published.last().unwrap();
    let v1fp = last["image"]["fingerprint"].as_str().unwrap().to_string();
    assert!(
        published[..published.len() - 1]
            .iter()
            .all(|r| r["operation"]["verb"] == "publish")
    );
    ok(
        &sock,
        "AddImageAlias",
        json!({ "reference": v1fp, "alias": "v1-other" }),
    );
    ok(
        &sock,
        "RemoveImageAlias",
        json!({ "reference": "v1-img", "alias": "v1-other" }),
    );
    let img = ok(&sock, "GetImage", json!({ "reference": "v1-img" }));
    assert_eq!(img["image"]["aliases"], json!(["v1-img"]));
    ok(&sock, "DeleteImage", json!({ "reference": "v1-img" }));
    let log = ok(&sock, "GetCheckpointLog", json!({ "name": "v1" }));
    assert_eq!(log["log"], "");
    ok(&sock, "DeleteContainer", json!({ "name": "v1" }));
    ok(&sock, "DeleteContainer", json!({ "name": "v2" }));
    assert_eq!(
        error_name(call(&sock, "GetContainer", json!({ "name": "v1" }))),
        "org.berth.Berth.NoSuchContainer"
    );
    let none = call_as(None, &sock, "ListContainers", json!({}), true).unwrap();
    assert_eq!(
        none.len(),
        1,
        "an empty list with more is one reply: {none:?}"
    );

    // the monitor saw v1 created and removed
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut created, mut removed) = (false, false);
    while !(created && removed) && Instant::now() < deadline {
        let mut line = String::new();
        if events.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let v: Value = serde_json::from_str(&line).unwrap();
        let ev = &v["event"];
        if ev["container"] == "v1" {
            created |= ev["type"] == "ContainerCreated";
            removed |= ev["type"] == "ContainerRemoved";
        }
    }
    let _ = monitor.kill();
    let _ = monitor.wait();
    assert!(created && removed, "created {created}, removed {removed}");
}

#[test]
fn varlink_errors_carry_the_d_bus_names() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    let sock = serving(&env);
    let cases = [
        (
            "GetContainer",
            json!({ "name": "nope" }),
            "org.berth.Berth.NoSuchContainer",
        ),
        (
            "GetImage",
            json!({ "reference": "nope" }),
            "org.berth.Berth.NoSuchImage",
        ),
        (
            "CreateContainer",
            json!({ "name": "bad name!", "image": "busybox" }),
            "org.berth.Berth.InvalidName",
        ),
        (
            "CreateContainer",
            json!({ "name": "e1", "image": "nope" }),
            "org.berth.Berth.NoSuchImage",
        ),
        (
            "StartContainer",
            json!({ "name": "nope" }),
            "org.berth.Berth.NoSuchContainer",
        ),
        (
            "ListSnapshots",
            json!({ "container": "nope" }),
            "org.berth.Berth.NoSuchContainer",
        ),
        (
            "DeleteSnapshot",
            json!({ "container": "nope", "name": "s" }),
            "org.berth.Berth.NoSuchContainer",
        ),
        (
            "GetOperation",
            json!({ "id": 999999 }),
            "org.berth.Berth.NoSuchOperation",
        ),
    ];
    for (method, params, want) in cases {
        assert_eq!(
            error_name(call(&sock, method, params.clone())),
            want,
            "{method} {params}"
        );
    }
    ok(
        &sock,
        "CreateContainer",
        json!({ "name": "e2", "image": "busybox" }),
    );
    assert_eq!(
        error_name(call(
            &sock,
            "CreateContainer",
            json!({ "name": "e2", "image": "busybox", "ephemeral": true })
        )),
        "org.berth.Berth.AlreadyExists"
    );
    assert_eq!(
        error_name(call(
            &sock,
            "StopContainer",
            json!({ "name": "e2", "stateful": true, "force": true })
        )),
        "org.berth.Berth.InvalidConfig"
    );
    assert_eq!(
        error_name(call(
            &sock,
            "CreateContainer",
            json!({ "name": "e3", "image": "busybox", "profiles": ["nope"] })
        )),
        "org.berth.Berth.NoSuchProfile"
    );
    assert_eq!(
        error_name(call(&sock, "StopContainer", json!({ "name": "e2" }))),
        "org.berth.Berth.InvalidState"
    );
    assert_eq!(
        error_name(call(
            &sock,
            "DeleteSnapshot",
            json!({ "container": "e2", "name": "nope" })
        )),
        "org.berth.Berth.NoSuchSnapshot"
    );
    // init there but not executable: the start fails in the container
    let init = env.pool().join("containers/e2/rootfs/sbin/init");
    std::fs::remove_file(&init).unwrap();
    std::fs::write(&init, "#!/bin/sh\n").unwrap();
    let e = call(&sock, "StartContainer", json!({ "name": "e2" })).unwrap_err();
    assert_eq!(e["error"], "org.berth.Berth.StartFailed", "{e}");
    assert!(
        e["parameters"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("exec /sbin/init")),
        "{e}"
    );
    ok(&sock, "DeleteContainer", json!({ "name": "e2" }));
    // a root disk limit needs a pool that can keep one (btrfs); this one is a directory
    assert_eq!(
        error_name(call(
            &sock,
            "CreateContainer",
            json!({ "name": "e4", "image": "busybox", "config": { "limits.disk": "64MiB" } })
        )),
        "org.berth.Berth.NotSupported"
    );
    // an export to an fd open only for reading fails writing it
    let e = fd_call(
        &sock,
        "ExportImage",
        json!({ "reference": "busybox", "fd": 0 }),
        &["r:/dev/null".to_string()],
        false,
    )
    .unwrap_err();
    assert_eq!(e["error"], "org.berth.Berth.ExportFailed", "{e}");
    assert!(
        e["parameters"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Bad file descriptor")),
        "the cause is in the message: {e}"
    );
    assert_eq!(
        ok(&sock, "ListContainers", json!({}))["containers"],
        json!([]),
        "the refused calls left nothing"
    );

    // what the Python client would refuse to send, sent raw
    let mut s = UnixStream::connect(&sock).unwrap();
    let r = raw_call(&mut s, r#"{"method":"org.berth.Berth.NoSuchMethod"}"#).unwrap();
    assert_eq!(r["error"], "org.varlink.service.MethodNotFound", "{r}");
    let r = raw_call(&mut s, r#"{"method":"org.example.Nothing"}"#).unwrap();
    assert_eq!(r["error"], "org.varlink.service.InterfaceNotFound", "{r}");
    let r = raw_call(
        &mut s,
        r#"{"method":"org.berth.Berth.GetContainer","parameters":{"name":1}}"#,
    )
    .unwrap();
    assert_eq!(r["error"], "org.varlink.service.InvalidParameter", "{r}");
    assert_eq!(r["parameters"]["parameter"], "name", "{r}");
    let r = raw_call(
        &mut s,
        r#"{"method":"org.berth.Berth.GetContainer","parameters":{"name":"x","extra":1}}"#,
    )
    .unwrap();
    assert_eq!(r["error"], "org.varlink.service.InvalidParameter", "{r}");
    let r = raw_call(&mut s, r#"{"method":"org.berth.Berth.Monitor"}"#).unwrap();
    assert_eq!(r["error"], "org.varlink.service.ExpectedMore", "{r}");
    // the same connection still serves
    let r = raw_call(&mut s, r#"{"method":"org.berth.Berth.GetHostInfo"}"#).unwrap();
    assert!(r["parameters"]["info"]["version"].is_string(), "{r}");
}

#[test]
fn varlink_refuses_an_unprivileged_caller_and_changes_nothing() {
    if !root_or_skip() {
        return;
    }
    let user = unprivileged_user();
    let env = Env::new(Storage::Dir);
    let sock = serving(&env);
    ok(
        &sock,
        "CreateContainer",
        json!({ "name": "mine", "image": "busybox" }),
    );
    let refused = |method: &str, params: Value| {
        let r = call_as(Some(user), &sock, method, params.clone(), false);
        let name = match r {
            Ok(v) => panic!("{method} {params} succeeded for {user}: {v:?}"),
            Err(e) => e["error"].as_str().unwrap_or_default().to_string(),
        };
        assert!(
            name == "org.berth.Berth.NotAuthorized"
                || name == "org.berth.Berth.InteractiveAuthorizationRequired",
            "{method}: {name}"
        );
        name
    };
    refused(
        "CreateContainer",
        json!({ "name": "theirs", "image": "busybox" }),
    );
    // asked to allow interaction, polkit finds no agent to ask: plainly not authorized
    assert_eq!(
        refused(
            "CreateContainer",
            json!({ "name": "theirs", "image": "busybox", "allowInteractiveAuthentication": true }),
        ),
        "org.berth.Berth.NotAuthorized"
    );
    refused("StartContainer", json!({ "name": "mine" }));
    refused("DeleteContainer", json!({ "name": "mine", "force": true }));
    refused(
        "CreateSnapshot",
        json!({ "container": "mine", "name": "s" }),
    );
    // reading is open to anyone, and shows that nothing changed
    let list = call_as(Some(user), &sock, "ListContainers", json!({}), false).unwrap();
    let names: Vec<&str> = list[0]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mine"]);
    let g = call_as(
        Some(user),
        &sock,
        "GetContainer",
        json!({ "name": "mine" }),
        false,
    )
    .unwrap();
    assert_eq!(g[0]["container"]["status"], "Stopped");
    let snaps = ok(&sock, "ListSnapshots", json!({ "container": "mine" }));
    assert!(snaps["snapshots"].as_array().unwrap().is_empty());
    ok(&sock, "DeleteContainer", json!({ "name": "mine" }));
}

#[test]
fn varlink_bad_clients_harm_no_other_connection() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    let sock = serving(&env);
    let mut good = UnixStream::connect(&sock).unwrap();
    let works = |good: &mut UnixStream| {
        let r = raw_call(good, r#"{"method":"org.berth.Berth.GetHostInfo"}"#)
            .expect("the good client got no reply");
        assert!(r["parameters"]["info"]["version"].is_string(), "{r}");
    };
    works(&mut good);

    // malformed JSON: that connection is closed
    let mut bad = UnixStream::connect(&sock).unwrap();
    bad.write_all(b"{\"method\": nope\0").unwrap();
    assert!(closed(&mut bad), "malformed JSON left the connection open");
    works(&mut good);

    // not an object
    let mut bad = UnixStream::connect(&sock).unwrap();
    bad.write_all(b"[1,2,3]\0").unwrap();
    assert!(closed(&mut bad));
    works(&mut good);

    // half a message, then a stall: the others are served meanwhile
    let mut stalled = UnixStream::connect(&sock).unwrap();
    stalled
        .write_all(b"{\"method\":\"org.berth.Berth.GetHostInfo\"")
        .unwrap();
    works(&mut good);
    // a message without its NUL is not answered, and does not block anyone
    let mut no_nul = UnixStream::connect(&sock).unwrap();
    no_nul
        .write_all(b"{\"method\":\"org.berth.Berth.GetHostInfo\"}")
        .unwrap();
    works(&mut good);

    // a 100 MB message: closed once it passes the limit (16 MiB)
    let mut big = UnixStream::connect(&sock).unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b' '; 1 << 20];
        let mut sent = 0usize;
        let _ =
            big.write_all(b"{\"method\":\"org.berth.Berth.GetHostInfo\",\"parameters\":{\"x\":\"");
        for _ in 0..100 {
            if big.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len();
        }
        (sent, closed(&mut big))
    });
    works(&mut good);
    let (sent, was_closed) = writer.join().unwrap();
    assert!(sent < 100 << 20, "the whole 100 MB was accepted");
    assert!(
        was_closed,
        "the oversized message did not close its connection"
    );
    works(&mut good);

    // many idle connections
    let idle: Vec<UnixStream> = (0..1000)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    works(&mut good);
    // a new client is served too, by the reference client
    let list = call_as(None, &sock, "ListContainers", json!({}), false).unwrap();
    assert!(list[0]["containers"].is_array());
    drop(idle);
    drop(stalled);
    drop(no_nul);
    works(&mut good);
}

#[test]
fn varlink_socket_activation_starts_berthd() {
    if !root_or_skip() {
        return;
    }
    let Ok(activate) = which("systemd-socket-activate") else {
        eprintln!("skipped: systemd-socket-activate is not installed (Debian: systemd)");
        return;
    };
    let env = Env::new(Storage::Dir);
    // the bus-activated berthd goes; the socket's takes over
    if let Some(pid) = env.daemon_pid() {
        // SAFETY: kill on a pid we just asked for.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        wait_for(Duration::from_secs(30), "berthd to exit", || {
            !Path::new(&format!("/proc/{pid}")).exists()
        });
    }
    let sock = env.dir.join("activated.sock");
    let mut activator = env
        .socket_activated_berthd(&activate, &sock)
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(10), "the activation socket", || {
        sock.exists()
    });
    // nothing runs until a client connects
    let t0 = Instant::now();
    let mut s = UnixStream::connect(&sock).unwrap();
    let r = raw_call(&mut s, r#"{"method":"org.berth.Berth.GetHostInfo"}"#);
    let cold = t0.elapsed();
    let _ = activator.kill();
    let _ = activator.wait();
    let r = r.expect("no reply from the socket-activated berthd");
    assert!(r["parameters"]["info"]["version"].is_string(), "{r}");
    eprintln!("cold socket activation to the first reply: {cold:?}");
    // berthd did not bind its own socket: the one it was given serves
    assert!(!socket(&env).exists() || UnixStream::connect(socket(&env)).is_err());
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.is_file())
        .ok_or(())
}

/// GetContainer's median latency over varlink (one connection, raw) and over D-Bus (busctl
/// would measure its own start: zbus from this process instead). Printed, not asserted: the
/// machine is shared.
#[test]
fn varlink_get_container_latency() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    let sock = serving(&env);
    ok(
        &sock,
        "CreateContainer",
        json!({ "name": "lat", "image": "busybox" }),
    );
    let mut s = UnixStream::connect(&sock).unwrap();
    let msg = r#"{"method":"org.berth.Berth.GetContainer","parameters":{"name":"lat"}}"#;
    let mut times = Vec::new();
    for _ in 0..500 {
        let t = Instant::now();
        let r = raw_call(&mut s, msg).unwrap();
        times.push(t.elapsed());
        assert_eq!(r["parameters"]["container"]["name"], "lat");
    }
    times.sort();
    let varlink = times[times.len() / 2];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dbus = rt.block_on(async {
        let conn = zbus::connection::Builder::address(env.bus.as_str())
            .build()
            .await
            .unwrap();
        let mut times = Vec::new();
        for _ in 0..500 {
            let t = Instant::now();
            conn.call_method(
                Some("org.berth.Berth1"),
                "/org/berth/Berth1",
                Some("org.berth.Berth1.Manager"),
                "GetContainer",
                &("lat",),
            )
            .await
            .unwrap();
            times.push(t.elapsed());
        }
        times.sort();
        times[times.len() / 2]
    });
    eprintln!("GetContainer median: varlink {varlink:?}, D-Bus {dbus:?}");
    ok(&sock, "DeleteContainer", json!({ "name": "lat" }));
}

/// An open varlink connection keeps berthd from idling out; once it closes berthd exits idle.
#[test]
fn varlink_connection_keeps_berthd_alive_until_it_closes() {
    if !root_or_skip() {
        return;
    }
    let env = Env::with(berth_tests::Options {
        storage: Some(Storage::Dir),
        daemon_args: vec!["--idle-timeout".into(), "2".into()],
        ..Default::default()
    });
    let sock = serving(&env);
    let pid = env.daemon_pid().expect("berthd runs");
    let mut conn = UnixStream::connect(&sock).unwrap();
    raw_call(&mut conn, r#"{"method":"org.berth.Berth.GetHostInfo"}"#).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "berthd idled out under an open varlink connection"
    );
    drop(conn);
    wait_for(Duration::from_secs(15), "berthd to exit once idle", || {
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    });
}

/// systemd's own client, where the host has it (systemd 255+).
#[test]
fn varlinkctl_introspects_and_calls() {
    if !root_or_skip() {
        return;
    }
    let Ok(varlinkctl) = which("varlinkctl") else {
        eprintln!("skipped: varlinkctl is not installed (systemd 255 or later has it)");
        return;
    };
    let env = Env::new(Storage::Dir);
    let sock = serving(&env);
    let out = run(
        Command::new(&varlinkctl)
            .arg("introspect")
            .arg(&sock)
            .arg("org.berth.Berth"),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("method ListContainers"));
    let out = run(
        Command::new(&varlinkctl)
            .arg("call")
            .arg(&sock)
            .arg("org.berth.Berth.GetContainer")
            .arg(r#"{"name":"nope"}"#),
        Duration::from_secs(60),
    );
    assert!(!out.status.success());
    assert!(
        format!("{}{}", text(&out.stdout), text(&out.stderr)).contains("NoSuchContainer"),
        "{}",
        text(&out.stderr)
    );
}

/// Calls `method` with fds attached (tests/varlink/fdcall.py: a plain socket and SCM_RIGHTS;
/// `files` are `r:PATH` or `w:PATH`, sent in order): every reply, or the error reply as `Err`.
fn fd_call(
    sock: &Path,
    method: &str,
    params: Value,
    files: &[String],
    more: bool,
) -> Result<Vec<Value>, Value> {
    let mut cmd = Command::new(python());
    cmd.arg(repo().join("tests/varlink/fdcall.py"))
        .arg(sock)
        .arg(method)
        .arg(params.to_string())
        .args(files);
    if more {
        cmd.arg("--more");
    }
    let out = run(&mut cmd, Duration::from_secs(300));
    let mut replies = json_lines(&out.stdout);
    match replies.last() {
        Some(e) if e.get("error").is_some() => Err(replies.pop().unwrap()),
        Some(_) if out.status.success() => Ok(replies
            .into_iter()
            .map(|r| r["parameters"].clone())
            .collect()),
        _ => panic!("{method}: fdcall failed: {}", text(&out.stderr)),
    }
}

fn one(r: Result<Vec<Value>, Value>) -> Value {
    r.unwrap_or_else(|e| panic!("{e}")).pop().expect("a reply")
}

/// Exec over varlink: stdin, stdout and stderr are fds passed with the call; the reply is the
/// exit status; the options are checked as over D-Bus.
#[test]
fn varlink_exec_passes_stdio_fds_and_returns_the_exit_status() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    let sock = serving(&env);
    ok(
        &sock,
        "CreateContainer",
        json!({ "name": "x1", "image": "busybox", "start": true }),
    );
    let f = |n: &str| env.dir.join(n);
    std::fs::write(f("in"), "hello\n").unwrap();
    let r = one(fd_call(
        &sock,
        "Exec",
        json!({
            "name": "x1",
            "argv": ["sh", "-c", "tr a-z A-Z; echo err >&2; exit 3"],
            "stdin": 0, "stdout": 1, "stderr": 2,
        }),
        &[
            format!("r:{}", f("in").display()),
            format!("w:{}", f("out").display()),
            format!("w:{}", f("err").display()),
        ],
        false,
    ));
    assert_eq!(r["exitStatus"], 3, "{r}");
    assert_eq!(std::fs::read_to_string(f("out")).unwrap(), "HELLO\n");
    assert_eq!(std::fs::read_to_string(f("err")).unwrap(), "err\n");

    // one fd for two streams; env and cwd as over D-Bus
    let r = one(fd_call(
        &sock,
        "Exec",
        json!({
            "name": "x1",
            "argv": ["sh", "-c", "echo $GREETING $(pwd); echo b >&2"],
            "stdout": 0, "stderr": 0, "env": { "GREETING": "hi" }, "cwd": "/tmp",
        }),
        &[format!("w:{}", f("both").display())],
        false,
    ));
    assert_eq!(r["exitStatus"], 0, "{r}");
    assert_eq!(std::fs::read_to_string(f("both")).unwrap(), "hi /tmp\nb\n");

    // no fds: /dev/null; the exit status of a missing command
    let r = ok(&sock, "Exec", json!({ "name": "x1", "argv": ["true"] }));
    assert_eq!(r["exitStatus"], 0, "{r}");
    let r = ok(
        &sock,
        "Exec",
        json!({ "name": "x1", "argv": ["no-such-command"] }),
    );
    assert_eq!(r["exitStatus"], 127, "{r}");

    // refused before anything runs: an fd index past the call's fds, and the option checks
    // D-Bus's Exec makes (one shared check)
    let e = fd_call(
        &sock,
        "Exec",
        json!({ "name": "x1", "argv": ["true"], "stdout": 1 }),
        &[format!("w:{}", f("unused").display())],
        false,
    )
    .unwrap_err();
    assert_eq!(e["error"], "org.varlink.service.InvalidParameter", "{e}");
    assert_eq!(e["parameters"]["parameter"], "stdout", "{e}");
    for bad in [
        json!({ "name": "x1", "argv": [] }),
        json!({ "name": "x1", "argv": ["true"], "cwd": "relative" }),
        json!({ "name": "x1", "argv": ["true"], "env": { "A=B": "c" } }),
        json!({ "name": "x1", "argv": ["true"], "uid": 70000 }),
    ] {
        assert_eq!(
            error_name(call(&sock, "Exec", bad.clone())),
            "org.berth.Berth.InvalidConfig",
            "{bad}"
        );
    }
    assert_eq!(
        error_name(call(
            &sock,
            "Exec",
            json!({ "name": "nope", "argv": ["true"] })
        )),
        "org.berth.Berth.NoSuchContainer"
    );

    // exec latency over varlink (printed, not asserted: the machine is shared)
    let mut s = UnixStream::connect(&sock).unwrap();
    let msg = r#"{"method":"org.berth.Berth.Exec","parameters":{"name":"x1","argv":["true"]}}"#;
    let mut times = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let r = raw_call(&mut s, msg).unwrap();
        times.push(t.elapsed());
        assert_eq!(r["parameters"]["exitStatus"], 0, "{r}");
    }
    times.sort();
    eprintln!(
        "Exec `true` over varlink, median {:?}",
        times[times.len() / 2]
    );
    ok(
        &sock,
        "DeleteContainer",
        json!({ "name": "x1", "force": true }),
    );
}

/// ExportImage writes an image to a passed fd; ImportImage reads it back from one (with its
/// progress under `more`); a container launched from the import runs (CLI over varlink).
#[test]
fn varlink_exports_and_imports_an_image_then_launches_from_it() {
    if !root_or_skip() {
        return;
    }
    let mut env = Env::new(Storage::Dir);
    let sock = serving(&env);
    let fp = ok(&sock, "GetImage", json!({ "reference": "busybox" }))["image"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let file = env.dir.join("busybox.tar");
    let r = one(fd_call(
        &sock,
        "ExportImage",
        json!({ "reference": "busybox", "fd": 0 }),
        &[format!("w:{}", file.display())],
        false,
    ));
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size > 0);
    assert_eq!(r["bytes"], size, "{r}");

    ok(&sock, "DeleteImage", json!({ "reference": "busybox" }));
    assert_eq!(
        error_name(call(&sock, "GetImage", json!({ "reference": fp }))),
        "org.berth.Berth.NoSuchImage"
    );
    let replies = fd_call(
        &sock,
        "ImportImage",
        json!({ "archive": 0, "aliases": ["imported"] }),
        &[format!("r:{}", file.display())],
        true,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let last = replies.last().unwrap();
    assert_eq!(last["image"]["fingerprint"], fp.as_str(), "{last}");
    assert_eq!(last["image"]["aliases"], json!(["imported"]), "{last}");

    // refused: no fd, a file that is no image
    let e = fd_call(&sock, "ImportImage", json!({ "archive": 0 }), &[], false).unwrap_err();
    assert_eq!(e["error"], "org.varlink.service.InvalidParameter", "{e}");
    std::fs::write(env.dir.join("junk"), "not an image").unwrap();
    let e = fd_call(
        &sock,
        "ImportImage",
        json!({ "archive": 0 }),
        &[format!("r:{}", env.dir.join("junk").display())],
        false,
    )
    .unwrap_err();
    assert_eq!(e["error"], "org.berth.Berth.InvalidImage", "{e}");

    // the CLI over varlink launches from it, runs a command in it and imports again
    env.varlink = true;
    env.ok(&["launch", "imported", "v1"]);
    assert_eq!(env.ok(&["exec", "v1", "--", "echo", "hi"]), "hi\n");
    let out = env.ok(&[
        "image",
        "import",
        file.to_str().unwrap(),
        "--alias",
        "again",
    ]);
    assert!(out.contains(&fp), "{out}");
    assert!(env.ok(&["image", "list"]).contains("imported,again"));
    env.ok(&["delete", "--force", "v1"]);
}

/// A long operation cancelled with CancelOperation ends with the Cancelled error: an image
/// export into a FIFO that nobody reads until the cancel is sent (the export blocks once the
/// pipe is full, so it cannot finish first).
#[test]
fn varlink_a_cancelled_export_answers_cancelled() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    let sock = serving(&env);
    let fifo = env.dir.join("export.fifo");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success());
    // the read end first (non-blocking, so this open does not wait for a writer), so that
    // the client's open for writing does not wait either
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let export = Command::new(python())
        .arg(repo().join("tests/varlink/fdcall.py"))
        .arg(&sock)
        .arg("ExportImage")
        .arg(json!({ "reference": "busybox", "fd": 0 }).to_string())
        .arg(format!("w:{}", fifo.display()))
        .arg("--more")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut id = None;
    wait_for(Duration::from_secs(30), "the export's operation", || {
        let ops = ok(&sock, "ListOperations", json!({}));
        id = ops["operations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["verb"] == "image-export")
            .map(|o| o["id"].clone());
        id.is_some()
    });
    let id = id.unwrap();
    ok(&sock, "CancelOperation", json!({ "id": id }));
    // now read: the blocked write returns and the export sees the cancel
    let drain = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return total,
                Ok(n) => total += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("read the FIFO: {e}"),
            }
        }
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || drop(tx.send(export.wait_with_output())));
    let out = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the cancelled export ends within 60 s")
        .unwrap();
    let replies = json_lines(&out.stdout);
    let last = replies.last().cloned().unwrap_or_default();
    assert_eq!(
        last["error"],
        "org.berth.Berth.Cancelled",
        "{replies:?} {}",
        text(&out.stderr)
    );
    // the reader ends: berthd closed its end of the FIFO
    drain.join().unwrap();
}

/// berthd out of file descriptors — its RLIMIT_NOFILE lowered, then varlink connections take
/// the rest — answers what needs no new descriptor, fails what needs one with the cause and
/// nothing changed, and serves again once the connections go: the same berthd.
#[test]
fn berthd_survives_running_out_of_file_descriptors() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    let sock = serving(&env);
    env.ok(&["init", "busybox", "f1"]);
    let pid = env.daemon_pid().expect("berthd runs");
    let open_fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let st = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--nofile=64:64"])
        .status()
        .unwrap();
    assert!(st.success());
    // more connections than fit: berthd accepts until it has none left, the rest wait in the
    // socket's backlog
    let held: Vec<UnixStream> = (0..200)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    wait_for(Duration::from_secs(20), "berthd at its fd limit", || {
        open_fds() >= 63
    });
    // the D-Bus connection exists: reads answer
    assert!(env.ok(&["list"]).contains("f1"));
    // a start opens files: it fails, says why, and leaves the container as it was
    let out = env.berth(&["start", "f1"]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("Too many open files"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(env.status("f1"), "Stopped");
    drop(held);
    wait_for(Duration::from_secs(20), "berthd to close them", || {
        open_fds() < 40
    });
    env.ok(&["start", "f1"]);
    env.ok(&["exec", "f1", "--", "true"]);
    let r = ok(&sock, "GetContainer", json!({ "name": "f1" }));
    assert_eq!(r["container"]["status"], "Running", "{r}");
    env.ok(&["stop", "--force", "f1"]);
    assert_eq!(env.daemon_pid(), Some(pid), "the same berthd throughout");
}

/// A client that sends half a message and stalls is closed after the message timeout (10 s);
/// an idle connection, between messages, is not; others are served meanwhile.
#[test]
fn varlink_a_stalled_half_message_is_closed_and_idle_connections_are_not() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    let sock = serving(&env);
    let mut idle = UnixStream::connect(&sock).unwrap();
    let mut good = UnixStream::connect(&sock).unwrap();
    let mut stalled = UnixStream::connect(&sock).unwrap();
    let t = Instant::now();
    stalled
        .write_all(b"{\"method\":\"org.berth.Berth.GetHostInfo\"")
        .unwrap();
    let r = raw_call(&mut good, r#"{"method":"org.berth.Berth.GetHostInfo"}"#).unwrap();
    assert!(r["parameters"]["info"]["version"].is_string(), "{r}");
    stalled
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut b = [0u8; 64];
    let n = match stalled.read(&mut b) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
        Err(e) => panic!("the stalled connection was not closed: {e}"),
    };
    assert_eq!(n, 0, "the stalled connection got a reply");
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(40),
        "closed after {waited:?}"
    );
    // the idle one, silent as long, is still served; so is the good one
    let r = raw_call(&mut idle, r#"{"method":"org.berth.Berth.GetHostInfo"}"#)
        .expect("the idle connection was closed");
    assert!(r["parameters"]["info"]["version"].is_string(), "{r}");
    let r = raw_call(&mut good, r#"{"method":"org.berth.Berth.GetHostInfo"}"#).unwrap();
    assert!(r["parameters"]["info"]["version"].is_string(), "{r}");
}

/// Error names that only a failing operation on a real container brings, from the Python
/// client: Busy (a start while the container stops), CheckpointFailed (what CRIU cannot
/// dump) and RestoreFailed (a stateful snapshot whose saved memory was cut short).
#[test]
fn varlink_failed_operations_carry_their_error_names() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    let sock = serving(&env);
    let status =
        |c: &str| ok(&sock, "GetContainer", json!({ "name": c }))["container"]["status"].clone();
    let message = |e: &Value| {
        e["parameters"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };

    // Busy: its init ignores the stop signal, so the stop waits out its timeout
    ok(
        &sock,
        "CreateContainer",
        json!({ "name": "b1", "image": "busybox", "config": { "boot.stop_signal": "SIGWINCH" } }),
    );
    ok(&sock, "StartContainer", json!({ "name": "b1" }));
    let stop = client(
        None,
        &sock,
        "StopContainer",
        json!({ "name": "b1", "timeout": 120 }),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_for(Duration::from_secs(30), "b1 stopping", || {
        status("b1") == "Stopping"
    });
    let e = call(&sock, "StartContainer", json!({ "name": "b1" })).unwrap_err();
    assert_eq!(e["error"], "org.berth.Berth.Busy", "{e}");
    assert!(message(&e).contains("stopping"), "{e}");
    ok(
        &sock,
        "StopContainer",
        json!({ "name": "b1", "force": true }),
    );
    let out = stop.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(status("b1"), "Stopped");

    // CheckpointFailed: an open file whose last name is gone, larger than CRIU copies
    ok(&sock, "StartContainer", json!({ "name": "b1" }));
    env.ok(&["exec", "b1", "--", "sh", "-c", "head -c 70000000 /dev/zero > /root/big && (sh -c 'exec 3</root/big; rm /root/big; exec sleep 1000' >/dev/null 2>&1 </dev/null &) && while [ -e /root/big ]; do :; done"]);
    let e = call(
        &sock,
        "CreateSnapshot",
        json!({ "container": "b1", "name": "bad", "stateful": true }),
    )
    .unwrap_err();
    assert_eq!(e["error"], "org.berth.Berth.CheckpointFailed", "{e}");
    assert!(message(&e).contains("ghost"), "{e}");
    assert_eq!(status("b1"), "Running");

    // RestoreFailed: a stateful snapshot whose saved memory was cut short (CRIU 4.2.1 would
    // loop for good on it)
    ok(
        &sock,
        "StopContainer",
        json!({ "name": "b1", "force": true }),
    );
    ok(&sock, "StartContainer", json!({ "name": "b1" }));
    ok(
        &sock,
        "CreateSnapshot",
        json!({ "container": "b1", "name": "good", "stateful": true }),
    );
    let init = ok(&sock, "GetContainer", json!({ "name": "b1" }))["container"]["initPid"].clone();
    empty_pages(&env.pool().join("snapshots/b1"));
    let e = call(
        &sock,
        "RestoreSnapshot",
        json!({ "container": "b1", "name": "good" }),
    )
    .unwrap_err();
    assert_eq!(e["error"], "org.berth.Berth.RestoreFailed", "{e}");
    assert!(
        message(&e).contains("damaged") && message(&e).contains("pages-"),
        "{e}"
    );
    // found before anything was stopped: the container runs on, the same init
    let g = ok(&sock, "GetContainer", json!({ "name": "b1" }));
    assert_eq!(g["container"]["status"], "Running", "{g}");
    assert_eq!(g["container"]["initPid"], init, "{g}");
    // the same for the state a stateful stop saved: the start is refused, a stateless one
    // boots afresh
    ok(
        &sock,
        "StopContainer",
        json!({ "name": "b1", "stateful": true }),
    );
    empty_pages(&env.pool().join("snapshots/b1/.stop"));
    let e = call(&sock, "StartContainer", json!({ "name": "b1" })).unwrap_err();
    assert_eq!(e["error"], "org.berth.Berth.RestoreFailed", "{e}");
    assert!(
        message(&e).contains("damaged") && message(&e).contains("stateless"),
        "{e}"
    );
    assert_eq!(status("b1"), "Stopped");
    ok(
        &sock,
        "StartContainer",
        json!({ "name": "b1", "stateless": true }),
    );
    assert_eq!(status("b1"), "Running");
    ok(
        &sock,
        "StopContainer",
        json!({ "name": "b1", "force": true }),
    );
    ok(&sock, "DeleteContainer", json!({ "name": "b1" }));
}

/// The CLI over varlink: snapshots, images (export with its fds), supervise, and a clear
/// refusal of an unknown transport.
#[test]
fn varlink_cli_snapshots_images_and_refusals() {
    if !root_or_skip() {
        return;
    }
    let mut env = Env::new(Storage::Dir);
    env.varlink = true;
    env.ok(&["init", "busybox", "s1"]);
    assert_eq!(
        env.ok(&["snapshot", "create", "s1", "first"]),
        "Snapshot s1/first\n"
    );
    let list = env.ok(&["snapshot", "list", "s1"]);
    assert!(list.lines().any(|l| l.starts_with("first")), "{list}");
    env.ok(&["snapshot", "rename", "s1", "first", "second"]);
    env.ok(&["snapshot", "restore", "s1", "second"]);
    let json: Value =
        serde_json::from_str(&env.ok(&["snapshot", "list", "s1", "--format", "json"])).unwrap();
    assert_eq!(json[0]["name"], "second");
    env.ok(&["snapshot", "delete", "s1", "second"]);
    assert!(!env.ok(&["snapshot", "list", "s1"]).contains("second"));
    env.ok(&["config", "set", "s1", "user.note=hi"]);
    assert!(env.ok(&["info", "s1"]).contains("user.note: hi"));
    let images = env.ok(&["image", "list"]);
    assert!(images.lines().any(|l| l.starts_with("busybox")), "{images}");
    assert!(
        env.ok(&["image", "info", "busybox"])
            .contains("Fingerprint: ")
    );
    let out = env.berth(&["info", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("(NoSuchContainer)"),
        "{}",
        text(&out.stderr)
    );

    // image export: the file as imported, under the name Incus gives it, refused when it
    // exists
    let fp = env
        .ok(&["image", "info", "busybox"])
        .lines()
        .find_map(|l| l.strip_prefix("Fingerprint: ").map(str::to_string))
        .unwrap();
    let dir = env.state.join("export-dir");
    std::fs::create_dir_all(&dir).unwrap();
    let out = env.ok(&["image", "export", "busybox", dir.to_str().unwrap()]);
    let file = PathBuf::from(out.trim());
    assert!(
        file.starts_with(&dir) && file.file_name().unwrap().to_string_lossy().starts_with(&fp),
        "{out}"
    );
    let sum = run(
        Command::new("sha256sum").arg(&file),
        Duration::from_secs(30),
    );
    assert_eq!(
        text(&sum.stdout).split_whitespace().next(),
        Some(fp.as_str())
    );
    let again = env.berth(&["image", "export", "busybox", dir.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again.stderr));
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "a second file appeared"
    );

    // supervise (what berth@.service runs): starts the container and follows its init; a
    // container that stops on its own ends it with status 1, SIGTERM stops the container and
    // ends it with 0
    let supervise = |name: &str| {
        let mut cmd = Command::new(berth_tests::bin("berth"));
        cmd.args(["supervise", name])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        env.cli_env(&mut cmd);
        cmd.spawn().unwrap()
    };
    let ended = |child: &mut std::process::Child| {
        let t = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                let mut err = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (st.code(), err);
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "supervise did not end"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut child = supervise("s1");
    wait_for(
        Duration::from_secs(30),
        "s1 running under supervise",
        || env.status("s1") == "Running",
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let (code, err) = ended(&mut child);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(env.status("s1"), "Stopped");

    // a SIGTERM (systemctl stop) while the start is in flight, berthd held with SIGSTOP:
    // supervise says so, lets the start finish, stops the container and never says READY
    let notify = env.run.join("supervise-notify.sock");
    let ns = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    ns.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let said = std::cell::RefCell::new(Vec::<String>::new());
    let hear = || {
        let mut b = [0u8; 4096];
        if let Ok(n) = ns.recv(&mut b) {
            said.borrow_mut()
                .push(String::from_utf8_lossy(&b[..n]).into_owned());
        }
    };
    let held = Held::stop(env.daemon_pid().expect("berthd runs"));
    let mut cmd = Command::new(berth_tests::bin("berth"));
    cmd.args(["supervise", "s1"])
        .env("NOTIFY_SOCKET", &notify)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    env.cli_env(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    wait_for(
        Duration::from_secs(30),
        "supervise waiting for berthd's answer",
        || waits_on_a_socket(child.id()),
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_for(
        Duration::from_secs(30),
        "supervise to say it stops once the start is done",
        || {
            hear();
            said.borrow()
                .iter()
                .any(|m| m.contains("once its start is done"))
        },
    );
    drop(held);
    let (code, err) = ended(&mut child);
    assert_eq!(code, Some(0), "{err}");
    hear();
    let said = said.into_inner();
    assert!(
        !said.iter().any(|m| m.contains("READY=1")),
        "it said READY: {said:?}"
    );
    assert!(said.iter().any(|m| m.contains("STOPPING=1")), "{said:?}");
    assert_eq!(env.status("s1"), "Stopped");

    let mut child = supervise("s1");
    wait_for(
        Duration::from_secs(30),
        "s1 running under supervise",
        || env.status("s1") == "Running",
    );
    let init = env.init_pid("s1");
    // SAFETY: kill(2) of the container's init, a process this test owns.
    unsafe { libc::kill(init as i32, libc::SIGKILL) };
    let (code, err) = ended(&mut child);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("stopped without systemctl stop"), "{err}");
    let out = run(
        Command::new(berth_tests::bin("berth"))
            .arg("list")
            .env("BERTH_TRANSPORT", "carrier-pigeon"),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    env.ok(&["delete", "s1"]);
}

/// A process held with SIGSTOP until this is dropped (SIGCONT), a failed assertion included.
struct Held(u32);

impl Held {
    fn stop(pid: u32) -> Held {
        // SAFETY: kill(2) of a daemon this test started.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        Held(pid)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // SAFETY: as in stop.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

/// Whether a thread of process `pid` waits to read a unix stream socket (a call's answer).
fn waits_on_a_socket(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|t| {
            std::fs::read_to_string(t.path().join("wchan"))
                .is_ok_and(|w| w.starts_with("unix_stream_read"))
        })
}

/// berthd stopped (SIGTERM) and a new one serving.
fn restarted(env: &Env) {
    let pid = env.daemon_pid().expect("berthd runs");
    // SAFETY: plain syscall on a pid we read.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    wait_for(Duration::from_secs(15), "berthd to exit", || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    serving(env);
}

/// A path made immutable (`chattr +i`: not even root may add, remove or rename entries of a
/// directory, or remove a file) until dropped.
struct Immutable(PathBuf);

impl Immutable {
    fn set(p: &Path) -> Immutable {
        let out = run(
            Command::new("chattr").arg("+i").arg(p),
            Duration::from_secs(10),
        );
        assert!(
            out.status.success(),
            "chattr +i {p:?}: {}",
            text(&out.stderr)
        );
        Immutable(p.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// Failures of the host's own work carry their names too, each provoked for real: a directory
/// berth must write in made immutable, which not even root may change without undoing it. Each
/// refused call leaves what was there.
#[test]
fn varlink_host_failures_carry_their_names() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    let sock = serving(&env);
    let pool = env.pool();
    let failed = |method: &str, params: Value, dir: &str, name: &str| {
        let _i = Immutable::set(&pool.join(dir));
        let e = call(&sock, method, params.clone()).unwrap_err();
        assert_eq!(
            e["error"],
            format!("org.berth.Berth.{name}"),
            "{method} {params}: {e}"
        );
        assert!(
            e["parameters"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("Operation not permitted")),
            "the cause is in the message: {e}"
        );
        e["parameters"]["message"].as_str().unwrap().to_string()
    };
    let names = |method: &str, params: Value, field: &str| -> Vec<String> {
        ok(&sock, method, params)[field]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect()
    };
    ok(
        &sock,
        "CreateContainer",
        json!({ "name": "h1", "image": "busybox" }),
    );
    let h1 = json!({ "name": "h1" });
    failed(
        "CreateContainer",
        json!({ "name": "h2", "image": "busybox" }),
        "containers",
        "CreateFailed",
    );
    assert_eq!(names("ListContainers", json!({}), "containers"), ["h1"]);
    failed(
        "CreateSnapshot",
        json!({ "container": "h1", "name": "s1" }),
        "snapshots",
        "SnapshotFailed",
    );
    assert!(names("ListSnapshots", json!({ "container": "h1" }), "snapshots").is_empty());
    ok(
        &sock,
        "CreateSnapshot",
        json!({ "container": "h1", "name": "s1" }),
    );
    let m = failed(
        "RestoreSnapshot",
        json!({ "container": "h1", "name": "s1" }),
        "containers/h1",
        "SnapshotFailed",
    );
    assert!(
        m.contains("h1/s1 (restoring its files)"),
        "the step is named: {m}"
    );
    failed("DeleteContainer", h1.clone(), "containers", "DeleteFailed");
    assert_eq!(names("ListContainers", json!({}), "containers"), ["h1"]);
    assert!(
        pool.join("containers/h1/rootfs/sbin/init").exists(),
        "its files are whole"
    );
    // nor is it a delete the next berthd finishes
    restarted(&env);
    assert_eq!(names("ListContainers", json!({}), "containers"), ["h1"]);

    let images = || {
        ok(&sock, "ListImages", json!({}))["images"]
            .as_array()
            .unwrap()
            .len()
    };
    failed(
        "PublishContainer",
        json!({ "container": "h1" }),
        "images",
        "PublishFailed",
    );
    // a build in the same second as the image's own would make the same image (its files'
    // times are the build's), which is there already and written nowhere
    std::thread::sleep(Duration::from_millis(1100));
    failed(
        "BuildImage",
        json!({ "recipe": "busybox" }),
        "images",
        "ImageBuildFailed",
    );
    assert_eq!(images(), 1);
    // an image that is not in the store, as a file: publish, export, delete
    let fp = ok(
        &sock,
        "PublishContainer",
        json!({ "container": "h1", "aliases": ["p"] }),
    )["image"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let file = env.dir.join("p.tar");
    one(fd_call(
        &sock,
        "ExportImage",
        json!({ "reference": "p", "fd": 0 }),
        &[format!("w:{}", file.display())],
        false,
    ));
    ok(&sock, "DeleteImage", json!({ "reference": "p" }));
    let import = || {
        fd_call(
            &sock,
            "ImportImage",
            json!({ "archive": 0 }),
            &[format!("r:{}", file.display())],
            false,
        )
    };
    {
        let _i = Immutable::set(&pool.join("images"));
        let e = import().unwrap_err();
        assert_eq!(e["error"], "org.berth.Berth.ImportFailed", "{e}");
    }
    assert_eq!(images(), 1);
    // undone, each works
    assert_eq!(one(import())["image"]["fingerprint"], fp.as_str());
    ok(
        &sock,
        "RestoreSnapshot",
        json!({ "container": "h1", "name": "s1" }),
    );
    // a file that cannot go once the volume left its name: deleted all the same, and what
    // is left goes at the next start
    let etc = Immutable::set(&pool.join("containers/h1/rootfs/etc"));
    ok(&sock, "DeleteContainer", h1);
    assert!(names("ListContainers", json!({}), "containers").is_empty());
    let debris = |p: &Path| {
        std::fs::read_dir(p.join("containers"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(".old-h1-")
            })
            .collect::<Vec<_>>()
    };
    let left = debris(&pool);
    assert_eq!(left.len(), 1, "{left:?}");
    drop(etc);
    let _ = Immutable(left[0].join("rootfs/etc")); // dropped: chattr -i
    restarted(&env);
    assert!(debris(&pool).is_empty(), "{:?}", debris(&pool));
}
