//! Locating the executables of the servers (`nats-server`, `initdb`, `postgres`, …).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::InfraError;

/// Where `scripts/install-deps` installs tools it could not get from apt: `$JWL_TOOLS_DIR`, or
/// `~/.cache/jwl/tools`. Executables are in its `bin/` directory.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("JWL_TOOLS_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/jwl/tools")
}

/// Finds an executable: first on `$PATH`, then in `/usr/lib/postgresql/<highest version>/bin`
/// (Debian's PostgreSQL server binaries are not on `$PATH`), then in `$JWL_TOOLS_DIR/bin`.
pub fn find_binary(name: &str) -> Result<PathBuf, InfraError> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(debian_postgres_bin_dir())
        .chain(std::iter::once(tools_dir().join("bin")))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| InfraError::MissingBinary {
            name: name.to_owned(),
            hint: install_hint(name),
        })
}

/// `/usr/lib/postgresql/<N>/bin` for the highest numeric `N` that has an `initdb`.
fn debian_postgres_bin_dir() -> Option<PathBuf> {
    let entries = std::fs::read_dir("/usr/lib/postgresql").ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            is_executable(&bin.join("initdb")).then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn install_hint(name: &str) -> String {
    let apt_package = match name {
        "nats-server" => "nats-server",
        _ => "postgresql",
    };
    format!("install it with `scripts/install-deps` (or `apt-get install -y {apt_package}`)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_binary_on_path() {
        let sh = find_binary("sh").expect("sh is on every PATH");
        assert!(sh.ends_with("sh"));
    }

    #[test]
    fn missing_binary_names_it_and_says_how_to_install() {
        let err = find_binary("nats-server-that-does-not-exist").unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("`nats-server-that-does-not-exist` was not found"),
            "{message}"
        );
        assert!(message.contains("scripts/install-deps"), "{message}");
        assert!(
            message.contains("apt-get install -y postgresql"),
            "{message}"
        );
        let nats = InfraError::MissingBinary {
            name: "nats-server".into(),
            hint: install_hint("nats-server"),
        };
        assert!(nats.to_string().contains("apt-get install -y nats-server"));
    }
}
