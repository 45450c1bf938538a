//! The fixture's settings (`testing/fixture/server.rs`), one typed record
//! for both sides: the tests set them through [`Spec`]'s typed methods
//! (`Spec::fixture().keep_pid().stop_timeout(Duration::from_secs(3))`),
//! the fixture reads them with [`Setting::get`]. Each travels to the
//! fixture in an environment variable whose name is written here and
//! nowhere else; its value is written and read by one [`Value`]
//! implementation.
//!
//! A setting named `…_file` is a switch the test flips while the server
//! runs: the fixture behaves differently while the file exists (for most,
//! only in a generation started by a reload, i.e. in a "new release").

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::process::{fixture, Spec};

/// One of the fixture's settings: the name of its variable and the type
/// of its value.
#[derive(Debug)]
pub struct Setting<T> {
    name: &'static str,
    value: PhantomData<fn() -> T>,
}

impl<T> Clone for Setting<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Setting<T> {}

impl<T: Value> Setting<T> {
    const fn new(name: &'static str) -> Self {
        Setting {
            name,
            value: PhantomData,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The value in this process's environment (the fixture's side):
    /// `None` when unset; a value that does not parse is a panic naming
    /// the variable.
    pub fn get(&self) -> Option<T> {
        let raw = std::env::var(self.name).ok()?;
        Some(T::decode(&raw).unwrap_or_else(|| panic!("{}: bad value {raw:?}", self.name)))
    }

    /// Whether the variable is set at all (a switch such as
    /// [`KEEP_PID`]).
    pub fn is_set(&self) -> bool {
        std::env::var_os(self.name).is_some()
    }

    /// The variable and its value, for an environment.
    pub fn pair(&self, value: T) -> (&'static str, String) {
        (self.name, value.encode())
    }

    /// `NAME=value`, for a unit file or a supervisord configuration.
    pub fn assignment(&self, value: T) -> String {
        format!("{}={}", self.name, value.encode())
    }
}

impl Setting<PathBuf> {
    /// Whether the file the setting names exists now; false when unset.
    pub fn file_exists(&self) -> bool {
        self.get().is_some_and(|p| p.exists())
    }
}

/// How a setting's value is written into its variable and read back.
pub trait Value: Sized {
    fn encode(&self) -> String;
    fn decode(raw: &str) -> Option<Self>;
}

/// A switch: set or not.
impl Value for () {
    fn encode(&self) -> String {
        "1".into()
    }
    fn decode(_: &str) -> Option<Self> {
        Some(())
    }
}

/// Milliseconds, or `max` for `Duration::MAX`.
impl Value for Duration {
    fn encode(&self) -> String {
        if *self == Duration::MAX {
            "max".into()
        } else {
            self.as_millis().to_string()
        }
    }
    fn decode(raw: &str) -> Option<Self> {
        match raw {
            "max" => Some(Duration::MAX),
            ms => ms.parse().ok().map(Duration::from_millis),
        }
    }
}

/// A duration, or `off`.
impl Value for Option<Duration> {
    fn encode(&self) -> String {
        self.as_ref().map_or_else(|| "off".into(), Value::encode)
    }
    fn decode(raw: &str) -> Option<Self> {
        match raw {
            "off" => Some(None),
            d => Duration::decode(d).map(Some),
        }
    }
}

impl Value for PathBuf {
    fn encode(&self) -> String {
        self.to_str().expect("a UTF-8 path").to_owned()
    }
    fn decode(raw: &str) -> Option<Self> {
        Some(raw.into())
    }
}

impl Value for String {
    fn encode(&self) -> String {
        self.clone()
    }
    fn decode(raw: &str) -> Option<Self> {
        Some(raw.to_owned())
    }
}

impl Value for u64 {
    fn encode(&self) -> String {
        self.to_string()
    }
    fn decode(raw: &str) -> Option<Self> {
        raw.parse().ok()
    }
}

impl Value for usize {
    fn encode(&self) -> String {
        self.to_string()
    }
    fn decode(raw: &str) -> Option<Self> {
        raw.parse().ok()
    }
}

/// By name (`SIGHUP`), as the fixture hands them to endless.
impl Value for Signal {
    fn encode(&self) -> String {
        self.as_str().to_owned()
    }
    fn decode(raw: &str) -> Option<Self> {
        raw.parse().ok()
    }
}

/// Comma-separated.
impl<T: Value> Value for Vec<T> {
    fn encode(&self) -> String {
        self.iter().map(Value::encode).collect::<Vec<_>>().join(",")
    }
    fn decode(raw: &str) -> Option<Self> {
        raw.split(',')
            .filter(|s| !s.is_empty())
            .map(T::decode)
            .collect()
    }
}

/// A file mode, in octal (`600`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl Value for Mode {
    fn encode(&self) -> String {
        format!("{:o}", self.0)
    }
    fn decode(raw: &str) -> Option<Self> {
        u32::from_str_radix(raw, 8).ok().map(Mode)
    }
}

