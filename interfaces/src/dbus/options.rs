//! Strict `a{sv}` options: every method names the keys it accepts and their signatures; an
//! unknown key or a wrong type is refused with `InvalidConfig` before anything happens.

use crate::errors::Error;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use zbus::OwnedVariant;

/// A method's options, checked.
#[derive(Debug)]
pub struct Options {
    method: &'static str,
    map: HashMap<String, OwnedVariant>,
}

impl Options {
    /// Checks `map` against `allowed` (key, D-Bus signature) pairs.
    pub fn parse(
        method: &'static str,
        map: HashMap<String, OwnedVariant>,
        allowed: &[(&str, &str)],
    ) -> Result<Options, Error> {
        for (k, v) in &map {
            match allowed.iter().find(|(name, _)| name == k) {
                None => {
                    let known: Vec<String> =
                        allowed.iter().map(|(n, s)| format!("{n} ({s})")).collect();
                    return Err(Error::option(if known.is_empty() {
                        format!("{method} takes no options, got {k:?}")
                    } else {
                        format!(
                            "unknown option {k:?} for {method}; known: {}",
                            known.join(", ")
                        )
                    }));
                }
                Some((_, sig)) if v.value_signature() != *sig => {
                    return Err(Error::option(format!(
                        "option {k:?} of {method} must have type '{sig}', got '{}'",
                        v.value_signature()
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(Options { method, map })
    }

    fn bad(&self, k: &str, e: impl std::fmt::Display) -> Error {
        Error::option(format!("option {k:?} of {}: {e}", self.method))
    }

    /// A `b` option.
    pub fn bool(&self, k: &str) -> Result<Option<bool>, Error> {
        self.map
            .get(k)
            .map(|v| bool::try_from(&**v).map_err(|e| self.bad(k, e)))
            .transpose()
    }

    /// A `u` option.
    pub fn u32(&self, k: &str) -> Result<Option<u32>, Error> {
        self.map
            .get(k)
            .map(|v| u32::try_from(&**v).map_err(|e| self.bad(k, e)))
            .transpose()
    }

    /// An `s` option.
    pub fn string(&self, k: &str) -> Result<Option<String>, Error> {
        self.map
            .get(k)
            .map(|v| {
                <&str>::try_from(&**v)
                    .map(str::to_owned)
                    .map_err(|e| self.bad(k, e))
            })
            .transpose()
    }

    /// An `as` option.
    pub fn strings(&mut self, k: &str) -> Result<Option<Vec<String>>, Error> {
        match self.map.remove(k) {
            None => Ok(None),
            Some(v) => Vec::<String>::try_from(v)
                .map(Some)
                .map_err(|e| self.bad(k, e)),
        }
    }

    /// An `a{ss}` option.
    pub fn dict(&mut self, k: &str) -> Result<Option<HashMap<String, String>>, Error> {
        match self.map.remove(k) {
            None => Ok(None),
            Some(v) => HashMap::<String, String>::try_from(v)
                .map(Some)
                .map_err(|e| self.bad(k, e)),
        }
    }

    /// An `h` option (the fd is ours).
    pub fn fd(&mut self, k: &str) -> Result<Option<OwnedFd>, Error> {
        match self.map.remove(k) {
            None => Ok(None),
            Some(v) => {
                let fd = zbus::Fd::try_from(v).map_err(|e| self.bad(k, e))?;
                OwnedFd::try_from(fd).map(Some).map_err(|e| self.bad(k, e))
            }
        }
    }
}

// ---- Transport-neutral request forms ---------------------------------------------------------
//
// Each request that takes options is parsed and checked once, here: the D-Bus handlers fill a
// form from their `a{sv}` ([`Options`]), the varlink handlers from their JSON parameters, and
// the form's one check turns it into the engine's request. So both transports refuse the same
// things with the same error (`InvalidConfig`), and a new rule is written once.

use berth_actors::types::{
    CopyRequest, CreateRequest, ExecRequest, ImageOptions, StartOptions, StopOptions,
};
use std::time::Duration;

/// The `a{sv}` keys of CreateContainer and CopyContainer.
pub const CREATE_KEYS: &[(&str, &str)] = &[
    ("start", "b"),
    ("profiles", "as"),
    ("config", "a{ss}"),
    ("ephemeral", "b"),
    ("pick-name", "b"),
];

/// CreateContainer's and CopyContainer's options.
#[derive(Debug, Default)]
pub struct CreateForm {
    /// The new container's name (empty with `pick_name`: berth picks one).
    pub name: String,
    /// Let berth pick a name when `name` is empty.
    pub pick_name: bool,
    /// Start it once made.
    pub start: bool,
    /// Profiles (None: `default`).
    pub profiles: Option<Vec<String>>,
    /// Config keys.
    pub config: HashMap<String, String>,
    /// Deleted when it stops.
    pub ephemeral: bool,
}

impl CreateForm {
    /// From D-Bus options.
    pub fn from_dbus(
        method: &'static str,
        name: String,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<CreateForm, Error> {
        let mut o = Options::parse(method, options, CREATE_KEYS)?;
        Ok(CreateForm {
            name,
            pick_name: o.bool("pick-name")?.unwrap_or(false),
            start: o.bool("start")?.unwrap_or(false),
            profiles: o.strings("profiles")?,
            config: o.dict("config")?.unwrap_or_default(),
            ephemeral: o.bool("ephemeral")?.unwrap_or(false),
        })
    }

    /// Refuses an invalid name (an empty one is fine when berth picks it).
    pub fn check_name(&self) -> Result<(), Error> {
        if !(self.name.is_empty() && self.pick_name) {
            berth_actors::types::validate_name(&self.name)?;
        }
        Ok(())
    }

    /// The create request from `image`.
    pub fn create(self, image: String) -> Result<CreateRequest, Error> {
        self.check_name()?;
        Ok(CreateRequest {
            name: self.name,
            pick_name: self.pick_name,
            image,
            start: self.start,
            profiles: self.profiles,
            config: self.config.into_iter().collect(),
            ephemeral: self.ephemeral,
        })
    }

    /// The copy request from `source` (`container` or `container/snapshot`).
    pub fn copy(self, source: &str) -> Result<CopyRequest, Error> {
        let (src, snapshot) = match source.split_once('/') {
            Some((c, s)) => (c.to_string(), Some(s.to_string())),
            None => (source.to_string(), None),
        };
        berth_actors::types::validate_name(&src)?;
        if let Some(s) = &snapshot {
            berth_actors::types::validate_name(s)?;
        }
        self.check_name()?;
        Ok(CopyRequest {
            source: src,
            snapshot,
            name: self.name,
            pick_name: self.pick_name,
            config: self.config.into_iter().collect(),
            profiles: self.profiles,
            ephemeral: self.ephemeral,
            start: self.start,
        })
    }
}

/// Start's options.
#[derive(Debug, Default)]
pub struct StartForm {
    /// Boot afresh, discarding a stateful stop's saved state.
    pub stateless: Option<bool>,
}

impl StartForm {
    /// From D-Bus options.
    pub fn from_dbus(options: HashMap<String, OwnedVariant>) -> Result<StartForm, Error> {
        let o = Options::parse("Start", options, &[("stateless", "b")])?;
        Ok(StartForm {
            stateless: o.bool("stateless")?,
        })
    }

    /// The start options, before authorization sets the uid.
    pub fn check(self) -> StartOptions {
        StartOptions {
            stateless: self.stateless.unwrap_or(false),
            uid: 0,
        }
    }
}

/// Stop's and Restart's options.
#[derive(Debug, Default)]
pub struct StopForm {
    /// Kill at once.
    pub force: Option<bool>,
    /// Seconds before the kill.
    pub timeout: Option<u32>,
    /// Checkpoint and stop (Stop only).
    pub stateful: Option<bool>,
}

impl StopForm {
    /// From D-Bus options; `stateful` is a key only where it is allowed.
    pub fn from_dbus(
        method: &'static str,
        options: HashMap<String, OwnedVariant>,
        stateful_allowed: bool,
    ) -> Result<StopForm, Error> {
        let allowed: &[(&str, &str)] = if stateful_allowed {
            &[("force", "b"), ("timeout", "u"), ("stateful", "b")]
        } else {
            &[("force", "b"), ("timeout", "u")]
        };
        let o = Options::parse(method, options, allowed)?;
        Ok(StopForm {
            force: o.bool("force")?,
            timeout: o.u32("timeout")?,
            stateful: o.bool("stateful")?,
        })
    }

    /// The stop options, before authorization sets the uid: a stateful stop takes neither
    /// force nor timeout.
    pub fn check(self) -> Result<StopOptions, Error> {
        let opts = StopOptions {
            force: self.force.unwrap_or(false),
            timeout: self.timeout.map(|s| Duration::from_secs(s.into())),
            stateful: self.stateful.unwrap_or(false),
            uid: 0,
        };
        if opts.stateful && (opts.force || opts.timeout.is_some()) {
            return Err(Error::option(
                "a stateful stop checkpoints and stops at once: it takes neither force nor timeout",
            ));
        }
        Ok(opts)
    }
}

/// The `a{sv}` keys of Exec.
pub const EXEC_KEYS: &[(&str, &str)] = &[
    ("stdin", "h"),
    ("stdout", "h"),
    ("stderr", "h"),
    ("env", "a{ss}"),
    ("cwd", "s"),
    ("uid", "u"),
    ("gid", "u"),
    ("tty", "b"),
    ("rows", "u"),
    ("columns", "u"),
];

/// Exec's request: argv, options and the stdio fds.
#[derive(Debug, Default)]
pub struct ExecForm {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment.
    pub env: HashMap<String, String>,
    /// Working directory (absolute).
    pub cwd: Option<String>,
    /// uid inside the container (default 0).
    pub uid: Option<u32>,
    /// gid inside the container (default: the uid).
    pub gid: Option<u32>,
    /// Run on a new terminal.
    pub tty: Option<bool>,
    /// Its rows (default 24).
    pub rows: Option<u32>,
    /// Its columns (default 80).
    pub columns: Option<u32>,
    /// stdin, stdout, stderr (None: /dev/null).
    pub stdio: [Option<OwnedFd>; 3],
}

impl ExecForm {
    /// From D-Bus arguments.
    pub fn from_dbus(
        argv: Vec<String>,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<ExecForm, Error> {
        let mut o = Options::parse("Exec", options, EXEC_KEYS)?;
        Ok(ExecForm {
            argv,
            env: o.dict("env")?.unwrap_or_default(),
            cwd: o.string("cwd")?,
            uid: o.u32("uid")?,
            gid: o.u32("gid")?,
            tty: o.bool("tty")?,
            rows: o.u32("rows")?,
            columns: o.u32("columns")?,
            stdio: [o.fd("stdin")?, o.fd("stdout")?, o.fd("stderr")?],
        })
    }

    /// The exec request: a command, valid variable names, an absolute cwd, ids in the
    /// container's range.
    pub fn check(self) -> Result<ExecRequest, Error> {
        let argv = self.argv;
        if argv.is_empty() || argv[0].is_empty() {
            return Err(Error::option("Exec needs a command (argv is empty)"));
        }
        if argv.iter().any(|a| a.contains('\0')) {
            return Err(Error::option("Exec arguments cannot contain NUL bytes"));
        }
        let mut env: Vec<(String, String)> = self.env.into_iter().collect();
        env.sort();
        if let Some((k, _)) = env
            .iter()
            .find(|(k, _)| k.is_empty() || k.contains('=') || k.contains('\0'))
        {
            return Err(Error::option(format!(
                "invalid environment variable name {k:?}"
            )));
        }
        if let Some(c) = &self.cwd
            && !c.starts_with('/')
        {
            return Err(Error::option(format!(
                "cwd must be an absolute path, got {c:?}"
            )));
        }
        let uid = self.uid.unwrap_or(0);
        let gid = self.gid.unwrap_or(uid);
        if uid >= 65536 || gid >= 65536 {
            return Err(Error::option(
                "uid and gid must be below 65536 (the container's id range)",
            ));
        }
        let tty = match self.tty {
            Some(true) => Some((
                self.rows.unwrap_or(24).clamp(1, u16::MAX as u32) as u16,
                self.columns.unwrap_or(80).clamp(1, u16::MAX as u32) as u16,
            )),
            _ => None,
        };
        Ok(ExecRequest {
            argv,
            env,
            cwd: self.cwd,
            uid,
            gid,
            tty,
            stdio: self.stdio,
        })
    }
}

/// The options of a method that makes an image (build, import, publish).
#[derive(Debug, Default)]
pub struct ImageForm {
    /// Aliases for the new image.
    pub aliases: Option<Vec<String>>,
    /// Properties over the defaults.
    pub properties: Option<HashMap<String, String>>,
}

impl ImageForm {
    /// From D-Bus options: `aliases` (as) and `properties` (a{ss}) plus `extra` keys; returns
    /// the form and an fd given as `rootfs` (when `extra` names it).
    pub fn from_dbus(
        method: &'static str,
        options: HashMap<String, OwnedVariant>,
        extra: &[(&str, &str)],
    ) -> Result<(ImageForm, Option<OwnedFd>), Error> {
        let mut allowed = vec![("aliases", "as"), ("properties", "a{ss}")];
        allowed.extend_from_slice(extra);
        let mut o = Options::parse(method, options, &allowed)?;
        let form = ImageForm {
            aliases: o.strings("aliases")?,
            properties: o.dict("properties")?,
        };
        let rootfs = if extra.iter().any(|(k, _)| *k == "rootfs") {
            o.fd("rootfs")?
        } else {
            None
        };
        Ok((form, rootfs))
    }

    /// The image options.
    pub fn check(self) -> ImageOptions {
        ImageOptions {
            aliases: self.aliases.unwrap_or_default(),
            properties: self.properties.unwrap_or_default().into_iter().collect(),
        }
    }
}
