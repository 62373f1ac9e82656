//! A rogue peer for adversarial tests: a client that speaks the peer API (and the controller's
//! `Attest`) directly, with whatever TLS identity, attestation, grant and batches a test hands
//! it, so a destination lockbox can be fed deliveries the real source would never build.
//!
//! It is a "real" lockbox as far as credentials go: it holds a certificate from a CA (the
//! cluster's, or another), its own fresh Ed25519 and X25519 key pairs, and it can ask a real
//! controller to attest them. Everything it sends goes through the real crypto of
//! `lockbox-crypto` ([`lockbox_crypto::seal_batch`], [`lockbox_crypto::sign_batch`]), so a
//! test changes exactly one thing at a time.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use lockbox_crypto::{
    BatchContext, HPKE_KEM_X25519, HpkeIdentity, KeyToWrap, SecretBytes, SigningIdentity,
    attest_request_message, decode_attestation_body, decode_grant_body, seal_batch,
    sign_attest_request, sign_batch,
};
use lockbox_proto::v1 as pb;
use lockbox_proto::v1::controller_client::ControllerClient;
use lockbox_proto::v1::peer_client::PeerClient;
use lockbox_tls::{ClientTls, Expect, Role, TlsFiles};
use tonic::transport::Channel;

use crate::cluster::TRUST_DOMAIN;

/// How long one rogue call (connect + RPC) may take.
pub const ROGUE_TIMEOUT: Duration = Duration::from_secs(30);

/// A client holding a TLS identity and its own node key pairs.
pub struct Rogue {
    rt: tokio::runtime::Runtime,
    tls: TlsFiles,
    /// The node name it claims (the name in its certificate when that is a lockbox one).
    pub node: String,
    signing: SigningIdentity,
    hpke: HpkeIdentity,
}

impl std::fmt::Debug for Rogue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rogue")
            .field("node", &self.node)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// One key version the rogue sends: a key id (a UUID), a version and its plaintext material.
#[derive(Debug, Clone)]
pub struct RogueKey {
    /// The key id.
    pub key_id: String,
    /// The key version (1 unless a test says otherwise).
    pub version: u32,
    /// The plaintext material (32 or 64 bytes for a key a lockbox accepts).
    pub material: Vec<u8>,
}

impl RogueKey {
    /// A key with a fresh random UUID and 32 random bytes.
    pub fn random() -> RogueKey {
        RogueKey {
            key_id: random_uuid(),
            version: 1,
            material: lockbox_crypto::random_array::<32>().unwrap().to_vec(),
        }
    }

    /// The same key id with other random material (for replays).
    pub fn with_other_material(&self) -> RogueKey {
        RogueKey {
            key_id: self.key_id.clone(),
            version: self.version,
            material: lockbox_crypto::random_array::<32>().unwrap().to_vec(),
        }
    }
}

/// A random version-4 UUID in the lowercase hyphenated form lockboxd uses.
pub fn random_uuid() -> String {
    let mut b = lockbox_crypto::random_array::<16>().unwrap();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// What a refused call left: the gRPC code and message, or a transport failure's whole chain.
#[derive(Debug, Clone)]
pub struct RogueError {
    /// The gRPC code (`Unknown` for transport failures, which tonic reports so).
    pub code: tonic::Code,
    /// The status message (or the connect error).
    pub message: String,
    /// The status or error with its whole source chain (alerts, I/O causes).
    pub chain: String,
}

impl std::fmt::Display for RogueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {} [{}]", self.code, self.message, self.chain)
    }
}

impl From<tonic::Status> for RogueError {
    fn from(s: tonic::Status) -> Self {
        RogueError {
            code: s.code(),
            message: s.message().to_string(),
            chain: lockbox_tls::error_chain(&s),
        }
    }
}

fn connect_error(e: impl std::error::Error) -> RogueError {
    RogueError {
        code: tonic::Code::Unavailable,
        message: e.to_string(),
        chain: lockbox_tls::error_chain(&e),
    }
}

impl Rogue {
    /// A rogue with these TLS files, claiming `node`, with fresh key pairs.
    pub fn new(tls: TlsFiles, node: &str) -> Rogue {
        lockbox_tls::install_default_provider();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        Rogue {
            rt,
            tls,
            node: node.into(),
            signing: SigningIdentity::generate().unwrap(),
            hpke: HpkeIdentity::generate().unwrap(),
        }
    }

