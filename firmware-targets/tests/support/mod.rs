//! Test support for the firmware secondary: an in-memory NOR flash that can lose power at mutation number N, hub
//! keys, signed manifests and time tokens, images and a provisioned device. Shared by every test file.
#![allow(dead_code)] // each test binary uses a different subset

use core::convert::Infallible;

use ed25519_dalek::{Signer, SigningKey};
use embedded_hal::digital::{ErrorType as PinErrorType, OutputPin};
use embedded_hal_mock::eh1::delay::NoopDelay;
use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash, check_erase, check_read, check_write,
};
use outpost_firmware::manifest::{
    self, MAX_BODY_LEN, MAX_ENVELOPE_LEN, SigningInputFn, manifest_signing_input, time_token_signing_input,
};
use outpost_firmware::{
    Descriptor, Expiry, FlashLayout, Identity, Manifest, Secondary, Slot, SlotConfig, Slots, TimeToken,
};
use sha2::{Digest, Sha256};

pub const HARDWARE_ID: &[u8] = b"stm32h743-outpost-r2";
pub const DEVICE_ID: &[u8] = b"dev-0042";
pub const OTHER_DEVICE_ID: &[u8] = b"dev-0043";
pub const HUB_KEY_SEED: [u8; 32] = [7u8; 32];
pub const ROGUE_KEY_SEED: [u8; 32] = [9u8; 32];
pub const OLD_RELEASE: u64 = 5;
pub const NEW_RELEASE: u64 = 6;
/// Gateway counter the happy-path manifests expire at; tests offer [`NOW_COUNTER`].
pub const EXPIRES_COUNTER: u64 = 1_000;
pub const NOW_COUNTER: u64 = 100;
pub const OLD_IMAGE_LEN: usize = 2_500;
pub const NEW_IMAGE_LEN: usize = 3_000;
/// Bytes per chunk the gateway streams.
pub const CHUNK: usize = 100;

// ---------------------------------------------------------------------------------------------- in-memory flash

/// Why the in-memory flash refused an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemFlashError {
    /// Misaligned or out of bounds, as the trait defines.
    Geometry(NorFlashErrorKind),
    /// Programming a byte that is not erased: a bug in the code under test (real NOR would corrupt it).
    NotErased,
    /// The injected power cut, and every operation after it until [`MemFlash::reboot`].
    PowerCut,
}

impl NorFlashError for MemFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            Self::Geometry(k) => *k,
            Self::NotErased | Self::PowerCut => NorFlashErrorKind::Other,
        }
    }
}

/// NOR flash in memory with `W`-byte writes and `E`-byte erase sectors. Erase and write are "mutations"; the
/// mutation numbered `fail_at` (0-based) is torn — half of it happens — and then the power is gone.
pub struct MemFlash<const W: usize, const E: usize> {
    pub mem: Vec<u8>,
    pub mutations: usize,
    pub fail_at: Option<usize>,
    pub powered: bool,
}

impl<const W: usize, const E: usize> MemFlash<W, E> {
    pub fn new(capacity: usize) -> Self {
        Self { mem: vec![0xFF; capacity], mutations: 0, fail_at: None, powered: true }
    }

    /// Arms a power cut at mutation number `n`, counted from now.
    pub fn cut_power_at(&mut self, n: usize) {
        self.mutations = 0;
        self.fail_at = Some(n);
    }

    /// Power comes back; no further cut is armed.
    pub fn reboot(&mut self) {
        self.powered = true;
        self.fail_at = None;
    }

