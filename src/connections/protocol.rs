//! hyper's HTTP/1 and HTTP/2 settings that the `Server` builder mirrors
//! ([`Protocol`]): checked by `Server::run`, then applied to the
//! connection builders before endless's own settings.
//!
//! Mirrored, not a closure over hyper's builders: hyper panics on some
//! values (an HTTP/1 buffer under 8 KiB, an HTTP/2 frame size out of its
//! range, a connection window over 2³¹−1), and here each is refused by
//! `run` with an [`Error::Config`] naming the setting; hyper's
//! builder types stay out of endless's public API; and the settings endless
//! owns (the timers, hyper's own header read timeout, which the sweeper
//! replaces, and the HTTP/2 keep-alive pings) cannot be set twice.

use super::http::Builders;
use crate::error::{Error, Result};

/// The largest HTTP/2 flow-control window (RFC 9113, 6.9.1).
const MAX_WINDOW: u32 = (1 << 31) - 1;

/// HTTP/2's initial window (RFC 9113, 6.9.2): a connection window cannot
/// be made smaller, only larger.
const SPEC_WINDOW: u32 = 65_535;

/// HTTP/2's frame size bounds (RFC 9113, 6.5.2).
const MIN_FRAME: u32 = 16_384;
const MAX_FRAME: u32 = (1 << 24) - 1;

/// hyper's smallest HTTP/1 read buffer.
const MIN_BUF: usize = 8_192;

/// The most HTTP/1 headers a request may be allowed: hyper reserves room
/// for that many in every request it parses.
const MAX_HEADERS: usize = 100_000;

/// The settings of hyper's HTTP/1 and HTTP/2 servers that the program set;
/// `None` leaves hyper's default.
#[derive(Debug, Clone, Default)]
pub(crate) struct Protocol {
    pub(crate) http1_keep_alive: Option<bool>,
    pub(crate) http1_max_headers: Option<usize>,
    pub(crate) http1_max_buf_size: Option<usize>,
    /// `Some(None)`: no limit.
    pub(crate) http2_max_concurrent_streams: Option<Option<u32>>,
    pub(crate) http2_initial_stream_window_size: Option<u32>,
    pub(crate) http2_initial_connection_window_size: Option<u32>,
    pub(crate) http2_adaptive_window: Option<bool>,
    pub(crate) http2_max_frame_size: Option<u32>,
    pub(crate) http2_max_header_list_size: Option<u32>,
}

impl Protocol {
    /// Refuses what hyper would panic on, or what could serve nothing.
    pub(crate) fn check(&self) -> Result<()> {
        let refuse = |setting: &'static str, reason: String| Err(Error::Config { setting, reason });
        if let Some(n) = self.http1_max_headers {
            if !(1..=MAX_HEADERS).contains(&n) {
                return refuse(
                    "http1_max_headers",
                    format!("{n} is not from 1 to {MAX_HEADERS}"),
                );
            }
        }
        if let Some(n) = self.http1_max_buf_size {
            if n < MIN_BUF {
                return refuse(
                    "http1_max_buf_size",
                    format!("{n} is under hyper's minimum of {MIN_BUF} bytes"),
                );
            }
        }
        if self.http2_max_concurrent_streams == Some(Some(0)) {
            return refuse(
                "http2_max_concurrent_streams",
                "0 would refuse every request (None for no limit)".to_owned(),
            );
        }
        if self.http2_max_header_list_size == Some(0) {
            return refuse(
                "http2_max_header_list_size",
                "0 would refuse every request".to_owned(),
            );
        }
        self.check_windows()?;
        if let Some(n) = self.http2_max_frame_size {
            if !(MIN_FRAME..=MAX_FRAME).contains(&n) {
                return refuse(
                    "http2_max_frame_size",
                    format!("{n} is not from {MIN_FRAME} to {MAX_FRAME} (RFC 9113)"),
                );
            }
        }
        Ok(())
    }

