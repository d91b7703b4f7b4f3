#![allow(clippy::unwrap_used)]

use super::*;
use crate::proxy::table::Port;

#[test]
fn counts_render_per_port_and_direction() {
    let shared = Shared::new(10, std::time::Duration::from_secs(10));
    let stats = &shared.stats;
    stats.accepted(Port::Primary);
    stats.accepted(Port::Primary);
    stats.accepted(Port::ReadOnly);
    stats.refused(Port::ReadOnly, Refusal::NoRoute);
    stats.cut(Port::Primary);
    stats.traffic.to_backend.fetch_add(10, Ordering::Relaxed);
    stats.traffic.to_client.fetch_add(25, Ordering::Relaxed);
    let text = render("main", "p1", &shared, &Table::stopped(4, "test"));
    let line = |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} missing:\n{text}"))
            .to_string()
    };
    let me = "cluster=\"main\",id=\"p1\"";
    assert_eq!(line(&format!("pgwarden_proxy_routing{{{me}}}")), "0");
    assert_eq!(line(&format!("pgwarden_proxy_generation{{{me}}}")), "4");
    assert_eq!(
        line(&format!("pgwarden_proxy_max_connections{{{me}}}")),
        "10"
    );
    assert_eq!(
        line(&format!(
            "pgwarden_proxy_connections_total{{{me},port=\"primary\"}}"
        )),
        "2"
    );
    assert_eq!(
        line(&format!(
            "pgwarden_proxy_connections_total{{{me},port=\"read-only\"}}"
        )),
        "1"
    );
    assert_eq!(
        line(&format!(
            "pgwarden_proxy_connections_refused_total{{{me},port=\"read-only\",reason=\"no_route\"}}"
        )),
        "1"
    );
    assert_eq!(
        line(&format!(
            "pgwarden_proxy_connections_refused_total{{{me},port=\"primary\",reason=\"max_connections\"}}"
        )),
        "0"
    );
    assert_eq!(
        line(&format!(
            "pgwarden_proxy_connections_cut_total{{{me},port=\"primary\"}}"
        )),
        "1"
    );
    assert_eq!(
        line(&format!(
            "pgwarden_proxy_bytes_total{{{me},direction=\"client_to_server\"}}"
        )),
        "10"
    );
    assert_eq!(
        line(&format!(
            "pgwarden_proxy_bytes_total{{{me},direction=\"server_to_client\"}}"
        )),
        "25"
    );
}
