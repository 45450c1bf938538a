//! The PID file: rewritten atomically by each serving generation, removed
//! by the final stop.
//!
//! The file often lives in a directory others can write (`/tmp`, a shared
//! `run` directory), and the server may run as root, so nothing here follows
//! a symlink or uses a name that someone else could have prepared.

use std::fs::OpenOptions;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tracing::{debug, warn};

use crate::error::{Error, Result};

/// How many unpredictable names to try before giving up: a clash means
/// someone is guessing (or an astronomically rare coincidence).
const TEMP_ATTEMPTS: usize = 8;

/// Writes our PID to `path` atomically: readers see the old file or the new
/// one, never a partial write.
///
/// The temporary file gets an unpredictable name in the same directory and
/// is created with `O_EXCL | O_NOFOLLOW`, so a file or symlink planted in
/// advance cannot redirect the write; the rename then replaces whatever is
/// at `path` (a symlink included) without following it.
pub(crate) fn write_pid_file(path: &Path) -> Result<()> {
    let pid = std::process::id();
    let err = |source| Error::Io {
        context: format!("cannot write the PID file {}", path.display()),
        source,
    };
    let (tmp, mut file) = create_temp(path).map_err(err)?;
    let written = file
        .write_all(format!("{pid}\n").as_bytes())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    debug!(path = %path.display(), pid, "wrote the PID file");
    Ok(())
}

/// Creates a new, empty file next to `path` under a name nobody can guess.
fn create_temp(path: &Path) -> io::Result<(PathBuf, std::fs::File)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let dir = path.parent().unwrap_or(Path::new(""));
    let mut last = None;
    for _ in 0..TEMP_ATTEMPTS {
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{:016x}.tmp", random_u64()));
        let tmp = dir.join(tmp_name);
        // std adds O_CLOEXEC; `create_new` is O_CREAT | O_EXCL, which
        // already refuses an existing symlink, and O_NOFOLLOW says so.
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                warn!(path = %tmp.display(), "temporary PID file name taken; trying another");
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::ErrorKind::AlreadyExists.into()))
}

/// 64 unpredictable bits without a dependency: std seeds each
/// `RandomState` from the operating system's random source (then varies it
/// per instance), for the same purpose, resisting guessed hash inputs.
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// Removes the PID file if it still names us. A symlink at `path` is not
/// ours (we only ever rename a regular file there) and is left alone.
pub(crate) fn remove_pid_file(path: &Path) {
    let ours = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .and_then(|mut f| {
            let mut s = String::new();
            f.read_to_string(&mut s)?;
            Ok(s)
        })
        .map(|s| s.trim() == std::process::id().to_string())
        .unwrap_or(false);
    if ours {
        match std::fs::remove_file(path) {
            Ok(()) => debug!(path = %path.display(), "removed the PID file"),
            Err(e) => warn!(path = %path.display(), cause = %e, "cannot remove the PID file"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_differ_and_stay_in_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.pid");
        let (a, _fa) = create_temp(&path).unwrap();
        let (b, _fb) = create_temp(&path).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(dir.path()));
        let name = a.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with(".app.pid.") && name.ends_with(".tmp"),
            "{name}"
        );
    }

    #[test]
    fn a_symlink_at_the_path_is_replaced_not_followed_and_not_removed_as_ours() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let path = dir.path().join("app.pid");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write_pid_file(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());

        // A symlink to a file that holds our PID is not our PID file.
        std::fs::write(&victim, format!("{}\n", std::process::id())).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        remove_pid_file(&path);
        assert!(std::fs::symlink_metadata(&path).is_ok());
    }

    #[test]
    fn errors_name_the_path() {
        let err = write_pid_file(Path::new("/")).unwrap_err().to_string();
        assert_eq!(err, "cannot write the PID file /: the path names no file");
    }
}
