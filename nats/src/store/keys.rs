//! API keys, one record per key under its id, holding the sha256 of the secret (never the
//! secret). A secret reads `blk-<id>-<48 hex>`: the id names the record, the rest is 192
//! random bits; the whole secret is hashed and compared in constant time.
//!
//! [`KeyWatch`] mirrors the bucket in memory with one watch, so checking a request costs
//! no round trip and a revoked key is refused on every gateway as soon as the change
//! reaches it; a key not yet seen (created a moment ago elsewhere) is read from the bucket.

use bitinglip_bus_schema::{ApiKey, KeyLimits, Scope};
use rand::Rng;
use sha2::{Digest, Sha256};

use super::{Bucket, Mirror, Step, Store, StoreError};
use crate::now_ms;

const PREFIX: &str = "blk-";

/// The API keys.
pub struct Keys<'a> {
    bucket: &'a Bucket,
}

impl Store {
    /// The API keys.
    pub fn keys(&self) -> Keys<'_> {
        Keys { bucket: &self.inner.keys }
    }
}

/// sha256 (hex) of `secret`.
pub fn hash_secret(secret: &str) -> String {
    // Hex by table: it runs on every authenticated request.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in Sha256::digest(secret.as_bytes()) {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
}

/// Equal in time that does not depend on where two strings first differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// True when `id` has the shape of a key id (16 hex digits): anything else names no key,
/// and never reaches the bucket as a key.
fn is_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The key id a secret names, when it has the shape of one.
pub fn id_of(secret: &str) -> Option<&str> {
    let rest = secret.strip_prefix(PREFIX)?;
    let (id, tail) = rest.split_once('-')?;
    (id.len() == 16 && tail.len() == 48 && id.bytes().chain(tail.bytes()).all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// What to create: everything of a key but its id, secret and times.
#[derive(Debug, Clone, PartialEq)]
pub struct NewKey {
    /// A name for people.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// The models it may use; empty: every model.
    pub models: Vec<String>,
    /// When it stops working, ms since the epoch.
    pub expires_ms: Option<u64>,
    /// Its limits.
    pub limits: KeyLimits,
    /// Its tenant (absent: its own).
    pub tenant: Option<String>,
    /// Its tenant's weight (absent: 1).
    pub weight: Option<u32>,
}

impl Keys<'_> {
    /// Creates a key; returns its record and its secret (shown once, stored nowhere).
    pub async fn create(&self, new: NewKey) -> Result<(ApiKey, String), StoreError> {
        // The generator is not Send: it must not live across the write below.
        let (id, tail) = {
            let mut rng = rand::rng();
            let hex = |n: usize, rng: &mut rand::rngs::ThreadRng| -> String {
                (0..n).map(|_| format!("{:02x}", rng.random::<u8>())).collect()
            };
            (hex(8, &mut rng), hex(24, &mut rng))
        };
        let secret = format!("{PREFIX}{id}-{tail}");
        let key = ApiKey {
            id: id.clone(),
            name: new.name,
            scope: new.scope,
            models: new.models,
            expires_ms: new.expires_ms,
            secret_sha256: hash_secret(&secret),
            created_ms: now_ms(),
            revoked_ms: None,
            limits: new.limits,
            tenant: new.tenant,
            weight: new.weight,
        };
        self.bucket.create(&id, &key).await?;
        Ok((key, secret))
    }

    /// One key's record.
    pub async fn get(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        if !is_id(id) {
            return Ok(None);
        }
        self.bucket.get(id).await
    }

    /// Every key, oldest first.
    pub async fn list(&self) -> Result<Vec<ApiKey>, StoreError> {
        let mut keys: Vec<ApiKey> = self.bucket.scan(|_| true).await?.into_values().collect();
        keys.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
        Ok(keys)
    }

    /// Revokes a key (the record stays, marked); `None` when there is no such key.
    pub async fn revoke(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        if !is_id(id) {
            return Ok(None);
        }
        let now = now_ms();
        let (revoked, _) = self
            .bucket
            .modify(id, |current: Option<ApiKey>| {
                Ok(match current {
                    None => Step::Done(None),
                    Some(k) if k.revoked_ms.is_some() => Step::Done(Some(k)),
                    Some(mut k) => {
                        k.revoked_ms = Some(now);
                        Step::Write(k.clone(), Some(k))
                    }
                })
            })
            .await?;
        Ok(revoked)
    }
}

/// The API keys as last seen, kept current by one watch.
#[derive(Clone)]
pub struct KeyWatch {
    keys: Mirror<ApiKey>,
    store: Store,
    /// Ids the bucket did not have a moment ago: a flood of made-up ids costs one read
    /// each per [`ABSENT_FOR_MS`], not one per request.
    absent: std::sync::Arc<std::sync::Mutex<Absent>>,
}

/// How long an id the bucket did not have is taken as unknown without asking again.
pub const ABSENT_FOR_MS: u64 = 2_000;
/// Ids remembered as unknown at the most (one entry is an id of 16 hex digits).
const ABSENT_MAX: usize = 8_192;

/// Key ids recently found absent from the bucket (pure: time is passed in).
#[derive(Debug, Default)]
pub struct Absent {
    since: std::collections::HashMap<String, u64>,
}

impl Absent {
    /// Whether `id` was found absent within [`ABSENT_FOR_MS`] of `now`.
    pub fn recently(&self, id: &str, now: u64) -> bool {
        self.since.get(id).is_some_and(|at| now.saturating_sub(*at) < ABSENT_FOR_MS)
    }

    /// Remembers that the bucket did not have `id` at `now`. At [`ABSENT_MAX`] entries the
    /// stale ones go, and if none is stale, all do: the memory stays bounded.
    pub fn remember(&mut self, id: &str, now: u64) {
        if self.since.len() >= ABSENT_MAX {
            self.since.retain(|_, at| now.saturating_sub(*at) < ABSENT_FOR_MS);
            if self.since.len() >= ABSENT_MAX {
                self.since.clear();
            }
        }
        self.since.insert(id.to_string(), now);
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.since.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.since.is_empty()
    }
}

impl Store {
    /// Starts the watch on the API keys.
    pub fn watch_keys(&self) -> KeyWatch {
        KeyWatch { keys: Mirror::start(self.inner.keys.clone()), store: self.clone(), absent: Default::default() }
    }
}

/// Why a secret is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No key has this secret.
    #[error("the API key is not valid")]
    Unknown,
    /// The key was revoked.
    #[error("the API key was revoked")]
    Revoked,
    /// The key expired.
    #[error("the API key expired")]
    Expired,
}

