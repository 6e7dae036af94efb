//! Resumption (protocol.md §4.6, §4.7, §6.3, §6.4, §7.6): a classical session issues a
//! NewTicket; the device stores the ticket (stored form mutated as the fuzzer chooses) and
//! resumes; the server gets mutated ResumeHellos before the real one, the device mutated
//! ResumeServerHellos before the real one, at a wall time the fuzzer moves; then the resumed
//! sessions run the record phase.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use secchan::crypto::identity::IdentityKey;
use secchan::crypto::kem::X25519_ONLY;
use secchan::handshake::device::{self, DeviceConfig};
use secchan::handshake::resume::{self, Ticket};
use secchan::handshake::server::{self, FirstReply, ServerConfig};
use secchan::handshake::ticket::{Resumption, TicketKeys};
use secchan::handshake::{AllowAnyDevice, Mode};
use secchan::session::Event;
use secchan_fuzz::records::{Pair, Step};
use secchan_fuzz::{FuzzRandom, Mutation, Reach};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ISSUED: u64 = 1_750_000_000;
const LIFETIME: u64 = 86_400;

#[derive(Debug, Arbitrary)]
struct Input {
    device_identity: bool,
    seed: u64,
    new_ticket: Option<Mutation>,
    stored_ticket: Option<Mutation>,
    /// Sixteen-second steps after the issue: up to 12 days, past expiry and key periods
    /// (a clock further ahead only ratchets the ticket key more often).
    later: u16,
    resume_hello: Vec<Mutation>,
    resume_server_hello: Vec<Mutation>,
    steps: Vec<Step>,
}

fuzz_target!(|input: Input| {
    let mut reach = Reach::new("resume_flow");
    let mut scfg = ServerConfig::new(
        Arc::new(IdentityKey::from_seed(&[0x5e; 32])),
        Arc::new(AllowAnyDevice),
    );
    scfg.mode = Mode::Classical;
    let keys = TicketKeys::from_key(ISSUED / LIFETIME, &[0x60; 32]);
    let Ok(resumption) = Resumption::new(keys, Duration::from_secs(LIFETIME)) else {
        return;
    };
    let resumption = Arc::new(resumption);
    scfg.resumption = Some(resumption.clone());
    let dcfg = DeviceConfig::default()
        .with_suite(&X25519_ONLY)
        .with_identity(
            input
                .device_identity
                .then(|| Arc::new(IdentityKey::from_seed(&[0xde; 32]))),
        );
    let now = Instant::now();
    let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
    let mut rng = FuzzRandom::new(input.seed);

    // The issuing session: an honest full handshake, then the NewTicket record.
    let Ok((expect, hello)) = device::start(&dcfg, &mut rng) else {
        return;
    };
    let Ok((ef, sh)) = server::accept_hello(&scfg, &hello, &mut rng) else {
        return;
    };
    let Ok(Ok((mut dsession, finish))) = expect.read_server_hello(&sh).map(|a| a.finish(now))
    else {
        return;
    };
    let Ok((mut ssession, _)) = ef.read_device_finish(&finish, now) else {
        return;
    };
    if ssession.issue_ticket(&resumption, at(ISSUED)).is_err() {
        return;
    }
    let Some(mut record) = ssession.poll_transmit() else {
        return;
    };
    if let Some(m) = &input.new_ticket {
        m.apply(&mut record);
    }
    reach.hit("new_ticket");
    if dsession.handle_frame(&mut record, now) != Ok(Event::Ticket) {
        return;
    }
    let Some(ticket) = dsession.take_ticket(at(ISSUED)) else {
        return;
    };
    reach.hit("ticket_taken");
    let mut stored = ticket.to_bytes().to_vec();
    if let Some(m) = &input.stored_ticket {
        m.apply(&mut stored);
    }
    let Ok(ticket) = Ticket::from_bytes(&stored) else {
        return;
    };

    // The resumption, at a wall time the fuzzer picks.
    let wall: SystemTime = at(ISSUED + 16 * u64::from(input.later));
    let Ok((expect, rh)) = resume::start(&dcfg, &ticket, &mut rng) else {
        return;
    };
    reach.hit("resume_hello");
    for m in &input.resume_hello {
        let mut frame = rh.clone();
        m.apply(&mut frame);
        let _ = server::accept_first(&scfg, &frame, &mut rng, now, wall);
    }
    let Ok(FirstReply::Resumed(established, rsh)) =
        server::accept_first(&scfg, &rh, &mut rng, now, wall)
    else {
        return;
    };
    reach.hit("resume_accepted");
    for m in &input.resume_server_hello {
        let mut frame = rsh.clone();
        m.apply(&mut frame);
        let _ = expect.read_reply(&frame, now);
    }
    let Ok(device) = expect.read_reply(&rsh, now) else {
        return;
    };
    reach.hit("resumed");
    let (mut server, _) = *established;
    let _ = server.issue_ticket(&resumption, wall);
    let mut pair = Pair::new(device, server);
    pair.run(&input.steps, now, &mut reach);
});
