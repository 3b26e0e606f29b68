//! The unprivileged account PostgreSQL runs as when we are root, and making its data directory
//! usable by that account.

use std::ffi::{CStr, CString};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::error::InfraError;

/// An account to drop privileges to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceUser {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl ServiceUser {
    /// When running as root: `postgres`, else `nobody`. When not root: `None` (run as ourselves).
    pub(crate) fn for_postgres() -> Result<Option<Self>, InfraError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        lookup("postgres")
            .or_else(|| lookup("nobody"))
            .map(Some)
            .ok_or(InfraError::NoServiceUser)
    }

    /// Makes `command` run as this user.
    pub(crate) fn apply(&self, command: &mut Command) {
        command.uid(self.uid).gid(self.gid);
    }

    /// Chowns `path` and, if `recursive`, everything below it (symlinks themselves, not targets).
    pub(crate) fn chown(&self, path: &Path, recursive: bool) -> Result<(), InfraError> {
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
            .map_err(|e| InfraError::io(format!("chown {} to {}", path.display(), self.name), e))?;
        if recursive && path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            let entries = std::fs::read_dir(path)
                .map_err(|e| InfraError::io(format!("listing {}", path.display()), e))?;
            for entry in entries {
                let entry =
                    entry.map_err(|e| InfraError::io(format!("listing {}", path.display()), e))?;
                self.chown(&entry.path(), true)?;
            }
        }
        Ok(())
    }

    /// Gives every ancestor of `path` that this user cannot traverse the search bit for others
    /// (`o+x`: enter, not list), so that the user can reach `path`. Logs each change.
    pub(crate) fn make_reachable(&self, path: &Path) -> Result<(), InfraError> {
        let absolute = std::path::absolute(path)
            .map_err(|e| InfraError::io(format!("resolving {}", path.display()), e))?;
        for ancestor in absolute.ancestors().skip(1) {
            let Ok(metadata) = ancestor.metadata() else {
                continue;
            };
            if self.can_search(&metadata) {
                continue;
            }
            let mut permissions = metadata.permissions();
            permissions.set_mode(permissions.mode() | 0o001);
            std::fs::set_permissions(ancestor, permissions).map_err(|e| {
                InfraError::io(
                    format!(
                        "adding o+x to {} so {} can reach {}",
                        ancestor.display(),
                        self.name,
                        path.display()
                    ),
                    e,
                )
            })?;
            tracing::warn!(directory = %ancestor.display(), user = %self.name, "added o+x so PostgreSQL can reach its data directory");
        }
        Ok(())
    }

    fn can_search(&self, metadata: &std::fs::Metadata) -> bool {
        let mode = metadata.mode();
        if metadata.uid() == self.uid {
            mode & 0o100 != 0
        } else if metadata.gid() == self.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        }
    }
}

/// Looks an account up in the password database.
pub(crate) fn lookup(name: &str) -> Option<ServiceUser> {
    let c_name = CString::new(name).ok()?;
    let mut record: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; getpwnam_r is the thread-safe variant.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut record,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points into `buffer`, NUL-terminated.
    let name = unsafe { CStr::from_ptr(record.pw_name) }
        .to_string_lossy()
        .into_owned();
    Some(ServiceUser {
        name,
        uid: record.pw_uid,
        gid: record.pw_gid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_root_and_not_a_missing_user() {
        let root = lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(lookup("no-such-user-jwl").is_none());
    }

    #[test]
    fn makes_a_private_ancestor_searchable() {
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let user = lookup("nobody").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        user.make_reachable(&private.join("data")).unwrap();
        assert_eq!(private.metadata().unwrap().mode() & 0o777, 0o701);
        assert_eq!(dir.path().metadata().unwrap().mode() & 0o777, 0o701);
    }
}
