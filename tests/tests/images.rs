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
    assert!(root || std::env::var_os("BERTH_E2E_ALLOW_SKIP").is_some(), "end-to-end tests need root");
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
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    (list, ls(&env.state.join("images")), ls(&env.pool().join("images")))
}

fn import(env: &Env, file: &Path, extra: &[&str]) -> std::process::Output {
    let f = file.display().to_string();
    let mut args = vec!["image", "import", f.as_str()];
    args.extend_from_slice(extra);
    env.berth(&args)
}

/// The busybox image of this environment as an uncompressed unified tarball.
fn busybox_tar(env: &Env) -> Vec<u8> {
    let fp = env.ok(&["image", "info", "busybox"]).lines().next().unwrap().trim_start_matches("Fingerprint: ").to_string();
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
        assert!(text(&o.stdout).contains(&fp), "{ext}: fingerprint is the sha256 of the file: {}", text(&o.stdout));
        // export: same bytes, Incus's file name
        let o = env.berth(&["image", "export", &format!("bb-{ext}"), out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let ext_name = match ext {
            "gz" => "tar.gz",
            "xz" => "tar.xz",
            "zst" => "tar.zst",
            _ => "tar.bz2",
        };
        let exported = std::fs::read(out.join(format!("{fp}.{ext_name}"))).unwrap();
        assert!(exported == data, "{ext}: export differs from what was imported");
        // and it launches
        let name = format!("from-{ext}");
        env.ok(&["launch", &format!("bb-{ext}"), &name]);
        assert_eq!(env.ok(&["exec", &name, "--", "cat", "/etc/os-release"]).lines().next(), Some("NAME=BusyBox"));
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
            let mut c = Command::new("bzip2").arg("-c").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
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
    let st = std::process::Command::new("tar").arg("-C").arg(work.join("r")).arg("-xf").arg(write(&env, "bb.tar", &tar)).status().unwrap();
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
    let st = std::process::Command::new("tar").arg("-C").arg(work.join("r/rootfs")).arg("-czf").arg(&rootfs_tar).arg(".").status().unwrap();
    assert!(st.success());
    for (alias, rootfs) in [("sq", &sq), ("tg", &rootfs_tar)] {
        let o = import(&env, &meta_file, &[rootfs.to_str().unwrap(), "--alias", alias]);
        assert!(o.status.success(), "{alias}: {}", text(&o.stderr));
        let mut both = meta.clone();
        both.extend(std::fs::read(rootfs).unwrap());
        let fp = archive::sha256(&both);
        assert!(text(&o.stdout).contains(&fp), "split fingerprint is sha256(metadata ‖ rootfs): {}", text(&o.stdout));
        assert!(env.ok(&["image", "info", alias]).contains("Type: split"));
        let name = format!("c-{alias}");
        env.ok(&["launch", alias, &name, "-c", "user.note=hi"]);
        assert_eq!(env.ok(&["exec", &name, "--", "cat", "/etc/hostname"]).trim(), name, "create template");
        assert_eq!(env.ok(&["exec", &name, "--", "cat", "/etc/motd"]).trim(), format!("hello {name} hi"), "start template");
        let out = env.dir.join(format!("out-{alias}"));
        std::fs::create_dir_all(&out).unwrap();
        env.ok(&["image", "export", alias, out.to_str().unwrap()]);
        assert!(std::fs::read(out.join(format!("meta-{fp}.tar.xz"))).unwrap() == meta);
        let ext = if alias == "sq" { "squashfs" } else { "tar.gz" };
        assert!(std::fs::read(out.join(format!("{fp}.{ext}"))).unwrap() == std::fs::read(rootfs).unwrap());
    }
}

#[test]
fn publish_aliases_properties_and_deleting_an_image_in_use() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Btrfs);
    env.ok(&["launch", "busybox", "src"]);
    env.ok(&["exec", "src", "--", "sh", "-c", "echo made-here > /root/marker && chmod 4755 /root/marker"]);
    let o = env.berth(&["publish", "src", "--alias", "mine"]);
    assert!(text(&o.stderr).contains("InvalidState"), "a running container cannot be published: {}", text(&o.stderr));
    env.ok(&["stop", "--force", "src"]);
    env.ok(&["publish", "src", "--alias", "mine", "--property", "owner=tests"]);
    let info = env.ok(&["image", "info", "mine"]);
    assert!(info.contains("owner: tests") && info.contains("os: busybox"), "{info}");
    env.ok(&["launch", "mine", "copy"]);
    assert_eq!(env.ok(&["exec", "copy", "--", "cat", "/root/marker"]).trim(), "made-here");
    assert_eq!(env.ok(&["exec", "copy", "--", "stat", "-c", "%a %u", "/root/marker"]).trim(), "4755 0", "setuid bit and owner kept");
    // aliases and properties
    env.ok(&["image", "alias", "create", "other", "mine"]);
    env.ok(&["image", "alias", "rename", "other", "renamed"]);
    assert!(env.ok(&["image", "info", "renamed"]).contains("Aliases: mine, renamed"));
    let o = env.berth(&["image", "alias", "create", "mine", "busybox"]);
    assert!(text(&o.stderr).contains("AlreadyExists"), "an alias points to one image: {}", text(&o.stderr));
    env.ok(&["image", "alias", "delete", "renamed"]);
    env.ok(&["image", "set-property", "mine", "release", "7"]);
    assert!(env.ok(&["image", "list", "release=7"]).contains("mine"));
    assert!(!env.ok(&["image", "list", "release=8"]).contains("mine"));
    env.ok(&["image", "unset-property", "mine", "release"]);
    assert!(!env.ok(&["image", "info", "mine"]).contains("release"));
    // a prefix that matches two images is ambiguous, and says which
    let fps: Vec<String> = serde_json::from_str::<serde_json::Value>(&env.ok(&["image", "list", "--format", "json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["fingerprint"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(fps.len(), 2);
    // delete an image with containers still using it: they keep working
    env.ok(&["image", "delete", "mine"]);
    assert_eq!(env.ok(&["exec", "copy", "--", "cat", "/root/marker"]).trim(), "made-here");
    env.ok(&["restart", "--force", "copy"]);
    assert_eq!(env.ok(&["exec", "copy", "--", "cat", "/root/marker"]).trim(), "made-here");
    assert!(!env.state.join("images").join(&fps.iter().find(|f| !env.ok(&["image", "list"]).contains(&f[..12])).unwrap()[..]).exists());
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
        ("not an archive", b"PK\x03\x04 this is a zip file, or is it".to_vec()),
        ("empty file", Vec::new()),
    ];
    for (what, data) in &cases {
        let file = write(&env, "hostile.bin", data);
        let o = import(&env, &file, &["--alias", "hostile"]);
        assert_eq!(o.status.code(), Some(1), "{what}: accepted!");
        assert!(text(&o.stderr).contains("InvalidImage"), "{what}: {}", text(&o.stderr));
        assert_eq!(store_state(&env), before, "{what}: something was left behind");
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
    ]);
    let o = import(&env, &write(&env, "ok.tar", &ok), &["--alias", "links"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!Path::new("/etc/inside").exists(), "a write escaped to the host");
    let fp = archive::sha256(&ok);
    let inside = env.pool().join("images").join(&fp).join("rootfs/etc/inside");
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(&inside).expect("the file landed inside the image");
    assert_eq!(md.mode() & 0o7777, 0o4755, "modes are kept exactly, setuid included");
    assert_eq!(md.uid(), 0, "the base stays unshifted");
    assert!(!env.pool().join("images").join(&fp).join("rootfs/dev/null").exists(), "device nodes are not created");
    assert!(env.pool().join("images").join(&fp).join("rootfs/not/listed/file").is_file(), "unlisted parents are made, as tar does");
}

#[test]
fn an_image_that_would_overflow_the_pool_is_refused() {
    if !root_or_skip() {
        return;
    }
    // a 1 GiB pool, and a few KiB of zstd that unpack to 2 GiB
    let env = Env::with(Options { storage: Some(Storage::Btrfs), ..Default::default() });
    let before = store_state(&env);
    let bomb = archive::zstd_bomb(2 << 30);
    assert!(bomb.len() < 1 << 20);
    let o = import(&env, &write(&env, "bomb.tar.zst", &bomb), &[]);
    assert!(text(&o.stderr).contains("InvalidImage") && text(&o.stderr).contains("more than the storage pool can hold"), "{}", text(&o.stderr));
    assert_eq!(store_state(&env), before);
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
    {
        use std::io::{Read, Write};
        let mut out = std::fs::File::create(&file).unwrap();
        let head = archive::tar(&[archive::metadata(), E::Dir("rootfs")]);
        out.write_all(&head[..head.len() - 1024]).unwrap();
        let size: u64 = 400 << 20;
        let mut h = tar::Header::new_gnu();
        h.set_path("rootfs/noise").unwrap();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        out.write_all(h.as_bytes()).unwrap();
        let mut rnd = std::fs::File::open("/dev/urandom").unwrap().take(size);
        std::io::copy(&mut rnd, &mut out).unwrap();
        out.write_all(&[0u8; 1024]).unwrap();
    }
    let f = file.display().to_string();
    let bus = env.bus.clone();
    let berth = berth_tests::bin_dir().join("berth");
    let child = std::process::Command::new(&berth)
        .args(["image", "import", &f, "--alias", "big"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // the operation appears, with progress
    let mut op = String::new();
    berth_tests::wait_for(std::time::Duration::from_secs(30), "the import operation", || {
        let o = env.busctl(&["call", "org.berth.Berth1", "/org/berth/Berth1", "org.berth.Berth1.Manager", "ListOperations"]);
        match text(&o.stdout).split_whitespace().nth(2) {
            Some(p) => {
                op = p.trim_matches('"').to_string();
                true
            }
            None => false,
        }
    });
    let get = |prop: &str| text(&env.busctl(&["get-property", "org.berth.Berth1", &op, "org.berth.Berth1.Operation", prop]).stdout);
    assert_eq!(get("Operation").trim(), "s \"image-import\"");
    assert_eq!(get("Status").trim(), "s \"running\"");
    berth_tests::wait_for(std::time::Duration::from_secs(30), "progress", || {
        get("Bytes").trim().strip_prefix("t ").and_then(|b| b.parse::<u64>().ok()).is_some_and(|b| b > 0)
    });
    assert_eq!(get("ProgressValid").trim(), "b true");
    // cancel it: the import fails with Cancelled and nothing stays
    let o = env.busctl(&["call", "org.berth.Berth1", &op, "org.berth.Berth1.Operation", "Cancel", "a{sv}", "0"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = child.wait_with_output().unwrap();
    assert!(text(&out.stderr).contains("Cancelled"), "{}", text(&out.stderr));
    assert_eq!(store_state(&env), before, "a cancelled import left something behind");
    // the object went away with the operation
    let o = env.busctl(&["call", "org.berth.Berth1", "/org/berth/Berth1", "org.berth.Berth1.Manager", "ListOperations"]);
    assert_eq!(text(&o.stdout).trim(), "ao 0");
}
