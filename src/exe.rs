//! Which program the next generation runs, and in which directory.
//!
//! Release layouts that swap a symlink (`/srv/app/current ->
//! releases/v7`, as Capistrano and Unicorn deploys do) decide what is
//! right here:
//!
//! - The working directory is the *logical* one the process was started in:
//!   the shell's `$PWD` when it names the same directory as `getcwd()`
//!   (which resolves symlinks), as Unicorn does. A reload changes into that
//!   path again, so after `current` moved the new generation runs in the new
//!   release, and a deleted old release does not break reloads.
//! - `argv[0]` is resolved at each reload against that directory (and the
//!   `PATH` the process started with), never made canonical: `./server`
//!   started in `current` runs the new release's binary after the switch.
//!   On Linux `/proc/self/exe` would name the old, deleted inode after a
//!   replacement, so it is only a last resort.
//!
//! - A bare `argv[0]` (`exec -a name`, systemd's `ExecStart=@/path name`)
//!   is looked up in `PATH` only if that finds the very file this process
//!   runs (device and inode); otherwise the path of the running executable
//!   is used, so a reload never starts some other program of that name.
//!
//! The directory, `PATH` and the running image are captured when the
//! process starts, before `main` (a constructor), so that user code that
//! changes directory before calling into `endless` cannot mislead the
//! reload, and a release renamed into place during start-up is seen as
//! new by the binary watcher.
//!
//! What the next generation runs is opened before it is spawned and
//! checked after ([`OpenExe::runs_in`]): the reload names the exact file
//! (device and inode) it ran, and a `keep_pid` re-exec runs that same open
//! file, whatever was renamed over the path since.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::handover::FileId;

/// Where the process was started, captured once.
#[derive(Debug)]
struct Start {
    /// The logical working directory (see the module docs).
    cwd: Option<PathBuf>,
    /// Whether `$PWD` named it (else it is `getcwd()`'s answer, with
    /// symlinks resolved).
    cwd_from_pwd: bool,
    path_var: Option<OsString>,
    /// The file this process runs, and its path, as at start.
    image: Option<std::fs::Metadata>,
    image_path: Option<PathBuf>,
}

static START: OnceLock<Start> = OnceLock::new();

// SAFETY: runs before `main`, single-threaded. It reads the environment
// and the working directory (getenv, getcwd, stat) and stores them in a
// `OnceLock`, reads the hand-over (fstat and fcntl on the descriptors it
// names, a read of the state file) and installs a panic hook; it relies on
// no runtime service that is set up in `main`. `std::env::args` is not read
// here (std may not have recorded the arguments yet): they never change, so
// they are read at first use instead.
#[allow(unsafe_code)]
#[ctor::ctor(unsafe)]
fn capture_at_start() {
    start();
    // Before `main`, so that nothing the program spawns first thing (a
    // sidecar) can inherit a socket, the link or the state.
    crate::init_before_main();
}

/// The start-up state; captured now if the constructor did not run (it
/// runs on every supported platform; this is the fallback).
fn start() -> &'static Start {
    START.get_or_init(|| {
        let (cwd, cwd_from_pwd) = logical_cwd();
        Start {
            cwd,
            cwd_from_pwd,
            path_var: std::env::var_os("PATH"),
            image: running_image(),
            image_path: std::env::current_exe().ok(),
        }
    })
}

/// The file this process runs now.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn running_image() -> Option<std::fs::Metadata> {
    std::fs::metadata("/proc/self/exe").ok()
}

/// The file this process runs now (where no `/proc` says: the file at the
/// path the system reports, which a rename can already have replaced).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn running_image() -> Option<std::fs::Metadata> {
    std::fs::metadata(std::env::current_exe().ok()?).ok()
}

fn id_of(meta: &std::fs::Metadata) -> FileId {
    FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    }
}

/// The identity of the executable this process runs, as at start.
fn running_image_id() -> Option<FileId> {
    start().image.as_ref().map(id_of)
}

/// The file this process runs (as at start), and the file its program path
/// names now, for the binary watcher's baseline.
pub(crate) fn started_from() -> (Option<std::fs::Metadata>, Option<std::fs::Metadata>) {
    (
        start().image.clone(),
        std::fs::metadata(current().path).ok(),
    )
}

/// What to say at start about where reloads will look: a relative
/// `argv[0]` resolved against a working directory that `$PWD` did not name
/// (systemd sets no `$PWD`) follows no `current` symlink.
pub(crate) fn warn_if_unsure() {
    let start = start();
    let (argv0, _) = args();
    let relative = Path::new(argv0).is_relative() && Path::new(argv0).components().count() > 1;
    if relative && !start.cwd_from_pwd {
        tracing::warn!(
            argv0 = %Path::new(argv0).display(),
            cwd = ?start.cwd,
            "started by a relative path without $PWD: reloads run the program in {:?} (symlinks resolved), \
             so a switched `current` symlink is not followed; set Environment=PWD=<the directory> in the unit \
             or start it by an absolute path",
            start.cwd
        );
    }
}

