//! What the builder hands a generation: the user's settings ([`Config`])
//! and one record per listener ([`Endpoint`]), both checked by
//! [`check`]. Nothing here changes while a generation runs.

#[cfg(unix)]
use std::path::PathBuf;
use std::time::Duration;

use crate::connections::{Launch, Limits, Protocol, Settings};
use crate::error::{Error, Result};
#[cfg(unix)]
use crate::listener::UnixPermissions;
use crate::listener::{self, BindSpec, Given};
use crate::ready::ReadyCheck;
use crate::signal::SignalSet;
use crate::succession::Succession;
use crate::tls::TlsSource;

/// The longest duration any setting takes: longer ones are taken as this
/// (about a year), so that no deadline computed from one can overflow.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The user's settings.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) stop_timeout: Duration,
    // Without Unix there are no reloads to time.
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) ready_timeout: Duration,
    pub(crate) header_read_timeout: Duration,
    /// Used only with the `tls` feature.
    pub(crate) tls_handshake_timeout: Duration,
    /// The connections' bounds besides the header read timeout.
    pub(crate) limits: Limits,
    /// hyper's HTTP/1 and HTTP/2 settings that the program set.
    pub(crate) protocol: Protocol,
    pub(crate) signals: SignalSet,
    /// How widely [`Handle::draining`](crate::Handle::draining) spreads its
    /// wake-ups.
    pub(crate) drain_notice_spread: Duration,
    /// How long this generation keeps its sockets after a hand-over, to
    /// serve again if the new generation dies.
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) probation: Duration,
    /// Checks a generation must pass before it says it is ready.
    pub(crate) ready_checks: Vec<ReadyCheck>,
    /// The accept queue length new sockets ask for.
    pub(crate) backlog: i32,
    #[cfg(unix)]
    pub(crate) pid_file: Option<PathBuf>,
    #[cfg(unix)]
    pub(crate) keep_pid: bool,
    /// Reload when the executable changes.
    #[cfg(unix)]
    pub(crate) watch_binary: bool,
    /// Reload when one of these changes; each with its identity when it was
    /// named (the version this process started with).
    #[cfg(unix)]
    pub(crate) watch_files: Vec<(PathBuf, Option<crate::watch::Identity>)>,
    /// Socket file permissions, by registered address.
    #[cfg(unix)]
    pub(crate) unix_permissions: Vec<(String, UnixPermissions)>,
    /// Makes the state handed to the next generation at each reload.
    #[cfg(unix)]
    pub(crate) handoff: Option<crate::state::Producer>,
    /// The control socket, with its permissions.
    #[cfg(unix)]
    pub(crate) control: Option<(PathBuf, UnixPermissions)>,
    /// The HTTP/3 addresses (feature `http3`), each with its certificate
    /// and service.
    pub(crate) http3: Vec<crate::quic::Registration>,
}

impl Config {
    /// How this server's generations start their successors: the one place
    /// the platform and `keep_pid` decide it.
    #[cfg(unix)]
    pub(crate) fn succession(&self) -> Succession {
        if self.keep_pid {
            Succession::SpawnThenReexec
        } else {
            Succession::Spawn {
                probation: !self.probation.is_zero(),
            }
        }
    }

    /// Without Unix no successor ever starts.
    #[cfg(not(unix))]
    pub(crate) fn succession(&self) -> Succession {
        Succession::None
    }

    /// What the connections follow.
    pub(crate) fn connections(&self) -> Settings {
        Settings {
            header_read: self.header_read_timeout,
            stop: self.stop_timeout,
            tls_handshake: self.tls_handshake_timeout,
            limits: self.limits.clone(),
            protocol: self.protocol.clone(),
        }
    }
}

/// One registered listener: its address (also its name across reloads),
/// how to bind it, its socket file's permissions, its TLS configuration if
/// it serves HTTPS, and its service.
pub(crate) struct Endpoint {
    pub(crate) addr: String,
    pub(crate) spec: BindSpec,
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) perms: Option<UnixPermissionsOrNone>,
    pub(crate) tls: Option<TlsSource>,
    pub(crate) svc: Box<dyn Launch>,
    /// Makes the listener, for one the program makes itself
    /// (`Server::register_listener`).
    pub(crate) given: Option<Given>,
}