    fn check_windows(&self) -> Result<()> {
        let refuse = |setting: &'static str, reason: String| Err(Error::Config { setting, reason });
        if let Some(n) = self.http2_initial_stream_window_size {
            if !(1..=MAX_WINDOW).contains(&n) {
                return refuse(
                    "http2_initial_stream_window_size",
                    format!("{n} is not from 1 to {MAX_WINDOW} (RFC 9113)"),
                );
            }
        }
        if let Some(n) = self.http2_initial_connection_window_size {
            if !(SPEC_WINDOW..=MAX_WINDOW).contains(&n) {
                return refuse(
                    "http2_initial_connection_window_size",
                    format!("{n} is not from {SPEC_WINDOW} to {MAX_WINDOW} (RFC 9113)"),
                );
            }
        }
        let fixed = self.http2_initial_stream_window_size.is_some()
            || self.http2_initial_connection_window_size.is_some();
        if fixed && self.http2_adaptive_window == Some(true) {
            return refuse(
                "http2_adaptive_window",
                "an adaptive window replaces the initial window sizes set; set one or the other"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// Sets what the program set on `builder` (checked: nothing here
    /// panics in hyper).
    pub(super) fn apply(&self, builders: &mut Builders) {
        let http1 = &mut builders.http1;
        if let Some(on) = self.http1_keep_alive {
            http1.keep_alive(on);
        }
        if let Some(n) = self.http1_max_headers {
            http1.max_headers(n);
        }
        if let Some(n) = self.http1_max_buf_size {
            http1.max_buf_size(n.max(MIN_BUF));
        }
        let http2 = &mut builders.http2;
        if let Some(max) = self.http2_max_concurrent_streams {
            http2.max_concurrent_streams(max);
        }
        // The adaptive window first: it resets the window sizes.
        if let Some(on) = self.http2_adaptive_window {
            http2.adaptive_window(on);
        }
        if let Some(n) = self.http2_initial_stream_window_size {
            http2.initial_stream_window_size(n.min(MAX_WINDOW));
        }
        if let Some(n) = self.http2_initial_connection_window_size {
            http2.initial_connection_window_size(n.clamp(SPEC_WINDOW, MAX_WINDOW));
        }
        if let Some(n) = self.http2_max_frame_size {
            http2.max_frame_size(n.clamp(MIN_FRAME, MAX_FRAME));
        }
        if let Some(n) = self.http2_max_header_list_size {
            http2.max_header_list_size(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(p: Protocol) -> Option<&'static str> {
        match p.check() {
            Ok(()) => None,
            Err(Error::Config { setting, .. }) => Some(setting),
            Err(e) => panic!("unexpected {e}"),
        }
    }

    #[test]
    fn what_hyper_would_panic_on_is_refused() {
        let p = Protocol::default;
        assert_eq!(setting(p()), None);
        let cases = [
            (
                Protocol {
                    http1_max_buf_size: Some(8_191),
                    ..p()
                },
                "http1_max_buf_size",
            ),
            (
                Protocol {
                    http1_max_headers: Some(0),
                    ..p()
                },
                "http1_max_headers",
            ),
            (
                Protocol {
                    http1_max_headers: Some(usize::MAX),
                    ..p()
                },
                "http1_max_headers",
            ),
            (
                Protocol {
                    http2_max_frame_size: Some(16_383),
                    ..p()
                },
                "http2_max_frame_size",
            ),
            (
                Protocol {
                    http2_max_frame_size: Some(1 << 24),
                    ..p()
                },
                "http2_max_frame_size",
            ),
            (
                Protocol {
                    http2_initial_connection_window_size: Some(u32::MAX),
                    ..p()
                },
                "http2_initial_connection_window_size",
            ),
            (
                Protocol {
                    http2_initial_stream_window_size: Some(1 << 31),
                    ..p()
                },
                "http2_initial_stream_window_size",
            ),
            (
                Protocol {
                    http2_max_concurrent_streams: Some(Some(0)),
                    ..p()
                },
                "http2_max_concurrent_streams",
            ),
            (
                Protocol {
                    http2_max_header_list_size: Some(0),
                    ..p()
                },
                "http2_max_header_list_size",
            ),
            (
                Protocol {
                    http2_adaptive_window: Some(true),
                    http2_initial_stream_window_size: Some(1 << 20),
                    ..p()
                },
                "http2_adaptive_window",
            ),
        ];
        for (p, name) in cases {
            let shown = format!("{p:?}");
            assert_eq!(setting(p), Some(name), "{shown}");
        }
    }

    #[test]
    fn the_bounds_themselves_are_accepted_and_applied() {
        let p = Protocol {
            http1_keep_alive: Some(false),
            http1_max_headers: Some(MAX_HEADERS),
            http1_max_buf_size: Some(MIN_BUF),
            http2_max_concurrent_streams: Some(None),
            http2_initial_stream_window_size: Some(MAX_WINDOW),
            http2_initial_connection_window_size: Some(SPEC_WINDOW),
            http2_adaptive_window: Some(false),
            http2_max_frame_size: Some(MAX_FRAME),
            http2_max_header_list_size: Some(1),
        };
        assert_eq!(setting(p.clone()), None);
        p.apply(&mut Builders::new());
    }
}
