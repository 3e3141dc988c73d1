//! The XDNA2 NPU backend without an NPU: the kernel layout and padding, the emulated shim against
//! the int8 definition, the whole encoder through the XDNA2 engine on the emulated shim against
//! the CPU int8 computation (bit for bit) and the reference outputs, and the element with
//! backend=xdna / auto.
//!
//! The element tests run in a child process of this test binary with the `WHISPERENCNPU_XDNA_*`
//! variables set as each needs (the engine reads them; a test must not change the environment of
//! a process whose other threads read it).
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Once};

use gst::prelude::*;
use gst_check::Harness;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut2};

use gstwhisperencnpu::model::{Encoder, WhisperModel};
use gstwhisperencnpu::npu::cpu_int8::CpuInt8Engine;
use gstwhisperencnpu::npu::quant::{self, QuantizedWeight};
use gstwhisperencnpu::npu::xdna::layout::{self, M_ALIGN, M_MAX, N_ALIGN, TILE_K, TILE_M, TILE_N};
use gstwhisperencnpu::npu::xdna::shim::{GemmParams, GemmShape, Role, Shim, ShimKind};
use gstwhisperencnpu::npu::xdna::{self, XdnaConfig, XdnaDevice, XdnaEngine, XdnaStats};
use gstwhisperencnpu::npu::{
    self, BackendChoice, BackendKind, Engine, EngineError, Linear, Precision,
};

use common::{model_dir, read_npy_2d, relative_l2};

/// The int8 bound of the performance issue: CTranslate2's own int8 encoder against its float32
/// one (base, jfk).
const INT8_MAX_REL_L2: f64 = 0.087;

fn emulator() -> XdnaConfig {
    XdnaConfig::emulated(xdna::emulator_shim_path())
}

fn emulated_engine() -> Arc<XdnaEngine> {
    Arc::new(XdnaEngine::open(&emulator()).expect("open the emulated XDNA2 engine"))
}

/// Deterministic pseudo-random values in [-1, 1).
fn pseudo(rows: usize, cols: usize, seed: u32) -> Array2<f32> {
    let mut st = seed.wrapping_mul(2_654_435_761).wrapping_add(7);
    Array2::from_shape_fn((rows, cols), |_| {
        st ^= st << 13;
        st ^= st >> 17;
        st ^= st << 5;
        (st % 20_001) as f32 / 10_000.0 - 1.0
    })
}

fn pseudo_i8(len: usize, seed: u32) -> Vec<i8> {
    let mut st = seed.wrapping_mul(2_654_435_761).wrapping_add(3);
    (0..len)
        .map(|_| {
            st ^= st << 13;
            st ^= st >> 17;
            st ^= st << 5;
            // The full range, -127 ..= 127 as quantization produces, and -128 too.
            (st % 256) as u8 as i8
        })
        .collect()
}

// ---- layout and padding ------------------------------------------------------------------------

#[test]
fn padding_follows_the_tiles() {
    assert_eq!(
        (TILE_M, TILE_K, TILE_N, M_ALIGN, M_MAX, N_ALIGN),
        (64, 64, 64, 256, 1024, 512)
    );
    // A window's 512 positions and conv1's 1024 im2col rows are each one launch.
    assert_eq!(
        [1, 256, 257, 512, 1024].map(layout::padded_m),
        [256, 256, 512, 512, 1024]
    );
    // conv1 (3 x 80 mel bands), d_model and its multiples for base and tiny.en.
    for (k, padded) in [
        (240, 256),
        (384, 384),
        (512, 512),
        (1152, 1152),
        (1536, 1536),
    ] {
        assert_eq!(layout::padded_k(k), padded, "K {k}");
    }
    assert_eq!(layout::padded_k(2048), 2048);
    assert_eq!(layout::padded_k(1), 64);
    for (n, padded) in [
        (384, 512),
        (512, 512),
        (1152, 1536),
        (1536, 1536),
        (2048, 2048),
    ] {
        assert_eq!(layout::padded_n(n), padded, "N {n}");
    }
    assert_eq!(layout::padded_n(1), 512);
    assert_eq!(
        [1, 511, 512, 1024, 1025, 1500, 3000].map(layout::launches_for),
        [1, 1, 1, 1, 2, 2, 3]
    );
}

/// A launch's runtime parameters are its padded shape in blocks and tiles; every product of base
/// and tiny.en fits the one configuration (at most M_MAX rows a launch).
#[test]
fn runtime_parameters_describe_every_encoder_product() {
    let params = |m, k, n| layout::gemm_params(GemmShape { m, k, n });
    let p = |m_blocks, k_tiles, n_blocks| GemmParams {
        m_blocks,
        k_tiles,
        n_blocks,
    };
    // base: conv1 (1024 im2col rows, K 240 -> 256), conv2, QKV, out, FFN 1, FFN 2.
    assert_eq!(params(1024, 256, 512), p(4, 4, 1));
    assert_eq!(params(512, 1536, 512), p(2, 24, 1));
    assert_eq!(params(512, 512, 1536), p(2, 8, 3));
    assert_eq!(params(512, 512, 512), p(2, 8, 1));
    assert_eq!(params(512, 512, 2048), p(2, 8, 4));
    assert_eq!(params(512, 2048, 512), p(2, 32, 1));
    // tiny.en: QKV 1152 -> 1536 and d 384 -> 512 in N.
    assert_eq!(params(512, 384, 1536), p(2, 6, 3));
    assert_eq!(params(512, 1152, 512), p(2, 18, 1));
    // Instruction files are named by their padded shape.
    let shape = GemmShape {
        m: 1024,
        k: 256,
        n: 512,
    };
    assert_eq!(xdna::insts_file(shape), "gemm_m1024_k256_n512.insts.bin");
    assert_eq!(
        xdna::parse_insts_file(&xdna::insts_file(shape)),
        Some(shape)
    );
    assert_eq!(xdna::parse_insts_file("gemm_k256_n512.insts.bin"), None);
}

