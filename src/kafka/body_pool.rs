//! Reused buffers for request bodies larger than the read-ahead buffer
//! (issue 19 item 5).
//!
//! A large frame (a 1 MB produce batch, say) used to get a fresh buffer that
//! doubled as its bytes arrived: five allocations and four copies for 1 MB,
//! and fresh pages from the allocator, each a page fault and a zeroing on
//! the shard thread. Profiled at 100 MB/s of 1 MB acks=all batches, that
//! growth was about a sixth of the broker's CPU. Bodies now come from this
//! pool and go back to it when the last `Bytes` slice of them is dropped
//! (on whatever thread that is), so a steady stream of large requests reads
//! into memory that is already mapped and big enough.
//!
//! Framing's rules still hold. No allocation follows a declared size: a
//! buffer taken from the pool is already allocated, and one that is too
//! small grows as before, doubling as bytes arrive, never past the declared
//! size. And a body never holds more memory than its frame leased from the
//! request budget: the pool lends only a buffer no larger than the declared
//! size (the largest such).
//! What the pool keeps is bounded: buffers of at most
//! [`POOL_BUFFER_MAX_BYTES`] each, [`POOL_RETAINED_MAX_BYTES`] in all, across
//! the broker (a larger or surplus buffer is freed as before).

use std::sync::Mutex;

use bytes::Bytes;

/// The largest buffer the pool keeps: the default batch ceiling.
pub const POOL_BUFFER_MAX_BYTES: usize = 8 * 1024 * 1024;
/// Capacity the pool keeps in all.
pub const POOL_RETAINED_MAX_BYTES: usize = 32 * 1024 * 1024;

/// The broker's pool.
static POOL: BodyPool = BodyPool::new();

/// An empty buffer for a large body of `size` declared bytes: the largest
/// pooled one no larger than `size`, else a new one without capacity. Never
/// larger, so a body holds no more memory than the request budget leased
/// for it (an 8 MiB buffer lent to a trickled 65 KB frame would hold 128
/// times its lease).
pub fn take(size: usize) -> Vec<u8> {
    POOL.take(size)
}

/// `body` as `Bytes` whose buffer goes back to the pool once every slice of
/// it is dropped.
pub fn into_bytes(body: Vec<u8>) -> Bytes {
    POOL.wrap(body)
}

/// Free buffers (empty, with capacity), most recently returned last.
pub struct BodyPool {
    free: Mutex<FreeBuffers>,
}

struct FreeBuffers {
    buffers: Vec<Vec<u8>>,
    /// Sum of the buffers' capacities.
    retained: usize,
}

impl BodyPool {
    const fn new() -> BodyPool {
        BodyPool {
            free: Mutex::new(FreeBuffers {
                buffers: Vec::new(),
                retained: 0,
            }),
        }
    }

    fn free(&self) -> std::sync::MutexGuard<'_, FreeBuffers> {
        self.free
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take(&self, size: usize) -> Vec<u8> {
        let mut free = self.free();
        // At most POOL_RETAINED_MAX_BYTES / READ_CHUNK_BYTES (512) entries.
        let best = free
            .buffers
            .iter()
            .enumerate()
            .filter(|(_, buffer)| buffer.capacity() <= size)
            .max_by_key(|(_, buffer)| buffer.capacity())
            .map(|(index, _)| index);
        match best {
            Some(index) => {
                let buffer = free.buffers.swap_remove(index);
                free.retained -= buffer.capacity();
                buffer
            }
            None => Vec::new(),
        }
    }

    fn wrap(&'static self, body: Vec<u8>) -> Bytes {
        Bytes::from_owner(PooledBody { body, pool: self })
    }

    /// Keep `buffer` for a later body if it is within the pool's bounds.
    fn give_back(&self, mut buffer: Vec<u8>) {
        let capacity = buffer.capacity();
        if capacity == 0 || capacity > POOL_BUFFER_MAX_BYTES {
            return;
        }
        let mut free = self.free();
        if free.retained + capacity > POOL_RETAINED_MAX_BYTES {
            return;
        }
        buffer.clear();
        free.retained += capacity;
        free.buffers.push(buffer);
    }
}

/// The owner behind a pooled body's `Bytes`.
struct PooledBody {
    body: Vec<u8>,
    pool: &'static BodyPool,
}

impl AsRef<[u8]> for PooledBody {
    fn as_ref(&self) -> &[u8] {
        &self.body
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.body));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> &'static BodyPool {
        Box::leak(Box::new(BodyPool::new()))
    }

    #[test]
    fn a_body_buffer_comes_back_once_its_last_slice_is_dropped() {
        let pool = pool();
        let mut buffer = pool.take(100_000);
        assert_eq!(buffer.capacity(), 0, "an empty pool hands out no memory");
        buffer.extend_from_slice(&[7; 100_000]);
        let address = buffer.as_ptr();
        let bytes = pool.wrap(buffer);
        let slice = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(
            pool.take(usize::MAX).capacity(),
            0,
            "a slice still holds the buffer"
        );
        assert_eq!(&slice[..], &[7; 10]);
        drop(slice);
        assert_eq!(
            pool.take(99_999).capacity(),
            0,
            "never lent to a smaller frame"
        );
        let again = pool.take(100_000);
        assert_eq!(again.as_ptr(), address, "the same buffer, reused");
        assert!(again.is_empty() && again.capacity() >= 100_000);
    }

    #[test]
    fn the_pool_keeps_no_oversized_buffer_and_bounds_what_it_keeps() {
        let pool = pool();
        drop(pool.wrap(Vec::with_capacity(POOL_BUFFER_MAX_BYTES + 1)));
        assert_eq!(
            pool.take(usize::MAX).capacity(),
            0,
            "an oversized buffer is freed"
        );
        let held: Vec<Bytes> = (0..=POOL_RETAINED_MAX_BYTES / POOL_BUFFER_MAX_BYTES)
            .map(|_| pool.wrap(Vec::with_capacity(POOL_BUFFER_MAX_BYTES)))
            .collect();
        drop(held);
        let mut kept = 0;
        loop {
            let buffer = pool.take(usize::MAX);
            if buffer.capacity() == 0 {
                break;
            }
            kept += buffer.capacity();
        }
        assert_eq!(
            kept, POOL_RETAINED_MAX_BYTES,
            "kept up to the bound, no more"
        );
    }

    #[test]
    fn a_frame_gets_the_largest_pooled_buffer_that_fits_its_declared_size() {
        let pool = pool();
        for capacity in [1 << 20, 200_000, 8 << 20, 500_000] {
            drop(pool.wrap(Vec::with_capacity(capacity)));
        }
        assert_eq!(pool.take(600_000).capacity(), 500_000);
        assert_eq!(pool.take(199_999).capacity(), 0, "none small enough");
        assert_eq!(pool.take(usize::MAX).capacity(), 8 << 20);
        assert_eq!(pool.take(8 << 20).capacity(), 1 << 20);
    }
}
