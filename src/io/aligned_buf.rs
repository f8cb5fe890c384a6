//! Heap buffers aligned for O_DIRECT.
//!
//! O_DIRECT needs the memory address, the file offset and the length of every
//! write aligned to the device's logical block size. An [`AlignedBuf`] is
//! allocated zeroed at a fixed alignment and never reallocates, so an I/O op may
//! own it (and the kernel may read it) until the op completes.
//!
//! The commit log's write buffers, and the buffers fetches read cold
//! segment data into (`kafka::cold_read`), are made together
//! ([`AlignedBuf::pool`]):
//! one region, aligned to 2 MiB and advised as transparent huge pages
//! (`MADV_HUGEPAGE`), cut into the buffers. Each 4 KiB page of a buffer is
//! otherwise a segment of its own in the block request, so a 1 MiB write
//! takes 256 of them: on a virtio disk without indirect descriptors (the
//! development VM's) that fills the virtqueue, and a second write waits to
//! be requeued behind it. Physically contiguous buffers make a write one
//! segment or a few, and pinning them costs less; the same holds for a
//! 1 MiB O_DIRECT read, which from 4 KiB pages the block layer splits in
//! two (the disk takes at most 254 segments a request). Measured here, 1 MiB
//! O_DIRECT write + fdatasync from a huge page: p50 0.74–0.77 ms against
//! 0.85–0.99 ms from 4 KiB pages (`benches/README.md`). Where transparent
//! huge pages are off, the advice does nothing and the buffers work as
//! before.

use std::alloc::{Layout, alloc_zeroed, dealloc, handle_alloc_error};
use std::ptr::NonNull;
use std::sync::Arc;

/// A transparent huge page on x86-64 and arm64 with 4 KiB base pages.
const HUGE_PAGE_BYTES: usize = 2 * 1024 * 1024;

pub struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
    /// The region this buffer was cut from ([`AlignedBuf::pool`]), freed
    /// with its last buffer; `None` for a buffer that owns its allocation.
    region: Option<Arc<Region>>,
}

// SAFETY: AlignedBuf uniquely owns its allocation or its disjoint part of a
// region (like Vec<u8>); moving it to another thread moves that ownership.
unsafe impl Send for AlignedBuf {}

/// One anonymous mapping cut into a pool's buffers.
struct Region {
    /// Where the mapping starts, and its length (with the slack that
    /// aligned `base`).
    mapping: NonNull<libc::c_void>,
    mapped: usize,
    /// The first byte at a 2 MiB boundary: where the buffers start.
    base: NonNull<u8>,
}

impl Region {
    /// A zeroed (fresh) mapping with at least `size` bytes from a 2 MiB
    /// boundary, advised as huge pages up to the next 2 MiB boundary.
    fn map(size: usize) -> Region {
        // Whole huge pages from `base`, and the slack to align it.
        let advised = size.next_multiple_of(HUGE_PAGE_BYTES);
        let mapped = advised
            .checked_add(HUGE_PAGE_BYTES)
            .expect("the pool's size fits usize");
        // SAFETY: a new private anonymous mapping; no existing memory is
        // touched.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(
            raw != libc::MAP_FAILED,
            "mapping {mapped} bytes of write buffers: {}",
            std::io::Error::last_os_error()
        );
        let mapping = NonNull::new(raw).expect("mmap returns no null mapping");
        let slack = (raw as usize).next_multiple_of(HUGE_PAGE_BYTES) - raw as usize;
        // SAFETY: slack < HUGE_PAGE_BYTES, so base + advised is inside the
        // mapping.
        let base = unsafe { mapping.cast::<u8>().add(slack) };
        // Advice only: without transparent huge pages it fails or does
        // nothing, and the buffers are ordinary pages. Nothing is touched
        // yet, so the pages faulted in next are huge ones where possible.
        // SAFETY: [base, base + advised) lies inside the mapping;
        // MADV_HUGEPAGE changes no contents.
        unsafe { libc::madvise(base.as_ptr().cast(), advised, libc::MADV_HUGEPAGE) };
        // Fault the pages in now (Linux 5.14+), where the pool is made,
        // rather than in the appends that first fill each buffer: a huge
        // page's first touch zeroes 2 MiB. Where the kernel lacks it, the
        // first appends fault them in as before.
        // SAFETY: as above; populating writes only the zeros a fresh
        // anonymous mapping reads as.
        unsafe { libc::madvise(base.as_ptr().cast(), advised, libc::MADV_POPULATE_WRITE) };
        Region {
            mapping,
            mapped,
            base,
        }
    }
}