/// The program and directory of the next generation.
#[derive(Debug)]
pub(crate) struct Exe {
    /// The path to execute, resolved at this reload.
    pub(crate) path: PathBuf,
    pub(crate) args: Vec<OsString>,
    /// The logical working directory to start it in.
    pub(crate) cwd: Option<PathBuf>,
}

/// The arguments, read once (the constructor cannot read them portably).
static ARGS: OnceLock<(OsString, Vec<OsString>)> = OnceLock::new();

fn args() -> &'static (OsString, Vec<OsString>) {
    ARGS.get_or_init(|| {
        let mut args = std::env::args_os();
        let argv0 = args.next().unwrap_or_default();
        (argv0, args.collect())
    })
}

/// Records the start-up state now if nothing has yet; cheap to call again.
pub(crate) fn init() {
    start();
    args();
}

/// Where a bare `argv[0]` leads: the file `PATH` finds, if it is the one
/// this process runs; else the running executable's own path. Decided once,
/// at start.
static BARE: OnceLock<Option<PathBuf>> = OnceLock::new();

fn bare_argv0() -> Option<PathBuf> {
    BARE.get_or_init(|| {
        let start = start();
        let (argv0, _) = args();
        let found = resolve(argv0, start.cwd.as_deref(), start.path_var.as_deref());
        match (found, running_image_id()) {
            (Some(p), Some(image)) if FileId::of_path(&p) == Some(image) => Some(p),
            (found, _) => {
                if let Some(p) = &found {
                    tracing::warn!(argv0 = ?argv0, found = %p.display(), running = ?start.image_path,
                        "argv[0] found in PATH is not the program that runs; reloads start the running executable's path instead");
                }
                start.image_path.clone().or(found)
            }
        }
    })
    .clone()
}

/// Resolves the program to start as the next generation, now.
pub(crate) fn current() -> Exe {
    let start = start();
    let (argv0, args) = args();
    let cwd = start.cwd.clone();
    let bare = Path::new(argv0).components().count() == 1 && !Path::new(argv0).is_absolute();
    let path = if bare {
        bare_argv0()
    } else {
        resolve(argv0, cwd.as_deref(), start.path_var.as_deref())
    };
    let path = path
        .or_else(|| std::env::current_exe().ok())
        .unwrap_or_else(|| PathBuf::from(argv0));
    Exe {
        path,
        args: args.clone(),
        cwd,
    }
}

impl Exe {
    /// Checks that the working directory still exists, so that a deleted
    /// release directory is reported as such (a spawn would blame the
    /// binary).
    pub(crate) fn check_directory(&self) -> Result<()> {
        match &self.cwd {
            Some(dir) => match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(Error::WorkingDirectory {
                    path: dir.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotADirectory,
                        "not a directory",
                    ),
                }),
                Err(source) => Err(Error::WorkingDirectory {
                    path: dir.clone(),
                    source,
                }),
            },
            None => Ok(()),
        }
    }

    /// Opens the executable, to check what a child runs against it.
    pub(crate) fn open(&self) -> std::io::Result<OpenExe> {
        let file = std::fs::File::open(&self.path)?;
        let id = file.metadata()?;
        Ok(OpenExe {
            file,
            id: FileId {
                dev: id.dev(),
                ino: id.ino(),
            },
            path: self.path.clone(),
        })
    }

    /// A command that starts this program with its arguments in its
    /// logical directory, with `PWD` naming that directory (as a shell
    /// would), so the next generation keeps it too.
    pub(crate) fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.path);
        cmd.args(&self.args);
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd).env("PWD", cwd);
        }
        cmd
    }
}

/// An executable, opened before a spawn.
#[derive(Debug)]
pub(crate) struct OpenExe {
    file: std::fs::File,
    id: FileId,
    path: PathBuf,
}

impl OpenExe {
    /// What the child `pid`, just spawned from the path, runs: this file,
    /// unless a rename replaced the path in between (then an error saying
    /// so: a `keep_pid` re-exec must run exactly what its temporary
    /// generation proved). Where the system cannot say (no `/proc`, or the
    /// child already gone), this file.
    pub(crate) fn runs_in(self, pid: u32) -> std::io::Result<ExeFile> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(actual) = FileId::of_path(Path::new(&format!("/proc/{pid}/exe"))) {
            // A script runs its interpreter: `/proc/PID/exe` names that,
            // and says nothing about which script it runs.
            if actual != self.id && !self.is_script() {
                return Err(std::io::Error::other(format!(
                    "the executable was replaced while the new generation started (opened {}, it runs {actual}); reload again",
                    self.id
                )));
            }
        }
        let _ = pid;
        Ok(ExeFile {
            file: self.file,
            id: self.id,
            path: self.path,
        })
    }

    /// Whether the file starts with `#!` (the kernel runs its interpreter).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn is_script(&self) -> bool {
        use std::os::unix::fs::FileExt;
        let mut magic = [0u8; 2];
        matches!(self.file.read_at(&mut magic, 0), Ok(2)) && magic == *b"#!"
    }
}

