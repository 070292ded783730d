//! A/B image slots and the boot state over `embedded-storage` NOR flash: write the inactive slot, verify it, mark it
//! pending, trial-boot it, confirm it — or revert to the previous slot if it never confirms (embassy-boot's pattern).
//!
//! Invariant: a power cut at any erase or write leaves a state from which [`Slots::boot`] picks a slot whose bytes
//! hash to the digest recorded for it. Three rules give that:
//! 1. the slot being written is never the active one nor the pending one (the state never points at it until the
//!    image is complete and read back);
//! 2. the state lives in two records, each in its own erase sector, written alternately: a new record goes to the
//!    sector that does *not* hold the newest valid record, so the newest valid record survives any cut;
//! 3. every record carries a sequence number and a SHA-256 over its contents; the newest valid one wins, and a torn
//!    or half-erased record is simply invalid.
//!
//! # State record (version 1), [`RECORD_LEN`] bytes, little-endian
//!
//! | offset | len | field                                                        |
//! |--------|-----|--------------------------------------------------------------|
//! | 0      | 4   | magic `"OPS1"`                                               |
//! | 4      | 8   | sequence number (u64, +1 per record written)                 |
//! | 12     | 1   | active slot (0 = A, 1 = B)                                   |
//! | 13     | 1   | pending slot (0, 1, or `0xFF` = none)                        |
//! | 14     | 1   | trial boots left for the pending slot                        |
//! | 15     | 1   | reserved, 0                                                  |
//! | 16     | 8   | anti-rollback counter (lowest release still accepted)        |
//! | 24     | 8   | latest accepted time-token unix seconds                      |
//! | 32     | 8   | latest accepted gateway counter                              |
//! | 40     | 44  | slot A descriptor: image len u32, release u64, SHA-256       |
//! | 84     | 44  | slot B descriptor (same layout); image len 0 = empty         |
//! | 128    | 32  | SHA-256 over bytes 0..128                                    |
//!
//! The record is padded with `0xFF` to a multiple of the flash's write size when written.

use core::num::NonZeroU8;

use embedded_storage::nor_flash::NorFlash;
use sha2::{Digest, Sha256};

use crate::manifest::SHA256_LEN;
use crate::verify::{ImageCheck, ImageError, Observed, VerifiedManifest};

/// Length of one encoded state record.
pub const RECORD_LEN: usize = 160;
/// Largest flash write or read granule this module supports; also its I/O chunk size.
pub const IO_CHUNK: usize = 256;
/// Trial boots an unconfirmed image gets before the device reverts, unless configured otherwise.
pub const DEFAULT_TRIAL_BOOTS: NonZeroU8 = NonZeroU8::MIN;

const MAGIC: [u8; 4] = *b"OPS1";
const NO_PENDING: u8 = 0xFF;
const BODY_LEN: usize = RECORD_LEN - SHA256_LEN;

/// One of the two image slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The first slot.
    A,
    /// The second slot.
    B,
}

impl Slot {
    /// The other slot.
    #[must_use]
    pub fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::A => 0,
            Self::B => 1,
        }
    }

    fn to_byte(self) -> u8 {
        match self {
            Self::A => 0,
            Self::B => 1,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::A),
            1 => Some(Self::B),
            _ => None,
        }
    }
}

/// What the state records about the image in one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Descriptor {
    /// Image length in bytes; 0 means the slot holds nothing bootable.
    pub image_len: u32,
    /// Release counter from the image's manifest.
    pub release_counter: u64,
    /// SHA-256 of the image.
    pub image_sha256: [u8; SHA256_LEN],
}

/// The decoded, valid boot state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootState {
    /// Sequence number of the record it came from.
    pub seq: u64,
    /// The confirmed slot, booted when nothing is pending.
    pub active: Slot,
    /// A verified, not yet confirmed slot.
    pub pending: Option<Slot>,
    /// Trial boots the pending slot has left.
    pub trial_boots_left: u8,
    /// Anti-rollback counter: lowest release still accepted.
    pub min_release_counter: u64,
    /// Latest accepted time-token time.
    pub latest_known_time: u64,
    /// Latest accepted gateway counter.
    pub latest_known_counter: u64,
    /// Descriptors of slot A and slot B.
    pub slots: [Descriptor; 2],
}