/// The tiled layouts are permutations of the padded matrices, and every 64 x 64 tile is one
/// contiguous 4 KiB run, the K tiles of a panel one after the other (what makes the DMAs linear).
#[test]
fn tiled_layouts_are_permutations_of_whole_tiles() {
    let (m_pad, k_pad) = (512, 192);
    let mut seen = vec![false; m_pad * k_pad];
    for r in 0..m_pad {
        for c in 0..k_pad {
            let i = layout::a_index(k_pad, r, c);
            assert!(!seen[i], "A ({r}, {c}) lands on a taken place");
            seen[i] = true;
            let tile = (r / TILE_M) * (k_pad / TILE_K) + c / TILE_K;
            assert_eq!(i / (TILE_M * TILE_K), tile, "A ({r}, {c}) outside its tile");
            // Inside a tile: 8 x 8 blocks, row-major blocks, row-major inside.
            let within = i % (TILE_M * TILE_K);
            let block = ((r % TILE_M) / 8) * (TILE_K / 8) + (c % TILE_K) / 8;
            assert_eq!(within, block * 64 + (r % 8) * 8 + c % 8);
        }
    }
    assert!(seen.iter().all(|&s| s));

    let n_pad = 1024;
    let mut seen = vec![false; k_pad * n_pad];
    for r in 0..k_pad {
        for c in 0..n_pad {
            let i = layout::b_index(k_pad, r, c);
            assert!(!seen[i], "B ({r}, {c}) lands on a taken place");
            seen[i] = true;
            let tile = (c / TILE_N) * (k_pad / TILE_K) + r / TILE_K;
            assert_eq!(i / (TILE_K * TILE_N), tile, "B ({r}, {c}) outside its tile");
            let within = i % (TILE_K * TILE_N);
            let block = ((r % TILE_K) / 8) * (TILE_N / 8) + (c % TILE_N) / 8;
            assert_eq!(within, block * 64 + (r % 8) * 8 + c % 8);
        }
    }
    assert!(seen.iter().all(|&s| s));
}

#[test]
fn packing_places_values_and_zero_pads() {
    // 300 rows of K = 100: rows and columns are both padded (M to 512, K to 128); the buffer is
    // larger (made for M_MAX rows) and its tail is not the launch's.
    let (rows, k) = (300, 100);
    let (m_pad, k_pad) = (layout::padded_m(rows), layout::padded_k(k));
    let q = pseudo_i8(rows * k, 1);
    let mut a = vec![99i8; M_MAX * k_pad];
    layout::pack_a(&q, rows, k, m_pad, k_pad, &mut a);
    assert!(a[m_pad * k_pad..].iter().all(|&v| v == 99));
    for r in 0..m_pad {
        for c in 0..k_pad {
            let want = if r < rows && c < k { q[r * k + c] } else { 0 };
            assert_eq!(a[layout::a_index(k_pad, r, c)], want, "A ({r}, {c})");
        }
    }

    // A weight of 37 outputs x 100 inputs (PyTorch layout): B = W^T, padded to 128 x 512.
    let (n_out, n_pad) = (37, layout::padded_n(37));
    let w = pseudo_i8(n_out * k, 2);
    let mut b = vec![99i8; k_pad * n_pad];
    layout::pack_b(&w, n_out, k, k_pad, n_pad, &mut b);
    for r in 0..k_pad {
        for c in 0..n_pad {
            let want = if r < k && c < n_out { w[c * k + r] } else { 0 };
            assert_eq!(b[layout::b_index(k_pad, r, c)], want, "B ({r}, {c})");
        }
    }

    let c: Vec<i32> = (0..(m_pad * n_pad) as i32).collect();
    let mut acc = vec![0; rows * n_out];
    layout::unpack_c(&c, rows, n_out, n_pad, &mut acc);
    for r in 0..rows {
        for o in 0..n_out {
            assert_eq!(acc[r * n_out + o], (r * n_pad + o) as i32);
        }
    }
}

// ---- the emulated shim -------------------------------------------------------------------------

#[test]
fn emulated_shim_loads_and_says_what_it_is() {
    let shim = Shim::load(&xdna::emulator_shim_path()).unwrap();
    assert_eq!(shim.kind(), ShimKind::Emulator);
    let missing = Shim::load(std::path::Path::new("/nonexistent/libxdna_shim.so")).unwrap_err();
    assert!(
        missing.to_string().contains("/nonexistent/libxdna_shim.so"),
        "{missing}"
    );
}

