//! Actor tests of snapshots, checkpoints and copies over the fake runtime: the message
//! exchange between a Container actor and its Snapshot actors, what is recorded when, and how
//! requests on one container wait for a checkpoint while other containers go on.

use crate::Engine;
use crate::error::Error;
use crate::fake::FakeRuntime;
use crate::store::Db;
use crate::types::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn host() -> HostInfo {
    HostInfo {
        version: "test".into(),
        cgroup_version: 2,
        storage_driver: "dir".into(),
        stateful: StatefulProbe::fixed(Ok("4.2.1".into())),
    }
}

async fn engine_on(db: Db, rt: Arc<FakeRuntime>) -> Engine {
    let e = Engine::start(db, rt, host()).await.unwrap();
    if e.image("busybox").await.is_err() {
        e.build_image(
            "busybox",
            ImageOptions {
                aliases: vec!["busybox".into()],
                ..Default::default()
            },
            0,
        )
        .await
        .unwrap();
    }
    e
}

async fn running(e: &Engine, name: &str) {
    e.create_container(CreateRequest {
        name: name.into(),
        image: "busybox".into(),
        start: true,
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn within<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test timed out");
}

fn names(list: &[SnapshotRecord]) -> Vec<&str> {
    list.iter().map(|s| s.name.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_snapshots_are_named_committed_restored_renamed_and_deleted() {
    within(async {
        let rt = Arc::new(FakeRuntime::new());
        let e = engine_on(Db::open_in_memory().unwrap(), rt.clone()).await;
        running(&e, "c1").await;
        rt.write_files("c1", "v1");
        let s0 = e.create_snapshot("c1", "", false, 0).await.unwrap();
        rt.write_files("c1", "v2");
        let s1 = e.create_snapshot("c1", "", false, 0).await.unwrap();
        assert_eq!((s0.name.as_str(), s1.name.as_str()), ("snap0", "snap1"));
        assert!(!s0.stateful);
        assert!(matches!(
            e.create_snapshot("c1", "snap1", false, 0).await,
            Err(Error::AlreadyExists { .. })
        ));
        assert!(matches!(
            e.create_snapshot("c1", "bad/name", false, 0).await,
            Err(Error::InvalidName { .. })
        ));
        assert_eq!(
            rt.snapshot_dirs("c1").len(),
            2,
            "the refused ones staged nothing"
        );
        assert!(
            rt.snapshot_dirs("c1")
                .iter()
                .all(|(_, committed)| *committed)
        );

        // restore a running container: stopped, files replaced, started again
        e.restore_snapshot("c1", "snap0", None, 0).await.unwrap();
        assert_eq!(rt.files("c1").as_deref(), Some("v1"));
        assert_eq!(e.container("c1").await.unwrap().status, Status::Running);
        let log = rt.log();
        let i = log.iter().position(|l| l == "restore files c1").unwrap();
        assert_eq!(log[i - 1], "stop c1 force");
        assert_eq!(log[i + 1], "start c1");
        // a stateless snapshot has no running state to restore
        assert!(matches!(
            e.restore_snapshot("c1", "snap0", Some(true), 0).await,
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            e.restore_snapshot("c1", "nope", None, 0).await,
            Err(Error::NoSuchSnapshot { .. })
        ));

        e.rename_snapshot("c1", "snap1", "later").await.unwrap();
        assert!(matches!(
            e.rename_snapshot("c1", "snap0", "later").await,
            Err(Error::AlreadyExists { .. })
        ));
        assert_eq!(
            names(&e.list_snapshots("c1").await.unwrap()),
            ["snap0", "later"]
        );
        // the next auto name continues after the highest in use
        assert_eq!(
            e.create_snapshot("c1", "", false, 0).await.unwrap().name,
            "snap1"
        );
        e.delete_snapshot("c1", "snap0").await.unwrap();
        assert_eq!(
            names(&e.list_snapshots("c1").await.unwrap()),
            ["later", "snap1"]
        );
        assert_eq!(rt.snapshot_dirs("c1").len(), 2);
        assert!(matches!(
            e.delete_snapshot("c1", "snap0").await,
            Err(Error::NoSuchSnapshot { .. })
        ));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_reloaded_and_debris_swept_after_a_restart() {
    within(async {
        let dir = std::env::temp_dir().join(format!("berth-actors-snap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("berth.db");
        let rt = Arc::new(FakeRuntime::new());
        {
            let e = engine_on(Db::open(&db).unwrap(), rt.clone()).await;
            running(&e, "c1").await;
            e.create_snapshot("c1", "keep", true, 0).await.unwrap();
            // a capture that never got its row (a crash between files and row)
            rt.capture_snapshot_for_test("c1", "999-dead");
            e.shutdown().await;
        }
        assert_eq!(rt.snapshot_dirs("c1").len(), 2);
        let e = engine_on(Db::open(&db).unwrap(), rt.clone()).await;
        let list = e.list_snapshots("c1").await.unwrap();
        assert_eq!(names(&list), ["keep"]);
        assert!(list[0].stateful);
        assert_eq!(
            rt.snapshot_dirs("c1").len(),
            1,
            "debris no row names is swept: {:?}",
            rt.snapshot_dirs("c1")
        );
        e.restore_snapshot("c1", "keep", None, 0).await.unwrap();
        // the tree a stateful restore replaces is cut off its network before it is killed, so
        // that its death closes none of the connections the restored tree takes over
        let log = rt.log();
        let cut = log
            .iter()
            .rposition(|l| l == "disconnect c1")
            .expect("disconnected first");
        let killed = log
            .iter()
            .rposition(|l| l == "stop c1 force")
            .expect("the running tree is killed");
        assert!(cut < killed, "{log:?}");
        assert_eq!(e.container("c1").await.unwrap().status, Status::Running);
        // deleting the container removes its snapshots' rows (and files)
        e.delete_container("c1", true).await.unwrap();
        assert!(rt.snapshot_dirs("c1").is_empty());
        let loaded = Db::open(&db).unwrap().load().unwrap();
        assert!(loaded.snapshots.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_checkpoint_records_nothing_and_the_container_runs_on() {
    within(async {
        let rt = Arc::new(FakeRuntime::new());
        let e = engine_on(Db::open_in_memory().unwrap(), rt.clone()).await;
        running(&e, "c1").await;
        rt.fail_next_checkpoint("c1", "dump: skqueue");
        let err = e.create_snapshot("c1", "s", true, 0).await.unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Runtime {
                    op: crate::error::Op::Checkpoint,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(e.list_snapshots("c1").await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            rt.snapshot_dirs("c1").is_empty(),
            "the staged files went with the Snapshot actor"
        );
        assert_eq!(e.container("c1").await.unwrap().status, Status::Running);
        // the name is free again, and a stateful snapshot of a stopped container is refused
        e.create_snapshot("c1", "s", true, 0).await.unwrap();
        e.stop_container(
            "c1",
            StopOptions {
                force: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(matches!(
            e.create_snapshot("c1", "t", true, 0).await,
            Err(Error::InvalidState { .. })
        ));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_of_a_running_container_whose_snapshot_is_being_published_is_invalid_state() {
    within(async {
        let rt = Arc::new(FakeRuntime::new());
        let e = engine_on(Db::open_in_memory().unwrap(), rt.clone()).await;
        running(&e, "a").await;
        e.create_snapshot("a", "s", false, 0).await.unwrap();
        rt.set_publish_delay(Duration::from_millis(500));
        let e1 = e.clone();
        let publish =
            tokio::spawn(
                async move { e1.publish("a", Some("s"), ImageOptions::default(), 0).await },
            );
        while !rt.log().iter().any(|l| l == "publish a") {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // what `berth supervise` takes for "runs already", not Busy
        assert!(matches!(
            e.start_container("a", StartOptions::default()).await,
            Err(Error::InvalidState { .. })
        ));
        publish.await.unwrap().unwrap();
        assert_eq!(e.container("a").await.unwrap().status, Status::Running);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_serializes_requests_on_its_container_but_not_on_others() {
    within(async {
        let rt = Arc::new(FakeRuntime::new());
        let e = engine_on(Db::open_in_memory().unwrap(), rt.clone()).await;
        running(&e, "a").await;
        running(&e, "b").await;
        rt.set_checkpoint_delay(Duration::from_millis(400));
        let t0 = Instant::now();
        let (e1, e2, e3) = (e.clone(), e.clone(), e.clone());
        let snap_a = tokio::spawn(async move { e1.create_snapshot("a", "s", true, 0).await });
        let snap_b = tokio::spawn(async move { e2.create_snapshot("b", "s", true, 0).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        // a stop sent during the checkpoint waits for it, then runs
        let stop_a = tokio::spawn(async move {
            e3.stop_container(
                "a",
                StopOptions {
                    force: true,
                    ..Default::default()
                },
            )
            .await
        });
        // the mailbox still answers questions meanwhile
        let q = Instant::now();
        assert_eq!(e.container("a").await.unwrap().status, Status::Running);
        assert!(
            q.elapsed() < Duration::from_millis(200),
            "Info waited for the checkpoint"
        );
        snap_a.await.unwrap().unwrap();
        snap_b.await.unwrap().unwrap();
        assert!(
            t0.elapsed() < Duration::from_millis(750),
            "two containers checkpoint in parallel ({:?})",
            t0.elapsed()
        );
        stop_a.await.unwrap().unwrap();
        let log = rt.log();
        let ck = log
            .iter()
            .position(|l| l.starts_with("checkpoint a"))
            .unwrap();
        let st = log.iter().position(|l| l == "stop a force").unwrap();
        assert!(ck < st, "the stop ran after the checkpoint: {log:?}");
        assert_eq!(e.container("a").await.unwrap().status, Status::Stopped);
        assert_eq!(e.container("b").await.unwrap().status, Status::Running);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_stop_and_start_restore_then_discard_the_state() {
    within(async {
        let rt = Arc::new(FakeRuntime::new());
        let e = engine_on(Db::open_in_memory().unwrap(), rt.clone()).await;
        running(&e, "c1").await;
        e.stop_container(
            "c1",
            StopOptions {
                stateful: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let info = e.container("c1").await.unwrap();
        assert_eq!(info.status, Status::Stopped);
        assert!(info.stateful);
        assert!(rt.has_stop_state_for_test("c1"));
        // a restore that fails keeps the state and says how to boot afresh
        rt.fail_next_restore("c1", "restore: boom");
        let err = e
            .start_container("c1", Default::default())
            .await
            .unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Runtime {
                    op: crate::error::Op::Restore,
                    ..
                }
            ) && err.to_string().contains("stateless"),
            "{err}"
        );
        assert!(e.container("c1").await.unwrap().stateful);
        assert_eq!(e.container("c1").await.unwrap().status, Status::Stopped);
        e.start_container("c1", Default::default()).await.unwrap();
        let info = e.container("c1").await.unwrap();
        assert_eq!(info.status, Status::Running);
        assert!(!info.stateful);
        assert!(!rt.has_stop_state_for_test("c1"));
        assert!(rt.log().iter().any(|l| l.starts_with("restore c1 Stop")));
        // --stateless throws a saved state away and boots
        e.stop_container(
            "c1",
            StopOptions {
                stateful: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        e.start_container(
            "c1",
            StartOptions {
                stateless: true,
                uid: 0,
            },
        )
        .await
        .unwrap();
        assert!(!rt.has_stop_state_for_test("c1"));
        assert_eq!(rt.log().last().map(String::as_str), Some("start c1"));
        // ephemeral containers have nowhere to keep a state
        e.create_container(CreateRequest {
            name: "eph".into(),
            image: "busybox".into(),
            start: true,
            ephemeral: true,
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(matches!(
            e.stop_container(
                "eph",
                StopOptions {
                    stateful: true,
                    ..Default::default()
                }
            )
            .await,
            Err(Error::InvalidConfig(_))
        ));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_take_files_from_a_container_or_a_snapshot_and_get_their_own_identity() {
    within(async {
        let rt = Arc::new(FakeRuntime::new());
        let e = engine_on(Db::open_in_memory().unwrap(), rt.clone()).await;
        running(&e, "src").await;
        rt.write_files("src", "old");
        e.create_snapshot("src", "s", false, 0).await.unwrap();
        rt.write_files("src", "new");
        let from_snap = e
            .copy_container(CopyRequest {
                source: "src".into(),
                snapshot: Some("s".into()),
                name: "c1".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(rt.files("c1").as_deref(), Some("old"));
        assert_eq!(from_snap.status, Status::Stopped);
        let live = e
            .copy_container(CopyRequest {
                source: "src".into(),
                name: "c2".into(),
                start: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(rt.files("c2").as_deref(), Some("new"));
        assert_eq!(live.status, Status::Running);
        assert!(e.list_snapshots("c2").await.unwrap().is_empty());
        // refused: a taken name, a missing source or snapshot, a bad name — nothing is created
        let bad = [
            CopyRequest {
                source: "src".into(),
                name: "c1".into(),
                ..Default::default()
            },
            CopyRequest {
                source: "nope".into(),
                name: "c3".into(),
                ..Default::default()
            },
            CopyRequest {
                source: "src".into(),
                snapshot: Some("nope".into()),
                name: "c3".into(),
                ..Default::default()
            },
            CopyRequest {
                source: "src".into(),
                name: "-x".into(),
                ..Default::default()
            },
        ];
        for r in bad {
            assert!(e.copy_container(r).await.is_err());
        }
        assert!(matches!(
            e.container("c3").await,
            Err(Error::NoSuchContainer(_))
        ));
        // the source's snapshot was returned: it can be deleted now
        e.delete_snapshot("src", "s").await.unwrap();
    })
    .await
}

/// A start is authorized as a boot (`manage-containers`) or as a restore (`checkpoint`) on
/// what the caller saw; the actor starts only if that is still what the start would do, so a
/// stateful stop between the check and the start is not run as a CRIU restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_runs_only_as_the_kind_it_was_authorized_for() {
    within(async {
        let rt = Arc::new(FakeRuntime::new());
        let e = engine_on(Db::open_in_memory().unwrap(), rt.clone()).await;
        running(&e, "c1").await;
        // authorized to boot, the caller saw it stopped without a state; meanwhile a stateful
        // stop saved one
        e.stop_container(
            "c1",
            StopOptions {
                stateful: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let log_len = rt.log().len();
        let r = e
            .start_container_authorized("c1", Default::default(), false)
            .await;
        assert!(matches!(r, Err(Error::Busy(_))), "{r:?}");
        let info = e.container("c1").await.unwrap();
        assert_eq!(info.status, Status::Stopped);
        assert!(info.stateful, "the saved state is kept");
        assert!(rt.has_stop_state_for_test("c1"));
        assert_eq!(rt.log().len(), log_len, "nothing ran: {:?}", rt.log());
        // authorized to restore, it restores
        e.start_container_authorized("c1", Default::default(), true)
            .await
            .unwrap();
        assert_eq!(e.container("c1").await.unwrap().status, Status::Running);
        assert!(rt.log().iter().any(|l| l.starts_with("restore c1 Stop")));
        // a second client authorized to restore too (it saw the state before the first start
        // won) finds it running: the answer of any start of a running container, not Busy
        let r = e
            .start_container_authorized("c1", Default::default(), true)
            .await;
        assert!(matches!(r, Err(Error::InvalidState { .. })), "{r:?}");
        // authorized to restore, but a plain stop left nothing to restore: no boot either
        e.stop_container(
            "c1",
            StopOptions {
                force: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let r = e
            .start_container_authorized("c1", Default::default(), true)
            .await;
        assert!(matches!(r, Err(Error::Busy(_))), "{r:?}");
        assert_eq!(e.container("c1").await.unwrap().status, Status::Stopped);
        // a stateless start boots (discarding any state): authorized as a boot
        e.start_container_authorized(
            "c1",
            StartOptions {
                stateless: true,
                uid: 0,
            },
            false,
        )
        .await
        .unwrap();
        assert_eq!(e.container("c1").await.unwrap().status, Status::Running);
    })
    .await
}
