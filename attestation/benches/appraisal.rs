//! Appraisals per second on the hub's software path, against a bare Ed25519 verification in the same run.
//!
//! Run: `cargo bench -p outpost-attestation --bench appraisal`. One thread. Each round appraises `BATCH` pieces of
//! honest evidence (each answering its own challenge, signed beforehand, so only the hub's work is timed: parse,
//! checks, signature, reference-value lookup) and runs `BATCH` bare `verify_strict` calls on a message of the
//! same size with an already-decoded key; medians of `ROUNDS` rounds are compared. With `--features tpm` it also
//! times the TPM path (evidence carrying a swtpm quote: ECDSA P-256 verification and PCR checks on top).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

#[cfg(feature = "tpm")]
#[path = "../tests/support/swtpm.rs"]
mod swtpm;

use outpost_attestation::evidence::EXPORTER_LEN;
use outpost_attestation::{
    Challenge, Claims, DeviceDirectory, DeviceRecord, DeviceStatus, Evidence, Expected, Identity, Presented, PublicKey,
    ReferenceValues, SoftwareRef, Verifier, VerifierConfig,
};
use outpost_shared::Digest;
use outpost_shared::clock::ManualClock;
use outpost_shared::rng::SeededRng;

const BATCH: usize = 2_000;
const ROUNDS: usize = 7;
/// Evidence per round on the TPM path (each quote costs swtpm a few milliseconds to make).
#[cfg(feature = "tpm")]
const TPM_BATCH: usize = 300;
const NOW: u64 = 1_795_881_600;

struct Devices(HashMap<PublicKey, DeviceRecord>);

