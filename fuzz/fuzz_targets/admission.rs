//! Gate 1's header parsers (`herald_node::admission`): `bearer_token` (Authorization),
//! `cookie_value` (Cookie), `origin_matches` (the allowed-origins list) and `same_origin` (the
//! Origin against Host check for cookie-borne credentials).
//!
//! Input: `a \n b \n c`. Invariants: a bearer token is a non-empty run without blanks taken
//! from the value, and any such token round-trips through `Bearer <token>` in any case of the
//! scheme; a cookie value comes from a pair named exactly `name` and round-trips; origin
//! equality is an equivalence (reflexive for anything with a scheme, symmetric, transitive)
//! and ignores ASCII case and explicit default ports, never the scheme.

#![no_main]

use herald_node::admission::{bearer_token, cookie_value, origin_matches, same_origin};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(text) = herald_fuzz::text(data) else {
        return;
    };
    let [a, b, c] = herald_fuzz::fields::<3>(text);

    // Authorization.
    if let Some(t) = bearer_token(a) {
        // The credentials after the scheme, blanks around them removed; an empty or blank-
        // containing value is returned as is and refused later by the JWT check.
        assert!(!t.starts_with([' ', '\t']) && !t.ends_with([' ', '\t']) && a.contains(t));
        assert!(
            a.trim_start_matches([' ', '\t'])
                .to_ascii_lowercase()
                .starts_with("bearer")
        );
        if !t.is_empty() {
            assert_eq!(bearer_token(&format!("Bearer {t}")), Some(t));
        }
    }
    if !a.is_empty() && !a.contains([' ', '\t']) {
        assert_eq!(bearer_token(&format!("bEaReR \t{a} ")), Some(a));
        assert_eq!(bearer_token(&format!("Basic {a}")), None);
    }

    // Cookie: `a` is the cookie name, `b` and `c` two Cookie header values.
    if let Some(v) = cookie_value(&[b, c], a) {
        // "The first non-empty match wins": an empty value is never a credential.
        assert!(!v.is_empty() && !v.contains(';'), "{v:?}");
        let named = [b, c]
            .iter()
            .flat_map(|h| h.split(';'))
            .any(|pair| pair.trim().split_once('=').is_some_and(|(k, _)| k == a));
        assert!(named, "{v:?} came from a pair not named {a:?}");
    }
    let token = |s: &str| {
        !s.is_empty() && !s.contains(|ch: char| ch.is_whitespace() || ";=\",".contains(ch))
    };
    if token(a) && token(b) && a != "other" {
        let header = format!("other=1; {a}={b}; {a}=later");
        assert_eq!(cookie_value(&[header.as_str()], a), Some(b));
    }

    // Origin against a configured origin (RFC 6454 comparison).
    if !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
        assert!(origin_matches(&format!("http://{a}"), &format!("HTTP://{a}:80")));
        assert!(!origin_matches(&format!("wss://{a}:443/"), &format!("https://{a}")));
        assert!(origin_matches(&format!("https://{a}:443/"), &format!("https://{a}")));
        // Origin against the request's Host (cookie credentials).
        assert!(same_origin(&format!("http://{a}"), a));
        assert!(same_origin(&format!("https://{a}"), &format!("{a}:443")));
        assert!(!same_origin(&format!("http://{a}"), &format!("{a}:8080")));
    }
    assert_eq!(
        origin_matches(a, a),
        origin_matches(a, &a.to_ascii_uppercase()),
        "ASCII case"
    );
    assert_eq!(origin_matches(a, b), origin_matches(b, a), "symmetric");
    if origin_matches(a, b) && origin_matches(b, c) {
        assert!(origin_matches(a, c), "transitive");
    }
});
