//! An allocator for the matcher's largest arrays (the key map's slab and
//! index) that asks Linux to back them with 2 MiB pages.
//!
//! With many keys every event reads a key's entry at a random place in
//! arrays of hundreds of megabytes: each read misses the cache, and on
//! 4 KiB pages the address translation misses too, a page walk per read
//! that no prefetch of ours hides. This machine's kernel gives huge pages
//! only to memory that asks (`transparent_hugepage` set to `madvise`, the
//! common default), so blocks of 4 MiB and more are aligned to 2 MiB and
//! advised `MADV_HUGEPAGE` when they are allocated, before anything
//! touches them. Smaller blocks, and other systems, are left to
//! the global allocator as they are. The gain is measured in BENCHMARKS.md
//! ("Flat cost curves").

use std::ptr::NonNull;

use allocator_api2::alloc::{AllocError, Allocator, Global, Layout};

/// A 2 MiB page.
const HUGE_PAGE: usize = 2 << 20;

/// Blocks from this size on are advised: two pages, so that alignment
/// costs at most half of the block.
const ADVISE_FROM: usize = 2 * HUGE_PAGE;

#[derive(Clone, Copy, Debug, Default)]
pub struct HugePages;

/// The layout a block is really allocated with: a large one aligned to a
/// huge page, so that all of it can be one.
fn huge(layout: Layout) -> Layout {
    if layout.size() < ADVISE_FROM {
        return layout;
    }
    Layout::from_size_align(layout.size(), layout.align().max(HUGE_PAGE)).unwrap_or(layout)
}

// SAFETY: every block comes from `Global` and goes back to it with the
// layout it was allocated with (`huge` of the caller's layout, the same
// function each way); the advice changes no memory.
//
// Growing is the trait's default: a new block, advised, and a copy. Going
// through `realloc` instead (glibc moves a large block's pages with
// `mremap`, no copy) keeps the pages already touched at 4 KiB, and the key
// curve lost most of the gain (10M keys: 275-314 ns against 330-336, two
// rounds each); the price is that a growing slab briefly holds both
// copies.
unsafe impl Allocator for HugePages {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let block = Global.allocate(huge(layout))?;
        if layout.size() >= ADVISE_FROM {
            advise(block.cast::<u8>().as_ptr(), layout.size());
        }
        Ok(NonNull::slice_from_raw_parts(block.cast(), layout.size()))
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller passes a block of ours and its layout.
        unsafe { Global.deallocate(ptr, huge(layout)) }
    }
}

/// Asks the kernel for huge pages under `len` bytes at `at` (aligned to a
/// huge page). A hint: a kernel without them refuses, and nothing changes.
/// The block is new and untouched (glibc maps large blocks afresh), so its
/// pages fault in as huge ones.
fn advise(at: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    // SAFETY: the range is a block just allocated to us; MADV_HUGEPAGE
    // neither reads nor changes its contents.
    unsafe {
        libc::madvise(at.cast(), len, libc::MADV_HUGEPAGE);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (at, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_large_and_small_hold_what_is_written() {
        for size in [16, ADVISE_FROM - 1, ADVISE_FROM, 3 * ADVISE_FROM + 5] {
            let mut v: allocator_api2::vec::Vec<u8, HugePages> =
                allocator_api2::vec::Vec::with_capacity_in(size, HugePages);
            v.resize(size, 7);
            if size >= ADVISE_FROM {
                assert_eq!(v.as_ptr() as usize % HUGE_PAGE, 0);
            }
            // Grown past the capacity, then shrunk back.
            v.extend(std::iter::repeat_n(1, size + 3));
            assert_eq!(v.len(), 2 * size + 3);
            v.truncate(size);
            v.shrink_to_fit();
            assert!(v.iter().all(|&b| b == 7));
        }
    }
}
