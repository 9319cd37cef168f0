//! Interface tests: the D-Bus objects over a peer-to-peer connection (no bus daemon), with the
//! engine on the fake runtime and a static authorizer.

use berth_actors::fake::FakeRuntime;
use berth_actors::store::Db;
use berth_actors::types::HostInfo;
use berth_interfaces::auth::{self, StaticAuthorizer};
use berth_interfaces::client::{ContainerProxy, ManagerProxy};
use berth_interfaces::dbus::{self, Context};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;
use zbus::{Connection, Guid, Variant, connection};

struct Env {
    client: Connection,
    server: Connection,
    ctx: Context,
    rt: Arc<FakeRuntime>,
}

async fn env(deny: &[&str]) -> Env {
    let rt = Arc::new(FakeRuntime::new());
    let host = HostInfo {
        version: "0.1.0".into(),
        cgroup_version: 1,
        storage_driver: "btrfs".into(),
        stateful: berth_actors::types::StatefulProbe::fixed(Err("no CRIU in this test".into())),
    };
    let engine = berth_actors::Engine::start(Db::open_in_memory().unwrap(), rt.clone(), host)
        .await
        .unwrap();
    engine
        .build_image(
            "busybox",
            berth_actors::types::ImageOptions {
                aliases: vec!["busybox".into()],
                ..Default::default()
            },
            0,
        )
        .await
        .unwrap();
    let ctx = Context {
        engine,
        auth: Arc::new(StaticAuthorizer {
            deny: deny.iter().map(|s| s.to_string()).collect(),
        }),
    };
    let (s0, s1) = std::os::unix::net::UnixStream::pair().unwrap();
    let server = connection::Builder::unix_stream(s0)
        .server(Guid::generate())
        .p2p()
        .build();
    let client = connection::Builder::unix_stream(s1)
        .p2p()
        .method_timeout(Duration::from_secs(10))
        .build();
    let (server, client) = tokio::try_join!(server, client).unwrap();
    dbus::serve(&server, ctx.clone()).await.unwrap();
    Env {
        client,
        server,
        ctx,
        rt,
    }
}

fn err_name(e: &zbus::Error) -> String {
    berth_interfaces::client::error_parts(e)
        .map(|(n, _)| n)
        .unwrap_or_else(|| format!("{e:?}"))
}

