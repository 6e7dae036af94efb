//! Every registry text parser on arbitrary bytes: an entry line, a head file (against a fixed
//! server key) and an enrollment token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secchan::crypto::identity::IdentityKey;
use secchan::registry::entry::Entry;
use secchan::registry::verify::Head;
use secchan::registry::EnrollmentToken;

fuzz_target!(|data: &[u8]| {
    let server = IdentityKey::from_seed(&[0x51; 32]).public();
    let _ = Head::parse(data, &server);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Entry::parse(text);
        let _ = EnrollmentToken::parse(text);
    }
});
