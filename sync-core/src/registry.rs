//! The registry: implementations register by name, the facade finds them by name.
//!
//! Each implementation crate submits a registration through [`inventory`] (see
//! [`register_storage!`](crate::register_storage), [`register_cipher!`](crate::register_cipher),
//! [`register_strategy!`](crate::register_strategy)). Link-time registration needs the crate to
//! be linked and does not run on every target (static libraries for iOS), so the same entries
//! can be added explicitly with [`register_storage`], [`register_cipher`] and
//! [`register_strategy`].
//!
//! Lookups list what exists; two implementations under one name are an error; a name hearth
//! knows but that is not compiled in says which cargo feature of `hearth` enables it.

use std::fmt;
use std::sync::{Arc, RwLock};

use futures::future::BoxFuture;

use crate::cipher::Cipher;
use crate::error::{Error, ErrorKind, Result};
use crate::storage::{Storage, StorageOptions};
use crate::strategy::ConflictStrategy;

/// Opens a storage with the given options.
pub type OpenStorageFn = fn(StorageOptions) -> BoxFuture<'static, Result<Arc<dyn Storage>>>;
/// Makes a cipher.
pub type MakeCipherFn = fn() -> Arc<dyn Cipher>;
/// Makes a conflict strategy.
pub type MakeStrategyFn = fn() -> Arc<dyn ConflictStrategy>;

/// A storage implementation, registered by name.
#[derive(Clone, Copy)]
pub struct StorageRegistration {
    /// The name (`"sqlite"`, `"sqlcipher"`, `"memory"`).
    pub name: &'static str,
    /// Opens it.
    pub open: OpenStorageFn,
    /// True for storages encrypted at rest (SQLCipher): they must be opened with
    /// [`StorageOptions::page_key`], so the store keeps their key header in a sidecar file next
    /// to the database rather than in the storage's metadata (see [`crate::store`]).
    pub needs_page_key: bool,
}

/// A cipher implementation, registered by name.
#[derive(Clone, Copy)]
pub struct CipherRegistration {
    /// The name (`"orion"`, `"sodium"`).
    pub name: &'static str,
    /// Makes it.
    pub make: MakeCipherFn,
}

/// A conflict strategy, registered by name.
#[derive(Clone, Copy)]
pub struct StrategyRegistration {
    /// The name (`"lww"`, `"merge"`, …).
    pub name: &'static str,
    /// Makes it.
    pub make: MakeStrategyFn,
}

macro_rules! debug_by_name {
    ($($t:ty),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($t)).field("name", &self.name).finish_non_exhaustive()
            }
        }
    )*};
}
debug_by_name!(
    StorageRegistration,
    CipherRegistration,
    StrategyRegistration
);

inventory::collect!(StorageRegistration);
inventory::collect!(CipherRegistration);
inventory::collect!(StrategyRegistration);

static RUNTIME_STORAGES: RwLock<Vec<StorageRegistration>> = RwLock::new(Vec::new());
static RUNTIME_CIPHERS: RwLock<Vec<CipherRegistration>> = RwLock::new(Vec::new());
static RUNTIME_STRATEGIES: RwLock<Vec<StrategyRegistration>> = RwLock::new(Vec::new());

/// Storage names hearth ships and the `hearth` cargo feature that compiles each in.
pub const KNOWN_STORAGES: &[(&str, &str)] = &[("sqlite", "sqlite"), ("sqlcipher", "sqlcipher")];
/// Cipher names hearth ships and the `hearth` cargo feature that compiles each in.
pub const KNOWN_CIPHERS: &[(&str, &str)] = &[("orion", "orion"), ("sodium", "sodium")];