impl BootState {
    /// The descriptor of `slot`.
    #[must_use]
    pub fn descriptor(&self, slot: Slot) -> Descriptor {
        self.slots.get(slot.index()).copied().unwrap_or_default()
    }

    fn set_descriptor(&mut self, slot: Slot, d: Descriptor) {
        if let Some(s) = self.slots.get_mut(slot.index()) {
            *s = d;
        }
    }

    fn encode(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        let mut w = Writer { buf: &mut out, pos: 0 };
        w.put(&MAGIC);
        w.put(&self.seq.to_le_bytes());
        w.put(&[self.active.to_byte(), self.pending.map_or(NO_PENDING, Slot::to_byte), self.trial_boots_left, 0]);
        w.put(&self.min_release_counter.to_le_bytes());
        w.put(&self.latest_known_time.to_le_bytes());
        w.put(&self.latest_known_counter.to_le_bytes());
        for d in &self.slots {
            w.put(&d.image_len.to_le_bytes());
            w.put(&d.release_counter.to_le_bytes());
            w.put(&d.image_sha256);
        }
        let digest: [u8; SHA256_LEN] = Sha256::digest(out.get(..BODY_LEN).unwrap_or_default()).into();
        let mut w = Writer { buf: &mut out, pos: BODY_LEN };
        w.put(&digest);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let body = bytes.get(..BODY_LEN)?;
        let digest: [u8; SHA256_LEN] = Sha256::digest(body).into();
        if bytes.get(BODY_LEN..RECORD_LEN)? != digest {
            return None;
        }
        let mut r = Reader { buf: body, pos: 0 };
        if r.take::<4>()? != MAGIC {
            return None;
        }
        let seq = u64::from_le_bytes(r.take()?);
        let [active, pending, trial_boots_left, _reserved] = r.take::<4>()?;
        let active = Slot::from_byte(active)?;
        let pending = match pending {
            NO_PENDING => None,
            p => Some(Slot::from_byte(p).filter(|p| *p != active)?),
        };
        let min_release_counter = u64::from_le_bytes(r.take()?);
        let latest_known_time = u64::from_le_bytes(r.take()?);
        let latest_known_counter = u64::from_le_bytes(r.take()?);
        let mut slots = [Descriptor::default(); 2];
        for d in &mut slots {
            d.image_len = u32::from_le_bytes(r.take()?);
            d.release_counter = u64::from_le_bytes(r.take()?);
            d.image_sha256 = r.take()?;
        }
        Some(Self {
            seq,
            active,
            pending,
            trial_boots_left,
            min_release_counter,
            latest_known_time,
            latest_known_counter,
            slots,
        })
    }
}

struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    /// Copies `bytes` at the cursor; the record layout is fixed, so it always fits.
    fn put(&mut self, bytes: &[u8]) {
        let end = self.pos.saturating_add(bytes.len());
        if let Some(dst) = self.buf.get_mut(self.pos..end) {
            dst.copy_from_slice(bytes);
        }
        self.pos = end;
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let end = self.pos.checked_add(N)?;
        let out = self.buf.get(self.pos..end)?.try_into().ok()?;
        self.pos = end;
        Some(out)
    }
}

/// Where the state sectors and the slots live in flash. All offsets are absolute flash offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashLayout {
    /// Offsets of the two state sectors, one erase sector each.
    pub state_sectors: [u32; 2],
    /// Offsets of slot A and slot B.
    pub slots: [u32; 2],
    /// Size of each slot; a multiple of the erase size.
    pub slot_size: u32,
}

impl FlashLayout {
    /// Flash offset where `slot` starts.
    #[must_use]
    pub fn slot_offset(&self, slot: Slot) -> u32 {
        self.slots.get(slot.index()).copied().unwrap_or_default()
    }
}

