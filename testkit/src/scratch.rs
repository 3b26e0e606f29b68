//! Temporary directories for private servers, and sweeping those left by dead test processes.
//!
//! Directories live under `$TMPDIR/jwl-testkit/<kind>-<pid>-<random>`: a test process that is
//! killed cannot clean up after itself, so the next one removes directories whose pid is gone.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::Context;
use tempfile::TempDir;

/// A new temporary directory (mode 0755, so an unprivileged PostgreSQL user can traverse it).
pub(crate) fn new_dir(kind: &str) -> anyhow::Result<TempDir> {
    let root = root();
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| sweep_stale(&root));
    let dir = tempfile::Builder::new()
        .prefix(&format!("{kind}-{}-", std::process::id()))
        .tempdir_in(&root)
        .with_context(|| format!("creating a temporary directory in {}", root.display()))?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod 0755 {}", dir.path().display()))?;
    Ok(dir)
}

fn root() -> PathBuf {
    std::env::temp_dir().join("jwl-testkit")
}

/// Removes directories of test processes that no longer exist.
fn sweep_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split('-').nth(1))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
