//! Small, audited building blocks over well-kept crates: random tokens, SHA-256 digests, and
//! authenticated encryption of secrets at rest with the master key.

use crate::base::random::SecureRandom;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// 32 bytes of key material, wiped on drop, never printed.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl MasterKey {
    /// A key from raw bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        MasterKey(Zeroizing::new(b))
    }

    /// A key from bytes already held for wiping.
    pub fn from_zeroizing(b: Zeroizing<[u8; 32]>) -> Self {
        MasterKey(b)
    }

    /// The key bytes.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// A 256-bit key for one purpose, derived from the master key with HKDF-SHA-256, so no two
/// purposes ever share key material.
pub fn derive_key(master: &MasterKey, purpose: &str) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    let hk = hkdf::Hkdf::<Sha256>::new(Some(b"portcullis-v1"), master.expose());
    // 32 bytes is far below HKDF-SHA-256's output limit.
    let _ = hk.expand(purpose.as_bytes(), out.as_mut());
    out
}

/// HMAC-SHA-256 of `data` under `key`.
pub fn hmac_sha256(key: &[u8; 32], data: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    // HMAC accepts keys of any length, so this never takes the `else`.
    let Ok(mut mac) = <hmac::Hmac<Sha256> as Mac>::new_from_slice(key) else {
        return [0u8; 32];
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// A fresh 256-bit random token, base64url without padding (43 characters), behind `prefix`.
pub fn random_token(rng: &dyn SecureRandom, prefix: &str) -> Zeroizing<String> {
    let mut b = Zeroizing::new([0u8; 32]);
    rng.fill(b.as_mut());
    Zeroizing::new(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(b.as_ref())))
}

/// A fresh random id: 128 bits, lower-case hex (32 characters).
pub fn random_id(rng: &dyn SecureRandom) -> String {
    let mut b = [0u8; 16];
    rng.fill(&mut b);
    hex::encode(b)
}

/// Encrypts and decrypts secrets at rest with XChaCha20-Poly1305 under the master key. The
/// associated data names what the ciphertext is (e.g. `signing-key:<kid>`), so a ciphertext
/// copied into another record does not decrypt there.
pub struct Sealer {
    aead: XChaCha20Poly1305,
}

/// A ciphertext that did not authenticate.
#[derive(Debug, thiserror::Error)]
#[error("sealed data does not authenticate (wrong master key or tampered record)")]
pub struct Unsealed;

impl Sealer {
    /// A sealer under the master key.
    pub fn new(key: &MasterKey) -> Self {
        Sealer {
            aead: XChaCha20Poly1305::new(key.expose().into()),
        }
    }

    /// `nonce (24 bytes) ++ ciphertext+tag`.
    pub fn seal(&self, rng: &dyn SecureRandom, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        rng.fill(&mut nonce);
        let payload = Payload {
            msg: plaintext,
            aad,
        };
        // Encryption into a Vec fails only on absurd lengths (> 256 GiB).
        let ct = self
            .aead
            .encrypt(XNonce::from_slice(&nonce), payload)
            .unwrap_or_default();
        let mut out = Vec::with_capacity(24 + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Reverses [`Sealer::seal`].
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, Unsealed> {
        if sealed.len() < 24 + 16 {
            return Err(Unsealed);
        }
        let (nonce, ct) = sealed.split_at(24);
        self.aead
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
            .map(Zeroizing::new)
            .map_err(|_| Unsealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::random::OsRandom;

    #[test]
    fn sealed_data_opens_only_with_the_same_key_and_purpose() {
        let k = MasterKey::from_bytes([7u8; 32]);
        let s = Sealer::new(&k);
        let sealed = s.seal(&OsRandom, b"purpose-a", b"secret bytes");
        assert!(!sealed.windows(12).any(|w| w == b"secret bytes"));
        assert_eq!(
            s.open(b"purpose-a", &sealed).unwrap().as_slice(),
            b"secret bytes"
        );
        assert!(s.open(b"purpose-b", &sealed).is_err());
        let other = Sealer::new(&MasterKey::from_bytes([8u8; 32]));
        assert!(other.open(b"purpose-a", &sealed).is_err());
        let mut flipped = sealed.clone();
        flipped[30] ^= 1;
        assert!(s.open(b"purpose-a", &flipped).is_err());
        assert!(s.open(b"purpose-a", &sealed[..20]).is_err());
    }

    #[test]
    fn derived_keys_differ_by_purpose_and_hmac_matches_rfc_4231() {
        let k = MasterKey::from_bytes([3u8; 32]);
        assert_ne!(*derive_key(&k, "a"), *derive_key(&k, "b"));
        assert_eq!(*derive_key(&k, "a"), *derive_key(&k, "a"));
        // RFC 4231 test case 2 uses a 4-byte key; check ours through a 32-byte key against an
        // independent computation: HMAC(K, m) = H((K ^ opad) || H((K ^ ipad) || m)).
        let key = [0x0bu8; 32];
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for i in 0..32 {
            ipad[i] ^= key[i];
            opad[i] ^= key[i];
        }
        let inner = sha256(&[&ipad[..], b"Hi There"].concat());
        let expected = sha256(&[&opad[..], &inner[..]].concat());
        assert_eq!(hmac_sha256(&key, b"Hi There"), expected);
    }

    #[test]
    fn tokens_and_ids_are_fresh_and_well_formed() {
        let a = random_token(&OsRandom, "rt_");
        let b = random_token(&OsRandom, "rt_");
        assert_ne!(*a, *b);
        assert_eq!(a.len(), 3 + 43);
        assert_eq!(random_id(&OsRandom).len(), 32);
    }
}
