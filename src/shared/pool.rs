//! One rayon pool per thread count for the process. Every encoder and decoder asking for
//! `threads` threads runs on the same pool, so N streams keep `threads` busy threads between
//! them instead of N pools of them (with 4 elements on 2 cores each with its own pools, 86 s of
//! audio took 5.7 times one element's time, most of it lost to threads pre-empting each other).
//! Streams take turns on the pool's threads through rayon's queue; a pool is freed with the last
//! encoder or decoder using it.
use std::sync::{Arc, Weak};

use super::registry::Registry;
use crate::model::ModelError;

/// Thread name prefix: `whisper-0`, `whisper-1`, ... (shown by `top -H`, debuggers).
const THREAD_NAME: &str = "whisper";

static POOLS: Registry<usize, rayon::ThreadPool> = Registry::new();

/// The process's pool of `threads` threads (0: one per core, or `RAYON_NUM_THREADS`).
pub fn shared_pool(threads: usize) -> Result<Arc<rayon::ThreadPool>, ModelError> {
    let threads = match threads {
        0 => default_threads(),
        n => n,
    };
    POOLS
        .get_or_try_insert_with(&threads, || {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("{THREAD_NAME}-{i}"))
                .build()
                .map_err(|e| ModelError::ThreadPool(e.to_string()))
        })
        .map(|(pool, _)| pool)
}

/// Pools alive now (tests: a pool is freed with its last user).
pub fn live_pools() -> Vec<Weak<rayon::ThreadPool>> {
    POOLS.live()
}

/// What rayon gives a pool built without a count: `RAYON_NUM_THREADS`, else one per core.
fn default_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pool_per_thread_count_while_it_is_used() {
        let a = shared_pool(3).unwrap();
        let b = shared_pool(3).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "the same count gives the same pool");
        assert_eq!(a.current_num_threads(), 3);
        let c = shared_pool(1).unwrap();
        assert!(!Arc::ptr_eq(&a, &c), "another count, another pool");
        let weak = Arc::downgrade(&a);
        drop((a, b));
        assert!(weak.upgrade().is_none(), "freed with its last user");
    }
}