/// The outcome of checking a secret against a key record (pure).
pub fn check(secret: &str, key: Option<&ApiKey>, now: u64) -> Result<ApiKey, Refused> {
    let key = key.filter(|k| same(&k.secret_sha256, &hash_secret(secret))).ok_or(Refused::Unknown)?;
    if key.revoked_ms.is_some() {
        return Err(Refused::Revoked);
    }
    if key.expires_ms.is_some_and(|at| now >= at) {
        return Err(Refused::Expired);
    }
    Ok(key.clone())
}

impl KeyWatch {
    /// The key with id `id` as last seen (read from the bucket when not mirrored yet).
    pub async fn get(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        match self.keys.get(id) {
            Some(k) => Ok(Some(k)),
            None => self.store.keys().get(id).await,
        }
    }

    /// The key a secret belongs to, when it is valid now. A store that cannot be read
    /// for a key not seen yet is an outage, not a refusal.
    pub async fn authenticate(&self, secret: &str) -> Result<Result<ApiKey, Refused>, StoreError> {
        let Some(id) = id_of(secret) else { return Ok(Err(Refused::Unknown)) };
        let now = now_ms();
        let key = match self.keys.get(id) {
            Some(k) => Some(k),
            // Not mirrored (yet): a key created a moment ago, or a made-up id. Ask the
            // bucket, unless it said no a moment ago.
            None if self.absent.lock().is_ok_and(|a| a.recently(id, now)) => None,
            None => {
                let read = self.store.keys().get(id).await?;
                if read.is_none() {
                    if let Ok(mut a) = self.absent.lock() {
                        a.remember(id, now);
                    }
                }
                read
            }
        };
        Ok(check(secret, key.as_ref(), now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_hashes_to_its_sha256_in_lowercase_hex() {
        assert_eq!(hash_secret("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    fn key(secret: &str) -> ApiKey {
        ApiKey {
            id: "0123456789abcdef".into(),
            name: "t".into(),
            scope: Scope::Inference,
            models: vec![],
            expires_ms: Some(100),
            secret_sha256: hash_secret(secret),
            created_ms: 1,
            revoked_ms: None,
            limits: KeyLimits::default(),
            tenant: None,
            weight: None,
        }
    }

    #[test]
    fn a_secret_names_its_key_and_only_the_whole_secret_matches() {
        let secret = format!("blk-0123456789abcdef-{}", "ab".repeat(24));
        assert_eq!(id_of(&secret), Some("0123456789abcdef"));
        assert_eq!(id_of("sk-whatever"), None);
        assert_eq!(id_of("blk-0123456789abcdef-short"), None);
        let k = key(&secret);
        assert_eq!(check(&secret, Some(&k), 50).unwrap().id, k.id);
        let other = format!("blk-0123456789abcdef-{}", "cd".repeat(24));
        assert_eq!(check(&other, Some(&k), 50), Err(Refused::Unknown));
        assert_eq!(check(&secret, None, 50), Err(Refused::Unknown));
    }

    #[test]
    fn an_absent_id_is_remembered_for_a_moment_and_memory_stays_bounded() {
        let mut a = Absent::default();
        assert!(!a.recently("x", 1_000));
        a.remember("x", 1_000);
        assert!(a.recently("x", 1_000 + ABSENT_FOR_MS - 1));
        assert!(!a.recently("x", 1_000 + ABSENT_FOR_MS), "then the bucket is asked again");
        for i in 0..ABSENT_MAX + 10 {
            a.remember(&format!("{i:016x}"), 5_000);
        }
        assert!(a.len() <= ABSENT_MAX, "{}", a.len());
    }

    #[test]
    fn revoked_and_expired_keys_are_refused() {
        let secret = format!("blk-0123456789abcdef-{}", "ab".repeat(24));
        assert_eq!(check(&secret, Some(&key(&secret)), 100), Err(Refused::Expired));
        let revoked = ApiKey { revoked_ms: Some(3), ..key(&secret) };
        assert_eq!(check(&secret, Some(&revoked), 50), Err(Refused::Revoked));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
        assert!(is_id("0123456789abcdef") && !is_id("a b") && !is_id(".x") && !is_id("0123456789abcdeg"));
    }
}
