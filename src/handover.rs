//! What crosses the exec from one generation to the next.
//!
//! The parent places its listening sockets at FDs 3, 4, … of the child and
//! describes them in three variables:
//!
//! | variable          | value                                                 |
//! |-------------------|-------------------------------------------------------|
//! | `ENDLESS_FDS`     | how many sockets follow FD 2                          |
//! | `ENDLESS_FDNAMES` | their names (registered addresses, or `extra:NAME` for the descriptors of `crate::sockets`), `;`-separated |
//! | `ENDLESS_FDIDS`   | each socket's identity, `device:inode`, `;`-separated |
//! | `ENDLESS_PPID`    | the PID of the process that placed them (to signal)   |
//! | `ENDLESS_STATE`   | `FD:device:inode` of the state file (see `state`), placed after the report pipe |
//!
//! The child accepts them only when every FD named is a socket with exactly
//! the identity given (checked with `fstat`, touching nothing else), so a
//! process that the server itself spawns later (a grandchild, which inherits
//! the variables but, the sockets being close-on-exec, not the sockets)
//! ignores the stale variables. The sockets themselves authenticate the
//! hand-over, not the parent's PID: if the parent dies while the child
//! starts (a crash, the OOM killer), the child still adopts them and serves,
//! and signals nobody. These are not systemd's
//! `LISTEN_*` variables on purpose: systemd's `LISTEN_PID` must name the
//! child itself, which is unknown until after the fork, and writing it
//! between fork and exec would need an allocation there.
//!
//! This module is mechanism only: it never decides when to restart. It holds
//! the crate's `unsafe` code for file descriptors, each block with its
//! reasoning.

use std::ffi::OsString;
use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::stat::SFlag;
use nix::unistd::{getpid, getppid, Pid};

use crate::error::{Error, Result};

const FDS: &str = "ENDLESS_FDS";
const FDNAMES: &str = "ENDLESS_FDNAMES";
const FDIDS: &str = "ENDLESS_FDIDS";
/// The new generation's number (see `endless::generation`).
const GENERATION: &str = "ENDLESS_GENERATION";
/// `FD:device:inode` of the write end of a pipe on which a new generation
/// that fails to start says why (see `report`).
const REPORT: &str = "ENDLESS_REPORT";
const PPID: &str = "ENDLESS_PPID";
/// `FD:device:inode` of the file holding the state handed to the next
/// generation (see `state`): a memfd, or an unlinked temporary file.
const STATE: &str = "ENDLESS_STATE";
/// Set on a generation started only to serve while its parent re-executes
/// itself in place (`keep_pid`).
const TEMPORARY: &str = "ENDLESS_TEMPORARY";
/// For an in-place re-exec: the PID that re-executed itself (ours, if the
/// variables are meant for us), the FD numbers (which stay where they were),
/// and the temporary generation to stop and reap once we serve.
const EXEC_PID: &str = "ENDLESS_EXEC_PID";
const FDNUMS: &str = "ENDLESS_FDNUMS";
const TEMP_PID: &str = "ENDLESS_TEMP_PID";
const ALL_VARS: [&str; 11] = [
    FDS, FDNAMES, FDIDS, GENERATION, REPORT, PPID, TEMPORARY, EXEC_PID, FDNUMS, TEMP_PID, STATE,
];
/// systemd's socket-activation variables: they describe the first
/// generation's FDs only, so a new generation must never see them.
const SYSTEMD_VARS: [&str; 3] = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"];

/// The first FD after stdin, stdout and stderr.
pub(crate) const FIRST_FD: RawFd = 3;
/// More than any server registers; a larger count is a corrupt variable.
const MAX_FDS: usize = 1024;

/// Where this process's inherited sockets came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Spawned by the previous generation, which waits for our `SIGTERM`.
    Parent(Pid),
    /// This process re-executed itself in place (`keep_pid`). The temporary
    /// generation that served meanwhile is our child: stop it and reap it
    /// once we serve.
    SelfExec { temporary: Option<Pid> },
    /// systemd's socket activation.
    Systemd,
}

/// What this process was handed, read once at first use.
#[derive(Debug)]
struct HandedOver {
    origin: Origin,
    names: Vec<String>,
    fds: Vec<RawFd>,
    /// We are a temporary generation (see [`TEMPORARY`]).
    temporary: bool,
}