trait Named: Copy + 'static {
    const WHAT: &'static str;
    fn name(&self) -> &'static str;
}
impl Named for StorageRegistration {
    const WHAT: &'static str = "storage";
    fn name(&self) -> &'static str {
        self.name
    }
}
impl Named for CipherRegistration {
    const WHAT: &'static str = "cipher";
    fn name(&self) -> &'static str {
        self.name
    }
}
impl Named for StrategyRegistration {
    const WHAT: &'static str = "conflict strategy";
    fn name(&self) -> &'static str {
        self.name
    }
}

fn all<T: Named>(linked: impl Iterator<Item = &'static T>, runtime: &RwLock<Vec<T>>) -> Vec<T> {
    let mut v: Vec<T> = linked.copied().collect();
    if let Ok(r) = runtime.read() {
        v.extend(r.iter().copied());
    }
    v
}

fn names<T: Named>(entries: &[T]) -> Vec<&'static str> {
    let mut n: Vec<_> = entries.iter().map(Named::name).collect();
    n.sort_unstable();
    n.dedup();
    n
}

fn find<T: Named>(entries: Vec<T>, name: &str, known: &[(&str, &str)]) -> Result<T> {
    let mut matching = entries.iter().filter(|e| e.name() == name);
    match (matching.next(), matching.next()) {
        (Some(e), None) => Ok(*e),
        (Some(_), Some(_)) => Err(Error::new(
            ErrorKind::Config,
            format!(
                "two {} implementations are registered as '{name}'; names must be unique",
                T::WHAT
            ),
        )),
        (None, _) => {
            let available = names(&entries).join(", ");
            match known.iter().find(|(n, _)| *n == name) {
                Some((_, feature)) => Err(Error::new(
                    ErrorKind::NotCompiledIn,
                    format!(
                        "{} '{name}' is not compiled in: enable the cargo feature `{feature}` of hearth (available: {available})",
                        T::WHAT
                    ),
                )),
                None => Err(Error::new(
                    ErrorKind::NotFound,
                    format!("unknown {} '{name}' (available: {available})", T::WHAT),
                )),
            }
        }
    }
}

fn add<T: Named>(existing: Vec<T>, runtime: &RwLock<Vec<T>>, entry: T) -> Result<()> {
    if existing.iter().any(|e| e.name() == entry.name()) {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "a {} named '{}' is already registered",
                T::WHAT,
                entry.name()
            ),
        ));
    }
    runtime
        .write()
        .map_err(|_| Error::internal("registry lock poisoned"))?
        .push(entry);
    Ok(())
}

/// Every registered storage.
pub fn storages() -> Vec<StorageRegistration> {
    all(
        inventory::iter::<StorageRegistration>.into_iter(),
        &RUNTIME_STORAGES,
    )
}
/// Every registered cipher.
pub fn ciphers() -> Vec<CipherRegistration> {
    all(
        inventory::iter::<CipherRegistration>.into_iter(),
        &RUNTIME_CIPHERS,
    )
}
/// Every registered conflict strategy.
pub fn strategies() -> Vec<StrategyRegistration> {
    all(
        inventory::iter::<StrategyRegistration>.into_iter(),
        &RUNTIME_STRATEGIES,
    )
}

/// The names of the registered storages, sorted.
pub fn storage_names() -> Vec<&'static str> {
    names(&storages())
}
/// The names of the registered ciphers, sorted.
pub fn cipher_names() -> Vec<&'static str> {
    names(&ciphers())
}
/// The names of the registered conflict strategies, sorted.
pub fn strategy_names() -> Vec<&'static str> {
    names(&strategies())
}

/// The storage registered as `name`.
pub fn storage(name: &str) -> Result<StorageRegistration> {
    find(storages(), name, KNOWN_STORAGES)
}
/// The cipher registered as `name`.
pub fn cipher(name: &str) -> Result<CipherRegistration> {
    find(ciphers(), name, KNOWN_CIPHERS)
}
/// The conflict strategy registered as `name`.
pub fn strategy(name: &str) -> Result<StrategyRegistration> {
    find(strategies(), name, &[])
}

