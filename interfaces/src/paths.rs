//! Object paths of the D-Bus API (a contract): `/org/berth/Berth1/container/<label>`,
//! `/org/berth/Berth1/image/<sha256>`, where `<label>` escapes every byte outside
//! `[A-Za-z0-9]` as `_xx` (lowercase hex), as systemd does.

/// The Manager's path.
pub const ROOT: &str = "/org/berth/Berth1";

/// Escapes a name into one path label.
pub fn escape_label(name: &str) -> String {
    if name.is_empty() {
        return "_".to_string();
    }
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// Reverses [`escape_label`]; None for a malformed label.
pub fn unescape_label(label: &str) -> Option<String> {
    if label == "_" {
        return Some(String::new());
    }
    let b = label.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'_' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A container's object path.
pub fn container(name: &str) -> String {
    format!("{ROOT}/container/{}", escape_label(name))
}

/// A snapshot's object path.
pub fn snapshot(container_name: &str, name: &str) -> String {
    format!(
        "{}/snapshot/{}",
        container(container_name),
        escape_label(name)
    )
}

/// An operation's object path.
pub fn operation(id: u64) -> String {
    format!("{ROOT}/operation/{id}")
}

/// An image's object path.
pub fn image(fingerprint: &str) -> String {
    format!("{ROOT}/image/{}", escape_label(fingerprint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_escape_like_systemd() {
        assert_eq!(container("web-1"), "/org/berth/Berth1/container/web_2d1");
        assert_eq!(
            snapshot("web-1", "snap0"),
            "/org/berth/Berth1/container/web_2d1/snapshot/snap0"
        );
        assert_eq!(escape_label("a.b/c"), "a_2eb_2fc");
        assert_eq!(unescape_label("web_2d1").as_deref(), Some("web-1"));
        assert_eq!(unescape_label("bad_2"), None);
        for n in ["x", "a-b-c", "ÿ", ""] {
            assert_eq!(unescape_label(&escape_label(n)).as_deref(), Some(n));
        }
    }
}