/// One launch of the emulated device against `quant::gemm_i8_reference`, for several shapes
/// through one configuration (no reconfiguration between them).
#[test]
fn emulated_gemm_equals_the_int8_definition() {
    let shim = Shim::load(&xdna::emulator_shim_path()).unwrap();
    let dev = shim.open(None).unwrap();
    let config = dev.load_config(None, xdna::GEMM_KERNEL).unwrap();
    let shapes = [(256, 64, 512, 1), (512, 256, 512, 2), (1024, 448, 1024, 3)];
    for &(m, k, n, seed) in &shapes {
        let shape = GemmShape { m, k, n };
        let seq = config
            .load_sequence(None, layout::gemm_params(shape))
            .unwrap();
        let a_rm = pseudo_i8(m * k, seed);
        let w = pseudo_i8(n * k, seed + 10); // n x k: B^T
        let mut a = config.alloc(Role::A, m * k).unwrap();
        let mut b = config.alloc(Role::B, k * n).unwrap();
        let c = config.alloc(Role::C, m * n * 4).unwrap();
        layout::pack_a(&a_rm, m, k, m, k, a.as_i8_mut());
        layout::pack_b(&w, n, k, k, n, b.as_i8_mut());
        a.sync_to_device().unwrap();
        b.sync_to_device().unwrap();
        seq.run(&a, &b, &c).unwrap();
        c.sync_from_device().unwrap();
        let mut want = vec![0i32; m * n];
        quant::gemm_i8_reference(&a_rm, &w, m, k, n, &mut want);
        assert!(c.as_i32() == want.as_slice(), "{m}x{k}x{n} differs");
    }
    let counters = dev.counters().unwrap();
    assert_eq!(counters.launches, shapes.len() as u64);
    assert_eq!(counters.reconfigurations, 0);
    assert_eq!(counters.configurations_loaded, 1);
}

/// Launching a sequence of another configuration than the array holds is a reconfiguration,
/// as the device's firmware would load that configuration first.
#[test]
fn emulated_shim_counts_reconfigurations() {
    let shim = Shim::load(&xdna::emulator_shim_path()).unwrap();
    let dev = shim.open(None).unwrap();
    let first = dev.load_config(None, "first").unwrap();
    let second = dev.load_config(None, "second").unwrap();
    let shape = GemmShape {
        m: 256,
        k: 64,
        n: 512,
    };
    let params = layout::gemm_params(shape);
    let (s1, s2) = (
        first.load_sequence(None, params).unwrap(),
        second.load_sequence(None, params).unwrap(),
    );
    let a = first.alloc(Role::A, 256 * 64).unwrap();
    let b = first.alloc(Role::B, 64 * 512).unwrap();
    let c = first.alloc(Role::C, 256 * 512 * 4).unwrap();
    for seq in [&s1, &s1, &s2, &s2, &s1] {
        seq.run(&a, &b, &c).unwrap();
    }
    let counters = dev.counters().unwrap();
    assert_eq!(
        (
            counters.launches,
            counters.reconfigurations,
            counters.configurations_loaded
        ),
        (5, 2, 2)
    );
}

/// Like the device, the emulation computes on what was synced to it, and says what is wrong.
#[test]
fn emulated_shim_needs_syncs_and_checks_its_arguments() {
    let shim = Shim::load(&xdna::emulator_shim_path()).unwrap();
    let dev = shim.open(None).unwrap();
    let config = dev.load_config(None, xdna::GEMM_KERNEL).unwrap();
    let shape = GemmShape {
        m: 512,
        k: 64,
        n: 512,
    };
    let seq = config
        .load_sequence(None, layout::gemm_params(shape))
        .unwrap();
    let mut a = config.alloc(Role::A, 512 * 64).unwrap();
    let mut b = config.alloc(Role::B, 64 * 512).unwrap();
    let c = config.alloc(Role::C, 512 * 512 * 4).unwrap();
    a.as_i8_mut().fill(1);
    b.as_i8_mut().fill(1);
    seq.run(&a, &b, &c).unwrap();
    c.sync_from_device().unwrap();
    assert!(c.as_i32().iter().all(|&v| v == 0), "unsynced inputs used");
    a.sync_to_device().unwrap();
    b.sync_to_device().unwrap();
    seq.run(&a, &b, &c).unwrap();
    assert!(c.as_i32().iter().all(|&v| v == 0), "unsynced output seen");
    c.sync_from_device().unwrap();
    assert!(c.as_i32().iter().all(|&v| v == 64));

    // More row blocks than one launch takes.
    let too_tall = GemmParams {
        m_blocks: (M_MAX / M_ALIGN) as u32 + 1,
        k_tiles: 1,
        n_blocks: 1,
    };
    let err = config.load_sequence(None, too_tall).err().unwrap();
    assert!(err.to_string().contains("m_blocks 5"), "{err}");
    let small = config.alloc(Role::A, 16).unwrap();
    let err = seq.run(&small, &b, &c).unwrap_err();
    assert!(err.to_string().contains("too small"), "{err}");
    let err = seq.run(&b, &a, &c).unwrap_err();
    assert!(err.to_string().contains("wrong argument slots"), "{err}");
}

// ---- the engine --------------------------------------------------------------------------------

/// The CPU int8 computation straight from `quant` (the definition every int8 engine reproduces);
/// the tests compare with it and with the CPU int8 engine.
struct RefInt8Engine;

struct RefInt8Linear(QuantizedWeight);

impl Engine for RefInt8Engine {
    fn backend(&self) -> BackendKind {
        BackendKind::Cpu
    }
    fn precision(&self) -> Precision {
        Precision::Int8
    }
    fn prepare(&self, weight: ArrayView2<f32>, bias: Option<ArrayView1<f32>>) -> Box<dyn Linear> {
        Box::new(RefInt8Linear(quant::quantize_weight(weight, bias)))
    }
}

impl Linear for RefInt8Linear {
    fn n_in(&self) -> usize {
        self.0.n_in
    }
    fn n_out(&self) -> usize {
        self.0.n_out
    }
    fn forward(&self, x: ArrayView2<f32>, y: ArrayViewMut2<f32>) {
        let (rows, k, n) = (x.nrows(), self.0.n_in, self.0.n_out);
        let (mut q, mut scales, mut acc) = (vec![0; rows * k], vec![0.0; rows], vec![0; rows * n]);
        quant::quantize_rows(x, &mut q, &mut scales);
        quant::gemm_i8_reference(&q, &self.0.data, rows, k, n, &mut acc);
        quant::dequantize(&acc, &scales, &self.0, y);
    }
}