    /// Asks the controller at `url` to vouch for this rogue's TLS identity (as a sealed
    /// lockbox does before asking its peers for help).
    pub fn vouch(&self, controller_url: &str) -> Result<pb::SignedVouch, RogueError> {
        self.run(async {
            let ch = self
                .channel(controller_url, Expect::role(Role::Controller))
                .await?;
            Ok(ControllerClient::new(ch)
                .vouch(pb::VouchRequest {})
                .await?
                .into_inner())
        })
    }

    /// `Peer.AssistKey` of the lockbox `peer` at `url`.
    pub fn assist_key(&self, url: &str, peer: &str) -> Result<pb::AssistKeyResponse, RogueError> {
        self.run(async {
            let ch = self
                .channel(url, Expect::named(Role::Lockbox, peer))
                .await?;
            Ok(PeerClient::new(ch)
                .assist_key(pb::AssistKeyRequest {})
                .await?
                .into_inner())
        })
    }

    /// `Peer.Assist` of the lockbox `peer` at `url`, with whatever request the test built.
    pub fn assist(
        &self,
        url: &str,
        peer: &str,
        request: pb::AssistRequest,
    ) -> Result<pb::AssistResponse, RogueError> {
        self.run(async {
            let ch = self
                .channel(url, Expect::named(Role::Lockbox, peer))
                .await?;
            Ok(PeerClient::new(ch).assist(request).await?.into_inner())
        })
    }

    /// Its Ed25519 public key.
    pub fn signing_public_key(&self) -> [u8; 32] {
        self.signing.public_key()
    }