/// Why a [`FlashLayout`] does not fit the flash. Always a build-time mistake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// Write or read size is 0 or does not divide [`IO_CHUNK`], or the erase size is not a multiple of both or is
    /// smaller than a state record.
    #[error("unsupported flash geometry")]
    UnsupportedGeometry,
    /// An offset or the slot size is not a multiple of the erase size, or the slot size is 0.
    #[error("region not aligned to the erase size")]
    Misaligned,
    /// A region ends beyond the flash capacity.
    #[error("region outside the flash")]
    OutOfBounds,
    /// Two regions overlap.
    #[error("regions overlap")]
    Overlap,
}

/// Why a slot operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlotError<E> {
    /// The flash driver failed (a power cut looks like this in tests).
    #[error("flash: {0:?}")]
    Flash(E),
    /// The layout does not fit the flash.
    #[error("layout: {0}")]
    Layout(LayoutError),
    /// Neither state record is valid: the device was never provisioned.
    #[error("no valid boot state; provision the device first")]
    NotProvisioned,
    /// A valid boot state already exists.
    #[error("device already provisioned")]
    AlreadyProvisioned,
    /// A pending image awaits confirmation or revert; a second update would overwrite the fallback.
    #[error("an update is already pending")]
    UpdateInProgress,
    /// Nothing is pending, or the pending image has not been trial-booted yet.
    #[error("no trial-booted pending image to confirm")]
    NothingToConfirm,
    /// The image does not fit in a slot.
    #[error("image of {len} bytes does not fit the {slot_size}-byte slot")]
    ImageTooLarge {
        /// Image length.
        len: u32,
        /// Slot size.
        slot_size: u32,
    },
    /// The release counter is below the stored anti-rollback counter.
    #[error("release {offered} is below the stored {stored}")]
    Rollback {
        /// Offered release counter.
        offered: u64,
        /// Stored counter.
        stored: u64,
    },
    /// The streamed image does not match its manifest.
    #[error("image: {0}")]
    Image(ImageError),
    /// The bytes read back from the slot do not hash to what was streamed.
    #[error("slot contents differ from the streamed image")]
    ReadBackMismatch,
    /// The state record read back differs from what was written.
    #[error("state record did not persist")]
    StateWriteFailed,
    /// The sequence number would overflow.
    #[error("state sequence number exhausted")]
    SequenceExhausted,
    /// No slot the state points at holds a verified image.
    #[error("no bootable verified image")]
    NoBootableImage,
    /// The update session failed earlier and must be restarted.
    #[error("update session aborted by an earlier error")]
    SessionAborted,
}

/// Which slot to start, decided by [`Slots::boot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootDecision {
    /// The slot to boot.
    pub slot: Slot,
    /// Its flash offset.
    pub offset: u32,
    /// Its verified descriptor.
    pub descriptor: Descriptor,
    /// True if this is a trial boot of an unconfirmed image, which must call [`Slots::mark_booted`].
    pub trial: bool,
    /// True if an unconfirmed image was just abandoned and the previous slot is booted instead.
    pub reverted: bool,
}

/// Tunables of the slot manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotConfig {
    /// Boots a new image gets to call [`Slots::mark_booted`] before the device reverts.
    pub trial_boots: NonZeroU8,
}

impl Default for SlotConfig {
    fn default() -> Self {
        Self { trial_boots: DEFAULT_TRIAL_BOOTS }
    }
}

/// Owns the flash and runs the A/B state machine on it.
#[derive(Debug)]
pub struct Slots<F> {
    flash: F,
    layout: FlashLayout,
    config: SlotConfig,
}

type Res<T, F> = Result<T, SlotError<<F as embedded_storage::nor_flash::ErrorType>::Error>>;

fn round_up(n: usize, to: usize) -> Option<usize> {
    n.checked_add(to.checked_sub(1)?)?.checked_div(to)?.checked_mul(to)
}

impl<F: NorFlash> Slots<F> {
    /// Takes the flash after checking that `layout` fits its geometry.
    ///
    /// # Errors
    /// [`SlotError::Layout`].
    pub fn new(flash: F, layout: FlashLayout, config: SlotConfig) -> Res<Self, F> {
        check_layout::<F>(&layout, flash.capacity()).map_err(SlotError::Layout)?;
        Ok(Self { flash, layout, config })
    }

