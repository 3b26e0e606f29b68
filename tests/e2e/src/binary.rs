//! Locating the `jwl` binary the services run from.

use std::path::PathBuf;

use anyhow::Context;

/// Environment variable naming the `jwl` binary to run (overrides the default location).
pub const JWL_BIN_ENV: &str = "JWL_BIN";

/// The `jwl` binary: `$JWL_BIN` if set, else `jwl` in the directory above the running test
/// executable (`target/<profile>/deps/saga-… → target/<profile>/jwl`).
pub fn jwl_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(JWL_BIN_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        anyhow::ensure!(
            path.is_file(),
            "{JWL_BIN_ENV} names {}, which is not a file",
            path.display()
        );
        return Ok(path);
    }
    let test_exe = std::env::current_exe().context("locating the running test executable")?;
    let profile_dir = test_exe
        .parent()
        .and_then(|deps| deps.parent())
        .with_context(|| format!("{} has no grandparent directory", test_exe.display()))?;
    let path = profile_dir.join("jwl");
    anyhow::ensure!(
        path.is_file(),
        "the `jwl` binary was not found at {}: run `cargo build --bins` (or `cargo build -p jwl-cli --bin jwl`) \
         first, or set {JWL_BIN_ENV} to its path",
        path.display()
    );
    Ok(path)
}
