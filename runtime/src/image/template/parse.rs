//! Parsing: template tokens into a tree of nodes, and expressions into [`Expr`] trees.

use super::eval::Value;
use super::lex::{T, Tok, lex_expr};
use super::{MAX_DEPTH, Res, TemplateError, short, syntax};

/// Parses a whole template's tokens into its nodes.
pub(super) fn parse(toks: Vec<Tok>) -> Res<Vec<Node>> {
    let mut parser = Parser {
        toks: toks.into_iter(),
    };
    let (nodes, end) = parser.nodes(0)?;
    if let Some(end) = end {
        return Err(syntax(end.line, format!("unexpected {{% {} %}}", end.kw)));
    }
    Ok(nodes)
}

/// A parsed template node.
pub(super) enum Node {
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

/// The block parser, over a template's tokens.
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
                    let end = End {
                        kw: kw.to_owned(),
                        rest: rest.to_owned(),
                        line,
                    };
                    return Ok((nodes, Some(end)));
                }
                "" => return Err(syntax(line, "empty {% %} tag")),
                _ => return Err(syntax(line, format!("unknown tag {{% {} %}}", short(kw)))),
            }
        }
        Ok((nodes, None))
    }

    /// Parses the body of a block opened on `line`, which must end with one of `ends`.
    fn block(
        &mut self,
        depth: usize,
        line: usize,
        what: &str,
        ends: &[&str],
    ) -> Res<(Vec<Node>, End)> {
        if depth >= MAX_DEPTH {
            return Err(TemplateError::TooDeep { line });
        }
        match self.nodes(depth + 1)? {
            (_, None) => Err(syntax(line, format!("unclosed {{% {what} %}}"))),
            (_, Some(end)) if !ends.contains(&end.kw.as_str()) => {
                let open = format!("the {{% {what} %}} from line {line} is still open");
                Err(syntax(
                    end.line,
                    format!("unexpected {{% {} %}} ({open})", end.kw),
                ))
            }
            (_, Some(end)) if end.kw != "elif" && !end.rest.is_empty() => Err(syntax(
                end.line,
                format!("unexpected text after {{% {} %}}", end.kw),
            )),
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
                    return Ok(Node::If(
                        branches,
                        self.block(depth, line, "if", &["endif"])?.0,
                    ));
                }
                _ => return Ok(Node::If(branches, Vec::new())),
            }
        }
    }

    fn for_block(&mut self, rest: &str, line: usize, depth: usize) -> Res<Node> {
        let mut p = ExprParser {
            toks: lex_expr(rest, line)?,
            pos: 0,
            line,
        };
        let key = p.ident("a loop variable")?;
        let value = if p.eat(",") {
            Some(p.ident("a second loop variable")?)
        } else {
            None
        };
        if !p.eat("in") {
            return Err(p.unexpected("'in' ({% for x in expr %})"));
        }
        let iter = p.or(0)?;
        p.finish()?;
        let body = self.block(depth, line, "for", &["endfor"])?.0;
        Ok(Node::For {
            key,
            value,
            iter,
            body,
            line,
        })
    }
}

// Expressions.

/// The comparison operators, as `Op` tokens (`not in` is recognised separately).
const COMPARISONS: [&str; 7] = ["==", "!=", "<", "<=", ">", ">=", "in"];

/// A filter applied with `|`.
pub(super) enum Filter {
    Default(Expr),
    Lower,
    Upper,
    Trim,
}

/// One `.name` or `[expr]` lookup.
pub(super) enum Step {
    Attr(String),
    Index(Expr),
}

/// A parsed expression. `and`/`or` chains and lookups are flat, so depth stays bounded.
pub(super) enum Expr {
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

/// Parses the expression `src`, from the tag on `line`.
fn parse_expr(src: &str, line: usize) -> Res<Expr> {
    let mut p = ExprParser {
        toks: lex_expr(src, line)?,
        pos: 0,
        line,
    };
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
        syntax(
            self.line,
            format!("bad expression: expected {wanted}, found {found}"),
        )
    }

    fn expect(&mut self, op: &str) -> Res<()> {
        if self.eat(op) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("'{op}'")))
        }
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
        if self.pos < self.toks.len() {
            Err(self.unexpected("the end of the expression"))
        } else {
            Ok(())
        }
    }

    fn deeper(&self, d: usize) -> Res<usize> {
        if d >= MAX_DEPTH {
            Err(TemplateError::TooDeep { line: self.line })
        } else {
            Ok(d + 1)
        }
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
        Ok(if all.len() == 1 {
            all.swap_remove(0)
        } else {
            make(all)
        })
    }

    fn or(&mut self, d: usize) -> Res<Expr> {
        self.chain(
            d,
            "or",
            |p, d| p.chain(d, "and", Self::not, Expr::And),
            Expr::Or,
        )
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
            let arg = if self.eat(":") {
                Some(self.postfix(self.deeper(d)?)?)
            } else {
                None
            };
            filters.push(match (name.as_str(), arg) {
                ("default", Some(arg)) => Filter::Default(arg),
                ("default", None) => {
                    return Err(syntax(
                        self.line,
                        "filter default needs an argument: |default:\"x\"",
                    ));
                }
                ("lower" | "upper" | "trim", Some(_)) => {
                    return Err(syntax(
                        self.line,
                        format!("filter {name} takes no argument"),
                    ));
                }
                ("lower", None) => Filter::Lower,
                ("upper", None) => Filter::Upper,
                ("trim", None) => Filter::Trim,
                _ => {
                    return Err(TemplateError::UnknownFilter {
                        line: self.line,
                        name: short(&name),
                    });
                }
            });
        }
        Ok(if filters.is_empty() {
            base
        } else {
            Expr::Filter(Box::new(base), filters)
        })
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
                return Ok(if steps.is_empty() {
                    base
                } else {
                    Expr::Path(Box::new(base), steps)
                });
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
            return Err(TemplateError::UnknownFunction {
                line: self.line,
                name: short(name),
            });
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
            _ => Err(syntax(
                self.line,
                "config_get takes a key and an optional default",
            )),
        }
    }
}
