//! What crosses the exec from one generation to the next: one [`Record`],
//! written to the environment by [`Record::to_env`] and read back by
//! [`Record::from_env`], whether the next generation is a spawned child
//! (its descriptors placed at FDs 3, 4, …) or this very process
//! re-executed in place (`keep_pid`, descriptors left where they are).
//!
//! | variable             | value                                                  |
//! |----------------------|--------------------------------------------------------|
//! | `ENDLESS_HANDOVER`   | `1;parent=PID[;temporary][;probation]` (spawned) or `1;exec=PID[;temporary=PID]` (re-executed) |
//! | `ENDLESS_GENERATION` | the receiver's generation number                       |
//! | `ENDLESS_FDS`        | `FD=KIND:DEVICE:INODE:NAME` for each descriptor, `;`-separated (names percent-encoded) |
//! | `ENDLESS_ORPHANS`    | re-executed only: PIDs of children the old image left, `,`-separated |
//!
//! The receiver accepts them only when every FD named is open and is
//! exactly the file given (device and inode, checked with `fstat`, touching
//! nothing else), and, for a re-exec, when the PID named is its own. So a
//! process that the server itself spawns later (a grandchild, which
//! inherits the variables but, the descriptors being close-on-exec, not the
//! descriptors) ignores the stale variables. The descriptors themselves
//! authenticate the hand-over, not the parent's PID: if the parent dies
//! while the child starts (a crash, the OOM killer), the child still adopts
//! them and serves, and signals nobody. These are not systemd's `LISTEN_*`
//! variables on purpose: systemd's `LISTEN_PID` must name the child itself,
//! which is unknown until after the fork, and writing it between fork and
//! exec would need an allocation there. (systemd's, for socket activation,
//! are read here too, into the same record.)
//!
//! Every inherited descriptor is marked close-on-exec when the record is
//! read, before `main` (see `lib.rs`), so nothing the program spawns can
//! inherit one; each is an [`Inherited`] whose [`Inherited::take`] is the
//! only place an `OwnedFd` is made from it.
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

const HANDOVER: &str = "ENDLESS_HANDOVER";
const GENERATION: &str = "ENDLESS_GENERATION";
const FDS: &str = "ENDLESS_FDS";
const ORPHANS: &str = "ENDLESS_ORPHANS";
const ALL_VARS: [&str; 4] = [HANDOVER, GENERATION, FDS, ORPHANS];
/// systemd's socket-activation variables: they describe the first
/// generation's FDs only, so a new generation must never see them.
const SYSTEMD_VARS: [&str; 3] = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"];
/// The version of the record's layout, first in `ENDLESS_HANDOVER`.
const VERSION: &str = "1";

/// The first FD after stdin, stdout and stderr.
pub(crate) const FIRST_FD: RawFd = 3;
/// More than any server hands over; a larger count is a corrupt variable.
const MAX_FDS: usize = 1024;

/// What an inherited descriptor is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A listening socket, named by its registered address.
    Listener,
    /// A listening Unix socket whose file this server does not own
    /// (systemd's socket activation passed it in): every later generation
    /// leaves that file alone too.
    ListenerUnowned,
    /// A descriptor of `endless::sockets`, by the name the program gave it.
    Extra,
    /// The child's end of the link to the generation that started it (see
    /// `link`).
    Link,
    /// The state handed over (see `state`).
    State,
    /// `keep_pid`: the link to the temporary generation, kept across the
    /// re-exec in place.
    TemporaryLink,
    /// HTTP/3: the new generation's end of the datagram pair to the
    /// previous one, named by the registered address (see `http3`).
    Http3Pair,
}

impl Kind {
    const ALL: [(Kind, &'static str); 7] = [
        (Kind::Listener, "listener"),
        (Kind::ListenerUnowned, "listener-unowned"),
        (Kind::Extra, "extra"),
        (Kind::Link, "link"),
        (Kind::State, "state"),
        (Kind::TemporaryLink, "temporary-link"),
        (Kind::Http3Pair, "http3-pair"),
    ];

    fn as_str(self) -> &'static str {
        Kind::ALL
            .iter()
            .find(|(k, _)| *k == self)
            .map_or("?", |(_, s)| s)
    }

    fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.iter().find(|(_, n)| *n == s).map(|(k, _)| *k)
    }

    /// The file type a descriptor of this kind must have (`None`: any).
    fn file_type(self) -> Option<SFlag> {
        match self {
            Kind::Listener
            | Kind::ListenerUnowned
            | Kind::Link
            | Kind::TemporaryLink
            | Kind::Http3Pair => Some(SFlag::S_IFSOCK),
            Kind::State => Some(SFlag::S_IFREG),
            Kind::Extra => None,
        }
    }
}

/// A file's identity: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.dev, self.ino)
    }
}

impl FileId {
    /// The identity of the open file at `fd`, if it is open and, when
    /// `kind` is given, of that type. Only `fstat` is called: an FD that is
    /// not what is expected is somebody else's and stays untouched.
    pub(crate) fn of_fd(fd: RawFd, kind: Option<SFlag>) -> Option<FileId> {
        use nix::sys::stat::fstat;
        // SAFETY: borrowed only for the `fstat`; an FD that is not open makes
        // it fail with EBADF, and nothing is closed or changed.
        let st = fstat(unsafe { BorrowedFd::borrow_raw(fd) }).ok()?;
        let of_kind =
            kind.is_none_or(|k| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == k);
        of_kind.then_some(FileId {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
        })
    }

    /// The identity of the file at `path` (following symlinks).
    pub(crate) fn of_path(path: &std::path::Path) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    fn parse(dev: &str, ino: &str) -> Option<FileId> {
        Some(FileId {
            dev: dev.parse().ok()?,
            ino: ino.parse().ok()?,
        })
    }
}

/// One descriptor of a record: where it is in the receiving process, what
/// it is for, its name, and its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Passed {
    pub(crate) fd: RawFd,
    pub(crate) kind: Kind,
    pub(crate) name: String,
    pub(crate) id: FileId,
}

/// How this process came to be handed descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Spawned by the previous generation, which waits for our `SIGTERM`.
    /// `temporary`: we only serve while it re-executes itself in place
    /// (`keep_pid`). `probation`: it keeps its sockets after we take over,
    /// until our probation is over.
    Parent {
        parent: Pid,
        temporary: bool,
        probation: bool,
    },
    /// This process re-executed itself in place (`keep_pid`). The temporary
    /// generation that served meanwhile is our child: stop it and reap it
    /// once we serve. `reload`: a reload signal arrived during the drain
    /// before the exec; run it once serving.
    SelfExec {
        temporary: Option<Pid>,
        reload: bool,
    },
    /// systemd's socket activation.
    Systemd,
}

/// Everything one generation hands the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) origin: Origin,
    pub(crate) generation: u64,
    pub(crate) fds: Vec<Passed>,
    /// Re-executed only: children the old image started, which nobody else
    /// will reap.
    pub(crate) orphans: Vec<Pid>,
}

impl Record {
    /// The variables that describe this record.
    pub(crate) fn to_env(&self) -> Vec<(&'static str, String)> {
        let origin = match self.origin {
            Origin::Parent {
                parent,
                temporary,
                probation,
            } => {
                let mut s = format!("{VERSION};parent={parent}");
                if temporary {
                    s.push_str(";temporary");
                }
                if probation {
                    s.push_str(";probation");
                }
                s
            }
            Origin::SelfExec { temporary, reload } => {
                let mut s = format!("{VERSION};exec={}", getpid());
                if let Some(t) = temporary {
                    s.push_str(&format!(";temporary={t}"));
                }
                if reload {
                    s.push_str(";reload");
                }
                s
            }
            // Never written: systemd writes its own.
            Origin::Systemd => format!("{VERSION};systemd"),
        };
        let fds: Vec<String> = self
            .fds
            .iter()
            .map(|p| {
                format!(
                    "{}={}:{}:{}:{}",
                    p.fd,
                    p.kind.as_str(),
                    p.id.dev,
                    p.id.ino,
                    encode_name(&p.name)
                )
            })
            .collect();
        let mut env = vec![
            (HANDOVER, origin),
            (GENERATION, self.generation.to_string()),
            (FDS, fds.join(";")),
        ];
        if !self.orphans.is_empty() {
            let pids: Vec<String> = self.orphans.iter().map(|p| p.to_string()).collect();
            env.push((ORPHANS, pids.join(",")));
        }
        env
    }

