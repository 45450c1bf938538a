//! Unix socket files and who may remove them.
//!
//! A socket file is removed at the final stop only if this server created it
//! (this generation or a predecessor that handed the socket over) and the
//! path still names that very file. A socket passed by systemd's socket
//! activation belongs to its socket unit; a file that another server put at
//! the path while we drained belongs to that server.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};

/// A socket file this server created, identified by device and inode.
///
/// The identity is the file's, read with `stat` when the socket is bound or
/// adopted: `fstat` on the listening socket gives the socket's own inode (in
/// sockfs), which says nothing about the file at the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// The socket file now at `path`.
    pub(super) fn at(path: &Path) -> io::Result<SocketFile> {
        let meta = std::fs::symlink_metadata(path)?;
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a socket file",
            ));
        }
        Ok(SocketFile {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a file with this device and inode is this one.
    pub(crate) fn is(&self, dev: u64, ino: u64) -> bool {
        self.dev == dev && self.ino == ino
    }

    /// Removes the file if the path still names it. (Between the check and
    /// the unlink another process could still swap the file: no system call
    /// unlinks by inode. The window is two system calls wide.)
    pub(crate) fn unlink_if_ours(&self) {
        let path = self.path.display();
        match SocketFile::at(&self.path) {
            Ok(now) if now == *self => match std::fs::remove_file(&self.path) {
                Ok(()) => debug!(path = %path, "removed the socket file"),
                Err(e) => warn!(path = %path, cause = %e, "cannot remove the socket file"),
            },
            Ok(_) => info!(path = %path, "the socket file was replaced by another; leaving it"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                debug!(path = %path, "the socket file is already gone")
            }
            Err(e) => {
                info!(path = %path, cause = %e, "the path is no longer our socket file; leaving it")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let first = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let ours = SocketFile::at(&path).unwrap();
        // Replaced by another socket at the same path: left alone.
        std::fs::remove_file(&path).unwrap();
        let _second = std::os::unix::net::UnixListener::bind(&path).unwrap();
        ours.unlink_if_ours();
        assert!(path.exists());
        // Still ours: removed.
        let now = SocketFile::at(&path).unwrap();
        now.unlink_if_ours();
        assert!(!path.exists());
        drop(first);
        // A regular file is never one.
        std::fs::write(&path, "data").unwrap();
        assert!(SocketFile::at(&path).is_err());
    }
}