/// What the server sets on its Unix socket files (see
/// `endless::UnixPermissions`): `MODE:USER:GROUP`, each part optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixPerms {
    pub mode: Option<u32>,
    /// By name or number.
    pub user: Option<String>,
    pub group: Option<String>,
}

impl UnixPerms {
    pub fn mode(mode: u32) -> Self {
        UnixPerms {
            mode: Some(mode),
            ..UnixPerms::default()
        }
    }

    pub fn user(mut self, user: impl ToString) -> Self {
        self.user = Some(user.to_string());
        self
    }

    pub fn group(mut self, group: impl ToString) -> Self {
        self.group = Some(group.to_string());
        self
    }
}

impl Value for UnixPerms {
    fn encode(&self) -> String {
        format!(
            "{}:{}:{}",
            self.mode.map(|m| Mode(m).encode()).unwrap_or_default(),
            self.user.as_deref().unwrap_or_default(),
            self.group.as_deref().unwrap_or_default()
        )
    }
    fn decode(raw: &str) -> Option<Self> {
        let mut parts = raw.split(':');
        let mut part = || parts.next().filter(|p| !p.is_empty());
        Some(UnixPerms {
            mode: match part() {
                Some(m) => Some(Mode::decode(m)?.0),
                None => None,
            },
            user: part().map(str::to_owned),
            group: part().map(str::to_owned),
        })
    }
}

/// What a probe (the fixture started by its own `/spawn` or `/spawn-fds`)
/// reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Whether it believes it was started by a reload, and the sockets it
    /// inherited.
    Sockets,
    /// Every descriptor above 2 it inherited, and whether it sees a
    /// handed-over state.
    All,
}

impl Value for Probe {
    fn encode(&self) -> String {
        match self {
            Probe::Sockets => "sockets",
            Probe::All => "all",
        }
        .into()
    }
    fn decode(raw: &str) -> Option<Self> {
        match raw {
            "sockets" => Some(Probe::Sockets),
            "all" => Some(Probe::All),
            _ => None,
        }
    }
}

// The settings, roughly in the order the fixture reads them. See the
// typed methods on `Spec` below for what each does.

