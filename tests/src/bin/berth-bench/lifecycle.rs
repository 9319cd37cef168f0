//! One container's life, on btrfs and on dir: create from the cached busybox image, start,
//! exec of `true`, a stateless snapshot, stop --force, delete. Then many starts: 50 in a row
//! and 50 at once.

use super::report::{Report, Target};
use super::util::{Api, flag, none, timed};
use berth_tests::{Env, Storage};
use std::collections::HashMap;
use zbus::Variant;

/// Measures `runs` lives on the environment's pool.
pub async fn measure(env: &Env, storage: Storage, runs: usize, report: &mut Report) {
    let api = Api::new(env).await;
    let tag = match storage {
        Storage::Dir => "dir",
        Storage::Btrfs => "btrfs",
    };
    let (mut create, mut start, mut exec, mut snap, mut stop, mut delete) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .expect("/dev/null");
    let mut stdio: HashMap<&str, Variant<'_>> = HashMap::new();
    for k in ["stdin", "stdout", "stderr"] {
        stdio.insert(k, zbus::Fd::from(&null).into());
    }
    for i in 0..runs {
        let name = format!("l{i}");
        let (t, path) = timed(api.m.create_container(&name, "busybox", &none())).await;
        create.push(t);
        let c = api.container(path.expect("create")).await;
        let (t, r) = timed(c.start(&none())).await;
        r.expect("start");
        start.push(t);
        for _ in 0..3 {
            let (t, code) = timed(c.exec(&["true"], &stdio)).await;
            assert_eq!(code.expect("exec"), 0);
            exec.push(t);
        }
        let (t, s) = timed(c.create_snapshot("", &none())).await;
        snap.push(t);
        api.snapshot(s.expect("snapshot"))
            .await
            .delete()
            .await
            .expect("delete the snapshot");
        let (t, r) = timed(c.stop(&flag("force"))).await;
        r.expect("stop");
        stop.push(t);
        let (t, r) = timed(c.delete(&none())).await;
        r.expect("delete");
        delete.push(t);
    }
    match storage {
        Storage::Btrfs => {
            let f = report.add("create from the cached image (btrfs)", "ms", create);
            f.target = Some(Target::Max(15.0));
            f.reference = Some(super::FLOOR.into());
            f.peers = "LXC 146, Incus 148";
            let f = report.add(super::START, "ms", start);
            f.target = Some(Target::MaxAndRatio(10.0, 5.0));
            f.reference = Some(super::FLOOR.into());
            f.peers = "LXC 24, Incus 242";
            let f = report.add("exec true", "ms", exec);
            f.target = Some(Target::Max(5.0));
            f.peers = "LXC 19, Incus 60";
            let f = report.add("stateless snapshot (btrfs, running)", "ms", snap);
            f.target = Some(Target::Max(10.0));
            f.peers = "Incus 78";
            let f = report.add("stop --force", "ms", stop);
            f.target = Some(Target::Max(10.0));
            f.peers = "LXC 554, Incus 700";
            report.add("delete (btrfs)", "ms", delete);
        }
        Storage::Dir => {
            report.add(
                &format!("create from the cached image ({tag})"),
                "ms",
                create,
            );
            report.add(&format!("start ({tag})"), "ms", start);
            report.add(&format!("stateless snapshot ({tag}, running)"), "ms", snap);
            report.add(&format!("delete ({tag})"), "ms", delete);
        }
    }
}

/// 50 starts in a row, then 50 at once, of stopped containers (repeated `rounds` times).
pub async fn many_starts(env: &Env, rounds: usize, report: &mut Report) {
    const N: usize = 50;
    let api = Api::new(env).await;
    let mut proxies = Vec::new();
    for i in 0..N {
        let path = api
            .m
            .create_container(&format!("m{i}"), "busybox", &none())
            .await
            .expect("create");
        proxies.push(api.container(path).await);
    }
    let (mut row, mut parallel) = (Vec::new(), Vec::new());
    let (force, plain) = (flag("force"), none());
    let stop_all = || async {
        futures_join(proxies.iter().map(|c| c.stop(&force)))
            .await
            .into_iter()
            .for_each(|r| r.expect("stop"));
    };
    for _ in 0..rounds {
        let (t, ()) = timed(async {
            for c in &proxies {
                c.start(&plain).await.expect("start in a row");
            }
        })
        .await;
        row.push(t);
        stop_all().await;
        let (t, results) = timed(futures_join(proxies.iter().map(|c| c.start(&plain)))).await;
        results.into_iter().for_each(|r| r.expect("start at once"));
        parallel.push(t);
        stop_all().await;
    }
    for i in 0..N {
        api.delete(&format!("m{i}")).await;
    }
    report
        .add("start 50 stopped containers in a row (total)", "ms", row)
        .reference = Some(super::START.into());
    report
        .add(
            "start 50 stopped containers at once (total)",
            "ms",
            parallel,
        )
        .reference = Some(super::START.into());
}

/// Runs the futures concurrently on this task and collects their outputs in order.
pub async fn futures_join<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}
