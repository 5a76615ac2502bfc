//! Who may decide what the mesh runs: admin keys and signed decisions.
//!
//! A start, stop or deployment is a [`DesiredApp`] that spreads to every
//! peer and is re-announced by each of them. Announcements are signed by
//! the peer that sends them, which proves who *relayed* a decision, not who
//! *made* it. So a decision carries its own signature, made by an admin key
//! where the decision is made (in the CLI, `--key`), over every field it
//! changes. Relaying peers cannot alter it, and every peer checks it
//! itself, whoever relayed it.
//!
//! A peer started with `--admin`/`--admins` ([`Admins`] not empty) takes only
//! decisions signed by one of those keys, from its own API and from gossip
//! alike, and only such a peer installs bundles from the network. A peer
//! without admins takes unsigned start/stop of the apps in its own `--apps`
//! directory, as the original project did, and never installs a bundle.
//!
//! Keys are Ed25519. An admin key file holds the 32-byte secret as hex
//! under a header line; a public key is written `ed25519:<64 hex digits>`.

use std::collections::HashSet;
use std::path::Path;

use libp2p::identity::ed25519;
use serde::{Deserialize, Serialize};

use crate::mesh::desired::DesiredApp;

/// First line of an admin key file.
const KEY_FILE_HEADER: &str = "disruptor admin key v1 (ed25519 secret, hex; keep private)";
/// Prefix of a written public key.
const PUBKEY_PREFIX: &str = "ed25519:";
/// Domain separation: these bytes start everything an admin key signs, so
/// a signature made for a decision can never be passed off as anything
/// else (and nothing else as a decision).
const DECISION_DOMAIN: &str = "disruptor/decision/1";
/// Most admin keys a peer accepts (`--admin` and `--admins` together).
pub const MAX_ADMINS: usize = 64;

/// An admin's public key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AdminKey([u8; 32]);

impl AdminKey {
    /// Parses `ed25519:<hex>` or bare hex (64 digits).
    pub fn parse(text: &str) -> Result<AdminKey, String> {
        let t = text.trim();
        let hex = t.strip_prefix(PUBKEY_PREFIX).unwrap_or(t);
        let bytes = decode_hex::<32>(hex).ok_or_else(|| {
            format!("{t:?} is not an admin public key (expected {PUBKEY_PREFIX} and 64 hex digits, as `disruptor keygen --admin` prints)")
        })?;
        // Not every 32 bytes is a point on the curve: check it now, so a
        // typo is an error at start rather than a key that verifies nothing.
        ed25519::PublicKey::try_from_bytes(&bytes)
            .map_err(|_| format!("{t:?} is not a valid Ed25519 public key"))?;
        Ok(AdminKey(bytes))
    }

    fn public(&self) -> Option<ed25519::PublicKey> {
        ed25519::PublicKey::try_from_bytes(&self.0).ok()
    }

    /// A short name for logs and decision origins: `admin:` and the first
    /// 16 hex digits.
    pub fn short(&self) -> String {
        format!("admin:{}", &encode_hex(&self.0)[..16])
    }
}

impl std::fmt::Display for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PUBKEY_PREFIX}{}", encode_hex(&self.0))
    }
}

/// The admin keys a peer trusts; empty means "no admins".
#[derive(Debug, Clone, Default)]
pub struct Admins(HashSet<AdminKey>);

impl Admins {
    /// The set of `keys` (duplicates count once).
    pub fn new(keys: impl IntoIterator<Item = AdminKey>) -> Admins {
        Admins(keys.into_iter().collect())
    }

    /// Whether there are no admins: unsigned start/stop is taken, and no
    /// bundle is installed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Distinct keys (at most [`MAX_ADMINS`] from the flags).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether `key` is one of the admins.
    pub fn contains(&self, key: &AdminKey) -> bool {
        self.0.contains(key)
    }

    /// Parses an admins file: one public key per line; `#` starts a
    /// comment; blank lines are skipped. Errors name the line.
    pub fn parse_file(text: &str) -> Result<Vec<AdminKey>, String> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            keys.push(AdminKey::parse(line).map_err(|e| format!("line {}: {e}", i + 1))?);
        }
        Ok(keys)
    }
}

