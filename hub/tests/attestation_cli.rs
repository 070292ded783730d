//! The attestation commands as operators run them: the team key, signed reference values (sign, install, show,
//! revoke), a rolled-back or foreign document refused at install, and one-time enrolment tokens stored hashed.

mod support;

use support::{TestHub, stderr, stdout};

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", stderr(o));
    stdout(o)
}

/// A hub trusting a fresh team key (written to hub.toml); returns the key file.
fn hub_with_team_key(hub: &TestHub) -> std::path::PathBuf {
    let key = hub.tmp.path().join("team.key");
    let public = ok(&hub.cli(&["attestation", "team-key", "--out", key.to_str().unwrap()]));
    let config = hub.dir().join("hub.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("# team_key = \"\""), "hub.toml documents the key");
    std::fs::write(&config, text.replace("# team_key = \"\"", &format!("team_key = \"{}\"", public.trim()))).unwrap();
    key
}

fn sign(hub: &TestHub, key: &std::path::Path, version: &str, sha: &str, serial: &str, out: &str) -> std::path::PathBuf {
    let out = hub.tmp.path().join(out);
    let args = [
        "attestation",
        "reference",
        "sign",
        "--team-key",
        key.to_str().unwrap(),
        "--version",
        version,
        "--sha256",
        sha,
        "--serial",
        serial,
        "--out",
        out.to_str().unwrap(),
    ];
    ok(&hub.cli(&args));
    out
}

#[test]
fn reference_values_are_installed_in_serial_order_and_a_version_can_be_revoked() {
    let hub = TestHub::new();
    let key = hub_with_team_key(&hub);
    let sha = "ab".repeat(32);
    let v2 = sign(&hub, &key, "0.2.0", &sha, "2", "v2.cbor");
    let installed = hub.cli(&["attestation", "reference", "install", v2.to_str().unwrap()]);
    assert!(stderr(&installed).contains("serial 2"), "{}", stderr(&installed));
    let shown = ok(&hub.cli(&["attestation", "reference", "show"]));
    assert!(shown.contains("serial 2") && shown.contains(&sha) && !shown.contains("REVOKED"), "{shown}");

    // An older serial is a rollback.
    let v1 = sign(&hub, &key, "0.1.0", &sha, "1", "v1.cbor");
    let refused = hub.cli(&["attestation", "reference", "install", v1.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("does not supersede serial 2"), "{}", stderr(&refused));

    // A document signed by another key is refused.
    let other = hub.tmp.path().join("other.key");
    ok(&hub.cli(&["attestation", "team-key", "--out", other.to_str().unwrap()]));
    let forged = sign(&hub, &other, "0.2.0", &"cd".repeat(32), "9", "forged.cbor");
    let refused = hub.cli(&["attestation", "reference", "install", forged.to_str().unwrap()]);
    assert!(stderr(&refused).contains("not signed by the trusted key"), "{}", stderr(&refused));

    let revoked =
        hub.cli(&["attestation", "reference", "revoke", "--version", "0.2.0", "--team-key", key.to_str().unwrap()]);
    assert!(stderr(&revoked).contains("serial 3 installed"), "{}", stderr(&revoked));
    let shown = ok(&hub.cli(&["attestation", "reference", "show"]));
    assert!(shown.contains("serial 3") && shown.contains("REVOKED"), "{shown}");
}

#[test]
fn enrolment_token_is_printed_once_and_stored_only_as_its_hash() {
    let hub = TestHub::new();
    let token = ok(&hub.cli(&["device", "token", "--expires", "600", "--channel", "beta", "--site", "plant-7"]));
    let token = token.trim();
    assert!(token.starts_with("ot1-") && token.len() == 36, "{token}");
    let index = std::fs::read(hub.dir().join("index.redb")).unwrap();
    assert!(!index.windows(token.len()).any(|w| w == token.as_bytes()), "the token itself is never stored");
    let bad = hub.cli(&["device", "token", "--site", "no spaces"]);
    assert!(!bad.status.success());
}

#[test]
fn device_show_names_tier_enrolment_and_attestation() {
    let hub = TestHub::new();
    let key = "11".repeat(32);
    ok(&hub.cli(&["device", "approve", &key, "--channel", "stable"]));
    let shown = ok(&hub.cli(&["device", "show", &key]));
    for line in ["status      approved", "tier        software", "by operator", "attestation never"] {
        assert!(shown.contains(line), "{line}: {shown}");
    }
    let missing = hub.cli(&["device", "show", &"22".repeat(32)]);
    assert!(!missing.status.success());
}

#[test]
fn device_tpm_records_the_facts_for_hardware_tier_and_refuses_malformed_ones() {
    let hub = TestHub::new();
    let key = "11".repeat(32);
    ok(&hub.cli(&["device", "approve", &key]));
    // What `outpost-agent tpm-facts` prints: the attestation key, the boot PCR mask (PCRs 0 and 7), their values.
    let facts = outpost_attestation::TpmEnrolment::new([4; 65], 0x81, vec![[1; 32], [7; 32]]).unwrap();
    let line = hex::encode(facts.to_bytes());
    let recorded = hub.cli(&["device", "tpm", &key, &line]);
    assert!(stderr(&recorded).contains("hardware tier") && stderr(&recorded).contains("0x81"), "{}", stderr(&recorded));
    let shown = ok(&hub.cli(&["device", "show", &key]));
    assert!(shown.contains("tier        hardware (TPM key 0404"), "{shown}");
    let listed = ok(&hub.cli(&["device", "list"]));
    assert!(listed.contains("hardware") && listed.contains("attested never"), "{listed}");

    // Malformed facts change nothing and say why.
    for (bad, why) in [("zz", "hex line"), (&line[..line.len() - 2], "not a valid length"), ("", "hex line")] {
        let refused = hub.cli(&["device", "tpm", &key, bad]);
        assert!(!refused.status.success());
        let all = format!("{:#}", stderr(&refused));
        assert!(all.contains(why) || all.contains("TPM facts"), "{bad}: {all}");
    }
    assert!(ok(&hub.cli(&["device", "show", &key])).contains("tier        hardware"));
    // Cleared: software tier again.
    ok(&hub.cli(&["device", "tpm", &key, "--clear"]));
    assert!(ok(&hub.cli(&["device", "show", &key])).contains("tier        software"));
}
