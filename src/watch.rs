//! Reload when a file changes: the executable (a new release copied into
//! place) or any file the program names (TLS certificates, configuration).
//!
//! Each file is looked at with `stat` (following symlinks) every
//! [`POLL`]; a change is any new device, inode, size or modification time.
//! The reload starts once the file has stayed the same for [`SETTLE`]
//! after its last change, so a file still being written (`cp` writes in
//! chunks) is not started half-written, and a burst of changes (the
//! certificate, then the key) makes one reload.
//!
//! Why polling rather than inotify or the `notify` crate: it needs no
//! dependency and behaves the same on every platform, and it sees every
//! way a deploy replaces a file: renamed over (new inode), written in place,
//! or a `current -> releases/vN` symlink switched somewhere up the path
//! (which a watch on the file's directory would miss). Four `stat` calls a
//! second cost nothing; the price is up to [`POLL`] of extra latency.
//!
//! The baseline is the version this process started with, not the one on
//! disk when the watcher starts: for the executable, the file this process
//! runs (its device and inode, as captured before `main`), and for the
//! other files, what was there when the program named them. So a release
//! renamed into place while a new generation starts up is seen.
//!
//! The reload goes through the same request as `Handle::reload` from code:
//! a new binary that cannot start is reaped and the old generation serves
//! on, as after any failed reload. A change is acted on once: a broken
//! binary is not retried until the file changes again. A change that meets
//! another reload under way (from a signal, say) waits for it and is tried
//! after it. While the generation drains the watcher waits; if it serves
//! again (its successor failed, or a `keep_pid` re-exec did), the watcher
//! goes on from where it was.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use std::sync::Arc;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::error::Error;
use crate::events::Requests;
use crate::lifecycle::{Lifecycle, Phase};

/// How often each file is looked at.
const POLL: Duration = Duration::from_millis(200);
/// How long a changed file must stay the same before the reload.
const SETTLE: Duration = Duration::from_millis(300);

/// What tells one version of a file from another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    modified: Option<SystemTime>,
}

/// The version of the file at `path` now (following symlinks).
pub(crate) fn identity(path: &std::path::Path) -> Option<Identity> {
    std::fs::metadata(path).ok().map(|m| Identity::of(&m))
}

impl Identity {
    pub(crate) fn of(meta: &std::fs::Metadata) -> Identity {
        use std::os::unix::fs::MetadataExt;
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            modified: meta.modified().ok(),
        }
    }
}

/// The version of the executable this process started with: the file it
/// runs, unless the path named something else at start that is not a
/// compiled program (a script, whose running image is its interpreter).
pub(crate) fn running_image() -> Option<Identity> {
    let (image, launched) = crate::exe::started_from();
    match (image, launched) {
        (Some(image), Some(launched))
            if Identity::of(&image) != Identity::of(&launched) && launched_is_script() =>
        {
            Some(Identity::of(&launched))
        }
        (Some(image), _) => Some(Identity::of(&image)),
        (None, launched) => launched.as_ref().map(Identity::of),
    }
}

/// Whether the program's path names a script (`#!`).
fn launched_is_script() -> bool {
    use std::io::Read;
    let mut head = [0u8; 2];
    std::fs::File::open(crate::exe::current().path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head == *b"#!")
}

/// Watches files while this generation serves; stops when dropped.
#[derive(Debug)]
pub(crate) struct Watcher(tokio::task::JoinHandle<()>);

impl Drop for Watcher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts watching `paths`, each with the version this generation started
/// from; a change reloads through `requests`, while `life` serves.
pub(crate) fn spawn(
    paths: Vec<(PathBuf, Option<Identity>)>,
    requests: Requests,
    life: Arc<Lifecycle>,
) -> Watcher {
    Watcher(tokio::spawn(watch(paths, requests, life)))
}

/// One watched file: the version the running generation started from, and
/// the one last seen, since when.
struct File {
    path: PathBuf,
    known: Option<Identity>,
    seen: Option<Identity>,
    since: Instant,
}

async fn watch(paths: Vec<(PathBuf, Option<Identity>)>, requests: Requests, life: Arc<Lifecycle>) {
    let now = Instant::now();
    let mut phase = life.subscribe();
    let mut files: Vec<File> = paths
        .into_iter()
        .map(|(path, known)| {
            if known.is_none() {
                warn!(path = %path.display(), "cannot stat the file to watch; a file that appears there will reload");
            }
            info!(path = %path.display(), "reloading when this file changes");
            File {
                seen: identity(&path),
                path,
                known,
                since: now,
            }
        })
        .collect();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let mut changed = Vec::new();
        for (i, f) in files.iter_mut().enumerate() {
            let id = identity(&f.path);
            if id != f.seen {
                debug!(path = %f.path.display(), "file changing");
                f.seen = id;
                f.since = now;
                continue;
            }
            // Settled, present, and not the version we run: a reload. (A
            // file that is gone, mid-rename, waits for its successor.)
            if f.seen.is_some() && f.seen != f.known && now.duration_since(f.since) >= SETTLE {
                changed.push(i);
            }
        }
        if changed.is_empty() {
            continue;
        }
        // Only a serving generation reloads; a draining one may serve
        // again (its successor failed), and then goes on from here.
        if phase.wait_for(|p| *p == Phase::Serving).await.is_err() {
            return;
        }
        let paths: Vec<String> = changed
            .iter()
            .map(|&i| files[i].path.display().to_string())
            .collect();
        info!(?paths, "file changed; reloading");
        match requests.reload("file watcher").await {
            // Another reload is under way, or this generation began to
            // drain meanwhile: the change is not handled yet. It is tried
            // again once this generation serves with no reload under way
            // (if a successor took over, that one watches from its start).
            Err(e @ (Error::ReloadInProgress | Error::Draining | Error::NotRunning)) => {
                debug!(cause = %e, "reloading for the file change once this generation can");
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                warn!(?paths, cause = %e, "reload after the file change failed; still serving (the next change is tried again)")
            }
        }
        // Acted on: a release that failed is not retried until it changes.
        for i in changed {
            files[i].known = files[i].seen.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rename_over_and_a_rewrite_are_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, "one").unwrap();
        let first = identity(&path).unwrap();
        // Same content, new inode: renamed over.
        let new = dir.path().join("bin.new");
        std::fs::write(&new, "one").unwrap();
        std::fs::rename(&new, &path).unwrap();
        let renamed = identity(&path).unwrap();
        assert_ne!(first, renamed);
        // Same inode, new size.
        std::fs::write(&path, "longer").unwrap();
        assert_ne!(identity(&path).unwrap(), renamed);
        assert!(identity(&dir.path().join("missing")).is_none());
    }
}
