//! The server (responder) side of the handshake (protocol.md §6.2).

use super::key_schedule::{
    handshake_secret, open_handshake, seal_handshake, session_secrets, CombinerInput, HandshakeKey,
};
use super::ticket::Resumption;
use super::{select_aead, Authorizer, HandshakeError, Mode};
use super::{DEVICE_SIGNATURE_CONTEXT, ENROLLMENT_PROOF_CONTEXT, SERVER_SIGNATURE_CONTEXT};
use crate::codec::DecodeError;
use crate::crypto::aead::AeadId;
use crate::crypto::identity::{IdentityKey, PublicIdentity};
use crate::crypto::kdf::{Secret, Transcript};
use crate::crypto::kem::{Suite, SuiteId, X25519Ephemeral};
use crate::crypto::random::Random;
use crate::msgs::{decode_device_finish, DeviceAuth, DeviceHello, FrameType, ServerHello};
use crate::session::{Role, Session, SessionConfig, SessionKeys};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// How a server accepts devices: [`ServerConfig::new`] (hybrid mode, both AEADs, no tickets),
/// then the `with_` setters.
#[derive(Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The server's long-term identity.
    pub identity: Arc<IdentityKey>,
    /// Which suites are accepted.
    pub mode: Mode,
    /// AEADs the server supports (the device's preference order decides among them).
    pub aeads: Vec<AeadId>,
    /// Which devices are accepted.
    pub authorizer: Arc<dyn Authorizer>,
    /// Record-layer parameters.
    pub session: SessionConfig,
    /// Session resumption: ticket keys, lifetime and replay cache. `None`: no tickets are
    /// issued and every ResumeHello is refused with `ticket_rejected`.
    pub resumption: Option<Arc<Resumption>>,
}

impl ServerConfig {
    /// A hybrid-mode server supporting both AEADs.
    pub fn new(identity: Arc<IdentityKey>, authorizer: Arc<dyn Authorizer>) -> Self {
        Self {
            identity,
            mode: Mode::Hybrid,
            aeads: vec![AeadId::Aes256Gcm, AeadId::ChaCha20Poly1305],
            authorizer,
            session: SessionConfig::default(),
            resumption: None,
        }
    }

    /// Accepts the suites of `mode`.
    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Supports `aeads` (the device's preference order decides among them).
    pub fn with_aeads(mut self, aeads: Vec<AeadId>) -> Self {
        self.aeads = aeads;
        self
    }

    /// Uses `session` for the record layer.
    pub fn with_session(mut self, session: SessionConfig) -> Self {
        self.session = session;
        self
    }

    /// Issues and accepts resumption tickets under `resumption`.
    pub fn with_resumption(mut self, resumption: Arc<Resumption>) -> Self {
        self.resumption = Some(resumption);
        self
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("identity", &self.identity.public())
            .field("mode", &self.mode)
            .field("aeads", &self.aeads)
            .field("resumption", &self.resumption)
            .finish_non_exhaustive()
    }
}

/// An accepted device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerDevice {
    /// The device's verified identity, or `None` if it connected anonymously.
    pub identity: Option<PublicIdentity>,
    /// The name the authorizer gave it.
    pub name: String,
}

/// A suite code protocol.md §3.1 defines but this build leaves out is refused with
/// `suite_refused`, as one the server's mode does not accept; any other decode failure stays one.
fn refuse_missing_suite(e: DecodeError) -> HandshakeError {
    match e {
        DecodeError::UnknownSuite(code) => match SuiteId::from_u8(code) {
            Some(id) if id.suite().is_none() => HandshakeError::SuiteNotBuilt(id),
            _ => e.into(),
        },
        e => e.into(),
    }
}

/// What the server answers to a device's first message.
#[non_exhaustive]
pub enum FirstReply {
    /// A DeviceHello: send the ServerHello and wait for DeviceFinish.
    Full(Box<ExpectDeviceFinish>, Vec<u8>),
    /// A ResumeHello whose ticket passed every check: send the ResumeServerHello; the
    /// session is established.
    Resumed(Box<(Session, PeerDevice)>, Vec<u8>),
}

