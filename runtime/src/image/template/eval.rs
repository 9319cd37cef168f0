//! Values and evaluation: running a parsed template against a [`Context`], with the output
//! cap and the step budget.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::parse::{Expr, Filter, Node, Step};
use super::{Context, MAX_OUTPUT, MAX_STEPS, Res, TemplateError, syntax};

/// Which context map a [`Value::Map`] refers to (maps are looked up, never copied).
#[derive(Clone, Copy, PartialEq)]
pub(super) enum MapRef {
    Config,
    Properties,
    /// `container` / `instance`.
    Instance,
}

/// The instance fields, sorted (the iteration order).
const INSTANCE_KEYS: [&str; 4] = ["architecture", "ephemeral", "name", "privileged"];

/// A template value.
#[derive(Clone)]
pub(super) enum Value {
    Str(String),
    Bool(bool),
    Int(i64),
    Map(MapRef),
}

impl Value {
    /// The value as output text: booleans as pongo2 prints them, maps as "".
    fn text(&self) -> Cow<'_, str> {
        match self {
            Value::Str(s) => Cow::Borrowed(s),
            Value::Bool(b) => Cow::Borrowed(if *b { "True" } else { "False" }),
            Value::Int(i) => Cow::Owned(i.to_string()),
            Value::Map(_) => Cow::Borrowed(""),
        }
    }

    /// Equality as pongo2 sees it, except that a boolean also equals "true"/"false" in any
    /// case (LXD passes `privileged`/`ephemeral` as those strings).
    fn equals(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Str(x), Value::Str(y)) => x == y,
            (Value::Int(x), Value::Int(y)) => x == y,
            (Value::Bool(x), Value::Bool(y)) => x == y,
            (Value::Bool(b), Value::Str(s)) | (Value::Str(s), Value::Bool(b)) => {
                s.eq_ignore_ascii_case(if *b { "true" } else { "false" })
            }
            (Value::Map(x), Value::Map(y)) => x == y,
            _ => false,
        }
    }
}

fn empty() -> Value {
    Value::Str(String::new())
}

/// Renders parsed `nodes` with `ctx`: the output, within the output cap and step budget.
pub(super) fn run(nodes: &[Node], ctx: &Context) -> Res<String> {
    let mut renderer = Renderer {
        ctx,
        scope: Vec::new(),
        out: String::new(),
        steps: 0,
    };
    renderer.run(nodes)?;
    Ok(renderer.out)
}

/// Evaluation state: the context, the loop variables in scope, the output so far and the
/// steps spent.
struct Renderer<'a> {
    ctx: &'a Context,
    /// Loop variables, innermost last.
    scope: Vec<(String, Value)>,
    out: String,
    steps: u64,
}