    /// The record in the variables `get` returns, if it is meant for this
    /// process (`me`, and the descriptors are exactly those named, by
    /// `identity`). `Err((fd, reason))`: the variables claim to be ours but
    /// are corrupt.
    pub(crate) fn from_env(
        get: impl Fn(&str) -> Option<OsString>,
        me: Pid,
        identity: impl Fn(RawFd, Option<SFlag>) -> Option<FileId>,
    ) -> Result<Option<Record>, (RawFd, String)> {
        let Some(header) = get(HANDOVER) else {
            return Ok(None);
        };
        let header = header.to_string_lossy().into_owned();
        let mut parts = header.split(';');
        if parts.next() != Some(VERSION) {
            return Err((
                FIRST_FD,
                format!("{HANDOVER}={header:?} is not a hand-over this version reads"),
            ));
        }
        let (mut parent, mut exec, mut temporary, mut temp_pid, mut probation, mut reload) =
            (None, None, false, None, false, false);
        for part in parts {
            let pid = |v: &str| v.parse::<i32>().ok().filter(|p| *p > 0).map(Pid::from_raw);
            match part.split_once('=') {
                Some(("parent", v)) => parent = pid(v),
                Some(("exec", v)) => exec = pid(v),
                Some(("temporary", v)) => temp_pid = pid(v),
                None if part == "temporary" => temporary = true,
                None if part == "probation" => probation = true,
                None if part == "reload" => reload = true,
                _ => {}
            }
        }
        let origin = match (parent, exec) {
            (Some(parent), None) => Origin::Parent {
                parent,
                temporary,
                probation,
            },
            // A re-exec's variables, inherited by a process we spawned
            // later: not ours.
            (None, Some(pid)) if pid != me => return Ok(None),
            (None, Some(_)) => Origin::SelfExec {
                temporary: temp_pid,
                reload,
            },
            _ => {
                return Err((
                    FIRST_FD,
                    format!("{HANDOVER}={header:?} names neither a parent nor an exec"),
                ))
            }
        };
        let fds = parse_fds(&get(FDS).unwrap_or_default())?;
        let authentic = fds
            .iter()
            .all(|p| identity(p.fd, p.kind.file_type()) == Some(p.id));
        if !authentic {
            // Variables meant for another process (we are a grandchild that
            // inherited them): the FDs are not those files, not ours to
            // touch.
            return Ok(None);
        }
        let generation = get(GENERATION)
            .and_then(|g| g.to_str()?.parse().ok())
            .unwrap_or(1);
        let orphans = get(ORPHANS)
            .map(|v| {
                v.to_string_lossy()
                    .split(',')
                    .filter_map(|p| p.parse::<i32>().ok().filter(|p| *p > 0))
                    .map(Pid::from_raw)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(Record {
            origin,
            generation,
            fds,
            orphans,
        }))
    }
}

/// `ENDLESS_FDS`, checked for form (not yet for identity).
fn parse_fds(value: &OsString) -> Result<Vec<Passed>, (RawFd, String)> {
    let value = value.to_string_lossy();
    if value.is_empty() {
        return Ok(Vec::new());
    }
    let entries: Vec<&str> = value.split(';').collect();
    if entries.len() > MAX_FDS {
        return Err((
            FIRST_FD,
            format!(
                "{FDS} names {} descriptors, more than {MAX_FDS}",
                entries.len()
            ),
        ));
    }
    let mut fds: Vec<Passed> = Vec::with_capacity(entries.len());
    for entry in entries {
        let bad = |fd: RawFd| {
            (
                fd,
                format!("{FDS} entry {entry:?} is not FD=KIND:DEVICE:INODE:NAME"),
            )
        };
        let (fd, rest) = entry.split_once('=').ok_or_else(|| bad(FIRST_FD))?;
        let fd: RawFd = fd
            .parse()
            .ok()
            .filter(|fd| *fd > 2)
            .ok_or_else(|| bad(FIRST_FD))?;
        let mut f = rest.splitn(4, ':');
        let (kind, dev, ino, name) = (f.next(), f.next(), f.next(), f.next());
        let kind = kind.and_then(Kind::parse).ok_or_else(|| bad(fd))?;
        let id = FileId::parse(dev.unwrap_or(""), ino.unwrap_or("")).ok_or_else(|| bad(fd))?;
        if fds.iter().any(|p| p.fd == fd) {
            return Err((fd, format!("{FDS} names FD {fd} twice")));
        }
        fds.push(Passed {
            fd,
            kind,
            name: decode_name(name.ok_or_else(|| bad(fd))?),
            id,
        });
    }
    Ok(fds)
}

/// An inherited descriptor, not yet claimed by any part of the crate.
#[derive(Debug)]
pub(crate) struct Inherited {
    fd: RawFd,
    pub(crate) name: String,
    pub(crate) kind: Kind,
}

impl Inherited {
    /// Takes ownership of the descriptor: the one place where an inherited
    /// FD becomes an `OwnedFd`.
    pub(crate) fn take(self) -> OwnedFd {
        // SAFETY: the FD was handed to this process (its identity checked
        // against the record, which names this process), `init` checked it
        // is open, and each `Inherited` is handed out once (it leaves the
        // unclaimed list under its lock), so nothing else owns it.
        unsafe { OwnedFd::from_raw_fd(self.fd) }
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd
    }