    /// The layout in use.
    #[must_use]
    pub fn layout(&self) -> &FlashLayout {
        &self.layout
    }

    /// Direct access to the flash (e.g. for a factory programmer or a test).
    pub fn flash_mut(&mut self) -> &mut F {
        &mut self.flash
    }

    /// Gives the flash back.
    pub fn into_inner(self) -> F {
        self.flash
    }

    /// The newest valid boot state, if any.
    ///
    /// # Errors
    /// [`SlotError::Flash`] on a read failure.
    pub fn state(&mut self) -> Res<Option<BootState>, F> {
        Ok(self.newest()?.map(|(s, _)| s))
    }

    /// Writes the first boot state for an image already programmed into `slot` (factory provisioning).
    /// The image is hashed first; it becomes the active slot and its release the anti-rollback counter.
    ///
    /// # Errors
    /// [`SlotError::AlreadyProvisioned`], [`SlotError::NoBootableImage`] if the slot does not match `descriptor`,
    /// or a flash error.
    pub fn provision(&mut self, slot: Slot, descriptor: Descriptor) -> Res<(), F> {
        if self.newest()?.is_some() {
            return Err(SlotError::AlreadyProvisioned);
        }
        if !self.slot_matches(slot, &descriptor)? {
            return Err(SlotError::NoBootableImage);
        }
        let mut slots = [Descriptor::default(); 2];
        if let Some(d) = slots.get_mut(slot.index()) {
            *d = descriptor;
        }
        let state = BootState {
            seq: 0,
            active: slot,
            pending: None,
            trial_boots_left: 0,
            min_release_counter: descriptor.release_counter,
            latest_known_time: 0,
            latest_known_counter: 0,
            slots,
        };
        self.commit(None, state).map(|_| ())
    }

