//! Helpers shared by Herald's fuzz targets (`fuzz_targets/*.rs`).
//!
//! Each target checks invariants, not only "no panic": a parsed value re-encodes to something
//! that parses back to the same value, a name that resolves matches its descriptor and
//! rebuilds from its parameters, a comparison is symmetric. Inputs are UTF-8 text; several
//! targets split one input into fields at `\n` so one corpus file holds a whole case.

use std::path::Path;
use std::sync::OnceLock;

use herald_core::Config;

/// The input as text, or `None` when it is not UTF-8 (every parser here takes `&str`).
pub fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// The first `N` `\n`-separated fields of `s`; missing fields are empty, and the last field
/// keeps any further newlines.
pub fn fields<const N: usize>(s: &str) -> [&str; N] {
    let mut out = [""; N];
    let mut rest = s;
    for (i, slot) in out.iter_mut().enumerate() {
        if i + 1 == N {
            *slot = rest;
            break;
        }
        match rest.split_once('\n') {
            Some((head, tail)) => {
                *slot = head;
                rest = tail;
            }
            None => {
                *slot = rest;
                rest = "";
            }
        }
    }
    out
}

/// A registry with exact names and templates of several shapes, none overlapping, built once.
pub fn registry_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        Config::from_toml_str(REGISTRY, Path::new(".")).expect("the fuzz registry is valid")
    })
}

const REGISTRY: &str = r#"
[auth]
hs256_secret = "fuzz"
[[channel]]
name = "blog.article.feed"
scope = "public"
schema = { type = "object" }
[[channel]]
name = "ops.alerts"
scope = "public"
schema = { type = "object" }
[[channel]]
name = "notifications.user.{userId}"
scope = "user"
schema = { type = "object" }
[[channel]]
name = "chat.room.{roomId}"
scope = "authenticated"
schema = { type = "object" }
[[channel]]
name = "dm.{a}.{b}"
scope = "authenticated"
schema = { type = "object" }
[[channel]]
name = "t.{x}.mid.{y}.end"
scope = "public"
schema = { type = "object" }
[[channel]]
name = "{only}"
scope = "public"
schema = { type = "object" }
"#;
