//! The handshake side of a server instance: hellos taken in from their connection and
//! answered fairly per client ([`super::admission`]), pending handshakes bounded per client
//! and in total, and the DeviceFinish that decides one (docs/mqtt.md §4).

use super::admission::Hello;
use super::{key, split, Incoming, MqttServer, Open, Pending};
use crate::codec::DecodeError;
use crate::crypto::random::OsRandom;
use crate::handshake::server;
use crate::handshake::HandshakeError;
use crate::msgs::{decode_alert, encode_alert, FrameType};
use crate::throttle::{later, warn_dropped};
use crate::transport::mqtt::link::LinkEvent;
use crate::transport::mqtt::topics::Route;
use std::time::Instant;

impl MqttServer {
    /// A message on the hellos' connection: queued for its client, or dropped.
    pub(super) fn admit(&mut self, event: LinkEvent) {
        let LinkEvent::Message { topic, payload } = event else {
            return;
        };
        if payload.len() > crate::transport::mqtt::MAX_FRAME_LEN {
            self.malformed(&topic, "message larger than a record");
            return;
        }
        let Some(Route::Hello { client, session }) = self.topics.parse(&topic) else {
            self.malformed(&topic, "not a secchan hello topic");
            return;
        };
        let hello = Hello {
            client: client.to_string(),
            session: session.to_string(),
            frame: payload,
            arrived: Instant::now(),
        };
        let shed = self.hellos.push(hello);
        if shed > 0 {
            self.stats.shed_hellos += shed;
            warn_dropped!(
                self.throttle,
                client,
                total = self.stats.shed_hellos,
                "hellos arrive faster than they are answered: dropped the oldest of this client's"
            );
        }
    }

    /// Answers up to `n` queued hellos, one per client in turn.
    pub(super) fn serve_hellos(&mut self, n: usize) {
        let max_age = self.options.timeouts.handshake;
        for _ in 0..n {
            let mut stale = 0;
            let next = self.hellos.pop(Instant::now(), max_age, &mut stale);
            self.stats.shed_hellos += stale;
            match next {
                Some(hello) => self.on_hello(hello),
                None => return,
            }
        }
    }

    fn on_hello(&mut self, hello: Hello) {
        let key = key(&hello.client, &hello.session);
        if self.pending.contains_key(&key) || self.open.contains_key(&key) {
            self.stats.duplicate_records += 1;
            tracing::debug!(session = %key, "repeated hello dropped");
            return;
        }
        if self.open.len() >= self.options.max_sessions {
            self.stats.refused_hellos += 1;
            warn_dropped!(self.throttle, session = %key, max = self.options.max_sessions, "too many sessions: hello dropped");
            return;
        }
        match server::accept_hello(&self.config, &hello.frame, &mut OsRandom) {
            Ok((expect, reply)) => {
                self.make_room(&hello.client);
                self.hello_link.publish(self.down(&key), reply);
                self.stats.hellos_answered += 1;
                let order = self.pending_order.add(&hello.client, key.clone());
                let pending = Pending {
                    expect: Box::new(expect),
                    deadline: later(Instant::now(), self.options.timeouts.handshake),
                    order,
                };
                self.pending.insert(key, pending);
            }
            // Only a refusal a genuine device can act on is answered; a hello that does not
            // decode (anyone may publish one) is dropped without costing a publish.
            Err(
                e @ (HandshakeError::SuiteRefused { .. }
                | HandshakeError::NoCommonAead
                | HandshakeError::Decode(DecodeError::UnsupportedVersion(_))),
            ) => self.handshake_failed(&key, &e),
            Err(e) => self.malformed(&key, &e.to_string()),
        }
    }

