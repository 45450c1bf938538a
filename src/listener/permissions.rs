//! Who may connect to a Unix socket: its file's mode, owner and group, as
//! systemd's `SocketMode=`, `SocketUser=` and `SocketGroup=` set them.
//!
//! They are applied between `bind(2)` and `listen(2)`: until `listen` a
//! connect is refused, so no client ever reaches the socket while its
//! file still has the mode the umask gave it.

use std::io;
#[cfg(any(target_os = "linux", target_os = "android"))]
use std::os::unix::fs::PermissionsExt;

use tracing::debug;

use super::SocketFile;

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

    /// Applies them to `file`, a socket file this server bound: owner and
    /// group first, so that a mode with set-ID bits, which a `chown` would
    /// clear, survives.
    ///
    /// Nothing here follows a symlink, and nothing touches a file that is
    /// not the one bound: the socket's directory may be writable by others
    /// (`/tmp`, a shared `run` directory) while the server runs as root, so
    /// someone could put a symlink to `/etc/shadow` at the path between the
    /// bind (or a predecessor's) and this call. On Linux the path is opened
    /// with `O_PATH | O_NOFOLLOW` and checked to be that very socket (device
    /// and inode), and the changes go through `/proc/self/fd/N`, which names
    /// the opened file itself; elsewhere the path is checked, then changed
    /// with `fchmodat(AT_SYMLINK_NOFOLLOW)` and `lchown`.
    pub(crate) fn apply(&self, file: &SocketFile) -> io::Result<()> {
        let uid = self.user.as_deref().map(uid).transpose()?;
        let gid = self.group.as_deref().map(gid).transpose()?;
        let path = file.path();
        let target = open_exactly(file)?;
        if uid.is_some() || gid.is_some() {
            chown(&target, uid, gid)?;
        }
        if let Some(mode) = self.mode {
            chmod(&target, mode)?;
        }
        debug!(path = %path.display(), mode = ?self.mode.map(|m| format!("{m:o}")), ?uid, ?gid, "socket file permissions set");
        Ok(())
    }
}

/// The socket file, opened without following a symlink and checked to be
/// the one bound (Linux): changes go through `/proc/self/fd/N`.
#[cfg(any(target_os = "linux", target_os = "android"))]
struct Target(std::os::fd::OwnedFd);

#[cfg(any(target_os = "linux", target_os = "android"))]
fn open_exactly(file: &SocketFile) -> io::Result<Target> {
    use nix::fcntl::{open, OFlag};
    use nix::sys::stat::Mode;
    let fd = open(
        file.path(),
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        nix::errno::Errno::ELOOP => replaced(),
        e => io::Error::from(e),
    })?;
    let st = nix::sys::stat::fstat(&fd)?;
    if !file.is(st.st_dev as u64, st.st_ino as u64) {
        return Err(replaced());
    }
    Ok(Target(fd))
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn proc_path(t: &Target) -> std::path::PathBuf {
    use std::os::fd::AsRawFd;
    format!("/proc/self/fd/{}", t.0.as_raw_fd()).into()
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn chown(t: &Target, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    // `chown` follows the magic link to the opened file itself.
    std::os::unix::fs::chown(proc_path(t), uid, gid)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn chmod(t: &Target, mode: u32) -> io::Result<()> {
    std::fs::set_permissions(proc_path(t), std::fs::Permissions::from_mode(mode))
}

/// Elsewhere: the path, checked to be the socket bound, changed without
/// following a symlink.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
struct Target(std::path::PathBuf);

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn open_exactly(file: &SocketFile) -> io::Result<Target> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(file.path())?;
    if !file.is(meta.dev(), meta.ino()) {
        return Err(replaced());
    }
    Ok(Target(file.path().to_path_buf()))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn chown(t: &Target, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    std::os::unix::fs::lchown(&t.0, uid, gid)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn chmod(t: &Target, mode: u32) -> io::Result<()> {
    use nix::sys::stat::{fchmodat, FchmodatFlags, Mode};
    fchmodat(
        nix::fcntl::AT_FDCWD,
        &t.0,
        Mode::from_bits_truncate(mode as _),
        FchmodatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

fn replaced() -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        "the path no longer names the socket file this server bound (replaced, or a symlink); permissions not changed",
    )
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
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn mode_owner_and_group_are_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let file = SocketFile::at(&path).unwrap();
        let me = nix::unistd::getuid().as_raw();
        let group = nix::unistd::getgid().as_raw();
        UnixPermissions::new()
            .mode(0o640)
            .user(me.to_string())
            .group(group.to_string())
            .apply(&file)
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
        let file = SocketFile::at(&path).unwrap();
        let err = UnixPermissions::new()
            .user("no-such-user-endless")
            .apply(&file)
            .unwrap_err();
        assert_eq!(err.to_string(), "no user named \"no-such-user-endless\"");
        let err = UnixPermissions::new()
            .group("no-such-group-endless")
            .apply(&file)
            .unwrap_err();
        assert_eq!(err.to_string(), "no group named \"no-such-group-endless\"");
    }

    /// Someone with write access to the socket's directory puts a symlink
    /// (or another file) where the socket file was: nothing it points to
    /// is changed. (The mode used to be set with a path-based
    /// `set_permissions`, which followed the symlink.)
    #[test]
    fn a_symlink_or_another_file_at_the_path_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let file = SocketFile::at(&path).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "secret").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let err = UnixPermissions::new().mode(0o666).apply(&file).unwrap_err();
        assert!(
            err.to_string().contains("no longer names the socket file"),
            "{err}"
        );
        let mode = std::fs::metadata(&victim).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o600, "the symlink's target was not changed");
        // Another socket bound there meanwhile is not ours either.
        std::fs::remove_file(&path).unwrap();
        let _other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(UnixPermissions::new().mode(0o666).apply(&file).is_err());
        drop(l);
    }
}