/// A decision's signature: the admin key that made it and its Ed25519
/// signature over [`signed_bytes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The admin's public key, `ed25519:<64 hex digits>`.
    pub key: String,
    /// The 64-byte signature, as 128 hex digits.
    pub sig: String,
}

impl Signature {
    /// Longest a well-formed signature's JSON fields can be: bounds what a
    /// decision adds to every announcement.
    pub const MAX_TEXT: usize = PUBKEY_PREFIX.len() + 64 + 128;
}

/// Why a decision was not taken (also the `reason` label of
/// `disruptor_decisions_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Unsigned, on a peer with admins.
    #[error(
        "the decision is not signed, and this peer takes only decisions signed by an admin key (--admin)"
    )]
    Unsigned,
    /// A signature that does not parse or does not verify against the
    /// decision's contents.
    #[error("the decision's signature does not match its contents (altered, or not a signature)")]
    BadSignature,
    /// A valid signature by a key that is not one of this peer's admins.
    #[error("the decision is signed by a key this peer does not trust as an admin")]
    UntrustedKey,
    /// A field out of bounds: workers, a clock jump, the origin's length,
    /// a date too far ahead, a bundle hash that is not one, an over-long
    /// signature.
    #[error("the decision is out of bounds (workers, clock or version)")]
    Invalid,
    /// A new app while [`MAX_DESIRED`](crate::mesh::desired::MAX_DESIRED)
    /// decisions are held.
    #[error("this peer already holds the most decisions it keeps; stop some apps first")]
    Full,
    /// Handed in through the API, but not newer than the decision held for
    /// its app (and not that very decision).
    #[error("a newer decision for this app exists; decide again")]
    Stale,
}

impl Refusal {
    /// The `reason` label of `disruptor_decisions_refused_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::BadSignature => "bad_signature",
            Refusal::UntrustedKey => "untrusted_key",
            Refusal::Invalid => "invalid",
            Refusal::Full => "full",
            Refusal::Stale => "stale",
        }
    }
}

/// The exact bytes an admin key signs for `d`: every field the decision
/// changes, one per line, after a domain tag. Changing any field (the
/// app, run or stop, workers, the version and its size, the clock, the
/// origin, the expiry time) changes these bytes.
pub fn signed_bytes(d: &DesiredApp) -> Vec<u8> {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut bytes = format!(
        "{DECISION_DOMAIN}\napp={}\nrun={}\nworkers={}\nbundle={}\nsize={}\nclock={}\norigin={}\nat={}\n",
        d.app,
        d.run,
        opt(d.workers.map(|w| w.to_string())),
        opt(d.bundle.as_ref().map(|b| b.hash.clone())),
        opt(d.bundle.as_ref().map(|b| b.size.to_string())),
        d.clock,
        d.origin,
        d.at_ms,
    )
    .into_bytes();
    // Placement came later: a decision without it signs the same bytes
    // as before it existed, so older signatures still verify.
    if let Some(p) = d.peers {
        bytes.extend_from_slice(format!("peers={p}\n").as_bytes());
    }
    if !d.on.is_empty() {
        bytes.extend_from_slice(format!("on={}\n", d.on).as_bytes());
    }
    bytes
}

/// Checks `d` against `admins`: with admins, it must be signed by one of
/// them; without, it may be unsigned, and a signature it carries must
/// still match its contents (a relayer must not alter it either way).
pub fn check(d: &DesiredApp, admins: &Admins) -> Result<(), Refusal> {
    let Some(s) = &d.signed else {
        return if admins.is_empty() {
            Ok(())
        } else {
            Err(Refusal::Unsigned)
        };
    };
    let key = AdminKey::parse(&s.key).map_err(|_| Refusal::BadSignature)?;
    let sig = decode_hex::<64>(&s.sig).ok_or(Refusal::BadSignature)?;
    let public = key.public().ok_or(Refusal::BadSignature)?;
    if !public.verify(&signed_bytes(d), &sig) {
        return Err(Refusal::BadSignature);
    }
    if !admins.is_empty() && !admins.contains(&key) {
        return Err(Refusal::UntrustedKey);
    }
    Ok(())
}

