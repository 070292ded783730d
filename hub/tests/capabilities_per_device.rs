//! Several capabilities on one device, as the director assigns them: one package per capability on the device's
//! channel, the one a single-model agent would run today first; a revoked package gives way to its capability's
//! previous one without touching the other capability's.

mod support;

use outpost_hub::director::Director;
use outpost_hub::tuf::{GenerateOptions, Key, TufRepo};
use outpost_shared::Digest;
use outpost_shared::director::{self, Assignment};
use outpost_shared::rng::SeededRng;
use outpost_shared::testkit::AffineManifest;
use support::TestHub;

const NOW: u64 = 1_795_881_600;
const DEVICE: &str = "0909090909090909090909090909090909090909090909090909090909090909";

#[test]
fn the_director_assigns_one_package_per_capability_the_newest_first() {
    let hub = TestHub::new();
    let repo = TufRepo::new(&hub.dir(), Default::default());
    let offline = hub.tmp.path().join("offline");
    repo.generate(&offline, GenerateOptions::default(), &mut SeededRng::new(5), NOW).unwrap();
    let key_path = offline.join("targets-1.key");
    let add = |name: &str, version: &str, capability: &str| -> Digest {
        let m = AffineManifest::new(name, version, 2.0, 1.0);
        let toml = m.toml().replace("capability = \"test.affine\"", &format!("capability = \"{capability}\""));
        let (model, manifest) =
            hub.write_files(&format!("{name}-{version}"), &outpost_shared::testkit::affine_model(2.0, 1.0), &toml);
        let d = hub.open().add(&model, &manifest).unwrap().digest;
        let reg = hub.open();
        let (record, manifest) = (reg.record(&d).unwrap().unwrap(), reg.manifest(&d).unwrap().1);
        repo.publish(&record, &manifest, "stable", &Key::load(&key_path).unwrap(), &key_path, NOW).unwrap();
        d
    };
    let ocr_1 = add("ocr", "1.0.0", "ocr.text-direction");
    let vad_1 = add("vad", "1.0.0", "audio.vad");
    let ocr_2 = add("ocr", "2.0.0", "ocr.text-direction");
    let vad_2 = add("vad", "2.0.0", "audio.vad");
    hub.open().device_approve(DEVICE, "stable").unwrap();
    let assigned = || -> Vec<Digest> {
        let reg = hub.open();
        let sealed = Director::new(&repo).assignment(&reg, DEVICE, NOW).unwrap().unwrap();
        let key = repo.online_key("director").unwrap().public_bytes();
        let a: Assignment = director::open(&sealed, director::ASSIGNMENT_DOMAIN, &key).unwrap();
        a.targets.iter().map(|t| t.sha256).collect()
    };
    // The newest package on the channel first (what a single-model agent runs), then the other capability's.
    assert_eq!(assigned(), [vad_2, ocr_2]);

    // Revoking the newest VAD package: VAD goes back to its previous package, OCR keeps its own.
    Director::new(&repo).revoke(vad_2, "bad VAD release", NOW).unwrap();
    assert_eq!(assigned(), [ocr_2, vad_1]);
    Director::new(&repo).revoke(ocr_2, "bad OCR release", NOW).unwrap();
    assert_eq!(assigned(), [vad_1, ocr_1]);
}