fn same_bits(a: &Array2<f32>, b: &Array2<f32>) -> bool {
    a.dim() == b.dim()
        && a.iter()
            .zip(b.iter())
            .all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn linear_layers_equal_the_cpu_int8_computation() {
    let engine = emulated_engine();
    assert_eq!(engine.backend(), BackendKind::Xdna);
    assert_eq!(engine.precision(), Precision::Int8);
    assert!(engine.is_emulated());
    // Odd sizes (every dimension padded), more rows than one launch, with and without bias.
    for (n_out, n_in, rows, bias) in [
        (37, 53, 700, true),
        (600, 64, 512, false),
        (8, 200, 1, true),
        (16, 64, 1100, false),
    ] {
        let w = pseudo(n_out, n_in, n_out as u32);
        let b: Array1<f32> = pseudo(1, n_out, 5).row(0).to_owned();
        let x = pseudo(rows, n_in, rows as u32);
        let bias = bias.then_some(b.view());
        let ours = engine.prepare(w.view(), bias);
        let reference = RefInt8Engine.prepare(w.view(), bias);
        let cpu_int8 = CpuInt8Engine::new().prepare(w.view(), bias);
        assert_eq!((ours.n_in(), ours.n_out()), (n_in, n_out));
        let mut y = Array2::from_elem((rows, n_out), f32::NAN);
        let mut want = Array2::zeros((rows, n_out));
        ours.forward(x.view(), y.view_mut());
        reference.forward(x.view(), want.view_mut());
        assert!(same_bits(&y, &want), "{n_out}x{n_in}, {rows} rows differ");
        cpu_int8.forward(x.view(), want.view_mut());
        assert!(
            same_bits(&y, &want),
            "{n_out}x{n_in}, {rows} rows differ from the CPU int8 engine"
        );
        // The same buffers serve the next call.
        let x2 = pseudo(rows, n_in, 99);
        ours.forward(x2.view(), y.view_mut());
        reference.forward(x2.view(), want.view_mut());
        assert!(same_bits(&y, &want), "second call differs");
    }
    let stats = engine.stats();
    assert!(stats.fallbacks.is_empty(), "{:?}", stats.fallbacks);
    // 1 + 1 + 1 + 2 launches per call, two calls each, on the one configuration.
    assert_eq!(stats.launches, 10);
    assert_eq!(stats.reconfigurations, 0);
    assert_eq!(stats.configurations_loaded, 1);
    // Padded (M, K, N): 768x64x512, 512x64x1024, 256x256x512, 1024x64x512 and 256x64x512.
    assert_eq!(stats.sequences_loaded, 5);
}

fn load_model(name: &str) -> WhisperModel {
    let dir = model_dir(name);
    WhisperModel::load(&dir).unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

/// The whole encoder through an XDNA2 engine against the same encoder on the CPU int8
/// computation: equal bit for bit. Returns the XDNA2 output.
fn encoder_exactness(model_name: &str, engine: Arc<XdnaEngine>) -> Array2<f32> {
    let model = load_model(model_name);
    let mel = read_npy_2d("golden/mel_jfk.npy");
    let mut on_npu = Encoder::new(&model, engine.clone(), 2).unwrap();
    let loaded = engine.stats();
    let started = std::time::Instant::now();
    let ours = on_npu.forward(mel.view());
    let npu_time = started.elapsed();
    let first = engine.stats();
    assert!(ours.iter().all(|v| v.is_finite()));
    let cpu_engines: [(&str, Arc<dyn Engine>); 2] = [
        ("CPU int8 engine", Arc::new(CpuInt8Engine::new())),
        ("quant.rs reference", Arc::new(RefInt8Engine)),
    ];
    for (name, cpu) in cpu_engines {
        let mut on_cpu = Encoder::new(&model, cpu, 2).unwrap();
        let reference = on_cpu.forward(mel.view());
        let differing = ours
            .iter()
            .zip(reference.iter())
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differing, 0,
            "{model_name}: {differing} values differ from the {name} encoder"
        );
    }
    assert!(first.fallbacks.is_empty(), "{:?}", first.fallbacks);
    let d = model.dims();
    // One launch per product: conv1 (all 1024 im2col rows), conv2, and QKV, attention out,
    // FFN 1 and FFN 2 of every layer; one configuration, loaded with the engine, never switched.
    let expected_launches = (2 + 4 * d.n_encoder_layers) as u64;
    assert_eq!(first.since(&loaded), (expected_launches, 0), "first window");
    assert_eq!(
        (first.configurations_loaded, first.reconfigurations),
        (1, 0)
    );
    // One instruction sequence per padded shape of conv1, conv2, QKV, out, FFN 1, FFN 2 (tiny.en's
    // QKV and FFN 1 share 512 x 384 x 1536).
    let shapes = window_shapes(d, ours.nrows());
    assert_eq!(first.sequences_loaded, shapes.len() as u64, "{shapes:?}");
    // kernels/Makefile builds an instruction sequence for each of them by default.
    let built = makefile_shapes();
    assert!(
        shapes.is_subset(&built),
        "kernels/Makefile SHAPES lacks {:?}",
        shapes.difference(&built).collect::<Vec<_>>()
    );
    let device = if engine.is_emulated() {
        "emulated"
    } else {
        "device"
    };
    println!(
        "{model_name}: XDNA2 engine ({device}; first window: {} launches, {} reconfigurations, \
         {} sequences, {:.3} s) == CPU int8 engine == quant.rs reference, bit for bit",
        expected_launches,
        first.reconfigurations,
        first.sequences_loaded,
        npu_time.as_secs_f64()
    );

    // And again: the device buffers and sequences are reused, the result does not change.
    let started = std::time::Instant::now();
    let again = on_npu.forward(mel.view());
    let second: XdnaStats = engine.stats();
    println!(
        "{model_name}: second window {:.3} s, {} launches, {} reconfigurations",
        started.elapsed().as_secs_f64(),
        second.since(&first).0,
        second.since(&first).1
    );
    assert!(same_bits(&again, &ours), "second window differs");
    assert_eq!(
        second.since(&first),
        (expected_launches, 0),
        "second window"
    );
    assert_eq!(second.sequences_loaded, shapes.len() as u64);
    ours
}

/// The launch shapes kernels/Makefile builds by default (`SHAPES_BASE`, `SHAPES_TINY`).
fn makefile_shapes() -> std::collections::BTreeSet<(usize, usize, usize)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/Makefile");
    let text = std::fs::read_to_string(path).expect("kernels/Makefile");
    let shapes: std::collections::BTreeSet<_> = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("SHAPES_BASE :=")
                .or_else(|| l.strip_prefix("SHAPES_TINY :="))
        })
        .flat_map(|l| l.split_whitespace())
        .map(|s| {
            let v: Vec<usize> = s.split('x').map(|d| d.parse().expect("MxKxN")).collect();
            (v[0], v[1], v[2])
        })
        .collect();
    assert!(!shapes.is_empty(), "no SHAPES_BASE / SHAPES_TINY in {path}");
    shapes
}