    /// Borrowed, for a check that must not take it.
    pub(crate) fn borrow(&self) -> BorrowedFd<'_> {
        // SAFETY: open (checked by `init`) and owned by this value until
        // `take`, which consumes it.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }
}

/// What this process was handed, read once: the record, and the
/// descriptors nobody has claimed yet.
#[derive(Debug)]
struct Received {
    origin: Origin,
    generation: u64,
    orphans: Vec<Pid>,
}

/// `Ok(None)`: not started by a reload. `Err`: the variables claim to be
/// ours but are corrupt; reported by `take_listeners`.
static RECEIVED: OnceLock<Result<Option<Received>, (RawFd, String)>> = OnceLock::new();
static UNCLAIMED: Mutex<Vec<Inherited>> = Mutex::new(Vec::new());

fn unclaimed() -> std::sync::MutexGuard<'static, Vec<Inherited>> {
    UNCLAIMED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads the hand-over once and marks every inherited FD close-on-exec
/// straight away, so nothing this process spawns can inherit one. Runs
/// before `main` (see `lib.rs`); cheap to call again.
pub(crate) fn init() {
    RECEIVED.get_or_init(|| {
        let record = match Record::from_env(|k| std::env::var_os(k), getpid(), FileId::of_fd)? {
            Some(r) => Some(r),
            None => read_systemd_env()?,
        };
        let Some(record) = record else {
            return Ok(None);
        };
        let mut list = unclaimed();
        for p in &record.fds {
            set_cloexec(p.fd).map_err(|e| (p.fd, format!("not an open file descriptor ({e})")))?;
            list.push(Inherited {
                fd: p.fd,
                name: p.name.clone(),
                kind: p.kind,
            });
        }
        Ok(Some(Received {
            origin: record.origin,
            generation: record.generation,
            orphans: record.orphans,
        }))
    });
}

fn received() -> Option<&'static Received> {
    init();
    match RECEIVED.get() {
        Some(Ok(Some(r))) => Some(r),
        _ => None,
    }
}

/// Where this process's inherited descriptors came from, if it has any
/// (checked at first use, while a parent is still waiting for us).
pub(crate) fn origin() -> Option<Origin> {
    received().map(|r| r.origin)
}

/// This generation's number: 0 unless a reload started it, then what the
/// previous generation said.
pub(crate) fn generation() -> u64 {
    match received() {
        Some(r) if r.origin != Origin::Systemd => r.generation,
        _ => 0,
    }
}

/// The number the next generation gets (a corrupt record's huge number
/// stays where it is rather than overflow).
pub(crate) fn next_generation() -> u64 {
    generation().saturating_add(1)
}

/// Children the image before an in-place re-exec left behind.
pub(crate) fn orphans() -> &'static [Pid] {
    received().map_or(&[], |r| &r.orphans)
}

