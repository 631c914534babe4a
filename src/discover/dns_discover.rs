//! [`DnsDiscover`]: endpoint set changes as a tower `Discover` stream.

/// A tower `Discover` over the endpoints of a target.
#[derive(Debug)]
pub struct DnsDiscover {}
