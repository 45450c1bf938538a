//! TLS session tickets that stay valid across reloads.
//!
//! rustls's own ticketer makes fresh random keys in every process, so after
//! a reload every ticket a client holds is useless and every client does a
//! full handshake. This one encrypts tickets (ChaCha20-Poly1305, from ring,
//! as rustls's does) with keys that the next generation inherits through
//! the state hand-over (`state`, section `tls-tickets`): made at the first
//! start, rotated every [`LIFETIME`] seconds, the previous key kept to
//! decrypt tickets it made. Rotation times are wall-clock seconds, so they
//! mean the same in the next process.
//!
//! A ticket is `key name (16) | nonce (12) | ciphertext | tag (16)`, the
//! key name and the configuration's [`Scope`] authenticated as associated
//! data.
//!
//! A ticket carries a session, and with it whatever the handshake that made
//! it settled (the client's certificate, or that it had none). So it is
//! good only where that handshake would be: every ticket is bound to the
//! configuration that issued it ([`Scope`]: for `register_tls`, its
//! certificate chain; for `register_tls_config`, what the user names in
//! `tls_ticketer`) and to its listener ([`for_listener`]). A session from a
//! public listener cannot be resumed on one that requires client
//! certificates, nor one from before a change of certificates or client CA
//! after a reload: the client does a full handshake instead, with every
//! check. One set of keys serves every configuration, and only it crosses
//! a reload.

use std::sync::{Arc, OnceLock, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;
use tracing::{debug, info, warn};

/// How long a key encrypts new tickets (and then decrypts for as long
/// again), and the lifetime tickets announce: 6 hours, as rustls's.
pub(crate) const LIFETIME: u32 = 6 * 60 * 60;
const NAME_LEN: usize = 16;
const SECRET_LEN: usize = 32;
const TAG_LEN: usize = 16;
/// Version byte of the serialized keys.
const VERSION: u8 = 1;

struct Key {
    name: [u8; NAME_LEN],
    secret: [u8; SECRET_LEN],
    /// When it started encrypting, in seconds since the Unix epoch.
    created: u64,
    aead: LessSafeKey,
}

impl Key {
    fn new(name: [u8; NAME_LEN], secret: [u8; SECRET_LEN], created: u64) -> Option<Key> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &secret).ok()?;
        Some(Key {
            name,
            secret,
            created,
            aead: LessSafeKey::new(unbound),
        })
    }

    fn random(rng: &SystemRandom, created: u64) -> Option<Key> {
        let mut name = [0u8; NAME_LEN];
        let mut secret = [0u8; SECRET_LEN];
        rng.fill(&mut name).ok()?;
        rng.fill(&mut secret).ok()?;
        Key::new(name, secret, created)
    }
}

struct Keys {
    current: Key,
    previous: Option<Key>,
}

/// What a ticket is bound to: a digest of a configuration's identity (see
/// [`scope`]), authenticated with every ticket.
pub(crate) type Scope = [u8; SCOPE_LEN];
const SCOPE_LEN: usize = 32;

/// The [`Scope`] of `parts` (a kind, then what identifies a configuration
/// of that kind): SHA-256 over each, length-prefixed, so that no two lists
/// of parts have the same digest.
pub(crate) fn scope(parts: &[&[u8]]) -> Scope {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"endless TLS ticket scope, version 1");
    for part in parts {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part);
    }
    let mut out = [0u8; SCOPE_LEN];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The process's ticket keys, for every configuration: see [`bound`].