impl Renderer<'_> {
    fn charge(&mut self, n: u64) -> Res<()> {
        self.steps = self.steps.saturating_add(n);
        if self.steps > MAX_STEPS {
            Err(TemplateError::TooExpensive)
        } else {
            Ok(())
        }
    }

    fn write(&mut self, s: &str) -> Res<()> {
        if self.out.len().saturating_add(s.len()) > MAX_OUTPUT {
            return Err(TemplateError::OutputTooLarge);
        }
        self.out.push_str(s);
        Ok(())
    }

    fn run(&mut self, nodes: &[Node]) -> Res<()> {
        for node in nodes {
            self.charge(1)?;
            match node {
                Node::Text(text) => self.write(text)?,
                Node::Output(e) => {
                    let v = self.eval(e)?;
                    self.write(&v.text())?;
                }
                Node::If(branches, otherwise) => {
                    let mut chosen = otherwise;
                    for (cond, body) in branches {
                        let v = self.eval(cond)?;
                        if self.truthy(&v) {
                            chosen = body;
                            break;
                        }
                    }
                    self.run(chosen)?;
                }
                Node::For {
                    key,
                    value,
                    iter,
                    body,
                    line,
                } => {
                    for (k, v) in self.items(iter, *line)? {
                        self.charge(1)?;
                        let mark = self.scope.len();
                        self.scope.push((key.clone(), k));
                        if let Some(name) = value {
                            self.scope.push((name.clone(), v));
                        }
                        self.run(body)?;
                        self.scope.truncate(mark);
                    }
                }
            }
        }
        Ok(())
    }

    /// A context map's string entries; `None` for the instance, whose fields are typed.
    fn strings(&self, m: MapRef) -> Option<&BTreeMap<String, String>> {
        match m {
            MapRef::Config => Some(&self.ctx.config),
            MapRef::Properties => Some(&self.ctx.properties),
            MapRef::Instance => None,
        }
    }

    /// `m[key]`, or `None` if there is no such key.
    fn get(&self, m: MapRef, key: &str) -> Option<Value> {
        if let Some(map) = self.strings(m) {
            return map.get(key).map(|v| Value::Str(v.clone()));
        }
        Some(match key {
            "name" => Value::Str(self.ctx.name.clone()),
            "architecture" => Value::Str(self.ctx.architecture.clone()),
            "privileged" => Value::Bool(self.ctx.privileged),
            "ephemeral" => Value::Bool(self.ctx.ephemeral),
            _ => return None,
        })
    }

    /// What a `for` loops over: (key, value) for maps, (character, "") for strings.
    fn items(&mut self, iter: &Expr, line: usize) -> Res<Vec<(Value, Value)>> {
        match self.eval(iter)? {
            Value::Map(m) => {
                let keys: Vec<String> = match self.strings(m) {
                    Some(map) => map.keys().cloned().collect(),
                    None => INSTANCE_KEYS.iter().map(|k| (*k).to_owned()).collect(),
                };
                self.charge(keys.len() as u64)?;
                let value = |k: &str| self.get(m, k).unwrap_or_else(empty);
                Ok(keys
                    .into_iter()
                    .map(|k| (Value::Str(k.clone()), value(&k)))
                    .collect())
            }
            Value::Str(s) => {
                self.charge(s.len() as u64)?;
                Ok(s.chars().map(|c| (Value::Str(c.into()), empty())).collect())
            }
            Value::Bool(_) => Err(syntax(line, "cannot loop over a boolean")),
            Value::Int(_) => Err(syntax(line, "cannot loop over an integer")),
        }
    }

    fn truthy(&self, v: &Value) -> bool {
        match v {
            Value::Str(s) => !s.is_empty(),
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Map(m) => self.strings(*m).is_none_or(|map| !map.is_empty()),
        }
    }

    /// `needle in hay`: key membership for maps, substring for strings.
    fn contains(&self, hay: &Value, needle: &Value) -> bool {
        match hay {
            Value::Map(m) => self.get(*m, &needle.text()).is_some(),
            Value::Str(s) => s.contains(needle.text().as_ref()),
            Value::Bool(_) | Value::Int(_) => false,
        }
    }

    fn var(&self, name: &str) -> Value {
        if let Some((_, v)) = self.scope.iter().rev().find(|(n, _)| n == name) {
            return v.clone();
        }
        match name {
            "trigger" => Value::Str(self.ctx.trigger.clone()),
            "path" => Value::Str(self.ctx.path.clone()),
            "container" | "instance" => Value::Map(MapRef::Instance),
            "config" => Value::Map(MapRef::Config),
            "properties" => Value::Map(MapRef::Properties),
            _ => empty(),
        }
    }

    fn eval(&mut self, e: &Expr) -> Res<Value> {
        self.charge(1)?;
        let v = match e {
            Expr::Lit(v) => v.clone(),
            Expr::Var(name) => self.var(name),
            Expr::Path(base, steps) => {
                let mut v = self.eval(base)?;
                for step in steps {
                    let key = match step {
                        Step::Attr(name) => Cow::Borrowed(name.as_str()),
                        Step::Index(index) => Cow::Owned(self.eval(index)?.text().into_owned()),
                    };
                    v = match v {
                        Value::Map(m) => self.get(m, &key).unwrap_or_else(empty),
                        _ => empty(),
                    };
                }
                v
            }
            Expr::ConfigGet(key, default) => {
                let key = self.eval(key)?.text().into_owned();
                match (self.ctx.config.get(&key), default) {
                    (Some(v), _) => Value::Str(v.trim_end_matches(['\r', '\n']).to_owned()),
                    (None, Some(default)) => self.eval(default)?,
                    (None, None) => empty(),
                }
            }
            Expr::Not(inner) => {
                let v = self.eval(inner)?;
                Value::Bool(!self.truthy(&v))
            }
            Expr::And(all) | Expr::Or(all) => {
                // Short-circuits: stops at the first operand that settles the result.
                let settles = matches!(e, Expr::Or(_));
                let mut result = !settles;
                for operand in all {
                    let v = self.eval(operand)?;
                    if self.truthy(&v) == settles {
                        result = settles;
                        break;
                    }
                }
                Value::Bool(result)
            }
            Expr::Cmp(left, op, right) => {
                let (l, r) = (self.eval(left)?, self.eval(right)?);
                let order = || match (&l, &r) {
                    (Value::Int(a), Value::Int(b)) => a.cmp(b),
                    _ => l.text().cmp(&r.text()),
                };
                Value::Bool(match *op {
                    "==" => l.equals(&r),
                    "!=" => !l.equals(&r),
                    "in" => self.contains(&r, &l),
                    "not in" => !self.contains(&r, &l),
                    "<" => order().is_lt(),
                    "<=" => order().is_le(),
                    ">" => order().is_gt(),
                    _ => order().is_ge(),
                })
            }
            Expr::Filter(base, filters) => {
                let mut v = self.eval(base)?;
                for filter in filters {
                    v = match filter {
                        Filter::Default(_) if self.truthy(&v) => v,
                        Filter::Default(fallback) => self.eval(fallback)?,
                        Filter::Lower => Value::Str(v.text().to_lowercase()),
                        Filter::Upper => Value::Str(v.text().to_uppercase()),
                        Filter::Trim => Value::Str(v.text().trim().to_owned()),
                    };
                    self.charge(v.text().len() as u64 / 256)?;
                }
                v
            }
        };
        self.charge(v.text().len() as u64 / 256)?;
        Ok(v)
    }
}
