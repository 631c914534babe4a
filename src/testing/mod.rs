//! Test support (cargo feature `testing`): in-process DNS servers and pods on 127.0.0.x.

mod pod;
pub use self::pod::{AUTHORITY_HEADER, Pod};