/// Takes the inherited listening sockets, once each has passed `check`,
/// with their names and whether their socket files are ours. The first
/// caller gets them all. If any fails the check, none is taken, and none is
/// closed: an FD that is not what the variables claim belongs to someone
/// else.
pub(crate) fn take_listeners(
    check: impl Fn(BorrowedFd<'_>) -> Result<()>,
) -> Result<Vec<(String, bool, OwnedFd)>> {
    init();
    if let Some(Err((fd, reason))) = RECEIVED.get() {
        return Err(Error::Inherit {
            fd: *fd,
            reason: reason.clone(),
        });
    }
    let activated = origin() == Some(Origin::Systemd);
    let mut list = unclaimed();
    let is_listener = |i: &Inherited| matches!(i.kind, Kind::Listener | Kind::ListenerUnowned);
    for i in list.iter().filter(|i| is_listener(i)) {
        check(i.borrow())?;
    }
    let (listeners, rest): (Vec<Inherited>, Vec<Inherited>) = std::mem::take(&mut *list)
        .into_iter()
        .partition(is_listener);
    *list = rest;
    Ok(listeners
        .into_iter()
        .map(|i| {
            let owns_file = i.kind == Kind::Listener && !activated;
            (i.name.clone(), owns_file, i.take())
        })
        .collect())
}

/// Takes the inherited descriptor of `kind` named `name` (any name if
/// `None`), if there is one. Each is handed out once.
pub(crate) fn take(kind: Kind, name: Option<&str>) -> Option<Inherited> {
    init();
    let mut list = unclaimed();
    let i = list
        .iter()
        .position(|i| i.kind == kind && name.is_none_or(|n| i.name == n))?;
    Some(list.remove(i))
}

/// Closes the extra descriptors (and HTTP/3 pairs) no code claimed (a new
/// version that no longer uses them), and returns their names.
pub(crate) fn close_unclaimed_extras() -> Vec<String> {
    init();
    let mut list = unclaimed();
    let (extras, rest): (Vec<Inherited>, Vec<Inherited>) = std::mem::take(&mut *list)
        .into_iter()
        .partition(|i| matches!(i.kind, Kind::Extra | Kind::Http3Pair));
    *list = rest;
    extras
        .into_iter()
        .map(|i| {
            let name = match i.kind {
                Kind::Http3Pair => format!("{} (http3-pair)", i.name),
                _ => i.name.clone(),
            };
            drop(i.take());
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

/// systemd socket activation: `LISTEN_PID` (which must be ours), `LISTEN_FDS`
/// and optionally `LISTEN_FDNAMES` (`:`-separated). Read by hand rather than
/// with `sd-notify`'s helper so that a bad value is an error naming the FD and
/// nothing is touched before it has been checked.
fn read_systemd_env() -> Result<Option<Record>, (RawFd, String)> {
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
    let fds = names
        .into_iter()
        .enumerate()
        .map(|(i, name)| Passed {
            fd: FIRST_FD + i as RawFd,
            kind: Kind::Listener,
            name,
            // Not checked: systemd's variables name us by PID.
            id: FileId { dev: 0, ino: 0 },
        })
        .collect();
    Ok(Some(Record {
        origin: Origin::Systemd,
        generation: 0,
        fds,
        orphans: Vec::new(),
    }))
}

/// A descriptor to hand over: what it is, its name, and where it is in this
/// process.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing<'a> {
    pub(crate) kind: Kind,
    pub(crate) name: &'a str,
    pub(crate) fd: RawFd,
}

/// The identities of `outgoing`, placed at `at(i)` in the receiver.
fn passed(
    outgoing: &[Outgoing<'_>],
    at: impl Fn(usize, RawFd) -> RawFd,
) -> io::Result<Vec<Passed>> {
    outgoing
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let id = FileId::of_fd(o.fd, o.kind.file_type()).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "FD {} ({}) is not an open {} file",
                        o.fd,
                        o.name,
                        o.kind.as_str()
                    ),
                )
            })?;
            Ok(Passed {
                fd: at(i, o.fd),
                kind: o.kind,
                name: o.name.to_owned(),
                id,
            })
        })
        .collect()
}

