//! Who may connect to a Unix socket: its file's mode, owner and group, as
//! systemd's `SocketMode=`, `SocketUser=` and `SocketGroup=` set them.
//!
//! They are applied between `bind(2)` and `listen(2)`: until `listen` a
//! connect is refused, so no client ever reaches the socket while its
//! file still has the mode the umask gave it.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tracing::debug;

/// The mode, owner and group of a Unix socket's file, for
/// [`Server::unix_permissions`](crate::Server::unix_permissions).
///
/// Users and groups are given by name or by number (`"www-data"`,
/// `"33"`), and looked up when the socket is bound; a name that does not
/// exist is an [`Error::Bind`](crate::Error::Bind) naming the address.
/// Changing the owner needs the privilege to (root, or `CAP_CHOWN`);
/// giving the file a group the process is a member of does not.
///
/// # Examples
///
/// ```
/// let perms = endless::UnixPermissions::new().mode(0o660).group("www-data");
/// assert_eq!(perms.get_mode(), Some(0o660));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixPermissions {
    mode: Option<u32>,
    user: Option<String>,
    group: Option<String>,
}

impl UnixPermissions {
    /// Nothing changed: the mode the umask gives, this process's user and
    /// group.
    pub fn new() -> Self {
        Self::default()
    }

    /// The file's permission bits (`0o660`, say); bits above `0o7777` are
    /// ignored.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode & 0o7777);
        self
    }

    /// The file's owner, by name or number.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// The file's group, by name or number.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// The mode set with [`mode`](Self::mode), if any.
    pub fn get_mode(&self) -> Option<u32> {
        self.mode
    }

    /// Applies them to the socket file at `path` (just bound by us):
    /// owner and group first, so that a mode with set-ID bits, which a
    /// `chown` would clear, survives.
    pub(crate) fn apply(&self, path: &Path) -> io::Result<()> {
        let uid = self.user.as_deref().map(uid).transpose()?;
        let gid = self.group.as_deref().map(gid).transpose()?;
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(path, uid, gid)?;
        }
        if let Some(mode) = self.mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        debug!(path = %path.display(), mode = ?self.mode.map(|m| format!("{m:o}")), ?uid, ?gid, "socket file permissions set");
        Ok(())
    }
}

fn not_found(what: &str, name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no {what} named {name:?}"))
}

fn uid(user: &str) -> io::Result<u32> {
    if let Ok(n) = user.parse() {
        return Ok(n);
    }
    nix::unistd::User::from_name(user)?
        .map(|u| u.uid.as_raw())
        .ok_or_else(|| not_found("user", user))
}

fn gid(group: &str) -> io::Result<u32> {
    if let Ok(n) = group.parse() {
        return Ok(n);
    }
    nix::unistd::Group::from_name(group)?
        .map(|g| g.gid.as_raw())
        .ok_or_else(|| not_found("group", group))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn mode_owner_and_group_are_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let me = nix::unistd::getuid().as_raw();
        let group = nix::unistd::getgid().as_raw();
        UnixPermissions::new()
            .mode(0o640)
            .user(me.to_string())
            .group(group.to_string())
            .apply(&path)
            .unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!((meta.uid(), meta.gid()), (me, group));
    }

    #[test]
    fn unknown_names_are_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let err = UnixPermissions::new()
            .user("no-such-user-endless")
            .apply(&path)
            .unwrap_err();
        assert_eq!(err.to_string(), "no user named \"no-such-user-endless\"");
        let err = UnixPermissions::new()
            .group("no-such-group-endless")
            .apply(&path)
            .unwrap_err();
        assert_eq!(err.to_string(), "no group named \"no-such-group-endless\"");
    }
}
