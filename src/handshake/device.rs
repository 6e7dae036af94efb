//! The device (initiator) side of the handshake (protocol.md §6.1).

use super::key_schedule::{
    handshake_secret, open_handshake, seal_handshake, session_secrets, CombinerInput, HandshakeKey,
};
use super::{
    HandshakeError, DEVICE_SIGNATURE_CONTEXT, ENROLLMENT_PROOF_CONTEXT, SERVER_SIGNATURE_CONTEXT,
};
use crate::codec::Reader;
use crate::crypto::aead::AeadId;
use crate::crypto::identity::{IdentityKey, PublicIdentity};
use crate::crypto::kdf::{Secret, Transcript};
use crate::crypto::kem::{PqDecapsKey, Suite, X25519Ephemeral, X25519_MLKEM768};
use crate::crypto::random::Random;
use crate::msgs::{decode_alert, DeviceAuth, DeviceHello, FrameType, ServerHello};
use crate::session::{Role, Session, SessionConfig, SessionKeys};
use std::sync::Arc;
use std::time::Instant;

/// How a device connects: [`DeviceConfig::default`] (hybrid, anonymous), then the `with_`
/// setters, e.g. `DeviceConfig::default().with_identity(key)`.
#[derive(Clone)]
#[non_exhaustive]
pub struct DeviceConfig {
    /// The one suite offered.
    pub suite: &'static Suite,
    /// AEADs offered, most preferred first.
    pub aeads: Vec<AeadId>,
    /// The device's identity; `None` connects anonymously.
    pub identity: Option<Arc<IdentityKey>>,
    /// An enrollment token's key (docs/registry.md §5): the device asks to be enrolled with
    /// `identity` during this handshake. Needs `identity`.
    pub enrollment: Option<Arc<IdentityKey>>,
    /// Record-layer parameters.
    pub session: SessionConfig,
}

impl Default for DeviceConfig {
    /// Hybrid X25519 + ML-KEM-768, AEADs ordered for this CPU, no identity.
    fn default() -> Self {
        Self {
            suite: &X25519_MLKEM768,
            aeads: AeadId::default_preference(),
            identity: None,
            enrollment: None,
            session: SessionConfig::default(),
        }
    }
}

impl DeviceConfig {
    /// Offers `suite` (the one suite a device offers).
    pub fn with_suite(mut self, suite: &'static Suite) -> Self {
        self.suite = suite;
        self
    }

    /// Offers `aeads`, most preferred first.
    pub fn with_aeads(mut self, aeads: Vec<AeadId>) -> Self {
        self.aeads = aeads;
        self
    }

    /// Presents `identity` (a key, or `None` to connect anonymously).
    pub fn with_identity(mut self, identity: impl Into<Option<Arc<IdentityKey>>>) -> Self {
        self.identity = identity.into();
        self
    }

    /// Asks to be enrolled with an enrollment token's key (needs an identity).
    pub fn with_enrollment(mut self, token: impl Into<Option<Arc<IdentityKey>>>) -> Self {
        self.enrollment = token.into();
        self
    }

    /// Uses `session` for the record layer.
    pub fn with_session(mut self, session: SessionConfig) -> Self {
        self.session = session;
        self
    }
}

impl std::fmt::Debug for DeviceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceConfig")
            .field("suite", &self.suite.name)
            .field("aeads", &self.aeads)
            .field("identity", &self.identity.as_ref().map(|i| i.public()))
            .field("enrollment", &self.enrollment.as_ref().map(|t| t.public()))
            .finish_non_exhaustive()
    }
}

