//! Cache keys: SHA-256 over length-prefixed fields under a domain label, so
//! that no two different input lists hash alike. Asset names use the first 16
//! hex digits.

use sha2::{Digest, Sha256};

/// Hex digits of a key used in file names.
const SHORT: usize = 16;

/// Builds a key from a label and fields.
pub(crate) struct Hasher(Sha256);

impl Hasher {
    pub(crate) fn new(label: &str) -> Self {
        Hasher(Sha256::new()).field("petty-image").field(label)
    }

    pub(crate) fn field(mut self, value: &str) -> Self {
        self.0.update((value.len() as u64).to_le_bytes());
        self.0.update(value.as_bytes());
        self
    }

    /// The full key as lowercase hex.
    pub(crate) fn hex(self) -> String {
        hex(&self.0.finalize())
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The part of a key used in file names.
pub(crate) fn short(key: &str) -> &str {
    &key[..SHORT.min(key.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_delimited() {
        let ab_c = Hasher::new("t").field("ab").field("c").hex();
        let a_bc = Hasher::new("t").field("a").field("bc").hex();
        assert_ne!(ab_c, a_bc);
        assert_ne!(
            Hasher::new("t").field("x").hex(),
            Hasher::new("u").field("x").hex()
        );
        assert_eq!(ab_c.len(), 64);
        assert_eq!(short(&ab_c).len(), 16);
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0x00, 0xab, 0x0f]), "00ab0f");
    }
}
