//! Without the `tls` feature no listener serves HTTPS. These types have no
//! values, so the code that handles TLS compiles the same way with and
//! without the feature and is simply never reached here.

use std::time::Duration;

use crate::error::Result;

/// Where a listener's TLS configuration comes from: nowhere.
#[derive(Debug, Clone)]
pub(crate) enum TlsSource {}

/// A TLS acceptor: none.
#[derive(Debug, Clone)]
pub(crate) enum Acceptor {}

impl TlsSource {
    pub(crate) fn acceptor(&self) -> Result<Acceptor> {
        match *self {}
    }
}

pub(crate) async fn handshake<IO>(acceptor: &Acceptor, _io: IO, _timeout: Duration) -> Option<IO> {
    match *acceptor {}
}

/// Without TLS there is nothing to add.
pub(crate) fn attach_info<IO>(
    info: &crate::conn_info::ConnInfo,
    _stream: &IO,
) -> crate::conn_info::ConnInfo {
    info.clone()
}

/// The TLS session ticket keys to hand to the next generation: none yet.
pub(crate) fn ticket_keys_state() -> Option<Vec<u8>> {
    None
}