/// Starts a handshake: returns the state awaiting ServerHello and the DeviceHello frame.
///
/// protocol.md §6.1 step 1: draw the X25519 secret (32 bytes), then the KEM key-generation
/// seed (64 bytes for ML-KEM-768); send DeviceHello.
pub fn start(
    config: &DeviceConfig,
    rng: &mut dyn Random,
) -> Result<(ExpectServerHello, Vec<u8>), HandshakeError> {
    if config.aeads.is_empty() || config.aeads.len() > crate::msgs::MAX_AEAD_OFFERS {
        return Err(HandshakeError::AeadOfferCount(config.aeads.len()));
    }
    if config.enrollment.is_some() && config.identity.is_none() {
        return Err(HandshakeError::EnrollmentWithoutIdentity);
    }
    let x25519 = X25519Ephemeral::generate(rng)?;
    let (pq, encaps_key) = match config.suite.pq {
        Some(kem) => {
            let (dk, ek) = kem.generate(rng)?;
            (Some(dk), ek)
        }
        None => (None, Vec::new()),
    };
    let hello = DeviceHello {
        suite: config.suite,
        aeads: config.aeads.clone(),
        x25519: *x25519.public(),
        encaps_key: &encaps_key,
    }
    .encode();
    let mut transcript = Transcript::default();
    transcript.update(&hello);
    let state = ExpectServerHello {
        config: config.clone(),
        x25519,
        pq,
        encaps_key,
        transcript,
    };
    Ok((state, hello))
}

/// Waiting for ServerHello.
pub struct ExpectServerHello {
    config: DeviceConfig,
    x25519: X25519Ephemeral,
    pq: Option<Box<dyn PqDecapsKey>>,
    encaps_key: Vec<u8>,
    transcript: Transcript,
}

impl ExpectServerHello {
    /// Processes ServerHello: checks the selection, completes the key exchange, and verifies
    /// the server's signature (protocol.md §6.1 step 2). The caller must then decide whether
    /// the returned server identity is trusted before [`ServerAuthenticated::finish`].
    ///
    /// A failure leaves this state as it was, so a transport on which anyone may inject
    /// frames (MQTT, docs/mqtt.md §4) drops the bad one and tries the next. Once a ServerHello
    /// is accepted, the caller drops this state: its ephemeral keys serve one session only.
    pub fn read_server_hello(&self, frame: &[u8]) -> Result<ServerAuthenticated, HandshakeError> {
        self.read_server_hello_bound(&[], frame)
    }

    /// Like [`read_server_hello`](Self::read_server_hello), for a handshake bound to
    /// `context`: it enters the transcript right after DeviceHello (protocol.md §11.7: a
    /// device-to-device session binds both peers' names this way). Both ends must use the same
    /// context, or the server's authentication does not verify.
    pub fn read_server_hello_bound(
        &self,
        context: &[u8],
        frame: &[u8],
    ) -> Result<ServerAuthenticated, HandshakeError> {
        match FrameType::of(frame)? {
            FrameType::ServerHello => {}
            FrameType::Alert => return Err(HandshakeError::PeerAlert(decode_alert(frame)?)),
            other => return Err(HandshakeError::UnexpectedMessage(other)),
        }
        let hello = ServerHello::decode(frame)?;
        // 2a. The selection must be what we offered: anything else is a downgrade.
        if hello.suite != self.config.suite {
            return Err(HandshakeError::Downgrade {
                offered: self.config.suite.name.to_string(),
                selected: hello.suite.name.to_string(),
            });
        }
        let aead = AeadId::from_u8(hello.aead)
            .filter(|a| self.config.aeads.contains(a))
            .ok_or_else(|| HandshakeError::Downgrade {
                offered: format!("{:?}", self.config.aeads),
                selected: format!("AEAD {:#04x}", hello.aead),
            })?;
        // 2b. Shared secrets.
        let ss_x25519 = self.x25519.agree(&hello.x25519)?;
        let ss_kem = match &self.pq {
            Some(dk) => Some(dk.decapsulate(hello.ciphertext)?),
            None => None,
        };
        // 2c. TH1 = H(DeviceHello || ServerHello without sealed_auth).
        let prefix = frame
            .get(..hello.prefix_len())
            .ok_or(HandshakeError::ServerAuthFailed)?;
        let mut transcript = self.transcript.clone();
        transcript.update(context);
        transcript.update(prefix);
        let th1 = transcript.current();
        let hs = handshake_secret(&CombinerInput {
            th1: &th1,
            ss_kem: ss_kem.as_ref(),
            ss_x25519: &ss_x25519,
            x25519_device: self.x25519.public(),
            x25519_server: &hello.x25519,
            kem_ciphertext: hello.ciphertext,
            kem_encaps_key: &self.encaps_key,
        });
        // 2d. Open the server's authentication and verify its signature over TH1.
        let plain = open_handshake(&hs, HandshakeKey::Server, aead, &th1, hello.sealed_auth)
            .map_err(|_| HandshakeError::ServerAuthFailed)?;
        let mut r = Reader::new(&plain);
        let server = PublicIdentity(r.array("server public key")?);
        let signature = r.array("server signature")?;
        r.finish()?;
        server
            .verify(SERVER_SIGNATURE_CONTEXT, &th1, &signature)
            .map_err(|_| HandshakeError::ServerAuthFailed)?;
        transcript.update(hello.sealed_auth);
        Ok(ServerAuthenticated {
            config: self.config.clone(),
            suite: hello.suite,
            aead,
            server,
            hs,
            transcript,
        })
    }
}

