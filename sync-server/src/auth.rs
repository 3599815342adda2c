//! Account tokens: `<account id hex>.<secret hex>`, 16 + 32 random bytes. The server stores
//! only SHA-256 of the secret and compares in constant time; the account id part only selects
//! the row.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use sync_core::{Error, ErrorKind, Result};

use crate::store::{AccountId, ServerStore};

/// A freshly issued token and the account it opens.
pub struct Issued {
    /// The new account.
    pub account: AccountId,
    /// The bearer token, shown to the client once.
    pub token: String,
    /// What the server stores.
    pub hash: [u8; 32],
}

pub(crate) fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|_| {
        Error::new(
            ErrorKind::Unavailable,
            "the operating system's random generator failed",
        )
        .temporary()
    })?;
    Ok(b)
}

fn hash(secret: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"hearth.token.v1\0");
    h.update(secret);
    h.finalize().into()
}

/// Makes a new account id and token.
pub fn issue() -> Result<Issued> {
    let account = AccountId(random::<16>()?);
    let secret = random::<32>()?;
    Ok(Issued {
        account,
        token: format!("{}.{}", account.to_hex(), hex::encode(secret)),
        hash: hash(&secret),
    })
}

fn unauthorized() -> Error {
    Error::new(
        ErrorKind::Unauthorized,
        "missing, malformed or unknown account token",
    )
}

/// The account a bearer token opens, or [`ErrorKind::Unauthorized`].
pub async fn verify(store: &dyn ServerStore, token: &str) -> Result<AccountId> {
    let (id, secret) = token.split_once('.').ok_or_else(unauthorized)?;
    let account = AccountId::from_hex(id).map_err(|_| unauthorized())?;
    let mut raw = [0u8; 32];
    hex::decode_to_slice(secret, &mut raw).map_err(|_| unauthorized())?;
    let presented = hash(&raw);
    // An unknown account is compared against a fixed hash so both paths do the same work.
    let stored = store.token_hash(account).await?;
    let known = stored.is_some();
    let expected = stored.unwrap_or([0u8; 32]);
    if bool::from(presented.ct_eq(&expected)) && known {
        Ok(account)
    } else {
        Err(unauthorized())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hash_to_what_is_stored() {
        let a = issue().expect("issue");
        let b = issue().expect("issue");
        assert_ne!(a.token, b.token);
        assert_ne!(a.account, b.account);
        let (_, secret) = a.token.split_once('.').expect("two parts");
        let raw = hex::decode(secret).expect("hex");
        assert_eq!(hash(&raw), a.hash);
        assert!(!a.token.contains(&hex::encode(a.hash)));
    }
}