pub(crate) struct Ticketer {
    keys: RwLock<Keys>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("Ticketer").finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

static TICKETER: OnceLock<Option<Arc<Ticketer>>> = OnceLock::new();

/// Tickets with this process's keys (inherited, or new) for the
/// configuration of `scope`: none other accepts them. `None` only if the
/// system's random number generator fails.
pub(crate) fn bound(scope: Scope) -> Option<Arc<Bound>> {
    ticketer().map(|keys| Arc::new(Bound { keys, scope }))
}

/// This process's keys: the inherited ones, or new ones. `None` only if
/// the system's random number generator fails.
fn ticketer() -> Option<Arc<Ticketer>> {
    TICKETER
        .get_or_init(|| {
            let rng = SystemRandom::new();
            let keys = match inherited_keys().map(decode) {
                Some(Some(keys)) => {
                    info!("TLS session ticket keys inherited from the previous generation");
                    Some(keys)
                }
                Some(None) => {
                    warn!("inherited TLS session ticket keys are unreadable; making new ones");
                    None
                }
                None => None,
            };
            let keys = keys.or_else(|| {
                Key::random(&rng, now()).map(|current| Keys {
                    current,
                    previous: None,
                })
            });
            match keys {
                Some(keys) => Some(Arc::new(Ticketer {
                    keys: RwLock::new(keys),
                    rng,
                })),
                None => {
                    warn!("cannot make TLS session ticket keys; tickets disabled");
                    None
                }
            }
        })
        .clone()
}

/// The keys to hand to the next generation: ours if this process made or
/// used a ticketer, else whatever it inherited, passed on unchanged.
pub(crate) fn state() -> Option<Vec<u8>> {
    match TICKETER.get() {
        Some(Some(t)) => Some(encode(&t.read())),
        _ => inherited_keys().map(<[u8]>::to_vec),
    }
}

/// The keys the previous generation handed over (none without reloads).
fn inherited_keys() -> Option<&'static [u8]> {
    #[cfg(unix)]
    {
        crate::state::section(crate::state::TLS_TICKETS)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

fn encode(keys: &Keys) -> Vec<u8> {
    let mut out = vec![VERSION];
    for key in std::iter::once(&keys.current).chain(&keys.previous) {
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&key.secret);
        out.extend_from_slice(&key.created.to_le_bytes());
    }
    out
}

fn decode(bytes: &[u8]) -> Option<Keys> {
    const ONE: usize = NAME_LEN + SECRET_LEN + 8;
    let rest = bytes.strip_prefix(&[VERSION])?;
    if rest.len() != ONE && rest.len() != 2 * ONE {
        return None;
    }
    let mut keys = rest.chunks_exact(ONE).map(|k| {
        Key::new(
            k[..NAME_LEN].try_into().ok()?,
            k[NAME_LEN..NAME_LEN + SECRET_LEN].try_into().ok()?,
            u64::from_le_bytes(k[NAME_LEN + SECRET_LEN..].try_into().ok()?),
        )
    });
    let current = keys.next()??;
    let previous = match keys.next() {
        Some(k) => Some(k?),
        None => None,
    };
    Some(Keys { current, previous })
}

impl Ticketer {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a new key once the current one has encrypted for
    /// [`LIFETIME`] seconds; the current one becomes the previous.
    fn rotate_if_due(&self) {
        let now = now();
        if now
            < self
                .read()
                .current
                .created
                .saturating_add(u64::from(LIFETIME))
        {
            return;
        }
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        // Another thread may have rotated meanwhile.
        if now < keys.current.created.saturating_add(u64::from(LIFETIME)) {
            return;
        }
        match Key::random(&self.rng, now) {
            Some(new) => {
                let old = std::mem::replace(&mut keys.current, new);
                keys.previous = Some(old);
                debug!("TLS session ticket key rotated");
            }
            None => warn!("cannot make a new TLS session ticket key; keeping the current one"),
        }
    }
}

/// The associated data of a ticket: its key's name and its scope.
fn aad(name: &[u8; NAME_LEN], scope: &Scope) -> [u8; NAME_LEN + SCOPE_LEN] {
    let mut aad = [0u8; NAME_LEN + SCOPE_LEN];
    aad[..NAME_LEN].copy_from_slice(name);
    aad[NAME_LEN..].copy_from_slice(scope);
    aad
}

impl Ticketer {
    fn seal(&self, scope: &Scope, plain: &[u8]) -> Option<Vec<u8>> {
        self.rotate_if_due();
        let keys = self.read();
        let key = &keys.current;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&key.name, scope)),
                &mut sealed,
            )
            .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn open(&self, scope: &Scope, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < NAME_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (name, rest) = cipher.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let keys = self.read();
        let key = std::iter::once(&keys.current)
            .chain(&keys.previous)
            .find(|k| k.name == name)?;
        let mut buf = sealed.to_vec();
        let plain_len = key
            .aead
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).ok()?,
                Aad::from(aad(&key.name, scope)),
                &mut buf,
            )
            .ok()?
            .len();
        buf.truncate(plain_len);
        Some(buf)
    }
}

