//! D-Bus `a{sv}` option maps, as every method with an `options` argument receives them: the
//! map is built from the fuzz input (any D-Bus type, nested variants, dictionaries, fds),
//! encoded to the wire and decoded again as zbus hands it to the service — or decoded straight
//! from raw fuzz bytes — then given to the request forms the D-Bus handlers fill
//! (`CreateForm`, `StartForm`, `StopForm`, `ExecForm`, `ImageForm`, with the name, source and
//! argv of the call) and to `Options::parse` with the key lists of the methods that use it
//! directly. A map is refused exactly when it has an unknown key or a wrong type; what is
//! accepted reads with the accessor of its type; a form's check passes only a request the
//! engine can act on (a valid name or one berth picks, an absolute cwd, ids below 65536, ...).
#![no_main]

use arbitrary::Arbitrary;
use berth_actors::types::validate_name;
use berth_interfaces::dbus::options::{
    CREATE_KEYS, CreateForm, EXEC_KEYS, ExecForm, ImageForm, Options, StartForm, StopForm,
};
use berth_interfaces::errors::Error;
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
    Nested(Box<V>),
    R(u32, String),
}

#[derive(Arbitrary, Debug)]
enum Map {
    /// A map of values, sent over the wire and back.
    Built(Vec<(KeyPick, V)>, bool),
    /// Raw wire bytes of an `a{sv}` body.
    Raw(bool, Vec<u8>),
}

/// The map and the other arguments of the methods that take one.
#[derive(Arbitrary, Debug)]
struct Input {
    /// The options.
    map: Map,
    /// CreateContainer's and CopyContainer's new name.
    name: String,
    /// CopyContainer's source (`container` or `container/snapshot`).
    source: String,
    /// Exec's argv.
    argv: Vec<String>,
}

#[derive(Arbitrary, Debug)]
enum KeyPick {
    Known(u8),
    Any(String),
}

