//! Channel names, templates and `Registry::resolve` (`herald-core/src/name.rs`, `registry.rs`).
//!
//! Input: `pattern \n name`. Invariants: a valid name is an exact pattern that matches itself
//! and nothing else; a pattern that matches a name gives parameters that rebuild that exact
//! name (`instantiate`), so a placeholder matches one segment, never a dot; overlap is
//! symmetric and implied by a common match; `resolve` fails as `Invalid` exactly for invalid
//! names, and otherwise finds the one descriptor whose pattern matches, or none (`Unknown`).

#![no_main]

use herald_core::name::{Pattern, validate_name};
use herald_core::registry::ResolveError;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(text) = herald_fuzz::text(data) else {
        return;
    };
    let [pattern, name] = herald_fuzz::fields::<2>(text);
    let valid = validate_name(name).is_ok();

    if valid {
        let exact = Pattern::parse(name).expect("a valid name is a valid pattern");
        assert!(!exact.is_template());
        assert_eq!(exact.len(), name.split('.').count());
        let own = exact.matches(name).expect("a name matches itself");
        assert_eq!(exact.instantiate(&[]).as_deref(), Some(name));
        assert_eq!(own, Default::default());
    }

    if let Ok(p) = Pattern::parse(pattern) {
        assert_eq!(p.as_str(), pattern);
        assert_eq!(p.params().count(), pattern.matches('{').count());
        if valid {
            check_match(&p, name);
        }
        if let Ok(q) = Pattern::parse(name) {
            assert_eq!(p.overlaps(&q), q.overlaps(&p), "overlap is symmetric");
        }
    }

    let registry = &herald_fuzz::registry_config().registry;
    let matching: Vec<_> = registry
        .descriptors()
        .iter()
        .filter(|d| valid && d.pattern.matches(name).is_some())
        .collect();
    assert!(matching.len() <= 1, "{name:?} matches two descriptors");
    match registry.resolve(name) {
        Err(ResolveError::Invalid(e)) => assert_eq!(validate_name(name), Err(e)),
        Err(ResolveError::Unknown) => assert!(valid && matching.is_empty()),
        Ok((d, params)) => {
            assert!(valid);
            assert!(
                std::ptr::eq(d, matching[0]),
                "resolved to the wrong descriptor"
            );
            assert_eq!(d.pattern.matches(name), Some(params));
            check_match(&d.pattern, name);
        }
    }
});

/// When `p` matches the valid `name`, its parameters rebuild `name`; literals match only
/// themselves; both patterns then overlap.
fn check_match(p: &Pattern, name: &str) {
    let Some(params) = p.matches(name) else {
        if !p.is_template() {
            assert_ne!(p.as_str(), name, "an exact pattern must match its own name");
        }
        return;
    };
    if !p.is_template() {
        assert_eq!(p.as_str(), name, "an exact pattern matched another name");
    }
    let values: Vec<(&str, &str)> = p
        .params()
        .map(|k| (k, params.get(k).expect("every placeholder captured")))
        .collect();
    for (_, v) in &values {
        assert!(
            validate_name(v).is_ok() && !v.contains('.'),
            "captured {v:?}"
        );
    }
    assert_eq!(p.instantiate(&values).as_deref(), Some(name));
    let q = Pattern::parse(name).expect("valid name");
    assert!(p.overlaps(&q) && q.overlaps(p));
}