/// Prepares `cmd` to start the next generation with `outgoing` at FDs 3, 4,
/// …, described by a record naming this process as its parent.
///
/// `blocked` is blocked in the child before the exec and stays blocked across
/// it, so a reload or stop signal that arrives before the new generation has
/// installed its handlers stays pending instead of killing it.
///
/// Fails only if a descriptor is not open (which would be a bug).
pub(crate) fn prepare_spawn(
    cmd: &mut Command,
    outgoing: &[Outgoing<'_>],
    blocked: SigSet,
    temporary: bool,
    probation: bool,
) -> io::Result<()> {
    for var in SYSTEMD_VARS.iter().chain(&ALL_VARS) {
        cmd.env_remove(var);
    }
    let record = Record {
        origin: Origin::Parent {
            parent: getpid(),
            temporary,
            probation,
        },
        generation: next_generation(),
        fds: passed(outgoing, |i, _| FIRST_FD + i as RawFd)?,
        orphans: Vec::new(),
    };
    for (k, v) in record.to_env() {
        cmd.env(k, v);
    }
    let sources: Vec<RawFd> = outgoing.iter().map(|o| o.fd).collect();
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

/// An in-place re-exec, prepared: every string it needs is built, so that
/// the last moment before the `execve` does nothing but system calls.
pub(crate) struct Reexec {
    exe: std::ffi::CString,
    /// What to execute: an open file (exactly that inode), or a path.
    program: Program,
    argv: Vec<std::ffi::CString>,
    env: Vec<std::ffi::CString>,
    cwd: Option<std::path::PathBuf>,
    crossing: Vec<RawFd>,
}

/// The program an in-place re-exec runs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Program {
    /// The open file at this FD (Linux `execveat`): exactly the inode that
    /// was checked, whatever has been renamed over its path since.
    #[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
    Fd(RawFd),
    /// The path (where no `execveat` exists), checked just before.
    Path,
}

impl std::fmt::Debug for Reexec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reexec")
            .field("exe", &self.exe)
            .field("program", &self.program)
            .finish_non_exhaustive()
    }
}

impl Reexec {
    /// Prepares re-executing this process in place as `path` (run as
    /// `program`) with `args` in the directory `cwd`, handing it `outgoing`
    /// where they are, as `origin` says (the generation serving meanwhile,
    /// a reload to run), naming `orphans` (children this image leaves).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn prepare(
        path: &std::path::Path,
        program: Program,
        args: &[OsString],
        cwd: Option<&std::path::Path>,
        outgoing: &[Outgoing<'_>],
        origin: Origin,
        orphans: Vec<Pid>,
        generation: u64,
    ) -> io::Result<Reexec> {
        use std::os::unix::ffi::OsStrExt;
        let cstr = |b: &[u8]| {
            std::ffi::CString::new(b).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a NUL byte in an argument or variable",
                )
            })
        };
        let exe = cstr(path.as_os_str().as_bytes())?;
        let mut argv = vec![exe.clone()];
        for a in args {
            argv.push(cstr(a.as_bytes())?);
        }
        let record = Record {
            origin,
            generation,
            fds: passed(outgoing, |_, fd| fd)?,
            orphans,
        };
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
        for (k, v) in record.to_env() {
            env.push(cstr(format!("{k}={v}").as_bytes())?);
        }
        if let Some(cwd) = cwd {
            let mut kv = b"PWD=".to_vec();
            kv.extend_from_slice(cwd.as_os_str().as_bytes());
            env.push(cstr(&kv)?);
        }
        Ok(Reexec {
            exe,
            program,
            argv,
            env,
            cwd: cwd.map(std::path::Path::to_path_buf),
            crossing: outgoing.iter().map(|o| o.fd).collect(),
        })
    }

    /// Re-executes. Returns only if the exec failed, after undoing what it
    /// changed, so the caller can go on serving.
    ///
    /// `blocked` is blocked in this thread, whose mask the new image
    /// inherits, so none of those signals that arrives after the exec is
    /// lost or fatal before the new image's handlers are in. `last_look`
    /// runs with them blocked, just before the descriptors lose
    /// close-on-exec: if it says no, nothing is executed (a stop arrived).
    pub(crate) fn exec(&self, blocked: SigSet, last_look: impl FnOnce() -> bool) -> ExecFailed {
        use nix::sys::signal::{pthread_sigmask, SigmaskHow};
        use std::io::Write;
        // The logical directory (see `exe`): after a symlink switch, the new
        // release's. The old one is restored if the exec fails.
        let old_cwd = std::env::current_dir().ok();
        if let Some(cwd) = &self.cwd {
            if let Err(e) = std::env::set_current_dir(cwd) {
                return ExecFailed::Directory(cwd.clone(), e);
            }
        }
        let restore_cwd = || {
            if let (Some(old), Some(_)) = (&old_cwd, &self.cwd) {
                let _ = std::env::set_current_dir(old);
            }
        };
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        let mut old_mask = SigSet::empty();
        if let Err(e) = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&blocked), Some(&mut old_mask))
        {
            restore_cwd();
            return ExecFailed::Exec(e.into());
        }
        let undo = |restore_flags: bool| {
            if restore_flags {
                for fd in &self.crossing {
                    let _ = set_cloexec_flag(*fd, true);
                }
            }
            let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
            restore_cwd();
        };
        if !last_look() {
            undo(false);
            return ExecFailed::Stopped;
        }
        for fd in &self.crossing {
            let _ = set_cloexec_flag(*fd, false);
        }
        let err = match self.program {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Program::Fd(fd) => execveat(fd, &self.argv, &self.env),
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            Program::Fd(_) => io::Error::from(io::ErrorKind::Unsupported),
            Program::Path => match nix::unistd::execve(&self.exe, &self.argv, &self.env) {
                Err(e) => io::Error::from(e),
                Ok(never) => match never {},
            },
        };
        // Still here: undo, and let the caller resume.
        undo(true);
        ExecFailed::Exec(err)
    }
}

