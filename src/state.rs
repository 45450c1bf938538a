//! State handed to the next generation: a blob of bytes the old generation
//! makes at each reload ([`Server::handoff_state`](crate::Server::handoff_state))
//! and the new one reads at start-up ([`inherited_state`](crate::inherited_state)),
//! next to internal sections of the crate's own (the TLS ticket keys).
//!
//! Transport: the blob is written in full, before the spawn, to a memfd
//! (Linux, FreeBSD; elsewhere an unlinked temporary file), sealed against
//! changes, and passed like the report pipe (`ENDLESS_STATE`, identity
//! checked, see `handover`). The new generation reads it at its first call
//! into `endless` and closes it; nothing it spawns ever inherits it.
//!
//! Failure never stops a reload: a callback that panics or returns more
//! than [`MAX_STATE`] bytes, or a memfd that cannot be made, means a reload
//! without that state, and the old generation logs why; a new generation
//! that cannot read what it was handed starts anyway and logs a warning.
//!
//! The layout, all integers little-endian: [`MAGIC`], then sections, each
//! `name length (u8) | name | length (u64) | bytes`.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, OnceLock};

use tracing::{info, warn};

/// The most a [`Server::handoff_state`](crate::Server::handoff_state)
/// callback may return: 64 MiB.
pub const MAX_STATE: usize = 64 << 20;
/// Room for the crate's own sections on top of the user's.
const INTERNAL_ROOM: usize = 1 << 20;
const MAGIC: &[u8; 8] = b"ENDLSTv1";
/// The user's blob.
const USER: &str = "user";
/// The TLS session ticket keys (`tickets`).
pub(crate) const TLS_TICKETS: &str = "tls-tickets";
/// The reload counters (`lifecycle`).
pub(crate) const STATS: &str = "stats";

/// Makes the user's blob at each reload.
#[derive(Clone)]
pub(crate) struct Producer(pub(crate) Arc<dyn Fn() -> Vec<u8> + Send + Sync>);

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Producer(..)")
    }
}

/// What this generation was handed, read once.
#[derive(Debug, Default)]
struct Inherited {
    sections: Sections,
    /// Why it could not be read, if it could not.
    problem: Option<String>,
    /// How many bytes were read.
    size: usize,
    /// Whether anything was handed over at all.
    handed: bool,
}

static INHERITED: OnceLock<Inherited> = OnceLock::new();

/// Named sections, in the order written.
type Sections = Vec<(String, Vec<u8>)>;

/// Reads the state the previous generation handed over, if any, and closes
/// it. Called at the first call into `endless`; cheap to call again.
pub(crate) fn init() {
    INHERITED.get_or_init(|| {
        let Some(fd) = crate::handover::take(crate::handover::Kind::State, None) else {
            return Inherited::default();
        };
        let fd_num = fd.raw();
        let fd = fd.take();
        match read(std::fs::File::from(fd)) {
            Ok((sections, size)) => Inherited {
                sections,
                problem: None,
                size,
                handed: true,
            },
            Err(reason) => Inherited {
                problem: Some(format!("FD {fd_num}: {reason}")),
                handed: true,
                ..Inherited::default()
            },
        }
    });
}

fn inherited() -> &'static Inherited {
    init();
    INHERITED.get().expect("initialised above")
}

/// One section of the inherited state, by name.
pub(crate) fn section(name: &str) -> Option<&'static [u8]> {
    inherited()
        .sections
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, b)| b.as_slice())
}

/// The user's blob (`endless::inherited_state`).
pub(crate) fn user() -> Option<&'static [u8]> {
    section(USER)
}

/// Logs what was inherited, once tracing is likely set up (at the start of
/// `Server::run`: the read itself may happen before `main` sets it up).
pub(crate) fn log_inherited() {
    let i = inherited();
    match &i.problem {
        Some(reason) => warn!(
            reason = %reason,
            "cannot read the state handed over by the previous generation; starting without it"
        ),
        None if i.handed => info!(
            bytes = i.size,
            user = user().map(<[u8]>::len),
            "read the state handed over by the previous generation"
        ),
        None => {}
    }
}

/// The user's blob for the next generation, from `producer`: `None`
/// (logged) if it panics or returns more than [`MAX_STATE`] bytes; the
/// reload goes on without it.
pub(crate) fn user_section(producer: &Producer) -> Option<(&'static str, Vec<u8>)> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (producer.0)())) {
        Ok(blob) if blob.len() > MAX_STATE => {
            warn!(
                bytes = blob.len(),
                limit = MAX_STATE,
                "handoff_state returned more than the limit; reloading without it"
            );
            None
        }
        Ok(blob) => Some((USER, blob)),
        Err(_) => {
            warn!("handoff_state panicked; reloading without its state");
            None
        }
    }
}