/// Takes a device's first message, either kind (protocol.md §6.2 step 1, §6.4): a DeviceHello
/// starts a full handshake ([`accept_hello`]); a ResumeHello is checked against
/// `config.resumption` at `wall_now` and, if accepted, establishes the session at once.
pub fn accept_first(
    config: &ServerConfig,
    frame: &[u8],
    rng: &mut dyn Random,
    now: Instant,
    wall_now: SystemTime,
) -> Result<FirstReply, HandshakeError> {
    if FrameType::of(frame)? == FrameType::ResumeHello {
        let (session, peer, reply) = super::resume::accept(config, frame, rng, now, wall_now)?;
        return Ok(FirstReply::Resumed(Box::new((session, peer)), reply));
    }
    let (expect, reply) = accept_hello(config, frame, rng)?;
    Ok(FirstReply::Full(Box::new(expect), reply))
}

/// Processes DeviceHello and builds ServerHello (protocol.md §6.2 steps 1–6).
///
/// Randomness is drawn in this order: the X25519 secret (32 bytes), then the KEM
/// encapsulation randomness (32 bytes for ML-KEM-768).
pub fn accept_hello(
    config: &ServerConfig,
    frame: &[u8],
    rng: &mut dyn Random,
) -> Result<(ExpectDeviceFinish, Vec<u8>), HandshakeError> {
    accept_hello_bound(config, &[], frame, rng)
}

/// Like [`accept_hello`], for a handshake bound to `context`, which enters the transcript
/// right after DeviceHello
/// ([`read_server_hello_bound`](super::device::ExpectServerHello::read_server_hello_bound)).
pub fn accept_hello_bound(
    config: &ServerConfig,
    context: &[u8],
    frame: &[u8],
    rng: &mut dyn Random,
) -> Result<(ExpectDeviceFinish, Vec<u8>), HandshakeError> {
    match FrameType::of(frame)? {
        FrameType::DeviceHello => {}
        other => return Err(HandshakeError::UnexpectedMessage(other)),
    }
    let hello = DeviceHello::decode(frame).map_err(refuse_missing_suite)?;
    // 2. The suite must be allowed by our mode.
    if !config.mode.allows(hello.suite) {
        return Err(HandshakeError::SuiteRefused {
            suite: hello.suite.name,
            mode: config.mode,
        });
    }
    // 3. AEAD: the device's most preferred one that we support.
    let aead = select_aead(&hello.aeads, &config.aeads).ok_or(HandshakeError::NoCommonAead)?;
    // 4. X25519 (an all-zero result is refused); 5. check the device's KEM key (FIPS 203
    // §7.2) and encapsulate to it.
    let x25519 = X25519Ephemeral::generate(rng)?;
    let ss_x25519 = x25519.agree(&hello.x25519)?;
    let (ciphertext, ss_kem) = match hello.suite.pq {
        Some(kem) => {
            let (ct, ss) = kem.encapsulate(hello.encaps_key, rng)?;
            (ct, Some(ss))
        }
        None => (Vec::new(), None),
    };
    let mut reply = ServerHello {
        suite: hello.suite,
        aead: aead as u8,
        x25519: *x25519.public(),
        ciphertext: &ciphertext,
        sealed_auth: &[],
    }
    .encode_prefix();
    // 6. TH1 = H(DeviceHello || ServerHello without sealed_auth).
    let mut transcript = Transcript::default();
    transcript.update(frame);
    transcript.update(context);
    transcript.update(&reply);
    let th1 = transcript.current();
    let hs = handshake_secret(&CombinerInput {
        th1: &th1,
        ss_kem: ss_kem.as_ref(),
        ss_x25519: &ss_x25519,
        x25519_device: &hello.x25519,
        x25519_server: x25519.public(),
        kem_ciphertext: &ciphertext,
        kem_encaps_key: hello.encaps_key,
    });
    // 6. sealed_auth = AEAD(server handshake key, nonce 0, aad TH1, server_pub || sig(TH1)).
    let mut auth = config.identity.public().0.to_vec();
    auth.extend_from_slice(&config.identity.sign(SERVER_SIGNATURE_CONTEXT, &th1));
    let prefix_len = reply.len();
    seal_handshake(&hs, HandshakeKey::Server, aead, &th1, &auth, &mut reply)?;
    if let Some(sealed) = reply.get(prefix_len..) {
        transcript.update(sealed);
    }
    Ok((
        ExpectDeviceFinish {
            config: config.clone(),
            suite: hello.suite,
            aead,
            hs,
            transcript,
        },
        reply,
    ))
}