    /// Writes bytes as a factory programmer would (no fault injection, no counting).
    pub fn program(&mut self, offset: u32, bytes: &[u8]) {
        let at = offset as usize;
        self.mem[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Returns true if this mutation is the one to tear.
    fn next_mutation_tears(&mut self) -> Result<bool, MemFlashError> {
        if !self.powered {
            return Err(MemFlashError::PowerCut);
        }
        let tear = self.fail_at == Some(self.mutations);
        self.mutations += 1;
        Ok(tear)
    }
}

impl<const W: usize, const E: usize> ErrorType for MemFlash<W, E> {
    type Error = MemFlashError;
}

impl<const W: usize, const E: usize> ReadNorFlash for MemFlash<W, E> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        if !self.powered {
            return Err(MemFlashError::PowerCut);
        }
        check_read(self, offset, bytes.len()).map_err(MemFlashError::Geometry)?;
        let at = offset as usize;
        bytes.copy_from_slice(&self.mem[at..at + bytes.len()]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.mem.len()
    }
}

impl<const W: usize, const E: usize> NorFlash for MemFlash<W, E> {
    const WRITE_SIZE: usize = W;
    const ERASE_SIZE: usize = E;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        check_erase(self, from, to).map_err(MemFlashError::Geometry)?;
        let (from, to) = (from as usize, to as usize);
        if self.next_mutation_tears()? {
            // A torn erase: the first half is erased, the rest keeps its old bytes.
            let mid = from + (to - from) / 2;
            self.mem[from..mid].fill(0xFF);
            self.powered = false;
            return Err(MemFlashError::PowerCut);
        }
        self.mem[from..to].fill(0xFF);
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        check_write(self, offset, bytes.len()).map_err(MemFlashError::Geometry)?;
        let at = offset as usize;
        if self.mem[at..at + bytes.len()].iter().any(|b| *b != 0xFF) {
            return Err(MemFlashError::NotErased);
        }
        if self.next_mutation_tears()? {
            // A torn write: the first half of the words are programmed.
            let words = bytes.len() / W;
            let half = (words / 2) * W;
            self.mem[at..at + half].copy_from_slice(&bytes[..half]);
            self.powered = false;
            return Err(MemFlashError::PowerCut);
        }
        self.mem[at..at + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }
}

/// Default geometry: 4-byte writes, 1 KiB sectors.
pub type Flash = MemFlash<4, 1024>;

/// Two state sectors, then slot A and slot B of `slot_sectors` sectors each.
pub fn layout_for(erase: u32, slot_sectors: u32) -> (FlashLayout, usize) {
    let slot_size = erase * slot_sectors;
    let layout = FlashLayout { state_sectors: [0, erase], slots: [2 * erase, 2 * erase + slot_size], slot_size };
    (layout, (2 * erase + 2 * slot_size) as usize)
}

pub fn layout() -> FlashLayout {
    layout_for(1024, 8).0
}

// --------------------------------------------------------------------------------------- pins for fault tests

/// A status pin that accepts anything (for tests that exercise the flash, not the pin).
pub struct NullPin;

impl PinErrorType for NullPin {
    type Error = Infallible;
}

impl OutputPin for NullPin {
    fn set_low(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}

// ----------------------------------------------------------------------------------------- keys and manifests

pub fn hub_key() -> SigningKey {
    SigningKey::from_bytes(&HUB_KEY_SEED)
}

pub fn rogue_key() -> SigningKey {
    SigningKey::from_bytes(&ROGUE_KEY_SEED)
}

/// The keys provisioned into the firmware at build time.
pub fn trusted_keys() -> [[u8; 32]; 1] {
    [hub_key().verifying_key().to_bytes()]
}

pub fn identity(keys: &[[u8; 32]]) -> Identity<'_> {
    Identity { trusted_keys: keys, hardware_id: HARDWARE_ID, device_id: DEVICE_ID }
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Deterministic image bytes that differ per `seed`.
pub fn image(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 8) as u8)).collect()
}

pub fn old_image() -> Vec<u8> {
    image(OLD_IMAGE_LEN, 1)
}

pub fn new_image() -> Vec<u8> {
    image(NEW_IMAGE_LEN, 2)
}

/// A manifest for `image` addressed to this device, expiring at [`EXPIRES_COUNTER`] on the gateway counter.
pub fn manifest_for(image: &[u8], release: u64) -> Manifest<'static> {
    Manifest {
        hardware_id: HARDWARE_ID,
        device_id: DEVICE_ID,
        image_len: image.len() as u32,
        image_sha256: sha256(image),
        release_counter: release,
        expiry: Expiry::GatewayCounter(EXPIRES_COUNTER),
    }
}