/// The server proved possession of `server_identity()`'s key. The caller checks that key
/// against its pin or known-servers file, then calls [`finish`](Self::finish).
pub struct ServerAuthenticated {
    config: DeviceConfig,
    suite: &'static Suite,
    aead: AeadId,
    server: PublicIdentity,
    hs: Secret,
    transcript: Transcript,
}

impl ServerAuthenticated {
    /// The server's verified long-term identity.
    pub fn server_identity(&self) -> &PublicIdentity {
        &self.server
    }

    /// The AEAD the server selected.
    pub fn aead(&self) -> AeadId {
        self.aead
    }

    /// TH2 = H(DeviceHello || ServerHello): what the device's signature (and an enrollment
    /// proof) covers. For devices whose keys live outside this process (see
    /// [`finish_with`](Self::finish_with)).
    pub fn transcript_hash(&self) -> [u8; 32] {
        self.transcript.current()
    }

    /// Builds DeviceFinish and the established session (protocol.md §6.1 step 3). The device
    /// may send records right behind the returned frame.
    pub fn finish(self, now: Instant) -> Result<(Session, Vec<u8>), HandshakeError> {
        // 3a. TH2 = H(DeviceHello || ServerHello).
        let th2 = self.transcript_hash();
        let auth = match (&self.config.identity, &self.config.enrollment) {
            (Some(id), token) => {
                let public = id.public().0;
                let signature = id.sign(DEVICE_SIGNATURE_CONTEXT, &th2);
                match token {
                    // docs/registry.md §5: proof = Sign_token(context || TH2 || device key).
                    Some(token) => DeviceAuth::Enroll {
                        public,
                        signature,
                        token: token.public().0,
                        proof: token.sign(ENROLLMENT_PROOF_CONTEXT, &[th2, public].concat()),
                    },
                    None => DeviceAuth::Ed25519 { public, signature },
                }
            }
            (None, _) => DeviceAuth::Anonymous,
        };
        self.finish_with(&auth, now)
    }

    /// Like [`finish`](Self::finish), with a device authentication built by the caller over
    /// [`transcript_hash`](Self::transcript_hash) (e.g. signed by a secure element).
    pub fn finish_with(
        self,
        auth: &DeviceAuth,
        now: Instant,
    ) -> Result<(Session, Vec<u8>), HandshakeError> {
        let th2 = self.transcript_hash();
        let plain = zeroize::Zeroizing::new(auth.encode());
        let mut finish = vec![FrameType::DeviceFinish as u8];
        seal_handshake(
            &self.hs,
            HandshakeKey::Device,
            self.aead,
            &th2,
            &plain,
            &mut finish,
        )?;
        // 3b. TH3 = H(DeviceHello || ServerHello || DeviceFinish); traffic secrets.
        let mut transcript = self.transcript;
        transcript.update(&finish);
        let secrets = session_secrets(&self.hs, &transcript.current());
        let session = Session::new(
            Role::Device,
            SessionKeys {
                suite: self.suite,
                aead: self.aead,
                send: secrets.d2s,
                recv: secrets.s2d,
                psk: secrets.psk,
                resumed: false,
                local: self.config.identity.as_ref().map(|i| i.public()),
            },
            Some(self.server),
            &self.config.session,
            now,
        );
        Ok((session, finish))
    }
}
