//! The retry layer, tested as a caller of a scripted (mockall) transport.

use std::sync::Arc;
use std::time::Duration;

use sync_core::retry::{RetryPolicy, RetryTransport};
use sync_core::{
    DeviceId, Error, ErrorKind, PushRequest, PushResponse, SpaceId, SpaceRef, Transport,
};
use transport_mock::mocks::MockTransport;

fn request() -> PushRequest {
    PushRequest {
        from: SpaceRef {
            space: SpaceId([1; 16]),
            device: DeviceId([2; 16]),
            fingerprint: [3; 32],
        },
        envelopes: vec![],
        settle: None,
    }
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(4),
        max_retries: 5,
    }
}

#[tokio::test]
async fn temporary_errors_are_retried_until_success() {
    let mut mock = MockTransport::new();
    let mut seq = mockall::Sequence::new();
    mock.expect_push()
        .times(2)
        .in_sequence(&mut seq)
        .returning(|_| Err(Error::new(ErrorKind::Unavailable, "connection reset")));
    mock.expect_push()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| {
            Ok(PushResponse {
                assigned: vec![(1, 10)],
                held: Vec::new(),
            })
        });
    let t = RetryTransport::new(Arc::new(mock), policy());
    assert_eq!(
        t.push(request()).await.expect("retried").assigned,
        vec![(1, 10)]
    );
}

#[tokio::test]
async fn permanent_errors_are_not_retried() {
    let mut mock = MockTransport::new();
    mock.expect_push()
        .times(1)
        .returning(|_| Err(Error::new(ErrorKind::WrongKey, "different key")));
    let t = RetryTransport::new(Arc::new(mock), policy());
    assert_eq!(
        t.push(request()).await.err().map(|e| e.kind()),
        Some(ErrorKind::WrongKey)
    );
}

#[tokio::test]
async fn retries_stop_after_the_policy_limit() {
    let mut mock = MockTransport::new();
    mock.expect_pull()
        .times(6)
        .returning(|_| Err(Error::new(ErrorKind::Unavailable, "timeout")));
    let t = RetryTransport::new(Arc::new(mock), policy());
    let from = request().from;
    let err = t
        .pull(sync_core::PullRequest {
            from,
            cursor: 0,
            limit: 10,
            include_own: false,
        })
        .await
        .err();
    assert!(err.is_some_and(|e| e.is_temporary()));
}