/// What the hub/gateway does: encode the body, sign `MANIFEST_DOMAIN || body`, wrap it in an envelope.
pub fn sign_manifest(key: &SigningKey, manifest: &Manifest<'_>) -> Vec<u8> {
    let mut body = [0u8; MAX_BODY_LEN];
    let n = manifest.encode(&mut body).unwrap();
    seal(key, &body[..n], manifest_signing_input)
}

pub fn sign_time_token(key: &SigningKey, device_id: &[u8], unix_seconds: u64) -> Vec<u8> {
    let mut body = [0u8; MAX_BODY_LEN];
    let n = TimeToken { device_id, unix_seconds }.encode(&mut body).unwrap();
    seal(key, &body[..n], time_token_signing_input)
}

/// Signs `body` with `key` and wraps it in an envelope naming `key`.
pub fn seal(key: &SigningKey, body: &[u8], input: SigningInputFn) -> Vec<u8> {
    let mut out = [0u8; MAX_ENVELOPE_LEN];
    let public = key.verifying_key().to_bytes();
    let n = manifest::seal(&public, body, input, |m| key.sign(m).to_bytes(), &mut out).unwrap();
    out[..n].to_vec()
}

// ------------------------------------------------------------------------------------------ provisioned device

/// A flash with the old image factory-programmed into slot A and a first boot state written.
pub fn provisioned_flash<const W: usize, const E: usize>(layout: &FlashLayout, capacity: usize) -> MemFlash<W, E> {
    let mut flash = MemFlash::<W, E>::new(capacity);
    let old = old_image();
    flash.program(layout.slots[0], &old);
    let mut slots = Slots::new(&mut flash, *layout, SlotConfig::default()).unwrap();
    slots
        .provision(
            Slot::A,
            Descriptor { image_len: old.len() as u32, release_counter: OLD_RELEASE, image_sha256: sha256(&old) },
        )
        .unwrap();
    flash.mutations = 0;
    flash
}

pub fn provisioned() -> Flash {
    provisioned_flash(&layout(), layout_for(1024, 8).1)
}

/// A device over `flash` with a pin and delay that accept anything.
pub fn device<'f, 'k, const W: usize, const E: usize>(
    flash: &'f mut MemFlash<W, E>,
    layout: FlashLayout,
    keys: &'k [[u8; 32]],
) -> Secondary<'k, &'f mut MemFlash<W, E>, NullPin, NoopDelay> {
    let slots = Slots::new(flash, layout, SlotConfig::default()).unwrap();
    Secondary::new(slots, identity(keys), NullPin, NoopDelay::new())
}

/// The image bytes stored in `slot`, as long as `len`, read straight from memory (independent of the crate).
pub fn slot_bytes<const W: usize, const E: usize>(
    flash: &MemFlash<W, E>,
    layout: &FlashLayout,
    slot: Slot,
    len: usize,
) -> Vec<u8> {
    let at = layout.slot_offset(slot) as usize;
    flash.mem[at..at + len].to_vec()
}

/// Streams `image` in [`CHUNK`]-byte pieces through an install started with `envelope`.
pub fn install<F, P, D>(dev: &mut Secondary<'_, F, P, D>, envelope: &[u8], image: &[u8]) -> Result<(), String>
where
    F: NorFlash,
    P: OutputPin,
    D: embedded_hal::delay::DelayNs,
{
    let mut inst = dev
        .begin_install(envelope, outpost_firmware::Freshness::GatewayCounter(NOW_COUNTER))
        .map_err(|e| format!("begin: {e:?}"))?;
    for chunk in image.chunks(CHUNK) {
        inst.write(chunk).map_err(|e| format!("write: {e:?}"))?;
    }
    inst.finish().map_err(|e| format!("finish: {e:?}"))
}