/// The IRON design's runtime sequence, replayed symbolically on the CPU against recording
/// stand-ins of IRON (kernels/iron/sim/check_sequence.py): for every launch shape the Makefile
/// builds, each worker multiplies the right A and B tiles in K order, with the trip counts the
/// sequence writes into its RTP buffer, every FIFO is consumed to its end, and every element of C
/// is drained exactly once to its place. (The device's own API spelling is checked at first
/// contact, kernels/README.md.)
#[test]
fn the_iron_design_moves_every_launch_right() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/kernels/iron/sim/check_sequence.py"
    );
    let shapes: Vec<String> = makefile_shapes()
        .into_iter()
        .map(|(m, k, n)| format!("{m}x{k}x{n}"))
        .collect();
    let out = match Command::new("python3").arg(script).args(&shapes).output() {
        Ok(out) => out,
        Err(e) => {
            println!("skipped: python3 cannot be run ({e})");
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the design's data movement is wrong");
    assert_eq!(stdout.matches(": ok").count(), shapes.len(), "{stdout}");
}

/// The padded GEMM shapes of one window of `positions` encoder positions.
fn window_shapes(
    d: &gstwhisperencnpu::model::Dims,
    positions: usize,
) -> std::collections::BTreeSet<(usize, usize, usize)> {
    let (m, dm) = (layout::padded_m(positions), d.d_model);
    let shape = |m, k, n| (m, layout::padded_k(k), layout::padded_n(n));
    [
        shape(layout::padded_m(2 * positions), 3 * d.n_mels, dm),
        shape(m, 3 * dm, dm),
        shape(m, dm, 3 * dm),
        shape(m, dm, dm),
        shape(m, dm, 4 * dm),
        shape(m, 4 * dm, dm),
    ]
    .into_iter()
    .collect()
}

#[test]
fn base_encoder_on_the_emulated_npu_equals_cpu_int8() {
    let ours = encoder_exactness("base", emulated_engine());
    let reference = read_npy_2d("golden/enc_base_jfk.npy");
    let err = relative_l2(ours.as_slice().unwrap(), reference.as_slice().unwrap());
    println!("base jfk: relative L2 error of the XDNA2 (int8) encoder {err:.4}");
    assert!(
        err <= INT8_MAX_REL_L2,
        "relative L2 {err} > {INT8_MAX_REL_L2}"
    );
}

#[test]
fn tiny_en_encoder_on_the_emulated_npu_equals_cpu_int8() {
    let ours = encoder_exactness("tiny.en", emulated_engine());
    let reference = read_npy_2d("golden/enc_tiny.en_jfk.npy");
    let err = relative_l2(ours.as_slice().unwrap(), reference.as_slice().unwrap());
    println!("tiny.en jfk: relative L2 error of the XDNA2 (int8) encoder {err:.4}");
    assert!(
        err <= INT8_MAX_REL_L2,
        "relative L2 {err} > {INT8_MAX_REL_L2}"
    );
}

/// On a Ryzen AI machine with the kernels and the XRT shim installed (kernels/README.md):
/// `cargo test --release --test xdna -- --ignored on_the_device`. The same checks as above, on
/// the NPU itself.
#[test]
#[ignore = "needs an XDNA2 NPU with the kernels installed"]
fn base_encoder_on_the_device_equals_cpu_int8() {
    let engine = XdnaEngine::open(&XdnaConfig::from_env()).unwrap_or_else(|e| panic!("{e}"));
    let ours = encoder_exactness("base", Arc::new(engine));
    let reference = read_npy_2d("golden/enc_base_jfk.npy");
    let err = relative_l2(ours.as_slice().unwrap(), reference.as_slice().unwrap());
    println!("base jfk on the device: relative L2 error {err:.4}");
    assert!(
        err <= INT8_MAX_REL_L2,
        "relative L2 {err} > {INT8_MAX_REL_L2}"
    );
}

/// First device run, step 2 (kernels/README.md): one 512 x 512 x 2048 launch of our design on
/// the NPU, the shape upstream's whole_array example is run at first, against the int8
/// definition; then the time of a launch (mean of 20, A and B resident, C synced back).
/// `cargo test --release --test xdna -- --ignored gemm_512x512x2048_on_the_device --nocapture`
#[test]
#[ignore = "needs an XDNA2 NPU with the kernels installed"]
fn gemm_512x512x2048_on_the_device() {
    const LAUNCHES: u32 = 20;
    let config = XdnaConfig::from_env();
    let shim = Shim::load(&config.shim).unwrap_or_else(|e| panic!("{e}"));
    let node = match &config.device {
        XdnaDevice::Node(node) => node.to_string_lossy().into_owned(),
        XdnaDevice::Emulated => panic!("set {} to the NPU, not emulated", xdna::ENV_DEVICE),
    };
    let dev = shim.open(Some(&node)).unwrap_or_else(|e| panic!("{e}"));
    let array = dev
        .load_config(
            Some(&config.kernels.join(xdna::XCLBIN_FILE)),
            xdna::GEMM_KERNEL,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let shape = GemmShape {
        m: 512,
        k: 512,
        n: 2048,
    };
    let insts = config.kernels.join(xdna::insts_file(shape));
    let seq = array
        .load_sequence(Some(&insts), layout::gemm_params(shape))
        .unwrap_or_else(|e| panic!("{e}"));
    let (m, k, n) = (shape.m, shape.k, shape.n);
    let a_rm = pseudo_i8(m * k, 7);
    let w = pseudo_i8(n * k, 8);
    let mut a = array.alloc(Role::A, m * k).unwrap();
    let mut b = array.alloc(Role::B, k * n).unwrap();
    let c = array.alloc(Role::C, m * n * 4).unwrap();
    layout::pack_a(&a_rm, m, k, m, k, a.as_i8_mut());
    layout::pack_b(&w, n, k, k, n, b.as_i8_mut());
    a.sync_to_device().unwrap();
    b.sync_to_device().unwrap();
    seq.run(&a, &b, &c).unwrap_or_else(|e| panic!("{e}"));
    c.sync_from_device().unwrap();
    let mut want = vec![0i32; m * n];
    quant::gemm_i8_reference(&a_rm, &w, m, k, n, &mut want);
    let wrong = c.as_i32().iter().zip(&want).filter(|(x, y)| x != y).count();
    assert_eq!(wrong, 0, "{wrong} of {} outputs differ", m * n);
    let started = std::time::Instant::now();
    for _ in 0..LAUNCHES {
        seq.run(&a, &b, &c).unwrap();
        c.sync_from_device().unwrap();
    }
    let per_launch = started.elapsed() / LAUNCHES;
    let ops = 2.0 * (m * k * n) as f64;
    println!(
        "512x512x2048 on the device: bit-exact; {:.1} us a launch (C synced back), {:.2} TOPS; \
         counters {:?}",
        per_launch.as_secs_f64() * 1e6,
        ops / per_launch.as_secs_f64() / 1e12,
        dev.counters().unwrap()
    );
}

// ---- opening: what is missing is said ----------------------------------------------------------

fn open_error(config: &XdnaConfig) -> EngineError {
    XdnaEngine::open(config).expect_err("opening should fail")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("whisperencnpu-xdna-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn missing_pieces_are_explained() {
    let no_device = XdnaConfig {
        device: XdnaDevice::Node("/nonexistent/accel0".into()),
        shim: xdna::emulator_shim_path(),
        kernels: temp_dir("none"),
    };
    let err = open_error(&no_device).to_string();
    assert!(
        err.contains("/nonexistent/accel0") && err.contains(xdna::ENV_DEVICE),
        "{err}"
    );
    assert!(err.contains("emulated"), "{err}");

    // A device node that exists (any file will do for the check), the rest missing in turn.
    let kernels = temp_dir("kernels");
    let mut config = XdnaConfig {
        device: XdnaDevice::Node("/dev/null".into()),
        shim: kernels.join(xdna::XRT_SHIM_FILE),
        kernels: kernels.clone(),
    };
    let err = open_error(&config).to_string();
    assert!(
        err.contains(xdna::XRT_SHIM_FILE) && err.contains(xdna::ENV_SHIM),
        "{err}"
    );

    config.shim = xdna::emulator_shim_path();
    let err = open_error(&config).to_string();
    assert!(
        err.contains("kernel binaries") && err.contains(xdna::ENV_KERNELS),
        "{err}"
    );
    let shape = GemmShape {
        m: 512,
        k: 512,
        n: 512,
    };
    std::fs::write(kernels.join(xdna::insts_file(shape)), [0u8; 4]).unwrap();
    let err = open_error(&config).to_string();
    assert!(err.contains(xdna::XCLBIN_FILE), "{err}");

    // Everything there, but the library is the emulator: not taken for the device.
    std::fs::write(kernels.join(xdna::XCLBIN_FILE), b"xclbin").unwrap();
    let err = open_error(&config).to_string();
    assert!(
        err.contains("emulator") && err.contains(xdna::ENV_DEVICE),
        "{err}"
    );

    // A file that is no library.
    let mut emulated = emulator();
    emulated.shim = kernels.join(xdna::insts_file(shape));
    let err = open_error(&emulated).to_string();
    assert!(err.contains("cannot be used"), "{err}");
    let _ = std::fs::remove_dir_all(kernels);
}

/// `auto` picks the NPU exactly when the NPU engine opens from the environment; here (no NPU) that
/// is the CPU.
#[test]
fn auto_picks_the_npu_only_when_it_opens() {
    let engine = npu::open_engine(BackendChoice::Auto, Precision::F32).unwrap();
    let npu_opens = XdnaEngine::open_auto().is_ok();
    let expected = if npu_opens {
        BackendKind::Xdna
    } else {
        BackendKind::Cpu
    };
    assert_eq!(engine.backend(), expected);
    if !std::path::Path::new(xdna::DEFAULT_DEVICE).exists() {
        assert_eq!(engine.backend(), BackendKind::Cpu);
    }
}

// ---- the element -------------------------------------------------------------------------------

/// Runs `test` (an ignored test of this binary) in a child process with the XDNA variables
/// cleared and `device` as WHISPERENCNPU_XDNA_DEVICE.
fn run_child(test: &str, device: Option<&str>) {
    run_child_with(test, device, &[]);
}

/// `run_child` with more variables set in the child.
fn run_child_with(test: &str, device: Option<&str>, vars: &[(&str, &str)]) {
    run_child_under(None, test, device, vars);
}

/// `run_child_with`, the child started by `loader` (a dynamic loader and its arguments) if given.
fn run_child_under(
    loader: Option<&[String]>,
    test: &str,
    device: Option<&str>,
    vars: &[(&str, &str)],
) {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match loader {
        Some([program, args @ ..]) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(&exe);
            cmd
        }
        _ => Command::new(&exe),
    };
    cmd.args([
        test,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env_remove(xdna::ENV_DEVICE)
    .env_remove(xdna::ENV_SHIM)
    .env_remove(xdna::ENV_KERNELS)
    .env("WHISPERENCNPU_XDNA_CHILD", "1");
    if let Some(device) = device {
        cmd.env(xdna::ENV_DEVICE, device);
    }
    cmd.envs(vars.iter().copied());
    let out = cmd.output().expect("run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{test} failed in the child process");
    assert!(stdout.contains("1 passed"), "{test} did not run");
}

fn in_child() -> bool {
    std::env::var_os("WHISPERENCNPU_XDNA_CHILD").is_some()
}

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstwhisperencnpu::plugin_register_static().expect("register the plugin");
    });
}

fn element(model: &str, backend: &str) -> gst::Element {
    init();
    let el = gst::ElementFactory::make("whisperencnpu")
        .property("model", model_dir(model).to_str().unwrap())
        .property("threads", 2u32)
        .build()
        .unwrap();
    el.set_property_from_str("backend", backend);
    el
}

/// Pushes 12 s of a tone through the element (two windows) and returns the buffers and the
/// timing messages.
fn run_element(el: &gst::Element) -> (Vec<gst::Buffer>, Vec<gst::Structure>) {
    let bus = gst::Bus::new();
    el.set_bus(Some(&bus));
    let mut h = Harness::with_element(el, Some("sink"), Some("src"));
    h.set_src_caps_str("audio/x-raw,format=F32LE,rate=16000,channels=1,layout=interleaved");
    h.play();
    let samples: Vec<f32> = (0..16_000 * 12)
        .map(|i| 0.1 * (i as f32 * 440.0 * std::f32::consts::TAU / 16_000.0).sin())
        .collect();
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut buffer = gst::Buffer::from_mut_slice(bytes);
    buffer.get_mut().unwrap().set_pts(gst::ClockTime::ZERO);
    assert_eq!(h.push(buffer), Ok(gst::FlowSuccess::Ok));
    h.push_event(gst::event::Eos::new());
    let mut buffers = Vec::new();
    while let Ok(Some(b)) = h.pull_until_eos() {
        buffers.push(b);
    }
    let timings = std::iter::from_fn(|| bus.pop_filtered(&[gst::MessageType::Element]))
        .filter_map(|m| m.structure().map(|s| s.to_owned()))
        .filter(|s| s.name() == "whisperencnpu-timing")
        .collect();
    (buffers, timings)
}

#[test]
fn element_runs_backend_xdna_on_the_emulated_npu() {
    run_child("child_element_xdna_emulated", Some(xdna::EMULATED));
}

#[test]
#[ignore = "run by element_runs_backend_xdna_on_the_emulated_npu in a child process"]
fn child_element_xdna_emulated() {
    assert!(in_child());
    let (buffers, timings) = run_element(&element("tiny.en", "xdna"));
    assert_eq!(buffers.len(), 2);
    for b in &buffers {
        assert_eq!(b.size(), 384 * 512 * 4);
        let map = b.map_readable().unwrap();
        assert!(map
            .chunks_exact(4)
            .all(|c| f32::from_le_bytes(c.try_into().unwrap()).is_finite()));
    }
    assert_eq!(timings.len(), 2);
    for s in &timings {
        assert_eq!(s.get::<&str>("backend").unwrap(), "xdna", "{s}");
        assert_eq!(s.get::<&str>("precision").unwrap(), "int8", "{s}");
        // tiny.en: conv1, conv2 and 4 products in each of 4 layers, one configuration.
        assert_eq!(s.get::<u64>("npu-launches").unwrap(), 18, "{s}");
        assert_eq!(s.get::<u64>("npu-reconfigurations").unwrap(), 0, "{s}");
    }
    println!("timing: {}", timings[0]);
}

#[test]
fn element_backend_auto_runs_on_the_cpu_here() {
    run_child("child_element_auto", None);
}

#[test]
#[ignore = "run by element_backend_auto_runs_on_the_cpu_here in a child process"]
fn child_element_auto() {
    assert!(in_child());
    let (buffers, timings) = run_element(&element("tiny.en", "auto"));
    assert_eq!(buffers.len(), 2);
    let expected = if XdnaEngine::open_auto().is_ok() {
        "xdna"
    } else {
        "cpu"
    };
    for s in &timings {
        assert_eq!(s.get::<&str>("backend").unwrap(), expected, "{s}");
    }
    if !std::path::Path::new(xdna::DEFAULT_DEVICE).exists() {
        assert_eq!(expected, "cpu");
    }
}

#[test]
fn element_backend_xdna_without_an_npu_fails_clearly() {
    run_child("child_element_xdna_missing", None);
}

#[test]
#[ignore = "run by element_backend_xdna_without_an_npu_fails_clearly in a child process"]
fn child_element_xdna_missing() {
    assert!(in_child());
    if std::path::Path::new(xdna::DEFAULT_DEVICE).exists() {
        println!("an NPU is present: nothing to check");
        return;
    }
    let text = common::pause_error(&element("tiny.en", "xdna"));
    println!("error on the bus: {text}");
    assert!(text.contains("backend=xdna"), "{text}");
    assert!(text.contains(xdna::DEFAULT_DEVICE), "{text}");
    assert!(text.contains(xdna::ENV_DEVICE), "{text}");
}

// ---- the real XRT shim -------------------------------------------------------------------------

/// Where `scripts/build-xrt-shim` (run by `make test`) puts the device shim it compiled and linked
/// against Debian sid's XRT 2.25, unpacked into target/xrt.
fn built_xrt_shim() -> Option<PathBuf> {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/xrt/build/libxdna_shim_xrt.so"
    ));
    if path.is_file() {
        Some(path)
    } else {
        println!(
            "skipped: no {} (scripts/build-xrt-shim builds it; it skips when Debian's archive \
             cannot be reached)",
            path.display()
        );
        None
    }
}

