//! Memory measurement: a counting global allocator (live heap bytes), the resident set size, an
//! estimate of the heap the input events hold, and a store that keeps nothing, so that memory per
//! live session is what the entities' state holds.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use propensity_actors::SessionKey;
use propensity_actors::event::Event;
use propensity_actors::outcomes::{IndexEntry, OpenSession, OutcomeTally, SessionEnd, TallyKey};
use propensity_actors::store::{
    LoadedCatalog, LoadedUserSide, StateBatch, StateStore, StoreFuture,
};

/// Heap held by the events themselves: the vector's whole buffer (its capacity, which a
/// collected vector may hold beyond its length) and the events' strings.
#[allow(clippy::ptr_arg)] // it needs the capacity, which a slice does not have
pub fn events_heap_estimate(events: &Vec<Event>) -> i64 {
    let strings: usize = events
        .iter()
        .map(|event| {
            event.user_session.capacity()
                + event.category_code.as_ref().map_or(0, String::capacity)
                + event.brand.as_ref().map_or(0, String::capacity)
                + event.event_id.as_ref().map_or(0, String::capacity)
        })
        .sum();
    (events.capacity() * std::mem::size_of::<Event>() + strings) as i64
}

/// A store that accepts every write and holds nothing: isolates the engine's own memory from the
/// embedded store's page cache when memory per session is measured.
pub struct DiscardStore;

impl StateStore for DiscardStore {
    fn save(&self, _: Arc<StateBatch>) -> StoreFuture<Vec<SessionEnd>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn load_open_sessions(&self, _: u16) -> StoreFuture<Vec<OpenSession>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn load_tallies(&self, _: i64, _: i64) -> StoreFuture<Vec<(TallyKey, OutcomeTally)>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn load_index_entry(&self, _: SessionKey, _: u16) -> StoreFuture<IndexEntry> {
        Box::pin(async { Ok(IndexEntry::default()) })
    }

    fn load_user_side(&self, _: Vec<u64>, _: Vec<SessionKey>) -> StoreFuture<LoadedUserSide> {
        Box::pin(async { Ok((Vec::new(), Vec::new())) })
    }

    fn load_catalog(&self, _: Vec<u64>, _: Vec<u64>) -> StoreFuture<LoadedCatalog> {
        Box::pin(async { Ok((Vec::new(), Vec::new())) })
    }
}

/// Counts live heap bytes, so memory per session is measured as what the state holds, not as
/// resident pages the allocator kept after a burst.
struct CountingAllocator;

/// One counter per thread (threads beyond the last share them): a single counter that every
/// actor thread updates on every allocation bounced its cache line between the cores and slowed
/// the very path the benchmark measures. A byte freed on another thread than it was allocated
/// on counts there; the sum over the slots is exact all the same.
const COUNTER_SLOTS: usize = 64;

#[repr(align(64))]
struct Slot(AtomicI64);

static LIVE_HEAP_BYTES: [Slot; COUNTER_SLOTS] = [const { Slot(AtomicI64::new(0)) }; COUNTER_SLOTS];
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's counter.
fn counter() -> &'static AtomicI64 {
    let slot = SLOT.with(|slot| {
        if slot.get() == usize::MAX {
            slot.set(NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % COUNTER_SLOTS);
        }
        slot.get()
    });
    &LIVE_HEAP_BYTES[slot].0
}

// The only unsafe code of the workspace: a global allocator must implement an unsafe trait. It
// forwards every call to mimalloc (the allocator the service runs on) unchanged and only adds
// up sizes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counter().fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        counter().fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.dealloc(pointer, layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counter().fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.realloc(pointer, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Live heap bytes now, as the counting allocator sees them.
pub fn heap_bytes() -> i64 {
    LIVE_HEAP_BYTES
        .iter()
        .map(|slot| slot.0.load(Ordering::Relaxed))
        .sum()
}

/// The resident set size of this process, in bytes.
pub fn resident_bytes() -> i64 {
    // Second field of /proc/self/statm: resident pages.
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|text| {
            text.split_whitespace()
                .nth(1)
                .and_then(|pages| pages.parse::<i64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}