    fn run<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, RogueError>>,
    ) -> Result<T, RogueError> {
        self.rt.block_on(async {
            match tokio::time::timeout(ROGUE_TIMEOUT, f).await {
                Ok(r) => r,
                Err(_) => panic!("rogue call did not finish within {ROGUE_TIMEOUT:?}"),
            }
        })
    }

    async fn channel(&self, url: &str, expect: Expect) -> Result<Channel, RogueError> {
        let tls = ClientTls::load(&self.tls).map_err(connect_error)?;
        tls.connect(url, expect).await.map_err(connect_error)
    }

    /// Asks the controller at `url` to attest this rogue's key pairs, with a valid proof of
    /// possession bound to its TLS key, exactly as lockboxd does.
    pub fn attest(&self, controller_url: &str) -> Result<pb::SignedAttestation, RogueError> {
        self.attest_at(controller_url, 0, &[])
    }

    /// [`Rogue::attest`] reporting an audit position (`AttestRequest.audit_checkpoint_seq` and
    /// `_hash`; 0 and empty report none, as a node that predates them).
    pub fn attest_at(
        &self,
        controller_url: &str,
        audit_seq: u64,
        audit_hash: &[u8],
    ) -> Result<pb::SignedAttestation, RogueError> {
        let (_, spki) = lockbox_tls::load_own_cert(&self.tls).unwrap();
        let hpke_pub = self.hpke.public_key();
        let signing_pub = self.signing.public_key();
        let msg = attest_request_message(
            &self.node,
            TRUST_DOMAIN,
            HPKE_KEM_X25519,
            &hpke_pub,
            &signing_pub,
            &spki,
            None,
        );
        let request = pb::AttestRequest {
            hpke_public_key: hpke_pub.to_vec(),
            hpke_kem_id: HPKE_KEM_X25519,
            signing_public_key: signing_pub.to_vec(),
            proof: sign_attest_request(&self.signing, &msg),
            assist_public_key: Vec::new(),
            audit_checkpoint_seq: audit_seq,
            audit_checkpoint_hash: audit_hash.to_vec(),
        };
        self.run(async {
            let ch = self
                .channel(controller_url, Expect::role(Role::Controller))
                .await?;
            Ok(ControllerClient::new(ch)
                .attest(request)
                .await?
                .into_inner())
        })
    }

    /// `Peer.Identity` of the lockbox `peer` at `url`.
    pub fn identity(&self, url: &str, peer: &str) -> Result<pb::SignedAttestation, RogueError> {
        self.run(async {
            let ch = self
                .channel(url, Expect::named(Role::Lockbox, peer))
                .await?;
            Ok(PeerClient::new(ch)
                .identity(pb::IdentityRequest {})
                .await?
                .into_inner())
        })
    }

    /// `Peer.Identity` of `peer` at `url` with a request of `bytes` bytes (padding in a field
    /// the message does not have): what a caller does to make a server buffer.
    pub fn oversized_identity(
        &self,
        url: &str,
        peer: &str,
        bytes: usize,
    ) -> Result<(), RogueError> {
        self.oversized_call(
            url,
            Expect::named(Role::Lockbox, peer),
            "/lockbox.v1.Peer/Identity",
            bytes,
        )
    }

    /// A call of `path` at `url` whose request is `bytes` bytes of padding (a field no message
    /// has, so a server that reads it all decodes it as an empty request).
    pub fn oversized_call(
        &self,
        url: &str,
        expect: Expect,
        path: &'static str,
        bytes: usize,
    ) -> Result<(), RogueError> {
        self.run(async {
            let ch = self.channel(url, expect).await?;
            let mut grpc = tonic::client::Grpc::new(ch).max_encoding_message_size(usize::MAX);
            grpc.ready().await.map_err(connect_error)?;
            let codec = tonic_prost::ProstCodec::<Padding, pb::SignedAttestation>::default();
            grpc.unary(
                tonic::Request::new(Padding {
                    pad: vec![0x5a; bytes],
                }),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                codec,
            )
            .await?;
            Ok(())
        })
    }

    /// The HPKE public key in `peer`'s attestation, fetched from its peer API.
    pub fn peer_hpke_key(&self, url: &str, peer: &str) -> [u8; 32] {
        let att = self
            .identity(url, peer)
            .unwrap_or_else(|e| panic!("Identity of {peer}: {e}"));
        let body = decode_attestation_body(&att.body).unwrap();
        assert_eq!(
            body.node, peer,
            "{peer} answered another node's attestation"
        );
        body.hpke_public_key.as_slice().try_into().unwrap()
    }

    /// Seals `keys` as batch `batch` of `grant`, to `dest_hpke`, and signs it
    /// with this rogue's key, exactly as a source lockbox does.
    pub fn batch(
        &self,
        grant: &pb::SignedGrant,
        batch: u32,
        dest_hpke: &[u8; 32],
        keys: &[RogueKey],
    ) -> pb::SealedBatch {
        let body = decode_grant_body(&grant.body).unwrap();
        let grant_id: [u8; 16] = body.grant_id.as_slice().try_into().unwrap();
        let ctx = BatchContext {
            grant_id: &grant_id,
            batch,
            source_node: &body.source_node,
            dest_node: &body.dest_node,
        };
        let secrets: Vec<SecretBytes> = keys
            .iter()
            .map(|k| SecretBytes::new(k.material.clone()))
            .collect();
        let wrap: Vec<KeyToWrap<'_>> = keys
            .iter()
            .zip(&secrets)
            .map(|(k, m)| KeyToWrap {
                key_id: &k.key_id,
                version: k.version,
                material: m,
                attributes: &[],
            })
            .collect();
        let sealed = seal_batch(dest_hpke, &ctx, &wrap).unwrap();
        let mut batch = pb::SealedBatch {
            batch,
            suite: sealed.suite,
            enc: sealed.enc,
            keys: sealed
                .keys
                .into_iter()
                .map(|k| pb::WrappedKey {
                    key_id: k.key_id,
                    version: k.version,
                    ciphertext: k.ciphertext,
                    labels: Default::default(),
                    clone_policy: String::new(),
                    version_state: "active".into(),
                    current: true,
                })
                .collect(),
            signature: Vec::new(),
            signature_format: lockbox_crypto::TRANSFER_BATCH_FORMAT,
        };
        // Signed over the metadata as it goes on the wire, exactly as a source lockbox does.
        self.resign(grant, &mut batch);
        batch
    }

    /// Signs `batch` (as it is now, e.g. after tampering) again with this rogue's key, for
    /// `grant`'s context.
    pub fn resign(&self, grant: &pb::SignedGrant, batch: &mut pb::SealedBatch) {
        let body = decode_grant_body(&grant.body).unwrap();
        let grant_id: [u8; 16] = body.grant_id.as_slice().try_into().unwrap();
        let ctx = BatchContext {
            grant_id: &grant_id,
            batch: batch.batch,
            source_node: &body.source_node,
            dest_node: &body.dest_node,
        };
        let sealed = lockbox_crypto::SealedBatch::from_wire(batch);
        batch.signature = sign_batch(&self.signing, &ctx, &sealed).to_vec();
    }

    /// Streams a whole delivery to the lockbox `peer` at `url`: the header (grant, source
    /// attestation, total), the batches, the end marker. Returns the receipt or the refusal.
    pub fn deliver(
        &self,
        url: &str,
        peer: &str,
        grant: &pb::SignedGrant,
        attestation: &pb::SignedAttestation,
        batches: Vec<pb::SealedBatch>,
    ) -> Result<pb::Receipt, RogueError> {
        use pb::deliver_request::Msg;
        let total = batches.iter().map(|b| b.keys.len() as u64).sum();
        let mut msgs = vec![pb::DeliverRequest {
            msg: Some(Msg::Header(pb::DeliverHeader {
                grant: Some(grant.clone()),
                source_attestation: Some(attestation.clone()),
                total_keys: total,
            })),
        }];
        msgs.extend(batches.into_iter().map(|b| pb::DeliverRequest {
            msg: Some(Msg::Batch(b)),
        }));
        msgs.push(pb::DeliverRequest {
            msg: Some(Msg::End(pb::DeliverEnd {})),
        });
        self.run(async {
            let ch = self
                .channel(url, Expect::named(Role::Lockbox, peer))
                .await?;
            let stream = tonic::codegen::tokio_stream::iter(msgs);
            Ok(PeerClient::new(ch).deliver(stream).await?.into_inner())
        })
    }
}