async fn within<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_lifecycle_over_dbus() {
    within(async {
        let e = env(&[]).await;
        let m = ManagerProxy::new(&e.client).await.unwrap();
        assert_eq!(m.storage_driver().await.unwrap(), "btrfs");
        let path = m
            .create_container("web-1", "busybox", &HashMap::new())
            .await
            .unwrap();
        assert_eq!(path.as_str(), "/org/berth/Berth1/container/web_2d1");
        assert_eq!(m.get_container("web-1").await.unwrap(), path);
        let c = ContainerProxy::builder(&e.client)
            .path(path.clone())
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .unwrap();
        assert_eq!(c.status().await.unwrap(), "Stopped");
        assert_eq!(c.name().await.unwrap(), "web-1");

        let props = zbus::fdo::PropertiesProxy::builder(&e.client)
            .destination("org.berth.Berth1")
            .path(path.clone())
            .build()
            .await
            .unwrap();
        let mut changes = props.receive_properties_changed().await.unwrap();
        c.start(&HashMap::new()).await.unwrap();
        assert_eq!(c.status().await.unwrap(), "Running");
        assert!(c.init_pid().await.unwrap() > 0);
        // PropertiesChanged(Status) arrives
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(sig) = changes.next().await {
                let args = sig.args().unwrap();
                if args.interface_name().as_str() == "org.berth.Berth1.Container"
                    && args
                        .changed_properties()
                        .get("Status")
                        .is_some_and(|v| format!("{v:?}").contains("Running"))
                {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        assert!(got, "no PropertiesChanged(Status=Running)");

        let list = m.list_containers().await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            (
                list[0].name.as_str(),
                list[0].status.as_str(),
                &list[0].path
            ),
            ("web-1", "Running", &path)
        );

        // exec with our pipe as stdout (the fake writes argv there)
        let (mut r, w) = std::io::pipe().unwrap();
        let mut opts: HashMap<&str, Variant<'_>> = HashMap::new();
        opts.insert("stdout", zbus::Fd::from(&w).into());
        opts.insert("env", HashMap::from([("A", "1")]).into());
        let code = c.exec(&["exit", "3"], &opts).await.unwrap();
        drop(opts);
        drop(w);
        assert_eq!(code, 3);
        let mut out = String::new();
        r.read_to_string(&mut out).unwrap();
        assert_eq!(out, "exit 3\n");

        c.stop(&HashMap::from([("force", Variant::from(true))]))
            .await
            .unwrap();
        assert_eq!(c.status().await.unwrap(), "Stopped");
        assert!(e.rt.log().contains(&"stop web-1 force".to_string()));
        m.delete_container("web-1", &HashMap::new()).await.unwrap();
        let err = m.get_container("web-1").await.unwrap_err();
        assert_eq!(err_name(&err), "org.berth.Berth1.Error.NoSuchContainer");
        // the object is gone
        let err = c.status().await.unwrap_err();
        assert!(
            format!("{err:?}").contains("UnknownObject")
                || format!("{err:?}").contains("UnknownInterface"),
            "{err:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors_and_changes_nothing() {
    within(async {
        let e = env(&[]).await;
        let m = ManagerProxy::new(&e.client).await.unwrap();
        let none = HashMap::new();
        for bad in ["-x", "a/b", "..", &"x".repeat(64), "a_b", "ü"] {
            let err = m.create_container(bad, "busybox", &none).await.unwrap_err();
            assert_eq!(
                err_name(&err),
                "org.berth.Berth1.Error.InvalidName",
                "{bad}"
            );
            let err = m.get_container(bad).await.unwrap_err();
            assert_eq!(
                err_name(&err),
                "org.berth.Berth1.Error.InvalidName",
                "{bad}"
            );
        }
        let err = m
            .create_container("c1", "no-such-image", &none)
            .await
            .unwrap_err();
        assert_eq!(err_name(&err), "org.berth.Berth1.Error.NoSuchImage");
        let err = m
            .create_container(
                "c1",
                "busybox",
                &HashMap::from([("colour", Variant::from("red"))]),
            )
            .await
            .unwrap_err();
        assert_eq!(err_name(&err), "org.berth.Berth1.Error.InvalidConfig");
        let err = m
            .create_container(
                "c1",
                "busybox",
                &HashMap::from([("start", Variant::from("yes"))]),
            )
            .await
            .unwrap_err();
        assert_eq!(err_name(&err), "org.berth.Berth1.Error.InvalidConfig");
        let cfg = HashMap::from([("limits.memory", "plenty")]);
        let err = m
            .create_container(
                "c1",
                "busybox",
                &HashMap::from([("config", Variant::from(cfg))]),
            )
            .await
            .unwrap_err();
        assert_eq!(err_name(&err), "org.berth.Berth1.Error.InvalidConfig");
        assert!(m.list_containers().await.unwrap().is_empty());
        assert!(!e.rt.is_provisioned("c1"));

        m.create_container(
            "c1",
            "busybox",
            &HashMap::from([("start", Variant::from(true))]),
        )
        .await
        .unwrap();
        let err = m.start_container("c1", &none).await.unwrap_err();
        assert_eq!(err_name(&err), "org.berth.Berth1.Error.InvalidState");
        let err = m.delete_container("c1", &none).await.unwrap_err();
        assert_eq!(err_name(&err), "org.berth.Berth1.Error.InvalidState");
        let err = m
            .stop_container("c1", &HashMap::from([("timeout", Variant::from(-1i32))]))
            .await
            .unwrap_err();
        assert_eq!(err_name(&err), "org.berth.Berth1.Error.InvalidConfig");
        let c = ContainerProxy::builder(&e.client)
            .path(m.get_container("c1").await.unwrap())
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .unwrap();
        let err = c.exec(&[], &none).await.unwrap_err();
        assert_eq!(err_name(&err), "org.berth.Berth1.Error.InvalidConfig");
        let err = c
            .exec(
                &["true"],
                &HashMap::from([("uid", Variant::from(70000u32))]),
            )
            .await
            .unwrap_err();
        assert_eq!(err_name(&err), "org.berth.Berth1.Error.InvalidConfig");
        assert_eq!(c.status().await.unwrap(), "Running");
        // and the service keeps serving
        m.delete_container("c1", &HashMap::from([("force", Variant::from(true))]))
            .await
            .unwrap();
        assert!(m.list_containers().await.unwrap().is_empty());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_actions_change_nothing() {
    within(async {
        let e = env(&[auth::CREATE_CONTAINER, auth::EXEC]).await;
        let m = ManagerProxy::new(&e.client).await.unwrap();
        let err = m
            .create_container("c1", "busybox", &HashMap::new())
            .await
            .unwrap_err();
        assert_eq!(err_name(&err), "org.berth.Berth1.Error.NotAuthorized");
        assert!(m.list_containers().await.unwrap().is_empty());
        assert!(!e.rt.is_provisioned("c1"));
        // reads need no authorization
        assert_eq!(m.list_images().await.unwrap().len(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_manager_lists_containers_and_images() {
    within(async {
        let e = env(&[]).await;
        let m = ManagerProxy::new(&e.client).await.unwrap();
        m.create_container("a", "busybox", &HashMap::new())
            .await
            .unwrap();
        let om = zbus::fdo::ObjectManagerProxy::builder(&e.client)
            .destination("org.berth.Berth1")
            .path("/org/berth/Berth1")
            .build()
            .await
            .unwrap();
        let objects = om.get_managed_objects().await.unwrap();
        let with_ifaces: Vec<String> = objects
            .iter()
            .filter(|(_, i)| !i.is_empty())
            .map(|(p, _)| p.to_string())
            .collect();
        assert!(
            with_ifaces.contains(&"/org/berth/Berth1/container/a".to_string()),
            "{with_ifaces:?}"
        );
        assert!(
            with_ifaces
                .iter()
                .any(|p| p.starts_with("/org/berth/Berth1/image/")),
            "{with_ifaces:?}"
        );
        let props =
            &objects[&zbus::OwnedObjectPath::try_from("/org/berth/Berth1/container/a").unwrap()];
        let c = props
            .iter()
            .find(|(n, _)| n.as_str() == "org.berth.Berth1.Container")
            .map(|(_, p)| p)
            .expect("the container interface");
        assert_eq!(String::try_from(c["Name"].clone()).unwrap(), "a");
        // objects that come and go are announced (read off the connection: on a p2p
        // connection signals have no sender for a proxy's match)
        use futures_util::StreamExt;
        let stream = zbus::MessageStream::from(&e.client).filter_map(|m| async move {
            let m = m.ok()?;
            let h = m.header();
            (h.message_type() == zbus::message::Type::Signal
                && h.interface()
                    .is_some_and(|i| i.as_str() == "org.freedesktop.DBus.ObjectManager"))
            .then(|| {
                (
                    h.member().map(|n| n.to_string()).unwrap_or_default(),
                    m.clone(),
                )
            })
        });
        let mut stream = std::pin::pin!(stream);
        m.create_container("b", "busybox", &HashMap::new())
            .await
            .unwrap();
        // an object is in the tree (GetManagedObjects lists it) just before its
        // InterfacesAdded goes out, so a's may still come first: skip those of the objects
        // made above
        let (path, ifaces) = loop {
            let (member, msg) = stream.next().await.unwrap();
            assert_eq!(member, "InterfacesAdded");
            let (path, ifaces): (
                zbus::OwnedObjectPath,
                HashMap<String, HashMap<String, zbus::OwnedVariant>>,
            ) = msg.body().deserialize().unwrap();
            if path.as_str() == "/org/berth/Berth1/container/b" {
                break (path, ifaces);
            }
            assert!(
                with_ifaces.contains(&path.to_string()),
                "InterfacesAdded for {path}, neither b nor an object made before"
            );
        };
        assert_eq!(path.as_str(), "/org/berth/Berth1/container/b");
        assert_eq!(
            String::try_from(
                ifaces["org.berth.Berth1.Container"]["Status"]
                    .try_clone()
                    .unwrap()
            )
            .unwrap(),
            "Stopped"
        );
        m.delete_container("b", &HashMap::new()).await.unwrap();
        let (member, msg) = stream.next().await.unwrap();
        assert_eq!(member, "InterfacesRemoved");
        let (path, ifaces): (zbus::OwnedObjectPath, Vec<String>) =
            msg.body().deserialize().unwrap();
        assert_eq!(
            (path.as_str(), ifaces),
            (
                "/org/berth/Berth1/container/b",
                vec!["org.berth.Berth1.Container".to_string()]
            )
        );
    })
    .await
}

/// The checked-in introspection XML (interfaces/dbus/*.xml) is what the service serves.
/// `BERTH_BLESS=1 cargo test` rewrites it after an intended API change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checked_in_introspection_matches() {
    within(async {
        let e = env(&[]).await;
        let m = ManagerProxy::new(&e.client).await.unwrap();
        let c = m.create_container("a", "busybox", &HashMap::new()).await.unwrap();
        let img = m.get_image("busybox").await.unwrap();
        let cp = ContainerProxy::builder(&e.client).path(c.clone()).build().await.unwrap();
        let snap = cp.create_snapshot("s1", &HashMap::new()).await.unwrap();
        // an operation object, as one exists while a long job runs
        let ops = berth_actors::operation::Operations::new(berth_actors::events::Events::default());
        let op = ops.start("image-import", vec![], 0, true);
        e.server
            .object_server()
            .at("/org/berth/Berth1/operation/999", berth_interfaces::dbus::operation::OperationIface::new(e.ctx.clone(), op))
            .await
            .unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dbus");
        for (file, path, iface) in [
            ("org.berth.Berth1.Operation.xml", "/org/berth/Berth1/operation/999".to_string(), "org.berth.Berth1.Operation"),
            ("org.berth.Berth1.Manager.xml", "/org/berth/Berth1".to_string(), "org.berth.Berth1.Manager"),
            ("org.berth.Berth1.Container.xml", c.to_string(), "org.berth.Berth1.Container"),
            ("org.berth.Berth1.Image.xml", img.to_string(), "org.berth.Berth1.Image"),
            ("org.berth.Berth1.Snapshot.xml", snap.to_string(), "org.berth.Berth1.Snapshot"),
        ] {
            let xml = zbus::fdo::IntrospectableProxy::builder(&e.client)
                .destination("org.berth.Berth1")
                .path(path.as_str())
                .build()
                .await
                .unwrap()
                .introspect()
                .await
                .unwrap();
            let served = extract_interface(&xml, iface);
            let target = dir.join(file);
            if std::env::var_os("BERTH_BLESS").is_some() {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&target, &served).unwrap();
            }
            let checked_in = std::fs::read_to_string(&target).unwrap_or_default();
            assert_eq!(served, checked_in, "{file} differs from what is served; run BERTH_BLESS=1 cargo test -p berth-interfaces");
        }
    })
    .await
}

/// The `<interface name="…">…</interface>` element, as a standalone document.
fn extract_interface(xml: &str, iface: &str) -> String {
    let start = xml
        .find(&format!("<interface name=\"{iface}\">"))
        .expect("interface served");
    let end = start + xml[start..].find("</interface>").unwrap() + "</interface>".len();
    let body: Vec<&str> = xml[start..end]
        .lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect();
    format!(
        "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<node>\n  {}\n</node>\n",
        body.join("\n  ").trim_end()
    )
}

/// Snapshots over D-Bus: objects under their container, typed errors for bad input, the
/// polkit action that runs CRIU kept apart from the one that only copies files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_over_dbus() {
    within(async {
        let e = env(&[auth::CHECKPOINT]).await;
        let m = ManagerProxy::new(&e.client).await.unwrap();
        let none = HashMap::new();
        let path = m
            .create_container(
                "c1",
                "busybox",
                &HashMap::from([("start", Variant::from(true))]),
            )
            .await
            .unwrap();
        let c = ContainerProxy::builder(&e.client)
            .path(path)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .unwrap();
        let s = c.create_snapshot("", &none).await.unwrap();
        assert_eq!(s.as_str(), "/org/berth/Berth1/container/c1/snapshot/snap0");
        let sp = berth_interfaces::client::SnapshotProxy::builder(&e.client)
            .path(s.clone())
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .unwrap();
        assert_eq!(sp.name().await.unwrap(), "snap0");
        assert!(!sp.stateful().await.unwrap());
        // stateful needs the checkpoint action, which this caller is denied
        let err = c
            .create_snapshot("live", &HashMap::from([("stateful", Variant::from(true))]))
            .await
            .unwrap_err();
        assert_eq!(err_name(&err), "org.berth.Berth1.Error.NotAuthorized");
        let err = c
            .stop(&HashMap::from([("stateful", Variant::from(true))]))
            .await
            .unwrap_err();
        assert_eq!(err_name(&err), "org.berth.Berth1.Error.NotAuthorized");
        // bad input
        let err = c.create_snapshot("x/y", &none).await.unwrap_err();
        assert_eq!(err_name(&err), "org.berth.Berth1.Error.InvalidName");
        let err = c
            .create_snapshot("s2", &HashMap::from([("stateful", Variant::from("yes"))]))
            .await
            .unwrap_err();
        assert_eq!(err_name(&err), "org.berth.Berth1.Error.InvalidConfig");
        let err = sp
            .restore(&HashMap::from([("colour", Variant::from(1u32))]))
            .await
            .unwrap_err();
        assert_eq!(err_name(&err), "org.berth.Berth1.Error.InvalidConfig");
        let err = c
            .stop(&HashMap::from([
                ("stateful", Variant::from(true)),
                ("force", Variant::from(true)),
            ]))
            .await
            .unwrap_err();
        assert_eq!(err_name(&err), "org.berth.Berth1.Error.InvalidConfig");
        for bad in ["c1/", "/snap0", "c1/snap0/x", "c1/../x"] {
            let err = m.copy_container(bad, "c2", &none).await.unwrap_err();
            assert_eq!(
                err_name(&err),
                "org.berth.Berth1.Error.InvalidName",
                "{bad}"
            );
        }
        let err = m.copy_container("c1/nope", "c2", &none).await.unwrap_err();
        assert_eq!(err_name(&err), "org.berth.Berth1.Error.NoSuchSnapshot");
        assert_eq!(c.list_snapshots().await.unwrap().len(), 1);
        // a copy of the snapshot, then rename and delete
        let copy = m.copy_container("c1/snap0", "c2", &none).await.unwrap();
        assert_eq!(copy.as_str(), "/org/berth/Berth1/container/c2");
        let renamed = sp.rename("first").await.unwrap();
        assert_eq!(
            renamed.as_str(),
            "/org/berth/Berth1/container/c1/snapshot/first"
        );
        let fp = berth_interfaces::client::SnapshotProxy::builder(&e.client)
            .path(renamed)
            .build()
            .await
            .unwrap();
        fp.restore(&none).await.unwrap();
        fp.delete().await.unwrap();
        assert!(c.list_snapshots().await.unwrap().is_empty());
    })
    .await
}
