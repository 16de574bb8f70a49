//! The membership handshake, pure: what each side sends and how the other checks it. The
//! transcript is the TLS session's exported keying material, so a proof is worth nothing on
//! any other connection.

use std::collections::BTreeSet;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use ring::hmac;

use crate::{PeerKey, UplinkError};

const VERSION: u8 = 1;
const FIXED_LEN: usize = 1 + 32 + 32 + 64;
const MAX_SOFTWARE_BYTES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Agent,
    Manager,
}

impl Role {
    /// Domain separation: an agent's proof can never be reflected back as a manager's.
    fn label(self) -> &'static [u8] {
        match self {
            Role::Agent => b"murmur/uplink/v1/agent",
            Role::Manager => b"murmur/uplink/v1/manager",
        }
    }
}

fn message(role: Role, transcript: &[u8; 32]) -> Vec<u8> {
    [role.label(), transcript.as_slice()].concat()
}

/// One side's claim: its ed25519 key, a MAC with the swarm key (zeros when the swarm has
/// none), a signature with its key, and the software it runs (for the dashboard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub key: PeerKey,
    pub proof: [u8; 32],
    pub signature: [u8; 64],
    pub software: String,
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_LEN + self.software.len());
        out.push(VERSION);
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.proof);
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(self.software.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, UplinkError> {
        if bytes.len() < FIXED_LEN || bytes.len() > FIXED_LEN + MAX_SOFTWARE_BYTES {
            return Err(UplinkError::Malformed(format!("hello of {} bytes", bytes.len())));
        }
        if bytes[0] != VERSION {
            return Err(UplinkError::Malformed(format!(
                "uplink handshake version {} (this side speaks {VERSION})",
                bytes[0]
            )));
        }
        let software = std::str::from_utf8(&bytes[FIXED_LEN..])
            .map_err(|_| UplinkError::Malformed("software name is not UTF-8".into()))?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[1..33]);
        let mut proof = [0u8; 32];
        proof.copy_from_slice(&bytes[33..65]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&bytes[65..129]);
        Ok(Self {
            key,
            proof,
            signature,
            software: software.to_owned(),
        })
    }
}

/// What one side holds: its signing key and the swarm key, if the swarm has one.
#[derive(Clone)]
pub struct Credentials {
    signing: SigningKey,
    swarm_key: Option<[u8; 32]>,
}

impl Credentials {
    pub fn new(signing: SigningKey, swarm_key: Option<[u8; 32]>) -> Self {
        Self { signing, swarm_key }
    }

    pub fn public_key(&self) -> PeerKey {
        self.signing.verifying_key().to_bytes()
    }

    pub fn hello(&self, role: Role, transcript: &[u8; 32], software: &str) -> Hello {
        let message = message(role, transcript);
        let proof = match &self.swarm_key {
            Some(key) => {
                let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), &message);
                let mut proof = [0u8; 32];
                proof.copy_from_slice(tag.as_ref());
                proof
            }
            None => [0u8; 32],
        };
        let mut software = software.to_owned();
        software.truncate(MAX_SOFTWARE_BYTES);
        while !software.is_char_boundary(software.len()) {
            software.pop();
        }
        Hello {
            key: self.public_key(),
            proof,
            signature: self.signing.sign(&message).to_bytes(),
            software,
        }
    }

    /// How this side checks the other: the same swarm key, no allow-list (the manager's key is
    /// pinned by the caller).
    pub fn policy(&self) -> MembershipPolicy {
        MembershipPolicy {
            swarm_key: self.swarm_key,
            allow: BTreeSet::new(),
        }
    }
}

/// Who may connect: holders of the swarm key, and (when not empty) only these keys.
#[derive(Debug, Clone, Default)]
pub struct MembershipPolicy {
    pub swarm_key: Option<[u8; 32]>,
    pub allow: BTreeSet<PeerKey>,
}

impl MembershipPolicy {
    pub fn verify(&self, hello: &Hello, role: Role, transcript: &[u8; 32]) -> Result<(), UplinkError> {
        let message = message(role, transcript);
        let key =
            VerifyingKey::from_bytes(&hello.key).map_err(|_| UplinkError::BadProof("a valid ed25519 key"))?;
        key.verify(&message, &Signature::from_bytes(&hello.signature))
            .map_err(|_| UplinkError::BadProof("possession of its key"))?;
        if let Some(swarm_key) = &self.swarm_key {
            hmac::verify(
                &hmac::Key::new(hmac::HMAC_SHA256, swarm_key),
                &message,
                &hello.proof,
            )
            .map_err(|_| UplinkError::BadProof("knowledge of the swarm key"))?;
        }
        if !self.allow.is_empty() && !self.allow.contains(&hello.key) {
            return Err(UplinkError::BadProof("a key on the allow-list"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(seed: u8, swarm: Option<[u8; 32]>) -> Credentials {
        Credentials::new(SigningKey::from_bytes(&[seed; 32]), swarm)
    }

    #[test]
    fn proofs_hold_only_for_the_same_session_role_and_swarm() {
        let session = [7u8; 32];
        let agent = creds(1, Some([9; 32]));
        let hello = agent.hello(Role::Agent, &session, "murmur-agent/0.1");
        let decoded = Hello::decode(&hello.encode()).unwrap();
        assert_eq!(decoded, hello);
        let policy = creds(2, Some([9; 32])).policy();
        policy.verify(&decoded, Role::Agent, &session).unwrap();

        // Replayed on another session, reflected as the other role, or from another swarm.
        assert!(policy.verify(&decoded, Role::Agent, &[8; 32]).is_err());
        assert!(policy.verify(&decoded, Role::Manager, &session).is_err());
        let outsider = creds(3, Some([5; 32])).hello(Role::Agent, &session, "x");
        assert!(matches!(
            policy.verify(&outsider, Role::Agent, &session),
            Err(UplinkError::BadProof("knowledge of the swarm key"))
        ));
        // A claimed key without its private half.
        let mut forged = hello.clone();
        forged.key = creds(4, None).public_key();
        assert!(policy.verify(&forged, Role::Agent, &session).is_err());

        // Allow-lists apply on top.
        let mut strict = policy.clone();
        strict.allow.insert(creds(5, None).public_key());
        assert!(strict.verify(&hello, Role::Agent, &session).is_err());
        strict.allow.insert(agent.public_key());
        strict.verify(&hello, Role::Agent, &session).unwrap();
    }

    #[test]
    fn malformed_hellos_are_errors() {
        let hello = creds(1, None).hello(Role::Agent, &[0; 32], "a");
        let bytes = hello.encode();
        assert!(Hello::decode(&bytes[..100]).is_err());
        let mut wrong_version = bytes.clone();
        wrong_version[0] = 2;
        assert!(Hello::decode(&wrong_version).is_err());
        let mut bad_utf8 = bytes.clone();
        bad_utf8.push(0xff);
        assert!(Hello::decode(&bad_utf8).is_err());
        assert!(Hello::decode(&vec![1u8; FIXED_LEN + 300]).is_err());
    }
}
