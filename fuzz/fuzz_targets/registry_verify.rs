//! Registry verification on arbitrary files: the input up to the first 0xff byte is the log,
//! the rest the head file; verified with and without an expected server key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secchan::crypto::identity::IdentityKey;
use secchan::registry::verify::verify;

fuzz_target!(|data: &[u8]| {
    let (log, head) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], data.get(i + 1..)),
        None => (data, None),
    };
    let server = IdentityKey::from_seed(&[0x51; 32]).public();
    let _ = verify(log, head, Some(&server));
    let _ = verify(log, head, None);
});