/// Stateless session tickets whose keys survive reloads, for one
/// configuration ([`Scope`]).
pub(crate) struct Bound {
    keys: Arc<Ticketer>,
    scope: Scope,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("Bound").finish_non_exhaustive()
    }
}

impl ProducesTickets for Bound {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.keys.seal(&self.scope, plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.keys.open(&self.scope, cipher)
    }
}

/// `inner`'s tickets, good on the listener registered as `listener` only:
/// each carries the listener's tag inside its encrypted part, checked when
/// it comes back. Whatever ticketer a configuration has (ours, rustls's,
/// the user's own), a session made on one listener is not resumed on
/// another, whose configuration may check clients differently. A disabled
/// ticketer is left as it is.
pub(crate) fn for_listener(
    inner: Arc<dyn ProducesTickets>,
    listener: &str,
) -> Arc<dyn ProducesTickets> {
    if !inner.enabled() {
        return inner;
    }
    let mut tag = [0u8; LISTENER_TAG_LEN];
    tag.copy_from_slice(&scope(&[b"listener", listener.as_bytes()])[..LISTENER_TAG_LEN]);
    Arc::new(ForListener { inner, tag })
}

const LISTENER_TAG_LEN: usize = 16;

struct ForListener {
    inner: Arc<dyn ProducesTickets>,
    tag: [u8; LISTENER_TAG_LEN],
}

impl std::fmt::Debug for ForListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForListener").finish_non_exhaustive()
    }
}

impl ProducesTickets for ForListener {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut tagged = Vec::with_capacity(LISTENER_TAG_LEN + plain.len());
        tagged.extend_from_slice(&self.tag);
        tagged.extend_from_slice(plain);
        self.inner.encrypt(&tagged)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let plain = self.inner.decrypt(cipher)?;
        plain.strip_prefix(&self.tag[..]).map(<[u8]>::to_vec)
    }
}

/// No tickets: what [`crate::tls_ticketer`] returns if no keys can be made.
#[derive(Debug)]
pub(crate) struct Disabled;

impl ProducesTickets for Disabled {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticketer(keys: Keys) -> Ticketer {
        Ticketer {
            keys: RwLock::new(keys),
            rng: SystemRandom::new(),
        }
    }

    const S: Scope = [7; SCOPE_LEN];

