//! Image import against `sha256sum` + `tar -x` of the same file, and launch from a cached big
//! image.

use super::report::{Report, Target};
use super::util::{Api, flag, timed};
use berth_tests::Env;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;
use zbus::Variant;

/// A ~200 MiB zstd unified image: the busybox image plus 200 files of 1 MiB of random data.
fn big_image(env: &Env) -> PathBuf {
    use std::io::{Read, Write};
    let info = env.ok(&["image", "info", "busybox"]);
    let fp = info
        .lines()
        .next()
        .expect("image info")
        .trim_start_matches("Fingerprint: ")
        .to_string();
    let base = std::fs::read(env.state.join("images").join(&fp).join("image"))
        .expect("the busybox tarball");
    let path = env.dir.join("big.tar.zst");
    let file = std::fs::File::create(&path).expect("create the image");
    let mut enc = zstd::stream::write::Encoder::new(file, 3).expect("zstd");
    enc.multithread(2).expect("zstd threads");
    // the busybox tarball without its end-of-archive blocks, then the data, then the end
    enc.write_all(&base[..base.len() - 1024]).expect("write");
    let mut rnd = std::fs::File::open("/dev/urandom").expect("urandom");
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..200 {
        rnd.read_exact(&mut buf).expect("random data");
        let mut h = tar::Header::new_gnu();
        h.set_path(format!("rootfs/data/f{i:03}")).expect("path");
        h.set_size(buf.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        enc.write_all(h.as_bytes()).expect("write");
        enc.write_all(&buf).expect("write");
    }
    enc.write_all(&[0u8; 1024]).expect("write");
    enc.finish().expect("finish");
    path
}

/// Import of the big image (3 times, each followed by a first launch) against the hand-run
/// reference, then 10 launches from it.
pub async fn measure(env: &Env, report: &mut Report) {
    let img = big_image(env);
    let size_mb = std::fs::metadata(&img).expect("image").len() as f64 / 1e6;
    let mut reference = Vec::new();
    for i in 0..3 {
        let dir = env.dir.join(format!("ref{i}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let t = Instant::now();
        let a = std::process::Command::new("sha256sum")
            .arg(&img)
            .output()
            .expect("sha256sum");
        let b = std::process::Command::new("tar")
            .arg("--zstd")
            .arg("-xf")
            .arg(&img)
            .arg("-C")
            .arg(&dir)
            .status()
            .expect("tar");
        reference.push(super::util::ms(t.elapsed()));
        assert!(a.status.success() && b.success());
        let _ = std::fs::remove_dir_all(&dir);
    }
    let api = Api::new(env).await;
    let aliases = || HashMap::from([("aliases", Variant::from(vec!["big"]))]);
    let mut import = Vec::new();
    let mut first = Vec::new();
    for n in 0..3 {
        let f = std::fs::File::open(&img).expect("open the image");
        let (t, path) = timed(api.m.import_image(zbus::Fd::from(&f), &aliases())).await;
        import.push(t);
        // the first container of a freshly imported image: the import must have paid for
        // what makes it slow (flushing the new volume), not the launch
        let name = format!("first{n}");
        let (t, r) = timed(api.m.create_container(&name, "big", &flag("start"))).await;
        r.expect("launch from the freshly imported image");
        first.push(t);
        api.delete(&name).await;
        let i = berth_interfaces::client::ImageProxy::builder(&api.conn)
            .path(path.expect("import"))
            .build()
            .await
            .expect("proxy");
        i.delete().await.expect("delete the image");
    }
    let rname = format!("sha256sum + tar -x of the same {size_mb:.0} MB file");
    // ≥ 70% of the reference's speed is ≤ 1/0.7 of its time
    let f = report.add(
        &format!("import of a {size_mb:.0} MB zstd image"),
        "ms",
        import,
    );
    f.target = Some(Target::Ratio(1.0 / 0.7));
    f.reference = Some(rname.clone());
    report.add(&rname, "ms", reference);
    report.add(
        &format!("first launch after import of the {size_mb:.0} MB image (btrfs)"),
        "ms",
        first,
    );
    let f = std::fs::File::open(&img).expect("open the image");
    api.m
        .import_image(zbus::Fd::from(&f), &aliases())
        .await
        .expect("import");
    let mut launch = Vec::new();
    for i in 0..10 {
        let name = format!("big{i}");
        let (t, r) = timed(api.m.create_container(&name, "big", &flag("start"))).await;
        r.expect("launch from the big image");
        launch.push(t);
        api.delete(&name).await;
    }
    report
        .add(
            &format!("launch from the cached {size_mb:.0} MB image (btrfs)"),
            "ms",
            launch,
        )
        .target = Some(Target::Max(50.0));
}
