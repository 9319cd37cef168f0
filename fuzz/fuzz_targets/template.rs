//! Image templates (the pongo2 subset berth renders into a container's files): any text, with
//! any config and properties in its context, renders or fails with a `TemplateError`, within
//! the output cap, and rendering is deterministic.
#![no_main]

use arbitrary::Arbitrary;
use berth_runtime::image::template::{Context, render};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    template: &'a str,
    trigger: u8,
    name: &'a str,
    privileged: bool,
    ephemeral: bool,
    config: BTreeMap<&'a str, &'a str>,
    properties: BTreeMap<&'a str, &'a str>,
}

fuzz_target!(|input: Input<'_>| {
    let owned = |m: BTreeMap<&str, &str>| {
        m.into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
    };
    let ctx = Context {
        trigger: ["create", "copy", "start"][input.trigger as usize % 3].into(),
        path: "/etc/hostname".into(),
        name: input.name.into(),
        architecture: "x86_64".into(),
        privileged: input.privileged,
        ephemeral: input.ephemeral,
        config: owned(input.config),
        properties: owned(input.properties),
    };
    let first = render(input.template, &ctx);
    if let Ok(out) = &first {
        assert!(out.len() <= 1 << 20, "{} bytes of output", out.len());
    }
    assert_eq!(
        render(input.template, &ctx),
        first,
        "rendering is not deterministic"
    );
});