/// A node no NPU has.
const ABSENT_NODE: &str = "/dev/accel/accel77";

/// The real device shim through the plugin's loader: it loads and then finds no device, or it
/// cannot load on this system and the error says why (XRT built for a newer glibc/libstdc++).
#[test]
fn the_real_xrt_shim_loads_or_says_why_not() {
    let Some(path) = built_xrt_shim() else {
        return;
    };
    match Shim::load(&path) {
        Ok(shim) => {
            assert_eq!(shim.kind(), ShimKind::Xrt);
            let err = shim.open(Some(ABSENT_NODE)).err().expect("no such device");
            println!("real XRT shim loaded; opening {ABSENT_NODE}: {err}");
            assert!(err.to_string().contains(ABSENT_NODE), "{err}");
        }
        Err(err) => {
            println!("real XRT shim: {err}");
            let text = err.to_string();
            assert!(
                text.starts_with("XRT cannot load on this system: "),
                "{text}"
            );
            assert!(text.contains("libxrt_coreutil"), "{text}");
        }
    }
}

/// Set in a child that runs under a C and C++ runtime new enough for XRT: it must load.
const EXPECT_XRT_LOADS: &str = "WHISPERENCNPU_XDNA_TEST_XRT_LOADS";

/// Debian sid's dynamic loader and C/C++ runtime, which scripts/build-xrt-shim unpacks next to
/// XRT: a process started by it is a newer system as far as XRT is concerned.
fn newer_runtime_loader() -> Option<Vec<String>> {
    let lib = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/xrt/runtime/usr/lib/x86_64-linux-gnu"
    ));
    let ld = lib.join("ld-linux-x86-64.so.2");
    if !ld.is_file() {
        println!("skipped the newer-runtime run: no {}", ld.display());
        return None;
    }
    Some(vec![
        ld.to_string_lossy().into_owned(),
        "--library-path".to_owned(),
        lib.to_string_lossy().into_owned(),
    ])
}

