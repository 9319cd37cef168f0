//! Tests of the template engine, through the public [`render`] API.

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
    c.config = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
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
        ok(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{{ container.name }}\n",
            &ctx()
        ),
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
    let c = with_config(&[
        ("user.network-config", "version: 2\nethernets: {}\n\n"),
        ("user.meta-data", "a: b"),
    ]);
    assert_eq!(ok(NETWORK, &c), "a: b\nversion: 2\nethernets: {}\n");
}

#[test]
fn cloud_init_user_data_with_property_default() {
    let mut c = ctx();
    c.properties
        .insert("default".into(), "#cloud-config\n{}\n".into());
    let tpl = "{{ config_get(\"cloud-init.user-data\", properties.default) }}\n";
    assert_eq!(ok(tpl, &c), "#cloud-config\n{}\n\n");
    c.config.insert(
        "cloud-init.user-data".into(),
        "#cloud-config\nhostname: x\r\n".into(),
    );
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
    assert_eq!(
        ok(tpl, &c),
        "create /etc/hostname x86_64 False True x bar 0644 0644"
    );
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
    assert_eq!(
        ok("a \n{% if true %}\nx\n{% endif %}\nb", &c),
        "a \n\nx\n\nb"
    );
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
    assert_eq!(
        ok("{% for k in config %}{{ k }};{% endfor %}", &c),
        "a;b;user.c;"
    );
    assert_eq!(
        ok("{% for k, v in config %}{{ k }}={{ v }}\n{% endfor %}", &c),
        "a=1\nb=2\nuser.c=3\n"
    );
    assert_eq!(
        ok("{% for k in config %}{{ config[k] }}{% endfor %}", &c),
        "123"
    );
    assert_eq!(
        ok(
            "{% for k in config %}{% if k in \"ab\" %}{{ k|upper }}{% endif %}{% endfor %}",
            &c
        ),
        "AB"
    );
    assert_eq!(ok("{% for k in nothing %}x{% endfor %}.", &c), ".");
    assert_eq!(
        ok("{% for ch in \"abc\" %}[{{ ch }}]{% endfor %}", &c),
        "[a][b][c]"
    );
    assert_eq!(
        ok("{% for k in container %}{{ k }} {% endfor %}", &c),
        "architecture ephemeral name privileged "
    );
    assert_eq!(
        ok(
            "{% for k in config %}{% for j in config %}x{% endfor %}{% endfor %}",
            &c
        ),
        "xxxxxxxxx"
    );
    // The loop variable shadows, then goes out of scope.
    assert_eq!(
        ok("{% for trigger in config %}{% endfor %}{{ trigger }}", &c),
        "create"
    );
    let mut p = ctx();
    p.properties.insert("k".into(), "v".into());
    assert_eq!(
        ok(
            "{% for k, v in properties %}{{ k }}:{{ v }}{% endfor %}",
            &p
        ),
        "k:v"
    );
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
    assert_eq!(
        ok(
            "{% if config[\"user.name\"]|trim == \"MiXed\" %}y{% endif %}",
            &c
        ),
        "y"
    );
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
        (
            "trigger == \"create\" and (config.n or config[\"user.a\"] == \"yes\")",
            "True",
        ),
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
    assert_eq!(
        ok("{% autoescape off %}<{{ \"&\" }}>{% endautoescape %}", &c),
        "<&>"
    );
    assert_eq!(
        ok("{% raw %}{{ x }}{% if %}{% endraw %}!", &c),
        "{{ x }}{% if %}!"
    );
    assert_eq!(
        ok("a {%- raw -%} \n{{ y }}\n {%- endraw -%} b", &c),
        "a{{ y }}b"
    );
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
    assert_eq!(
        msg("{% if a %}{% endif b %}"),
        "line 1: unexpected text after {% endif %}"
    );
    assert_eq!(
        msg("{{ \"é\" ~ 1 }}"),
        "line 1: bad expression: unexpected character '~'"
    );
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
    assert!(matches!(
        err("{{ nope() }}"),
        TemplateError::UnknownFunction { .. }
    ));
    assert!(matches!(
        err("{% for x in true %}{% endfor %}"),
        TemplateError::Syntax { .. }
    ));
    // Unknown functions fail even in branches that are never taken.
    assert!(matches!(
        err("{% if false %}{{ exec(\"rm\") }}{% endif %}"),
        TemplateError::UnknownFunction { .. }
    ));
}

