//! TLS 1.3 configs for Outpost's QUIC connections: both ends authenticate with RFC 7250 raw Ed25519 public keys
//! (no certificates, no CAs) on the one crypto provider, aws-lc-rs.
//!
//! The agent pins the hub's key from its config; the hub accepts any well-formed Ed25519 client key at the TLS
//! layer and checks it against its device allow-list right after the handshake ([`server_config`]). Every
//! handshake is a full one: no tickets, no resumption, no 0-RTT. The server's QUIC stateless-reset key comes from
//! its identity too ([`reset_key`]).

use std::sync::Arc;

use outpost_attestation::identity::{Identity, PublicKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, verify_tls13_signature_with_raw_key};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme};

/// The ALPN protocol both configs offer and require.
pub const ALPN: &[u8] = outpost_shared::wire::ALPN;

/// rustls refused the key or the configuration (an API misuse, not a peer fault).
#[derive(Debug, thiserror::Error)]
#[error("TLS configuration: {0}")]
pub struct TlsError(#[from] pub rustls::Error);

/// The key a TLS peer presented: exactly one raw Ed25519 public key, as rustls (and quinn's
/// `Connection::peer_identity`) report it.
pub fn peer_key(certs: &[CertificateDer<'_>]) -> Option<PublicKey> {
    match certs {
        [one] => PublicKey::from_spki(one.as_ref()),
        _ => None,
    }
}

/// The key as rustls presents it: the raw public key plus its signer.
fn certified_key(identity: &Identity, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.to_pkcs8_der()));
    let signer = provider.key_provider.load_private_key(der)?;
    let spki = CertificateDer::from(identity.public_key().to_spki());
    Ok(Arc::new(CertifiedKey::new(vec![spki], signer)))
}

/// The hub's (or a site node's) TLS config: TLS 1.3 only, aws-lc-rs, ALPN `outpost/1`, its raw public key, 0-RTT
/// and session resumption off, a client key required.
///
/// Any well-formed Ed25519 client key passes the handshake (its possession is proven by the TLS 1.3
/// CertificateVerify signature); the server reads it with [`peer_key`] and closes the connection with a clear
/// reason if the device is unknown or revoked. The allow-list is deliberately not checked in the verifier: it
/// lives in the hub's store and changes at runtime, and a close reason tells the device more than a TLS alert.
pub fn server_config(identity: &Identity) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = certified_key(identity, &provider)?;
    let verifier = Arc::new(AnyEd25519Client { algorithms: provider.signature_verification_algorithms });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(rustls::server::AlwaysResolvesServerRawPublicKeys::new(key)));
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.max_early_data_size = 0;
    // No tickets and no session cache: every connection proves its key afresh against the current allow-list.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(config)
}

/// A device's TLS config: TLS 1.3 only, aws-lc-rs, ALPN `outpost/1`, its raw public key as client credential,
/// 0-RTT and resumption off, and the server accepted only if it proves possession of `hub`.
pub fn client_config(identity: &Identity, hub: PublicKey) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = certified_key(identity, &provider)?;
    let verifier = Arc::new(PinnedServer { hub, algorithms: provider.signature_verification_algorithms });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(rustls::client::AlwaysResolvesClientRawPublicKeys::new(key)));
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_early_data = false;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// The error reported for a peer key that is not what we want, with both keys in the message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct KeyRefused(String);

fn refuse(message: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(KeyRefused(message)))))
}

fn verify_ed25519(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(rustls::Error::PeerMisbehaved(rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme));
    }
    verify_tls13_signature_with_raw_key(message, &SubjectPublicKeyInfoDer::from(cert.as_ref()), dss, algorithms)
}

fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic))
}

/// The agent's check of the hub: its raw public key must be the pinned one.
#[derive(Debug)]
struct PinnedServer {
    hub: PublicKey,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match PublicKey::from_spki(end_entity.as_ref()) {
            Some(key) if key == self.hub && intermediates.is_empty() => Ok(ServerCertVerified::assertion()),
            Some(key) => Err(refuse(format!("hub presented key {key}, pinned key is {}", self.hub))),
            None => Err(refuse("hub did not present a raw Ed25519 public key".into())),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_ed25519(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The hub's check of a device at the TLS layer: any raw Ed25519 key whose possession is proven.
#[derive(Debug)]
struct AnyEd25519Client {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyEd25519Client {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match PublicKey::from_spki(end_entity.as_ref()) {
            Some(_) if intermediates.is_empty() => Ok(ClientCertVerified::assertion()),
            _ => Err(refuse("device did not present a single raw Ed25519 public key".into())),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_ed25519(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// Domain tag of the stateless-reset key a server derives from its identity.
const RESET_KEY_DOMAIN: &[u8] = b"outpost/1 quic stateless reset key";

/// The key behind the server's QUIC stateless resets, derived from its identity (an Ed25519 signature is
/// deterministic, and secret without the private key): the same across restarts, so a restarted hub answers
/// packets of connections it lost with a reset the device recognises and drops the dead connection at once,
/// rather than each device waiting out its idle timeout with every request stalling.
pub fn reset_key(identity: &Identity) -> aws_lc_rs::hmac::Key {
    aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &identity.sign(RESET_KEY_DOMAIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_spki_matches_what_rustls_derives_from_the_secret() {
        let id = Identity::from_seed([7; 32]);
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let ck = certified_key(&id, &provider).unwrap();
        assert_eq!(ck.key.public_key().unwrap().as_ref(), &id.public_key().to_spki()[..]);
    }

    #[test]
    fn configs_are_tls13_only_with_alpn_and_no_early_data() {
        let id = Identity::from_seed([1; 32]);
        let server = server_config(&id).unwrap();
        assert_eq!(server.alpn_protocols, vec![ALPN.to_vec()]);
        assert_eq!(server.max_early_data_size, 0);
        let client = client_config(&id, PublicKey([2; 32])).unwrap();
        assert_eq!(client.alpn_protocols, vec![ALPN.to_vec()]);
        assert!(!client.enable_early_data);
    }

    #[test]
    fn a_peer_with_other_than_one_raw_key_has_no_key() {
        let key = Identity::from_seed([3; 32]).public_key();
        let one = CertificateDer::from(key.to_spki());
        assert_eq!(peer_key(std::slice::from_ref(&one)), Some(key));
        assert_eq!(peer_key(&[one.clone(), one]), None);
        assert_eq!(peer_key(&[]), None);
        assert_eq!(peer_key(&[CertificateDer::from(vec![0u8; 44])]), None);
    }
}
