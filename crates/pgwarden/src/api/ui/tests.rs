use std::collections::BTreeMap;

use pgwarden_core::{KeeperReport, Lsn, ObservedRole, Spec, Status};

use super::*;

fn report(uid: &str, role: ObservedRole, lsn: u64) -> KeeperReport {
    let mut r = KeeperReport::new(uid, "127.0.0.1", 5432, "http://127.0.0.1:8008");
    r.role = role;
    r.healthy = true;
    r.timeline = 1;
    match role {
        ObservedRole::Primary => r.current_lsn = Some(Lsn(lsn)),
        _ => r.replay_lsn = Some(Lsn(lsn)),
    }
    r
}

fn standby_of(follow: &str) -> Assignment {
    Assignment::Standby {
        follow: follow.into(),
        host: "127.0.0.1".into(),
        port: 5432,
    }
}

/// a primary at 1000, b streaming from a at 400, c cascading from b with no
/// report (gone).
fn snapshot() -> Snapshot {
    let mut status = Status {
        generation: 3,
        primary: Some("a".into()),
        timeline: 1,
        ..Status::default()
    };
    status.members.insert("a".into(), Assignment::Primary);
    status.members.insert("b".into(), standby_of("a"));
    status.members.insert("c".into(), standby_of("b"));
    Snapshot {
        spec: Some(Spec::default()),
        status,
        status_revision: 1,
        keepers: BTreeMap::from([
            ("a".into(), report("a", ObservedRole::Primary, 1000)),
            ("b".into(), report("b", ObservedRole::Standby, 400)),
        ]),
        primary_holder: Some("a".into()),
        proxies: BTreeMap::new(),
        spec_problem: None,
        status_problem: None,
    }
}

#[test]
fn a_sample_holds_each_standby_with_a_known_lag() {
    let s = sample("main", &snapshot(), 42);
    assert_eq!(s.at_ms, 42);
    assert_eq!(s.lag_bytes, BTreeMap::from([("b".to_string(), 600)]));
}

#[test]
fn without_a_primary_position_the_sample_is_empty_not_zero() {
    let mut snap = snapshot();
    snap.keepers.remove("a");
    assert!(sample("main", &snap, 1).lag_bytes.is_empty());
}

#[test]
fn upstreams_name_whom_each_standby_follows() {
    assert_eq!(
        upstreams(&snapshot()),
        BTreeMap::from([("b".into(), "a".into()), ("c".into(), "b".into())])
    );
}

#[test]
fn since_is_milliseconds_or_a_clear_error() {
    assert_eq!(parse_since(None), Ok(None));
    assert_eq!(parse_since(Some("since=12")), Ok(Some(12)));
    let e = parse_since(Some("since=yesterday")).unwrap_err();
    assert!(e.contains("invalid since \"yesterday\""), "{e}");
}

#[test]
fn the_routes_are_exact() {
    for p in ["/ui", "/ui/", "/ui/app.js", "/ui/style.css", "/ui/data"] {
        assert!(is_route(p), "{p}");
    }
    for p in ["/uix", "/ui/data/", "/ui/../cluster", "/ui/index.html"] {
        assert!(!is_route(p), "{p}");
    }
}

#[test]
fn the_page_loads_nothing_from_elsewhere() {
    // The one absolute URL allowed is the SVG namespace, which is a name,
    // not a fetch.
    for (name, text) in [
        ("index.html", PAGE),
        ("app.js", SCRIPT),
        ("style.css", STYLE),
    ] {
        let stripped = text.replace("\"http://www.w3.org/2000/svg\"", "");
        for needle in ["http://", "https://", "//cdn", "@import", "url(http"] {
            assert!(!stripped.contains(needle), "{name} contains {needle}");
        }
    }
    assert!(PAGE.contains("src=\"/ui/app.js\""));
    assert!(PAGE.contains("href=\"/ui/style.css\""));
}

#[test]
fn store_strings_never_become_markup() {
    // Everything from the store goes through textContent; the content
    // security policy forbids inline script besides.
    for forbidden in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!SCRIPT.contains(forbidden), "app.js uses {forbidden}");
    }
    assert!(
        !PAGE.contains("<script>"),
        "inline script would break the policy"
    );
    assert!(
        !PAGE.contains("style=\""),
        "inline style would break the policy"
    );
    assert!(POLICY.contains("script-src 'self'"));
}
