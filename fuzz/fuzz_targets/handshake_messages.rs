//! Every handshake-message decoder on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secchan::msgs::{decode_alert, decode_device_finish, DeviceAuth, DeviceHello, ServerHello};

fuzz_target!(|data: &[u8]| {
    let _ = DeviceHello::decode(data);
    let _ = ServerHello::decode(data);
    let _ = DeviceAuth::decode(data);
    let _ = decode_alert(data);
    let _ = decode_device_finish(data);
});
