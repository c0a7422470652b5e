//! The encoder's inner loops, compiled for AVX-512, AVX2 and NEON and chosen
//! at run time (`multiversion`, safe code): LayerNorm with its bias and
//! residual, attention eight keys at a time, bias + exact GELU, and the
//! branch-free `erf` and `exp` they use.

use multiversion::multiversion;

/// `row = LayerNorm(row + product + bias)` (or of `row` alone).
#[multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2+fma", "aarch64+neon"))]
pub(super) fn add_norm_row(row: &mut [f32], add: Option<(&[f32], &[f32])>, gamma: &[f32], beta: &[f32], eps: f32) {
    if let Some((p, bias)) = add {
        for ((r, p), b) in row.iter_mut().zip(p).zip(bias) {
            *r += p + b;
        }
    }
    let len = row.len() as f32;
    let mean = sum(row) / len;
    let var = sum_by(row, |v| (v - mean) * (v - mean)) / len;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
        *v = (*v - mean) * inv * g + b;
    }
}

/// One head of one sequence: softmax(q k^T) v for `len` tokens of width `d`
/// (`q` already scaled; `kt` is k transposed, `d` rows of `scores.len()`, the
/// length padded to whole blocks of [`KEYS`]); row `i` is written at
/// `out[i * stride..][..d]`.
#[multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2+fma", "aarch64+neon"))]
pub(super) fn attend(q: &[f32], kt: &[f32], v: &[f32], d: usize, scores: &mut [f32], out: &mut [f32], stride: usize) {
    let len = q.len() / d.max(1);
    let padded = scores.len();
    for i in 0..len {
        // Eight keys at a time, as a sum of `d` scaled pieces of k^T's rows
        // (padded to a multiple of 8), the eight sums held in registers.
        let qi = &q[i * d..][..d];
        for (block, s) in scores[..padded].chunks_exact_mut(KEYS).enumerate() {
            let mut acc = [0.0f32; KEYS];
            for (c, &qc) in qi.iter().enumerate() {
                if let Some(k) = kt[c * padded + block * KEYS..].first_chunk::<KEYS>() {
                    for t in 0..KEYS {
                        acc[t] += qc * k[t];
                    }
                }
            }
            s.copy_from_slice(&acc);
        }
        let scores = &mut scores[..len];
        let max = scores.iter().fold(f32::MIN, |m, &s| if s > m { s } else { m });
        for s in scores.iter_mut() {
            *s = exp(*s - max);
        }
        let inv = 1.0 / sum(scores);
        let o = &mut out[i * stride..][..d];
        // Common head widths get their sum in registers, stored once.
        match d {
            32 => weighted_rows::<32>(scores, v, inv, o),
            64 => weighted_rows::<64>(scores, v, inv, o),
            _ => {
                o.fill(0.0);
                for (p, vj) in scores.iter().zip(v.chunks_exact(d)) {
                    let p = p * inv;
                    for (o, x) in o.iter_mut().zip(vj) {
                        *o += p * x;
                    }
                }
            }
        }
    }
}

/// Keys scored together in [`attend`].
pub(super) const KEYS: usize = 8;

/// `out = inv * sum_j p_j v_j` for rows `v_j` of width `D`.
#[inline(always)]
fn weighted_rows<const D: usize>(p: &[f32], v: &[f32], inv: f32, out: &mut [f32]) {
    let mut acc = [0.0f32; D];
    for (p, vj) in p.iter().zip(v.chunks_exact(D)) {
        if let Some(vj) = vj.first_chunk::<D>() {
            for c in 0..D {
                acc[c] += p * vj[c];
            }
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = a * inv;
    }
}

/// Sum with eight partial sums (vectorises; float addition is not reordered otherwise).
#[inline]
fn sum(a: &[f32]) -> f32 {
    sum_by(a, |x| x)
}

/// `sum(f(x))` over `a`, with eight partial sums.
#[inline]
fn sum_by(a: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let c = a.chunks_exact(8);
    let tail: f32 = c.remainder().iter().map(|&x| f(x)).sum();
    for x in c {
        for i in 0..8 {
            acc[i] += f(x[i]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `out = gelu(x + bias)` with the exact (erf) GELU.
#[multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2+fma", "aarch64+neon"))]
pub(super) fn bias_gelu(out: &mut [f32], x: &[f32], bias: &[f32]) {
    for ((o, x), b) in out.iter_mut().zip(x).zip(bias) {
        *o = gelu(x + b);
    }
}

/// `x * Φ(x) = x/2 * (1 + erf(x / √2))`.
#[inline]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf by Abramowitz & Stegun 7.1.26 (absolute error under 1.5e-7), written
/// without branches or library calls so that loops over it vectorise.
#[inline]
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_8, -1.453_152_1, 1.061_405_4];
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = ((((A[4] * t + A[3]) * t + A[2]) * t + A[1]) * t + A[0]) * t;
    (1.0 - poly * exp(-a * a)).copysign(x)
}

/// e^x for x in [-87, 88] (clamped outside) with a relative error near
/// 1e-7: x = k ln2 + r, e^r by its Taylor series to r^7, 2^k by exponent bits.
/// Branch-free so that loops over it vectorise.
#[inline]
fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and taking away 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let rounded = x * std::f32::consts::LOG2_E + ROUND;
    let k = rounded - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r / 5040.0))))));
    // k (in [-126, 127]) sits in the low bits of `rounded`: 2^k from them by
    // integer arithmetic alone (a float-to-int cast would not vectorise).
    let k_bits = rounded.to_bits().wrapping_sub(ROUND.to_bits());
    let two_k = f32::from_bits(k_bits.wrapping_add(127) << 23);
    p * two_k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libm_erf(x: f64) -> f64 {
        // Reference by series/continued fraction is overkill: use the
        // relation erf(x) = 1 - erfc(x) with std's f64 exp in a long
        // Taylor series, accurate to ~1e-15 for |x| < 3.
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn exp_is_close_to_std() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp(x));
            worst = worst.max(((got - want) / want).abs());
            x += 0.01;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
    }

    #[test]
    fn erf_and_gelu_are_close_to_the_exact_ones() {
        let mut worst = 0.0f64;
        let mut x = -3.0f32;
        while x < 3.0 {
            worst = worst.max((f64::from(erf(x)) - libm_erf(f64::from(x))).abs());
            x += 0.001;
        }
        assert!(worst < 1e-6, "worst absolute erf error {worst}");
        // Far out: erf saturates at ±1 and GELU at x or 0.
        assert!((erf(10.0) - 1.0).abs() < 1e-7 && (erf(-10.0) + 1.0).abs() < 1e-7);
        assert!((gelu(20.0) - 20.0).abs() < 1e-5 && gelu(-20.0).abs() < 1e-5);
        assert!(gelu(0.0) == 0.0 && (gelu(1.0) - 0.841_344_7).abs() < 1e-6);
    }
}
