//! Keeping freed memory in the process while a backbone trains or extracts features.
//!
//! Each training step allocates and frees the same few dozen buffers of 1–30 MB (activations,
//! gradients, im2col scratch). glibc's defaults hand such blocks back to the kernel when they are
//! freed (`munmap`, or trimming the top of a heap), so the next step faults every page in again:
//! zeroing fresh pages, and, with rayon's threads on other cores, a TLB shoot-down per unmapped
//! range. Measured with `perf` on the small CNN (2 cores), that was a third of the step time
//! (PERFORMANCE.md). While a [`KeepFreedMemory`] guard lives, blocks up to 256 MiB come from
//! the heap and freed memory stays there for the next step, which is what PyTorch's caching
//! allocator achieves for the same loop; when the last guard drops, glibc's usual thresholds
//! return and `malloc_trim` gives the memory back, so a long `lortflow watch` does not hold a
//! backbone's peak while it waits.

use std::sync::Mutex;

/// How many guards are alive; the settings change on 0 → 1 and 1 → 0.
static GUARDS: Mutex<usize> = Mutex::new(0);

/// Allocations below this come from the heap while a guard lives (every activation of the
/// shipped architectures at batch 128 but ResNet-50's largest maps).
const MMAP_THRESHOLD: i32 = 256 << 20;
/// Free memory at the top of a heap that is kept while a guard lives.
const TRIM_THRESHOLD: i32 = 1 << 30;
/// glibc's own upper bound for its dynamic mmap threshold (`DEFAULT_MMAP_THRESHOLD_MAX` on
/// 64-bit): what the threshold grows to in a long run anyway, restored when the last guard drops.
const DEFAULT_MMAP_THRESHOLD_MAX: i32 = 32 << 20;
/// glibc's default trim threshold, restored when the last guard drops.
const DEFAULT_TRIM_THRESHOLD: i32 = 128 << 10;

/// While alive, freed memory stays in the process (see the module docs). Cheap to create; nests.
#[must_use = "the setting lasts as long as the guard"]
pub struct KeepFreedMemory(());

impl KeepFreedMemory {
    pub fn new() -> Self {
        if enter(&mut GUARDS.lock().unwrap_or_else(|e| e.into_inner()))
            && !set(MMAP_THRESHOLD, TRIM_THRESHOLD)
        {
            tracing::debug!(
                "glibc refused the allocator thresholds; training runs with its defaults"
            );
        }
        Self(())
    }
}

impl Default for KeepFreedMemory {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for KeepFreedMemory {
    fn drop(&mut self) {
        let mut guards = GUARDS.lock().unwrap_or_else(|e| e.into_inner());
        if leave(&mut guards) {
            let _ = set(DEFAULT_MMAP_THRESHOLD_MAX, DEFAULT_TRIM_THRESHOLD);
            trim();
        }
    }
}

/// Counts a new guard; whether it is the first.
fn enter(guards: &mut usize) -> bool {
    *guards += 1;
    *guards == 1
}

/// Counts a dropped guard; whether it was the last.
fn leave(guards: &mut usize) -> bool {
    *guards -= 1;
    *guards == 0
}

/// Sets both thresholds; whether glibc accepted them.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set(mmap_threshold: i32, trim_threshold: i32) -> bool {
    // SAFETY: mallopt only changes allocator parameters; it takes glibc's own locks.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, mmap_threshold) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, trim_threshold) == 1
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim releases free memory; it takes glibc's own locks.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

// Other allocators keep their own policies.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set(_: i32, _: i32) -> bool {
    true
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_guard_sets_and_only_the_last_restores() {
        let mut guards = 0;
        assert!(enter(&mut guards));
        assert!(!enter(&mut guards));
        assert!(!leave(&mut guards));
        assert!(leave(&mut guards));
        assert!(enter(&mut guards), "a later guard sets again");
    }

    /// The values are ones this glibc accepts (mallopt returns 0 for one it refuses, and the
    /// guard would then silently train with the defaults).
    #[test]
    fn glibc_accepts_both_settings() {
        assert!(set(MMAP_THRESHOLD, TRIM_THRESHOLD));
        assert!(set(DEFAULT_MMAP_THRESHOLD_MAX, DEFAULT_TRIM_THRESHOLD));
    }
}