impl Rogue {
    /// Opens `stalled` deliveries of `grant` to `peer` that send their header and then nothing
    /// (held open), and while they are, delivers `batches` in full: what a source that ties up
    /// a destination's delivery slots does to the transfers of others.
    pub fn deliver_while_others_stall(
        &self,
        url: &str,
        peer: &str,
        grant: &pb::SignedGrant,
        attestation: &pb::SignedAttestation,
        stalled: usize,
        batches: Vec<pb::SealedBatch>,
    ) -> Result<pb::Receipt, RogueError> {
        use pb::deliver_request::Msg;
        let header = pb::DeliverRequest {
            msg: Some(Msg::Header(pb::DeliverHeader {
                grant: Some(grant.clone()),
                source_attestation: Some(attestation.clone()),
                total_keys: 1,
            })),
        };
        let held = self.run(async {
            let ch = self
                .channel(url, Expect::named(Role::Lockbox, peer))
                .await?;
            let mut held = Vec::new();
            for _ in 0..stalled {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                tx.send(header.clone()).await.map_err(connect_error)?;
                let mut client = PeerClient::new(ch.clone());
                let call = tokio::spawn(async move {
                    client
                        .deliver(tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(
                            rx,
                        ))
                        .await
                });
                held.push((tx, call));
            }
            // Let every stalled delivery reach the destination's handler.
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(held)
        })?;
        let result = self.deliver(url, peer, grant, attestation, batches);
        self.rt.block_on(async {
            for (tx, call) in held {
                drop(tx);
                let _ = call.await;
            }
        });
        result
    }
}

/// A message of one bytes field no lockbox message has (tag 15): padding.
#[derive(Clone, PartialEq, prost::Message)]
struct Padding {
    #[prost(bytes = "vec", tag = "15")]
    pad: Vec<u8>,
}

impl Rogue {
    /// `Controller.IssueGrant` at `url` with whatever request the test built, under this
    /// rogue's TLS identity (an orchestrator's, say): what lockboxctl would refuse to send.
    pub fn issue_grant(
        &self,
        controller_url: &str,
        request: pb::IssueGrantRequest,
    ) -> Result<pb::SignedGrant, RogueError> {
        self.run(async {
            let ch = self
                .channel(controller_url, Expect::role(Role::Controller))
                .await?;
            Ok(ControllerClient::new(ch)
                .max_encoding_message_size(64 << 20)
                .issue_grant(request)
                .await?
                .into_inner())
        })
    }

    /// `Controller.CosignGrant` at `url` of `grant` as the test built it.
    pub fn cosign_grant(
        &self,
        controller_url: &str,
        grant: pb::SignedGrant,
    ) -> Result<pb::SignedGrant, RogueError> {
        self.run(async {
            let ch = self
                .channel(controller_url, Expect::role(Role::Controller))
                .await?;
            Ok(ControllerClient::new(ch)
                .cosign_grant(pb::CosignGrantRequest { grant: Some(grant) })
                .await?
                .into_inner())
        })
    }
}
