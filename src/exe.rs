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
//! The directory and `PATH` are captured when the process starts, before
//! `main` (a constructor), so that user code that changes directory before
//! calling into `endless` cannot mislead the reload.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where the process was started, captured once.
#[derive(Debug)]
struct Start {
    /// The logical working directory (see the module docs).
    cwd: Option<PathBuf>,
    path_var: Option<OsString>,
}

static START: OnceLock<Start> = OnceLock::new();

// SAFETY: runs before `main`, single-threaded. It only reads the
// environment and the working directory (getenv, getcwd, stat) and stores
// them in a `OnceLock`; it relies on no runtime service that is set up in
// `main`. `std::env::args` is not read here: the arguments never change,
// so they are read at first use instead.
#[allow(unsafe_code)]
#[ctor::ctor(unsafe)]
fn capture_at_start() {
    start();
}

/// The start-up state; captured now if the constructor did not run (it
/// runs on every supported platform; this is the fallback).
fn start() -> &'static Start {
    START.get_or_init(|| Start {
        cwd: logical_cwd(),
        path_var: std::env::var_os("PATH"),
    })
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

/// Resolves the program to start as the next generation, now.
pub(crate) fn current() -> Exe {
    let start = start();
    let (argv0, args) = args();
    let cwd = start.cwd.clone();
    let path = resolve(argv0, cwd.as_deref(), start.path_var.as_deref())
        .or_else(|| std::env::current_exe().ok())
        .unwrap_or_else(|| PathBuf::from(argv0));
    Exe {
        path,
        args: args.clone(),
        cwd,
    }
}

impl Exe {
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

/// `$PWD` if it is absolute and names the directory `getcwd()` names,
/// else `getcwd()`.
fn logical_cwd() -> Option<PathBuf> {
    let physical = std::env::current_dir().ok()?;
    let same = |p: &Path| {
        let (Ok(a), Ok(b)) = (std::fs::metadata(p), std::fs::metadata(&physical)) else {
            return false;
        };
        a.dev() == b.dev() && a.ino() == b.ino()
    };
    match std::env::var_os("PWD").map(PathBuf::from) {
        Some(pwd) if pwd.is_absolute() && same(&pwd) => Some(pwd),
        _ => Some(physical),
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
}
