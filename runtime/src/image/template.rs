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

use std::borrow::Cow;
use std::collections::BTreeMap;

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
    TemplateError::Syntax { line, message: message.into() }
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
    let mut parser = Parser { toks: lex(template)?.into_iter() };
    let (nodes, end) = parser.nodes(0)?;
    if let Some(end) = end {
        return Err(syntax(end.line, format!("unexpected {{% {} %}}", end.kw)));
    }
    let mut renderer = Renderer { ctx, scope: Vec::new(), out: String::new(), steps: 0 };
    renderer.run(&nodes)?;
    Ok(renderer.out)
}

// Lexing: the template into text and tags.

/// Literal text, or an output (`{{ }}`) or block (`{% %}`) tag's inner text and line.
enum Tok {
    Text(String),
    Output(String, usize),
    Tag(String, usize),
}

fn newlines(s: &str) -> usize {
    s.bytes().filter(|&b| b == b'\n').count()
}

/// `s` without a leading `-`, and whether it had one.
fn dash(s: &str) -> (bool, &str) {
    s.strip_prefix('-').map_or((false, s), |rest| (true, rest))
}

/// Splits the template into tokens, applying whitespace control and `{% raw %}`.
fn lex(src: &str) -> Res<Vec<Tok>> {
    let (mut toks, mut pos, mut line, mut trim_next) = (Vec::new(), 0, 1, false);
    loop {
        let rest = &src[pos..];
        let open = find_open(rest);
        let text = &rest[..open.map_or(rest.len(), |(at, _)| at)];
        let trim_before = open.is_some_and(|(at, _)| rest[at + 2..].starts_with('-'));
        push_text(&mut toks, text, std::mem::take(&mut trim_next), trim_before);
        line += newlines(text);
        pos += text.len();
        let Some((_, kind)) = open else {
            return Ok(toks);
        };
        let (close, what) = match kind {
            b'{' => ("}}", "{{"),
            b'%' => ("%}", "{%"),
            _ => ("#}", "{#"),
        };
        let Some(len) = find_close(&src[pos + 2..], close, kind != b'#') else {
            return Err(syntax(line, format!("unclosed {what}")));
        };
        let (start, inner) = (line, dash(&src[pos + 2..pos + 2 + len]).1);
        line += newlines(inner);
        pos += len + 4;
        let inner = inner.strip_suffix('-').map_or(inner, |s| {
            trim_next = true;
            s
        });
        match kind {
            b'{' => toks.push(Tok::Output(inner.trim().to_owned(), start)),
            b'%' if inner.trim() == "raw" => {
                let Some((len, end_len, trim_end, trim_after)) = find_endraw(&src[pos..]) else {
                    return Err(syntax(start, "unclosed {% raw %}"));
                };
                let raw = &src[pos..pos + len];
                push_text(&mut toks, raw, std::mem::take(&mut trim_next), trim_end);
                line += newlines(&src[pos..pos + len + end_len]);
                pos += len + end_len;
                trim_next = trim_after;
            }
            b'%' => toks.push(Tok::Tag(inner.trim().to_owned(), start)),
            _ => {}
        }
    }
}

/// Pushes `text` as a token unless empty, trimmed on the sides whitespace control asks for.
fn push_text(toks: &mut Vec<Tok>, text: &str, trim_start: bool, trim_end: bool) {
    let text = if trim_start { text.trim_start() } else { text };
    let text = if trim_end { text.trim_end() } else { text };
    if !text.is_empty() {
        toks.push(Tok::Text(text.to_owned()));
    }
}

/// The first `{{`, `{%` or `{#` in `s`: its offset and the second byte.
fn find_open(s: &str) -> Option<(usize, u8)> {
    s.as_bytes()
        .windows(2)
        .enumerate()
        .find_map(|(i, w)| (w[0] == b'{' && matches!(w[1], b'{' | b'%' | b'#')).then_some((i, w[1])))
}

