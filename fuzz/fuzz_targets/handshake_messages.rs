//! Every handshake-message decoder on arbitrary bytes, and the stored-ticket parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secchan::handshake::resume::Ticket;
use secchan::msgs::{
    decode_alert, decode_device_finish, CookieHello, CookieReply, DeviceAuth, DeviceHello,
    NewTicket, ResumeHello, ResumeServerHello, ServerHello,
};

fuzz_target!(|data: &[u8]| {
    let _ = DeviceHello::decode(data);
    let _ = ServerHello::decode(data);
    let _ = DeviceAuth::decode(data);
    let _ = decode_alert(data);
    let _ = decode_device_finish(data);
    let _ = ResumeHello::decode(data);
    let _ = ResumeServerHello::decode(data);
    let _ = NewTicket::decode(data);
    let _ = CookieReply::decode(data);
    let _ = CookieHello::decode(data);
    let _ = Ticket::from_bytes(data);
});
