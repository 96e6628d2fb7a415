//! Finding the `herald` binary the way cargo builds it.
//!
//! A test that runs the real gateway must find the binary cargo built for it, wherever the
//! target directory is: next to the repository, under `CARGO_TARGET_DIR` (a shared build
//! cache), or wherever `.cargo/config.toml` puts it. Guessing `target/debug/herald` breaks the
//! moment one of those is set, and the failure ("herald did not start:") says nothing. So the
//! order is: an explicit `HERALD_BIN` (or `TEST_HERALD_BIN`, the name the TypeScript tests
//! read), then cargo's own `CARGO_BIN_EXE_herald` where cargo provides it (integration tests of
//! the `herald` crate), then `cargo metadata`'s `target_directory`. Every path carries where it
//! came from, so an error can say which rule chose it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Variables that name the binary explicitly, most specific first. `HERALD_BIN` is not a
/// config key: the gateway only reads `HERALD_<SECTION>__<KEY>` variables as config.
pub const BIN_VARS: [&str; 2] = ["HERALD_BIN", "TEST_HERALD_BIN"];

/// The `herald` executable a test will run, and why that one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeraldBin {
    /// Absolute path of the executable (it may not exist yet: see [`HeraldBin::build_if_missing`]).
    pub path: PathBuf,
    /// Where the path came from, for error messages: `$HERALD_BIN`, `CARGO_BIN_EXE_herald`,
    /// `cargo metadata target_directory (/x)`.
    pub from: String,
    /// The cargo profile directory it belongs to (`debug`, `release`), when cargo chose it.
    profile: Option<String>,
}

/// The profile this crate (and so the test using it) was built with: tests and `cargo run`
/// use `debug`, `--release` benches and examples use `release`.
fn own_profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

fn exe_name() -> &'static str {
    if cfg!(windows) {
        "herald.exe"
    } else {
        "herald"
    }
}

impl HeraldBin {
    /// Finds the binary for this process's environment. Pass
    /// `option_env!("CARGO_BIN_EXE_herald")` from the calling test: cargo sets it only while
    /// compiling the `herald` crate's own integration tests, so this crate cannot read it.
    ///
    /// Panics when cargo cannot be asked either (no explicit path, no cargo).
    pub fn locate(cargo_bin_exe: Option<&str>) -> HeraldBin {
        Self::locate_with(&|name| std::env::var_os(name), cargo_bin_exe, own_profile())
    }

    /// [`HeraldBin::locate`] with the environment given as a lookup function (tests run it
    /// with `CARGO_TARGET_DIR` pointed elsewhere without touching the process environment).
    /// `CARGO_TARGET_DIR` from `env` is passed to `cargo metadata`.
    pub fn locate_with(
        env: &dyn Fn(&str) -> Option<OsString>,
        cargo_bin_exe: Option<&str>,
        profile: &str,
    ) -> HeraldBin {
        for var in BIN_VARS {
            if let Some(path) = env(var).filter(|p| !p.is_empty()) {
                return HeraldBin {
                    path: absolute(Path::new(&path)),
                    from: format!("${var}"),
                    profile: None,
                };
            }
        }
        // Cargo sets it at compile time for the `herald` crate's tests; newer cargo also sets
        // it when running them.
        if let Some(path) = cargo_bin_exe
            .map(OsString::from)
            .or_else(|| env("CARGO_BIN_EXE_herald"))
        {
            return HeraldBin {
                path: PathBuf::from(path),
                from: "CARGO_BIN_EXE_herald".into(),
                profile: None,
            };
        }
        let target = target_directory(env).unwrap_or_else(|e| panic!("{e}"));
        HeraldBin {
            path: target.join(profile).join(exe_name()),
            from: format!("cargo metadata target_directory ({})", target.display()),
            profile: Some(profile.to_owned()),
        }
    }

