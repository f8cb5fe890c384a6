//! A global allocator for test binaries that measure allocation sizes: every
//! call goes to the system allocator unchanged, after the size requested is
//! shown to the binary's hook (`Counting::note`). The hook must not allocate:
//! it runs inside the allocator.
//!
//! Included with `#[path]` by the binaries that need it (a test binary can
//! have only one global allocator, and each has its own hook).

use std::alloc::{GlobalAlloc, Layout, System};

/// Passes every call to [`System`], first calling `note` with the bytes
/// asked for (alloc, alloc_zeroed, and the new size of a realloc).
pub struct Counting {
    pub note: fn(usize),
}

// SAFETY: every call is passed to the system allocator unchanged; `note`
// must not allocate (each binary's hook touches only const-initialised
// thread-locals).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        (self.note)(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        (self.note)(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        (self.note)(new_size);
        // SAFETY: as for `alloc`; `ptr` came from this allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}