/// Why an in-place re-exec did not happen.
#[derive(Debug)]
pub(crate) enum ExecFailed {
    /// The logical working directory could not be entered.
    Directory(std::path::PathBuf, io::Error),
    /// `execve` failed.
    Exec(io::Error),
    /// The last look before the exec found a stop request.
    Stopped,
}

/// `execveat(fd, "", argv, env, AT_EMPTY_PATH)`: executes exactly the
/// open file. Returns only on failure.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn execveat(fd: RawFd, argv: &[std::ffi::CString], env: &[std::ffi::CString]) -> io::Error {
    use nix::libc;
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    env_p.push(std::ptr::null());
    // SAFETY: `fd` is an open file of this process; the path is an empty
    // C string (with AT_EMPTY_PATH, the FD itself is executed); both arrays
    // are NUL-terminated arrays of pointers to live C strings, kept alive
    // by `argv` and `env` for the call.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            c"".as_ptr(),
            argv_p.as_ptr(),
            env_p.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
    }
    io::Error::last_os_error()
}

pub(crate) fn set_cloexec(fd: RawFd) -> io::Result<()> {
    set_cloexec_flag(fd, true)
}

fn set_cloexec_flag(fd: RawFd, on: bool) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    // SAFETY: the FD is only borrowed for the duration of the two `fcntl`
    // calls; if it is not open, `fcntl` fails with EBADF, which we report.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut flags = FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD)?);
    flags.set(FdFlag::FD_CLOEXEC, on);
    fcntl(fd, FcntlArg::F_SETFD(flags))?;
    Ok(())
}

/// Escapes `%` and `;` so that any name (a Unix socket path may hold
/// either) survives the trip.
fn encode_name(name: &str) -> String {
    name.replace('%', "%25").replace(';', "%3B")
}