    impl Ticketer {
        fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
            self.seal(&S, plain)
        }
        fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
            self.open(&S, cipher)
        }
    }

    #[test]
    fn tickets_round_trip_and_tampering_fails() {
        let rng = SystemRandom::new();
        let t = ticketer(Keys {
            current: Key::random(&rng, now()).unwrap(),
            previous: None,
        });
        let ticket = t.encrypt(b"session").unwrap();
        assert_eq!(t.decrypt(&ticket).unwrap(), b"session");
        let mut bad = ticket.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(t.decrypt(&bad), None);
        assert_eq!(t.decrypt(&ticket[..20]), None);
    }

    #[test]
    fn a_ticket_is_good_in_its_own_scope_only() {
        let rng = SystemRandom::new();
        let keys = Arc::new(ticketer(Keys {
            current: Key::random(&rng, now()).unwrap(),
            previous: None,
        }));
        let one = Bound {
            keys: keys.clone(),
            scope: scope(&[b"files", b"chain one"]),
        };
        let again = Bound {
            keys: keys.clone(),
            scope: scope(&[b"files", b"chain one"]),
        };
        let other = Bound {
            keys: keys.clone(),
            scope: scope(&[b"files", b"chain two"]),
        };
        let ticket = one.encrypt(b"session").unwrap();
        assert_eq!(again.decrypt(&ticket).unwrap(), b"session");
        assert_eq!(other.decrypt(&ticket), None);
        // Parts are length-prefixed: a different split is a different scope.
        assert_ne!(scope(&[b"ab", b"c"]), scope(&[b"a", b"bc"]));
        // The same keys in the next generation, the same scope: good.
        let next = Bound {
            keys: Arc::new(ticketer(decode(&encode(&keys.read())).unwrap())),
            scope: scope(&[b"files", b"chain one"]),
        };
        assert_eq!(next.decrypt(&ticket).unwrap(), b"session");
    }

    #[test]
    fn a_ticket_is_good_on_its_own_listener_only() {
        let rng = SystemRandom::new();
        let keys = Arc::new(ticketer(Keys {
            current: Key::random(&rng, now()).unwrap(),
            previous: None,
        }));
        let inner: Arc<dyn ProducesTickets> = Arc::new(Bound {
            keys,
            scope: scope(&[b"user", b"same"]),
        });
        let public = for_listener(inner.clone(), "0.0.0.0:443");
        let private = for_listener(inner.clone(), "0.0.0.0:8443");
        let ticket = public.encrypt(b"session").unwrap();
        assert_eq!(public.decrypt(&ticket).unwrap(), b"session");
        assert_eq!(private.decrypt(&ticket), None);
        assert_eq!(
            inner.decrypt(&ticket).unwrap()[LISTENER_TAG_LEN..],
            *b"session"
        );
        // A disabled ticketer stays disabled, unwrapped.
        assert!(!for_listener(Arc::new(Disabled), "x").enabled());
    }

    #[test]
    fn keys_survive_encoding_and_rotation_keeps_the_previous_key() {
        let rng = SystemRandom::new();
        // A key old enough to be rotated at the next ticket.
        let old = now() - u64::from(LIFETIME) - 1;
        let t = ticketer(Keys {
            current: Key::random(&rng, old).unwrap(),
            previous: None,
        });
        let before = t.read().current.aead_ticket(&t);
        // What the next generation gets decrypts what this one made.
        let next = ticketer(decode(&encode(&t.read())).unwrap());
        assert_eq!(next.decrypt(&before).unwrap(), b"x");
        // A ticket now rotates the key; the old ticket still decrypts.
        let after = t.encrypt(b"y").unwrap();
        assert_ne!(after[..NAME_LEN], before[..NAME_LEN]);
        assert_eq!(t.decrypt(&before).unwrap(), b"x");
        let next = ticketer(decode(&encode(&t.read())).unwrap());
        assert_eq!(next.decrypt(&before).unwrap(), b"x");
        assert_eq!(next.decrypt(&after).unwrap(), b"y");
        assert!(decode(b"\x01short").is_none());
        assert!(decode(b"").is_none());
    }

    impl Key {
        /// A ticket for `x` made with this key, without rotating.
        fn aead_ticket(&self, t: &Ticketer) -> Vec<u8> {
            let mut nonce = [0u8; NONCE_LEN];
            t.rng.fill(&mut nonce).unwrap();
            let mut sealed = b"x".to_vec();
            self.aead
                .seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad(&self.name, &S)),
                    &mut sealed,
                )
                .unwrap();
            [&self.name[..], &nonce, &sealed].concat()
        }
    }
}