/// `Ok(None)`: not started by a reload. `Err`: the variables name our parent
/// but are corrupt; reported by `take_inherited`.
static HANDED_OVER: OnceLock<Result<Option<HandedOver>, (RawFd, String)>> = OnceLock::new();
/// The inherited FDs, until a server claims them.
static UNCLAIMED: Mutex<Option<Vec<(String, RawFd)>>> = Mutex::new(None);
/// The prefix of the hand-over name of an extra descriptor (see
/// `crate::sockets`), which no registered address starts with.
pub(crate) const EXTRA: &str = "extra:";
/// The inherited extra descriptors, by name, until claimed.
static UNCLAIMED_EXTRAS: Mutex<Vec<(String, RawFd)>> = Mutex::new(Vec::new());
/// The inherited report pipe, until `report` takes it.
static REPORT_FD: Mutex<Option<RawFd>> = Mutex::new(None);
/// The inherited state, until `state` takes it.
static STATE_FD: Mutex<Option<RawFd>> = Mutex::new(None);

/// Reads the hand-over variables once and marks the inherited FDs
/// close-on-exec straight away, so nothing this process spawns can inherit
/// them. Cheap to call again.
pub(crate) fn init() {
    HANDED_OVER.get_or_init(|| {
        let received = match read_env()? {
            Some(r) => Some(r),
            None => read_systemd_env()?,
        };
        if let Some(r) = &received {
            let mut fds = Vec::with_capacity(r.names.len());
            let mut extras = Vec::new();
            for (name, &fd) in r.names.iter().zip(&r.fds) {
                set_cloexec(fd).map_err(|e| (fd, format!("not an open file descriptor ({e})")))?;
                // Only our own hand-over carries extras; a systemd socket
                // named like one is still a listener.
                match name.strip_prefix(EXTRA) {
                    Some(extra) if r.origin != Origin::Systemd => {
                        extras.push((extra.to_owned(), fd))
                    }
                    _ => fds.push((name.clone(), fd)),
                }
            }
            *UNCLAIMED.lock().unwrap_or_else(|e| e.into_inner()) = Some(fds);
            *UNCLAIMED_EXTRAS.lock().unwrap_or_else(|e| e.into_inner()) = extras;
            if let Origin::Parent(_) = r.origin {
                let report = read_report_env(r.fds.len());
                if let Some(fd) = report {
                    // Like the sockets: nothing this process spawns gets it.
                    let _ = set_cloexec(fd);
                }
                *REPORT_FD.lock().unwrap_or_else(|e| e.into_inner()) = report;
            }
            if r.origin != Origin::Systemd {
                let state = read_state_env(&r.fds);
                if let Some(fd) = state {
                    let _ = set_cloexec(fd);
                }
                *STATE_FD.lock().unwrap_or_else(|e| e.into_inner()) = state;
            }
        }
        Ok(received)
    });
}

/// Where this process's inherited sockets came from, if it has any
/// (checked at first use, while a parent is still waiting for us).
pub(crate) fn origin() -> Option<Origin> {
    init();
    match HANDED_OVER.get() {
        Some(Ok(Some(r))) => Some(r.origin),
        _ => None,
    }
}

