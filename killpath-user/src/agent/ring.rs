//! Reading the kernel's ring buffers (sampled denials, escape attempts)
//! without a polling loop: the ring buffer's fd is registered with tokio and
//! drained each time it becomes readable.
use aya::maps::{MapData, RingBuf};
use tracing::warn;

/// Drains `rb` whenever it is readable, passing each batch of `T` records
/// (the `#[repr(C)]` struct the kernel writes) to `on_batch`. Returns only
/// if the fd cannot be watched. `what` names the buffer in the warning.
pub async fn read_batches<T: Copy, F, Fut>(rb: RingBuf<MapData>, what: &str, mut on_batch: F)
where
    F: FnMut(Vec<T>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // SAFETY: the ring buffer owns its fd and keeps it open for as long as
    // the AsyncFd (which owns the ring buffer) lives.
    let mut fd = match unsafe { tokio::io::unix::AsyncFd::register(rb) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!("cannot watch the {what} ring buffer: {e}");
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        // Readiness cleared before the drain, not after: the kernel wakes
        // the reader only for a record written into an empty ring, so a
        // record committed between the last read and a later clear would
        // leave the reader asleep with the ring never empty again.
        guard.clear_ready();
        let rb = guard.get_inner_mut();
        let mut batch = Vec::new();
        while let Some(item) = rb.next() {
            if item.len() >= std::mem::size_of::<T>() {
                // SAFETY: the kernel wrote a T (a #[repr(C)] plain-data
                // struct shared through killpath-common); read unaligned.
                batch.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T>()) });
            }
        }
        if !batch.is_empty() {
            on_batch(batch).await;
        }
    }
}