/// Waiting for DeviceFinish.
pub struct ExpectDeviceFinish {
    config: ServerConfig,
    suite: &'static Suite,
    aead: AeadId,
    hs: Secret,
    transcript: Transcript,
}

impl ExpectDeviceFinish {
    /// The suite the device chose.
    pub fn suite(&self) -> &'static Suite {
        self.suite
    }

    /// Processes DeviceFinish: opens and verifies the device's authentication, asks the
    /// authorizer, and on success returns the session (protocol.md §6.2 step 3).
    ///
    /// A failure leaves this state as it was, so a transport on which anyone may inject
    /// frames (MQTT, docs/mqtt.md §4) can drop a forged DeviceFinish and wait for the real one.
    pub fn read_device_finish(
        &self,
        frame: &[u8],
        now: Instant,
    ) -> Result<(Session, PeerDevice), HandshakeError> {
        let (session, peer) = self.read_device_finish_keyed(frame, now)?;
        Ok((session, peer?))
    }

    /// Like [`read_device_finish`](Self::read_device_finish), but once the device's
    /// authentication verified the session is returned even if the authorizer refuses the
    /// device (the inner error), so that the refusal can be sent in an authenticated Close
    /// record (docs/mqtt.md §4) rather than a plaintext alert anyone could forge.
    pub fn read_device_finish_keyed(
        &self,
        frame: &[u8],
        now: Instant,
    ) -> Result<(Session, Result<PeerDevice, HandshakeError>), HandshakeError> {
        match FrameType::of(frame)? {
            FrameType::DeviceFinish => {}
            FrameType::Alert => {
                return Err(HandshakeError::PeerAlert(crate::msgs::decode_alert(frame)?))
            }
            other => return Err(HandshakeError::UnexpectedMessage(other)),
        }
        let sealed = decode_device_finish(frame)?;
        // 3a. TH2 = H(DeviceHello || ServerHello); open with the device handshake key.
        let th2 = self.transcript.current();
        let plain = open_handshake(&self.hs, HandshakeKey::Device, self.aead, &th2, sealed)
            .map_err(|_| HandshakeError::DeviceAuthFailed)?;
        // 3b. Verify the device's signature over TH2.
        let verify_device = |public: [u8; 32], signature: &[u8; 64]| {
            let id = PublicIdentity(public);
            id.verify(DEVICE_SIGNATURE_CONTEXT, &th2, signature)
                .map_err(|_| HandshakeError::DeviceAuthFailed)?;
            Ok::<_, HandshakeError>(id)
        };
        let (identity, token) = match DeviceAuth::decode(&plain)? {
            DeviceAuth::Anonymous => (None, None),
            DeviceAuth::Ed25519 { public, signature } => {
                (Some(verify_device(public, &signature)?), None)
            }
            // 3b'. Enrollment (docs/registry.md §5): the token key signs TH2 || device key.
            DeviceAuth::Enroll {
                public,
                signature,
                token,
                proof,
            } => {
                let id = verify_device(public, &signature)?;
                let token = PublicIdentity(token);
                token
                    .verify(ENROLLMENT_PROOF_CONTEXT, &[th2, public].concat(), &proof)
                    .map_err(|_| HandshakeError::EnrollmentProofFailed {
                        device: id.fingerprint(),
                    })?;
                (Some(id), Some(token))
            }
        };
        // 3c. Authorization.
        let authorizer = &self.config.authorizer;
        let name = match (&identity, &token) {
            (Some(id), Some(token)) => authorizer.enroll(id, token),
            _ => authorizer.authorize(identity.as_ref()),
        }
        .map_err(|code| HandshakeError::DeviceRefused {
            device: identity
                .as_ref()
                .map_or_else(|| "anonymous".into(), |i| i.fingerprint()),
            code,
        });
        // 3d. TH3 and traffic secrets.
        let mut transcript = self.transcript.clone();
        transcript.update(frame);
        let secrets = session_secrets(&self.hs, &transcript.current());
        let session = Session::new(
            Role::Server,
            SessionKeys {
                suite: self.suite,
                aead: self.aead,
                send: secrets.s2d,
                recv: secrets.d2s,
                psk: secrets.psk,
                resumed: false,
                local: None,
            },
            identity,
            &self.config.session,
            now,
        );
        Ok((session, name.map(|name| PeerDevice { identity, name })))
    }
}