/// The real shim through `backend=xdna` and a device node that does not exist: on this system
/// the error says why XRT cannot load here; in a process running sid's C/C++ runtime XRT loads
/// and the error is the missing device.
#[test]
fn element_backend_xdna_with_the_real_shim_and_no_device_fails_clearly() {
    let Some(path) = built_xrt_shim() else {
        return;
    };
    let shim = [(xdna::ENV_SHIM, path.to_str().unwrap())];
    run_child_with("child_element_xdna_real_shim", Some(ABSENT_NODE), &shim);
    if let Some(loader) = newer_runtime_loader() {
        let vars = [shim[0], (EXPECT_XRT_LOADS, "1")];
        run_child_under(
            Some(&loader),
            "child_element_xdna_real_shim",
            Some(ABSENT_NODE),
            &vars,
        );
    }
}

#[test]
#[ignore = "run by element_backend_xdna_with_the_real_shim_and_no_device_fails_clearly"]
fn child_element_xdna_real_shim() {
    assert!(in_child());
    let text = common::pause_error(&element("tiny.en", "xdna"));
    println!("error on the bus: {text}");
    assert!(text.contains("backend=xdna"), "{text}");
    let cannot_load = text.contains("XRT cannot load on this system: ");
    let no_device = text.contains(&format!("no AMD XDNA NPU at {ABSENT_NODE}"));
    assert!(cannot_load || no_device, "{text}");
    if std::env::var_os(EXPECT_XRT_LOADS).is_none() {
        return;
    }
    // XRT loaded (the error is the device's), and the shim itself names what is missing; a node
    // that exists but is no NPU gets as far as XRT's own enumeration.
    assert!(no_device, "{text}");
    let path = std::env::var_os(xdna::ENV_SHIM).expect("the shim's path");
    let shim = Shim::load(std::path::Path::new(&path)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(shim.kind(), ShimKind::Xrt);
    let err = shim.open(Some(ABSENT_NODE)).err().expect("no such node");
    println!("real XRT shim, {ABSENT_NODE}: {err}");
    assert!(
        err.to_string()
            .contains(&format!("no NPU device node {ABSENT_NODE}")),
        "{err}"
    );
    let err = shim.open(Some("/dev/null")).err().expect("no NPU");
    println!("real XRT shim, /dev/null (XRT device 0): {err}");
    assert!(err.to_string().contains("xdna_open failed"), "{err}");
}
