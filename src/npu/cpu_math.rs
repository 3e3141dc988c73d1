//! Vectorized element-wise math for the CPU encoder: exp, erf / GELU, softmax rows, layer norm.
//!
//! Each operation has an AVX-512F path, an AVX2 + FMA path and a portable scalar path, picked at
//! run time ([`isa`]); all three evaluate the same approximations, so they agree to a few ulp.
//!
//! - `exp`: Cephes' `expf` (Cody-Waite reduction by ln 2, degree-5 polynomial), about 1 ulp.
//! - `erf`: the rational approximation of TensorFlow / Eigen (odd degree-13 over even degree-8
//!   polynomial on `[-4, 4]`, clamped outside): absolute error below 5e-7 (largest near |x| = 3.6,
//!   where erf is within 4e-7 of 1; a few ulp of float32 there, the limit of one float32 rational
//!   this cheap), so GELU `0.5 x (1 + erf(x / sqrt 2))` is within 2.5e-7 (1 + |x|) of the exact one.
//!   `libm::erff` (scalar, branchy) cost ~14% of the f32 encoder.
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Which instruction set the element-wise kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Scalar,
}

/// The best instruction set of this CPU for these kernels.
#[inline]
pub fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Scalar
}

/// Whether this CPU runs `isa` (without allocating: kernels ask it on their hot path).
pub fn supports(isa: Isa) -> bool {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => is_x86_feature_detected!("avx512f"),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        Isa::Scalar => true,
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// Instruction sets this CPU can run, best first (tests force each).
pub fn available_isas() -> Vec<Isa> {
    [Isa::Avx512, Isa::Avx2, Isa::Scalar]
        .into_iter()
        .filter(|&isa| supports(isa))
        .collect()
}

const LN_EPS: f32 = 1e-5;

// Cephes expf.
const EXP_LO: f32 = -87.336_54;
const EXP_HI: f32 = 88.0;
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

// TensorFlow / Eigen erf: x P(x^2) / Q(x^2) on [-4, 4].
const ERF_CLAMP: f32 = 4.0;
const ERF_A: [f32; 7] = [
    -2.726_142_3e-10,
    2.770_681_4e-8,
    -2.101_024e-6,
    -5.692_506_4e-5,
    -7.349_906e-4,
    -2.954_6e-3,
    -1.609_603_3e-2,
];
const ERF_B: [f32; 5] = [
    -1.456_607_2e-5,
    -2.133_740_6e-4,
    -1.682_827e-3,
    -7.373_329e-3,
    -1.426_474e-2,
];

// ---------------------------------------------------------------------------------------------
// Scalar definitions (also the portable path).

/// `e^x` (Cephes), inputs clamped to `[-87.34, 88]`.
#[inline]
pub fn exp_scalar(x: f32) -> f32 {
    let x = x.clamp(EXP_LO, EXP_HI);
    let n = (x * LOG2E).round();
    let r = x - n * LN2_HI;
    let r = r - n * LN2_LO;
    let mut p = EXP_P[0];
    for &c in &EXP_P[1..] {
        p = p * r + c;
    }
    let z = r * r;
    let y = p * z + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `erf(x)`, absolute error below 5e-7.
#[inline]
pub fn erf_scalar(x: f32) -> f32 {
    let x = x.clamp(-ERF_CLAMP, ERF_CLAMP);
    let x2 = x * x;
    let mut p = ERF_A[0];
    for &c in &ERF_A[1..] {
        p = x2 * p + c;
    }
    let mut q = ERF_B[0];
    for &c in &ERF_B[1..] {
        q = x2 * q + c;
    }
    x * p / q
}

/// GELU in its erf form, `0.5 x (1 + erf(x / sqrt 2))`.
#[inline]
pub fn gelu_scalar(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_scalar(x * std::f32::consts::FRAC_1_SQRT_2))
}

// ---------------------------------------------------------------------------------------------
// AVX-512F.

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;

    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn exp(x: __m512) -> __m512 {
        let x = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(EXP_LO)),
            _mm512_set1_ps(EXP_HI),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(EXP_P[0]);
        for &c in &EXP_P[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let z = _mm512_mul_ps(r, r);
        let y = _mm512_add_ps(_mm512_fmadd_ps(p, z, r), _mm512_set1_ps(1.0));
        _mm512_scalef_ps(y, n)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn erf(x: __m512) -> __m512 {
        let x = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(-ERF_CLAMP)),
            _mm512_set1_ps(ERF_CLAMP),
        );
        let x2 = _mm512_mul_ps(x, x);
        let mut p = _mm512_set1_ps(ERF_A[0]);
        for &c in &ERF_A[1..] {
            p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(c));
        }
        let mut q = _mm512_set1_ps(ERF_B[0]);
        for &c in &ERF_B[1..] {
            q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(c));
        }
        _mm512_div_ps(_mm512_mul_ps(x, p), q)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn gelu(x: __m512) -> __m512 {
        let e = erf(_mm512_mul_ps(
            x,
            _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2),
        ));
        let hx = _mm512_mul_ps(_mm512_set1_ps(0.5), x);
        _mm512_fmadd_ps(hx, e, hx)
    }

    #[inline]
    fn tail_mask(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// Applies `f` to `x` in place, 16 lanes at a time, a masked load/store for the tail.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn map_inplace(x: &mut [f32], f: impl Fn(__m512) -> __m512) {
        let mut chunks = x.chunks_exact_mut(16);
        for c in &mut chunks {
            // SAFETY: c has 16 elements.
            unsafe { _mm512_storeu_ps(c.as_mut_ptr(), f(_mm512_loadu_ps(c.as_ptr()))) };
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let m = tail_mask(rest.len());
            // SAFETY: the mask covers only the rest.len() valid elements.
            unsafe {
                let v = _mm512_maskz_loadu_ps(m, rest.as_ptr());
                _mm512_mask_storeu_ps(rest.as_mut_ptr(), m, f(v));
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub fn gelu_inplace(x: &mut [f32]) {
        map_inplace(x, |v| gelu(v));
    }

    #[target_feature(enable = "avx512f")]
    pub fn gelu_add(x: &mut [f32], add: &[f32]) {
        let n = x.len();
        let (xp, ap) = (x.as_mut_ptr(), add.as_ptr());
        let mut i = 0;
        // SAFETY: i + 16 <= n for the full loads; the tail is masked to the n - i valid elements;
        // add.len() == n (checked by the caller).
        unsafe {
            while i + 16 <= n {
                let v = gelu(_mm512_loadu_ps(xp.add(i)));
                _mm512_storeu_ps(xp.add(i), _mm512_add_ps(v, _mm512_loadu_ps(ap.add(i))));
                i += 16;
            }
            if i < n {
                let m = tail_mask(n - i);
                let v = gelu(_mm512_maskz_loadu_ps(m, xp.add(i)));
                let a = _mm512_maskz_loadu_ps(m, ap.add(i));
                _mm512_mask_storeu_ps(xp.add(i), m, _mm512_add_ps(v, a));
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub fn max(x: &[f32]) -> f32 {
        let n = x.len();
        let p = x.as_ptr();
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut i = 0;
        // SAFETY: in-bounds full and masked loads.
        unsafe {
            while i + 16 <= n {
                m = _mm512_max_ps(m, _mm512_loadu_ps(p.add(i)));
                i += 16;
            }
            if i < n {
                let v = _mm512_mask_loadu_ps(
                    _mm512_set1_ps(f32::NEG_INFINITY),
                    tail_mask(n - i),
                    p.add(i),
                );
                m = _mm512_max_ps(m, v);
            }
        }
        _mm512_reduce_max_ps(m)
    }

    #[target_feature(enable = "avx512f")]
    pub fn exp_shifted_sum(x: &mut [f32], max: f32, scale: f32) -> f32 {
        let (mx, sc) = (_mm512_set1_ps(max), _mm512_set1_ps(scale));
        let n = x.len();
        let p = x.as_mut_ptr();
        let mut sum = _mm512_setzero_ps();
        let mut i = 0;
        // SAFETY: in-bounds full and masked loads/stores.
        unsafe {
            while i + 16 <= n {
                let e = exp(_mm512_mul_ps(
                    _mm512_sub_ps(_mm512_loadu_ps(p.add(i)), mx),
                    sc,
                ));
                _mm512_storeu_ps(p.add(i), e);
                sum = _mm512_add_ps(sum, e);
                i += 16;
            }
            if i < n {
                let m = tail_mask(n - i);
                let v = _mm512_maskz_loadu_ps(m, p.add(i));
                let e = _mm512_maskz_mov_ps(m, exp(_mm512_mul_ps(_mm512_sub_ps(v, mx), sc)));
                _mm512_mask_storeu_ps(p.add(i), m, e);
                sum = _mm512_add_ps(sum, e);
            }
        }
        _mm512_reduce_add_ps(sum)
    }

    #[target_feature(enable = "avx512f")]
    pub fn scale(x: &mut [f32], s: f32) {
        let s = _mm512_set1_ps(s);
        map_inplace(x, |v| _mm512_mul_ps(v, s));
    }

    /// Sum and sum of squared deviations from `mean` of `x` (pass `None` for the first).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn sum_dev2(x: &[f32], mean: Option<f32>) -> f32 {
        let n = x.len();
        let p = x.as_ptr();
        let mu = _mm512_set1_ps(mean.unwrap_or(0.0));
        let sq = mean.is_some();
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        // SAFETY: in-bounds full and masked loads.
        unsafe {
            while i + 32 <= n {
                let (v0, v1) = (_mm512_loadu_ps(p.add(i)), _mm512_loadu_ps(p.add(i + 16)));
                if sq {
                    let (d0, d1) = (_mm512_sub_ps(v0, mu), _mm512_sub_ps(v1, mu));
                    a0 = _mm512_fmadd_ps(d0, d0, a0);
                    a1 = _mm512_fmadd_ps(d1, d1, a1);
                } else {
                    a0 = _mm512_add_ps(a0, v0);
                    a1 = _mm512_add_ps(a1, v1);
                }
                i += 32;
            }
            while i < n {
                let m = tail_mask((n - i).min(16));
                let v = _mm512_maskz_loadu_ps(m, p.add(i));
                if sq {
                    let d = _mm512_maskz_sub_ps(m, v, mu);
                    a0 = _mm512_fmadd_ps(d, d, a0);
                } else {
                    a0 = _mm512_add_ps(a0, v);
                }
                i += 16;
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
    }

    #[target_feature(enable = "avx512f")]
    pub fn layer_norm(x: &[f32], g: &[f32], b: &[f32], out: &mut [f32]) {
        let n = x.len();
        let mean = sum_dev2(x, None) / n as f32;
        let var = sum_dev2(x, Some(mean)) / n as f32;
        let inv = 1.0 / (var + LN_EPS).sqrt();
        let (mu, iv) = (_mm512_set1_ps(mean), _mm512_set1_ps(inv));
        let (xp, gp, bp, op) = (x.as_ptr(), g.as_ptr(), b.as_ptr(), out.as_mut_ptr());
        let mut i = 0;
        // SAFETY: x, g, b and out have n elements (checked by the caller).
        unsafe {
            while i < n {
                let m = tail_mask((n - i).min(16));
                let v = _mm512_maskz_loadu_ps(m, xp.add(i));
                let t = _mm512_mul_ps(_mm512_sub_ps(v, mu), iv);
                let y = _mm512_fmadd_ps(
                    t,
                    _mm512_maskz_loadu_ps(m, gp.add(i)),
                    _mm512_maskz_loadu_ps(m, bp.add(i)),
                );
                _mm512_mask_storeu_ps(op.add(i), m, y);
                i += 16;
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub fn add_inplace(x: &mut [f32], d: &[f32]) {
        let n = x.len();
        let (xp, dp) = (x.as_mut_ptr(), d.as_ptr());
        let mut i = 0;
        // SAFETY: x and d have n elements (checked by the caller).
        unsafe {
            while i < n {
                let m = tail_mask((n - i).min(16));
                let v = _mm512_add_ps(
                    _mm512_maskz_loadu_ps(m, xp.add(i)),
                    _mm512_maskz_loadu_ps(m, dp.add(i)),
                );
                _mm512_mask_storeu_ps(xp.add(i), m, v);
                i += 16;
            }
        }
    }
}

/// `e^x` on 16 lanes (the AVX-512 path of [`exp_scalar`]).
#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::exp as exp512;
/// GELU on 16 lanes (the AVX-512 path of [`gelu_scalar`]; what [`Math::gelu_inplace`] computes
/// with AVX-512, bit for bit), for epilogues of products.
#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::gelu as gelu512;

/// `e^x` on 8 lanes (the AVX2 path of [`exp_scalar`]).
#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::exp as exp256;
/// GELU on 8 lanes (the AVX2 path of [`gelu_scalar`]; what [`Math::gelu_inplace`] computes with
/// AVX2, bit for bit), for epilogues of products.
#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::gelu as gelu256;

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA.

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub fn exp(x: __m256) -> __m256 {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(EXP_LO)),
            _mm256_set1_ps(EXP_HI),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(EXP_P[0]);
        for &c in &EXP_P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let z = _mm256_mul_ps(r, r);
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, z, r), _mm256_set1_ps(1.0));
        let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(y, _mm256_castsi256_ps(e))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub fn erf(x: __m256) -> __m256 {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(-ERF_CLAMP)),
            _mm256_set1_ps(ERF_CLAMP),
        );
        let x2 = _mm256_mul_ps(x, x);
        let mut p = _mm256_set1_ps(ERF_A[0]);
        for &c in &ERF_A[1..] {
            p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(c));
        }
        let mut q = _mm256_set1_ps(ERF_B[0]);
        for &c in &ERF_B[1..] {
            q = _mm256_fmadd_ps(x2, q, _mm256_set1_ps(c));
        }
        _mm256_div_ps(_mm256_mul_ps(x, p), q)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub fn gelu(x: __m256) -> __m256 {
        let e = erf(_mm256_mul_ps(
            x,
            _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2),
        ));
        let hx = _mm256_mul_ps(_mm256_set1_ps(0.5), x);
        _mm256_fmadd_ps(hx, e, hx)
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn gelu_inplace(x: &mut [f32]) {
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: c has 8 elements.
            unsafe { _mm256_storeu_ps(c.as_mut_ptr(), gelu(_mm256_loadu_ps(c.as_ptr()))) };
        }
        // The tail goes through the same vector code as the rest, so the kernel's fused
        // epilogue (which masks its last columns) gives the same bits as this pass.
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            let mut pad = [0f32; 8];
            pad[..tail.len()].copy_from_slice(tail);
            // SAFETY: pad has 8 elements.
            unsafe { _mm256_storeu_ps(pad.as_mut_ptr(), gelu(_mm256_loadu_ps(pad.as_ptr()))) };
            tail.copy_from_slice(&pad[..tail.len()]);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn gelu_add(x: &mut [f32], add: &[f32]) {
        let n = x.len();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n = x.len() = add.len().
            unsafe {
                let v = gelu(_mm256_loadu_ps(x.as_ptr().add(i)));
                let a = _mm256_loadu_ps(add.as_ptr().add(i));
                _mm256_storeu_ps(x.as_mut_ptr().add(i), _mm256_add_ps(v, a));
            }
            i += 8;
        }
        if i < n {
            // Padded to a full vector for the same reason as in `gelu_inplace`.
            let mut pad = [0f32; 8];
            pad[..n - i].copy_from_slice(&x[i..]);
            // SAFETY: pad has 8 elements.
            unsafe { _mm256_storeu_ps(pad.as_mut_ptr(), gelu(_mm256_loadu_ps(pad.as_ptr()))) };
            for j in i..n {
                x[j] = pad[j - i] + add[j];
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn max(x: &[f32]) -> f32 {
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut chunks = x.chunks_exact(8);
        for c in &mut chunks {
            // SAFETY: c has 8 elements.
            m = _mm256_max_ps(m, unsafe { _mm256_loadu_ps(c.as_ptr()) });
        }
        let mut lanes = [0f32; 8];
        // SAFETY: lanes has 8 elements.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
        lanes
            .iter()
            .chain(chunks.remainder())
            .fold(f32::NEG_INFINITY, |a, &b| a.max(b))
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn exp_shifted_sum(x: &mut [f32], max: f32, scale: f32) -> f32 {
        let (mx, sc) = (_mm256_set1_ps(max), _mm256_set1_ps(scale));
        let mut sum = _mm256_setzero_ps();
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: c has 8 elements.
            unsafe {
                let v = _mm256_loadu_ps(c.as_ptr());
                let e = exp(_mm256_mul_ps(_mm256_sub_ps(v, mx), sc));
                _mm256_storeu_ps(c.as_mut_ptr(), e);
                sum = _mm256_add_ps(sum, e);
            }
        }
        let mut s = hsum(sum);
        for v in chunks.into_remainder() {
            *v = exp_scalar((*v - max) * scale);
            s += *v;
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn scale(x: &mut [f32], s: f32) {
        let sv = _mm256_set1_ps(s);
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: c has 8 elements.
            unsafe {
                _mm256_storeu_ps(
                    c.as_mut_ptr(),
                    _mm256_mul_ps(_mm256_loadu_ps(c.as_ptr()), sv),
                )
            };
        }
        for v in chunks.into_remainder() {
            *v *= s;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn layer_norm(x: &[f32], g: &[f32], b: &[f32], out: &mut [f32]) {
        let n = x.len();
        let m8 = n / 8 * 8;
        let mut acc = _mm256_setzero_ps();
        for i in (0..m8).step_by(8) {
            // SAFETY: i + 8 <= n.
            acc = _mm256_add_ps(acc, unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) });
        }
        let mean = (hsum(acc) + x[m8..].iter().sum::<f32>()) / n as f32;
        let mu = _mm256_set1_ps(mean);
        let mut acc = _mm256_setzero_ps();
        for i in (0..m8).step_by(8) {
            // SAFETY: i + 8 <= n.
            let d = _mm256_sub_ps(unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) }, mu);
            acc = _mm256_fmadd_ps(d, d, acc);
        }
        let var = (hsum(acc)
            + x[m8..]
                .iter()
                .map(|&v| (v - mean) * (v - mean))
                .sum::<f32>())
            / n as f32;
        let inv = 1.0 / (var + LN_EPS).sqrt();
        let iv = _mm256_set1_ps(inv);
        for i in (0..m8).step_by(8) {
            // SAFETY: x, g, b, out have n elements (checked by the caller); i + 8 <= n.
            unsafe {
                let t = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), mu), iv);
                let y = _mm256_fmadd_ps(
                    t,
                    _mm256_loadu_ps(g.as_ptr().add(i)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                );
                _mm256_storeu_ps(out.as_mut_ptr().add(i), y);
            }
        }
        for i in m8..n {
            out[i] = (x[i] - mean) * inv * g[i] + b[i];
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn add_inplace(x: &mut [f32], d: &[f32]) {
        for (x, d) in x.iter_mut().zip(d) {
            *x += d;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Portable scalar path.

mod scalar {
    use super::*;

    pub fn gelu_inplace(x: &mut [f32]) {
        x.iter_mut().for_each(|v| *v = gelu_scalar(*v));
    }

    pub fn gelu_add(x: &mut [f32], add: &[f32]) {
        x.iter_mut()
            .zip(add)
            .for_each(|(v, &a)| *v = gelu_scalar(*v) + a);
    }

    pub fn max(x: &[f32]) -> f32 {
        x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v))
    }

    pub fn exp_shifted_sum(x: &mut [f32], max: f32, scale: f32) -> f32 {
        let mut s = 0.0;
        for v in x {
            *v = exp_scalar((*v - max) * scale);
            s += *v;
        }
        s
    }

    pub fn scale(x: &mut [f32], s: f32) {
        x.iter_mut().for_each(|v| *v *= s);
    }

    pub fn layer_norm(x: &[f32], g: &[f32], b: &[f32], out: &mut [f32]) {
        let n = x.len() as f32;
        let mean = x.iter().sum::<f32>() / n;
        let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let inv = 1.0 / (var + LN_EPS).sqrt();
        for i in 0..x.len() {
            out[i] = (x[i] - mean) * inv * g[i] + b[i];
        }
    }

    pub fn add_inplace(x: &mut [f32], d: &[f32]) {
        x.iter_mut().zip(d).for_each(|(x, d)| *x += d);
    }
}

// ---------------------------------------------------------------------------------------------
// Dispatch.

macro_rules! dispatch {
    ($isa:expr, $f:ident ( $($arg:expr),* )) => {{
        match $isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Isa::Avx512 is only returned / accepted when the CPU has AVX-512F.
            Isa::Avx512 => unsafe { avx512::$f($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Isa::Avx2 is only returned / accepted when the CPU has AVX2 and FMA.
            Isa::Avx2 => unsafe { avx2::$f($($arg),*) },
            _ => scalar::$f($($arg),*),
        }
    }};
}

/// The element-wise kernels for one instruction set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Math {
    isa: Isa,
}

impl Default for Math {
    fn default() -> Self {
        Math::new()
    }
}

impl Math {
    /// The best kernels for this CPU.
    pub fn new() -> Math {
        Math { isa: isa() }
    }

    /// The kernels of `isa`, if this CPU runs them.
    pub fn with_isa(isa: Isa) -> Option<Math> {
        supports(isa).then_some(Math { isa })
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// `x = gelu(x)`.
    pub fn gelu_inplace(&self, x: &mut [f32]) {
        dispatch!(self.isa, gelu_inplace(x))
    }

    /// `x = gelu(x) + add`.
    pub fn gelu_add(&self, x: &mut [f32], add: &[f32]) {
        assert_eq!(x.len(), add.len());
        dispatch!(self.isa, gelu_add(x, add))
    }

    /// Largest element (`-inf` for an empty slice).
    pub fn max(&self, x: &[f32]) -> f32 {
        dispatch!(self.isa, max(x))
    }

    /// `x = exp((x - max) * scale)`, returning the sum of the new values.
    pub fn exp_shifted_sum(&self, x: &mut [f32], max: f32, scale: f32) -> f32 {
        dispatch!(self.isa, exp_shifted_sum(x, max, scale))
    }

    /// `x *= s`.
    pub fn scale(&self, x: &mut [f32], s: f32) {
        dispatch!(self.isa, scale(x, s))
    }

    /// `out = (x - mean) / sqrt(var + 1e-5) * g + b` over the row.
    pub fn layer_norm(&self, x: &[f32], g: &[f32], b: &[f32], out: &mut [f32]) {
        let n = x.len();
        assert!(
            g.len() == n && b.len() == n && out.len() == n,
            "layer norm lengths"
        );
        if n == 0 {
            return;
        }
        dispatch!(self.isa, layer_norm(x, g, b, out))
    }

    /// `x += d`.
    pub fn add_inplace(&self, x: &mut [f32], d: &[f32]) {
        assert_eq!(x.len(), d.len());
        dispatch!(self.isa, add_inplace(x, d))
    }

    /// `x += d`, then `out = layer_norm(x)`: one pass over the row instead of two.
    pub fn add_layer_norm(&self, x: &mut [f32], d: &[f32], g: &[f32], b: &[f32], out: &mut [f32]) {
        self.add_inplace(x, d);
        self.layer_norm(x, g, b, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(lo: f32, hi: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| lo + (hi - lo) * i as f32 / (n - 1) as f32)
            .collect()
    }

    #[test]
    fn erf_and_gelu_are_accurate() {
        let xs = grid(-12.0, 12.0, 200_001);
        let mut worst_erf = 0f64;
        for &x in &xs {
            let e = (erf_scalar(x) as f64 - libm::erf(x as f64)).abs();
            worst_erf = worst_erf.max(e);
        }
        assert!(worst_erf < 5e-7, "erf abs error {worst_erf:e}");
        for isa in available_isas() {
            let m = Math::with_isa(isa).unwrap();
            // An odd length exercises the tails.
            let mut v = xs[..199_999].to_vec();
            m.gelu_inplace(&mut v);
            let mut worst = 0f64;
            for (&x, &g) in xs.iter().zip(&v) {
                let exact = 0.5 * x as f64 * (1.0 + libm::erf(x as f64 / 2f64.sqrt()));
                worst = worst.max((g as f64 - exact).abs() / (1.0 + (x as f64).abs()));
            }
            assert!(worst < 2.5e-7, "{isa:?}: gelu error {worst:e}");
            let add = grid(0.0, 1.0, 199_999);
            let mut w = xs[..199_999].to_vec();
            m.gelu_add(&mut w, &add);
            for i in (0..w.len()).step_by(997) {
                assert!((w[i] - (v[i] + add[i])).abs() <= 1e-6 * (1.0 + w[i].abs()));
            }
        }
    }

    #[test]
    fn softmax_pieces_are_accurate() {
        for isa in available_isas() {
            let m = Math::with_isa(isa).unwrap();
            for n in [1usize, 7, 16, 33, 512, 1500] {
                let x: Vec<f32> = (0..n)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.7)
                    .collect();
                let mx = m.max(&x);
                assert_eq!(mx, x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)));
                let mut e = x.clone();
                let s = m.exp_shifted_sum(&mut e, mx, 0.125);
                let mut s_ref = 0f64;
                for (&xi, &ei) in x.iter().zip(&e) {
                    let r = (((xi - mx) * 0.125) as f64).exp();
                    s_ref += r;
                    assert!(((ei as f64) - r).abs() <= 3e-7 * r + 1e-37, "{isa:?} exp");
                }
                assert!((s as f64 - s_ref).abs() <= 1e-5 * s_ref, "{isa:?} sum");
                m.scale(&mut e, 2.0);
            }
            // Extremes: underflow to (almost) zero, no NaN.
            let mut e = vec![-1e30f32, -200.0, 0.0, 80.0];
            m.exp_shifted_sum(&mut e, 0.0, 1.0);
            assert!(e[0] >= 0.0 && e[0] < 1e-37 && e[1] < 1e-37 && e[2] == 1.0);
            assert!((e[3] as f64 / 80f64.exp() - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn layer_norm_matches_f64() {
        for isa in available_isas() {
            let m = Math::with_isa(isa).unwrap();
            for n in [1usize, 5, 16, 47, 384, 512] {
                let x: Vec<f32> = (0..n).map(|i| ((i * 13 % 29) as f32) * 0.3 + 2.0).collect();
                let d: Vec<f32> = (0..n).map(|i| (i % 5) as f32 * 0.1).collect();
                let g: Vec<f32> = (0..n).map(|i| 1.0 + (i % 3) as f32 * 0.5).collect();
                let b: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.01).collect();
                let mut xs = x.clone();
                let mut out = vec![0f32; n];
                m.add_layer_norm(&mut xs, &d, &g, &b, &mut out);
                let y: Vec<f64> = x.iter().zip(&d).map(|(&a, &b)| (a + b) as f64).collect();
                let mean = y.iter().sum::<f64>() / n as f64;
                let var = y.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
                for i in 0..n {
                    assert_eq!(xs[i], x[i] + d[i]);
                    let r = (y[i] - mean) / (var + 1e-5).sqrt() * g[i] as f64 + b[i] as f64;
                    assert!((out[i] as f64 - r).abs() < 1e-5, "{isa:?} n={n} i={i}");
                }
            }
        }
    }
}
