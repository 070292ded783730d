//! Power cuts: for every erase and write of a whole update (stream, mark pending, trial boot, confirm) the power is
//! cut once, half-way through that operation; after power returns the device must boot a verified image.

mod support;

use outpost_firmware::{FlashLayout, Slot};
use support::*;

/// Install, trial boot, confirm, boot: the whole life of one update.
fn full_update<const W: usize, const E: usize>(
    flash: &mut MemFlash<W, E>,
    layout: FlashLayout,
    keys: &[[u8; 32]],
    envelope: &[u8],
) -> Result<(), String> {
    let new = new_image();
    let mut dev = device(flash, layout, keys);
    install(&mut dev, envelope, &new)?;
    let trial = dev.boot().map_err(|e| format!("trial boot: {e:?}"))?;
    assert_eq!((trial.slot, trial.trial), (Slot::B, true));
    dev.confirm().map_err(|e| format!("confirm: {e:?}"))?;
    let boot = dev.boot().map_err(|e| format!("boot: {e:?}"))?;
    assert_eq!((boot.slot, boot.trial), (Slot::B, false));
    Ok(())
}

/// After power returns: boot, and check against the raw flash that the chosen slot holds exactly the old or the
/// new image, the one its descriptor names. Returns the booted slot's image (new = true) and whether it is a trial.
fn boots_verified_image<const W: usize, const E: usize>(
    flash: &mut MemFlash<W, E>,
    layout: FlashLayout,
    keys: &[[u8; 32]],
    cut: usize,
) -> (bool, bool) {
    let (old, new) = (old_image(), new_image());
    let decision = {
        let mut dev = device(flash, layout, keys);
        dev.boot().unwrap_or_else(|e| panic!("cut at mutation {cut}: no boot: {e:?}"))
    };
    let len = decision.descriptor.image_len as usize;
    let bytes = slot_bytes(flash, &layout, decision.slot, len);
    assert_eq!(sha256(&bytes), decision.descriptor.image_sha256, "cut at {cut}: slot does not match descriptor");
    let is_new = match decision.slot {
        Slot::A => {
            assert_eq!(bytes, old, "cut at {cut}: slot A is not the old image");
            false
        }
        Slot::B => {
            assert_eq!(bytes, new, "cut at {cut}: slot B is not the new image");
            true
        }
    };
    // Booting the old image must never look like a trial of the new one.
    assert!(!decision.trial || is_new, "cut at {cut}: trial boot of the old image");
    (is_new, decision.trial)
}

fn power_cut_sweep<const W: usize, const E: usize>() {
    let (layout, capacity) = layout_for(E as u32, 8);
    let keys = trusted_keys();
    let envelope = sign_manifest(&hub_key(), &manifest_for(&new_image(), NEW_RELEASE));

    // Dry run: count the erases and writes of a whole update.
    let mut flash = provisioned_flash::<W, E>(&layout, capacity);
    full_update(&mut flash, layout, &keys, &envelope).unwrap();
    let total = flash.mutations;
    let image_writes = NEW_IMAGE_LEN.div_ceil(256);
    assert!(total >= image_writes + 3 * 2, "the update should erase and write more than {total} times");

    let (mut ended_old, mut ended_new) = (0, 0);
    for cut in 0..total {
        let mut flash = provisioned_flash::<W, E>(&layout, capacity);
        flash.cut_power_at(cut);
        let result = full_update(&mut flash, layout, &keys, &envelope);
        assert!(result.is_err(), "cut at {cut} of {total} did not interrupt the update");
        assert!(!flash.powered, "cut at {cut}: the update failed for another reason: {result:?}");
        flash.reboot();

        let (first_new, trial) = boots_verified_image(&mut flash, layout, &keys, cut);
        if first_new {
            ended_new += 1
        } else {
            ended_old += 1
        }
        if trial {
            // The new image came up on trial and is healthy: it confirms, and keeps booting without a trial.
            device(&mut flash, layout, &keys).confirm().unwrap_or_else(|e| panic!("cut at {cut}: {e:?}"));
            assert_eq!(boots_verified_image(&mut flash, layout, &keys, cut), (true, false), "cut at {cut}");
        } else {
            // A second power cycle must land on the same image, without a trial.
            assert_eq!(boots_verified_image(&mut flash, layout, &keys, cut), (first_new, false), "cut at {cut}");
        }
        if !first_new {
            // Back on the old image, the device can always finish the job with a fresh update.
            full_update(&mut flash, layout, &keys, &envelope)
                .unwrap_or_else(|e| panic!("cut at {cut}: retry failed: {e}"));
            assert_eq!(boots_verified_image(&mut flash, layout, &keys, cut), (true, false), "cut at {cut}");
        }
    }
    assert!(ended_old > 0 && ended_new > 0, "sweep should see both outcomes ({ended_old} old, {ended_new} new)");
    eprintln!(
        "W={W} E={E}: {total} flash mutations per update; first boot after the cut: {ended_old} old, {ended_new} new"
    );
}

#[test]
fn power_cut_at_every_flash_write_leaves_bootable_verified_image() {
    // Internal flash with 4-byte words and 1 KiB sectors, and a larger-granule part (32-byte writes, 4 KiB
    // sectors, like an STM32H7 bank).
    power_cut_sweep::<4, 1024>();
    power_cut_sweep::<32, 4096>();
}
