//! Lexing: the template into text and tags (with whitespace control and `{% raw %}`), and
//! an expression's source into tokens.

use super::{Res, short, syntax};

/// Literal text, or an output (`{{ }}`) or block (`{% %}`) tag's inner text and line.
pub(super) enum Tok {
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
pub(super) fn lex(src: &str) -> Res<Vec<Tok>> {
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
    s.as_bytes().windows(2).enumerate().find_map(|(i, w)| {
        (w[0] == b'{' && matches!(w[1], b'{' | b'%' | b'#')).then_some((i, w[1]))
    })
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

// Expression tokens.

/// An expression token; operators, punctuation and `and`/`or`/`not`/`in` are `Op`.
#[derive(Clone, PartialEq)]
pub(super) enum T {
    Str(String),
    Int(i64),
    Ident(String),
    Op(&'static str),
}

/// Operators, longest first; `&&`, `||` and `!` are spellings of `and`, `or`, `not`.
const OPS: [&str; 17] = [
    "==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "|", "(", ")", "[", "]", ".", ",", ":",
];
const KEYWORDS: [&str; 4] = ["and", "or", "not", "in"];

/// Splits an expression's source into tokens.
pub(super) fn lex_expr(src: &str, line: usize) -> Res<Vec<T>> {
    let (mut out, mut i) = (Vec::new(), 0);
    while let Some(c) = src[i..].chars().next() {
        let rest = &src[i..];
        let word = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '_')
                .len();
        let (tok, len) = if c.is_whitespace() {
            i += c.len_utf8();
            continue;
        } else if c == '"' || c == '\'' {
            let (s, len) = lex_string(rest, line)?;
            (T::Str(s), len)
        } else if c.is_ascii_digit() {
            let digits =
                &rest[..rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len()];
            let n = digits
                .parse()
                .map_err(|_| syntax(line, format!("integer {} is too large", short(digits))))?;
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
            return Err(syntax(
                line,
                format!("bad expression: unexpected character {c:?}"),
            ));
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
                    return Err(syntax(
                        line,
                        format!("bad expression: unknown escape \\{e}"),
                    ));
                }
                None => break,
            },
            c if c == quote => return Ok((value, at + 1)),
            c => value.push(c),
        }
    }
    Err(syntax(line, "bad expression: unterminated string"))
}
