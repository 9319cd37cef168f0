//! End-to-end: the image store with real archives — every compression, unified and split
//! (tarball and squashfs rootfs), byte-identical export, fingerprints as LXD computes them,
//! templates, publish, delete while in use — and hostile archives, each refused with
//! InvalidImage and leaving nothing behind.

use berth_tests::archive::{self, E};
use berth_tests::{Env, Options, Storage, text};
use std::path::{Path, PathBuf};

fn root_or_skip() -> bool {
    // SAFETY: geteuid has no failure mode.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root || std::env::var_os("BERTH_E2E_ALLOW_SKIP").is_some(),
        "end-to-end tests need root"
    );
    root
}

fn write(env: &Env, name: &str, data: &[u8]) -> PathBuf {
    let p = env.dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// What the store holds: (image list, files under state/images, volumes under pool/images).
fn store_state(env: &Env) -> (String, Vec<String>, Vec<String>) {
    let list = env.ok(&["image", "list", "--format", "json"]);
    let ls = |p: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    (
        list,
        ls(&env.state.join("images")),
        ls(&env.pool().join("images")),
    )
}

/// The fingerprints of the images in the store.
fn fingerprints(env: &Env) -> Vec<String> {
    serde_json::from_str::<serde_json::Value>(&env.ok(&["image", "list", "--format", "json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["fingerprint"].as_str().unwrap().to_string())
        .collect()
}

fn import(env: &Env, file: &Path, extra: &[&str]) -> std::process::Output {
    let f = file.display().to_string();
    let mut args = vec!["image", "import", f.as_str()];
    args.extend_from_slice(extra);
    env.berth(&args)
}

/// `berth image import FILE --alias ALIAS` in the background, its output piped.
fn spawn_import(env: &Env, file: &Path, alias: &str) -> std::process::Child {
    std::process::Command::new(berth_tests::bin_dir().join("berth"))
        .args(["image", "import", file.to_str().unwrap(), "--alias", alias])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &env.bus)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// The busybox image of this environment as an uncompressed unified tarball.
fn busybox_tar(env: &Env) -> Vec<u8> {
    let fp = env
        .ok(&["image", "info", "busybox"])
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("Fingerprint: ")
        .to_string();
    std::fs::read(env.state.join("images").join(fp).join("image")).unwrap()
}

#[test]
fn every_compression_imports_with_lxd_fingerprints_and_exports_byte_identical() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Btrfs);
    let tar = busybox_tar(&env);
    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("gz", archive::gzip(&tar)),
        ("xz", archive::xz(&tar)),
        ("zst", zstd::encode_all(&tar[..], 3).unwrap()),
        ("bz2", {
            use std::io::Write;
            let mut e = bzip2_encoder();
            e.write_all(&tar).unwrap();
            e.finish().unwrap()
        }),
    ];
    let out = env.dir.join("export");
    std::fs::create_dir_all(&out).unwrap();
    for (ext, data) in variants {
        // named misleadingly on purpose: the format comes from the content
        let file = write(&env, &format!("image-{ext}.bin"), &data);
        let o = import(&env, &file, &["--alias", &format!("bb-{ext}")]);
        assert!(o.status.success(), "{ext}: {}", text(&o.stderr));
        let fp = archive::sha256(&data);
        assert!(
            text(&o.stdout).contains(&fp),
            "{ext}: fingerprint is the sha256 of the file: {}",
            text(&o.stdout)
        );
        // export: same bytes, Incus's file name
        let o = env.berth(&[
            "image",
            "export",
            &format!("bb-{ext}"),
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let ext_name = match ext {
            "gz" => "tar.gz",
            "xz" => "tar.xz",
            "zst" => "tar.zst",
            _ => "tar.bz2",
        };
        let exported = std::fs::read(out.join(format!("{fp}.{ext_name}"))).unwrap();
        assert!(
            exported == data,
            "{ext}: export differs from what was imported"
        );
        // and it launches
        let name = format!("from-{ext}");
        env.ok(&["launch", &format!("bb-{ext}"), &name]);
        assert_eq!(
            env.ok(&["exec", &name, "--", "cat", "/etc/os-release"])
                .lines()
                .next(),
            Some("NAME=BusyBox")
        );
        env.ok(&["delete", "--force", &name]);
    }
    // the same bytes again: not an error, the same image
    let before = store_state(&env);
    let file = write(&env, "again.bin", &archive::gzip(&tar));
    let o = import(&env, &file, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(store_state(&env), before);
}

fn bzip2_encoder() -> bzip2_writer::Encoder {
    bzip2_writer::Encoder::new()
}

/// bzip2 through the system tool (the tests crate does not link a bzip2 library).
mod bzip2_writer {
    use std::io::Write;
    use std::process::{Command, Stdio};

    pub struct Encoder(Vec<u8>);

    impl Encoder {
        pub fn new() -> Self {
            Encoder(Vec::new())
        }

        pub fn finish(self) -> std::io::Result<Vec<u8>> {
            let mut c = Command::new("bzip2")
                .arg("-c")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            let mut stdin = c.stdin.take().unwrap();
            let data = self.0;
            let t = std::thread::spawn(move || stdin.write_all(&data));
            let out = c.wait_with_output()?;
            t.join().unwrap()?;
            Ok(out.stdout)
        }
    }

    impl Write for Encoder {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.extend_from_slice(b);
            Ok(b.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}

#[test]
fn split_images_with_squashfs_or_tarball_rootfs_and_templates() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    let tar = busybox_tar(&env);
    let work = env.dir.join("split");
    std::fs::create_dir_all(work.join("r")).unwrap();
    let st = std::process::Command::new("tar")
        .arg("-C")
        .arg(work.join("r"))
        .arg("-xf")
        .arg(write(&env, "bb.tar", &tar))
        .status()
        .unwrap();
    assert!(st.success());
    let meta = archive::xz(&archive::tar(&[
        E::File(
            "metadata.yaml",
            b"architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  description: split test\ntemplates:\n  /etc/hostname:\n    when: [create, copy]\n    template: hostname.tpl\n  /etc/motd:\n    when: [start]\n    template: motd.tpl\n    properties:\n      greeting: hello\n".to_vec(),
            0o644,
        ),
        E::Dir("templates"),
        E::File("templates/hostname.tpl", b"{{ container.name }}\n".to_vec(), 0o644),
        E::File("templates/motd.tpl", b"{{ properties.greeting }} {{ container.name }} {{ config_get(\"user.note\", \"-\") }}\n".to_vec(), 0o644),
    ]));
    let meta_file = write(&env, "meta.tar.xz", &meta);
    let sq = work.join("rootfs.squashfs");
    let st = std::process::Command::new("mksquashfs")
        .arg(work.join("r/rootfs"))
        .arg(&sq)
        .args(["-quiet", "-noappend", "-comp", "zstd"])
        .status()
        .expect("mksquashfs (scripts/setup installs squashfs-tools)");
    assert!(st.success());
    let rootfs_tar = work.join("rootfs.tar.gz");
    let st = std::process::Command::new("tar")
        .arg("-C")
        .arg(work.join("r/rootfs"))
        .arg("-czf")
        .arg(&rootfs_tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    for (alias, rootfs) in [("sq", &sq), ("tg", &rootfs_tar)] {
        let o = import(
            &env,
            &meta_file,
            &[rootfs.to_str().unwrap(), "--alias", alias],
        );
        assert!(o.status.success(), "{alias}: {}", text(&o.stderr));
        let mut both = meta.clone();
        both.extend(std::fs::read(rootfs).unwrap());
        let fp = archive::sha256(&both);
        assert!(
            text(&o.stdout).contains(&fp),
            "split fingerprint is sha256(metadata ‖ rootfs): {}",
            text(&o.stdout)
        );
        assert!(env.ok(&["image", "info", alias]).contains("Type: split"));
        let name = format!("c-{alias}");
        env.ok(&["launch", alias, &name, "-c", "user.note=hi"]);
        assert_eq!(
            env.ok(&["exec", &name, "--", "cat", "/etc/hostname"])
                .trim(),
            name,
            "create template"
        );
        assert_eq!(
            env.ok(&["exec", &name, "--", "cat", "/etc/motd"]).trim(),
            format!("hello {name} hi"),
            "start template"
        );
        let out = env.dir.join(format!("out-{alias}"));
        std::fs::create_dir_all(&out).unwrap();
        env.ok(&["image", "export", alias, out.to_str().unwrap()]);
        assert!(std::fs::read(out.join(format!("meta-{fp}.tar.xz"))).unwrap() == meta);
        let ext = if alias == "sq" { "squashfs" } else { "tar.gz" };
        assert!(
            std::fs::read(out.join(format!("{fp}.{ext}"))).unwrap()
                == std::fs::read(rootfs).unwrap()
        );
    }
}

#[test]
fn publish_aliases_properties_and_deleting_an_image_in_use() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Btrfs);
    env.ok(&["launch", "busybox", "src"]);
    env.ok(&[
        "exec",
        "src",
        "--",
        "sh",
        "-c",
        "echo made-here > /root/marker && chmod 4755 /root/marker",
    ]);
    let o = env.berth(&["publish", "src", "--alias", "mine"]);
    assert!(
        text(&o.stderr).contains("InvalidState"),
        "a running container cannot be published: {}",
        text(&o.stderr)
    );
    env.ok(&["stop", "--force", "src"]);
    env.ok(&[
        "publish",
        "src",
        "--alias",
        "mine",
        "--property",
        "owner=tests",
    ]);
    let info = env.ok(&["image", "info", "mine"]);
    assert!(
        info.contains("owner: tests") && info.contains("os: busybox"),
        "{info}"
    );
    env.ok(&["launch", "mine", "copy"]);
    assert_eq!(
        env.ok(&["exec", "copy", "--", "cat", "/root/marker"])
            .trim(),
        "made-here"
    );
    assert_eq!(
        env.ok(&["exec", "copy", "--", "stat", "-c", "%a %u", "/root/marker"])
            .trim(),
        "4755 0",
        "setuid bit and owner kept"
    );
    // aliases and properties
    env.ok(&["image", "alias", "create", "other", "mine"]);
    env.ok(&["image", "alias", "rename", "other", "renamed"]);
    assert!(
        env.ok(&["image", "info", "renamed"])
            .contains("Aliases: mine, renamed")
    );
    let o = env.berth(&["image", "alias", "create", "mine", "busybox"]);
    assert!(
        text(&o.stderr).contains("AlreadyExists"),
        "an alias points to one image: {}",
        text(&o.stderr)
    );
    env.ok(&["image", "alias", "delete", "renamed"]);
    env.ok(&["image", "set-property", "mine", "release", "7"]);
    assert!(env.ok(&["image", "list", "release=7"]).contains("mine"));
    assert!(!env.ok(&["image", "list", "release=8"]).contains("mine"));
    env.ok(&["image", "unset-property", "mine", "release"]);
    assert!(!env.ok(&["image", "info", "mine"]).contains("release"));
    let fps = fingerprints(&env);
    assert_eq!(fps.len(), 2);
    // a prefix that matches two images is ambiguous, and the error names both: small images
    // are added until two fingerprints share a first digit
    let mut extra = Vec::new();
    let (prefix, pair) = loop {
        let all = fingerprints(&env);
        if let Some((a, b)) = all.iter().enumerate().find_map(|(i, a)| {
            all[i + 1..]
                .iter()
                .find(|b| b[..1] == a[..1])
                .map(|b| (a.clone(), b.clone()))
        }) {
            break (a[..1].to_string(), (a, b));
        }
        assert!(
            extra.len() < 17,
            "seventeen fingerprints always share a first digit"
        );
        let yaml = format!(
            "architecture: x86_64\ncreation_date: {}\n",
            1_700_000_000 + extra.len()
        );
        let data = archive::tar(&[
            E::File("metadata.yaml", yaml.into_bytes(), 0o644),
            E::Dir("rootfs"),
        ]);
        let f = env.dir.join(format!("tiny{}.tar", extra.len()));
        std::fs::write(&f, &data).unwrap();
        env.ok(&["image", "import", f.to_str().unwrap()]);
        extra.push(archive::sha256(&data));
    };
    let o = env.berth(&["image", "info", &prefix]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("NoSuchImage") && err.contains("ambiguous"),
        "an ambiguous prefix is NoSuchImage: {err}"
    );
    assert!(
        err.contains(&pair.0) && err.contains(&pair.1),
        "the error lists the candidates: {err}"
    );
    for fp in extra {
        env.ok(&["image", "delete", &fp]);
    }
    // delete an image with containers still using it: they keep working
    env.ok(&["image", "delete", "mine"]);
    assert_eq!(
        env.ok(&["exec", "copy", "--", "cat", "/root/marker"])
            .trim(),
        "made-here"
    );
    env.ok(&["restart", "--force", "copy"]);
    assert_eq!(
        env.ok(&["exec", "copy", "--", "cat", "/root/marker"])
            .trim(),
        "made-here"
    );
    assert!(
        !env.state
            .join("images")
            .join(
                &fps.iter()
                    .find(|f| !env.ok(&["image", "list"]).contains(&f[..12]))
                    .unwrap()[..]
            )
            .exists()
    );
}

/// Each hostile archive: refused with InvalidImage, nothing left behind.
#[test]
fn hostile_archives_are_refused_and_leave_nothing() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    let before = store_state(&env);
    let m = archive::metadata;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dot-dot path", archive::tar(&[m(), E::Dir("rootfs"), E::File("rootfs/../../escape", b"x".to_vec(), 0o644)])),
        ("absolute path", archive::tar(&[m(), E::File("/etc/berth-escape", b"x".to_vec(), 0o644)])),
        ("symlink out of the rootfs", archive::tar(&[m(), E::Dir("rootfs"), E::Dir("rootfs/a"), E::Symlink("rootfs/a/up", "../../../etc")])),
        ("hardlink to a host file", archive::tar(&[m(), E::Dir("rootfs"), E::Hardlink("rootfs/pw", "/etc/passwd")])),
        ("hardlink climbing out", archive::tar(&[m(), E::Dir("rootfs"), E::Hardlink("rootfs/pw", "rootfs/../../etc/passwd")])),
        ("hardlink across trees", archive::tar(&[m(), E::Dir("rootfs"), E::Dir("templates"), E::File("templates/t", b"x".to_vec(), 0o644), E::Hardlink("rootfs/t", "templates/t")])),
        ("device node outside /dev", archive::tar(&[m(), E::Dir("rootfs"), E::Dir("rootfs/usr"), E::Char("rootfs/usr/kmem", 1, 2)])),
        ("owner outside the container range", archive::tar(&[m(), E::Dir("rootfs"), E::Owned("rootfs/f", 70000, 0)])),
        ("symlink in templates", archive::tar(&[m(), E::Dir("rootfs"), E::Dir("templates"), E::Symlink("templates/t", "/etc/shadow")])),
        ("unexpected top-level entry", archive::tar(&[m(), E::Dir("rootfs"), E::File("evil.sh", b"x".to_vec(), 0o755)])),
        ("conflicting entries", archive::tar(&[m(), E::Dir("rootfs"), E::Dir("rootfs/d"), E::File("rootfs/d", b"x".to_vec(), 0o644)])),
        ("missing metadata.yaml", archive::tar(&[E::Dir("rootfs"), E::File("rootfs/f", b"x".to_vec(), 0o644)])),
        ("malformed metadata.yaml", archive::tar(&[E::File("metadata.yaml", b"architecture: [\n".to_vec(), 0o644), E::Dir("rootfs")])),
        ("metadata.yaml without architecture", archive::tar(&[E::File("metadata.yaml", b"creation_date: 5\n".to_vec(), 0o644), E::Dir("rootfs")])),
        ("metadata.yaml without creation_date", archive::tar(&[E::File("metadata.yaml", b"architecture: x86_64\n".to_vec(), 0o644), E::Dir("rootfs")])),
        ("template escaping", archive::tar(&[
            E::File("metadata.yaml", b"architecture: x86_64\ncreation_date: 1\ntemplates:\n  /etc/x:\n    when: [create]\n    template: ../../../etc/shadow\n".to_vec(), 0o644),
            E::Dir("rootfs"),
        ])),
        ("template missing", archive::tar(&[
            E::File("metadata.yaml", b"architecture: x86_64\ncreation_date: 1\ntemplates:\n  /etc/x:\n    when: [create]\n    template: gone.tpl\n".to_vec(), 0o644),
            E::Dir("rootfs"),
        ])),
        ("no rootfs", archive::tar(&[m()])),
        ("entry larger than the archive", archive::tar(&[m(), E::Dir("rootfs"), E::Declares("rootfs/huge", 100 << 30)])),
        ("truncated archive", {
            let t = archive::tar(&[m(), E::Dir("rootfs"), E::File("rootfs/f", vec![7u8; 10_000], 0o644)]);
            t[..2_000].to_vec()
        }),
        ("truncated gzip", {
            let g = archive::gzip(&archive::tar(&[m(), E::Dir("rootfs"), E::File("rootfs/f", vec![1u8; 50_000], 0o644)]));
            g[..g.len() - 20].to_vec()
        }),
        ("corrupt xz", {
            let mut x = archive::xz(&archive::tar(&[m(), E::Dir("rootfs"), E::File("rootfs/f", vec![3u8; 50_000], 0o644)]));
            let mid = x.len() / 2;
            for b in &mut x[mid..mid + 16] {
                *b ^= 0xa5;
            }
            x
        }),
        ("hardlink to a directory", archive::tar(&[m(), E::Dir("rootfs"), E::Dir("rootfs/d"), E::Hardlink("rootfs/x", "rootfs/d")])),
        ("symlink loop in a path", archive::tar(&[m(), E::Dir("rootfs"), E::Symlink("rootfs/l", "l"), E::File("rootfs/l/x", b"x".to_vec(), 0o644)])),
        ("symlink chain out, links in order", archive::tar(&[m(), E::Dir("rootfs"), E::Dir("rootfs/d"), E::Symlink("rootfs/d/s", ".."), E::Symlink("rootfs/d/t", "s/..")])),
        ("symlink chain out, chain first", archive::tar(&[m(), E::Dir("rootfs"), E::Dir("rootfs/d"), E::Symlink("rootfs/d/t", "s/.."), E::Symlink("rootfs/d/s", "..")])),
        ("hardlinked symlink climbing out", archive::tar(&[
            m(),
            E::Dir("rootfs"),
            E::Dir("rootfs/a"),
            E::Dir("rootfs/a/b"),
            E::Symlink("rootfs/a/b/s", "../../x"),
            E::Hardlink("rootfs/h", "rootfs/a/b/s"),
        ])),
        ("not an archive", b"PK\x03\x04 this is a zip file, or is it".to_vec()),
        ("empty file", Vec::new()),
    ];
    for (what, data) in &cases {
        let file = write(&env, "hostile.bin", data);
        let o = import(&env, &file, &["--alias", "hostile"]);
        assert_eq!(o.status.code(), Some(1), "{what}: accepted!");
        assert!(
            text(&o.stderr).contains("InvalidImage"),
            "{what}: {}",
            text(&o.stderr)
        );
        assert_eq!(
            store_state(&env),
            before,
            "{what}: something was left behind"
        );
        assert!(!Path::new("/etc/berth-escape").exists() && !Path::new("/escape").exists());
    }
    // the daemon kept serving throughout
    assert!(env.ok(&["image", "list"]).contains("busybox"));

    // an absolute symlink is fine (it is interpreted inside the container), and writing
    // through it stays inside the image; device nodes under /dev are skipped, not created
    let ok = archive::tar(&[
        m(),
        E::Dir("rootfs"),
        E::Dir("rootfs/etc"),
        E::Symlink("rootfs/etc2", "/etc"),
        E::File("rootfs/etc2/inside", b"x".to_vec(), 0o4755),
        E::Dir("rootfs/dev"),
        E::Char("rootfs/dev/null", 1, 3),
        E::File("rootfs/not/listed/file", b"y".to_vec(), 0o600),
        // a loop leads nowhere (nobody can follow it), so it is no escape
        E::Symlink("rootfs/loop", "loop"),
    ]);
    let o = import(&env, &write(&env, "ok.tar", &ok), &["--alias", "links"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        !Path::new("/etc/inside").exists(),
        "a write escaped to the host"
    );
    let fp = archive::sha256(&ok);
    let inside = env
        .pool()
        .join("images")
        .join(&fp)
        .join("rootfs/etc/inside");
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(&inside).expect("the file landed inside the image");
    assert_eq!(
        md.mode() & 0o7777,
        0o4755,
        "modes are kept exactly, setuid included"
    );
    assert_eq!(md.uid(), 0, "the base stays unshifted");
    assert!(
        !env.pool()
            .join("images")
            .join(&fp)
            .join("rootfs/dev/null")
            .exists(),
        "device nodes are not created"
    );
    assert!(
        env.pool()
            .join("images")
            .join(&fp)
            .join("rootfs/not/listed/file")
            .is_file(),
        "unlisted parents are made, as tar does"
    );
}

#[test]
fn an_image_that_would_overflow_the_pool_is_refused() {
    if !root_or_skip() {
        return;
    }
    // a 1 GiB pool, and a few KiB of zstd that unpack to 2 GiB
    let env = Env::with(Options {
        storage: Some(Storage::Btrfs),
        ..Default::default()
    });
    let before = store_state(&env);
    let bomb = archive::zstd_bomb(2 << 30);
    assert!(bomb.len() < 1 << 20);
    let o = import(&env, &write(&env, "bomb.tar.zst", &bomb), &[]);
    // the image is not at fault: this host has no room for it
    let err = text(&o.stderr);
    // stopped by berth's bound, or by the pool itself when btrfs runs out a little before it
    assert!(
        err.contains("ImportFailed")
            && (err.contains("more than the storage pool can hold")
                || err.contains("ran out of space")),
        "{err}"
    );
    assert_eq!(store_state(&env), before);
}

#[test]
fn an_import_from_an_endless_source_stops_at_what_the_pool_could_hold() {
    if !root_or_skip() {
        return;
    }
    // a 1 GiB pool; /dev/zero never ends (nor would a pipe whose writer keeps writing)
    let env = Env::with(Options {
        storage: Some(Storage::Btrfs),
        ..Default::default()
    });
    let before = store_state(&env);
    let host_free = berth_runtime::image::store::free_bytes(&env.state);
    let t0 = std::time::Instant::now();
    let o = import(&env, Path::new("/dev/zero"), &["--alias", "endless"]);
    let took = t0.elapsed();
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("ImportFailed") && err.contains("room for") && err.contains("No space left"),
        "{err}"
    );
    // bounded by the pool's free space (< 1 GiB), not by the host's disk
    let kept: u64 = err
        .split("more than ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the bound in the message");
    assert!(kept < 1 << 30, "kept {kept} bytes for a 1 GiB pool");
    eprintln!("an endless import stopped after {kept} bytes in {took:?}");
    // nothing kept, on the host or in the pool
    assert_eq!(store_state(&env), before);
    let after = berth_runtime::image::store::free_bytes(&env.state);
    assert!(
        after + (64 << 20) >= host_free,
        "the host lost {} bytes",
        host_free.saturating_sub(after)
    );
    // and the next import works
    let ok = archive::tar(&[archive::metadata(), E::Dir("rootfs")]);
    let o = import(&env, &write(&env, "ok.tar", &ok), &["--alias", "after"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // the same image with the alias it already has (a retry): the image back, unchanged
    let listed = env.ok(&["image", "list", "--format", "json"]);
    let o = import(&env, &env.dir.join("ok.tar"), &["--alias", "after"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(env.ok(&["image", "list", "--format", "json"]), listed);
}

#[test]
fn publish_on_a_full_pool_fails_as_publish_and_works_once_space_is_back() {
    if !root_or_skip() {
        return;
    }
    // a 1 GiB pool that a container fills
    let env = Env::with(Options {
        storage: Some(Storage::Btrfs),
        ..Default::default()
    });
    env.ok(&["launch", "busybox", "filler"]);
    let o = env.berth(&[
        "exec",
        "filler",
        "--",
        "dd",
        "if=/dev/urandom",
        "of=/root/fill",
        "bs=1M",
    ]);
    assert!(
        text(&o.stderr).contains("No space left"),
        "the pool did not fill: {}",
        text(&o.stderr)
    );
    env.ok(&["stop", "--force", "filler"]);
    let before = store_state(&env);
    let o = env.berth(&["publish", "filler", "--alias", "full"]);
    assert!(!o.status.success());
    // the container is a fine image; the pool has no room for it
    let err = text(&o.stderr);
    assert!(
        err.contains("PublishFailed") && !err.contains("InvalidImage"),
        "{err}"
    );
    assert_eq!(store_state(&env), before, "nothing of the publish is kept");
    // the space comes back with the culprit's file
    env.ok(&["start", "filler"]);
    env.ok(&["exec", "filler", "--", "rm", "/root/fill"]);
    env.ok(&["stop", "--force", "filler"]);
    env.ok(&["publish", "filler", "--alias", "full"]);
}

#[test]
fn a_long_import_is_an_operation_with_progress_that_can_be_cancelled() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    let before = store_state(&env);
    // ~400 MiB of incompressible data: long enough to watch and cancel
    let file = env.dir.join("big.tar");
    archive::write_noise_image(&file, 400 << 20);
    let child = spawn_import(&env, &file, "big");
    // the operation appears, with progress
    let op = env.wait_for_operation();
    let get = |prop: &str| {
        text(
            &env.busctl(&[
                "get-property",
                "org.berth.Berth1",
                &op,
                "org.berth.Berth1.Operation",
                prop,
            ])
            .stdout,
        )
    };
    assert_eq!(get("Operation").trim(), "s \"image-import\"");
    assert_eq!(get("Status").trim(), "s \"running\"");
    berth_tests::wait_for(std::time::Duration::from_secs(30), "progress", || {
        get("Bytes")
            .trim()
            .strip_prefix("t ")
            .and_then(|b| b.parse::<u64>().ok())
            .is_some_and(|b| b > 0)
    });
    assert_eq!(get("ProgressValid").trim(), "b true");
    // cancel it: the import fails with Cancelled and nothing stays
    let o = env.busctl(&[
        "call",
        "org.berth.Berth1",
        &op,
        "org.berth.Berth1.Operation",
        "Cancel",
        "a{sv}",
        "0",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = child.wait_with_output().unwrap();
    assert!(
        text(&out.stderr).contains("Cancelled"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        store_state(&env),
        before,
        "a cancelled import left something behind"
    );
    // the object went away with the operation
    let o = env.busctl(&[
        "call",
        "org.berth.Berth1",
        "/org/berth/Berth1",
        "org.berth.Berth1.Manager",
        "ListOperations",
    ]);
    assert_eq!(text(&o.stdout).trim(), "ao 0");
}

#[test]
fn two_imports_of_the_same_archive_at_once_both_succeed() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Btrfs);
    let before = store_state(&env);
    // big enough (64 MiB) that the two imports overlap from hashing to commit
    let file = env.dir.join("same.tar");
    archive::write_noise_image(&file, 64 << 20);
    let fp = archive::sha256(&std::fs::read(&file).unwrap());
    for round in 0..3 {
        let (a, b) = (format!("same-a{round}"), format!("same-b{round}"));
        let (ca, cb) = (spawn_import(&env, &file, &a), spawn_import(&env, &file, &b));
        for (alias, child) in [(&a, ca), (&b, cb)] {
            let o = child.wait_with_output().unwrap();
            assert!(
                o.status.success(),
                "round {round}, import --alias {alias} failed: {}\n{}",
                text(&o.stderr),
                env.daemon_log_tail()
            );
            assert!(text(&o.stdout).contains(&fp), "{}", text(&o.stdout));
        }
        // one image with both aliases, and nothing half-stored beside it
        let info = env.ok(&["image", "info", &fp]);
        assert!(
            info.contains(&a) && info.contains(&b),
            "the second import is the same image, its alias added: {info}"
        );
        let (_, files, volumes) = store_state(&env);
        let (_, mut want_files, mut want_volumes) = before.clone();
        want_files.push(fp.clone());
        want_files.sort();
        want_volumes.push(fp.clone());
        want_volumes.sort();
        assert_eq!(
            (files, volumes),
            (want_files, want_volumes),
            "round {round}: leftovers"
        );
        env.ok(&["image", "delete", &fp]);
    }
    assert_eq!(store_state(&env), before);
}

/// A squashfs of `dir` made by mksquashfs with `comp`.
fn mksquashfs(dir: &Path, out: &Path, comp: &str) {
    let st = std::process::Command::new("mksquashfs")
        .arg(dir)
        .arg(out)
        .args(["-quiet", "-noappend", "-comp", comp])
        .status()
        .expect("mksquashfs (scripts/setup installs squashfs-tools)");
    assert!(st.success());
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C strings and buffer.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {name} on {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and buffer of the length given.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| buf[..r as usize].to_vec())
}

/// Hostile split images: the metadata tarball or the rootfs (tarball or squashfs) at fault.
#[test]
fn hostile_split_images_are_refused_and_leave_nothing() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    let before = store_state(&env);
    let meta = archive::tar(&[archive::metadata()]);
    let work = env.dir.join("hostile-split");
    let tree = |name: &str, make: &dyn Fn(&Path)| -> Vec<u8> {
        let d = work.join(name);
        std::fs::create_dir_all(&d).unwrap();
        make(&d);
        let out = work.join(format!("{name}.squashfs"));
        mksquashfs(&d, &out, "xz");
        std::fs::read(&out).unwrap()
    };
    let chain = |d: &Path| {
        std::fs::create_dir(d.join("d")).unwrap();
        std::os::unix::fs::symlink("..", d.join("d/s")).unwrap();
        std::os::unix::fs::symlink("s/..", d.join("d/t")).unwrap();
    };
    let out = |d: &Path| std::os::unix::fs::symlink("../../../etc", d.join("etc")).unwrap();
    let device = |d: &Path| {
        let c = std::ffi::CString::new(d.join("kmem").as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(
            // SAFETY: mknod with a valid path; the test runs as root.
            unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(4, 300)) },
            0
        );
    };
    let good = tree("good", &|d: &Path| {
        std::fs::write(d.join("f"), b"x").unwrap()
    });
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
        (
            "metadata tarball with ../",
            archive::tar(&[
                archive::metadata(),
                E::File("../escape", b"x".to_vec(), 0o644),
            ]),
            good.clone(),
            "'..'",
        ),
        (
            "metadata tarball with a rootfs",
            archive::tar(&[archive::metadata(), E::Dir("rootfs")]),
            good.clone(),
            "unexpected entry",
        ),
        (
            "rootfs tarball with ../",
            meta.clone(),
            archive::tar(&[E::File("../../escape", b"x".to_vec(), 0o644)]),
            "'..'",
        ),
        (
            "squashfs symlink out",
            meta.clone(),
            tree("out", &out),
            "leads outside",
        ),
        (
            "squashfs symlink chain out",
            meta.clone(),
            tree("chain", &chain),
            "leads outside",
        ),
        (
            "squashfs device node outside /dev",
            meta.clone(),
            tree("device", &device),
            "(4:300)",
        ),
        (
            "truncated squashfs",
            meta.clone(),
            {
                // cut inside what the superblock says is used (mksquashfs pads to 4 KiB after it)
                let used = u64::from_le_bytes(good[40..48].try_into().unwrap()) as usize;
                good[..used - 16].to_vec()
            },
            "squashfs",
        ),
    ];
    for (what, m, r, says) in &cases {
        let (mf, rf) = (
            write(&env, "hostile-meta.bin", m),
            write(&env, "hostile-rootfs.bin", r),
        );
        let o = import(&env, &mf, &[rf.to_str().unwrap(), "--alias", "hostile"]);
        assert_eq!(o.status.code(), Some(1), "{what}: accepted!");
        let err = text(&o.stderr);
        assert!(
            err.contains("InvalidImage") && err.contains(says),
            "{what}: {err}"
        );
        assert_eq!(
            store_state(&env),
            before,
            "{what}: something was left behind"
        );
        assert!(!Path::new("/escape").exists() && !env.dir.join("escape").exists());
    }
}

/// A squashfs rootfs as mksquashfs makes it (xz, as Incus and distrobuilder do) keeps its
/// hardlinks, file capabilities and user xattrs.
#[test]
fn squashfs_rootfs_keeps_hardlinks_and_xattrs() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    let r = env.dir.join("sqx");
    std::fs::create_dir_all(r.join("bin")).unwrap();
    std::fs::write(r.join("bin/a"), b"same bytes\n").unwrap();
    std::fs::hard_link(r.join("bin/a"), r.join("bin/b")).unwrap();
    // the same bytes in a file of its own: mksquashfs shares the data, yet it is no hardlink
    std::fs::write(r.join("bin/c"), b"same bytes\n").unwrap();
    std::fs::write(r.join("bin/ping"), b"#!/bin/sh\n").unwrap();
    let st = std::process::Command::new("setcap")
        .args(["cap_net_raw+ep"])
        .arg(r.join("bin/ping"))
        .status()
        .expect("setcap (libcap2-bin)");
    assert!(st.success());
    let cap =
        get_xattr(&r.join("bin/ping"), "security.capability").expect("setcap wrote the capability");
    set_xattr(&r.join("bin/a"), "user.berth", b"kept");
    set_xattr(&r, "user.root-dir", b"on the root");
    let sq = env.dir.join("sqx.squashfs");
    mksquashfs(&r, &sq, "xz");
    let meta = write(&env, "sqx-meta.tar", &archive::tar(&[archive::metadata()]));
    let o = import(&env, &meta, &[sq.to_str().unwrap(), "--alias", "sqx"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut both = std::fs::read(&meta).unwrap();
    both.extend(std::fs::read(&sq).unwrap());
    let rootfs = env
        .pool()
        .join("images")
        .join(archive::sha256(&both))
        .join("rootfs");
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &str| std::fs::symlink_metadata(rootfs.join(p)).unwrap();
    assert_eq!(
        ino("bin/a").ino(),
        ino("bin/b").ino(),
        "a hardlink stays a hardlink"
    );
    assert_eq!(ino("bin/a").nlink(), 2);
    assert_ne!(
        ino("bin/c").ino(),
        ino("bin/a").ino(),
        "shared data is not a hardlink"
    );
    assert_eq!(
        std::fs::read(rootfs.join("bin/c")).unwrap(),
        b"same bytes\n"
    );
    assert_eq!(
        get_xattr(&rootfs.join("bin/a"), "user.berth").as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(
        get_xattr(&rootfs, "user.root-dir").as_deref(),
        Some(&b"on the root"[..])
    );
    let got = get_xattr(&rootfs.join("bin/ping"), "security.capability")
        .expect("the file capability is kept");
    // the helper writes as the containers' root: the kernel may record that root in the
    // capability (v3); the capability bits themselves are those of the image
    assert_eq!(got[4..12], cap[4..12], "capability bits");
}

/// A sparse file in a tarball made by `tar -S` (GNU sparse entries) is a file with its data,
/// and its holes are kept.
#[test]
fn gnu_sparse_entries_unpack_with_their_holes() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    let d = env.dir.join("sparse");
    std::fs::create_dir_all(d.join("rootfs")).unwrap();
    std::fs::write(
        d.join("metadata.yaml"),
        b"architecture: x86_64\ncreation_date: 1700000000\n",
    )
    .unwrap();
    let size: u64 = 64 << 20;
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::File::create(d.join("rootfs/disk")).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(std::io::SeekFrom::Start(size / 2)).unwrap();
        f.write_all(b"middle").unwrap();
        f.set_len(size).unwrap();
    }
    let tarball = env.dir.join("sparse.tar");
    let st = std::process::Command::new("tar")
        .arg("-S")
        .arg("--format=gnu")
        .arg("-C")
        .arg(&d)
        .arg("-cf")
        .arg(&tarball)
        .args(["metadata.yaml", "rootfs"])
        .status()
        .unwrap();
    assert!(st.success());
    let data = std::fs::read(&tarball).unwrap();
    assert!(
        (data.len() as u64) < 1 << 20,
        "tar -S stored the holes as holes"
    );
    let mut ar = tar::Archive::new(&data[..]);
    let kinds: Vec<tar::EntryType> = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().header().entry_type())
        .collect();
    assert!(
        kinds.contains(&tar::EntryType::GNUSparse),
        "the archive has a GNU sparse entry: {kinds:?}"
    );
    let o = import(&env, &tarball, &["--alias", "sparse"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let file = env
        .pool()
        .join("images")
        .join(archive::sha256(&data))
        .join("rootfs/disk");
    let got = std::fs::read(&file).unwrap();
    assert_eq!(got.len() as u64, size);
    assert_eq!(&got[..4], b"head");
    assert_eq!(
        &got[(size / 2) as usize..(size / 2) as usize + 6],
        b"middle"
    );
    assert!(got[4..(size / 2) as usize].iter().all(|b| *b == 0));
    use std::os::unix::fs::MetadataExt;
    assert!(
        std::fs::metadata(&file).unwrap().blocks() * 512 < 1 << 20,
        "the holes are holes"
    );
}

/// What a container holds beyond plain names and modes survives publish: a file name that is
/// not UTF-8, user xattrs and file capabilities.
#[test]
fn publish_keeps_raw_names_xattrs_and_capabilities() {
    if !root_or_skip() {
        return;
    }
    use std::os::unix::ffi::OsStrExt;
    let env = Env::new(Storage::Btrfs);
    env.ok(&["init", "busybox", "src"]);
    let rootfs = env.pool().join("containers/src/rootfs");
    let raw = std::ffi::OsStr::from_bytes(b"caf\xe9");
    std::fs::write(rootfs.join("root").join(raw), b"raw name\n").unwrap();
    std::fs::write(rootfs.join("root/marker"), b"x").unwrap();
    set_xattr(&rootfs.join("root/marker"), "user.berth", b"published");
    set_xattr(&rootfs.join("root"), "user.dir", b"too");
    std::fs::write(rootfs.join("root/ping"), b"#!/bin/sh\n").unwrap();
    let st = std::process::Command::new("setcap")
        .arg("cap_net_raw+ep")
        .arg(rootfs.join("root/ping"))
        .status()
        .expect("setcap (libcap2-bin)");
    assert!(st.success());
    let cap = get_xattr(&rootfs.join("root/ping"), "security.capability").unwrap();
    env.ok(&["publish", "src", "--alias", "pub"]);
    let fp = env
        .ok(&["image", "info", "pub"])
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("Fingerprint: ")
        .to_string();
    let image = env.pool().join("images").join(&fp).join("rootfs");
    assert_eq!(
        std::fs::read(image.join("root").join(raw)).unwrap(),
        b"raw name\n",
        "the name is kept byte for byte"
    );
    assert_eq!(
        get_xattr(&image.join("root/marker"), "user.berth").as_deref(),
        Some(&b"published"[..])
    );
    assert_eq!(
        get_xattr(&image.join("root"), "user.dir").as_deref(),
        Some(&b"too"[..])
    );
    let got =
        get_xattr(&image.join("root/ping"), "security.capability").expect("the capability is kept");
    assert_eq!(got[4..12], cap[4..12], "capability bits");
    // and a container of the published image sees the name
    env.ok(&["launch", "pub", "copy"]);
    // (busybox ls prints unprintable bytes as '?'; the shell's glob and echo do not)
    let o = env.berth(&[
        "exec",
        "copy",
        "--",
        "sh",
        "-c",
        "for f in /root/*; do echo \"$f\"; done",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        o.stdout.windows(4).any(|w| w == b"caf\xe9"),
        "{:?}",
        o.stdout
    );
    env.ok(&["delete", "--force", "copy"]);
}

#[test]
fn the_cli_ends_quietly_on_a_closed_pipe_and_export_does_not_overwrite() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    // head takes the first line and goes: the rest of the output meets a closed pipe
    let berth = berth_tests::bin_dir().join("berth");
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("for i in 1 2 3 4 5; do '{}' image info busybox 2>>'{}/pipe.err' | head -1 >/dev/null; done", berth.display(), env.dir.display()))
        .env("DBUS_SYSTEM_BUS_ADDRESS", &env.bus)
        .output()
        .unwrap();
    assert!(o.status.success());
    let err = std::fs::read_to_string(env.dir.join("pipe.err")).unwrap();
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "a closed stdout is a quiet exit: {err}"
    );
    // export refuses to replace a file unless told to
    let out = env.dir.join("export");
    std::fs::create_dir_all(&out).unwrap();
    let first = env.ok(&["image", "export", "busybox", out.to_str().unwrap()]);
    let file = PathBuf::from(first.trim());
    std::fs::write(&file, b"mine").unwrap();
    let o = env.berth(&["image", "export", "busybox", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("already exists") && text(&o.stderr).contains("--force"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"mine",
        "the file was left alone"
    );
    let names = |d: &Path| {
        std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&out).len(), 1, "no temporary file stays");
    env.ok(&[
        "image",
        "export",
        "busybox",
        out.to_str().unwrap(),
        "--force",
    ]);
    assert_ne!(std::fs::read(&file).unwrap(), b"mine", "--force overwrites");
    assert_eq!(names(&out).len(), 1);
}
