//! Actor tests: the whole engine over the in-memory fake runtime.

use crate::Engine;
use crate::container::ContainerMsg;
use crate::error::Error;
use crate::events::Event;
use crate::fake::FakeRuntime;
use crate::manager::{MAX_RESTARTS, ManagerMsg};
use crate::store::Db;
use crate::types::*;
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

fn host() -> HostInfo {
    HostInfo {
        version: "test".into(),
        cgroup_version: 2,
        storage_driver: "dir".into(),
        stateful: crate::types::StatefulProbe::fixed(Err("fake".into())),
    }
}

async fn engine() -> (Engine, Arc<FakeRuntime>) {
    let rt = Arc::new(FakeRuntime::new());
    let e = Engine::start(Db::open_in_memory().unwrap(), rt.clone(), host())
        .await
        .unwrap();
    e.build_image("busybox", aliases(&["busybox"]), 0)
        .await
        .unwrap();
    (e, rt)
}

fn aliases(a: &[&str]) -> ImageOptions {
    ImageOptions {
        aliases: a.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn req(name: &str) -> CreateRequest {
    CreateRequest {
        name: name.into(),
        image: "busybox".into(),
        ..Default::default()
    }
}

/// Every test body runs under a timeout.
async fn within<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test timed out");
}

async fn wait_for(e: &Engine, name: &str, status: Status) -> ContainerInfo {
    for _ in 0..500 {
        if let Ok(i) = e.container(name).await
            && i.status == status
        {
            return i;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{name} never became {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle() {
    within(async {
        let (e, rt) = engine().await;
        let (info, created) = e.create_container(req("c1")).await.unwrap();
        assert_eq!(created, Created::New);
        assert_eq!(info.status, Status::Stopped);
        assert_eq!(
            info.config.get("image.os").map(String::as_str),
            Some("busybox")
        );
        assert_eq!(
            info.config.get("volatile.idmap.base").map(String::as_str),
            Some("1000000")
        );
        assert!(rt.is_provisioned("c1"));

        e.start_container("c1", Default::default()).await.unwrap();
        let info = e.container("c1").await.unwrap();
        assert_eq!(info.status, Status::Running);
        assert_eq!(rt.is_running("c1").unwrap().init_pid, info.init_pid);
        let list = e.list_containers().await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0].status, list[0].init_pid),
            (Status::Running, info.init_pid)
        );

        // exec with a pipe as stdout: the fake writes argv there
        let (mut r, w) = std::io::pipe().unwrap();
        let code = e
            .exec(
                "c1",
                ExecRequest {
                    argv: vec!["exit".into(), "7".into()],
                    stdio: [None, Some(w.into()), None],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(code, 7);
        let mut out = String::new();
        r.read_to_string(&mut out).unwrap();
        assert_eq!(out, "exit 7\n");

        e.stop_container(
            "c1",
            StopOptions {
                force: false,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(e.container("c1").await.unwrap().status, Status::Stopped);
        assert_eq!(e.container("c1").await.unwrap().init_pid, 0);
        e.delete_container("c1", false).await.unwrap();
        assert_eq!(
            e.container("c1").await,
            Err(Error::NoSuchContainer("c1".into()))
        );
        assert!(!rt.is_provisioned("c1"));
        assert!(e.list_containers().await.unwrap().is_empty());
        // the name is free again at once
        e.create_container(req("c1")).await.unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_is_idempotent_and_refuses_clashes() {
    within(async {
        let (e, _rt) = engine().await;
        let mut r = req("web");
        r.config = BTreeMap::from([("user.role".into(), "web".into())]);
        r.start = true;
        let (i, c) = e.create_container(r.clone()).await.unwrap();
        assert_eq!((i.status, c), (Status::Running, Created::New));
        let (_, c) = e.create_container(r.clone()).await.unwrap();
        assert_eq!(c, Created::Identity);
        r.config.insert("user.role".into(), "db".into());
        assert!(matches!(
            e.create_container(r).await,
            Err(Error::AlreadyExists { .. })
        ));
        // hostnames ignore case: WEB would be web on the network
        assert!(matches!(
            e.create_container(req("WEB")).await,
            Err(Error::AlreadyExists { .. })
        ));
        assert!(matches!(
            e.container("WEB").await,
            Err(Error::NoSuchContainer(_))
        ));
        // an unnamed create that asks for a name gets a free one, twice over
        let (a, _) = e
            .create_container(CreateRequest {
                pick_name: true,
                ..req("")
            })
            .await
            .unwrap();
        let (b, _) = e
            .create_container(CreateRequest {
                pick_name: true,
                ..req("")
            })
            .await
            .unwrap();
        validate_name(&a.name).unwrap();
        assert_ne!(a.name, b.name);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_changes_nothing() {
    within(async {
        let (e, rt) = engine().await;
        for bad in ["", "-x", "a/b", "..", "x".repeat(64).as_str(), "a_b"] {
            let mut r = req("ok");
            r.name = bad.to_string();
            assert!(matches!(e.create_container(r).await, Err(Error::InvalidName { .. })), "{bad}");
            assert!(matches!(e.container(bad).await, Err(Error::InvalidName { .. })), "{bad}");
        }
        assert!(matches!(e.start_container("", Default::default()).await, Err(Error::InvalidName { .. })));
        assert!(e.list_containers().await.unwrap().is_empty(), "nothing was created");
        // an empty name asking for one to be picked gets one
        let picked = e.create_container(CreateRequest { pick_name: true, ..req("") }).await.unwrap().0;
        assert!(validate_name(&picked.name).is_ok() && !picked.name.is_empty(), "{:?}", picked.name);
        e.delete_container(&picked.name, true).await.unwrap();
        let mut r = req("c2");
        r.image = "nope".into();
        assert_eq!(e.create_container(r).await, Err(Error::NoSuchImage("nope".into())));
        let mut r = req("c2");
        r.config.insert("limits.memory".into(), "lots".into());
        assert!(matches!(e.create_container(r).await, Err(Error::InvalidConfig(_))));
        let mut r = req("c2");
        r.config.insert("limits.memory".into(), "1".into());
        assert!(matches!(e.create_container(r).await, Err(Error::InvalidConfig(m)) if m.contains("4MiB")));
        let mut r = req("c2");
        r.config = (0..100_000).map(|i| (format!("user.k{i}"), "v".repeat(100))).collect();
        assert!(matches!(e.create_container(r).await, Err(Error::InvalidConfig(m)) if m.contains("at most")));
        let mut r = req("c2");
        r.config = (0..200).map(|i| (format!("user.k{i}"), "v".repeat(60_000))).collect();
        assert!(matches!(e.create_container(r).await, Err(Error::InvalidConfig(m)) if m.contains("bytes")));
        let mut r = req("c2");
        r.config.insert("volatile.x".into(), "1".into());
        assert!(matches!(e.create_container(r).await, Err(Error::InvalidConfig(_))));
        let mut r = req("c2");
        r.profiles = Some(vec!["gpu".into()]);
        assert_eq!(e.create_container(r).await, Err(Error::NoSuchProfile("gpu".into())));
        assert!(e.list_containers().await.unwrap().is_empty());
        assert!(!rt.is_provisioned("c2"));

        e.create_container(CreateRequest { start: true, ..req("c3") }).await.unwrap();
        assert!(matches!(e.start_container("c3", Default::default()).await, Err(Error::InvalidState { status: Status::Running, .. })));
        assert!(matches!(e.delete_container("c3", false).await, Err(Error::InvalidState { .. })));
        assert_eq!(e.container("c3").await.unwrap().status, Status::Running);
        e.delete_container("c3", true).await.unwrap();
        assert!(rt.is_running("c3").is_none());
        assert!(matches!(e.stop_container("c9", StopOptions { force: true, ..Default::default() }).await, Err(Error::NoSuchContainer(_))));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_leaves_it_stopped() {
    within(async {
        let (e, rt) = engine().await;
        e.create_container(req("c1")).await.unwrap();
        rt.fail_next_start("c1", "mount proc: EPERM");
        let err = e
            .start_container("c1", Default::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Runtime { detail, .. } if detail.contains("mount proc")),
            "{err}"
        );
        assert_eq!(e.container("c1").await.unwrap().status, Status::Stopped);
        e.start_container("c1", Default::default()).await.unwrap();
    })
    .await
}

/// An engine with container `name` running, whose stops take 30 s unless forced.
async fn running_with_slow_stop(name: &str) -> (Engine, Arc<FakeRuntime>) {
    let (e, rt) = engine().await;
    e.create_container(CreateRequest {
        start: true,
        ..req(name)
    })
    .await
    .unwrap();
    rt.set_stop_delay(Duration::from_secs(30));
    (e, rt)
}

fn graceful() -> StopOptions {
    StopOptions {
        force: false,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_keeps_the_mailbox_answering_and_force_escalates() {
    within(async {
        let (e, rt) = running_with_slow_stop("slow").await;
        let e2 = e.clone();
        let graceful = tokio::spawn(async move { e2.stop_container("slow", graceful()).await });
        wait_for(&e, "slow", Status::Stopping).await;
        // a second operation is refused, not queued behind the stop
        assert!(matches!(
            e.start_container("slow", Default::default()).await,
            Err(Error::Busy(_))
        ));
        e.stop_container(
            "slow",
            StopOptions {
                force: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        graceful.await.unwrap().unwrap();
        assert_eq!(e.container("slow").await.unwrap().status, Status::Stopped);
        assert!(rt.log().contains(&"stop slow force".to_string()));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_off_from_inside_is_noticed_and_ephemeral_ones_vanish() {
    within(async {
        let (e, rt) = engine().await;
        let mut events = e.subscribe();
        e.create_container(CreateRequest {
            start: true,
            ..req("c1")
        })
        .await
        .unwrap();
        e.create_container(CreateRequest {
            start: true,
            ephemeral: true,
            ..req("eph")
        })
        .await
        .unwrap();
        rt.power_off_from_inside("c1");
        wait_for(&e, "c1", Status::Stopped).await;
        rt.power_off_from_inside("eph");
        for _ in 0..500 {
            if matches!(e.container("eph").await, Err(Error::NoSuchContainer(_))) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(matches!(
            e.container("eph").await,
            Err(Error::NoSuchContainer(_))
        ));
        assert!(!rt.is_provisioned("eph"));
        // events in order for c1: created, starting, running, stopped
        let mut seen = Vec::new();
        while let Ok(ev) = events.try_recv() {
            match ev {
                Event::ContainerChanged { name, status, .. } if name == "c1" => seen.push(status),
                _ => {}
            }
        }
        let dedup: Vec<Status> = seen.iter().copied().fold(Vec::new(), |mut v, s| {
            if v.last() != Some(&s) {
                v.push(s)
            }
            v
        });
        assert_eq!(
            dedup,
            [
                Status::Stopped,
                Status::Starting,
                Status::Running,
                Status::Stopped
            ]
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_gives_a_new_init() {
    within(async {
        let (e, _rt) = engine().await;
        e.create_container(CreateRequest {
            start: true,
            ..req("c1")
        })
        .await
        .unwrap();
        let before = e.container("c1").await.unwrap().init_pid;
        e.restart_container(
            "c1",
            StopOptions {
                force: false,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let after = e.container("c1").await.unwrap();
        assert_eq!(after.status, Status::Running);
        assert_ne!(after.init_pid, before);
    })
    .await
}

/// A forced delete that comes while a restart is stopping the container is the later word:
/// it is answered once the container is gone (it used to wait, unanswered, for a next stop
/// after the restart had started the container again), and the restart is told so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_during_a_restart_is_answered_and_wins() {
    within(async {
        let (e, rt) = running_with_slow_stop("rd").await;
        let e2 = e.clone();
        let restart = tokio::spawn(async move { e2.restart_container("rd", graceful()).await });
        wait_for(&e, "rd", Status::Stopping).await;
        tokio::time::timeout(Duration::from_secs(5), e.delete_container("rd", true))
            .await
            .expect("the delete is answered")
            .unwrap();
        assert!(matches!(
            restart.await.unwrap(),
            Err(Error::NoSuchContainer(n)) if n == "rd"
        ));
        assert!(matches!(
            e.container("rd").await,
            Err(Error::NoSuchContainer(_))
        ));
        assert!(rt.is_running("rd").is_none());
        assert!(!rt.is_provisioned("rd"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_container_actor_is_respawned_and_finds_its_container() {
    within(async {
        let (e, rt) = engine().await;
        e.create_container(CreateRequest {
            start: true,
            ..req("c1")
        })
        .await
        .unwrap();
        let pid = e.container("c1").await.unwrap().init_pid;
        for round in 0..MAX_RESTARTS {
            e.manager()
                .send_message(ManagerMsg::ToContainer("c1".into(), ContainerMsg::Crash))
                .unwrap();
            // it answers again, as Running with the same init
            let mut ok = false;
            for _ in 0..200 {
                if let Ok(i) = e.container("c1").await {
                    assert_eq!(
                        (i.status, i.init_pid),
                        (Status::Running, pid),
                        "round {round}"
                    );
                    ok = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(ok, "not respawned in round {round}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(rt.is_running("c1").unwrap().init_pid, pid);
        // one more failure within the window: the manager gives up on it
        e.manager()
            .send_message(ManagerMsg::ToContainer("c1".into(), ContainerMsg::Crash))
            .unwrap();
        let mut gave_up = false;
        for _ in 0..200 {
            // (a call that reaches the dying actor is transiently Unavailable too)
            if let Err(Error::Unavailable(m)) = e.container("c1").await
                && m.contains("restart berthd")
            {
                gave_up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(gave_up);
        // the container itself never noticed
        assert_eq!(rt.is_running("c1").unwrap().init_pid, pid);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_no_record_names_are_swept_before_berthd_serves() {
    within(async {
        let rt = Arc::new(FakeRuntime::new());
        // a snapshot directory of a container the database does not know
        rt.capture_snapshot_for_test("gone", "s1");
        // start_idle is what berthd serves after; Startup (finishing interrupted changes)
        // waits for it to serve. Once it serves, an import, build or restore writes files no
        // record names yet: a sweep then would remove them under it.
        let e = Engine::start_idle(Db::open_in_memory().unwrap(), rt.clone(), host())
            .await
            .unwrap();
        let log = rt.log();
        assert!(log.contains(&"cleanup images".to_string()), "{log:?}");
        assert!(
            log.contains(&"sweep orphan snapshots".to_string()),
            "{log:?}"
        );
        assert!(rt.snapshot_dirs("gone").is_empty());
        e.build_image("busybox", aliases(&["busybox"]), 0)
            .await
            .unwrap();
        e.startup();
        e.create_container(req("c1")).await.unwrap();
        let log = rt.log();
        let sweeps = |l: &Vec<String>| {
            l.iter()
                .filter(|l| *l == "cleanup images" || *l == "sweep orphan snapshots")
                .count()
        };
        assert_eq!(sweeps(&log), 2, "swept again once serving: {log:?}");
        e.shutdown().await;
    })
    .await
}

/// A database file of its own for a test that restarts the engine over it: (its directory,
/// the file).
fn fresh_db(test: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("berth-actors-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db_path = dir.join("berth.db");
    let _ = std::fs::remove_file(&db_path);
    (dir, db_path)
}

/// An engine over `db_path` builds busybox and starts `names` from it, then shuts down (as
/// berthd exits) leaving them running.
async fn running_then_shut_down(db_path: &std::path::Path, rt: &Arc<FakeRuntime>, names: &[&str]) {
    let e = Engine::start(Db::open(db_path).unwrap(), rt.clone(), host())
        .await
        .unwrap();
    e.build_image("busybox", aliases(&["busybox"]), 0)
        .await
        .unwrap();
    for n in names {
        e.create_container(CreateRequest {
            start: true,
            ..req(n)
        })
        .await
        .unwrap();
    }
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_died_while_berthd_was_away_is_not_listed_running() {
    within(async {
        let rt = Arc::new(FakeRuntime::new());
        let (dir, db_path) = fresh_db("away");
        running_then_shut_down(&db_path, &rt, &["dies", "keeps"]).await;
        rt.power_off_from_inside("dies");
        // the actors are not spawned (no Startup): the answers come from the records
        let e = Engine::start_idle(Db::open(&db_path).unwrap(), rt.clone(), host())
            .await
            .unwrap();
        let list = e.list_containers().await.unwrap();
        let status = |n: &str| list.iter().find(|c| c.name == n).unwrap().status;
        assert_eq!(status("dies"), Status::Stopped, "{list:?}");
        assert_eq!(status("keeps"), Status::Running, "{list:?}");
        let dies = e.container("dies").await.unwrap();
        assert_eq!((dies.status, dies.init_pid), (Status::Stopped, 0));
        let keeps = e.container("keeps").await.unwrap();
        assert_eq!(keeps.status, Status::Running);
        assert_eq!(keeps.init_pid, rt.is_running("keeps").unwrap().init_pid);
        e.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_reconciles_with_what_runs() {
    within(async {
        let rt = Arc::new(FakeRuntime::new());
        let (dir, db_path) = fresh_db("startup");
        running_then_shut_down(&db_path, &rt, &["keeps", "dies"]).await;
        let pid = rt.is_running("keeps").unwrap().init_pid;
        // while "berthd" is away: one container powers off, a create is half done
        rt.power_off_from_inside("dies");
        {
            let db = Db::open(&db_path).unwrap();
            let mut half = db.container("keeps").unwrap().unwrap();
            half.name = "half".into();
            half.pending = Pending::Create;
            half.status = Status::Stopped;
            db.insert_container(&half).unwrap();
        }
        let e = Engine::start(Db::open(&db_path).unwrap(), rt.clone(), host())
            .await
            .unwrap();
        let keeps = wait_for(&e, "keeps", Status::Running).await;
        assert_eq!(keeps.init_pid, pid);
        wait_for(&e, "dies", Status::Stopped).await;
        assert!(matches!(
            e.container("half").await,
            Err(Error::NoSuchContainer(_))
        ));
        assert!(rt.log().contains(&"deprovision half".to_string()));
        e.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_resolve_by_alias_fingerprint_and_prefix() {
    within(async {
        let (e, _rt) = engine().await;
        let img = e.image("busybox").await.unwrap();
        assert_eq!(e.image(&img.fingerprint).await.unwrap(), img);
        assert_eq!(e.image(&img.fingerprint[..12]).await.unwrap(), img);
        assert_eq!(e.image("zzz").await, Err(Error::NoSuchImage("zzz".into())));
        let (again, c) = e.build_image("busybox", aliases(&[]), 0).await.unwrap();
        assert_eq!(
            (again.fingerprint, c),
            (img.fingerprint.clone(), Created::Identity)
        );
        // again with the alias it has (a retry after a crash): the image back, unchanged
        let (again, c) = e
            .build_image("busybox", aliases(&["busybox"]), 0)
            .await
            .unwrap();
        assert_eq!(
            (again.fingerprint, again.aliases, c),
            (
                img.fingerprint.clone(),
                img.aliases.clone(),
                Created::Identity
            )
        );
        assert!(matches!(
            e.build_image("busybox", aliases(&["bad alias"]), 0).await,
            Err(Error::InvalidName { .. })
        ));
        assert!(matches!(
            e.build_image("nope", aliases(&[]), 0).await,
            Err(Error::InvalidConfig(_))
        ));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_config_applies_a_disk_limit_live_and_refuses_without_a_trace() {
    within(async {
        let (e, rt) = engine().await;
        e.create_container(req("c")).await.unwrap();
        e.start_container("c", StartOptions::default())
            .await
            .unwrap();
        let set = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        // running: the limit reaches the runtime before the reply, and is recorded
        e.set_config("c", set("limits.disk", "64MiB"), vec![])
            .await
            .unwrap();
        assert!(rt.log().contains(&format!("disk limit c {}", 64u64 << 20)));
        let info = e.container("c").await.unwrap();
        assert_eq!(
            info.config.get("limits.disk").map(String::as_str),
            Some("64MiB")
        );
        // an unchanged limit is not applied again; a removed one is lifted
        let before = rt.log().len();
        e.set_config("c", set("user.note", "x"), vec![])
            .await
            .unwrap();
        assert_eq!(rt.log().len(), before);
        e.set_config("c", BTreeMap::new(), vec!["limits.disk".into()])
            .await
            .unwrap();
        assert!(rt.log().contains(&"disk limit c none".to_string()));
        // refused values, volatile keys and unknown containers change nothing
        for (set, unset) in [
            (set("limits.disk", "1MiB"), vec![]),
            (set("limits.disk", "lots"), vec![]),
            (set("volatile.idmap.base", "0"), vec![]),
            (BTreeMap::new(), vec!["volatile.idmap.base".to_string()]),
        ] {
            let r = e.set_config("c", set, unset).await;
            assert!(matches!(r, Err(Error::InvalidConfig(_))), "{r:?}");
        }
        assert!(matches!(
            e.set_config("nope", BTreeMap::new(), vec![]).await,
            Err(Error::NoSuchContainer(_))
        ));
        let after = e.container("c").await.unwrap();
        assert_eq!(after.config, {
            let mut c = info.config.clone();
            c.remove("limits.disk");
            c.insert("user.note".into(), "x".into());
            c
        });
    })
    .await;
}
