//! Polling with a deadline, so that tests never sleep a fixed time.

use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, sleep};

/// How often [`wait_for`] and [`wait_for_async`] re-check their condition.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Waits until `condition` returns true, checking about every 10 ms.
///
/// Uses tokio's clock, so it also works (instantly) under
/// `tokio::time::pause()`.
///
/// # Panics
///
/// Panics with a message naming `what` if `condition` is still false after
/// `deadline`: a test that waits for something that never happens fails with
/// a reason instead of hanging.
pub async fn wait_for(deadline: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    wait_for_async(deadline, what, || std::future::ready(condition())).await
}

/// Like [`wait_for`], with a condition that needs to `.await` (for example a
/// lookup, or a lock held across an await).
///
/// # Panics
///
/// Panics with a message naming `what` on deadline.
pub async fn wait_for_async<F, Fut>(deadline: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    loop {
        if condition().await {
            return;
        }
        if Instant::now() >= until {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        sleep(POLL_INTERVAL).await;
    }
}