#[cfg(unix)]
pub(crate) type UnixPermissionsOrNone = UnixPermissions;
/// No socket files without Unix: nothing to give permissions to.
#[cfg(not(unix))]
pub(crate) type UnixPermissionsOrNone = std::convert::Infallible;

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// A listener as registered, before [`check`].
pub(crate) struct Registration {
    pub(crate) addr: String,
    pub(crate) svc: Box<dyn Launch>,
    pub(crate) tls: Option<TlsSource>,
    /// The program's closure that makes the listener named `addr`.
    pub(crate) given: Option<Given>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Checks every setting that needs no system call, and makes the
/// endpoints.
pub(crate) fn check(registrations: Vec<Registration>, config: &Config) -> Result<Vec<Endpoint>> {
    config.signals.validate()?;
    for (setting, value) in [
        ("stop_timeout", config.stop_timeout),
        ("ready_timeout", config.ready_timeout),
        ("header_read_timeout", config.header_read_timeout),
        ("tls_handshake_timeout", config.tls_handshake_timeout),
        ("http2_idle_timeout", config.limits.http2_idle_timeout),
    ] {
        if value.is_zero() {
            return Err(Error::Config {
                setting,
                reason: "must be greater than zero".to_owned(),
            });
        }
    }
    for (setting, value) in [
        (
            "http2_keep_alive_interval",
            config.limits.http2_keep_alive_interval,
        ),
        ("tcp_keepalive", config.limits.tcp_keepalive),
    ] {
        if value.is_some_and(|d| d.is_zero()) {
            return Err(Error::Config {
                setting,
                reason: "must be greater than zero (None turns it off)".to_owned(),
            });
        }
    }
    if config.limits.max_connections == Some(0) {
        return Err(Error::Config {
            setting: "max_connections",
            reason: "must be at least 1".to_owned(),
        });
    }
    config.protocol.check()?;
    if registrations.is_empty() {
        return Err(Error::Config {
            setting: "listeners",
            reason: "no address registered".to_owned(),
        });
    }
    let mut endpoints = Vec::with_capacity(registrations.len());
    for r in registrations {
        let spec = match &r.given {
            Some(_) => check_name(&r.addr)?,
            None => listener::parse(&r.addr)?,
        };
        endpoints.push(Endpoint {
            perms: permissions_of(&r.addr, config),
            addr: r.addr,
            spec,
            tls: r.tls,
            svc: r.svc,
            given: r.given,
        });
    }
    #[cfg(unix)]
    check_unix_settings(config, &endpoints)?;
    Ok(endpoints)
}

/// The settings that exist only on Unix, checked against the endpoints:
/// permissions for registered socket files only, an absolute control
/// socket path.
#[cfg(unix)]
fn check_unix_settings(config: &Config, endpoints: &[Endpoint]) -> Result<()> {
    for (addr, _) in &config.unix_permissions {
        let reason = match endpoints.iter().find(|e| e.addr == *addr) {
            None => format!("{addr:?} is not a registered address"),
            Some(Endpoint {
                spec: BindSpec::Unix(_),
                ..
            }) => continue,
            Some(Endpoint {
                spec: BindSpec::Given,
                ..
            }) => format!(
                "{addr:?} is a listener the program makes (register_listener): set its file's permissions as it makes it"
            ),
            Some(_) => format!("{addr:?} is not a Unix socket file (unix:/path)"),
        };
        return Err(Error::Config {
            setting: "unix_permissions",
            reason,
        });
    }
    if let Some((path, _)) = &config.control {
        if !path.is_absolute() {
            return Err(Error::Config {
                setting: "control_socket",
                reason: format!("{} is not an absolute path", path.display()),
            });
        }
    }
    Ok(())
}

/// The name of a listener the program makes itself: anything but empty.
fn check_name(name: &str) -> Result<BindSpec> {
    if name.is_empty() {
        return Err(Error::Address {
            addr: name.to_owned(),
            reason: "a listener's name must not be empty".to_owned(),
        });
    }
    Ok(BindSpec::Given)
}

/// The permissions set for `addr`'s socket file, if any.
#[cfg(unix)]
fn permissions_of(addr: &str, config: &Config) -> Option<UnixPermissions> {
    let found = config.unix_permissions.iter().find(|(a, _)| a == addr);
    found.map(|(_, p)| p.clone())
}

#[cfg(not(unix))]
fn permissions_of(_: &str, _: &Config) -> Option<UnixPermissionsOrNone> {
    None
}
