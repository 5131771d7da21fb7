use super::*;
use crate::profiles::breaker::{Change, Health};

#[test]
fn expected_wait_table() {
    let ms = Duration::from_millis;
    for (typical, ahead, slots, want) in [
        (ms(0), 100, 8, ms(0)),
        (ms(1), 0, 64, ms(1)),
        (ms(1), 192, 64, ms(4)),
        (ms(300), 8, 8, ms(600)),
        (ms(300), 7, 8, ms(300)),
        (ms(4500), 0, 8, ms(4500)),
        (ms(100), 5, 0, ms(600)), // no slots is read as one
    ] {
        assert_eq!(
            expected_wait(typical, ahead, slots),
            want,
            "{typical:?} {ahead} {slots}"
        );
    }
}

#[test]
fn deferrals_book_their_turns_one_after_the_other() {
    let ms = Duration::from_millis;
    let us = |d: Duration| d.as_micros() as u64;
    // A profile of 4 slots whose attempts take 4 s: each deferral books 1 s more.
    let (typical, slots, now) = (ms(4000), 4, us(ms(10_000)));
    let mut booked = 0;
    let mut waits = Vec::new();
    for _ in 0..6 {
        let (wait, until) = book(now, booked, ms(4000), typical, slots);
        waits.push(wait.as_millis());
        booked = until;
    }
    assert_eq!(waits, [4000, 5000, 6000, 7000, 8000, 9000]);
    // Bookings that have passed do not delay anyone.
    let (wait, _) = book(now + us(ms(60_000)), booked, ms(1500), typical, slots);
    assert_eq!(wait, ms(1500));
    // A longer own wait wins over an earlier end of the bookings.
    let (wait, until) = book(now, now + us(ms(100)), ms(2000), typical, slots);
    assert_eq!((wait, until), (ms(2000), now + us(ms(3000))));
    // No slots is read as one.
    assert_eq!(book(0, 0, ms(10), ms(400), 0), (ms(10), us(ms(410))));
}

fn gate(limit: usize, rate: Option<&str>, failures: u32) -> Gate {
    Gate::new(
        limit,
        rate.map(|r| RateLimit::parse(r).unwrap()),
        BreakerSettings {
            failures,
            open_for: Duration::from_secs(30),
        },
        None,
        None,
    )
}

#[tokio::test]
async fn the_bucket_lets_a_burst_of_one_seconds_worth_through_then_defers() {
    let g = gate(100, Some("5/s"), 0);
    let window = Arc::new(Window::new(1000));
    let stop = CancellationToken::new();
    let _hold = g.hold(&window);
    let mut passes = Vec::new();
    for _ in 0..5 {
        passes.push(g.admit(&window, &stop).await.expect("within the burst"));
    }
    // The 6th would wait 200 ms: within a second and within its share, so it waits.
    let started = Instant::now();
    passes.push(g.admit(&window, &stop).await.expect("after a wait"));
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn a_slow_rate_is_deferred_at_once_with_its_wait() {
    let g = gate(100, Some("1/m"), 0);
    let window = Arc::new(Window::new(1000));
    let stop = CancellationToken::new();
    let _hold = g.hold(&window);
    let _first = g.admit(&window, &stop).await.unwrap();
    match g.admit(&window, &stop).await {
        Err(Refusal::Defer {
            reason: DeferReason::RateLimit,
            wait,
        }) => assert!(wait > Duration::from_secs(55), "{wait:?}"),
        other => panic!("{:?}", other.err()),
    }
}

#[tokio::test]
async fn over_its_share_an_event_is_deferred_instead_of_waiting() {
    let g = gate(1, None, 0);
    let other = gate(1, None, 0);
    let window = Arc::new(Window::new(2));
    let stop = CancellationToken::new();
    let _a = g.hold(&window);
    let _b = g.hold(&window);
    let _c = other.hold(&window); // two profiles in hand: share 1 each
    let _slot = g.admit(&window, &stop).await.unwrap();
    match g.admit(&window, &stop).await {
        Err(Refusal::Defer {
            reason: DeferReason::Concurrency,
            wait,
        }) => assert_eq!(wait, MAX_WAIT),
        other => panic!("{:?}", other.err()),
    }
}

#[tokio::test]
async fn a_profile_deferring_within_its_share_leaves_the_window_to_the_others() {
    let g = gate(100, Some("1/m"), 0);
    let (a, b) = (gate(1, None, 0), gate(1, None, 0));
    let window = Arc::new(Window::new(6));
    let stop = CancellationToken::new();
    let (_a, _b) = (a.hold(&window), b.hold(&window));
    let held = g.hold(&window);
    assert_eq!(window.share(), 2, "three profiles with events in hand");
    let first = g.admit(&window, &stop).await.unwrap();
    let second = g.hold(&window);
    assert!(matches!(
        g.admit(&window, &stop).await.err(),
        Some(Refusal::Defer {
            reason: DeferReason::RateLimit,
            ..
        })
    ));
    assert_eq!(
        window.share(),
        3,
        "it could not use more of the window: the other two split it"
    );
    drop((first, second, held));
    let _back = g.hold(&window);
    assert_eq!(
        window.share(),
        2,
        "once it held nothing it is forgotten; back, it counts again"
    );
}

#[tokio::test]
async fn over_its_share_a_deferral_leaves_the_share_as_it_is() {
    let g = gate(1, None, 0);
    let other = gate(1, None, 0);
    let window = Arc::new(Window::new(2));
    let stop = CancellationToken::new();
    let (_a, _b, _c) = (g.hold(&window), g.hold(&window), other.hold(&window));
    let _slot = g.admit(&window, &stop).await.unwrap();
    assert!(g.admit(&window, &stop).await.is_err(), "over its share");
    assert_eq!(window.share(), 1, "still two profiles sharing the window");
}

#[tokio::test]
async fn an_open_breaker_defers_and_shutdown_releases_waiters() {
    let g = gate(1, None, 1);
    let window = Arc::new(Window::new(10));
    let stop = CancellationToken::new();
    let _hold = g.hold(&window);
    let pass = g.admit(&window, &stop).await.unwrap();
    assert_eq!(pass.finish(Health::Down), (Change::Opened, true));
    assert!(matches!(
        g.admit(&window, &stop).await.err(),
        Some(Refusal::Defer {
            reason: DeferReason::CircuitOpen,
            ..
        })
    ));
    let g = gate(1, None, 0);
    let _hold = g.hold(&window);
    let _busy = g.admit(&window, &stop).await.unwrap();
    stop.cancel();
    assert_eq!(g.admit(&window, &stop).await.err(), Some(Refusal::Shutdown));
}
