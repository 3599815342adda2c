//! The one error type of hearth.
//!
//! Every fallible call returns [`Error`]: a [`ErrorKind`] callers can match on, a
//! [`Status`] that tells the retry layer whether trying again can help, a short message, and
//! optionally the underlying cause. Messages never contain plaintext user data, record keys,
//! passphrases or key material: they name what failed, not what was in it.

use std::borrow::Cow;
use std::fmt;

/// What went wrong, at the level a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The thing asked for does not exist (a store file, a record, a registry name).
    NotFound,
    /// The passphrase (or recovery code) does not unlock the store's key header.
    WrongPassphrase,
    /// Data was sealed under a key this store does not hold (another space, a rotated key).
    WrongKey,
    /// Authentication failed: the ciphertext, its header or its associated data was altered,
    /// or it was sealed for another record or space. Deliberately says nothing more.
    Tampered,
    /// Bytes are not in a format we wrote: truncated, garbled, or not a hearth store at all.
    Corrupt,
    /// A format or protocol version this build does not understand.
    Unsupported,
    /// The caller passed something invalid (empty collection name, bad JSON, bad parameter).
    InvalidInput,
    /// A name (storage, cipher, strategy) is known but its crate is not compiled in.
    NotCompiledIn,
    /// Configuration is inconsistent: a duplicate registry name, a store opened with a storage
    /// or cipher other than the one that made it.
    Config,
    /// A version conflict that must be resolved before the operation can proceed.
    Conflict,
    /// The user has not consented to this use of their data.
    ConsentDenied,
    /// A service or resource is not reachable now (network, locked database). Usually temporary.
    Unavailable,
    /// The file system refused: permissions, read-only media, a missing directory.
    Io,
    /// The disk (or quota) is full. Nothing was written.
    StorageFull,
    /// The storage engine failed in a way not covered above.
    Storage,
    /// The server dropped history this device has not seen (it was silent longer than the
    /// tombstone horizon): the device must re-sync from scratch.
    ResyncRequired,
    /// A bug in hearth: an invariant did not hold.
    Internal,
    /// The server did not accept the credentials (a missing, malformed or unknown account
    /// token).
    Unauthorized,
    /// The credentials are valid but do not reach this resource (another account's space).
    Forbidden,
    /// A request or value is larger than the other side accepts.
    TooLarge,
}

impl ErrorKind {
    /// A short, stable, lower-case name, suitable for logs and machine-readable output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::WrongPassphrase => "wrong_passphrase",
            Self::WrongKey => "wrong_key",
            Self::Tampered => "tampered",
            Self::Corrupt => "corrupt",
            Self::Unsupported => "unsupported",
            Self::InvalidInput => "invalid_input",
            Self::NotCompiledIn => "not_compiled_in",
            Self::Config => "config",
            Self::Conflict => "conflict",
            Self::ConsentDenied => "consent_denied",
            Self::Unavailable => "unavailable",
            Self::Io => "io",
            Self::StorageFull => "storage_full",
            Self::Storage => "storage",
            Self::ResyncRequired => "resync_required",
            Self::Internal => "internal",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::TooLarge => "too_large",
        }
    }
}

impl ErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: &'static [ErrorKind] = &[
        Self::NotFound,
        Self::WrongPassphrase,
        Self::WrongKey,
        Self::Tampered,
        Self::Corrupt,
        Self::Unsupported,
        Self::InvalidInput,
        Self::NotCompiledIn,
        Self::Config,
        Self::Conflict,
        Self::ConsentDenied,
        Self::Unavailable,
        Self::Io,
        Self::StorageFull,
        Self::Storage,
        Self::ResyncRequired,
        Self::Internal,
        Self::Unauthorized,
        Self::Forbidden,
        Self::TooLarge,
    ];

    /// The kind whose [`ErrorKind::as_str`] is `name` (for errors that crossed a wire).
    pub fn parse(name: &str) -> Option<ErrorKind> {
        Self::ALL.iter().copied().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether retrying the same operation later can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Retrying will fail the same way until something else changes.
    Permanent,
    /// Retrying later may succeed (a dropped connection, a busy database).
    Temporary,
}

/// hearth's error: a kind, a retry status, a message free of user data, and an optional cause.
pub struct Error {
    kind: ErrorKind,
    status: Status,
    message: Cow<'static, str>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// `Result` with hearth's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A permanent error of `kind` with `message`. The message must not contain user data.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        let status = match kind {
            ErrorKind::Unavailable => Status::Temporary,
            _ => Status::Permanent,
        };
        Self {
            kind,
            status,
            message: message.into(),
            source: None,
        }
    }

    /// Marks the error as temporary: the retry layer may try again.
    #[must_use]
    pub fn temporary(mut self) -> Self {
        self.status = Status::Temporary;
        self
    }

    /// Marks the error as permanent.
    #[must_use]
    pub fn permanent(mut self) -> Self {
        self.status = Status::Permanent;
        self
    }

    /// Attaches the underlying cause. Only attach causes whose text carries no user data.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether retrying can help.
    pub fn status(&self) -> Status {
        self.status
    }

    /// True when retrying later may succeed.
    pub fn is_temporary(&self) -> bool {
        self.status == Status::Temporary
    }

    /// The message, without the kind or the cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Shorthand for a [`ErrorKind::Corrupt`] error.
    pub fn corrupt(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }

    /// Shorthand for a [`ErrorKind::InvalidInput`] error.
    pub fn invalid(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// Shorthand for a [`ErrorKind::Tampered`] error: authentication failed, nothing more said.
    pub fn tampered() -> Self {
        Self::new(
            ErrorKind::Tampered,
            "authentication failed: the data was altered, truncated, or sealed for something else",
        )
    }

    /// Shorthand for a [`ErrorKind::Internal`] error.
    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind)
            .field("status", &self.status)
            .field("message", &self.message);
        if let Some(source) = &self.source {
            d.field("source", &format_args!("{source}"));
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<postcard::Error> for Error {
    fn from(e: postcard::Error) -> Self {
        Error::corrupt("malformed encoding").with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_is_temporary_by_default_and_others_are_not() {
        assert!(Error::new(ErrorKind::Unavailable, "x").is_temporary());
        assert!(!Error::new(ErrorKind::Corrupt, "x").is_temporary());
        assert!(
            Error::new(ErrorKind::Storage, "busy")
                .temporary()
                .is_temporary()
        );
    }

    #[test]
    fn kind_names_round_trip() {
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(k.as_str()), Some(*k));
        }
        assert_eq!(ErrorKind::parse("nonsense"), None);
    }

    #[test]
    fn display_includes_cause() {
        let e = Error::new(ErrorKind::Io, "cannot open store").with_source(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "permission denied",
        ));
        assert_eq!(e.to_string(), "cannot open store: permission denied");
        assert_eq!(e.kind().as_str(), "io");
    }
}
