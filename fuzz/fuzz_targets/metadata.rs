//! An image's `metadata.yaml`: parsed as import parses it, written back as publish writes it
//! (which must parse to the same metadata), then applied as a container's templates are at
//! create, copy and start — into a volume whose rootfs holds a symlink out of it. Template
//! targets are hostile paths: nothing may be written outside the rootfs, and the image's own
//! files (metadata.yaml, templates/) must stay as they were.
#![no_main]

use berth_fuzz::Scratch;
use berth_runtime::image::Metadata;
use berth_runtime::image::store::apply_templates;
use berth_runtime::image::template::Context;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

const TEMPLATES: &[(&str, &str)] = &[
    ("hostname.tpl", "{{ container.name }}\n"),
    (
        "hosts.tpl",
        "127.0.1.1 {{ container.name }}\n{% if config_get(\"user.x\", \"\") %}x{% endif %}\n",
    ),
    ("sub/conf.tpl", "{{ properties.k | default:\"none\" }}\n"),
];

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("list the image's files") {
            let p = e.expect("read the image's files").path();
            let m = std::fs::symlink_metadata(&p).expect("stat");
            if m.is_dir() {
                stack.push(p.clone());
            }
            let body = if m.is_file() {
                std::fs::read(&p).expect("read")
            } else {
                Vec::new()
            };
            out.push((p.display().to_string(), body));
        }
    }
    out.sort();
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(meta) = Metadata::parse(data) else {
        return;
    };
    let yaml = meta.to_yaml();
    let again = Metadata::parse(yaml.as_bytes())
        .unwrap_or_else(|e| panic!("{meta:?} writes as {yaml:?}, which does not parse: {e}"));
    assert_eq!(again, meta, "metadata.yaml does not survive a publish");
    if meta.templates.is_empty() {
        return;
    }
    let s = Scratch::new();
    let vol = &s.inner;
    std::fs::write(vol.join("metadata.yaml"), data).expect("write metadata.yaml");
    for (name, body) in TEMPLATES {
        let p = vol.join("templates").join(name);
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir templates");
        std::fs::write(p, body).expect("write a template");
    }
    std::fs::create_dir_all(vol.join("rootfs/etc")).expect("mkdir rootfs/etc");
    // a container's own symlinks pointing out of its rootfs, by absolute and relative paths
    std::os::unix::fs::symlink(&s.outer, vol.join("rootfs/etc/out")).expect("symlink");
    std::os::unix::fs::symlink("../../..", vol.join("rootfs/up")).expect("symlink");
    let before = snapshot(&vol.join("templates"));
    for trigger in ["create", "copy", "start"] {
        let ctx = Context {
            trigger: trigger.into(),
            name: "c1".into(),
            architecture: "x86_64".into(),
            ..Default::default()
        };
        let _ = apply_templates(vol, &ctx, (0, 0));
    }
    s.assert_nothing_escaped();
    let mut top: Vec<_> = std::fs::read_dir(vol)
        .expect("list the volume")
        .map(|e| {
            e.expect("read the volume")
                .file_name()
                .into_string()
                .expect("utf-8")
        })
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["metadata.yaml", "rootfs", "templates"],
        "a template wrote outside the rootfs"
    );
    assert_eq!(
        std::fs::read(vol.join("metadata.yaml")).expect("read"),
        data
    );
    assert_eq!(
        snapshot(&vol.join("templates")),
        before,
        "a template wrote into templates/"
    );
});
