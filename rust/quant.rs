//! Weight-only int8 matrix products for decoding: y = x @ dequant(q).T + b.
//!
//! `q` is (n, k) int8 (as the bytes of two's-complement values, so Python's
//! `bytes` is read in place without a cast), row j holding output channel j; `scales` (n,) are the
//! per-channel symmetric scales (w[j, i] ~= q[j, i] * scales[j]). Activations
//! stay float32: each int8 weight is widened to f32 in registers right before
//! its FMA, so decoding reads one byte per weight instead of four, which is
//! what bounds batch-1 decoding (every token reads every weight once).
//!
//! Output channels are split across rayon's pool in groups of rows. The SIMD
//! path is picked at run time (AVX-512F, AVX2+FMA, or portable), since the
//! machines this runs on differ; every path sums the same products in f32, and
//! the tests hold each against the portable one.

use rayon::prelude::*;

/// Output channels per rayon task, at least: enough work per task to amortise the
/// hand-off, small enough that two cores still balance on n = 768.
const ROWS_PER_TASK: usize = 32;

/// Tasks per matrix at most: a wide matrix (the 50,257-row LM head) is cut into
/// long runs of consecutive rows, so each task streams one long stretch of
/// memory that the prefetch below keeps ahead of, instead of 1,500 short ones.
const MAX_TASKS: usize = 64;

/// Multiply-adds (m * n * k) up to which a product runs on the calling thread:
/// decoding's 768 x 768 projection (590 KB of weights) took 112 us over the pool
/// between Python ops (its worker asleep by then) and 70 us on one thread; the
/// 1.8-2.4 MB projections were no faster on one thread, so they keep the pool.
const INLINE_MAX: usize = 1 << 20;

/// How far ahead of the row group being multiplied its weights are prefetched,
/// in groups of four rows (~6 KB at k = 768). Weights that do not fit the cache
/// stream from DRAM. The SIMD kernels prefetch the group this far ahead one
/// 64-byte line per 64 bytes of weights they consume, spread through their loop:
/// measured on a 2-core EPYC, the 50,257 x 768 LM head streams at 20-29 GB/s
/// that way against 9.5 GB/s when the whole group was requested at once before
/// the loop (the burst overflowed the core's outstanding-miss slots and the
/// kernel's own loads queued behind it) and 3.5 GB/s without prefetching.
const PREFETCH_GROUPS: usize = 2;

#[derive(Debug, PartialEq, Eq)]
pub struct ShapeError(pub String);

impl std::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => "avx2+fma",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => "avx512f",
        }
    }
}

/// The best kernel this CPU runs.
pub fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Isa::Avx2Fma;
        }
    }
    Isa::Portable
}

/// Every kernel this CPU can run (the tests compare them).
pub fn available() -> Vec<Isa> {
    let mut v = vec![Isa::Portable];
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            v.push(Isa::Avx2Fma);
        }
        if is_x86_feature_detected!("avx512f") {
            v.push(Isa::Avx512);
        }
    }
    v
}

