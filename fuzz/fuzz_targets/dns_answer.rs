//! Arbitrary bytes as a DNS answer, through the resolver's own conversion
//! (`Message::from_vec`, addresses and CNAME TTLs from the answer section,
//! unusable addresses dropped, shortest TTL, cap): never panics, and what
//! comes out is usable.
#![no_main]

use std::net::IpAddr;

use headless_lb::resolve::endpoints_from_answer_message;
use libfuzzer_sys::fuzz_target;

const PORT: u16 = 8080;
const MAX_ENDPOINTS: usize = 8;

fuzz_target!(|bytes: &[u8]| {
    let Some((endpoints, _ttl)) = endpoints_from_answer_message(bytes, PORT, false, MAX_ENDPOINTS)
    else {
        return;
    };
    assert!(endpoints.len() <= MAX_ENDPOINTS, "{endpoints:?}");
    for endpoint in &endpoints {
        assert_eq!(endpoint.port(), PORT);
        let usable = match endpoint.ip().to_canonical() {
            IpAddr::V4(ip) => {
                !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_link_local())
            }
            IpAddr::V6(ip) => {
                !(ip.is_unspecified() || ip.is_multicast() || ip.is_unicast_link_local())
            }
        };
        assert!(usable, "{endpoint} is not usable");
    }
});