/// The methods whose options only `Options::parse` checks (the others have a form), with
/// their keys as the service declares them.
const METHODS: &[(&str, &[(&str, &str)])] = &[
    ("Delete", &[("force", "b")]),
    ("CreateSnapshot", &[("stateful", "b")]),
    ("Restore", &[("stateful", "b")]),
    ("Export", &[("rootfs", "h")]),
    ("GetConfig", &[]),
    ("Create", CREATE_KEYS),
    ("Exec", EXEC_KEYS),
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
    "stdout",
    "stderr",
    "env",
    "cwd",
    "uid",
    "gid",
    "tty",
    "rows",
    "columns",
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
        V::Nested(v) => Variant::Variant(Box::new(variant(*v, depth + 1)?)),
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

/// Whether every entry of `map` is a key of `allowed` with its type.
fn fits(map: &HashMap<String, OwnedVariant>, allowed: &[(&str, &str)]) -> bool {
    map.iter().all(|(k, v)| {
        allowed
            .iter()
            .any(|(name, sig)| name == k && v.value_signature() == *sig)
    })
}

/// A form's parse: refused exactly when the map does not fit the method's keys.
fn parsed<T: std::fmt::Debug>(
    method: &str,
    map: &HashMap<String, OwnedVariant>,
    allowed: &[(&str, &str)],
    r: Result<T, Error>,
) -> Option<T> {
    match r {
        Ok(form) => {
            assert!(fits(map, allowed), "{method} accepted {map:?} as {form:?}");
            Some(form)
        }
        Err(e) => {
            assert!(
                !fits(map, allowed),
                "{method} refused a well-typed map {map:?}: {e}"
            );
            None
        }
    }
}

/// `map` checked against `allowed`, and every accepted key read with its type's accessor.
fn check(method: &'static str, map: &HashMap<String, OwnedVariant>, allowed: &[(&str, &str)]) {
    let Some(mut o) = parsed(
        method,
        map,
        allowed,
        Options::parse(method, map.clone(), allowed),
    ) else {
        return;
    };
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

/// CreateContainer and CopyContainer, through the form both transports fill.
fn create(name: &str, source: &str, map: &HashMap<String, OwnedVariant>) {
    for method in ["CreateContainer", "CopyContainer"] {
        let r = CreateForm::from_dbus(method, name.to_string(), map.clone());
        let Some(form) = parsed(method, map, CREATE_KEYS, r) else {
            continue;
        };
        let named = validate_name(name).is_ok();
        let pick = form.pick_name && name.is_empty();
        assert_eq!(form.check_name().is_ok(), named || pick, "{form:?}");
        if method == "CreateContainer" {
            if let Ok(req) = form.create("busybox".into()) {
                assert!(named || (req.pick_name && req.name.is_empty()), "{req:?}");
            }
        } else if let Ok(req) = form.copy(source) {
            assert!(named || (req.pick_name && req.name.is_empty()), "{req:?}");
            assert!(validate_name(&req.source).is_ok(), "{req:?}");
            assert!(
                req.snapshot
                    .as_deref()
                    .is_none_or(|s| validate_name(s).is_ok()),
                "{req:?}"
            );
            let joined = match &req.snapshot {
                Some(s) => format!("{}/{s}", req.source),
                None => req.source.clone(),
            };
            assert_eq!(joined, source);
        }
    }
}

/// Exec, through its form: what the check passes is a request the engine can run.
fn exec(argv: Vec<String>, map: &HashMap<String, OwnedVariant>) {
    let r = ExecForm::from_dbus(argv, map.clone());
    let Some(form) = parsed("Exec", map, EXEC_KEYS, r) else {
        return;
    };
    let tty = form.tty;
    let Ok(req) = form.check() else {
        return;
    };
    assert!(!req.argv.is_empty() && !req.argv[0].is_empty(), "{req:?}");
    assert!(!req.argv.iter().any(|a| a.contains('\0')), "{req:?}");
    assert!(
        req.env
            .iter()
            .all(|(k, _)| !k.is_empty() && !k.contains('=') && !k.contains('\0')),
        "{req:?}"
    );
    assert!(
        req.cwd.as_deref().is_none_or(|c| c.starts_with('/')),
        "{req:?}"
    );
    assert!(req.uid < 65536 && req.gid < 65536, "{req:?}");
    assert_eq!(req.tty.is_some(), tty == Some(true), "{req:?}");
    if let Some((rows, columns)) = req.tty {
        assert!(rows >= 1 && columns >= 1, "{req:?}");
    }
}

fuzz_target!(|input: Input| {
    let Input {
        map,
        name,
        source,
        argv,
    } = input;
    let Some(map) = (match map {
        Map::Built(entries, big) => build(entries, big),
        Map::Raw(big, bytes) => decode(&bytes, big),
    }) else {
        return;
    };
    for (method, allowed) in METHODS {
        check(method, &map, allowed);
    }
    create(&name, &source, &map);
    exec(argv, &map);
    let r = StartForm::from_dbus(map.clone());
    if let Some(form) = parsed("Start", &map, &[("stateless", "b")], r) {
        let stateless = form.stateless;
        assert_eq!(form.check().stateless, stateless == Some(true));
    }
    for (method, stateful) in [("Stop", true), ("Restart", false)] {
        let allowed: &[(&str, &str)] = if stateful {
            &[("force", "b"), ("timeout", "u"), ("stateful", "b")]
        } else {
            &[("force", "b"), ("timeout", "u")]
        };
        let r = StopForm::from_dbus(method, map.clone(), stateful);
        if let Some(form) = parsed(method, &map, allowed, r)
            && let Ok(o) = form.check()
        {
            assert!(!o.stateful || (!o.force && o.timeout.is_none()), "{o:?}");
            assert!(stateful || !o.stateful, "{method}: {o:?}");
        }
    }
    for (method, extra) in [
        ("ImportImage", &[("rootfs", "h")][..]),
        ("BuildImage", &[][..]),
        ("Publish", &[][..]),
    ] {
        let mut allowed = vec![("aliases", "as"), ("properties", "a{ss}")];
        allowed.extend_from_slice(extra);
        let r = ImageForm::from_dbus(method, map.clone(), extra);
        if let Some((form, rootfs)) = parsed(method, &map, &allowed, r) {
            let has_rootfs = map.contains_key("rootfs");
            assert_eq!(rootfs.is_some(), has_rootfs, "{method}");
            let aliases = form.aliases.clone().unwrap_or_default();
            assert_eq!(form.check().aliases, aliases);
        }
    }
});