/// y (m, n) = x (m, k) @ (q (n, k) * scales[:, None]).T + bias.
pub fn qmatmul(
    isa: Isa,
    x: &[f32],
    m: usize,
    k: usize,
    q: &[u8],
    n: usize,
    scales: &[f32],
    bias: Option<&[f32]>,
) -> Result<Vec<f32>, ShapeError> {
    if m == 0 || k == 0 || n == 0 {
        return Err(ShapeError(format!("qmatmul: empty shape m={m} k={k} n={n}")));
    }
    if x.len() != m * k {
        return Err(ShapeError(format!("qmatmul: x holds {} floats, expected m*k = {m}*{k}", x.len())));
    }
    if q.len() != n * k {
        return Err(ShapeError(format!("qmatmul: weights hold {} int8 values, expected n*k = {n}*{k}", q.len())));
    }
    if scales.len() != n {
        return Err(ShapeError(format!("qmatmul: {} scales for {n} output channels", scales.len())));
    }
    if let Some(b) = bias {
        if b.len() != n {
            return Err(ShapeError(format!("qmatmul: bias has {} values for {n} output channels", b.len())));
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        // a caller-chosen ISA the CPU lacks would be undefined behaviour
        let ok = match isa {
            Isa::Portable => true,
            Isa::Avx2Fma => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            Isa::Avx512 => is_x86_feature_detected!("avx512f"),
        };
        if !ok {
            return Err(ShapeError(format!("qmatmul: this CPU cannot run the {} kernel", isa.name())));
        }
    }
    // out_t is (n, m): each task owns whole output channels, contiguous here
    let mut out_t = vec![0f32; n * m];
    // a multiple of 4 so every task but the last runs whole groups of four rows
    let per_task = ROWS_PER_TASK.max((n + MAX_TASKS - 1) / MAX_TASKS).div_ceil(4) * 4;
    let task = |(t, chunk): (usize, &mut [f32])| {
        let j0 = t * per_task;
        let rows = chunk.len() / m;
        rows_kernel(isa, x, m, k, &q[j0 * k..(j0 + rows) * k], chunk);
        for r in 0..rows {
            let s = scales[j0 + r];
            let b = bias.map_or(0.0, |b| b[j0 + r]);
            for v in &mut chunk[r * m..(r + 1) * m] {
                *v = *v * s + b;
            }
        }
    };
    // the same tasks either way (the same bits): a small product runs on this
    // thread, where waking the pool cost more than the second core gave
    if m * n * k <= INLINE_MAX {
        out_t.chunks_mut(per_task * m).enumerate().for_each(task);
    } else {
        out_t.par_chunks_mut(per_task * m).enumerate().for_each(task);
    }
    if m == 1 {
        return Ok(out_t);
    }
    let mut out = vec![0f32; m * n];
    for j in 0..n {
        for i in 0..m {
            out[i * n + j] = out_t[j * m + i];
        }
    }
    Ok(out)
}

/// Unscaled dot products of `rows` = out.len()/m weight rows with every x row.
fn rows_kernel(isa: Isa, x: &[f32], m: usize, k: usize, q: &[u8], out: &mut [f32]) {
    let rows = out.len() / m;
    let mut j = 0;
    // four weight rows at a time: four independent accumulators hide the FMA
    // latency, and each x load feeds four FMAs
    while j + 4 <= rows {
        let ahead = (j + 4 * PREFETCH_GROUPS) * k;
        if isa == Isa::Portable && ahead < q.len() {
            prefetch(&q[ahead..q.len().min(ahead + 4 * k)]);
        }
        let w = [&q[j * k..(j + 1) * k], &q[(j + 1) * k..(j + 2) * k], &q[(j + 2) * k..(j + 3) * k], &q[(j + 3) * k..(j + 4) * k]];
        // the group PREFETCH_GROUPS ahead, requested while the first pass over this
        // group's weights runs (the later passes of a batch find them in the cache)
        let ahead = &q[q.len().min(ahead)..q.len().min(ahead + 4 * k)];
        let mut i = 0;
        // several x rows per pass over the weights (batched decoding): each
        // widened weight vector then feeds R FMAs instead of one
        #[cfg(target_arch = "x86_64")]
        match isa {
            Isa::Avx512 => {
                while i + 4 <= m {
                    let xs = [&x[i * k..(i + 1) * k], &x[(i + 1) * k..(i + 2) * k], &x[(i + 2) * k..(i + 3) * k], &x[(i + 3) * k..(i + 4) * k]];
                    // SAFETY: qmatmul checked that this CPU has AVX-512F
                    let d = unsafe { x86::dot4xr_avx512(xs, w, if i == 0 { ahead } else { &[] }) };
                    store(out, m, j, i, &d);
                    i += 4;
                }
            }
            Isa::Avx2Fma => {
                while i + 2 <= m {
                    let xs = [&x[i * k..(i + 1) * k], &x[(i + 1) * k..(i + 2) * k]];
                    // SAFETY: qmatmul checked that this CPU has AVX2 and FMA
                    let d = unsafe { x86::dot4xr_avx2(xs, w, if i == 0 { ahead } else { &[] }) };
                    store(out, m, j, i, &d);
                    i += 2;
                }
            }
            Isa::Portable => {}
        }
        while i < m {
            let d = dot4(isa, &x[i * k..(i + 1) * k], w, if i == 0 { ahead } else { &[] });
            store(out, m, j, i, &[d]);
            i += 1;
        }
        j += 4;
    }
    while j < rows {
        let w = &q[j * k..(j + 1) * k];
        for i in 0..m {
            let d = dot4(isa, &x[i * k..(i + 1) * k], [w, w, w, w], &[]);
            out[j * m + i] = d[0];
        }
        j += 1;
    }
}

/// Ask for `bytes` to be brought into the cache (one hint per 64-byte line).
#[inline]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for off in (0..bytes.len()).step_by(64) {
        // SAFETY: a prefetch hint never faults, and the address lies inside `bytes`
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(bytes.as_ptr().add(off) as *const i8)
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// out is (rows, m): d[r][c] is x row i + r against weight row j + c.
fn store<const R: usize>(out: &mut [f32], m: usize, j: usize, i: usize, d: &[[f32; 4]; R]) {
    for (r, dr) in d.iter().enumerate() {
        for (c, v) in dr.iter().enumerate() {
            out[(j + c) * m + i + r] = *v;
        }
    }
}

/// `pf`: weights to prefetch while this runs (see PREFETCH_GROUPS; may be empty).
fn dot4(isa: Isa, x: &[f32], w: [&[u8]; 4], pf: &[u8]) -> [f32; 4] {
    match isa {
        Isa::Portable => dot4_portable(x, w),
        // SAFETY: qmatmul checked that this CPU has the features
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { x86::dot4_avx2(x, w, pf) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::dot4_avx512(x, w, pf) },
    }
}

fn dot4_portable(x: &[f32], w: [&[u8]; 4]) -> [f32; 4] {
    let mut acc = [0f32; 4];
    for (r, wr) in w.iter().enumerate() {
        // eight partial sums, as the SIMD paths keep lanes: the compiler can
        // vectorise this, and the rounding stays close to theirs
        let mut lanes = [0f32; 8];
        let mut ch = x.chunks_exact(8).zip(wr.chunks_exact(8));
        for (xs, ws) in &mut ch {
            for l in 0..8 {
                lanes[l] += xs[l] * ws[l] as i8 as f32;
            }
        }
        let tail = x.len() / 8 * 8;
        let mut s: f32 = lanes.iter().sum();
        for i in tail..x.len() {
            s += x[i] * wr[i] as i8 as f32;
        }
        acc[r] = s;
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// The prefetch of the loop step that has consumed `i` weights of each of four
    /// rows: the line at 4 * i in `pf`, so the requests keep pace with the loads.
    #[inline(always)]
    unsafe fn prefetch_step(pf: &[u8], i: usize) {
        if 4 * i < pf.len() {
            // SAFETY: the address lies inside `pf`; a prefetch hint never faults
            _mm_prefetch::<{ _MM_HINT_T0 }>(pf.as_ptr().add(4 * i) as *const i8);
        }
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; every slice must be x.len() long.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot4_avx2(x: &[f32], w: [&[u8]; 4], pf: &[u8]) -> [f32; 4] {
        let k = x.len();
        assert!(w.iter().all(|r| r.len() == k));
        let mut a = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 8 <= k {
            prefetch_step(pf, i);
            let xv = _mm256_loadu_ps(x.as_ptr().add(i));
            for r in 0..4 {
                let b = _mm_loadl_epi64(w[r].as_ptr().add(i) as *const __m128i);
                let wv = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
                a[r] = _mm256_fmadd_ps(xv, wv, a[r]);
            }
            i += 8;
        }
        let mut out = [0f32; 4];
        for r in 0..4 {
            let lo = _mm256_castps256_ps128(a[r]);
            let hi = _mm256_extractf128_ps(a[r], 1);
            let s4 = _mm_add_ps(lo, hi);
            let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
            let mut s = _mm_cvtss_f32(s1);
            for t in i..k {
                s += x[t] * w[r][t] as i8 as f32;
            }
            out[r] = s;
        }
        out
    }

    /// R x rows against four weight rows; the same sums as dot4_avx2 per pair.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; every slice must be as long as xs[0].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot4xr_avx2<const R: usize>(xs: [&[f32]; R], w: [&[u8]; 4], pf: &[u8]) -> [[f32; 4]; R] {
        let k = xs[0].len();
        assert!(w.iter().all(|r| r.len() == k) && xs.iter().all(|r| r.len() == k));
        let mut a = [[_mm256_setzero_ps(); 4]; R];
        let mut i = 0;
        while i + 8 <= k {
            prefetch_step(pf, i);
            let mut wv = [_mm256_setzero_ps(); 4];
            for c in 0..4 {
                let b = _mm_loadl_epi64(w[c].as_ptr().add(i) as *const __m128i);
                wv[c] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
            }
            for r in 0..R {
                let xv = _mm256_loadu_ps(xs[r].as_ptr().add(i));
                for c in 0..4 {
                    a[r][c] = _mm256_fmadd_ps(xv, wv[c], a[r][c]);
                }
            }
            i += 8;
        }
        let mut out = [[0f32; 4]; R];
        for r in 0..R {
            for c in 0..4 {
                let lo = _mm256_castps256_ps128(a[r][c]);
                let hi = _mm256_extractf128_ps(a[r][c], 1);
                let s4 = _mm_add_ps(lo, hi);
                let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
                let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
                let mut s = _mm_cvtss_f32(s1);
                for t in i..k {
                    s += xs[r][t] * w[c][t] as i8 as f32;
                }
                out[r][c] = s;
            }
        }
        out
    }

    /// R x rows against four weight rows; the same sums as dot4_avx512 per pair.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; every slice must be as long as xs[0].
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot4xr_avx512<const R: usize>(xs: [&[f32]; R], w: [&[u8]; 4], pf: &[u8]) -> [[f32; 4]; R] {
        let k = xs[0].len();
        assert!(w.iter().all(|r| r.len() == k) && xs.iter().all(|r| r.len() == k));
        let mut a = [[_mm512_setzero_ps(); 4]; R];
        let mut i = 0;
        while i + 16 <= k {
            prefetch_step(pf, i);
            let mut wv = [_mm512_setzero_ps(); 4];
            for c in 0..4 {
                let b = _mm_loadu_si128(w[c].as_ptr().add(i) as *const __m128i);
                wv[c] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
            }
            for r in 0..R {
                let xv = _mm512_loadu_ps(xs[r].as_ptr().add(i));
                for c in 0..4 {
                    a[r][c] = _mm512_fmadd_ps(xv, wv[c], a[r][c]);
                }
            }
            i += 16;
        }
        let mut out = [[0f32; 4]; R];
        for r in 0..R {
            for c in 0..4 {
                let mut s = _mm512_reduce_add_ps(a[r][c]);
                for t in i..k {
                    s += xs[r][t] * w[c][t] as i8 as f32;
                }
                out[r][c] = s;
            }
        }
        out
    }

    /// # Safety
    /// The CPU must support AVX-512F; every slice must be x.len() long.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot4_avx512(x: &[f32], w: [&[u8]; 4], pf: &[u8]) -> [f32; 4] {
        let k = x.len();
        assert!(w.iter().all(|r| r.len() == k));
        let mut a = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 16 <= k {
            prefetch_step(pf, i);
            let xv = _mm512_loadu_ps(x.as_ptr().add(i));
            for r in 0..4 {
                let b = _mm_loadu_si128(w[r].as_ptr().add(i) as *const __m128i);
                let wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
                a[r] = _mm512_fmadd_ps(xv, wv, a[r]);
            }
            i += 16;
        }
        let mut out = [0f32; 4];
        for r in 0..4 {
            let mut s = _mm512_reduce_add_ps(a[r]);
            for t in i..k {
                s += x[t] * w[r][t] as i8 as f32;
            }
            out[r] = s;
        }
        out
    }
}

#[cfg(feature = "python")]
pub mod py {
    use pyo3::exceptions::PyValueError;
    use pyo3::prelude::*;
    use pyo3::types::{PyByteArray, PyBytes};

    fn floats(what: &str, b: &[u8]) -> PyResult<Vec<f32>> {
        if b.len() % 4 != 0 {
            return Err(PyValueError::new_err(format!("qmatmul: {what} holds {} bytes, not a whole number of float32", b.len())));
        }
        Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// qmatmul(x, m, k, q, n, scales, bias=None, isa=None) -> bytearray of m*n float32.
    ///
    /// x: m*k little-endian float32; q: n*k int8 (row j = output channel j);
    /// scales, bias: n float32. The GIL is released while it computes.
    #[pyfunction(bias = "None", isa = "None")]
    #[allow(clippy::too_many_arguments)]
    fn qmatmul<'py>(
        py: Python<'py>,
        x: &PyBytes,
        m: usize,
        k: usize,
        q: &PyBytes,
        n: usize,
        scales: &PyBytes,
        bias: Option<&PyBytes>,
        isa: Option<&str>,
    ) -> PyResult<&'py PyByteArray> {
        let isa = match isa {
            None => super::detect(),
            Some(name) => *super::available()
                .iter()
                .find(|i| i.name() == name)
                .ok_or_else(|| PyValueError::new_err(format!("qmatmul: kernel {name:?} is not available on this CPU")))?,
        };
        let xv = floats("x", x.as_bytes())?;
        let sv = floats("scales", scales.as_bytes())?;
        let bv = bias.map(|b| floats("bias", b.as_bytes())).transpose()?;
        // the weights are read in place from the bytes object, not copied
        let qb: &[u8] = q.as_bytes();
        let y = py
            .allow_threads(|| {
                super::qmatmul(isa, &xv, m, k, qb, n, &sv, bv.as_deref())
            })
            .map_err(|e| PyValueError::new_err(e.0))?;
        PyByteArray::new_with(py, y.len() * 4, |buf| {
            for (d, v) in buf.chunks_exact_mut(4).zip(&y) {
                d.copy_from_slice(&v.to_le_bytes());
            }
            Ok(())
        })
    }

    /// The kernel qmatmul picks on this CPU ("avx512f", "avx2+fma", "portable").
    #[pyfunction]
    fn qmatmul_isa() -> &'static str {
        super::detect().name()
    }

    /// Every kernel this CPU can run.
    #[pyfunction]
    fn qmatmul_isas() -> Vec<&'static str> {
        super::available().into_iter().map(|i| i.name()).collect()
    }

    pub fn register(_py: Python<'_>, m: &PyModule) -> PyResult<()> {
        m.add_function(wrap_pyfunction!(qmatmul, m)?)?;
        m.add_function(wrap_pyfunction!(qmatmul_isa, m)?)?;
        m.add_function(wrap_pyfunction!(qmatmul_isas, m)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    fn reference(x: &[f32], m: usize, k: usize, q: &[u8], n: usize, s: &[f32], b: Option<&[f32]>) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0f64;
                for t in 0..k {
                    acc += x[i * k + t] as f64 * q[j * k + t] as i8 as f64;
                }
                out[i * n + j] = (acc * s[j] as f64 + b.map_or(0.0, |b| b[j] as f64)) as f32;
            }
        }
        out
    }

    #[test]
    fn every_kernel_matches_the_reference_on_odd_shapes() {
        let mut seed = 7u64;
        for &(m, k, n) in &[(1, 1, 1), (1, 7, 5), (3, 17, 33), (2, 100, 70), (5, 768, 37), (1, 31, 129), (8, 40, 12), (11, 33, 9), (4, 16, 4)] {
            let x: Vec<f32> = (0..m * k).map(|_| (lcg(&mut seed) % 2001) as f32 / 1000.0 - 1.0).collect();
            let q: Vec<u8> = (0..n * k).map(|_| ((lcg(&mut seed) % 255) as i32 - 127) as i8 as u8).collect();
            let s: Vec<f32> = (0..n).map(|_| (lcg(&mut seed) % 100 + 1) as f32 / 1e4).collect();
            let b: Vec<f32> = (0..n).map(|_| (lcg(&mut seed) % 100) as f32 / 100.0).collect();
            let want = reference(&x, m, k, &q, n, &s, Some(&b));
            for isa in available() {
                let got = qmatmul(isa, &x, m, k, &q, n, &s, Some(&b)).unwrap();
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{isa:?} m={m} k={k} n={n}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let e = qmatmul(Isa::Portable, &[1.0; 3], 1, 4, &[0; 8], 2, &[1.0; 2], None).unwrap_err();
        assert!(e.0.contains("x holds 3"), "{e}");
        let e = qmatmul(Isa::Portable, &[1.0; 4], 1, 4, &[0; 7], 2, &[1.0; 2], None).unwrap_err();
        assert!(e.0.contains("weights hold 7"), "{e}");
        let e = qmatmul(Isa::Portable, &[1.0; 4], 1, 4, &[0; 8], 2, &[1.0; 1], None).unwrap_err();
        assert!(e.0.contains("1 scales"), "{e}");
        let e = qmatmul(Isa::Portable, &[1.0; 4], 1, 4, &[0; 8], 2, &[1.0; 2], Some(&[0.0; 3])).unwrap_err();
        assert!(e.0.contains("bias has 3"), "{e}");
        assert!(qmatmul(Isa::Portable, &[], 0, 4, &[], 2, &[1.0; 2], None).is_err());
    }
}
