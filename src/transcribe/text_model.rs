//! What transcription needs beyond the encoder, prepared once and shared by every stream with the
//! same model (issue 12): the tokenizer, the decoder's prepared weights and the model's generation
//! config. A stream's own decoding state (caches, prompt, seek position) stays in its
//! [`Transcriber`](super::Transcriber).
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::{decoding, TranscribeError, TranscribeOptions};
use crate::cancel::Cancel;
use crate::model::decoder::{Decoder, KvCache};
use crate::model::tokenizer::Tokenizer;
use crate::model::{Dims, WhisperConfig, WhisperModel};
use crate::npu;

#[derive(Debug)]
pub struct TextModel {
    pub(super) tokenizer: Arc<Tokenizer>,
    pub(super) decoder: Arc<Decoder>,
    pub(super) config: WhisperConfig,
    pub(super) dims: Dims,
    /// The model's directory or file, for messages.
    pub(super) name: String,
    /// The cache every stream decodes several hypotheses in ([`WideCache`]).
    pub(super) wide: Arc<WideCache>,
}

impl TextModel {
    /// Loads the tokenizer of `model` and prepares its decoder on a CPU engine of `precision`, on
    /// the process pool of `threads` threads (0: one per core).
    pub fn new(
        model: &WhisperModel,
        precision: npu::Precision,
        threads: usize,
    ) -> Result<TextModel, TranscribeError> {
        let tokenizer = model.tokenizer()?;
        let engine: Arc<dyn npu::Engine> = match precision {
            npu::Precision::F32 => Arc::new(npu::CpuF32Engine::new()),
            npu::Precision::Int8 => Arc::new(npu::cpu_int8::CpuInt8Engine::new()),
        };
        let decoder = Decoder::new(model, engine, threads)?;
        Ok(Self::with_parts(model, tokenizer, decoder))
    }

    /// From a tokenizer and a decoder made elsewhere (another engine, say).
    pub fn with_parts(model: &WhisperModel, tokenizer: Tokenizer, decoder: Decoder) -> TextModel {
        // Sized for the default options' largest batch; a stream asking more grows it once.
        let mut cache = decoder.new_cache();
        cache.reserve_batch(decoding::largest_batch(&TranscribeOptions::default()));
        let wide = Arc::new(WideCache::new(cache));
        TextModel {
            wide,
            tokenizer: Arc::new(tokenizer),
            decoder: Arc::new(decoder),
            config: model.config().clone(),
            dims: *model.dims(),
            name: model.dir().display().to_string(),
        }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }
}

/// The decoder cache for decodings of several hypotheses at once (the best-of samples of a
/// temperature fallback, the beams of beam search), one for every stream of the model.
///
/// Every stream keeps a cache of its own for one hypothesis (greedy decoding, the low-latency
/// mode, word alignment). A cache for five is 55 MB on base: kept per stream it was most of what a
/// stream cost (issue 12 asks at most 40 MiB), and taken only when needed it grew a long run's
/// memory at its first fallback (issue 10 asks it flat). One shared cache, taken at load, is
/// both: a stream that needs it while another has it waits (the pool's threads were busy with the
/// other's decoding anyway), and gives up waiting when its decoding is cancelled.
pub(super) struct WideCache<C = KvCache> {
    cache: Mutex<Option<C>>,
    returned: Condvar,
}

impl<C> std::fmt::Debug for WideCache<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WideCache").finish_non_exhaustive()
    }
}

/// How often a stream waiting for the wide cache looks at its cancel flag.
const WIDE_CACHE_POLL: Duration = Duration::from_millis(20);

impl<C> WideCache<C> {
    fn new(cache: C) -> Self {
        WideCache {
            cache: Mutex::new(Some(cache)),
            returned: Condvar::new(),
        }
    }

    /// The cache, once no other stream has it; `None` if `cancel` is raised meanwhile.
    pub(super) fn take(&self, cancel: &Cancel) -> Option<WideCacheGuard<'_, C>> {
        let mut slot = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(cache) = slot.take() {
                return Some(WideCacheGuard {
                    owner: self,
                    cache: Some(cache),
                });
            }
            if cancel.is_set() {
                return None;
            }
            slot = self
                .returned
                .wait_timeout(slot, WIDE_CACHE_POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The wide cache while a stream has it; given back when dropped, however the decoding ended.
pub(super) struct WideCacheGuard<'a, C> {
    owner: &'a WideCache<C>,
    cache: Option<C>,
}

impl<C> std::ops::Deref for WideCacheGuard<'_, C> {
    type Target = C;
    fn deref(&self) -> &C {
        self.cache.as_ref().expect("held until dropped")
    }
}

impl<C> std::ops::DerefMut for WideCacheGuard<'_, C> {
    fn deref_mut(&mut self) -> &mut C {
        self.cache.as_mut().expect("held until dropped")
    }
}

impl<C> Drop for WideCacheGuard<'_, C> {
    fn drop(&mut self) {
        let mut slot = self.owner.cache.lock().unwrap_or_else(|e| e.into_inner());
        *slot = self.cache.take();
        drop(slot);
        self.owner.returned.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::time::Instant;

    #[test]
    fn the_wide_cache_goes_to_one_stream_at_a_time_and_comes_back() {
        let wide = Arc::new(WideCache::new(vec![0u8; 4]));
        let cancel = Cancel::new();
        let mut held = wide.take(&cancel).expect("free at first");
        held[0] = 7;
        let (waiter, start) = (wide.clone(), Arc::new(Barrier::new(2)));
        let started = start.clone();
        let other = std::thread::spawn(move || {
            started.wait();
            let got = waiter.take(&Cancel::new()).expect("given back");
            got[0]
        });
        start.wait();
        std::thread::sleep(WIDE_CACHE_POLL * 3);
        assert!(!other.is_finished(), "a second stream took a cache in use");
        drop(held);
        assert_eq!(
            other.join().unwrap(),
            7,
            "the second stream got another cache"
        );
    }

    #[test]
    fn a_cancelled_stream_stops_waiting_for_the_wide_cache() {
        let wide = Arc::new(WideCache::new(()));
        let _held = wide.take(&Cancel::new()).expect("free at first");
        let cancel = Cancel::new();
        let (waiter, flag) = (wide.clone(), cancel.clone());
        let started = Instant::now();
        let other = std::thread::spawn(move || waiter.take(&flag).is_none());
        std::thread::sleep(WIDE_CACHE_POLL * 2);
        cancel.set(true);
        assert!(
            other.join().unwrap(),
            "a cancelled wait still returned the cache"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the cancelled wait took {:?}",
            started.elapsed()
        );
    }
}