/// This generation's number: 0 unless a reload started it, then what the
/// previous generation said.
pub(crate) fn generation() -> u64 {
    init();
    if !matches!(origin(), Some(Origin::Parent(_) | Origin::SelfExec { .. })) {
        return 0;
    }
    std::env::var(GENERATION)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// Whether this process is a temporary generation, serving only while its
/// parent re-executes itself in place.
pub(crate) fn is_temporary() -> bool {
    init();
    matches!(HANDED_OVER.get(), Some(Ok(Some(r))) if r.temporary)
}

/// Takes ownership of the inherited sockets, with their names, once each
/// has passed `check`. The first caller gets them all; later callers get
/// none. If any fails the check, none is taken, and none is closed: an FD
/// that is not what the variables claim belongs to someone else.
pub(crate) fn take_inherited(
    check: impl Fn(BorrowedFd<'_>) -> Result<()>,
) -> Result<Vec<(String, OwnedFd)>> {
    init();
    if let Some(Err((fd, reason))) = HANDED_OVER.get() {
        return Err(Error::Inherit {
            fd: *fd,
            reason: reason.clone(),
        });
    }
    let mut unclaimed = UNCLAIMED.lock().unwrap_or_else(|e| e.into_inner());
    for (_, fd) in unclaimed.iter().flatten() {
        // SAFETY: `init` checked that the FD is open; it is only borrowed
        // for the check, while the lock keeps anyone from claiming it.
        check(unsafe { BorrowedFd::borrow_raw(*fd) })?;
    }
    let fds = unclaimed.take().unwrap_or_default();
    Ok(fds
        .into_iter()
        // SAFETY: each FD was placed by our parent for us (the variables name
        // our parent's PID), `init` checked it is open, and `take` hands it
        // out exactly once, so nothing else in this process owns it.
        .map(|(name, fd)| (name, unsafe { OwnedFd::from_raw_fd(fd) }))
        .collect())
}

/// Takes ownership of the extra descriptor handed over as `name`, if there
/// is one (see `crate::sockets`). Each is handed out once.
pub(crate) fn take_extra(name: &str) -> Option<OwnedFd> {
    init();
    let mut extras = UNCLAIMED_EXTRAS.lock().unwrap_or_else(|e| e.into_inner());
    let i = extras.iter().position(|(n, _)| n == name)?;
    let (_, fd) = extras.remove(i);
    // SAFETY: as in `take_inherited`: placed for us (its identity checked),
    // open, and removed from the list, so handed out exactly once.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Closes the extra descriptors no code claimed (a new version that no
/// longer uses them), and returns their names.
pub(crate) fn close_unclaimed_extras() -> Vec<String> {
    init();
    let extras = std::mem::take(&mut *UNCLAIMED_EXTRAS.lock().unwrap_or_else(|e| e.into_inner()));
    extras
        .into_iter()
        .map(|(name, fd)| {
            // SAFETY: as in `take_extra`; dropped at once, which closes it.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            name
        })
        .collect()
}

/// Tells the previous generation that this one is serving, by `SIGTERM`, but
/// only if it is still our parent: a reparented process never signals a
/// stranger that happens to reuse the PID.
pub(crate) fn notify_parent_ready(parent: Pid) -> io::Result<bool> {
    if getppid() != parent {
        return Ok(false);
    }
    kill(parent, Signal::SIGTERM)?;
    Ok(true)
}

fn read_env() -> Result<Option<HandedOver>, (RawFd, String)> {
    if let Some(r) = read_self_exec_env()? {
        return Ok(Some(r));
    }
    let Some(ppid) = std::env::var_os(PPID) else {
        return Ok(None);
    };
    let parent = match ppid.to_str().and_then(|s| s.parse::<i32>().ok()) {
        Some(pid) if pid > 0 => Pid::from_raw(pid),
        _ => return Ok(None),
    };
    let names = read_names()?;
    let fds: Vec<RawFd> = (0..names.len()).map(|i| FIRST_FD + i as RawFd).collect();
    if !sockets_are(&names, &fds) {
        // Variables meant for another process (we are a grandchild that
        // inherited them): the FDs are not those sockets, not ours to touch.
        return Ok(None);
    }
    Ok(Some(HandedOver {
        origin: Origin::Parent(parent),
        fds,
        names,
        temporary: std::env::var_os(TEMPORARY).is_some_and(|v| v == "1"),
    }))
}

/// The report pipe our parent placed after the `count` sockets, if it is
/// there and is the pipe `ENDLESS_REPORT` names (checked with `fstat`
/// only).
fn read_report_env(count: usize) -> Option<RawFd> {
    let value = std::env::var(REPORT).ok()?;
    let (fd, id) = value.split_once(':')?;
    let fd: RawFd = fd.parse().ok()?;
    (fd == FIRST_FD + count as RawFd && fd_id(fd, SFlag::S_IFIFO)? == id).then_some(fd)
}

/// The state file our parent (or our own image, before an in-place
/// re-exec) placed for us, if `ENDLESS_STATE` names an FD above 2 that is
/// none of the sockets and is exactly the regular file named (checked with
/// `fstat` only: anything else is somebody else's and stays untouched).
fn read_state_env(sockets: &[RawFd]) -> Option<RawFd> {
    let value = std::env::var(STATE).ok()?;
    let (fd, id) = value.split_once(':')?;
    let fd: RawFd = fd.parse().ok()?;
    (fd > 2 && !sockets.contains(&fd) && fd_id(fd, SFlag::S_IFREG)? == id).then_some(fd)
}

/// Takes the state file this process inherited, once.
pub(crate) fn take_state_fd() -> Option<OwnedFd> {
    init();
    let fd = STATE_FD.lock().unwrap_or_else(|e| e.into_inner()).take()?;
    // SAFETY: placed for us (checked by identity in `init`), and handed out
    // once (`take`), so nothing else in this process owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes the report pipe this process inherited, once.
pub(crate) fn take_report_pipe() -> Option<OwnedFd> {
    init();
    let fd = REPORT_FD.lock().unwrap_or_else(|e| e.into_inner()).take()?;
    // SAFETY: placed by our parent for us (checked by identity in `init`),
    // and handed out once (`take`), so nothing else in this process owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether each of `fds` is open and is the socket `ENDLESS_FDIDS` names.
/// Only `fstat` is called: an FD that is not what the variables say is
/// somebody else's and stays untouched.
fn sockets_are(names: &[String], fds: &[RawFd]) -> bool {
    let ids = std::env::var_os(FDIDS).unwrap_or_default();
    let ids: Vec<&str> = match ids.to_str() {
        Some("") => Vec::new(),
        Some(v) => v.split(';').collect(),
        None => return false,
    };
    ids.len() == fds.len()
        && fds
            .iter()
            .zip(ids)
            .zip(names)
            .all(|((&fd, id), name)| id_of(name, fd).is_some_and(|actual| actual == id))
}

/// The identity `fd` is handed over under: a listener's must be a socket's,
/// an extra descriptor's may be any file's (a memfd, a pipe).
fn id_of(name: &str, fd: RawFd) -> Option<String> {
    if name.starts_with(EXTRA) {
        fd_id_any(fd)
    } else {
        socket_id(fd)
    }
}

/// `device:inode` of `fd`, if it is open, whatever its type.
fn fd_id_any(fd: RawFd) -> Option<String> {
    use nix::sys::stat::fstat;
    // SAFETY: as in `fd_id`: borrowed for the `fstat` only.
    let st = fstat(unsafe { BorrowedFd::borrow_raw(fd) }).ok()?;
    Some(format!("{}:{}", st.st_dev, st.st_ino))
}

/// `device:inode` of the socket at `fd`, if it is an open socket.
fn socket_id(fd: RawFd) -> Option<String> {
    fd_id(fd, SFlag::S_IFSOCK)
}

/// `device:inode` of `fd`, if it is open and of type `kind`.
fn fd_id(fd: RawFd, kind: SFlag) -> Option<String> {
    use nix::sys::stat::fstat;
    // SAFETY: borrowed only for the `fstat`; an FD that is not open makes
    // it fail with EBADF, and nothing is closed or changed.
    let st = fstat(unsafe { BorrowedFd::borrow_raw(fd) }).ok()?;
    let of_kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == kind;
    of_kind.then(|| format!("{}:{}", st.st_dev, st.st_ino))
}

/// The identities of `fds` for `ENDLESS_FDIDS`.
fn encode_ids(names: &[&str], fds: &[RawFd]) -> io::Result<String> {
    let ids = fds
        .iter()
        .zip(names)
        .map(|(&fd, name)| {
            id_of(name, fd).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("FD {fd} is not an open socket"),
                )
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    Ok(ids.join(";"))
}

/// `ENDLESS_FDS` and `ENDLESS_FDNAMES`, checked against each other.
fn read_names() -> Result<Vec<String>, (RawFd, String)> {
    let count = std::env::var_os(FDS).unwrap_or_default();
    let count: usize = match count.to_str().and_then(|s| s.parse().ok()) {
        Some(n) if n <= MAX_FDS => n,
        _ => {
            return Err((
                FIRST_FD,
                format!("{FDS}={count:?} is not a count from 0 to {MAX_FDS}"),
            ))
        }
    };
    let names = decode_names(&std::env::var_os(FDNAMES).unwrap_or_default());
    if names.len() != count {
        return Err((
            FIRST_FD,
            format!("{FDNAMES} names {} sockets but {FDS}={count}", names.len()),
        ));
    }
    Ok(names)
}

/// The variables of an in-place re-exec, if they are ours: `ENDLESS_EXEC_PID`
/// is our own PID (a process we spawn later has another PID, so the stale
/// variables never mislead it).
fn read_self_exec_env() -> Result<Option<HandedOver>, (RawFd, String)> {
    let ours = std::env::var_os(EXEC_PID)
        .and_then(|v| v.to_str()?.parse::<i32>().ok())
        .is_some_and(|pid| pid == getpid().as_raw());
    if !ours {
        return Ok(None);
    }
    let names = read_names()?;
    let nums = std::env::var_os(FDNUMS).unwrap_or_default();
    let fds: Vec<RawFd> = nums
        .to_string_lossy()
        .split(',')
        .filter(|n| !n.is_empty())
        .map(|n| n.parse::<RawFd>().ok().filter(|fd| *fd > 2))
        .collect::<Option<_>>()
        .ok_or_else(|| {
            (
                FIRST_FD,
                format!("{FDNUMS}={nums:?} is not a list of FDs above 2"),
            )
        })?;
    if fds.len() != names.len() {
        return Err((
            fds.first().copied().unwrap_or(FIRST_FD),
            format!("{FDNUMS} lists {} FDs but {FDS}={}", fds.len(), names.len()),
        ));
    }
    let temporary = std::env::var_os(TEMP_PID)
        .and_then(|v| v.to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid > 0)
        .map(Pid::from_raw);
    Ok(Some(HandedOver {
        origin: Origin::SelfExec { temporary },
        names,
        fds,
        temporary: false,
    }))
}

/// systemd socket activation: `LISTEN_PID` (which must be ours), `LISTEN_FDS`
/// and optionally `LISTEN_FDNAMES` (`:`-separated). Read by hand rather than
/// with `sd-notify`'s helper so that a bad value is an error naming the FD and
/// nothing is touched before it has been checked.
fn read_systemd_env() -> Result<Option<HandedOver>, (RawFd, String)> {
    let Some(pid) = std::env::var_os("LISTEN_PID") else {
        return Ok(None);
    };
    if pid.to_str().and_then(|p| p.parse::<i32>().ok()) != Some(getpid().as_raw()) {
        // Meant for another process (our parent was activated, not us).
        return Ok(None);
    }
    let count = std::env::var_os("LISTEN_FDS").unwrap_or_default();
    let count: usize = match count.to_str().and_then(|s| s.parse().ok()) {
        Some(n) if n <= MAX_FDS => n,
        _ => {
            return Err((
                FIRST_FD,
                format!("LISTEN_FDS={count:?} is not a count from 0 to {MAX_FDS}"),
            ))
        }
    };
    let names = match std::env::var_os("LISTEN_FDNAMES") {
        None => vec![String::new(); count],
        Some(v) if v.is_empty() && count == 0 => Vec::new(),
        Some(v) => {
            let names: Vec<String> = v.to_string_lossy().split(':').map(str::to_owned).collect();
            if names.len() != count {
                return Err((
                    FIRST_FD,
                    format!(
                        "LISTEN_FDNAMES names {} sockets but LISTEN_FDS={count}",
                        names.len()
                    ),
                ));
            }
            names
        }
    };
    Ok(Some(HandedOver {
        origin: Origin::Systemd,
        fds: (0..names.len()).map(|i| FIRST_FD + i as RawFd).collect(),
        names,
        temporary: false,
    }))
}

/// Prepares `cmd` to start the next generation with `listeners` at FDs 3, 4, ….
///
/// `blocked` is blocked in the child before the exec and stays blocked across
/// it, so a reload or stop signal that arrives before the new generation has
/// installed its handlers stays pending instead of killing it.
///
/// `temporary`: the child only serves while we re-execute ourselves in place.
/// `report`: the write end of a pipe, placed after the listeners, on which
/// the child says why it failed, if it does. `state`: the file holding the
/// state for the child (see `state`), placed after that.
///
/// Fails only if a listener is not an open socket (which would be a bug).
pub(crate) fn pass_listeners(
    cmd: &mut Command,
    listeners: &[(&str, RawFd)],
    blocked: SigSet,
    temporary: bool,
    report: Option<RawFd>,
    state: Option<RawFd>,
) -> io::Result<()> {
    for var in SYSTEMD_VARS.iter().chain(&ALL_VARS) {
        cmd.env_remove(var);
    }
    let names: Vec<&str> = listeners.iter().map(|(name, _)| *name).collect();
    let mut sources: Vec<RawFd> = listeners.iter().map(|(_, fd)| *fd).collect();
    cmd.env(FDS, listeners.len().to_string())
        .env(FDNAMES, encode_names(&names))
        .env(FDIDS, encode_ids(&names, &sources)?)
        .env(GENERATION, (generation() + 1).to_string())
        .env(PPID, getpid().to_string());
    if temporary {
        cmd.env(TEMPORARY, "1");
    }
    if let Some(pipe) = report {
        if let Some(id) = fd_id(pipe, SFlag::S_IFIFO) {
            let at = FIRST_FD + sources.len() as RawFd;
            cmd.env(REPORT, format!("{at}:{id}"));
            sources.push(pipe);
        }
    }
    if let Some(state) = state {
        if let Some(id) = fd_id(state, SFlag::S_IFREG) {
            let at = FIRST_FD + sources.len() as RawFd;
            cmd.env(STATE, format!("{at}:{id}"));
            sources.push(state);
        }
    }

    // Everything the closure needs is allocated here, before the fork.
    let mut moved: Vec<RawFd> = vec![-1; sources.len()];
    // SAFETY: the closure runs between fork and exec, where only
    // async-signal-safe calls are allowed. It calls only `sigprocmask`,
    // `fcntl` and `dup2`, writes into a buffer allocated above, and builds
    // errors with `last_os_error`, which does not allocate.
    unsafe {
        cmd.pre_exec(move || place_fds(&sources, &mut moved, &blocked));
    }
    Ok(())
}

/// Runs in the forked child: blocks `blocked`, then puts `sources[i]` at
/// `FIRST_FD + i` without close-on-exec.
fn place_fds(sources: &[RawFd], moved: &mut [RawFd], blocked: &SigSet) -> io::Result<()> {
    use nix::libc;
    // SAFETY (whole function): plain syscalls on FDs this process owns, with
    // pointers to live, properly typed values.
    unsafe {
        // std resets the signal mask just before running this closure, so the
        // block must happen here.
        if libc::sigprocmask(libc::SIG_BLOCK, blocked.as_ref(), std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        // First move every source above the target range, so that a source
        // already sitting at, say, FD 4 is not overwritten while FD 4 is
        // filled from another source. The copies are close-on-exec and vanish
        // at exec.
        let above = FIRST_FD + sources.len() as RawFd;
        for (src, slot) in sources.iter().zip(moved.iter_mut()) {
            let fd = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, above);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            *slot = fd;
        }
        // `dup2` clears close-on-exec on the target: exactly these FDs, and
        // only in this child, cross the exec.
        for (i, fd) in moved.iter().enumerate() {
            if libc::dup2(*fd, FIRST_FD + i as RawFd) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Re-executes this process in place (same PID) as `path` with `args` in
/// the directory `cwd`, handing it `listeners` where they are, and naming
/// `temporary`, the generation serving meanwhile. Returns only if the exec
/// failed, after undoing what it changed, so the caller can go on serving.
///
/// Exactly the listeners lose close-on-exec, just before the `execve`; a
/// process that another thread forks in that instant could inherit them (a
/// window of a few system calls). The reload and stop signals are blocked in
/// this thread, whose mask the new image inherits, so none that arrives
/// after the exec is lost or fatal before the new image's handlers are in.
pub(crate) fn exec_in_place(
    path: &std::path::Path,
    args: &[std::ffi::OsString],
    cwd: Option<&std::path::Path>,
    listeners: &[(&str, RawFd)],
    blocked: SigSet,
    temporary: Option<Pid>,
    state: Option<RawFd>,
) -> io::Error {
    use std::ffi::CString;
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;

    let cstr = |b: &[u8]| CString::new(b).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let prepared = (|| -> io::Result<(CString, Vec<CString>, Vec<CString>)> {
        let exe = cstr(path.as_os_str().as_bytes())?;
        let mut argv = vec![exe.clone()];
        for a in args {
            argv.push(cstr(a.as_bytes())?);
        }
        let mut env = Vec::new();
        for (k, v) in std::env::vars_os() {
            let k = k.to_string_lossy();
            let replaced = k == "PWD" && cwd.is_some();
            if replaced || ALL_VARS.contains(&k.as_ref()) || SYSTEMD_VARS.contains(&k.as_ref()) {
                continue;
            }
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            env.push(cstr(&kv)?);
        }
        let names: Vec<&str> = listeners.iter().map(|(name, _)| *name).collect();
        let nums: Vec<String> = listeners.iter().map(|(_, fd)| fd.to_string()).collect();
        let mut set = |k: &str, v: String| -> io::Result<()> {
            env.push(cstr(format!("{k}={v}").as_bytes())?);
            Ok(())
        };
        set(FDS, listeners.len().to_string())?;
        set(FDNAMES, encode_names(&names))?;
        set(FDNUMS, nums.join(","))?;
        set(EXEC_PID, getpid().to_string())?;
        set(GENERATION, (generation() + 1).to_string())?;
        if let Some(t) = temporary {
            set(TEMP_PID, t.to_string())?;
        }
        if let Some(id) = state.and_then(|fd| fd_id(fd, SFlag::S_IFREG)) {
            set(STATE, format!("{}:{id}", state.unwrap_or_default()))?;
        }
        if let Some(cwd) = cwd {
            let mut kv = b"PWD=".to_vec();
            kv.extend_from_slice(cwd.as_os_str().as_bytes());
            env.push(cstr(&kv)?);
        }
        Ok((exe, argv, env))
    })();
    let (exe, argv, env) = match prepared {
        Ok(p) => p,
        Err(e) => return e,
    };

    // The logical directory (see `exe`): after a symlink switch, the new
    // release's. The old one is restored if the exec fails.
    let old_cwd = std::env::current_dir().ok();
    if let Some(cwd) = cwd {
        if let Err(e) = std::env::set_current_dir(cwd) {
            return e;
        }
    }
    let restore_cwd = || {
        if let (Some(old), Some(_)) = (&old_cwd, cwd) {
            let _ = std::env::set_current_dir(old);
        }
    };
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    let mut old_mask = SigSet::empty();
    if let Err(e) = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_BLOCK,
        Some(&blocked),
        Some(&mut old_mask),
    ) {
        restore_cwd();
        return e.into();
    }
    let crossing = listeners.iter().map(|(_, fd)| *fd).chain(state);
    for fd in crossing.clone() {
        let _ = set_cloexec_flag(fd, false);
    }
    let err = match nix::unistd::execve(&exe, &argv, &env) {
        Err(e) => io::Error::from(e),
        Ok(never) => match never {},
    };
    // Still here: undo, and let the caller resume.
    for fd in crossing {
        let _ = set_cloexec_flag(fd, true);
    }
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&old_mask),
        None,
    );
    restore_cwd();
    err
}

fn set_cloexec(fd: RawFd) -> io::Result<()> {
    set_cloexec_flag(fd, true)
}

fn set_cloexec_flag(fd: RawFd, on: bool) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    // SAFETY: the FD is only borrowed for the duration of the two `fcntl`
    // calls; if it is not open, `fcntl` fails with EBADF, which we report.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let mut flags = FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD)?);
    flags.set(FdFlag::FD_CLOEXEC, on);
    fcntl(fd, FcntlArg::F_SETFD(flags))?;
    Ok(())
}

/// Joins names with `;`, escaping `%` and `;` so that any name (a Unix
/// socket path may hold either) survives the trip.
fn encode_names(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| n.replace('%', "%25").replace(';', "%3B"))
        .collect::<Vec<_>>()
        .join(";")
}

fn decode_names(value: &OsString) -> Vec<String> {
    let value = value.to_string_lossy();
    if value.is_empty() {
        return Vec::new();
    }
    value
        .split(';')
        .map(|n| n.replace("%3B", ";").replace("%25", "%"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let names = ["127.0.0.1:80", ":8080", "unix:/run/a;b%3B.sock", "[::1]:0"];
        let encoded = encode_names(&names);
        assert_eq!(decode_names(&encoded.into()), names);
        assert!(decode_names(&OsString::new()).is_empty());
    }
}