/// Log levels (`tracing` `Targets` directives); `debug` when unset.
pub const LOG: Setting<String> = Setting::new("FIXTURE_LOG");
pub const NOFILE: Setting<u64> = Setting::new("FIXTURE_NOFILE");
pub const SIDECAR: Setting<()> = Setting::new("FIXTURE_SIDECAR");
/// Set by the fixture itself on the probes it starts.
pub const PROBE: Setting<Probe> = Setting::new("FIXTURE_PROBE");
pub const CONNECT: Setting<PathBuf> = Setting::new("FIXTURE_CONNECT");
pub const UMASK: Setting<Mode> = Setting::new("FIXTURE_UMASK");
pub const CHDIR: Setting<PathBuf> = Setting::new("FIXTURE_CHDIR");
pub const PRE_CHILD: Setting<Duration> = Setting::new("FIXTURE_PRE_CHILD_MS");
pub const RELOAD_DELAY: Setting<Duration> = Setting::new("FIXTURE_RELOAD_DELAY_MS");
pub const CRASH_FILE: Setting<PathBuf> = Setting::new("FIXTURE_CRASH_FILE");
pub const PANIC_FILE: Setting<PathBuf> = Setting::new("FIXTURE_PANIC_FILE");
pub const GIVE_UP_FILE: Setting<PathBuf> = Setting::new("FIXTURE_GIVE_UP_FILE");
pub const HANG_FILE: Setting<PathBuf> = Setting::new("FIXTURE_HANG_FILE");
pub const START_DELAY: Setting<Duration> = Setting::new("FIXTURE_START_DELAY_MS");
pub const STOP_TIMEOUT: Setting<Duration> = Setting::new("FIXTURE_STOP_TIMEOUT_MS");
pub const PROBATION: Setting<Duration> = Setting::new("FIXTURE_PROBATION_MS");
pub const PROBATION_FILE: Setting<PathBuf> = Setting::new("FIXTURE_PROBATION_FILE");
pub const READY_CHECK: Setting<()> = Setting::new("FIXTURE_READY_CHECK");
pub const READY_FAIL_FILE: Setting<PathBuf> = Setting::new("FIXTURE_READY_FAIL_FILE");
pub const READY_PROBE: Setting<()> = Setting::new("FIXTURE_READY_PROBE");
pub const UNHEALTHY_FILE: Setting<PathBuf> = Setting::new("FIXTURE_UNHEALTHY_FILE");
pub const CONTROL_SOCKET: Setting<PathBuf> = Setting::new("FIXTURE_CONTROL_SOCKET");
pub const CONTROL_MODE: Setting<Mode> = Setting::new("FIXTURE_CONTROL_MODE");
pub const READY_TIMEOUT: Setting<Duration> = Setting::new("FIXTURE_READY_TIMEOUT_MS");
pub const HEADER_TIMEOUT: Setting<Duration> = Setting::new("FIXTURE_HEADER_TIMEOUT_MS");
pub const DRAIN_SPREAD: Setting<Duration> = Setting::new("FIXTURE_DRAIN_SPREAD_MS");
pub const TLS_HANDSHAKE_TIMEOUT: Setting<Duration> =
    Setting::new("FIXTURE_TLS_HANDSHAKE_TIMEOUT_MS");
pub const HTTP2_IDLE: Setting<Duration> = Setting::new("FIXTURE_HTTP2_IDLE_MS");
pub const HTTP2_KEEP_ALIVE: Setting<Duration> = Setting::new("FIXTURE_HTTP2_KEEP_ALIVE_MS");
pub const TCP_KEEPALIVE: Setting<Option<Duration>> = Setting::new("FIXTURE_TCP_KEEPALIVE_MS");
pub const MAX_CONNECTIONS: Setting<usize> = Setting::new("FIXTURE_MAX_CONNECTIONS");
pub const WATCH_BINARY: Setting<()> = Setting::new("FIXTURE_WATCH_BINARY");
pub const KEEP_PID: Setting<()> = Setting::new("FIXTURE_KEEP_PID");
pub const PID_FILE: Setting<PathBuf> = Setting::new("FIXTURE_PID_FILE");
pub const RELOAD_SIGNALS: Setting<Vec<Signal>> = Setting::new("FIXTURE_RELOAD_SIGNALS");
pub const STOP_SIGNALS: Setting<Vec<Signal>> = Setting::new("FIXTURE_STOP_SIGNALS");
pub const ONLY_FIRST_FILE: Setting<PathBuf> = Setting::new("FIXTURE_ONLY_FIRST_FILE");
pub const BAD_ADDR_FILE: Setting<PathBuf> = Setting::new("FIXTURE_BAD_ADDR_FILE");
pub const EXTRA_ADDR: Setting<String> = Setting::new("FIXTURE_EXTRA_ADDR");
pub const EXTRA_ADDR_FILE: Setting<PathBuf> = Setting::new("FIXTURE_EXTRA_ADDR_FILE");
pub const HTTP: Setting<String> = Setting::new("FIXTURE_HTTP");
pub const STATE: Setting<()> = Setting::new("FIXTURE_STATE");
pub const STATE_DELAY: Setting<Duration> = Setting::new("FIXTURE_STATE_DELAY_MS");
pub const STATE_OVERSIZE_FILE: Setting<PathBuf> = Setting::new("FIXTURE_STATE_OVERSIZE_FILE");
pub const STATE_PANIC_FILE: Setting<PathBuf> = Setting::new("FIXTURE_STATE_PANIC_FILE");
pub const EXTRAS: Setting<()> = Setting::new("FIXTURE_EXTRAS");
pub const EXTRAS_TWICE: Setting<()> = Setting::new("FIXTURE_EXTRAS_TWICE");
pub const TLS_CERT: Setting<PathBuf> = Setting::new("FIXTURE_TLS_CERT");
pub const TLS_KEY: Setting<PathBuf> = Setting::new("FIXTURE_TLS_KEY");
pub const TLS_CLIENT_CA: Setting<PathBuf> = Setting::new("FIXTURE_TLS_CLIENT_CA");
pub const MTLS_CA: Setting<PathBuf> = Setting::new("FIXTURE_MTLS_CA");
pub const UNIX_PERMS: Setting<UnixPerms> = Setting::new("FIXTURE_UNIX_PERMS");