/// The executable a new generation runs: its path, identity, and the file
/// itself, open.
#[derive(Debug)]
pub(crate) struct ExeFile {
    pub(crate) file: std::fs::File,
    pub(crate) id: FileId,
    pub(crate) path: PathBuf,
}

impl ExeFile {
    /// Whether it is the very file this process runs.
    pub(crate) fn is_running_image(&self) -> bool {
        running_image_id() == Some(self.id)
    }
}

/// `$PWD` if it is absolute and names the directory `getcwd()` names,
/// else `getcwd()`; and whether it was `$PWD`.
fn logical_cwd() -> (Option<PathBuf>, bool) {
    let Ok(physical) = std::env::current_dir() else {
        return (None, false);
    };
    let same = |p: &Path| {
        let (Ok(a), Ok(b)) = (std::fs::metadata(p), std::fs::metadata(&physical)) else {
            return false;
        };
        a.dev() == b.dev() && a.ino() == b.ino()
    };
    match std::env::var_os("PWD").map(PathBuf::from) {
        Some(pwd) if pwd.is_absolute() && same(&pwd) => (Some(pwd), true),
        _ => (Some(physical), false),
    }
}

/// Resolves `argv0` the way the shell that started us did: absolute as it
/// is, a relative path against `cwd`, a bare name in `path_var`.
fn resolve(
    argv0: &OsString,
    cwd: Option<&Path>,
    path_var: Option<&std::ffi::OsStr>,
) -> Option<PathBuf> {
    let p = Path::new(argv0);
    if argv0.is_empty() {
        return None;
    }
    if p.is_absolute() {
        return Some(p.to_path_buf());
    }
    if p.components().count() > 1 {
        return cwd.map(|cwd| cwd.join(p));
    }
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path_var?)
        .map(|dir| match (dir.is_absolute(), cwd) {
            (false, Some(cwd)) => cwd.join(dir).join(p),
            _ => dir.join(p),
        })
        .find(|c| {
            c.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv0_resolution() {
        let cwd = Path::new("/srv/app");
        assert_eq!(
            resolve(&"/usr/bin/x".into(), Some(cwd), None),
            Some("/usr/bin/x".into())
        );
        assert_eq!(
            resolve(&"./bin/x".into(), Some(cwd), None),
            Some("/srv/app/./bin/x".into())
        );
        assert_eq!(resolve(&"".into(), Some(cwd), None), None);
        // A bare name is looked up in PATH, like the shell did.
        assert_eq!(
            resolve(&"sh".into(), Some(cwd), Some("/nonexistent:/bin".as_ref())),
            Some("/bin/sh".into())
        );
        assert_eq!(
            resolve(
                &"no-such-program-xyz".into(),
                Some(cwd),
                Some("/bin".as_ref())
            ),
            None
        );
    }

    #[test]
    fn the_constructor_captured_the_directory() {
        // Set before `main` (and so before any test could change it).
        let start = START.get().expect("captured at start-up");
        assert!(start.cwd.is_some());
    }

    /// A script runs its interpreter (`/proc/PID/exe` names `/bin/sh`):
    /// that is no replacement. A binary that is not the one opened is.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_script_is_checked_by_what_was_opened_not_by_its_interpreter() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("server");
        std::fs::write(&script, "#!/bin/sh\nsleep 5\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exe = Exe {
            path: script.clone(),
            args: Vec::new(),
            cwd: None,
        };
        let open = exe.open().unwrap();
        let mut child = exe.command().spawn().unwrap();
        // After the exec: /proc names the interpreter.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let ran = open.runs_in(child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(ran.is_ok(), "{ran:?}");

        // A binary renamed over the path after it was opened is caught.
        let copy = dir.path().join("true");
        std::fs::copy("/bin/sleep", &copy).unwrap();
        let exe = Exe {
            path: copy.clone(),
            args: vec!["5".into()],
            cwd: None,
        };
        let open = exe.open().unwrap();
        let staged = dir.path().join("true.new");
        std::fs::copy("/bin/sleep", &staged).unwrap();
        std::fs::rename(&staged, &copy).unwrap();
        let mut child = exe.command().spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let ran = open.runs_in(child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(ran.is_err(), "a replaced binary passed: {ran:?}");
    }
}
