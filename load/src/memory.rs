//! Memory measurement: a counting global allocator (live heap bytes), the resident set size, an
//! estimate of the heap the input events hold, and a store that keeps nothing, so that memory per
//! live session is what the entities' state holds.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};

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
        count_size(layout.size(), 1);
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        counter().fetch_sub(layout.size() as i64, Ordering::Relaxed);
        count_size(layout.size(), -1);
        unsafe { mimalloc::MiMalloc.dealloc(pointer, layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counter().fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        count_size(layout.size(), -1);
        count_size(new_size, 1);
        unsafe { mimalloc::MiMalloc.realloc(pointer, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Allocation sizes below this are counted one by one; larger ones by power of two.
const EXACT_SIZES: usize = 4096;
const SIZE_CLASSES: usize = EXACT_SIZES + 64;

/// Whether live allocations are also counted by size (off unless asked: every allocation then
/// updates one more counter, shared by all threads).
static BY_SIZE: AtomicBool = AtomicBool::new(false);
static LIVE_BY_SIZE: [AtomicI64; SIZE_CLASSES] = [const { AtomicI64::new(0) }; SIZE_CLASSES];
/// Live bytes of the power-of-two classes, whose allocations differ in size.
static LIVE_LARGE_BYTES: [AtomicI64; 64] = [const { AtomicI64::new(0) }; 64];

/// The class of an allocation of `size` bytes: the size itself, or past [`EXACT_SIZES`] its
/// power of two.
fn size_class(size: usize) -> usize {
    if size < EXACT_SIZES {
        size
    } else {
        EXACT_SIZES + size.ilog2() as usize
    }
}

fn count_size(size: usize, allocations: i64) {
    if !BY_SIZE.load(Ordering::Relaxed) {
        return;
    }
    let class = size_class(size);
    LIVE_BY_SIZE[class].fetch_add(allocations, Ordering::Relaxed);
    if class >= EXACT_SIZES {
        LIVE_LARGE_BYTES[class - EXACT_SIZES]
            .fetch_add(allocations * size as i64, Ordering::Relaxed);
    }
}

/// Counts live allocations by size from now on, for [`SizeCensus`].
pub fn count_by_size() {
    BY_SIZE.store(true, Ordering::Relaxed);
}

/// Live allocations by size class: a snapshot, or the change between two.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SizeCensus {
    allocations: Vec<i64>,
    large_bytes: Vec<i64>,
}

/// One size class of a census.
#[derive(Debug, PartialEq)]
pub struct SizeRow {
    /// `"176"`, or `"2^20.."` for a power-of-two class.
    pub size: String,
    pub allocations: i64,
    pub bytes: i64,
}

impl SizeCensus {
    /// The live allocations now (all zero unless [`count_by_size`] was called).
    pub fn now() -> SizeCensus {
        SizeCensus {
            allocations: LIVE_BY_SIZE
                .iter()
                .map(|count| count.load(Ordering::Relaxed))
                .collect(),
            large_bytes: LIVE_LARGE_BYTES
                .iter()
                .map(|bytes| bytes.load(Ordering::Relaxed))
                .collect(),
        }
    }

    /// What changed from `before` to this one.
    pub fn since(&self, before: &SizeCensus) -> SizeCensus {
        let minus = |now: &[i64], then: &[i64]| -> Vec<i64> {
            now.iter().zip(then).map(|(now, then)| now - then).collect()
        };
        SizeCensus {
            allocations: minus(&self.allocations, &before.allocations),
            large_bytes: minus(&self.large_bytes, &before.large_bytes),
        }
    }

    /// Every class that changed, the most bytes first (freed ones last).
    pub fn rows(&self) -> Vec<SizeRow> {
        let mut rows: Vec<SizeRow> = self
            .allocations
            .iter()
            .enumerate()
            .filter(|(_, allocations)| **allocations != 0)
            .map(|(class, &allocations)| {
                if class < EXACT_SIZES {
                    SizeRow {
                        size: class.to_string(),
                        allocations,
                        bytes: allocations * class as i64,
                    }
                } else {
                    let power = class - EXACT_SIZES;
                    SizeRow {
                        size: format!("2^{power}.."),
                        allocations,
                        bytes: self.large_bytes[power],
                    }
                }
            })
            .collect();
        rows.sort_by_key(|row| std::cmp::Reverse(row.bytes));
        rows
    }

    /// The `top` classes that grew most, and the rest summed, per live session.
    pub fn print(&self, sessions: usize, top: usize) {
        let per = sessions.max(1) as f64;
        let rows = self.rows();
        println!("live heap growth by allocation size, per live session ({sessions} sessions):");
        println!(
            "{:>12} {:>14} {:>12} {:>14}",
            "size (B)", "allocations", "per session", "B per session"
        );
        for row in rows.iter().take(top) {
            println!(
                "{:>12} {:>14} {:>12.3} {:>14.1}",
                row.size,
                row.allocations,
                row.allocations as f64 / per,
                row.bytes as f64 / per
            );
        }
        let rest: i64 = rows.iter().skip(top).map(|row| row.bytes).sum();
        let total: i64 = rows.iter().map(|row| row.bytes).sum();
        for (label, bytes) in [("the rest", rest), ("total", total)] {
            println!(
                "{label:>12} {:>14} {:>12} {:>14.1}",
                "",
                "",
                bytes as f64 / per
            );
        }
        println!(
            "(the input events, freed during the run, count here as negative allocations, mostly among the rest; the live heap growth above leaves them out)"
        );
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_classed_exactly_then_by_power_of_two() {
        assert_eq!(size_class(0), 0);
        assert_eq!(size_class(176), 176);
        assert_eq!(size_class(EXACT_SIZES - 1), EXACT_SIZES - 1);
        assert_eq!(size_class(EXACT_SIZES), EXACT_SIZES + 12);
        assert_eq!(size_class(151 << 20), EXACT_SIZES + 27);
    }

    #[test]
    fn a_census_change_lists_the_largest_growth_first_and_frees_last() {
        let mut before = SizeCensus {
            allocations: vec![0; SIZE_CLASSES],
            large_bytes: vec![0; 64],
        };
        before.allocations[36] = 10;
        let mut after = before.clone();
        after.allocations[176] = 3;
        after.allocations[36] = 4;
        after.allocations[EXACT_SIZES + 20] = 1;
        after.large_bytes[20] = 1_500_000;
        let rows = after.since(&before).rows();
        assert_eq!(
            rows,
            vec![
                SizeRow {
                    size: "2^20..".into(),
                    allocations: 1,
                    bytes: 1_500_000
                },
                SizeRow {
                    size: "176".into(),
                    allocations: 3,
                    bytes: 528
                },
                SizeRow {
                    size: "36".into(),
                    allocations: -6,
                    bytes: -216
                },
            ]
        );
    }
}