/// Registers a storage at run time (for targets where link-time registration does not run).
/// A name already registered is an [`ErrorKind::Config`] error.
pub fn register_storage(entry: StorageRegistration) -> Result<()> {
    add(storages(), &RUNTIME_STORAGES, entry)
}
/// Registers a cipher at run time. A name already registered is an error.
pub fn register_cipher(entry: CipherRegistration) -> Result<()> {
    add(ciphers(), &RUNTIME_CIPHERS, entry)
}
/// Registers a conflict strategy at run time. A name already registered is an error.
pub fn register_strategy(entry: StrategyRegistration) -> Result<()> {
    add(strategies(), &RUNTIME_STRATEGIES, entry)
}

/// Checks that no name is registered twice; returns the first duplicate as an error.
pub fn validate() -> Result<()> {
    fn dup<T: Named>(e: Vec<T>) -> Result<()> {
        for n in names(&e) {
            find(e.clone(), n, &[])?;
        }
        Ok(())
    }
    dup(storages())?;
    dup(ciphers())?;
    dup(strategies())
}

/// Registers a storage at link time: `register_storage!("name", open_fn);`, or for a storage
/// encrypted at rest that must be opened with a page key,
/// `register_storage!("name", open_fn, needs_page_key = true);`.
#[macro_export]
macro_rules! register_storage {
    ($name:expr, $open:expr) => {
        $crate::register_storage!($name, $open, needs_page_key = false);
    };
    ($name:expr, $open:expr, needs_page_key = $needs:expr) => {
        $crate::__private::inventory::submit! {
            $crate::registry::StorageRegistration { name: $name, open: $open, needs_page_key: $needs }
        }
    };
}

/// Registers a cipher at link time: `register_cipher!("name", make_fn);`.
#[macro_export]
macro_rules! register_cipher {
    ($name:expr, $make:expr) => {
        $crate::__private::inventory::submit! {
            $crate::registry::CipherRegistration { name: $name, make: $make }
        }
    };
}

/// Registers a conflict strategy at link time: `register_strategy!("name", make_fn);`.
#[macro_export]
macro_rules! register_strategy {
    ($name:expr, $make:expr) => {
        $crate::__private::inventory::submit! {
            $crate::registry::StrategyRegistration { name: $name, make: $make }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::LastWriterWins;

    #[test]
    fn builtin_strategy_is_found_and_unknown_names_list_what_exists() {
        assert!(strategy_names().contains(&"lww"));
        assert_eq!(strategy("lww").map(|s| (s.make)().name()).ok(), Some("lww"));
        let err = strategy("nope").err().map(|e| (e.kind(), e.to_string()));
        let (kind, msg) = err.unwrap_or((ErrorKind::Internal, String::new()));
        assert_eq!(kind, ErrorKind::NotFound);
        assert!(msg.contains("available: ") && msg.contains("lww"), "{msg}");
    }

    #[test]
    fn known_but_missing_names_say_which_feature_to_enable() {
        let err = cipher("sodium").err();
        assert_eq!(
            err.as_ref().map(Error::kind),
            Some(ErrorKind::NotCompiledIn)
        );
        assert!(
            err.map(|e| e.to_string())
                .unwrap_or_default()
                .contains("`sodium`")
        );
    }

    #[test]
    fn duplicate_names_are_refused() {
        let dup = StrategyRegistration {
            name: "lww",
            make: || Arc::new(LastWriterWins),
        };
        assert_eq!(
            register_strategy(dup).err().map(|e| e.kind()),
            Some(ErrorKind::Config)
        );
        let fresh = StrategyRegistration {
            name: "registry-test-unique",
            make: || Arc::new(LastWriterWins),
        };
        assert!(register_strategy(fresh).is_ok());
        assert!(strategy_names().contains(&"registry-test-unique"));
        assert!(register_strategy(fresh).is_err());
        assert!(validate().is_ok());
    }
}