// SAFETY: the region is only unmapped (in Drop) once no buffer cut from it
// is left; the buffers' bytes are disjoint, each owned by its AlignedBuf.
unsafe impl Send for Region {}
// SAFETY: as above; the region itself is never read or written through.
unsafe impl Sync for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of this length; no buffer cut
        // from it is left.
        unsafe { libc::munmap(self.mapping.as_ptr(), self.mapped) };
    }
}

impl AlignedBuf {
    /// A zeroed buffer of `capacity` bytes aligned to `alignment` (a power of two).
    pub fn zeroed(capacity: usize, alignment: usize) -> AlignedBuf {
        assert!(capacity > 0, "aligned buffer must not be empty");
        let layout = Layout::from_size_align(capacity, alignment)
            .expect("alignment is a power of two and capacity fits isize");
        // SAFETY: layout has a non-zero size (asserted above).
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            handle_alloc_error(layout);
        };
        AlignedBuf {
            ptr,
            layout,
            region: None,
        }
    }

    /// `count` zeroed buffers of `capacity` bytes each, aligned to
    /// `alignment` (a power of two, at most 2 MiB), cut from one fresh
    /// anonymous mapping aligned to 2 MiB and advised as transparent huge
    /// pages before its first touch (see the module's doc); the mapping is
    /// unmapped with the last of them. Panics if the mapping fails, as an
    /// allocation failure aborts.
    pub fn pool(count: usize, capacity: usize, alignment: usize) -> Vec<AlignedBuf> {
        assert!(count > 0 && capacity > 0, "a pool of non-empty buffers");
        assert!(
            alignment.is_power_of_two() && alignment <= HUGE_PAGE_BYTES,
            "alignment {alignment}"
        );
        // Each buffer starts at a multiple of the alignment.
        let stride = capacity.next_multiple_of(alignment);
        let size = count
            .checked_mul(stride)
            .expect("the pool's size fits usize");
        let region = Arc::new(Region::map(size));
        let layout = Layout::from_size_align(capacity, alignment)
            .expect("alignment is a power of two and capacity fits isize");
        (0..count)
            .map(|index| {
                // SAFETY: index * stride + capacity <= count * stride = size,
                // inside the region.
                let ptr = unsafe { region.base.add(index * stride) };
                AlignedBuf {
                    ptr,
                    layout,
                    region: Some(Arc::clone(&region)),
                }
            })
            .collect()
    }

    pub fn capacity(&self) -> usize {
        self.layout.size()
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for layout.size() initialised (zeroed) bytes and
        // uniquely owned; the shared borrow of self prevents mutation meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and the unique borrow of self makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.region.is_none() {
            // SAFETY: ptr was returned by alloc_zeroed with this exact layout.
            unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
        }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("capacity", &self.layout.size())
            .field("alignment", &self.layout.align())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_is_zeroed_and_aligned() {
        let buf = AlignedBuf::zeroed(8192, 4096);
        assert_eq!(buf.as_ptr() as usize % 4096, 0);
        assert!(buf.as_slice().iter().all(|&byte| byte == 0));
    }

    #[test]
    fn a_pool_cuts_disjoint_zeroed_aligned_buffers_from_one_region() {
        let odd = AlignedBuf::pool(3, 100, 64);
        assert!(
            odd.iter()
                .all(|buf| (buf.as_ptr() as usize).is_multiple_of(64))
        );
        let mut pool = AlignedBuf::pool(4, 1 << 20, 4096);
        assert_eq!(pool[0].as_ptr() as usize % HUGE_PAGE_BYTES, 0);
        for (index, buf) in pool.iter_mut().enumerate() {
            assert_eq!(buf.capacity(), 1 << 20);
            assert_eq!(buf.as_ptr() as usize % 4096, 0);
            assert!(buf.as_slice().iter().all(|&byte| byte == 0));
            buf.as_mut_slice().fill(index as u8 + 1);
        }
        // Writing each left the others alone: no two overlap.
        for (index, buf) in pool.iter().enumerate() {
            assert!(buf.as_slice().iter().all(|&byte| byte == index as u8 + 1));
        }
        // The region lives while any buffer does.
        let last = pool.pop().expect("four buffers");
        drop(pool);
        assert!(last.as_slice().iter().all(|&byte| byte == 4));
    }
}
