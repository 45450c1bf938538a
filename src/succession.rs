//! How a generation's successor starts: one value, chosen once per
//! generation from the platform and the settings
//! ([`Config::succession`](crate::config::Config::succession)), which the
//! generation and the restart policy read instead of each asking the
//! platform and `keep_pid` on its own.
//!
//! | value                | where, with what           | a reload request                                  |
//! |----------------------|----------------------------|---------------------------------------------------|
//! | `None`               | not Unix (Windows)         | refused ([`Error::Unsupported`](crate::Error::Unsupported)); the generation serves on |
//! | `Spawn`              | Unix                       | spawns the next generation, which takes over (`restart`); with `probation`, this one holds its sockets until the new one has lived through it (`probation`) |
//! | `SpawnThenReexec`    | Unix, `keep_pid`           | spawns a temporary generation, then re-executes this process in place (`keep_pid`) |
//!
//! Only the variants the platform has exist, so a `match` names exactly
//! the ways a successor can start there.

/// How the next generation starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Succession {
    /// No successor: reloads need fork/exec and inherited descriptors,
    /// which the platform lacks.
    #[cfg(not(unix))]
    None,
    /// A new process takes over with the listeners. `probation`: this
    /// generation keeps its copies until the new one has lived through
    /// the probation, ready to serve again if it dies.
    #[cfg(unix)]
    Spawn { probation: bool },
    /// `keep_pid`: a temporary generation takes over while this process
    /// drains and re-executes itself in place. No probation after it: the
    /// process ID is the service.
    #[cfg(unix)]
    SpawnThenReexec,
}

impl Succession {
    /// Whether this platform has successors at all, for what must answer
    /// before a generation runs ([`Handle::reload`](crate::Handle::reload)).
    pub(crate) const RELOADS: bool = cfg!(unix);
}