/// The fixture in its connect mode: one connection to the Unix socket at
/// `path`, reported on stdout as `CONNECT ok` or `CONNECT err=KIND` (run
/// it as another user to see whom the socket lets in).
pub fn connect_command(path: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(fixture());
    let (name, value) = CONNECT.pair(path.to_owned());
    cmd.env(name, value);
    cmd
}

/// The fixture's settings, for a [`Spec`] that starts the fixture
/// (`Spec::fixture()`, or a wrapper such as `unshare` that runs it).
impl Spec<'_> {
    fn set<T: Value>(self, setting: Setting<T>, value: T) -> Self {
        let (name, value) = setting.pair(value);
        self.env(name, value)
    }

    fn set_path<P: AsRef<Path>>(self, setting: Setting<PathBuf>, path: P) -> Self {
        self.set(setting, path.as_ref().to_owned())
    }

    /// Log levels, `tracing` `Targets` directives (`warn`,
    /// `endless=debug,info`); `debug` by default.
    pub fn log(self, directives: &str) -> Self {
        self.set(LOG, directives.to_owned())
    }

    /// At most `n` open files (soft and hard limit), as under `ulimit -n`.
    pub fn open_files_limit(self, n: u64) -> Self {
        self.set(NOFILE, n)
    }

    /// Starts a sidecar (`sleep 60`, printing `SIDECAR pid=P of=Q`) first
    /// thing, before any call into endless.
    pub fn sidecar(self) -> Self {
        self.set(SIDECAR, ())
    }

    /// The process's umask (sockets made with mode 0777 under `0`).
    pub fn umask(self, mask: u32) -> Self {
        self.set(UMASK, Mode(mask))
    }

    /// Changes directory to `dir` before its first call into endless.
    pub fn chdir_before_serving(self, dir: impl AsRef<Path>) -> Self {
        self.set_path(CHDIR, dir)
    }

    /// Starts a child of its own (`true`) before serving, and waits for it
    /// `after` later, printing `PRECHILD pid=P status=S`.
    pub fn pre_child(self, after: Duration) -> Self {
        self.set(PRE_CHILD, after)
    }

    /// A generation started by a reload waits this long (printing
    /// `DELAYING pid=P`) before its first call into endless.
    pub fn reload_delay(self, delay: Duration) -> Self {
        self.set(RELOAD_DELAY, delay)
    }

    /// While `file` exists, a generation started by a reload prints
    /// `CRASH pid=P` and exits with status 3.
    pub fn crash_file(self, file: impl AsRef<Path>) -> Self {
        self.set_path(CRASH_FILE, file)
    }

    /// While `file` exists, a generation started by a reload panics.
    pub fn panic_file(self, file: impl AsRef<Path>) -> Self {
        self.set_path(PANIC_FILE, file)
    }

    /// While `file` exists, a generation started by a reload gives up
    /// (`report_start_failure`, a configuration error) and exits with 2.
    pub fn give_up_file(self, file: impl AsRef<Path>) -> Self {
        self.set_path(GIVE_UP_FILE, file)
    }

    /// While `file` exists, a generation started by a reload prints
    /// `HANG pid=P` and never gets ready.
    pub fn hang_file(self, file: impl AsRef<Path>) -> Self {
        self.set_path(HANG_FILE, file)
    }

    /// Every generation waits this long before it configures its server.
    pub fn start_delay(self, delay: Duration) -> Self {
        self.set(START_DELAY, delay)
    }

    pub fn stop_timeout(self, timeout: Duration) -> Self {
        self.set(STOP_TIMEOUT, timeout)
    }

    /// The probation (1 s when unset).
    pub fn probation(self, probation: Duration) -> Self {
        self.set(PROBATION, probation)
    }

    /// The probation in milliseconds read from `file` by each generation
    /// at its start (over [`Spec::probation`]): a release whose setting
    /// differs from the one before it.
    pub fn probation_file(self, file: impl AsRef<Path>) -> Self {
        self.set_path(PROBATION_FILE, file)
    }

    /// Registers a ready check (see [`Spec::ready_fail_file`]).
    pub fn ready_check(self) -> Self {
        self.set(READY_CHECK, ())
    }

    /// The ready check fails ("database unreachable") while `file` exists.
    pub fn ready_fail_file(self, file: impl AsRef<Path>) -> Self {
        self.set_path(READY_FAIL_FILE, file)
    }

    /// Registers a ready probe of `GET /health` (see
    /// [`Spec::unhealthy_file`]).
    pub fn ready_probe(self) -> Self {
        self.set(READY_PROBE, ())
    }

    /// `/health` answers 503 while `file` exists.
    pub fn unhealthy_file(self, file: impl AsRef<Path>) -> Self {
        self.set_path(UNHEALTHY_FILE, file)
    }

    /// A control socket at `path`.
    pub fn control_socket(self, path: impl AsRef<Path>) -> Self {
        self.set_path(CONTROL_SOCKET, path)
    }

    /// The control socket file's mode (`0o666`).
    pub fn control_socket_mode(self, mode: u32) -> Self {
        self.set(CONTROL_MODE, Mode(mode))
    }

    pub fn ready_timeout(self, timeout: Duration) -> Self {
        self.set(READY_TIMEOUT, timeout)
    }

    pub fn header_read_timeout(self, timeout: Duration) -> Self {
        self.set(HEADER_TIMEOUT, timeout)
    }

    pub fn drain_notice_spread(self, window: Duration) -> Self {
        self.set(DRAIN_SPREAD, window)
    }

    pub fn tls_handshake_timeout(self, timeout: Duration) -> Self {
        self.set(TLS_HANDSHAKE_TIMEOUT, timeout)
    }

    pub fn http2_idle_timeout(self, timeout: Duration) -> Self {
        self.set(HTTP2_IDLE, timeout)
    }

    pub fn http2_keep_alive_interval(self, interval: Duration) -> Self {
        self.set(HTTP2_KEEP_ALIVE, interval)
    }

    /// TCP keepalive on accepted sockets (`None`: off).
    pub fn tcp_keepalive(self, idle: Option<Duration>) -> Self {
        self.set(TCP_KEEPALIVE, idle)
    }

    pub fn max_connections(self, n: usize) -> Self {
        self.set(MAX_CONNECTIONS, n)
    }

    pub fn reload_on_binary_change(self) -> Self {
        self.set(WATCH_BINARY, ())
    }

    pub fn keep_pid(self) -> Self {
        self.set(KEEP_PID, ())
    }

    pub fn pid_file(self, path: impl AsRef<Path>) -> Self {
        self.set_path(PID_FILE, path)
    }

    pub fn reload_signals(self, signals: &[Signal]) -> Self {
        self.set(RELOAD_SIGNALS, signals.to_vec())
    }

    pub fn stop_signals(self, signals: &[Signal]) -> Self {
        self.set(STOP_SIGNALS, signals.to_vec())
    }

    /// While `file` exists, a generation serves only the first of its
    /// addresses (a release that no longer serves the others).
    pub fn only_first_file(self, file: impl AsRef<Path>) -> Self {
        self.set_path(ONLY_FIRST_FILE, file)
    }

    /// While `file` exists, a generation started by a reload registers
    /// `not an address` besides its addresses (a wrong configuration).
    pub fn bad_addr_file(self, file: impl AsRef<Path>) -> Self {
        self.set_path(BAD_ADDR_FILE, file)
    }

    /// While `file` exists, a generation serves `addr` besides its
    /// addresses (a release that serves one more).
    pub fn extra_addr(self, addr: &str, file: impl AsRef<Path>) -> Self {
        self.set(EXTRA_ADDR, addr.to_owned())
            .set_path(EXTRA_ADDR_FILE, file)
    }

    /// hyper's HTTP/1 and HTTP/2 settings, `name=value,…` by the name of
    /// their `Server` method (`http2_max_concurrent_streams=none` for no
    /// limit).
    pub fn http_settings(self, settings: &str) -> Self {
        self.set(HTTP, settings.to_owned())
    }

    /// A counter handed over as state at each reload (served at
    /// `/state`).
    pub fn state(self) -> Self {
        self.set(STATE, ())
    }

    /// The state callback takes this long.
    pub fn state_delay(self, delay: Duration) -> Self {
        self.set(STATE_DELAY, delay)
    }

    /// While `file` exists, the state callback returns more than the limit.
    pub fn state_oversize_file(self, file: impl AsRef<Path>) -> Self {
        self.set_path(STATE_OVERSIZE_FILE, file)
    }

    /// While `file` exists, the state callback panics.
    pub fn state_panic_file(self, file: impl AsRef<Path>) -> Self {
        self.set_path(STATE_PANIC_FILE, file)
    }

    /// Serves a UDP echo, a TCP protocol and a memfd counter of its own,
    /// all handed over (`EXTRAS pid=P udp=A tcp=B count=N`).
    pub fn extras(self) -> Self {
        self.set(EXTRAS, ())
    }

    /// With [`Spec::extras`], asks for the UDP socket's name twice.
    pub fn extras_twice(self) -> Self {
        self.set(EXTRAS_TWICE, ())
    }

    /// The certificate and key of `tls:`, `h3:`, `mtls:` and `given-tls:`
    /// addresses.
    pub fn tls(self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Self {
        self.set_path(TLS_CERT, cert).set_path(TLS_KEY, key)
    }

    /// `tls:` addresses ask for (but do not require) a client certificate
    /// signed by the CA in `file`.
    pub fn tls_client_ca(self, file: impl AsRef<Path>) -> Self {
        self.set_path(TLS_CLIENT_CA, file)
    }

    /// `mtls:` addresses require a client certificate signed by the CA in
    /// `file` (read again by every generation).
    pub fn mtls_ca(self, file: impl AsRef<Path>) -> Self {
        self.set_path(MTLS_CA, file)
    }

    /// The mode, user and group of every `unix:/…` socket file.
    pub fn unix_permissions(self, perms: UnixPerms) -> Self {
        self.set(UNIX_PERMS, perms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Value + PartialEq + std::fmt::Debug>(value: T) {
        assert_eq!(T::decode(&value.encode()), Some(value));
    }

    #[test]
    fn values_read_back_as_written() {
        round_trip(Duration::from_millis(1500));
        round_trip(Duration::ZERO);
        round_trip(Duration::MAX);
        round_trip(None::<Duration>);
        round_trip(Some(Duration::from_millis(1)));
        round_trip(vec![Signal::SIGPIPE, Signal::SIGHUP]);
        round_trip(Mode(0o660));
        round_trip(UnixPerms::mode(0o600).user(65534).group("nogroup"));
        round_trip(UnixPerms {
            mode: Some(0o666),
            ..UnixPerms::default()
        });
        round_trip(Probe::All);
        round_trip(usize::MAX);
        assert_eq!(Mode(0o600).encode(), "600");
        assert_eq!(UnixPerms::mode(0o660).encode(), "660::");
        assert_eq!(Duration::MAX.encode(), "max");
    }
}
