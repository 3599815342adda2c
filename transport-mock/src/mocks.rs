//! `mockall` mocks of hearth's traits, for tests about their callers (expectations on calls,
//! scripted errors). For tests about sync behaviour, use [`MockTransport`](crate::MockTransport),
//! which has the server's real semantics. `Storage` and `Cipher` are not mocked: the in-memory
//! storage and the real ciphers are cheap and pass the conformance suites.

#![allow(missing_docs)]

use std::fmt;

use sync_core::transport::{PullPage, PullRequest, PushRequest, PushResponse};
use sync_core::{
    Conflict, ConflictStrategy, ConsentPolicy, ConsentRequest, Decision, Resolution, Result,
    SpaceId, Transport,
};

mockall::mock! {
    /// A mocked [`Transport`].
    pub Transport {}
    #[async_trait::async_trait]
    impl Transport for Transport {
        fn name(&self) -> &'static str;
        async fn push(&self, request: PushRequest) -> Result<PushResponse>;
        async fn pull(&self, request: PullRequest) -> Result<PullPage>;
        async fn get_key_backup(&self, space: SpaceId) -> Result<Option<Vec<u8>>>;
        async fn put_key_backup(&self, space: SpaceId, blob: Vec<u8>) -> Result<()>;
        async fn share(&self, destination: &str, sealed: Vec<u8>) -> Result<()>;
    }
}

mockall::mock! {
    /// A mocked [`ConflictStrategy`].
    pub Strategy {}
    impl ConflictStrategy for Strategy {
        fn name(&self) -> &'static str;
        fn resolve<'a>(&self, conflict: &Conflict<'a>) -> Result<Resolution>;
    }
}

mockall::mock! {
    /// A mocked [`ConsentPolicy`].
    pub Consent {}
    #[async_trait::async_trait]
    impl ConsentPolicy for Consent {
        async fn decide(&self, request: &ConsentRequest) -> Result<Decision>;
    }
}

macro_rules! debug_mock {
    ($($t:ident),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(stringify!($t))
            }
        }
    )*};
}
debug_mock!(MockTransport, MockStrategy, MockConsent);