    /// Starts writing the image of `manifest` into the inactive slot (erasing only the sectors it needs).
    ///
    /// # Errors
    /// [`SlotError::NotProvisioned`], [`SlotError::UpdateInProgress`], [`SlotError::Rollback`] (checked again here
    /// against the stored counter), [`SlotError::ImageTooLarge`], or a flash error.
    pub fn begin_update(&mut self, manifest: &VerifiedManifest<'_>) -> Res<UpdateSession<'_, F>, F> {
        let (state, sector) = self.newest()?.ok_or(SlotError::NotProvisioned)?;
        if state.pending.is_some() {
            return Err(SlotError::UpdateInProgress);
        }
        let m = manifest.manifest();
        if m.release_counter < state.min_release_counter {
            return Err(SlotError::Rollback { offered: m.release_counter, stored: state.min_release_counter });
        }
        if m.image_len > self.layout.slot_size {
            return Err(SlotError::ImageTooLarge { len: m.image_len, slot_size: self.layout.slot_size });
        }
        let target = state.active.other();
        let start = self.layout.slot_offset(target);
        let erase = u32::try_from(F::ERASE_SIZE).map_err(|_| SlotError::Layout(LayoutError::UnsupportedGeometry))?;
        let span = usize::try_from(m.image_len).ok().and_then(|n| round_up(n, F::ERASE_SIZE));
        let end = span
            .and_then(|s| u32::try_from(s).ok())
            .and_then(|s| start.checked_add(s))
            .ok_or(SlotError::Layout(LayoutError::OutOfBounds))?;
        // One erase call per sector: a power cut between them is then a state the tests exercise.
        let mut at = start;
        while at < end {
            let next = at.checked_add(erase).ok_or(SlotError::Layout(LayoutError::OutOfBounds))?;
            self.flash.erase(at, next).map_err(SlotError::Flash)?;
            at = next;
        }
        let descriptor =
            Descriptor { image_len: m.image_len, release_counter: m.release_counter, image_sha256: m.image_sha256 };
        Ok(UpdateSession {
            check: ImageCheck::new(manifest),
            slots: self,
            base: (state, sector),
            target,
            descriptor,
            observed: manifest.observed(),
            staged: [0xFF; IO_CHUNK],
            fill: 0,
            next_offset: start,
            aborted: false,
        })
    }

    /// Decides which slot to boot, and records the decision first (embassy-boot's bootloader step):
    /// a pending image with trial boots left is booted and one trial is used up; a pending image without trial
    /// boots left (it never confirmed) or that no longer verifies is abandoned and the active slot is booted.
    /// The chosen slot is hashed before it is returned.
    ///
    /// # Errors
    /// [`SlotError::NotProvisioned`], [`SlotError::NoBootableImage`], or a flash error.
    pub fn boot(&mut self) -> Res<BootDecision, F> {
        let (mut state, sector) = self.newest()?.ok_or(SlotError::NotProvisioned)?;
        let mut reverted = false;
        if let Some(pending) = state.pending {
            let descriptor = state.descriptor(pending);
            if let Some(left) = state.trial_boots_left.checked_sub(1)
                && self.slot_matches(pending, &descriptor)?
            {
                self.commit(Some((state, sector)), BootState { trial_boots_left: left, ..state })?;
                return Ok(self.decision(pending, descriptor, true, false));
            }
            let next = BootState { pending: None, trial_boots_left: 0, ..state };
            state = self.commit(Some((state, sector)), next)?;
            reverted = true;
        }
        let descriptor = state.descriptor(state.active);
        if self.slot_matches(state.active, &descriptor)? {
            Ok(self.decision(state.active, descriptor, false, reverted))
        } else {
            Err(SlotError::NoBootableImage)
        }
    }

    /// Confirms the trial-booted pending image (embassy-boot's `mark_booted`): it becomes the active slot and its
    /// release counter becomes the anti-rollback counter. Call it from the new image once it is healthy.
    ///
    /// # Errors
    /// [`SlotError::NothingToConfirm`] if nothing pending has been trial-booted, or a flash error.
    pub fn mark_booted(&mut self) -> Res<Slot, F> {
        let (state, sector) = self.newest()?.ok_or(SlotError::NotProvisioned)?;
        let pending = state.pending.ok_or(SlotError::NothingToConfirm)?;
        if state.trial_boots_left >= self.config.trial_boots.get() {
            return Err(SlotError::NothingToConfirm);
        }
        let release = state.descriptor(pending).release_counter;
        let next = BootState {
            active: pending,
            pending: None,
            trial_boots_left: 0,
            min_release_counter: state.min_release_counter.max(release),
            ..state
        };
        self.commit(Some((state, sector)), next)?;
        Ok(pending)
    }

    /// Hashes `slot` and compares it with `descriptor`; an empty or oversized descriptor never matches.
    ///
    /// # Errors
    /// A flash read error.
    pub fn slot_matches(&mut self, slot: Slot, descriptor: &Descriptor) -> Res<bool, F> {
        if descriptor.image_len == 0 || descriptor.image_len > self.layout.slot_size {
            return Ok(false);
        }
        let mut check = ImageCheck::expecting(descriptor.image_len, descriptor.image_sha256);
        let mut buf = [0u8; IO_CHUNK];
        let mut offset = self.layout.slot_offset(slot);
        let mut left = usize::try_from(descriptor.image_len).map_err(|_| SlotError::NoBootableImage)?;
        while left > 0 {
            let take = left.min(IO_CHUNK);
            let read_len = round_up(take, F::READ_SIZE).ok_or(SlotError::Layout(LayoutError::UnsupportedGeometry))?;
            let chunk = buf.get_mut(..read_len).ok_or(SlotError::Layout(LayoutError::UnsupportedGeometry))?;
            self.flash.read(offset, chunk).map_err(SlotError::Flash)?;
            if check.update(chunk.get(..take).unwrap_or_default()).is_err() {
                return Ok(false);
            }
            left = left.saturating_sub(take);
            offset = offset.saturating_add(IO_CHUNK as u32);
        }
        Ok(check.finish().is_ok())
    }

    fn decision(&self, slot: Slot, descriptor: Descriptor, trial: bool, reverted: bool) -> BootDecision {
        BootDecision { slot, offset: self.layout.slot_offset(slot), descriptor, trial, reverted }
    }

    /// Reads both state records and returns the newest valid one with the index of its sector.
    fn newest(&mut self) -> Res<Option<(BootState, usize)>, F> {
        let mut best: Option<(BootState, usize)> = None;
        let read_len = round_up(RECORD_LEN, F::READ_SIZE).ok_or(SlotError::Layout(LayoutError::UnsupportedGeometry))?;
        for (i, &offset) in self.layout.state_sectors.iter().enumerate() {
            let mut buf = [0u8; IO_CHUNK];
            let rec = buf.get_mut(..read_len).ok_or(SlotError::Layout(LayoutError::UnsupportedGeometry))?;
            self.flash.read(offset, rec).map_err(SlotError::Flash)?;
            if let Some(state) = BootState::decode(rec)
                && best.as_ref().is_none_or(|(b, _)| state.seq > b.seq)
            {
                best = Some((state, i));
            }
        }
        Ok(best)
    }

    /// Writes `next` as the record after `prev`, into the sector that does not hold `prev`, then reads it back.
    fn commit(&mut self, prev: Option<(BootState, usize)>, next: BootState) -> Res<BootState, F> {
        let (seq, sector) = match prev {
            Some((p, i)) => (p.seq.checked_add(1).ok_or(SlotError::SequenceExhausted)?, 1usize.saturating_sub(i)),
            None => (1, 0),
        };
        let next = BootState { seq, ..next };
        let offset = self.layout.state_sectors.get(sector).copied().ok_or(SlotError::StateWriteFailed)?;
        let erase = u32::try_from(F::ERASE_SIZE).map_err(|_| SlotError::Layout(LayoutError::UnsupportedGeometry))?;
        let end = offset.checked_add(erase).ok_or(SlotError::Layout(LayoutError::OutOfBounds))?;
        self.flash.erase(offset, end).map_err(SlotError::Flash)?;
        let mut buf = [0xFFu8; IO_CHUNK];
        let record = next.encode();
        if let Some(dst) = buf.get_mut(..RECORD_LEN) {
            dst.copy_from_slice(&record);
        }
        let write_len =
            round_up(RECORD_LEN, F::WRITE_SIZE).ok_or(SlotError::Layout(LayoutError::UnsupportedGeometry))?;
        let src = buf.get(..write_len).ok_or(SlotError::Layout(LayoutError::UnsupportedGeometry))?;
        self.flash.write(offset, src).map_err(SlotError::Flash)?;
        match self.newest()? {
            Some((s, i)) if i == sector && s == next => Ok(next),
            _ => Err(SlotError::StateWriteFailed),
        }
    }
}

fn check_layout<F: NorFlash>(layout: &FlashLayout, capacity: usize) -> Result<(), LayoutError> {
    let (w, r, e) = (F::WRITE_SIZE, F::READ_SIZE, F::ERASE_SIZE);
    let geometry_ok = w != 0
        && r != 0
        && e != 0
        && IO_CHUNK.is_multiple_of(w)
        && IO_CHUNK.is_multiple_of(r)
        && e.is_multiple_of(w)
        && e.is_multiple_of(r)
        && round_up(RECORD_LEN, w.max(r)).is_some_and(|span| e >= span)
        && u32::try_from(e).is_ok();
    if !geometry_ok {
        return Err(LayoutError::UnsupportedGeometry);
    }
    let e = e as u64;
    let size = u64::from(layout.slot_size);
    if size == 0 || !size.is_multiple_of(e) {
        return Err(LayoutError::Misaligned);
    }
    let regions = [
        (u64::from(layout.state_sectors[0]), e),
        (u64::from(layout.state_sectors[1]), e),
        (u64::from(layout.slots[0]), size),
        (u64::from(layout.slots[1]), size),
    ];
    for (i, &(start, len)) in regions.iter().enumerate() {
        if !start.is_multiple_of(e) {
            return Err(LayoutError::Misaligned);
        }
        if start.saturating_add(len) > capacity as u64 {
            return Err(LayoutError::OutOfBounds);
        }
        for &(s2, l2) in regions.iter().skip(i.saturating_add(1)) {
            if start < s2.saturating_add(l2) && s2 < start.saturating_add(len) {
                return Err(LayoutError::Overlap);
            }
        }
    }
    Ok(())
}

/// An image being streamed into the inactive slot. Any error aborts the session; the slot is then ignored by the
/// boot state, and a new [`Slots::begin_update`] starts over.
#[derive(Debug)]
pub struct UpdateSession<'s, F> {
    slots: &'s mut Slots<F>,
    base: (BootState, usize),
    target: Slot,
    descriptor: Descriptor,
    observed: Observed,
    check: ImageCheck,
    staged: [u8; IO_CHUNK],
    fill: usize,
    next_offset: u32,
    aborted: bool,
}

