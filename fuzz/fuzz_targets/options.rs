//! D-Bus `a{sv}` option maps, as every method with an `options` argument receives them: the
//! map is built from the fuzz input (any D-Bus type, nested variants, dictionaries, fds),
//! encoded to the wire and decoded again as zbus hands it to the service — or decoded straight
//! from raw fuzz bytes — then checked by `Options::parse` with each method's list of keys, and
//! read with the accessors the methods use. A map the check accepts must be readable with the
//! type it was accepted for; one it refuses must have an unknown key or a wrong type.
#![no_main]

use arbitrary::Arbitrary;
use berth_interfaces::dbus::container::{EXEC_OPTIONS, stop_options};
use berth_interfaces::dbus::manager::image_options;
use berth_interfaces::dbus::options::Options;
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, HashMap};
use zbus::wire::serialized::{Context, Data};
use zbus::wire::{BE, LE};
use zbus::{ObjectPath, OwnedVariant, Variant};

#[derive(Arbitrary, Debug)]
enum V {
    B(bool),
    Y(u8),
    N(i16),
    Q(u16),
    U(u32),
    I(i32),
    X(i64),
    T(u64),
    D(f64),
    S(String),
    O(String),
    H,
    As(Vec<String>),
    Au(Vec<u32>),
    Ass(BTreeMap<String, String>),
    Asv(BTreeMap<String, V>),
    V(Box<V>),
    R(u32, String),
}

#[derive(Arbitrary, Debug)]
enum Input {
    /// A map of values, sent over the wire and back.
    Built(Vec<(KeyPick, V)>, bool),
    /// Raw wire bytes of an `a{sv}` body.
    Raw(bool, Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum KeyPick {
    Known(u8),
    Any(String),
}

/// Every method's options: (method, [(key, signature)]) as the service declares them.
const METHODS: &[(&str, &[(&str, &str)])] = &[
    (
        "CreateContainer",
        &[
            ("start", "b"),
            ("profiles", "as"),
            ("config", "a{ss}"),
            ("ephemeral", "b"),
            ("pick-name", "b"),
        ],
    ),
    ("Start", &[("stateless", "b")]),
    ("Delete", &[("force", "b")]),
    ("CreateSnapshot", &[("stateful", "b")]),
    ("Restore", &[("stateful", "b")]),
    ("Export", &[("rootfs", "h")]),
    ("GetConfig", &[]),
    ("Exec", EXEC_OPTIONS),
];

const KEYS: &[&str] = &[
    "start",
    "profiles",
    "config",
    "ephemeral",
    "pick-name",
    "stateless",
    "force",
    "timeout",
    "stateful",
    "rootfs",
    "stdin",
    "env",
    "cwd",
    "uid",
    "tty",
    "aliases",
    "properties",
];

fn variant(v: V, depth: usize) -> Option<Variant<'static>> {
    if depth > 40 {
        return None;
    }
    Some(match v {
        V::B(b) => b.into(),
        V::Y(x) => x.into(),
        V::N(x) => x.into(),
        V::Q(x) => x.into(),
        V::U(x) => x.into(),
        V::I(x) => x.into(),
        V::X(x) => x.into(),
        V::T(x) => x.into(),
        V::D(x) => x.into(),
        V::S(s) => s.into(),
        V::O(s) => ObjectPath::try_from(s).ok()?.into(),
        V::H => {
            let f = std::fs::File::open("/dev/null").ok()?;
            zbus::Fd::from(std::os::fd::OwnedFd::from(f)).into()
        }
        V::As(v) => v.into(),
        V::Au(v) => v.into(),
        V::Ass(m) => m.into(),
        V::Asv(m) => {
            let mut out = BTreeMap::new();
            for (k, v) in m {
                out.insert(k, variant(v, depth + 1)?);
            }
            out.into()
        }
        V::V(v) => Variant::Variant(Box::new(variant(*v, depth + 1)?)),
        V::R(a, b) => (a, b).into(),
    })
}

fn decode(bytes: &[u8], big: bool) -> Option<HashMap<String, OwnedVariant>> {
    let data = Data::new(bytes, Context::new(if big { BE } else { LE }, 0));
    data.deserialize::<HashMap<String, OwnedVariant>>()
        .ok()
        .map(|(m, _)| m)
}

fn build(entries: Vec<(KeyPick, V)>, big: bool) -> Option<HashMap<String, OwnedVariant>> {
    let mut map: HashMap<String, Variant<'static>> = HashMap::new();
    for (k, v) in entries {
        let k = match k {
            KeyPick::Known(i) => KEYS[i as usize % KEYS.len()].to_string(),
            KeyPick::Any(s) => s,
        };
        map.insert(k, variant(v, 0)?);
    }
    let ctxt = Context::new(if big { BE } else { LE }, 0);
    let data = zbus::wire::to_bytes(ctxt, &map).ok()?;
    let (back, _) = data.deserialize::<HashMap<String, OwnedVariant>>().ok()?;
    assert_eq!(back.len(), map.len(), "the wire lost entries");
    Some(back)
}

/// `map` checked against `allowed`, and every accepted key read with its type's accessor.
fn check(method: &'static str, map: &HashMap<String, OwnedVariant>, allowed: &[(&str, &str)]) {
    let fits = map.iter().all(|(k, v)| {
        allowed
            .iter()
            .any(|(name, sig)| name == k && v.value_signature() == *sig)
    });
    let mut o = match Options::parse(method, map.clone(), allowed) {
        Ok(o) => o,
        Err(e) => {
            assert!(!fits, "{method} refused a well-typed map {map:?}: {e}");
            return;
        }
    };
    assert!(fits, "{method} accepted {map:?}");
    for (k, sig) in allowed {
        let present = map.contains_key(*k);
        let got = match *sig {
            "b" => o.bool(k).map(|v| v.is_some()),
            "u" => o.u32(k).map(|v| v.is_some()),
            "s" => o.string(k).map(|v| v.is_some()),
            "as" => o.strings(k).map(|v| v.is_some()),
            "a{ss}" => o.dict(k).map(|v| v.is_some()),
            "h" => o.fd(k).map(|v| v.is_some()),
            other => panic!("no accessor for {other}"),
        };
        match got {
            Ok(some) => assert_eq!(some, present, "{method}: {k}"),
            Err(e) => panic!("{method}: {k} ({sig}) was accepted but cannot be read: {e}"),
        }
    }
}

fuzz_target!(|input: Input| {
    let Some(map) = (match input {
        Input::Built(entries, big) => build(entries, big),
        Input::Raw(big, bytes) => decode(&bytes, big),
    }) else {
        return;
    };
    for (method, allowed) in METHODS {
        check(method, &map, allowed);
    }
    for (method, stateful) in [("Stop", true), ("Restart", false)] {
        if let Ok(o) = stop_options(method, map.clone(), stateful) {
            assert!(!o.stateful || (!o.force && o.timeout.is_none()), "{o:?}");
            assert!(stateful || !o.stateful);
        }
    }
    for (method, extra) in [
        ("ImportImage", &[("rootfs", "h")][..]),
        ("BuildImage", &[][..]),
    ] {
        if let Ok((_, rootfs)) = image_options(method, map.clone(), extra)
            && extra.is_empty()
        {
            assert!(rootfs.is_none(), "{method} took an fd");
        }
    }
});