    /// Builds the binary with cargo when it was located through `cargo metadata` and is not
    /// there yet (`cargo test -p herald-bench` does not build other packages' binaries).
    /// Explicit paths are never built: a missing `$HERALD_BIN` is the caller's mistake.
    pub fn build_if_missing(&self) -> &Self {
        let Some(profile) = &self.profile else {
            return self;
        };
        if self.path.exists() {
            return self;
        }
        let mut cmd = cargo();
        cmd.args(["build", "-p", "herald", "--bin", "herald"])
            .current_dir(workspace_dir());
        if profile == "release" {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(
            status.success(),
            "`cargo build -p herald` failed ({status}) while building {}",
            self.path.display()
        );
        self
    }

    /// One line naming the path and its origin, with how to fix a missing binary.
    pub fn describe(&self) -> String {
        let missing = if self.path.exists() {
            ""
        } else {
            " [does not exist: build it with `cargo build -p herald` or set HERALD_BIN]"
        };
        format!("{} (from {}){missing}", self.path.display(), self.from)
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// This workspace's root: where `cargo metadata` and `cargo build` must run, whatever the
/// test's working directory is.
fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The cargo that runs this test (`$CARGO`), else the one on `PATH`.
fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// `cargo metadata --format-version 1 --no-deps` → `target_directory`, which already accounts
/// for `CARGO_TARGET_DIR`, `.cargo/config.toml` and `--target-dir` defaults.
fn target_directory(env: &dyn Fn(&str) -> Option<OsString>) -> Result<PathBuf, String> {
    let mut cmd = cargo();
    cmd.args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(workspace_dir());
    if let Some(dir) = env("CARGO_TARGET_DIR") {
        cmd.env("CARGO_TARGET_DIR", dir);
    }
    let out = cmd.output().map_err(|e| {
        format!("cannot run `cargo metadata` to find the herald binary: {e} (set HERALD_BIN)")
    })?;
    if !out.status.success() {
        return Err(format!(
            "`cargo metadata` failed ({}) while looking for the herald binary (set HERALD_BIN): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("`cargo metadata` printed something that is not JSON: {e}"))?;
    v["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| "`cargo metadata` has no target_directory".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn an_explicit_path_wins() {
        let b = HeraldBin::locate_with(
            &env_of(&[("HERALD_BIN", "/opt/herald"), ("TEST_HERALD_BIN", "/x")]),
            Some("/cargo/herald"),
            "debug",
        );
        assert_eq!(b.path, PathBuf::from("/opt/herald"));
        assert_eq!(b.from, "$HERALD_BIN");
        let b = HeraldBin::locate_with(&env_of(&[("TEST_HERALD_BIN", "/x")]), None, "debug");
        assert_eq!(
            (b.path, b.from.as_str()),
            (PathBuf::from("/x"), "$TEST_HERALD_BIN")
        );
    }

    #[test]
    fn cargo_bin_exe_comes_next() {
        let b = HeraldBin::locate_with(&env_of(&[]), Some("/cargo/herald"), "debug");
        assert_eq!(b.path, PathBuf::from("/cargo/herald"));
        assert_eq!(b.from, "CARGO_BIN_EXE_herald");
    }

    /// With a shared build cache (`CARGO_TARGET_DIR`), the binary is found there, not in a
    /// `target/` next to the repository.
    #[test]
    fn cargo_target_dir_is_honoured() {
        let elsewhere = tempfile::tempdir().unwrap();
        let dir = elsewhere.path().to_str().unwrap().to_owned();
        let env = move |name: &str| (name == "CARGO_TARGET_DIR").then(|| OsString::from(&dir));
        let b = HeraldBin::locate_with(&env, None, "release");
        assert_eq!(b.path, elsewhere.path().join("release").join(exe_name()));
        assert!(b.from.starts_with("cargo metadata"), "{}", b.from);
        assert!(b.describe().contains("does not exist"), "{}", b.describe());
    }
}