impl<F: NorFlash> UpdateSession<'_, F> {
    /// The slot being written.
    #[must_use]
    pub fn target(&self) -> Slot {
        self.target
    }

    /// Streams the next chunk. A chunk that would make the image longer than its manifest says is refused before
    /// any of it reaches the flash.
    ///
    /// # Errors
    /// [`SlotError::Image`] ([`ImageError::TooLong`]), [`SlotError::SessionAborted`], or a flash error.
    pub fn write(&mut self, chunk: &[u8]) -> Res<(), F> {
        if self.aborted {
            return Err(SlotError::SessionAborted);
        }
        let result = self.write_inner(chunk);
        self.aborted = result.is_err();
        result
    }

    fn write_inner(&mut self, mut chunk: &[u8]) -> Res<(), F> {
        self.check.update(chunk).map_err(SlotError::Image)?;
        while !chunk.is_empty() {
            let room = IO_CHUNK.saturating_sub(self.fill);
            let (now, rest) = chunk.split_at(room.min(chunk.len()));
            let end = self.fill.saturating_add(now.len());
            if let Some(dst) = self.staged.get_mut(self.fill..end) {
                dst.copy_from_slice(now);
            }
            self.fill = end;
            chunk = rest;
            if self.fill == IO_CHUNK {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Writes the staged bytes, padded with `0xFF` to the flash write size.
    fn flush(&mut self) -> Res<(), F> {
        if self.fill == 0 {
            return Ok(());
        }
        let len = round_up(self.fill, F::WRITE_SIZE).ok_or(SlotError::Layout(LayoutError::UnsupportedGeometry))?;
        if let Some(pad) = self.staged.get_mut(self.fill..len) {
            pad.fill(0xFF);
        }
        let src = self.staged.get(..len).ok_or(SlotError::Layout(LayoutError::UnsupportedGeometry))?;
        self.slots.flash.write(self.next_offset, src).map_err(SlotError::Flash)?;
        self.next_offset = self.next_offset.saturating_add(len as u32);
        self.fill = 0;
        Ok(())
    }

    /// Ends the stream (embassy-boot's `verify_and_mark_updated`): checks length and hash of what was streamed,
    /// reads the slot back and hashes it again, then records the slot as pending with fresh trial boots and raises
    /// the stored clock floors to what the manifest check observed.
    ///
    /// # Errors
    /// [`SlotError::Image`], [`SlotError::ReadBackMismatch`], [`SlotError::SessionAborted`], or a flash error.
    pub fn finish(&mut self) -> Res<(), F> {
        if self.aborted {
            return Err(SlotError::SessionAborted);
        }
        // Whatever happens next, this session cannot be finished twice.
        self.aborted = true;
        self.flush()?;
        self.check.clone().finish().map_err(SlotError::Image)?;
        if !self.slots.slot_matches(self.target, &self.descriptor)? {
            return Err(SlotError::ReadBackMismatch);
        }
        let (state, sector) = self.base;
        let mut next =
            BootState { pending: Some(self.target), trial_boots_left: self.slots.config.trial_boots.get(), ..state };
        next.set_descriptor(self.target, self.descriptor);
        match self.observed {
            Observed::UnixSeconds(t) => next.latest_known_time = next.latest_known_time.max(t),
            Observed::GatewayCounter(c) => next.latest_known_counter = next.latest_known_counter.max(c),
        }
        self.slots.commit(Some((state, sector)), next).map(|_| ())
    }
}
