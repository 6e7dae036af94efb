//! The record phase between two established sessions, driven by fuzzer-chosen steps: data,
//! key updates and closes each way, with each frame in flight delivered, dropped, repeated,
//! reordered or mutated.

use crate::{Mutation, Reach};
use arbitrary::Arbitrary;
use secchan::msgs::AlertCode;
use secchan::session::{Event, Session};
use std::collections::VecDeque;
use std::time::Instant;

/// Which way a step acts.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Side {
    /// The device sends, or the server receives.
    Device,
    /// The server sends, or the device receives.
    Server,
}

/// What happens to the next frame in flight towards one side.
#[derive(Debug, Clone, Arbitrary)]
pub enum Fate {
    /// Delivered as sent.
    Deliver,
    /// Lost.
    Drop,
    /// Delivered twice.
    Repeat,
    /// Overtaken by the frame behind it.
    Reorder,
    /// Delivered with a change.
    Mutate(Mutation),
}

impl Fate {
    /// Takes the next frame from `queue` and returns what arrives; `tampered` is set if the
    /// frame was changed.
    pub fn take(&self, queue: &mut VecDeque<Vec<u8>>, tampered: &mut bool) -> Vec<Vec<u8>> {
        let Some(mut frame) = queue.pop_front() else {
            return Vec::new();
        };
        match self {
            Self::Deliver => vec![frame],
            Self::Drop => vec![],
            Self::Repeat => vec![frame.clone(), frame],
            Self::Reorder => match queue.pop_front() {
                Some(next) => vec![next, frame],
                None => vec![frame],
            },
            Self::Mutate(m) => {
                *tampered = true;
                m.apply(&mut frame);
                vec![frame]
            }
        }
    }
}

/// One step of the record phase.
#[derive(Debug, Clone, Arbitrary)]
pub enum Step {
    /// `side` sends an application message.
    Send(Side, Vec<u8>),
    /// `side` rotates its sending key.
    KeyUpdate(Side),
    /// `side` closes with an alert code.
    Close(Side, u8),
    /// The next frame travelling towards `to` meets `fate`.
    Arrive { to: Side, fate: Fate },
}

/// Sees a message the side receives; may return a reply for that side to send.
pub type OnMessage<'a> = dyn FnMut(Side, &[u8], &mut Reach) -> Option<Vec<u8>> + 'a;

/// Two established sessions and the frames in flight between them.
pub struct Pair {
    /// The device's session.
    pub device: Session,
    /// The server's session.
    pub server: Session,
    to_server: VecDeque<Vec<u8>>,
    to_device: VecDeque<Vec<u8>>,
    /// Whether a frame was mutated on the way.
    pub tampered: bool,
}

impl Pair {
    /// Starts the record phase with whatever both sessions have queued.
    pub fn new(device: Session, server: Session) -> Self {
        let mut pair = Self {
            device,
            server,
            to_server: VecDeque::new(),
            to_device: VecDeque::new(),
            tampered: false,
        };
        pair.collect();
        pair
    }

    /// Queues a frame towards the server (a record sent before the session existed there).
    pub fn push_to_server(&mut self, frame: Vec<u8>) {
        self.to_server.push_back(frame);
    }

    /// Moves what both sessions queued into flight.
    pub fn collect(&mut self) {
        while let Some(f) = self.device.poll_transmit() {
            self.to_server.push_back(f);
        }
        while let Some(f) = self.server.poll_transmit() {
            self.to_device.push_back(f);
        }
    }

    /// Runs the steps, then delivers what is still in flight; messages are dropped.
    pub fn run(&mut self, steps: &[Step], now: Instant, reach: &mut Reach) {
        for step in steps {
            self.step(step, now, reach, &mut |_, _, _| None);
        }
        self.drain(now, reach, &mut |_, _, _| None);
    }

    /// Runs one step. `on_message(side, message)` sees every message `side` receives and may
    /// return a reply for `side` to send.
    pub fn step(
        &mut self,
        step: &Step,
        now: Instant,
        reach: &mut Reach,
        on_message: &mut OnMessage,
    ) {
        match step {
            Step::Send(side, data) => {
                let _ = self.session(*side).send(data, now);
            }
            Step::KeyUpdate(side) => {
                let _ = self.session(*side).update_keys(now);
            }
            Step::Close(side, code) => {
                let code = AlertCode::from_u8(*code).unwrap_or(AlertCode::CloseNotify);
                self.session(*side).close(code);
            }
            Step::Arrive { to, fate } => self.arrive(*to, fate, now, reach, on_message),
        }
        self.collect();
    }

    /// Delivers whatever is in flight, in order, both ways, until nothing is left (or a
    /// bound is reached).
    pub fn drain(&mut self, now: Instant, reach: &mut Reach, on_message: &mut OnMessage) {
        for _ in 0..1024 {
            if self.to_server.is_empty() && self.to_device.is_empty() {
                break;
            }
            self.arrive(Side::Server, &Fate::Deliver, now, reach, on_message);
            self.arrive(Side::Device, &Fate::Deliver, now, reach, on_message);
            self.collect();
        }
    }

    /// The session of `side`.
    pub fn session(&mut self, side: Side) -> &mut Session {
        match side {
            Side::Device => &mut self.device,
            Side::Server => &mut self.server,
        }
    }

    fn arrive(
        &mut self,
        to: Side,
        fate: &Fate,
        now: Instant,
        reach: &mut Reach,
        on_message: &mut OnMessage,
    ) {
        let queue = match to {
            Side::Device => &mut self.to_device,
            Side::Server => &mut self.to_server,
        };
        let frames = fate.take(queue, &mut self.tampered);
        for mut frame in frames {
            reach.hit("record");
            match self.session(to).handle_frame(&mut frame, now) {
                Ok(Event::Message(message)) => {
                    reach.hit("message");
                    if let Some(reply) = on_message(to, message, reach) {
                        let _ = self.session(to).send(&reply, now);
                    }
                }
                Ok(Event::KeyUpdated) => reach.hit("key_update"),
                Ok(Event::Ticket) => reach.hit("ticket"),
                Ok(Event::Closed) => reach.hit("close"),
                Ok(_) => reach.hit("other_event"),
                Err(_) => reach.hit("record_refused"),
            }
        }
    }
}
