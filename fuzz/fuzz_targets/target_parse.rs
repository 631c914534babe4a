//! `Target::from_str` on arbitrary strings: never panics, and whatever
//! parses prints as a string that parses back to the same target and prints
//! the same again.
#![no_main]

use headless_lb::Target;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    let Ok(target) = input.parse::<Target>() else {
        return;
    };
    let shown = target.to_string();
    let again: Target = shown
        .parse()
        .unwrap_or_else(|e| panic!("{input:?} parsed, but its display {shown:?} does not: {e}"));
    assert_eq!(again, target, "{input:?} → {shown:?}");
    assert_eq!(again.to_string(), shown, "display is stable");
    // The client builds an HTTP authority from every parsed target.
    let authority = target.authority();
    assert!(
        authority.parse::<http::uri::Authority>().is_ok(),
        "{input:?}: authority {authority:?}"
    );
});
