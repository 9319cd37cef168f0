//! The polkit action ids used in code are exactly those of polkit/org.berth.Berth1.policy,
//! with the defaults docs/api.md promises; every error name is documented.

use berth_interfaces::auth::ALL_ACTIONS;
use berth_interfaces::errors::{Name, PREFIX};
use std::collections::BTreeMap;

fn repo_file(rel: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(rel),
    )
    .unwrap()
}

/// action id → (allow_any, allow_inactive, allow_active)
fn policy_actions() -> BTreeMap<String, (String, String, String)> {
    let xml = repo_file("polkit/org.berth.Berth1.policy");
    let mut out = BTreeMap::new();
    for chunk in xml.split("<action id=\"").skip(1) {
        let id = chunk.split('"').next().unwrap().to_string();
        let get = |tag: &str| {
            let open = format!("<{tag}>");
            let start = chunk
                .find(&open)
                .map(|i| i + open.len())
                .unwrap_or_else(|| panic!("{id}: no {tag}"));
            chunk[start..].split('<').next().unwrap().trim().to_string()
        };
        let defaults = (get("allow_any"), get("allow_inactive"), get("allow_active"));
        out.insert(id, defaults);
    }
    out
}

#[test]
fn polkit_ids_in_code_match_the_policy() {
    let policy = policy_actions();
    let in_policy: Vec<&str> = policy.keys().map(String::as_str).collect();
    let mut in_code = ALL_ACTIONS.to_vec();
    in_code.sort();
    assert_eq!(in_code, in_policy);
}

#[test]
fn policy_defaults_are_the_documented_ones() {
    let p = policy_actions();
    let d = |a: &str| p[&format!("org.berth.Berth1.{a}")].clone();
    let t = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    for a in [
        "manage-containers",
        "create-container",
        "delete-container",
        "snapshot",
    ] {
        assert_eq!(
            d(a),
            t("auth_admin", "auth_admin", "auth_admin_keep"),
            "{a}"
        );
    }
    for a in ["checkpoint", "set-privileged-config"] {
        assert_eq!(d(a), t("auth_admin", "auth_admin", "auth_admin"), "{a}");
    }
    for a in ["set-config", "manage-images", "manage-profiles", "exec"] {
        assert_eq!(d(a).2, "auth_admin_keep", "{a}");
    }
    assert_eq!(d("cancel-operation"), t("auth_admin", "auth_admin", "yes"));
}

#[test]
fn every_error_name_is_documented() {
    let doc = repo_file("docs/api.md");
    for n in Name::ALL {
        let full = format!("{PREFIX}.{}", n.as_str());
        assert!(doc.contains(n.as_str()), "{full} is not in docs/api.md");
    }
}
