//! The only place this crate calls into C: a small safe wrapper over the libsodium functions
//! hearth uses, through `libsodium-sys-stable`.
//!
//! Every function here takes Rust slices and fixed-size arrays, checks lengths before the call,
//! and turns libsodium's return codes into [`Error`]s. Every `unsafe` block states the invariant
//! that makes it sound. Review this module, not the callers: nothing outside it is `unsafe`.
//!
//! libsodium is thread-safe after `sodium_init()` has returned successfully once; [`init`] runs
//! it exactly once per process and every other function here calls [`init`] first.

// The workspace denies `unsafe_code`; FFI cannot be written without it. It is allowed in this
// module only, and each block below carries a `SAFETY:` comment.
#![allow(unsafe_code)]
// And clippy holds every `unsafe` block to having one.
#![deny(clippy::undocumented_unsafe_blocks)]

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use libsodium_sys as ffi;
use sync_core::cipher::{HASH_LEN, KEY_LEN, NONCE_LEN, SALT_LEN, TAG_LEN};
use sync_core::{Error, ErrorKind, Result};

/// Runs `sodium_init()` once per process. Later calls return the first call's outcome.
///
/// A failure (libsodium could not find a random source) is a permanent
/// [`ErrorKind::Unavailable`] error, never a panic.
pub(crate) fn init() -> Result<()> {
    static INIT: OnceLock<bool> = OnceLock::new();
    // SAFETY: `sodium_init` takes no arguments, may be called from any thread, and is
    // idempotent (libsodium guards it with its own lock); it returns 0 on the first success,
    // 1 when already initialised and -1 on failure.
    let ok = *INIT.get_or_init(|| unsafe { ffi::sodium_init() } >= 0);
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Unavailable,
            "libsodium failed to initialise (no usable random source)",
        )
        .permanent())
    }
}

/// `crypto_aead_xchacha20poly1305_ietf_encrypt`, combined mode: returns `ciphertext || tag`.
pub(crate) fn aead_seal(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    init()?;
    // SAFETY: a pure function of no arguments returning a constant.
    let max = unsafe { ffi::crypto_aead_xchacha20poly1305_ietf_messagebytes_max() };
    if plaintext.len() > max {
        return Err(Error::invalid("plaintext too large to seal"));
    }
    let out_len = plaintext
        .len()
        .checked_add(TAG_LEN)
        .ok_or_else(|| Error::invalid("plaintext too large to seal"))?;
    let mut out = vec![0u8; out_len];
    let mut written: u64 = 0;
    // SAFETY: `out` has room for `plaintext.len() + ABYTES` bytes, which is what combined-mode
    // encryption writes; `plaintext` and `aad` are valid for the lengths passed (a `usize`
    // always fits in `u64`); `nonce` is NPUBBYTES (24) and `key` KEYBYTES (32) long by type;
    // `nsec` is unused by this construction and must be null. Input and output do not overlap.
    let rc = unsafe {
        ffi::crypto_aead_xchacha20poly1305_ietf_encrypt(
            out.as_mut_ptr(),
            &mut written,
            plaintext.as_ptr(),
            plaintext.len() as u64,
            aad.as_ptr(),
            aad.len() as u64,
            std::ptr::null(),
            nonce.as_ptr(),
            key.as_ptr(),
        )
    };
    if rc != 0 || written != out_len as u64 {
        return Err(Error::internal("libsodium AEAD encryption failed"));
    }
    Ok(out)
}