fn decode_name(name: &str) -> String {
    name.replace("%3B", ";").replace("%25", "%")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(record: &Record) -> HashMap<String, OsString> {
        record
            .to_env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into()))
            .collect()
    }

    fn ids(record: &Record) -> impl Fn(RawFd, Option<SFlag>) -> Option<FileId> + '_ {
        |fd, _| record.fds.iter().find(|p| p.fd == fd).map(|p| p.id)
    }

    fn sample(origin: Origin) -> Record {
        let id = FileId { dev: 8, ino: 77 };
        Record {
            origin,
            generation: 4,
            fds: vec![
                Passed {
                    fd: 3,
                    kind: Kind::Listener,
                    name: "127.0.0.1:0".into(),
                    id,
                },
                Passed {
                    fd: 4,
                    kind: Kind::ListenerUnowned,
                    name: "unix:/run/a;b%3B.sock".into(),
                    id: FileId { dev: 8, ino: 78 },
                },
                Passed {
                    fd: 5,
                    kind: Kind::Extra,
                    name: "udp:echo".into(),
                    id: FileId { dev: 1, ino: 2 },
                },
                Passed {
                    fd: 6,
                    kind: Kind::Link,
                    name: String::new(),
                    id: FileId { dev: 9, ino: 3 },
                },
            ],
            orphans: Vec::new(),
        }
    }

    #[test]
    fn a_spawn_record_round_trips() {
        let record = sample(Origin::Parent {
            parent: Pid::from_raw(41),
            temporary: true,
            probation: true,
        });
        let env = env_of(&record);
        let back = Record::from_env(|k| env.get(k).cloned(), Pid::from_raw(99), ids(&record));
        assert_eq!(back, Ok(Some(record)));
    }

    #[test]
    fn an_exec_record_is_only_for_the_pid_that_wrote_it() {
        let mut record = sample(Origin::SelfExec {
            temporary: Some(Pid::from_raw(50)),
            reload: true,
        });
        record.orphans = vec![Pid::from_raw(60), Pid::from_raw(61)];
        let env = env_of(&record);
        let back = Record::from_env(|k| env.get(k).cloned(), getpid(), ids(&record));
        assert_eq!(back, Ok(Some(record.clone())));
        let other = Record::from_env(|k| env.get(k).cloned(), Pid::from_raw(1), ids(&record));
        assert_eq!(other, Ok(None), "a process spawned later ignores it");
    }

    #[test]
    fn descriptors_that_are_not_the_files_named_make_it_someone_elses() {
        let record = sample(Origin::Parent {
            parent: Pid::from_raw(41),
            temporary: false,
            probation: false,
        });
        let env = env_of(&record);
        let wrong = |fd: RawFd, _: Option<SFlag>| (fd != 4).then_some(FileId { dev: 8, ino: 77 });
        assert_eq!(
            Record::from_env(|k| env.get(k).cloned(), getpid(), wrong),
            Ok(None)
        );
        let none = |_: RawFd, _: Option<SFlag>| None;
        assert_eq!(
            Record::from_env(|k| env.get(k).cloned(), getpid(), none),
            Ok(None)
        );
    }

    #[test]
    fn corrupt_variables_name_the_fd_at_fault() {
        let ok = |_: RawFd, _: Option<SFlag>| Some(FileId { dev: 1, ino: 1 });
        let read = |handover: &str, fds: &str| {
            let env: HashMap<&str, OsString> = [(HANDOVER, handover.into()), (FDS, fds.into())]
                .into_iter()
                .collect();
            Record::from_env(|k| env.get(k).cloned(), getpid(), ok)
                .map_err(|(fd, r)| format!("{fd}: {r}"))
        };
        assert_eq!(
            read("1;parent=9", "3=listener:1:1"),
            Err("3: ENDLESS_FDS entry \"3=listener:1:1\" is not FD=KIND:DEVICE:INODE:NAME".into())
        );
        assert_eq!(
            read("1;parent=9", "5=socket:1:1:a"),
            Err("5: ENDLESS_FDS entry \"5=socket:1:1:a\" is not FD=KIND:DEVICE:INODE:NAME".into())
        );
        assert_eq!(
            read("1;parent=9", "4=extra:1:1:a;4=extra:1:1:b"),
            Err("4: ENDLESS_FDS names FD 4 twice".into())
        );
        assert!(read("2;parent=9", "")
            .unwrap_err()
            .contains("not a hand-over this version reads"));
        assert!(read("1;nobody", "")
            .unwrap_err()
            .contains("names neither a parent nor an exec"));
        assert_eq!(
            read("1;parent=9", "").map(|r| r.map(|r| r.fds.len())),
            Ok(Some(0))
        );
    }

    #[test]
    fn names_round_trip() {
        for n in [
            "127.0.0.1:80",
            ":8080",
            "unix:/run/a;b%3B.sock",
            "[::1]:0",
            "a=b:c",
        ] {
            assert_eq!(decode_name(&encode_name(n)), n);
        }
    }
}