/// An admin's private key, loaded from its file.
pub struct AdminSecret(ed25519::Keypair);

impl AdminSecret {
    /// A new random key (`disruptor keygen --admin`).
    pub fn generate() -> AdminSecret {
        AdminSecret(ed25519::Keypair::generate())
    }

    /// Its public key: what peers list with `--admin`.
    pub fn public(&self) -> AdminKey {
        AdminKey(self.0.public().to_bytes())
    }

    /// The key file's text.
    pub fn to_file_text(&self) -> String {
        let secret = self.0.secret();
        format!("{KEY_FILE_HEADER}\n{}\n", encode_hex(secret.as_ref()))
    }

    /// Parses a key file's text.
    pub fn from_file_text(text: &str) -> Result<AdminSecret, String> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        if lines.next() != Some(KEY_FILE_HEADER) {
            return Err(
                "not an admin key file (make one with `disruptor keygen --admin --out FILE`)"
                    .into(),
            );
        }
        let mut bytes = lines
            .next()
            .and_then(decode_hex::<32>)
            .ok_or("the key line must be 64 hex digits")?;
        let secret = ed25519::SecretKey::try_from_bytes(&mut bytes)
            .map_err(|e| format!("not an Ed25519 secret key: {e}"))?;
        Ok(AdminSecret(ed25519::Keypair::from(secret)))
    }

    /// Reads a key file, refusing one that others may read.
    pub fn load(path: &Path) -> Result<AdminSecret, String> {
        let bytes = crate::secret_file::read_private_file(path).map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&bytes);
        AdminSecret::from_file_text(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Signs `d` in place: its origin becomes this key's short name, and
    /// the signature covers every field.
    pub fn sign(&self, d: &mut DesiredApp) {
        let key = self.public();
        d.origin = key.short();
        d.signed = None;
        let sig = self.0.sign(&signed_bytes(d));
        d.signed = Some(Signature {
            key: key.to_string(),
            sig: encode_hex(&sig),
        });
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Exactly `N` bytes from `2N` lowercase or uppercase hex digits.
fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let t = text.as_bytes();
    if t.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; N];
    for (i, pair) in t.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::AppName;
    use crate::deploy::BundleRef;

    fn decision() -> DesiredApp {
        DesiredApp {
            app: AppName::parse("apps/x").unwrap(),
            run: true,
            workers: Some(2),
            clock: 7,
            origin: String::new(),
            bundle: Some(BundleRef {
                hash: "a".repeat(64),
                size: 10,
            }),
            at_ms: 1_000,
            signed: None,
            peers: None,
            on: Default::default(),
        }
    }

    #[test]
    fn a_signed_decision_verifies_and_any_change_breaks_it() {
        let k = AdminSecret::generate();
        let admins = Admins::new([k.public()]);
        let mut d = decision();
        k.sign(&mut d);
        assert_eq!(check(&d, &admins), Ok(()));
        assert_eq!(check(&d, &Admins::default()), Ok(()));
        type Alter = fn(&mut DesiredApp);
        let alterations: [(&str, Alter); 11] = [
            ("app", |d| d.app = AppName::parse("apps/y").unwrap()),
            ("run", |d| d.run = false),
            ("workers", |d| d.workers = Some(3)),
            ("workers unset", |d| d.workers = None),
            ("bundle", |d| {
                d.bundle.as_mut().unwrap().hash = "b".repeat(64)
            }),
            ("size", |d| d.bundle.as_mut().unwrap().size = 11),
            ("clock", |d| d.clock += 1),
            ("origin", |d| d.origin.push('x')),
            ("at", |d| d.at_ms += 1),
            ("peers", |d| d.peers = Some(1)),
            ("on", |d| {
                d.on = crate::mesh::labels::Labels::parse_all(&["gpu"]).unwrap()
            }),
        ];
        for (what, alter) in alterations {
            let mut bad = d.clone();
            alter(&mut bad);
            assert_eq!(check(&bad, &admins), Err(Refusal::BadSignature), "{what}");
            // Altered is refused even by a peer without admins.
            assert_eq!(
                check(&bad, &Admins::default()),
                Err(Refusal::BadSignature),
                "{what}"
            );
        }
        let mut no_bundle = d.clone();
        no_bundle.bundle = None;
        assert_eq!(check(&no_bundle, &admins), Err(Refusal::BadSignature));
        // A placed decision: its placement is signed too.
        let mut placed = decision();
        placed.peers = Some(2);
        placed.on = crate::mesh::labels::Labels::parse_all(&["zone=eu"]).unwrap();
        k.sign(&mut placed);
        assert_eq!(check(&placed, &admins), Ok(()));
        for alter in [
            (|d: &mut DesiredApp| d.peers = Some(3)) as Alter,
            |d| d.peers = None,
            |d| d.on = crate::mesh::labels::Labels::parse_all(&["zone=us"]).unwrap(),
            |d| d.on = Default::default(),
        ] {
            let mut bad = placed.clone();
            alter(&mut bad);
            assert_eq!(check(&bad, &admins), Err(Refusal::BadSignature), "{bad:?}");
        }
    }

    #[test]
    fn unsigned_and_foreign_signed_decisions_are_refused_by_peers_with_admins() {
        let k1 = AdminSecret::generate();
        let k2 = AdminSecret::generate();
        let admins = Admins::new([k1.public()]);
        let d = decision();
        assert_eq!(check(&d, &admins), Err(Refusal::Unsigned));
        assert_eq!(check(&d, &Admins::default()), Ok(()));
        let mut foreign = decision();
        k2.sign(&mut foreign);
        assert_eq!(check(&foreign, &admins), Err(Refusal::UntrustedKey));
        // A valid signature moved onto another decision is not valid.
        let mut mine = decision();
        k1.sign(&mut mine);
        let mut other = decision();
        other.run = false;
        other.origin = mine.origin.clone();
        other.signed = mine.signed.clone();
        assert_eq!(check(&other, &admins), Err(Refusal::BadSignature));
        // Garbage in the signature fields.
        for (key, sig) in [
            ("ed25519:zz", "00"),
            (&k1.public().to_string()[..], "not hex"),
            (&k1.public().to_string()[..], &"0".repeat(128)[..]),
        ] {
            let mut g = mine.clone();
            g.signed = Some(Signature {
                key: key.to_string(),
                sig: sig.to_string(),
            });
            assert_eq!(
                check(&g, &admins),
                Err(Refusal::BadSignature),
                "{key} {sig}"
            );
        }
    }

    #[test]
    fn keys_round_trip_through_their_texts() {
        let k = AdminSecret::generate();
        let back = AdminSecret::from_file_text(&k.to_file_text()).unwrap();
        assert_eq!(back.public(), k.public());
        let text = k.public().to_string();
        assert!(
            text.starts_with("ed25519:") && text.len() == 8 + 64,
            "{text}"
        );
        assert_eq!(AdminKey::parse(&text).unwrap(), k.public());
        assert_eq!(AdminKey::parse(&text[8..]).unwrap(), k.public());
        assert!(AdminKey::parse("ed25519:1234").is_err());
        assert!(AdminSecret::from_file_text("hello\nabcd").is_err());
        let file = format!(
            "# ops team\n{text}  # alice\n\n{}\n",
            AdminSecret::generate().public()
        );
        assert_eq!(Admins::parse_file(&file).unwrap().len(), 2);
        let e = Admins::parse_file("# x\nnot-a-key\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
    }

    #[test]
    fn a_signature_fits_its_stated_bound() {
        let k = AdminSecret::generate();
        let mut d = decision();
        k.sign(&mut d);
        let s = d.signed.unwrap();
        assert!(s.key.len() + s.sig.len() <= Signature::MAX_TEXT);
    }
}
