//! Image template rendering: the files an image lists under `templates:` in its
//! metadata.yaml, rendered into the container's rootfs when it is created, copied or started.
//!
//! LXD and Incus render these with pongo2 (Django-like syntax) wrapped in
//! `{% autoescape off %}`, so there is no HTML escaping. This module owns a small, safe
//! re-implementation of the subset real images use:
//!
//! - text, `{{ expr }}`, `{# comment #}`, `{% if %}`/`{% elif %}`/`{% else %}`/`{% endif %}`,
//!   `{% for x in map %}` / `{% for k, v in map %}` … `{% endfor %}` (sorted keys; a string
//!   loops over its characters), `{% autoescape on|off %}` (a no-op), `{% raw %}`;
//! - whitespace control: `{{-`, `-}}`, `{%-`, `-%}`, `{#-`, `-#}` trim all whitespace
//!   (newlines included) on that side;
//! - LXD's context: `trigger`, `path`, `container.*` / `instance.*` (`name`, `architecture`,
//!   `privileged`, `ephemeral`), `config` and `properties` (`.key` or `["key"]`),
//!   `config_get(key, default)`; unknown variables render as "", unknown functions fail;
//! - string (`\" \' \\ \n \t \r` escapes), integer and boolean literals, `==`, `!=`, `<`,
//!   `<=`, `>`, `>=`, `in`, `not in`, `and`/`&&`, `or`/`||`, `not`/`!`, parentheses, and the
//!   filters `default:"x"`, `lower`, `upper`, `trim`. Booleans print as `True`/`False`.
//!
//! Templates come from untrusted images: every failure is a [`TemplateError`], never a
//! panic, and work is bounded. Blocks and expressions nest at most 64 deep, output is capped
//! at 1 MiB and evaluation at a step budget, so nested loops cannot run away.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

mod eval;
mod lex;
mod parse;
#[cfg(test)]
mod tests;

/// Largest output a template may produce, in bytes.
const MAX_OUTPUT: usize = 1 << 20;
/// Deepest nesting of blocks, and of expressions (parentheses, `not`, arguments, indexes).
const MAX_DEPTH: usize = 64;
/// Evaluation steps: nodes, loop iterations, expression nodes and 256-byte string chunks.
const MAX_STEPS: u64 = 1_000_000;

/// What a template sees (LXD's template context).
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// "create", "copy" or "start".
    pub trigger: String,
    /// The path being rendered (inside the container).
    pub path: String,
    /// Container name.
    pub name: String,
    /// Container architecture.
    pub architecture: String,
    /// Whether the container is privileged.
    pub privileged: bool,
    /// Whether it is ephemeral.
    pub ephemeral: bool,
    /// The container's expanded config.
    pub config: BTreeMap<String, String>,
    /// The template's own `properties` from metadata.yaml.
    pub properties: BTreeMap<String, String>,
}

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TemplateError {
    /// A malformed or misused tag: unclosed or stray block, bad expression, bad loop.
    #[error("line {line}: {message}")]
    Syntax {
        /// 1-based line where the offending tag starts.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A call to a function other than `config_get`.
    #[error("line {line}: unknown function \"{name}\"")]
    UnknownFunction {
        /// 1-based line of the call.
        line: usize,
        /// The function's name (shortened if long).
        name: String,
    },
    /// A filter other than `default`, `lower`, `upper` and `trim`.
    #[error("line {line}: unknown filter \"{name}\"")]
    UnknownFilter {
        /// 1-based line of the filter.
        line: usize,
        /// The filter's name (shortened if long).
        name: String,
    },
    /// Blocks or expressions nested more than 64 deep.
    #[error("line {line}: nesting deeper than 64 levels")]
    TooDeep {
        /// 1-based line of the tag that goes too deep.
        line: usize,
    },
    /// The output would exceed 1 MiB.
    #[error("output exceeds 1 MiB")]
    OutputTooLarge,
    /// Rendering needs more than the evaluation budget (runaway loops).
    #[error("rendering exceeds the evaluation budget")]
    TooExpensive,
}

type Res<T> = Result<T, TemplateError>;

fn syntax(line: usize, message: impl Into<String>) -> TemplateError {
    TemplateError::Syntax {
        line,
        message: message.into(),
    }
}

/// `s` cut to 40 characters, for quoting untrusted text in errors.
fn short(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_owned(),
    }
}

/// Renders `template` with `ctx`.
///
/// # Errors
///
/// A [`TemplateError`] if the template is malformed (with the line of the offending tag),
/// nests too deeply, produces more than 1 MiB or exceeds the evaluation budget.
pub fn render(template: &str, ctx: &Context) -> Result<String, TemplateError> {
    let nodes = parse::parse(lex::lex(template)?)?;
    eval::run(&nodes, ctx)
}
