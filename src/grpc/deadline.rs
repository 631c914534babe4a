//! gRPC deadlines: parsing and writing `grpc-timeout`, and the deadline an RPC gets.
//!
//! The wire format (gRPC over HTTP/2, `doc/PROTOCOL-HTTP2.md` in grpc/grpc):
//! `grpc-timeout: 1*8DIGIT unit`, the unit one of `H` hours, `M` minutes,
//! `S` seconds, `m` milliseconds, `u` microseconds, `n` nanoseconds.

use std::time::Duration;

use http::HeaderValue;

/// The header carrying an RPC's deadline.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The most digits a `grpc-timeout` value may have.
const MAX_DIGITS: usize = 8;

/// The deadline `request` runs under: the shorter of its own `grpc-timeout`
/// and the channel's `default`. When the request names none (or one that
/// does not parse) and a default applies, the default is written into the
/// request so that the server sees it as well.
///
/// A malformed `grpc-timeout` is ignored rather than failing the RPC, as
/// tonic and grpc-go do: the server applies its own reading of it.
pub(crate) fn effective<B>(
    request: &mut http::Request<B>,
    default: Option<Duration>,
) -> Option<Duration> {
    let own = request
        .headers()
        .get(GRPC_TIMEOUT)
        .and_then(|v| parse(v.as_bytes()));
    match (own, default) {
        (Some(own), Some(default)) => Some(own.min(default)),
        (Some(own), None) => Some(own),
        (None, Some(default)) => {
            if let Ok(value) = HeaderValue::try_from(encode(default)) {
                request.headers_mut().insert(GRPC_TIMEOUT, value);
            }
            Some(default)
        }
        (None, None) => None,
    }
}

/// A `grpc-timeout` value as a duration; `None` if it is not one.
pub(crate) fn parse(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > MAX_DIGITS || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 8 digits: no overflow in u64, nor below when scaled to seconds.
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `timeout` in the finest unit that fits in 8 digits, rounded up so that
/// the server's deadline is never earlier than the client's.
pub(crate) fn encode(timeout: Duration) -> String {
    const LIMIT: u128 = 100_000_000;
    let nanos = timeout.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (scale, unit) in units {
        let value = nanos.div_ceil(scale);
        if value < LIMIT {
            return format!("{value}{unit}");
        }
    }
    format!("{}H", LIMIT - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse(b"3H"), Some(Duration::from_secs(3 * 3600)));
        assert_eq!(parse(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse(b"5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse(b"99999999n"), Some(Duration::from_nanos(99_999_999)));
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            &b""[..],
            b"m",
            b"100",
            b"100x",
            b"-1S",
            b"123456789S",
            b"1 S",
            b"\xffS",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn encodes_within_eight_digits_and_round_trips_up() {
        for d in [
            Duration::from_nanos(1),
            Duration::from_millis(100),
            Duration::from_secs(30),
            Duration::from_secs(3600 * 24 * 365),
            Duration::MAX,
        ] {
            let text = encode(d);
            let back = parse(text.as_bytes()).expect(&text);
            assert!(text.len() <= MAX_DIGITS + 1, "{text}");
            assert!(
                back >= d.min(Duration::from_secs(99_999_999 * 3600)),
                "{d:?} -> {text}"
            );
        }
        assert_eq!(encode(Duration::from_millis(100)), "100000u");
    }

    #[test]
    fn the_shorter_deadline_wins_and_a_default_is_sent() {
        let mut own = http::Request::new(());
        own.headers_mut()
            .insert(GRPC_TIMEOUT, HeaderValue::from_static("50m"));
        assert_eq!(
            effective(&mut own, Some(Duration::from_secs(1))),
            Some(Duration::from_millis(50))
        );
        let mut none = http::Request::new(());
        assert_eq!(
            effective(&mut none, Some(Duration::from_millis(200))),
            Some(Duration::from_millis(200))
        );
        let sent = none.headers().get(GRPC_TIMEOUT).expect("default written");
        assert_eq!(parse(sent.as_bytes()), Some(Duration::from_millis(200)));
        assert_eq!(effective(&mut http::Request::new(()), None), None);
    }
}