    /// Forgets pending handshakes until one more fits: the client's oldest if it holds its
    /// share, then, while over the totals, the oldest of whichever client holds the most.
    fn make_room(&mut self, client: &str) {
        let mut victims = Vec::new();
        if self.pending_order.of(client) >= super::admission::PENDING_PER_CLIENT {
            victims.extend(self.pending_order.evict(Some(client)));
        }
        while self.pending_order.len() >= self.options.max_pending
            || self.pending_order.len() + self.open.len() >= self.options.max_sessions
        {
            match self.pending_order.evict(None) {
                Some(victim) => victims.push(victim),
                None => break,
            }
        }
        for victim in victims {
            self.pending.remove(&victim);
            self.stats.evicted_handshakes += 1;
            warn_dropped!(self.throttle, session = %victim, max = self.options.max_pending, "too many handshakes in progress: forgot the oldest of the client holding most");
        }
    }

    pub(super) fn handshake_failed(&mut self, key: &str, e: &HandshakeError) {
        self.stats.handshake_failures += 1;
        if let Some(code) = e.alert() {
            self.hello_link.publish(self.down(key), encode_alert(code));
        }
        warn_dropped!(self.throttle, session = %key, error = %e, "handshake failed");
    }

    /// A frame on the up topic of a session that is not established. Anyone who saw the
    /// ServerHello on the broker may publish there, so a frame that fails is dropped and the
    /// handshake goes on until its deadline: only a DeviceFinish that verifies decides it.
    pub(super) fn on_pending(&mut self, key: String, frame: &[u8], now: Instant) {
        let Some(pending) = self.pending.get(&key) else {
            self.stats.unknown_session += 1;
            tracing::debug!(session = %key, "message for a session this instance does not hold");
            return;
        };
        match FrameType::of(frame) {
            Ok(FrameType::DeviceFinish) => {
                match pending.expect.read_device_finish_keyed(frame, now) {
                    Ok((session, Ok(peer))) => {
                        self.end_pending(&key);
                        self.stats.sessions_established += 1;
                        tracing::info!(
                            session = %key,
                            device = %peer.name,
                            suite = session.suite().name,
                            aead = session.aead().name(),
                            "session established"
                        );
                        let listed = self.listed.start(
                            peer.name.clone(),
                            peer.identity.map(|i| i.fingerprint()),
                            {
                                let (client, sid) = split(&key);
                                crate::transport::mqtt::peer(client, sid)
                            },
                            (session.suite().name, session.aead().name()),
                            false,
                        );
                        self.ready.push_back(Incoming::Opened {
                            session: key.clone(),
                            device: peer.clone(),
                        });
                        let open = Open {
                            session,
                            peer,
                            last_input: now,
                            listed,
                        };
                        self.open.insert(key, Box::new(open));
                    }
                    // The device's authentication verified: this is the device, and it is
                    // refused, in an authenticated Close record it can believe.
                    Ok((mut session, Err(e))) => {
                        self.end_pending(&key);
                        self.stats.handshake_failures += 1;
                        if let HandshakeError::DeviceRefused { device, code } = &e {
                            self.stats.devices_refused += 1;
                            tracing::warn!(session = %key, device = %device, reason = %code, "device refused");
                            session.close(*code);
                        }
                        self.transmit(&key, &mut session);
                    }
                    Err(e @ HandshakeError::EnrollmentProofFailed { .. }) => {
                        self.end_pending(&key);
                        self.handshake_failed(&key, &e);
                    }
                    Err(e) => {
                        self.stats.rejected_handshake_messages += 1;
                        warn_dropped!(self.throttle, session = %key, error = %e, "DeviceFinish did not verify: dropped, the handshake goes on");
                    }
                }
            }
            Ok(FrameType::Alert) => match decode_alert(frame) {
                Ok(code) => {
                    self.stats.rejected_handshake_messages += 1;
                    warn_dropped!(self.throttle, session = %key, reason = %code, "plaintext alert for a pending handshake (unauthenticated): the handshake goes on until it times out");
                }
                Err(e) => self.malformed(&key, &e.to_string()),
            },
            _ => {
                // A record ahead of DeviceFinish, or garbage: the handshake goes on; a
                // record is sent again by the device once it gets no acknowledgement.
                self.stats.malformed += 1;
                tracing::debug!(session = %key, "frame before DeviceFinish dropped");
            }
        }
    }

    fn end_pending(&mut self, key: &str) {
        if let Some(p) = self.pending.remove(key) {
            self.pending_order.remove(split(key).0, p.order);
        }
    }
}