/// Writes `sections` for the next generation to a sealed, close-on-exec
/// memfd. `None` (logged) if there is nothing to hand over or it cannot be
/// written; the reload goes on either way.
pub(crate) fn prepare(sections: &[(&str, Vec<u8>)]) -> Option<OwnedFd> {
    if sections.is_empty() {
        return None;
    }
    let blob = encode(sections);
    match write_sealed(&blob) {
        Ok(fd) => {
            info!(
                bytes = blob.len(),
                user = sections
                    .iter()
                    .find(|(n, _)| *n == USER)
                    .map(|(_, b)| b.len()),
                "state ready for the next generation"
            );
            Some(fd)
        }
        Err(e) => {
            warn!(cause = %e, bytes = blob.len(), "cannot write the state for the next generation; reloading without it");
            None
        }
    }
}

fn encode(sections: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let total: usize = sections.iter().map(|(n, b)| 9 + n.len() + b.len()).sum();
    let mut out = Vec::with_capacity(MAGIC.len() + total);
    out.extend_from_slice(MAGIC);
    for (name, bytes) in sections {
        // Names are the crate's own constants, all short.
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

fn decode(mut rest: &[u8]) -> Result<Sections, String> {
    rest = rest
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not endless state (bad magic)")?;
    let mut sections = Vec::new();
    while let Some((&len, after)) = rest.split_first() {
        let len = usize::from(len);
        let truncated = || format!("truncated after {} sections", sections.len());
        if after.len() < len + 8 {
            return Err(truncated());
        }
        let name = String::from_utf8_lossy(&after[..len]).into_owned();
        let size = u64::from_le_bytes(after[len..len + 8].try_into().expect("8 bytes"));
        let body = &after[len + 8..];
        let size = usize::try_from(size)
            .ok()
            .filter(|s| *s <= body.len())
            .ok_or_else(truncated)?;
        sections.push((name, body[..size].to_vec()));
        rest = &body[size..];
    }
    Ok(sections)
}

/// Reads the whole file from offset 0 (the file offset is shared with the
/// parent's copy, so positional reads only).
fn read(file: std::fs::File) -> Result<(Sections, usize), String> {
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    let size = usize::try_from(size)
        .ok()
        .filter(|s| *s <= MAX_STATE + INTERNAL_ROOM)
        .ok_or_else(|| format!("{size} bytes, more than the limit"))?;
    let mut buf = vec![0u8; size];
    file.read_exact_at(&mut buf, 0)
        .map_err(|e| format!("cannot read {size} bytes: {e}"))?;
    Ok((decode(&buf)?, size))
}

/// A close-on-exec file holding `blob`, sealed where the system can.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
fn write_sealed(blob: &[u8]) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create(
        "endless-state",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(blob)?;
    // Read-only from now on: the next generation reads exactly what we wrote.
    fcntl(
        &file,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    Ok(file.into())
}

/// Elsewhere: a temporary file, unlinked at once (nobody can open it by
/// name after that), close-on-exec (std's default).
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
fn write_sealed(blob: &[u8]) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let path = std::env::temp_dir().join(format!(".endless-state-{}-{nanos}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    let _ = std::fs::remove_file(&path);
    file.write_all(blob)?;
    Ok(file.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_round_trip_and_damage_is_an_error() {
        let blob = encode(&[(USER, b"counter=5".to_vec()), (TLS_TICKETS, vec![])]);
        let back = decode(&blob).unwrap();
        assert_eq!(back[0], (USER.to_owned(), b"counter=5".to_vec()));
        assert_eq!(back[1], (TLS_TICKETS.to_owned(), vec![]));
        assert!(decode(&blob[..blob.len() - 3])
            .unwrap_err()
            .starts_with("truncated"));
        assert_eq!(
            decode(b"garbage!").unwrap_err(),
            "not endless state (bad magic)"
        );
        assert!(decode(MAGIC).unwrap().is_empty());
    }

    #[test]
    fn a_sealed_state_reads_back_from_offset_zero() {
        let blob = encode(&[(USER, vec![7; 10_000])]);
        let fd = write_sealed(&blob).unwrap();
        let (sections, size) = read(std::fs::File::from(fd)).unwrap();
        assert_eq!(size, blob.len());
        assert_eq!(sections, vec![(USER.to_owned(), vec![7; 10_000])]);
    }
}
