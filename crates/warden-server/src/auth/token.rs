//! API tokens: `wdn_<id>_<secret>`. The id (16 hex digits) names the token in lists, audit
//! entries and `revoke`; the secret (32 random bytes, base64url) is what proves it. The store
//! keeps the SHA-256 of the whole token, never the token: a stolen database grants nothing.

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "wdn_";
const ID_LEN: usize = 16;
/// 32 bytes in unpadded base64url.
const SECRET_LEN: usize = 43;

/// A freshly minted token: shown to its owner once, then only its hash is kept.
pub struct Minted {
    pub id: String,
    pub token: String,
    pub hash: Vec<u8>,
}

pub fn mint() -> std::io::Result<Minted> {
    let mut id = [0u8; ID_LEN / 2];
    let mut secret = [0u8; 32];
    getrandom::fill(&mut id).map_err(std::io::Error::other)?;
    getrandom::fill(&mut secret).map_err(std::io::Error::other)?;
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let token = format!("{PREFIX}{id}_{secret}");
    Ok(Minted {
        hash: hash(&token),
        id,
        token,
    })
}

pub fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The id of a well-formed token; `None` for anything else (the caller answers 401).
pub fn id_of(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_at_checked(ID_LEN)?;
    let secret = secret.strip_prefix('_')?;
    let hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
    let b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
    (id.bytes().all(hex) && secret.len() == SECRET_LEN && secret.bytes().all(b64)).then_some(id)
}

/// Whether `token` hashes to `stored`, in time independent of where they differ.
pub fn matches(token: &str, stored: &[u8]) -> bool {
    hash(token).ct_eq(stored).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_parse_match_and_differ() {
        let a = mint().unwrap();
        let b = mint().unwrap();
        assert_ne!(a.token, b.token);
        assert_eq!(id_of(&a.token), Some(a.id.as_str()));
        assert!(matches(&a.token, &a.hash));
        assert!(!matches(&b.token, &a.hash));
        assert_eq!(a.token.len(), 4 + 16 + 1 + 43);
    }

    #[test]
    fn malformed_tokens_have_no_id() {
        let good = mint().unwrap().token;
        let cases = [
            "".to_string(),
            "wdn_".to_string(),
            good.replacen("wdn_", "wdx_", 1),
            good[..good.len() - 1].to_string(),
            format!("{good}A"),
            good.replacen('_', "-", 2),
            good.to_uppercase(),
            format!("{} ", good),
            "wdn_0123456789abcdef_".to_string() + &"!".repeat(43),
            "wdn_0123456789abcdé_".to_string() + &"a".repeat(43),
        ];
        for c in cases {
            assert_eq!(id_of(&c), None, "{c:?}");
        }
        // Garbage of every shape: never a panic, never an id that is not 16 hex digits.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 80) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| {
                    let b = (x >> (i % 56)) as u8;
                    if i < 4 {
                        b"wdn_"[i]
                    } else if i == 20 {
                        b'_'
                    } else {
                        b
                    }
                })
                .collect();
            let text = String::from_utf8_lossy(&bytes);
            if let Some(id) = id_of(&text) {
                assert!(id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()));
            }
        }
    }
}