/// `crypto_aead_xchacha20poly1305_ietf_decrypt`, combined mode. A failed verification is
/// [`ErrorKind::Tampered`], with no detail; input shorter than a tag is [`ErrorKind::Corrupt`].
pub(crate) fn aead_open(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>> {
    init()?;
    let Some(plain_len) = ciphertext.len().checked_sub(TAG_LEN) else {
        return Err(Error::corrupt("ciphertext is shorter than its tag"));
    };
    let mut out = vec![0u8; plain_len];
    let mut written: u64 = 0;
    // SAFETY: `out` has room for `ciphertext.len() - ABYTES` bytes, the most decryption writes;
    // `ciphertext` and `aad` are valid for the lengths passed; `nonce` and `key` have the sizes
    // libsodium reads by type; `nsec` is unused and null. On failure libsodium writes nothing
    // we return: `out` is dropped.
    let rc = unsafe {
        ffi::crypto_aead_xchacha20poly1305_ietf_decrypt(
            out.as_mut_ptr(),
            &mut written,
            std::ptr::null_mut(),
            ciphertext.as_ptr(),
            ciphertext.len() as u64,
            aad.as_ptr(),
            aad.len() as u64,
            nonce.as_ptr(),
            key.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(Error::tampered());
    }
    if written != plain_len as u64 {
        return Err(Error::internal("libsodium AEAD decryption length"));
    }
    Ok(out)
}

/// `crypto_pwhash` with `ALG_ARGON2ID13`: Argon2id v1.3, one lane, into `out`.
///
/// `opslimit` is the number of passes, `memlimit` the memory in bytes.
pub(crate) fn argon2id(
    out: &mut [u8; KEY_LEN],
    passphrase: &[u8],
    salt: &[u8; SALT_LEN],
    opslimit: u64,
    memlimit: usize,
) -> Result<()> {
    init()?;
    // SAFETY: a pure function of no arguments returning a constant.
    let passwd_max = unsafe { ffi::crypto_pwhash_passwd_max() };
    if passphrase.len() > passwd_max {
        return Err(Error::invalid("passphrase too long for Argon2id"));
    }
    if opslimit < u64::from(ffi::crypto_pwhash_argon2id_OPSLIMIT_MIN)
        || memlimit < ffi::crypto_pwhash_argon2id_MEMLIMIT_MIN as usize
    {
        return Err(Error::invalid("Argon2id cost below libsodium's minimum"));
    }
    // SAFETY: `out` is 32 writable bytes and we pass 32; `passphrase` is valid for its length
    // (libsodium reads it as bytes, it need not be NUL-terminated); `salt` is SALTBYTES (16)
    // long by type; the limits were checked against libsodium's minimums above, and the
    // algorithm id is the constant libsodium defines for Argon2id v1.3.
    let rc = unsafe {
        ffi::crypto_pwhash(
            out.as_mut_ptr(),
            out.len() as u64,
            passphrase.as_ptr().cast(),
            passphrase.len() as u64,
            salt.as_ptr(),
            opslimit,
            memlimit,
            ffi::crypto_pwhash_ALG_ARGON2ID13 as i32,
        )
    };
    if rc != 0 {
        // With lengths and limits checked, libsodium fails only when it cannot allocate the
        // memory the cost asks for.
        return Err(Error::new(
            ErrorKind::Unavailable,
            "Argon2id could not allocate the memory its cost asks for",
        ));
    }
    Ok(())
}

/// Keyed BLAKE2b with a 32-byte key and 32-byte output over the concatenation of `parts`,
/// through `crypto_generichash_init/update/final`.
pub(crate) fn keyed_blake2b(key: &[u8; KEY_LEN], parts: &[&[u8]]) -> Result<[u8; HASH_LEN]> {
    init()?;
    let mut state = MaybeUninit::<ffi::crypto_generichash_state>::uninit();
    // SAFETY: `state` is a properly sized and aligned (the bindings carry libsodium's 64-byte
    // alignment) place that `init` fully initialises; `key` is 32 bytes and the key and output
    // lengths (32) are within libsodium's BLAKE2b bounds (16..=64 and 1..=64 bytes).
    let rc = unsafe {
        ffi::crypto_generichash_init(state.as_mut_ptr(), key.as_ptr(), KEY_LEN, HASH_LEN)
    };
    if rc != 0 {
        return Err(Error::internal("libsodium BLAKE2b init failed"));
    }
    let mut failed = false;
    for part in parts {
        // SAFETY: `state` was initialised by the successful `init` above; `part` is valid for
        // its length, which fits in `u64`.
        let rc = unsafe {
            ffi::crypto_generichash_update(state.as_mut_ptr(), part.as_ptr(), part.len() as u64)
        };
        failed |= rc != 0;
    }
    let mut out = [0u8; HASH_LEN];
    // SAFETY: `state` is initialised; `out` is the 32 bytes the state was set up to produce.
    let rc =
        unsafe { ffi::crypto_generichash_final(state.as_mut_ptr(), out.as_mut_ptr(), HASH_LEN) };
    // SAFETY: `state` is a live, exclusively borrowed place of exactly
    // `size_of::<crypto_generichash_state>()` bytes; wiping it removes key-derived material.
    unsafe {
        ffi::sodium_memzero(
            state.as_mut_ptr().cast(),
            std::mem::size_of::<ffi::crypto_generichash_state>(),
        )
    };
    if failed || rc != 0 {
        return Err(Error::internal("libsodium BLAKE2b failed"));
    }
    Ok(out)
}

/// Fills `buf` from libsodium's CSPRNG (the operating system's, on every platform we target).
pub(crate) fn random(buf: &mut [u8]) -> Result<()> {
    init()?;
    if buf.is_empty() {
        return Ok(());
    }
    // SAFETY: `buf` is valid for writes of its whole length; `randombytes_buf` cannot fail
    // once `sodium_init` has succeeded (it aborts the process rather than return short).
    unsafe { ffi::randombytes_buf(buf.as_mut_ptr().cast(), buf.len()) };
    Ok(())
}

/// `crypto_scalarmult_base`: the X25519 public key of `secret` (clamped by libsodium).
pub(crate) fn x25519_base(out: &mut [u8; 32], secret: &[u8; 32]) -> Result<()> {
    init()?;
    // SAFETY: both pointers refer to 32-byte arrays (crypto_scalarmult_BYTES and
    // SCALARBYTES are both 32), distinct by the borrow rules.
    let rc = unsafe { ffi::crypto_scalarmult_base(out.as_mut_ptr(), secret.as_ptr()) };
    if rc != 0 {
        return Err(Error::invalid("X25519 secret key rejected"));
    }
    Ok(())
}

/// `crypto_scalarmult`: X25519 of `secret` and `public`. libsodium returns non-zero when the
/// result is all zeros, i.e. `public` is a point of low order: [`ErrorKind::InvalidInput`].
pub(crate) fn x25519(out: &mut [u8; 32], secret: &[u8; 32], public: &[u8; 32]) -> Result<()> {
    init()?;
    // SAFETY: all three pointers refer to 32-byte arrays, the sizes libsodium reads and writes;
    // `out` is exclusively borrowed, so it overlaps neither input.
    let rc = unsafe { ffi::crypto_scalarmult(out.as_mut_ptr(), secret.as_ptr(), public.as_ptr()) };
    if rc != 0 {
        return Err(Error::invalid("X25519 public key is of low order"));
    }
    Ok(())
}