#[test]
fn depth_limits() {
    let nested = |n: usize| format!("{}x{}", "{% if true %}".repeat(n), "{% endif %}".repeat(n));
    assert_eq!(ok(&nested(64), &ctx()), "x");
    assert_eq!(err(&nested(65)), TemplateError::TooDeep { line: 1 });
    assert!(matches!(
        err(&nested(100_000)),
        TemplateError::TooDeep { .. }
    ));
    let fors = format!(
        "{}x{}",
        "{% for a in \"a\" %}".repeat(70),
        "{% endfor %}".repeat(70)
    );
    assert!(matches!(err(&fors), TemplateError::TooDeep { .. }));
    let parens = |n: usize| format!("{{{{ {}1{} }}}}", "(".repeat(n), ")".repeat(n));
    assert_eq!(ok(&parens(60), &ctx()), "1");
    assert!(matches!(
        err(&parens(100_000)),
        TemplateError::TooDeep { .. }
    ));
    assert!(matches!(
        err(&format!("{{{{ {}1 }}}}", "not ".repeat(100_000))),
        TemplateError::TooDeep { .. }
    ));
    assert!(matches!(
        err(&format!("{{{{ {}1 }}}}", "!".repeat(100_000))),
        TemplateError::TooDeep { .. }
    ));
    let index = format!(
        "{{{{ {}\"k\"{} }}}}",
        "config[".repeat(1000),
        "]".repeat(1000)
    );
    assert!(matches!(err(&index), TemplateError::TooDeep { .. }));
    let calls = format!(
        "{{{{ {}\"k\"{} }}}}",
        "config_get(".repeat(1000),
        ")".repeat(1000)
    );
    assert!(matches!(err(&calls), TemplateError::TooDeep { .. }));
    let filters = format!("{{{{ {}\"k\" }}}}", "x|default:".repeat(1000));
    assert!(
        render(&filters, &ctx()).is_ok() || matches!(err(&filters), TemplateError::Syntax { .. })
    );
    // Long flat chains are fine: they do not nest.
    let chain = format!("{{{{ {}true }}}}", "false or ".repeat(10_000));
    assert_eq!(ok(&chain, &ctx()), "True");
    let path = format!("{{{{ config{} }}}}", ".a".repeat(10_000));
    assert_eq!(ok(&path, &ctx()), "");
}

#[test]
fn output_limit() {
    let big = with_config(&[("big", &"x".repeat(MAX_OUTPUT + 1))]);
    assert_eq!(
        render("{{ config.big }}", &big),
        Err(TemplateError::OutputTooLarge)
    );
    let fits = with_config(&[("big", &"x".repeat(MAX_OUTPUT))]);
    assert_eq!(ok("{{ config.big }}", &fits).len(), MAX_OUTPUT);
    let keys: Vec<(String, String)> = (0..100)
        .map(|i| (format!("k{i:03}"), String::new()))
        .collect();
    let mut c = ctx();
    c.config = keys.into_iter().collect();
    let tpl = "{% for a in config %}{% for b in config %}{% for c in config %}0123456789{% endfor %}{% endfor %}{% endfor %}";
    assert_eq!(render(tpl, &c), Err(TemplateError::OutputTooLarge));
    assert_eq!(msg_with(tpl, &c), "output exceeds 1 MiB");
}

fn msg_with(template: &str, c: &Context) -> String {
    render(template, c)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
}

#[test]
fn work_budget() {
    let mut c = ctx();
    c.config = (0..10).map(|i| (format!("k{i}"), String::new())).collect();
    let tpl = format!(
        "{}{}",
        "{% for a in config %}".repeat(8),
        "{% endfor %}".repeat(8)
    );
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
            (0..rng.below(40))
                .map(|_| PIECES[rng.below(PIECES.len())])
                .collect::<String>()
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
                    _ => chars
                        .splice(at..at, PIECES[rng.below(PIECES.len())].chars())
                        .for_each(drop),
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