impl DeviceDirectory for Devices {
    fn device(&self, key: &PublicKey) -> Option<DeviceRecord> {
        self.0.get(key).cloned()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[allow(clippy::disallowed_methods)] // A benchmark measures real time.
fn per_second(n: usize, f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let team = Identity::from_seed([3; 32]);
    let device = Identity::from_seed([1; 32]);
    let agent = Digest::of(b"agent binary");
    let model = Digest::of(b"model");
    let policy = Digest::of(b"policy");
    let clock = Arc::new(ManualClock::new(NOW));
    // One device answers every challenge of a batch: the bench measures appraisal, not the per-device bound.
    let config =
        VerifierConfig { max_challenges: BATCH, max_challenges_per_device: BATCH, ..VerifierConfig::default() };
    let verifier = Verifier::new(config, clock.clone(), team.public_key());
    let doc = ReferenceValues {
        serial: 1,
        issued_at: NOW,
        expires: NOW + 86_400,
        software: (0..100)
            .map(|i| SoftwareRef {
                name: "outpost-agent".into(),
                version: format!("0.{i}.0"),
                sha256: if i == 0 { agent } else { Digest::of(format!("agent {i}").as_bytes()) },
                revoked: i % 10 == 9,
            })
            .collect(),
    };
    verifier.install_reference_values(&doc.sign(&team)).expect("reference values");
    #[cfg_attr(not(feature = "tpm"), allow(unused_mut))]
    let mut devices = Devices(HashMap::new());
    for seed in 0..1_000u32 {
        let mut s = [0u8; 32];
        s[..4].copy_from_slice(&seed.to_le_bytes());
        s[31] = 0xff;
        devices.0.insert(Identity::from_seed(s).public_key(), record(model, policy));
    }
    devices.0.insert(device.public_key(), record(model, policy));
    let exporter = [5u8; EXPORTER_LEN];
    let mut rng = SeededRng::new(7);

    let claims = |c: &Challenge| Claims {
        nonce: c.nonce(&exporter),
        ueid: device.public_key(),
        oemid: None,
        hwmodel: Some(b"rpi5".to_vec()),
        bootcount: 17,
        swname: "outpost-agent".into(),
        swversion: "0.0.0".into(),
        software_digest: agent,
        model_digest: Some(model),
        policy_digest: Some(policy),
        tpm_quote: None,
    };

    let message = vec![0x5au8; Evidence::sign(&device, &claims(&Challenge([0; 32]))).unwrap().len()];
    let signature = ed25519_dalek::Signature::from_bytes(&device.sign(&message));
    let key = ed25519_dalek::VerifyingKey::from_bytes(device.public_key().as_bytes()).unwrap();

    let (mut appraisals, mut verifies, mut parses, mut key_verifies) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..=ROUNDS {
        let batch = make_batch(&verifier, device.public_key(), &mut rng, BATCH, |c| {
            Evidence::sign(&device, &claims(c)).expect("sign")
        });
        appraisals.push(appraise_all(&verifier, &devices, &exporter, device.public_key(), &batch));
        verifies.push(per_second(BATCH, || {
            for _ in 0..BATCH {
                key.verify_strict(std::hint::black_box(&message), &signature).expect("valid");
            }
        }));
        parses.push(per_second(BATCH, || {
            for (_, evidence) in &batch {
                std::hint::black_box(Evidence::parse(evidence).expect("parses"));
            }
        }));
        key_verifies.push(per_second(BATCH, || {
            for _ in 0..BATCH {
                let key = ed25519_dalek::VerifyingKey::from_bytes(std::hint::black_box(device.public_key().as_bytes()));
                key.unwrap().verify_strict(&message, &signature).expect("valid");
            }
        }));
        // Let this round's challenges age out of the bounded store.
        clock.advance(config.challenge_ttl * 2);
    }
    // The first round warmed caches and allocators.
    for v in [&mut appraisals, &mut verifies, &mut parses, &mut key_verifies] {
        v.remove(0);
    }
    let (a, v) = (median(appraisals), median(verifies));
    let (p, k) = (median(parses), median(key_verifies));
    println!("attestation appraisal throughput (1 thread, median of {ROUNDS} rounds)");
    println!("  appraise, software path ({} B evidence)   : {a:>9.0} /s", message.len());
    println!("  bare Ed25519 verify_strict (baseline)      : {v:>9.0} /s");
    println!("  ratio software appraisals / verifies       : {:.2}", a / v);
    println!("  where the rest goes:");
    println!("    Evidence::parse alone                    : {p:>9.0} /s");
    println!("    key decompression + verify_strict        : {k:>9.0} /s");

    #[cfg(feature = "tpm")]
    {
        use outpost_attestation::quote::{MEASUREMENT_PCR, measurements, qualifying_data};
        use outpost_attestation::tpm::{DEFAULT_PCRS, Tpm};
        // Quotes come from swtpm beforehand (slow, device-side); only the hub's appraisal is timed.
        let swtpm = swtpm::Swtpm::start();
        let mut tpm = Tpm::open(&swtpm.tcti()).expect("open swtpm");
        let enrolment = tpm.enrolment(DEFAULT_PCRS).expect("read PCRs");
        tpm.measure_software(&measurements(&agent, Some(&model))).expect("measure");
        devices.0.insert(device.public_key(), DeviceRecord { tpm: Some(enrolment), ..record(model, policy) });
        let mut rates = Vec::new();
        let mut size = 0;
        for _ in 0..=ROUNDS {
            let batch = make_batch(&verifier, device.public_key(), &mut rng, TPM_BATCH, |c| {
                let mut cl = claims(c);
                cl.tpm_quote = Some(
                    tpm.quote(&qualifying_data(&cl.nonce, &device.public_key().0), DEFAULT_PCRS | 1 << MEASUREMENT_PCR)
                        .expect("quote"),
                );
                Evidence::sign(&device, &cl).expect("sign")
            });
            size = batch[0].1.len();
            rates.push(appraise_all(&verifier, &devices, &exporter, device.public_key(), &batch));
            clock.advance(config.challenge_ttl * 2);
        }
        rates.remove(0);
        let t = median(rates);
        println!("  appraise, TPM path ({size} B evidence + quote): {t:>9.0} /s  ({TPM_BATCH} per round)");
        println!("  ratio TPM appraisals / Ed25519 verifies    : {:.2}", t / v);
    }
    #[cfg(not(feature = "tpm"))]
    println!("  TPM path: run with --features tpm (needs swtpm)");
}

/// `n` challenges from the verifier, each with the evidence `make` builds for it.
fn make_batch(
    verifier: &Verifier,
    device: outpost_attestation::PublicKey,
    rng: &mut SeededRng,
    n: usize,
    mut make: impl FnMut(&Challenge) -> Vec<u8>,
) -> Vec<(Challenge, Vec<u8>)> {
    (0..n)
        .map(|_| {
            let c = verifier.issue_challenge(device, rng).expect("challenge");
            let ev = make(&c);
            (c, ev)
        })
        .collect()
}

/// Appraises a batch; returns appraisals per second.
fn appraise_all(
    verifier: &Verifier,
    devices: &Devices,
    exporter: &[u8; EXPORTER_LEN],
    device: PublicKey,
    batch: &[(Challenge, Vec<u8>)],
) -> f64 {
    per_second(batch.len(), || {
        for (challenge, evidence) in batch {
            let p = Presented { challenge, exporter, device, evidence };
            std::hint::black_box(verifier.appraise(&p, devices).expect("attested"));
        }
    })
}

fn record(model: Digest, policy: Digest) -> DeviceRecord {
    DeviceRecord {
        status: DeviceStatus::Active,
        tpm: None,
        model: Expected::Exactly(Some(model)),
        policy: Expected::Exactly(Some(policy)),
    }
}
