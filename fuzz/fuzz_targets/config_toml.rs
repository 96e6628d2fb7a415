//! Config loading (`Config::from_toml_str`): the whole path from TOML through serde, the
//! validation of every section, schema compilation and the registry build.
//!
//! Invariants: loading is deterministic (same outcome and problems twice); a refusal names
//! the source and at least one problem; an accepted registry resolves every descriptor's own
//! name (templates instantiated with a one-character value, shorter than any placeholder, so the name stays within 255 bytes) back to that descriptor, with the parameters it was given.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use herald_core::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(text) = herald_fuzz::text(data) else {
        return;
    };
    // `schema_file`, `public_key_pem` and `jwks_file` are read from disk: keep the fuzzer away
    // from device files that never end (`/dev/zero`) and from escapes that could spell them.
    if ["/dev/", "/proc/", "/sys/", "\\u", "\\U"]
        .iter()
        .any(|s| text.contains(s))
    {
        return;
    }
    let first = Config::from_toml_str(text, base());
    let second = Config::from_toml_str(text, base());
    match (first, second) {
        (Err(a), Err(b)) => {
            assert_eq!(a.problems, b.problems, "loading is deterministic");
            assert!(!a.problems.is_empty(), "a refusal names its problems");
            assert!(a.to_string().starts_with("<inline>: "));
        }
        (Ok(config), Ok(_)) => check_registry(&config),
        (a, b) => panic!(
            "loading is not deterministic: {:?} vs {:?}",
            a.is_ok(),
            b.is_ok()
        ),
    }
});

fn check_registry(config: &Config) {
    for d in config.registry.descriptors() {
        let names: Vec<&str> = d.pattern.params().collect();
        let values: Vec<(&str, &str)> = names.iter().map(|p| (*p, "v")).collect();
        let name = d
            .pattern
            .instantiate(&values)
            .expect("a registered pattern instantiates with a valid value");
        let (found, params) = config
            .registry
            .resolve(&name)
            .unwrap_or_else(|e| panic!("{name:?} (from {}) does not resolve: {e}", d.pattern));
        assert!(
            std::ptr::eq(found, d),
            "{name:?} resolved to {}",
            found.pattern
        );
        for p in names {
            assert_eq!(params.get(p), Some("v"));
        }
    }
}

/// An empty directory: relative schema paths resolve against it (and are not found).
fn base() -> &'static PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("herald-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir
    })
}
