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