/// Offset of the closing delimiter in `s`, skipping quoted strings if `strings` is set.
fn find_close(s: &str, close: &str, strings: bool) -> Option<usize> {
    let (b, mut i) = (s.as_bytes(), 0);
    while i < b.len() {
        let c = b[i];
        if strings && (c == b'"' || c == b'\'') {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
        } else if b[i..].starts_with(close.as_bytes()) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Finds `{% endraw %}` in `s`: (offset, tag length, had `{%-`, had `-%}`).
fn find_endraw(s: &str) -> Option<(usize, usize, bool, bool)> {
    let mut from = 0;
    while let Some(off) = s[from..].find("{%") {
        let at = from + off;
        let (trim_end, rest) = dash(&s[at + 2..]);
        if let Some(rest) = rest.trim_start().strip_prefix("endraw") {
            let (trim_after, rest) = dash(rest.trim_start());
            if rest.starts_with("%}") {
                return Some((at, s.len() - rest.len() + 2 - at, trim_end, trim_after));
            }
        }
        from = at + 2;
    }
    None
}

// Parsing: tags into a tree.

/// A parsed template node.
enum Node {
    Text(String),
    Output(Expr),
    /// `(condition, body)` for `if` and each `elif`, then the `else` body.
    If(Vec<(Expr, Vec<Node>)>, Vec<Node>),
    For {
        key: String,
        value: Option<String>,
        iter: Expr,
        body: Vec<Node>,
        line: usize,
    },
}

/// A tag that ends a block body (`elif`, `else`, `end…`): keyword, arguments, line.
struct End {
    kw: String,
    rest: String,
    line: usize,
}

struct Parser {
    toks: std::vec::IntoIter<Tok>,
}

impl Parser {
    /// Parses nodes until the end of input or a block-ending tag, which is returned.
    fn nodes(&mut self, depth: usize) -> Res<(Vec<Node>, Option<End>)> {
        let mut nodes = Vec::new();
        while let Some(tok) = self.toks.next() {
            let (src, line) = match tok {
                Tok::Text(text) => {
                    nodes.push(Node::Text(text));
                    continue;
                }
                Tok::Output(src, line) => {
                    nodes.push(Node::Output(parse_expr(&src, line)?));
                    continue;
                }
                Tok::Tag(src, line) => (src, line),
            };
            let (kw, rest) = src.split_once(char::is_whitespace).unwrap_or((&src, ""));
            let rest = rest.trim();
            match kw {
                "if" => nodes.push(self.if_block(rest, line, depth)?),
                "for" => nodes.push(self.for_block(rest, line, depth)?),
                "autoescape" if rest == "on" || rest == "off" => {
                    nodes.extend(self.block(depth, line, "autoescape", &["endautoescape"])?.0);
                }
                "autoescape" => return Err(syntax(line, "expected {% autoescape on|off %}")),
                "elif" | "else" | "endif" | "endfor" | "endautoescape" | "endraw" => {
                    let end = End { kw: kw.to_owned(), rest: rest.to_owned(), line };
                    return Ok((nodes, Some(end)));
                }
                "" => return Err(syntax(line, "empty {% %} tag")),
                _ => return Err(syntax(line, format!("unknown tag {{% {} %}}", short(kw)))),
            }
        }
        Ok((nodes, None))
    }

    /// Parses the body of a block opened on `line`, which must end with one of `ends`.
    fn block(&mut self, depth: usize, line: usize, what: &str, ends: &[&str]) -> Res<(Vec<Node>, End)> {
        if depth >= MAX_DEPTH {
            return Err(TemplateError::TooDeep { line });
        }
        match self.nodes(depth + 1)? {
            (_, None) => Err(syntax(line, format!("unclosed {{% {what} %}}"))),
            (_, Some(end)) if !ends.contains(&end.kw.as_str()) => {
                let open = format!("the {{% {what} %}} from line {line} is still open");
                Err(syntax(end.line, format!("unexpected {{% {} %}} ({open})", end.kw)))
            }
            (_, Some(end)) if end.kw != "elif" && !end.rest.is_empty() => {
                Err(syntax(end.line, format!("unexpected text after {{% {} %}}", end.kw)))
            }
            (body, Some(end)) => Ok((body, end)),
        }
    }

    fn if_block(&mut self, cond: &str, line: usize, depth: usize) -> Res<Node> {
        let (mut cond, mut branches) = (parse_expr(cond, line)?, Vec::new());
        loop {
            let (body, end) = self.block(depth, line, "if", &["elif", "else", "endif"])?;
            branches.push((cond, body));
            match end.kw.as_str() {
                "elif" => cond = parse_expr(&end.rest, end.line)?,
                "else" => {
                    return Ok(Node::If(branches, self.block(depth, line, "if", &["endif"])?.0));
                }
                _ => return Ok(Node::If(branches, Vec::new())),
            }
        }
    }

    fn for_block(&mut self, rest: &str, line: usize, depth: usize) -> Res<Node> {
        let mut p = ExprParser { toks: lex_expr(rest, line)?, pos: 0, line };
        let key = p.ident("a loop variable")?;
        let value = if p.eat(",") { Some(p.ident("a second loop variable")?) } else { None };
        if !p.eat("in") {
            return Err(p.unexpected("'in' ({% for x in expr %})"));
        }
        let iter = p.or(0)?;
        p.finish()?;
        let body = self.block(depth, line, "for", &["endfor"])?.0;
        Ok(Node::For { key, value, iter, body, line })
    }
}

// Expressions.

/// An expression token; operators, punctuation and `and`/`or`/`not`/`in` are `Op`.
#[derive(Clone, PartialEq)]
enum T {
    Str(String),
    Int(i64),
    Ident(String),
    Op(&'static str),
}

/// Operators, longest first; `&&`, `||` and `!` are spellings of `and`, `or`, `not`.
const OPS: [&str; 17] = ["==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "|", "(", ")", "[", "]", ".", ",", ":"];
const KEYWORDS: [&str; 4] = ["and", "or", "not", "in"];
const COMPARISONS: [&str; 7] = ["==", "!=", "<", "<=", ">", ">=", "in"];

/// A filter applied with `|`.
enum Filter {
    Default(Expr),
    Lower,
    Upper,
    Trim,
}

/// One `.name` or `[expr]` lookup.
enum Step {
    Attr(String),
    Index(Expr),
}

/// A parsed expression. `and`/`or` chains and lookups are flat, so depth stays bounded.
enum Expr {
    Lit(Value),
    Var(String),
    Path(Box<Expr>, Vec<Step>),
    ConfigGet(Box<Expr>, Option<Box<Expr>>),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Cmp(Box<Expr>, &'static str, Box<Expr>),
    Filter(Box<Expr>, Vec<Filter>),
}

fn lex_expr(src: &str, line: usize) -> Res<Vec<T>> {
    let (mut out, mut i) = (Vec::new(), 0);
    while let Some(c) = src[i..].chars().next() {
        let rest = &src[i..];
        let word = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '_').len();
        let (tok, len) = if c.is_whitespace() {
            i += c.len_utf8();
            continue;
        } else if c == '"' || c == '\'' {
            let (s, len) = lex_string(rest, line)?;
            (T::Str(s), len)
        } else if c.is_ascii_digit() {
            let digits = &rest[..rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len()];
            let n = digits.parse().map_err(|_| syntax(line, format!("integer {} is too large", short(digits))))?;
            (T::Int(n), digits.len())
        } else if word > 0 {
            let tok = match KEYWORDS.iter().find(|k| **k == &rest[..word]) {
                Some(k) => T::Op(k),
                None => T::Ident(rest[..word].to_owned()),
            };
            (tok, word)
        } else if let Some(op) = OPS.iter().find(|op| rest.starts_with(**op)) {
            (
                T::Op(match *op {
                    "&&" => "and",
                    "||" => "or",
                    "!" => "not",
                    op => op,
                }),
                op.len(),
            )
        } else {
            return Err(syntax(line, format!("bad expression: unexpected character {c:?}")));
        };
        out.push(tok);
        i += len;
    }
    Ok(out)
}

/// Lexes the quoted string at the start of `s`: its value and length in bytes.
fn lex_string(s: &str, line: usize) -> Res<(String, usize)> {
    let mut chars = s.char_indices();
    let quote = chars.next().map_or('"', |(_, q)| q);
    let mut value = String::new();
    while let Some((at, ch)) = chars.next() {
        match ch {
            '\\' => match chars.next().map(|(_, e)| e) {
                Some('n') => value.push('\n'),
                Some('t') => value.push('\t'),
                Some('r') => value.push('\r'),
                Some(e @ ('\\' | '"' | '\'')) => value.push(e),
                Some(e) => {
                    return Err(syntax(line, format!("bad expression: unknown escape \\{e}")));
                }
                None => break,
            },
            c if c == quote => return Ok((value, at + 1)),
            c => value.push(c),
        }
    }
    Err(syntax(line, "bad expression: unterminated string"))
}

fn parse_expr(src: &str, line: usize) -> Res<Expr> {
    let mut p = ExprParser { toks: lex_expr(src, line)?, pos: 0, line };
    if p.toks.is_empty() {
        return Err(syntax(line, "empty expression"));
    }
    let e = p.or(0)?;
    p.finish()?;
    Ok(e)
}

/// Recursive-descent parser; `d` is the nesting depth, capped at [`MAX_DEPTH`].
struct ExprParser {
    toks: Vec<T>,
    pos: usize,
    line: usize,
}

impl ExprParser {
    fn eat(&mut self, op: &str) -> bool {
        let hit = matches!(self.toks.get(self.pos), Some(T::Op(o)) if *o == op);
        self.pos += usize::from(hit);
        hit
    }

    fn unexpected(&self, wanted: &str) -> TemplateError {
        let found = match self.toks.get(self.pos) {
            None => "the end of the expression".to_owned(),
            Some(T::Str(s)) => format!("string \"{}\"", short(s)),
            Some(T::Int(i)) => i.to_string(),
            Some(T::Ident(s)) => format!("\"{}\"", short(s)),
            Some(T::Op(op)) => format!("'{op}'"),
        };
        syntax(self.line, format!("bad expression: expected {wanted}, found {found}"))
    }

    fn expect(&mut self, op: &str) -> Res<()> {
        if self.eat(op) { Ok(()) } else { Err(self.unexpected(&format!("'{op}'"))) }
    }

    fn ident(&mut self, wanted: &str) -> Res<String> {
        let Some(T::Ident(s)) = self.toks.get(self.pos) else {
            return Err(self.unexpected(wanted));
        };
        let s = s.clone();
        self.pos += 1;
        Ok(s)
    }

    fn finish(&self) -> Res<()> {
        if self.pos < self.toks.len() { Err(self.unexpected("the end of the expression")) } else { Ok(()) }
    }

    fn deeper(&self, d: usize) -> Res<usize> {
        if d >= MAX_DEPTH { Err(TemplateError::TooDeep { line: self.line }) } else { Ok(d + 1) }
    }

    /// `first op next op next ...` as one flat node (`make`), or just `first`.
    fn chain(
        &mut self,
        d: usize,
        op: &str,
        next: fn(&mut Self, usize) -> Res<Expr>,
        make: fn(Vec<Expr>) -> Expr,
    ) -> Res<Expr> {
        let mut all = vec![next(self, d)?];
        while self.eat(op) {
            all.push(next(self, d)?);
        }
        Ok(if all.len() == 1 { all.swap_remove(0) } else { make(all) })
    }

    fn or(&mut self, d: usize) -> Res<Expr> {
        self.chain(d, "or", |p, d| p.chain(d, "and", Self::not, Expr::And), Expr::Or)
    }

    fn not(&mut self, d: usize) -> Res<Expr> {
        if self.eat("not") {
            return Ok(Expr::Not(Box::new(self.not(self.deeper(d)?)?)));
        }
        let left = self.filtered(d)?;
        let op = match (self.toks.get(self.pos), self.toks.get(self.pos + 1)) {
            (Some(T::Op("not")), Some(T::Op("in"))) => {
                self.pos += 1;
                "not in"
            }
            (Some(T::Op(op)), _) if COMPARISONS.contains(op) => op,
            _ => return Ok(left),
        };
        self.pos += 1;
        Ok(Expr::Cmp(Box::new(left), op, Box::new(self.filtered(d)?)))
    }

    fn filtered(&mut self, d: usize) -> Res<Expr> {
        let base = self.postfix(d)?;
        let mut filters = Vec::new();
        while self.eat("|") {
            let name = self.ident("a filter name")?;
            let arg = if self.eat(":") { Some(self.postfix(self.deeper(d)?)?) } else { None };
            filters.push(match (name.as_str(), arg) {
                ("default", Some(arg)) => Filter::Default(arg),
                ("default", None) => {
                    return Err(syntax(self.line, "filter default needs an argument: |default:\"x\""));
                }
                ("lower" | "upper" | "trim", Some(_)) => {
                    return Err(syntax(self.line, format!("filter {name} takes no argument")));
                }
                ("lower", None) => Filter::Lower,
                ("upper", None) => Filter::Upper,
                ("trim", None) => Filter::Trim,
                _ => {
                    return Err(TemplateError::UnknownFilter { line: self.line, name: short(&name) });
                }
            });
        }
        Ok(if filters.is_empty() { base } else { Expr::Filter(Box::new(base), filters) })
    }

    fn postfix(&mut self, d: usize) -> Res<Expr> {
        let base = self.primary(d)?;
        let mut steps = Vec::new();
        loop {
            if self.eat(".") {
                steps.push(Step::Attr(self.ident("a name after '.'")?));
            } else if self.eat("[") {
                steps.push(Step::Index(self.or(self.deeper(d)?)?));
                self.expect("]")?;
            } else {
                return Ok(if steps.is_empty() { base } else { Expr::Path(Box::new(base), steps) });
            }
        }
    }

    fn primary(&mut self, d: usize) -> Res<Expr> {
        let tok = match self.toks.get(self.pos) {
            Some(T::Op(op)) if *op != "(" => None,
            tok => tok.cloned(),
        };
        let Some(tok) = tok else {
            return Err(self.unexpected("a value"));
        };
        self.pos += 1;
        Ok(match tok {
            T::Str(s) => Expr::Lit(Value::Str(s)),
            T::Int(i) => Expr::Lit(Value::Int(i)),
            T::Ident(name) if self.eat("(") => return self.call(&name, self.deeper(d)?),
            T::Ident(name) => match name.as_str() {
                "true" | "True" => Expr::Lit(Value::Bool(true)),
                "false" | "False" => Expr::Lit(Value::Bool(false)),
                _ => Expr::Var(name),
            },
            T::Op(_) => {
                let e = self.or(self.deeper(d)?)?;
                self.expect(")")?;
                e
            }
        })
    }

    /// Parses the arguments of a call to `name`, whose `(` has been consumed.
    fn call(&mut self, name: &str, d: usize) -> Res<Expr> {
        if name != "config_get" {
            return Err(TemplateError::UnknownFunction { line: self.line, name: short(name) });
        }
        let mut args = Vec::new();
        while !self.eat(")") {
            if !args.is_empty() {
                self.expect(",")?;
            }
            args.push(self.or(d)?);
        }
        let mut args = args.into_iter();
        match (args.next(), args.next(), args.next()) {
            (Some(key), default, None) => Ok(Expr::ConfigGet(Box::new(key), default.map(Box::new))),
            _ => Err(syntax(self.line, "config_get takes a key and an optional default")),
        }
    }
}

// Values and evaluation.

/// Which context map a [`Value::Map`] refers to (maps are looked up, never copied).
#[derive(Clone, Copy, PartialEq)]
enum MapRef {
    Config,
    Properties,
    /// `container` / `instance`.
    Instance,
}

/// The instance fields, sorted (the iteration order).
const INSTANCE_KEYS: [&str; 4] = ["architecture", "ephemeral", "name", "privileged"];

/// A template value.
#[derive(Clone)]
enum Value {
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
        if self.steps > MAX_STEPS { Err(TemplateError::TooExpensive) } else { Ok(()) }
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
                Node::For { key, value, iter, body, line } => {
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
                Ok(keys.into_iter().map(|k| (Value::Str(k.clone()), value(&k))).collect())
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
#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            trigger: "create".into(),
            path: "/etc/hostname".into(),
            name: "c1".into(),
            architecture: "x86_64".into(),
            privileged: false,
            ephemeral: true,
            ..Context::default()
        }
    }

    fn with_config(pairs: &[(&str, &str)]) -> Context {
        let mut c = ctx();
        c.config = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        c
    }

    fn ok(template: &str, c: &Context) -> String {
        match render(template, c) {
            Ok(out) => out,
            Err(e) => panic!("{template:?} failed: {e}"),
        }
    }

    fn err(template: &str) -> TemplateError {
        match render(template, &ctx()) {
            Ok(out) => panic!("{template:?} rendered {out:?}, expected an error"),
            Err(e) => e,
        }
    }

    fn msg(template: &str) -> String {
        err(template).to_string()
    }

    const NETWORK: &str = r#"{{ config_get("user.meta-data", "") }}
{%- if config_get("user.network-config", "") == "" %}
version: 1
config:
  - type: physical
    name: eth0
    subnets:
      - type: {% if config_get("user.ipv4", "") != "" %}static{% else %}dhcp{% endif %}
{%- else %}
{{ config_get("user.network-config", "") }}
{%- endif %}
"#;

    #[test]
    fn hostname_and_hosts() {
        assert_eq!(ok("{{ container.name }}\n", &ctx()), "c1\n");
        assert_eq!(ok("{{ instance.name }}", &ctx()), "c1");
        assert_eq!(
            ok("127.0.0.1\tlocalhost\n127.0.1.1\t{{ container.name }}\n", &ctx()),
            "127.0.0.1\tlocalhost\n127.0.1.1\tc1\n"
        );
    }

    #[test]
    fn cloud_init_network_default_branch() {
        let expected = "\nversion: 1\nconfig:\n  - type: physical\n    name: eth0\n    subnets:\n      - type: dhcp\n";
        assert_eq!(ok(NETWORK, &ctx()), expected);
        let c = with_config(&[("user.ipv4", "10.0.0.2/24")]);
        assert_eq!(ok(NETWORK, &c), expected.replace("dhcp", "static"));
    }

    #[test]
    fn cloud_init_network_user_branch() {
        let c = with_config(&[("user.network-config", "version: 2\nethernets: {}\n\n"), ("user.meta-data", "a: b")]);
        assert_eq!(ok(NETWORK, &c), "a: b\nversion: 2\nethernets: {}\n");
    }

    #[test]
    fn cloud_init_user_data_with_property_default() {
        let mut c = ctx();
        c.properties.insert("default".into(), "#cloud-config\n{}\n".into());
        let tpl = "{{ config_get(\"cloud-init.user-data\", properties.default) }}\n";
        assert_eq!(ok(tpl, &c), "#cloud-config\n{}\n\n");
        c.config.insert("cloud-init.user-data".into(), "#cloud-config\nhostname: x\r\n".into());
        assert_eq!(ok(tpl, &c), "#cloud-config\nhostname: x\n");
        assert_eq!(ok("[{{ config_get(\"nope\") }}]", &c), "[]");
    }

    #[test]
    fn context_variables() {
        let mut c = with_config(&[("user.foo", "bar"), ("limits", "x")]);
        c.properties.insert("mode".into(), "0644".into());
        let tpl = "{{ trigger }} {{ path }} {{ container.architecture }} {{ container.privileged }} \
                   {{ instance.ephemeral }} {{ config.limits }} {{ config[\"user.foo\"] }} \
                   {{ properties.mode }} {{ properties['mode'] }}";
        assert_eq!(ok(tpl, &c), "create /etc/hostname x86_64 False True x bar 0644 0644");
    }

    #[test]
    fn unknown_variables_render_empty() {
        let tpl = "[{{ nope }}|{{ container.nope }}|{{ config.nope }}|{{ devices.eth0.name }}|{{ trigger.x }}|{{ nope[\"a\"] }}]";
        assert_eq!(ok(tpl, &ctx()), "[|||||]");
        assert_eq!(ok("[{{ config }}]", &ctx()), "[]");
    }

    #[test]
    fn whitespace_control() {
        let c = ctx();
        assert_eq!(ok("a  \n {{- container.name -}} \n\t b", &c), "ac1b");
        assert_eq!(ok("a \n{%- if true -%}\n x \n{%- endif -%}\n b", &c), "axb");
        assert_eq!(ok("a \n{#- note -#}\n b", &c), "ab");
        assert_eq!(ok("a \n{% if true %}\nx\n{% endif %}\nb", &c), "a \n\nx\n\nb");
        assert_eq!(ok("a\n{%- if false %}x{% endif %}\nb", &c), "a\nb");
        assert_eq!(ok("x {{ 1 -}}{{- 2 }} y", &c), "x 12 y");
        assert_eq!(ok("{{- \"a\" -}}", &c), "a");
    }

    #[test]
    fn if_elif_else_chains() {
        let tpl = "{% if trigger == \"copy\" %}copy{% elif trigger == \"start\" %}start\
                   {% elif trigger == \"create\" %}create{% else %}other{% endif %}";
        let mut c = ctx();
        assert_eq!(ok(tpl, &c), "create");
        c.trigger = "start".into();
        assert_eq!(ok(tpl, &c), "start");
        c.trigger = "copy".into();
        assert_eq!(ok(tpl, &c), "copy");
        c.trigger = "x".into();
        assert_eq!(ok(tpl, &c), "other");
        assert_eq!(ok("{% if false %}a{% elif false %}b{% endif %}", &c), "");
    }

    #[test]
    fn nested_ifs() {
        let tpl = "{% if container.ephemeral %}E{% if container.privileged %}P{% else %}U{% endif %}\
                   {% if config.x %}X{% endif %}{% else %}N{% endif %}";
        assert_eq!(ok(tpl, &ctx()), "EU");
        let mut c = with_config(&[("x", "1")]);
        c.privileged = true;
        assert_eq!(ok(tpl, &c), "EPX");
        c.ephemeral = false;
        assert_eq!(ok(tpl, &c), "N");
    }

    #[test]
    fn for_loops() {
        let c = with_config(&[("b", "2"), ("a", "1"), ("user.c", "3")]);
        assert_eq!(ok("{% for k in config %}{{ k }};{% endfor %}", &c), "a;b;user.c;");
        assert_eq!(ok("{% for k, v in config %}{{ k }}={{ v }}\n{% endfor %}", &c), "a=1\nb=2\nuser.c=3\n");
        assert_eq!(ok("{% for k in config %}{{ config[k] }}{% endfor %}", &c), "123");
        assert_eq!(ok("{% for k in config %}{% if k in \"ab\" %}{{ k|upper }}{% endif %}{% endfor %}", &c), "AB");
        assert_eq!(ok("{% for k in nothing %}x{% endfor %}.", &c), ".");
        assert_eq!(ok("{% for ch in \"abc\" %}[{{ ch }}]{% endfor %}", &c), "[a][b][c]");
        assert_eq!(ok("{% for k in container %}{{ k }} {% endfor %}", &c), "architecture ephemeral name privileged ");
        assert_eq!(ok("{% for k in config %}{% for j in config %}x{% endfor %}{% endfor %}", &c), "xxxxxxxxx");
        // The loop variable shadows, then goes out of scope.
        assert_eq!(ok("{% for trigger in config %}{% endfor %}{{ trigger }}", &c), "create");
        let mut p = ctx();
        p.properties.insert("k".into(), "v".into());
        assert_eq!(ok("{% for k, v in properties %}{{ k }}:{{ v }}{% endfor %}", &p), "k:v");
    }

    #[test]
    fn filters() {
        let c = with_config(&[("user.name", "  MiXed  ")]);
        assert_eq!(ok("{{ nope|default:\"x\" }}", &c), "x");
        assert_eq!(ok("{{ config.nope | default : 'y' }}", &c), "y");
        assert_eq!(ok("{{ container.name|default:\"x\" }}", &c), "c1");
        assert_eq!(ok("{{ config[\"user.name\"]|trim|lower }}", &c), "mixed");
        assert_eq!(ok("{{ config[\"user.name\"]|upper }}", &c), "  MIXED  ");
        assert_eq!(ok("{{ nope|default:container.name|upper }}", &c), "C1");
        assert_eq!(ok("{% if config[\"user.name\"]|trim == \"MiXed\" %}y{% endif %}", &c), "y");
        assert_eq!(ok("{{ false|default:0 }}", &c), "0");
    }

    #[test]
    fn literals_and_escapes() {
        let c = ctx();
        assert_eq!(ok(r#"{{ "a\"b\\c\nd\te" }}"#, &c), "a\"b\\c\nd\te");
        assert_eq!(ok(r"{{ 'it\'s' }}", &c), "it's");
        assert_eq!(ok(r#"{{ "}} and %}" }}"#, &c), "}} and %}");
        assert_eq!(ok("{{ 42 }} {{ true }} {{ False }}", &c), "42 True False");
        assert_eq!(ok("{{ \"héllo ✓\"|upper }}", &c), "HÉLLO ✓");
    }

    #[test]
    fn operators() {
        let c = with_config(&[("user.a", "yes"), ("n", "")]);
        let cases = [
            ("true and false", "False"),
            ("true && true", "True"),
            ("false or 1", "True"),
            ("false || 0", "False"),
            ("not true", "False"),
            ("!config.n", "True"),
            ("not (true and false)", "True"),
            ("\"ell\" in \"hello\"", "True"),
            ("\"user.a\" in config", "True"),
            ("\"user.b\" in config", "False"),
            ("\"user.b\" not in config", "True"),
            ("\"name\" in container", "True"),
            ("1 < 2", "True"),
            ("10 >= 9", "True"),
            ("\"b\" > \"a\"", "True"),
            ("2 <= 1", "False"),
            ("1 == 1", "True"),
            ("1 == \"1\"", "False"),
            ("container.privileged == \"false\"", "True"),
            ("container.ephemeral == \"True\"", "True"),
            ("container.privileged != false", "False"),
            ("trigger == \"create\" and (config.n or config[\"user.a\"] == \"yes\")", "True"),
            ("not not config", "True"),
            ("not properties", "True"),
            ("not container", "False"),
        ];
        for (expr, want) in cases {
            assert_eq!(ok(&format!("{{{{ {expr} }}}}"), &c), want, "{expr}");
        }
    }

    #[test]
    fn comments_autoescape_raw() {
        let c = ctx();
        assert_eq!(ok("a{# {{ nope( }} {% if %} #}b", &c), "ab");
        assert_eq!(ok("{% autoescape off %}<{{ \"&\" }}>{% endautoescape %}", &c), "<&>");
        assert_eq!(ok("{% raw %}{{ x }}{% if %}{% endraw %}!", &c), "{{ x }}{% if %}!");
        assert_eq!(ok("a {%- raw -%} \n{{ y }}\n {%- endraw -%} b", &c), "a{{ y }}b");
        assert_eq!(ok("{% raw %}{%endraw%}", &c), "");
    }

    #[test]
    fn error_messages_carry_lines() {
        assert_eq!(msg("a\nb\n{% if true %}\nx\n"), "line 3: unclosed {% if %}");
        assert_eq!(msg("x\n{% endif %}"), "line 2: unexpected {% endif %}");
        assert_eq!(msg("\n\n{{ foo(1) }}"), "line 3: unknown function \"foo\"");
        assert_eq!(msg("{{ x|bogus }}"), "line 1: unknown filter \"bogus\"");
        assert_eq!(msg("a\n{{ x"), "line 2: unclosed {{");
        assert_eq!(
            msg("{% for k in config %}\n{% if true %}\n{% endfor %}"),
            "line 3: unexpected {% endfor %} (the {% if %} from line 2 is still open)"
        );
        assert_eq!(msg("{% bogus %}"), "line 1: unknown tag {% bogus %}");
        assert_eq!(msg("{{ }}"), "line 1: empty expression");
    }

    #[test]
    fn error_lines_point_at_the_tag() {
        assert_eq!(
            msg("{% if true %}\n{% elif ) %}\n{% endif %}"),
            "line 2: bad expression: expected a value, found ')'"
        );
        assert_eq!(
            msg("a\r\nb\r\n{{ x y }}"),
            "line 3: bad expression: expected the end of the expression, found \"y\""
        );
        assert_eq!(
            msg("{# a\nb #}{% raw %}\n{% endraw %}\n{{ (\n1 }}"),
            "line 4: bad expression: expected ')', found the end of the expression"
        );
        assert_eq!(
            msg("{% for x in config %}{% else %}{% endfor %}"),
            "line 1: unexpected {% else %} (the {% for %} from line 1 is still open)"
        );
        assert_eq!(msg("{% if a %}{% endif b %}"), "line 1: unexpected text after {% endif %}");
        assert_eq!(msg("{{ \"é\" ~ 1 }}"), "line 1: bad expression: unexpected character '~'");
    }

    #[test]
    fn syntax_errors() {
        let bad = [
            "{% if %}x{% endif %}",
            "{{ 1 + 2 }}",
            "{{ a == }}",
            "{{ a == b == c }}",
            "{{ (a }}",
            "{{ a) }}",
            "{{ config[\"x\" }}",
            "{{ config. }}",
            "{{ \"abc }}",
            "{{ 'abc\\q' }}",
            "{{ 99999999999999999999 }}",
            "{{ x|default }}",
            "{{ x|lower:\"a\" }}",
            "{{ config_get() }}",
            "{{ config_get(\"a\", \"b\", \"c\") }}",
            "{{ config_get(\"a\" \"b\") }}",
            "{{ config.get(\"a\") }}",
            "{% if true %}a{% else %}b{% else %}c{% endif %}",
            "{% if true %}a{% else %}b{% elif x %}c{% endif %}",
            "{% endfor %}",
            "{% else %}",
            "{% elif true %}",
            "{% endraw %}",
            "{% for %}{% endfor %}",
            "{% for x %}{% endfor %}",
            "{% for 1 in config %}{% endfor %}",
            "{% for x in config %}",
            "{% for x in config %}{% endif %}",
            "{% for x in true %}{% endfor %}",
            "{% for x in 3 %}{% endfor %}",
            "{% if true %}{% endif extra %}",
            "{% autoescape %}{% endautoescape %}",
            "{% autoescape off %}",
            "{% raw %}never closed",
            "{# never closed",
            "{% %}",
            "{{ @ }}",
            "{{ a $ b }}",
        ];
        for t in bad {
            let e = err(t);
            assert!(e.to_string().starts_with("line 1: "), "{t:?}: {e}");
        }
        assert!(matches!(err("{{ nope() }}"), TemplateError::UnknownFunction { .. }));
        assert!(matches!(err("{% for x in true %}{% endfor %}"), TemplateError::Syntax { .. }));
        // Unknown functions fail even in branches that are never taken.
        assert!(matches!(err("{% if false %}{{ exec(\"rm\") }}{% endif %}"), TemplateError::UnknownFunction { .. }));
    }

    #[test]
    fn depth_limits() {
        let nested = |n: usize| format!("{}x{}", "{% if true %}".repeat(n), "{% endif %}".repeat(n));
        assert_eq!(ok(&nested(64), &ctx()), "x");
        assert_eq!(err(&nested(65)), TemplateError::TooDeep { line: 1 });
        assert!(matches!(err(&nested(100_000)), TemplateError::TooDeep { .. }));
        let fors = format!("{}x{}", "{% for a in \"a\" %}".repeat(70), "{% endfor %}".repeat(70));
        assert!(matches!(err(&fors), TemplateError::TooDeep { .. }));
        let parens = |n: usize| format!("{{{{ {}1{} }}}}", "(".repeat(n), ")".repeat(n));
        assert_eq!(ok(&parens(60), &ctx()), "1");
        assert!(matches!(err(&parens(100_000)), TemplateError::TooDeep { .. }));
        assert!(matches!(err(&format!("{{{{ {}1 }}}}", "not ".repeat(100_000))), TemplateError::TooDeep { .. }));
        assert!(matches!(err(&format!("{{{{ {}1 }}}}", "!".repeat(100_000))), TemplateError::TooDeep { .. }));
        let index = format!("{{{{ {}\"k\"{} }}}}", "config[".repeat(1000), "]".repeat(1000));
        assert!(matches!(err(&index), TemplateError::TooDeep { .. }));
        let calls = format!("{{{{ {}\"k\"{} }}}}", "config_get(".repeat(1000), ")".repeat(1000));
        assert!(matches!(err(&calls), TemplateError::TooDeep { .. }));
        let filters = format!("{{{{ {}\"k\" }}}}", "x|default:".repeat(1000));
        assert!(render(&filters, &ctx()).is_ok() || matches!(err(&filters), TemplateError::Syntax { .. }));
        // Long flat chains are fine: they do not nest.
        let chain = format!("{{{{ {}true }}}}", "false or ".repeat(10_000));
        assert_eq!(ok(&chain, &ctx()), "True");
        let path = format!("{{{{ config{} }}}}", ".a".repeat(10_000));
        assert_eq!(ok(&path, &ctx()), "");
    }

    #[test]
    fn output_limit() {
        let big = with_config(&[("big", &"x".repeat(MAX_OUTPUT + 1))]);
        assert_eq!(render("{{ config.big }}", &big), Err(TemplateError::OutputTooLarge));
        let fits = with_config(&[("big", &"x".repeat(MAX_OUTPUT))]);
        assert_eq!(ok("{{ config.big }}", &fits).len(), MAX_OUTPUT);
        let keys: Vec<(String, String)> = (0..100).map(|i| (format!("k{i:03}"), String::new())).collect();
        let mut c = ctx();
        c.config = keys.into_iter().collect();
        let tpl = "{% for a in config %}{% for b in config %}{% for c in config %}0123456789{% endfor %}{% endfor %}{% endfor %}";
        assert_eq!(render(tpl, &c), Err(TemplateError::OutputTooLarge));
        assert_eq!(msg_with(tpl, &c), "output exceeds 1 MiB");
    }

    fn msg_with(template: &str, c: &Context) -> String {
        render(template, c).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn work_budget() {
        let mut c = ctx();
        c.config = (0..10).map(|i| (format!("k{i}"), String::new())).collect();
        let tpl = format!("{}{}", "{% for a in config %}".repeat(8), "{% endfor %}".repeat(8));
        assert_eq!(render(&tpl, &c), Err(TemplateError::TooExpensive));
        let big = with_config(&[("big", &"x".repeat(MAX_OUTPUT))]);
        let tpl = "{% for a in config %}{% for b in \"0123456789\" %}{% for c in \"0123456789\" %}\
                   {% if config.big|lower|upper|trim %}{% endif %}{% endfor %}{% endfor %}{% endfor %}";
        assert_eq!(render(tpl, &big), Err(TemplateError::TooExpensive));
    }

    /// Deterministic xorshift generator, so the fuzz test is reproducible.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn fuzz_never_panics() {
        const PIECES: &[&str] = &[
            "{{",
            "}}",
            "{%",
            "%}",
            "{#",
            "#}",
            "-",
            " ",
            "\n",
            "if ",
            "elif ",
            "else",
            "endif",
            "for ",
            " in ",
            "endfor",
            "raw",
            "endraw",
            "autoescape off",
            "endautoescape",
            "x",
            "k, v",
            "config",
            "container",
            ".name",
            ".",
            "[",
            "]",
            "(",
            ")",
            "\"",
            "'",
            "\\",
            "|",
            "default:",
            "lower",
            "trim",
            "==",
            "!=",
            "<",
            ">=",
            "not ",
            " and ",
            " or ",
            "!",
            "&&",
            "||",
            "config_get(",
            ",",
            "\"user.a\"",
            "'b'",
            "1",
            "99999999999999999999999",
            "true",
            "False",
            "é",
            "✓",
            "{",
            "}",
            "%",
            "#",
            "\t",
            "properties",
            "nope(",
        ];
        let seeds = [
            NETWORK,
            "{% for k, v in config %}{{ k|upper }}={{ v|default:\"-\" }}\n{% endfor %}",
            "{% if a %}{% elif b %}{% else %}{{ c }}{% endif %}",
            "{% raw %}{{ x }}{% endraw %}{# c #}{{- 'q' -}}",
        ];
        let mut c = with_config(&[("user.a", "1"), ("b", "two"), ("user.network-config", "n")]);
        c.properties.insert("default".into(), "d".into());
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..20_000 {
            let input = if round % 2 == 0 {
                (0..rng.below(40)).map(|_| PIECES[rng.below(PIECES.len())]).collect::<String>()
            } else {
                // Mutate a real template: delete, duplicate or insert at char boundaries.
                let mut chars: Vec<char> = seeds[rng.below(seeds.len())].chars().collect();
                for _ in 0..=rng.below(4) {
                    if chars.is_empty() {
                        break;
                    }
                    let at = rng.below(chars.len());
                    match rng.below(3) {
                        0 => {
                            chars.remove(at);
                        }
                        1 => chars.insert(at, chars[rng.below(chars.len())]),
                        _ => chars.splice(at..at, PIECES[rng.below(PIECES.len())].chars()).for_each(drop),
                    }
                }
                chars.into_iter().collect()
            };
            match render(&input, &c) {
                Ok(out) => assert!(out.len() <= MAX_OUTPUT),
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
    }

    #[test]
    fn errors_are_comparable_and_clonable() {
        let e = err("{% if x %}");
        assert_eq!(e.clone(), e);
        assert_eq!(short(&"y".repeat(100)).len(), 43);
        assert!(msg(&format!("{{% {} %}}", "z".repeat(1000))).len() < 100);
    }
}
