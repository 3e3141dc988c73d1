//! The int8 encoder (`precision=int8` on the CPU) against CTranslate2 4.8's float32 encoder
//! (`shared/golden/enc_<model>_<clip>.npy`, made from `mel_<clip>.npy`).
//!
//! The bounds are CTranslate2's own int8 encoder against its float32 one, as the golden README
//! states them: 0.087 for base and 0.058 for tiny.en (jfk). Our int8 quantizes like CTranslate2
//! (per output channel weights, per row activations, symmetric, 127) but keeps attention in
//! float32.
//!
//! Also: a warm encoder allocates nothing per window, in float32 and int8 (counted by this test
//! binary's global allocator; the tests here run one at a time).
//!
//! Needs the models installed by scripts/fetch-models; fails (never skips) without them.
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use common::{model_dir, read_npy_2d, relative_l2};
use gstwhisperencnpu::model::{Encoder, WhisperModel};
use gstwhisperencnpu::npu::cpu_int8::{CpuInt8Engine, Int8Kernel};
use gstwhisperencnpu::npu::{open_engine, BackendChoice, Engine, Precision};

/// Counts every allocation of this test binary.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The tests of this file run one at a time (the allocation count is global).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn run(model_name: &str, clip: &str, engine: Arc<dyn Engine>) -> f64 {
    let model = WhisperModel::load(&model_dir(model_name)).expect("model loads");
    let mel = read_npy_2d(&format!("golden/mel_{clip}.npy"));
    let reference = read_npy_2d(&format!("golden/enc_{model_name}_{clip}.npy"));
    let mut encoder = Encoder::new(&model, engine, 2).expect("encoder");
    let ours = encoder.forward(mel.view());
    assert_eq!(ours.dim(), reference.dim(), "output shape");
    assert!(ours.iter().all(|v| v.is_finite()), "non-finite output");
    let err = relative_l2(
        ours.as_slice().expect("contiguous"),
        reference.as_slice().expect("contiguous"),
    );
    // A second window through the warm encoder gives the same bits.
    let again = encoder.forward(mel.view());
    assert!(
        again
            .iter()
            .zip(ours.iter())
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "a second run differs"
    );
    err
}

fn check(model_name: &str, clip: &str, bound: f64) {
    let _one_at_a_time = serial();
    let engine = open_engine(BackendChoice::Cpu, Precision::Int8).expect("int8 engine opens");
    assert_eq!(engine.precision(), Precision::Int8);
    let err = run(model_name, clip, engine);
    println!("{model_name} {clip} int8: relative L2 error {err:.4}");
    assert!(
        err <= bound,
        "{model_name} {clip}: int8 relative L2 error {err:.4} > {bound}"
    );
}

#[test]
fn base_jfk() {
    check("base", "jfk", 0.087);
}

#[test]
fn base_espeak() {
    check("base", "espeak", 0.087);
}

#[test]
fn tiny_en_jfk() {
    check("tiny.en", "jfk", 0.058);
}

#[test]
fn tiny_en_espeak() {
    check("tiny.en", "espeak", 0.058);
}

/// Every int8 kernel this CPU runs gives the same encoder output, bit for bit (the integer
/// products are exact; quantization and dequantization are shared).
#[test]
fn every_kernel_gives_the_same_encoder_output() {
    let _one_at_a_time = serial();
    let model = WhisperModel::load(&model_dir("tiny.en")).expect("model loads");
    let mel = read_npy_2d("golden/mel_espeak.npy");
    let mel = mel.slice(ndarray::s![.., ..300]);
    let mut first: Option<(Int8Kernel, ndarray::Array2<f32>)> = None;
    for kernel in Int8Kernel::available() {
        let engine = Arc::new(CpuInt8Engine::with_kernel(kernel).expect("available"));
        let mut encoder = Encoder::new(&model, engine, 2).expect("encoder");
        let out = encoder.forward(mel);
        match &first {
            None => first = Some((kernel, out)),
            Some((k0, o0)) => assert!(
                o0.iter()
                    .zip(out.iter())
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{kernel:?} differs from {k0:?}"
            ),
        }
    }
}

/// After the first window, encoding allocates nothing: every buffer is kept and reused.
#[test]
fn a_warm_encoder_allocates_nothing() {
    let _one_at_a_time = serial();
    let model = WhisperModel::load(&model_dir("tiny.en")).expect("model loads");
    let mel = read_npy_2d("golden/mel_jfk.npy");
    for precision in [Precision::F32, Precision::Int8] {
        let engine = open_engine(BackendChoice::Cpu, precision).expect("engine");
        let mut encoder = Encoder::new(&model, engine, 2).expect("encoder");
        let mut out = ndarray::Array2::<f32>::zeros((512, encoder.d_model()));
        encoder
            .forward_into(mel.view(), out.view_mut())
            .expect("first window");
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..3 {
            encoder
                .forward_into(mel.view(), out.view_mut())
                .expect("window");
        }
        let n = ALLOCATIONS.load(Ordering::Relaxed) - before;
        assert_eq!(n, 0, "{precision}: {n} allocations in 3 warm windows");
    }
}
