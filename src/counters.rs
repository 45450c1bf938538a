//! The reload counters a server keeps over its whole life: each generation
//! hands them to the next in its state (see `state`), encoded here, so none
//! resets at a reload. The lifecycle counts into them; the metrics
//! (feature `metrics`) and `Handle::stats` read them.

use std::time::Duration;

/// The reload counters, carried from generation to generation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub(crate) requested: u64,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    pub(crate) rolled_back: u64,
    pub(crate) last_duration: Option<Duration>,
    pub(crate) last_error: Option<String>,
    /// Drains after a hand-over that have ended, and the connections cut
    /// at a drain's deadline (or by a second stop).
    pub(crate) drains: u64,
    pub(crate) cut: u64,
    /// A predecessor still holds the sockets, ready to take over if this
    /// generation exits (not carried: it is this process's own state).
    pub(crate) in_probation: bool,
    /// When the reload that started this generation was asked for, while
    /// its verdict is pending (not carried: the predecessor hands over the
    /// time from the request to the spawn as `last_duration`).
    pub(crate) reload_since: Option<std::time::Instant>,
}

impl Counters {
    /// Version byte of the encoding.
    const VERSION: u8 = 2;
    /// The `u64`s of each version.
    const FIELDS: [usize; 2] = [5, 7];

    /// For the state handed to the next generation: little-endian `u64`s
    /// (requested, succeeded, failed, rolled back, last duration in
    /// microseconds or `u64::MAX` for none, drains, cut connections), then
    /// the last error's UTF-8 bytes. Version 1 had the first five.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![Self::VERSION];
        let duration = self.last_duration.map_or(u64::MAX, |d| {
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX - 1)
        });
        for n in [
            self.requested,
            self.succeeded,
            self.failed,
            self.rolled_back,
            duration,
            self.drains,
            self.cut,
        ] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        if let Some(e) = &self.last_error {
            out.extend_from_slice(e.as_bytes());
        }
        out
    }

    /// The counters [`encode`](Self::encode) wrote; `None` if the bytes are
    /// not such counters.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Counters> {
        let (&version, rest) = bytes.split_first()?;
        let fields = *Self::FIELDS.get(usize::from(version).checked_sub(1)?)?;
        if rest.len() < fields * 8 {
            return None;
        }
        let n = |i: usize| {
            if i < fields {
                u64::from_le_bytes(rest[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
            } else {
                0
            }
        };
        let error = String::from_utf8_lossy(&rest[fields * 8..]).into_owned();
        Some(Counters {
            requested: n(0),
            succeeded: n(1),
            failed: n(2),
            rolled_back: n(3),
            last_duration: (n(4) != u64::MAX).then(|| Duration::from_micros(n(4))),
            last_error: (!error.is_empty()).then_some(error),
            drains: n(5),
            cut: n(6),
            in_probation: false,
            reload_since: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_round_trip_and_garbage_is_none() {
        let c = Counters {
            requested: 7,
            succeeded: 4,
            failed: 3,
            rolled_back: 1,
            last_duration: Some(Duration::from_millis(1234)),
            last_error: Some("new generation exited: status 2".into()),
            drains: 3,
            cut: 9,
            in_probation: true,
            reload_since: None,
        };
        let back = Counters::decode(&c.encode()).unwrap();
        assert_eq!(back.requested, 7);
        assert_eq!(back.last_error, c.last_error);
        assert_eq!(back.last_duration, c.last_duration);
        assert!(!back.in_probation, "not carried");
        assert_eq!((back.drains, back.cut), (3, 9));
        // What a version-1 generation handed over still reads.
        let mut v1 = vec![1u8];
        for n in [4u64, 3, 1, 0, u64::MAX] {
            v1.extend_from_slice(&n.to_le_bytes());
        }
        let old = Counters::decode(&v1).unwrap();
        assert_eq!((old.requested, old.succeeded, old.drains), (4, 3, 0));
        let none = Counters::default();
        assert_eq!(Counters::decode(&none.encode()).unwrap(), none);
        assert!(Counters::decode(b"").is_none());
        assert!(Counters::decode(&[9; 50]).is_none());
        assert!(Counters::decode(&[1; 20]).is_none());
        assert!(Counters::decode(&[0; 60]).is_none());
    }
}
