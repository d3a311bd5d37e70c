//! Multi-lane ("multi-buffer") MD5.
//!
//! MD5 is sequential within one stream, so the only way past one core's ~0.6 GB/s is to hash
//! several independent streams at once: each 32-bit lane of a SIMD register carries the state of
//! its own stream, and every instruction advances all of them (the approach of Intel's
//! isa-l_crypto and minio/md5-simd). S3 ETags give us plenty of independent streams: every
//! 8 MiB part of a big file, and every small file.
//!
//! Kernels, picked at run time: AVX-512F (16 lanes, native rotate and three-input logic),
//! AVX2 (8 lanes) and a portable one (4 lanes, plain Rust that LLVM may vectorise for the
//! baseline target) for other CPUs and architectures.
//!
//! [`md5_batch`] is the way to hash many small inputs: a lane that finishes takes the next input
//! straight away, so lanes stay busy. [`Md5Lanes::update`] is for streaming: all lanes of one
//! call advance together, so lanes whose data runs out first sit idle until the longest one is
//! done (give it inputs of similar sizes).

/// Lanes of the widest kernel; the lane state is always sized for it.
const MAX_LANES: usize = 16;
/// Lanes of the portable kernel: enough independent chains to hide the latency of one MD5 step,
/// and one SSE2 / NEON register wide if LLVM vectorises it.
const PORTABLE_LANES: usize = 4;

const IV: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// The per-step additive constants of RFC 1321.
const K: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
];

/// State of every lane, word-major ("structure of arrays"): `state[j][lane]` is word j (A, B, C,
/// D) of that lane, so one row loads straight into a SIMD register.
type State = [[u32; MAX_LANES]; 4];

const RESET_STATE: State = [
    [IV[0]; MAX_LANES],
    [IV[1]; MAX_LANES],
    [IV[2]; MAX_LANES],
    [IV[3]; MAX_LANES],
];

/// The 64 steps of MD5 on registers `$a..$d`, message words in `$m`. `$step!(m, f, a, b, c, d,
/// word, step, shift)` is the kernel's `a = b + rotl(a + f(b, c, d) + m[word] + K[step], shift)`.
macro_rules! md5_64_steps {
    ($step:ident, $m:ident, $a:ident, $b:ident, $c:ident, $d:ident) => {
        $step!($m, F, $a, $b, $c, $d, 0, 0, 7);
        $step!($m, F, $d, $a, $b, $c, 1, 1, 12);
        $step!($m, F, $c, $d, $a, $b, 2, 2, 17);
        $step!($m, F, $b, $c, $d, $a, 3, 3, 22);
        $step!($m, F, $a, $b, $c, $d, 4, 4, 7);
        $step!($m, F, $d, $a, $b, $c, 5, 5, 12);
        $step!($m, F, $c, $d, $a, $b, 6, 6, 17);
        $step!($m, F, $b, $c, $d, $a, 7, 7, 22);
        $step!($m, F, $a, $b, $c, $d, 8, 8, 7);
        $step!($m, F, $d, $a, $b, $c, 9, 9, 12);
        $step!($m, F, $c, $d, $a, $b, 10, 10, 17);
        $step!($m, F, $b, $c, $d, $a, 11, 11, 22);
        $step!($m, F, $a, $b, $c, $d, 12, 12, 7);
        $step!($m, F, $d, $a, $b, $c, 13, 13, 12);
        $step!($m, F, $c, $d, $a, $b, 14, 14, 17);
        $step!($m, F, $b, $c, $d, $a, 15, 15, 22);
        $step!($m, G, $a, $b, $c, $d, 1, 16, 5);
        $step!($m, G, $d, $a, $b, $c, 6, 17, 9);
        $step!($m, G, $c, $d, $a, $b, 11, 18, 14);
        $step!($m, G, $b, $c, $d, $a, 0, 19, 20);
        $step!($m, G, $a, $b, $c, $d, 5, 20, 5);
        $step!($m, G, $d, $a, $b, $c, 10, 21, 9);
        $step!($m, G, $c, $d, $a, $b, 15, 22, 14);
        $step!($m, G, $b, $c, $d, $a, 4, 23, 20);
        $step!($m, G, $a, $b, $c, $d, 9, 24, 5);
        $step!($m, G, $d, $a, $b, $c, 14, 25, 9);
        $step!($m, G, $c, $d, $a, $b, 3, 26, 14);
        $step!($m, G, $b, $c, $d, $a, 8, 27, 20);
        $step!($m, G, $a, $b, $c, $d, 13, 28, 5);
        $step!($m, G, $d, $a, $b, $c, 2, 29, 9);
        $step!($m, G, $c, $d, $a, $b, 7, 30, 14);
        $step!($m, G, $b, $c, $d, $a, 12, 31, 20);
        $step!($m, H, $a, $b, $c, $d, 5, 32, 4);
        $step!($m, H, $d, $a, $b, $c, 8, 33, 11);
        $step!($m, H, $c, $d, $a, $b, 11, 34, 16);
        $step!($m, H, $b, $c, $d, $a, 14, 35, 23);
        $step!($m, H, $a, $b, $c, $d, 1, 36, 4);
        $step!($m, H, $d, $a, $b, $c, 4, 37, 11);
        $step!($m, H, $c, $d, $a, $b, 7, 38, 16);
        $step!($m, H, $b, $c, $d, $a, 10, 39, 23);
        $step!($m, H, $a, $b, $c, $d, 13, 40, 4);
        $step!($m, H, $d, $a, $b, $c, 0, 41, 11);
        $step!($m, H, $c, $d, $a, $b, 3, 42, 16);
        $step!($m, H, $b, $c, $d, $a, 6, 43, 23);
        $step!($m, H, $a, $b, $c, $d, 9, 44, 4);
        $step!($m, H, $d, $a, $b, $c, 12, 45, 11);
        $step!($m, H, $c, $d, $a, $b, 15, 46, 16);
        $step!($m, H, $b, $c, $d, $a, 2, 47, 23);
        $step!($m, I, $a, $b, $c, $d, 0, 48, 6);
        $step!($m, I, $d, $a, $b, $c, 7, 49, 10);
        $step!($m, I, $c, $d, $a, $b, 14, 50, 15);
        $step!($m, I, $b, $c, $d, $a, 5, 51, 21);
        $step!($m, I, $a, $b, $c, $d, 12, 52, 6);
        $step!($m, I, $d, $a, $b, $c, 3, 53, 10);
        $step!($m, I, $c, $d, $a, $b, 10, 54, 15);
        $step!($m, I, $b, $c, $d, $a, 1, 55, 21);
        $step!($m, I, $a, $b, $c, $d, 8, 56, 6);
        $step!($m, I, $d, $a, $b, $c, 15, 57, 10);
        $step!($m, I, $c, $d, $a, $b, 6, 58, 15);
        $step!($m, I, $b, $c, $d, $a, 13, 59, 21);
        $step!($m, I, $a, $b, $c, $d, 4, 60, 6);
        $step!($m, I, $d, $a, $b, $c, 11, 61, 10);
        $step!($m, I, $c, $d, $a, $b, 2, 62, 15);
        $step!($m, I, $b, $c, $d, $a, 9, 63, 21);
    };
}

/// Which compression routine runs the lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    /// The widest kernel this CPU runs.
    pub(crate) fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if Kernel::Avx512.available() {
                return Kernel::Avx512;
            }
            if Kernel::Avx2.available() {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    pub(crate) fn available(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => !simd_turned_off() && is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => !simd_turned_off() && is_x86_feature_detected!("avx512f"),
        }
    }

    pub(crate) fn lanes(self) -> usize {
        match self {
            Kernel::Portable => PORTABLE_LANES,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => 8,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => 16,
        }
    }

    /// Runs `blocks[i]` (whole 64-byte blocks, the same count for every lane) through lane i.
    fn compress(self, state: &mut State, blocks: &[&[u8]]) {
        match self {
            Kernel::Portable => compress_portable(state, blocks),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                // A cached atomic load, cheap next to the blocks of a call; it keeps a wrongly
                // forced kernel from being undefined behaviour.
                assert!(self.available());
                // SAFETY: the CPU has AVX2, checked just above.
                unsafe { x86::compress_avx2(state, blocks) }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                assert!(self.available());
                // SAFETY: the CPU has AVX-512F, checked just above.
                unsafe { x86::compress_avx512(state, blocks) }
            }
        }
    }
}

/// Checks the kernels' precondition and returns the common length in bytes. The SIMD kernels
/// rely on it for the bounds of their loads.
fn common_block_len(blocks: &[&[u8]], lanes: usize) -> usize {
    assert_eq!(blocks.len(), lanes, "one block slice per lane");
    let len = blocks[0].len();
    assert!(
        len.is_multiple_of(64) && blocks.iter().all(|b| b.len() == len),
        "every lane needs the same number of whole blocks"
    );
    len
}

macro_rules! step_portable {
    ($m:ident, $f:ident, $a:ident, $b:ident, $c:ident, $d:ident, $mi:literal, $ki:literal, $s:literal) => {
        for l in 0..$a.len() {
            let t = $a[l]
                .wrapping_add(step_portable!(@$f, $b[l], $c[l], $d[l]))
                .wrapping_add($m[$mi][l])
                .wrapping_add(K[$ki]);
            $a[l] = $b[l].wrapping_add(t.rotate_left($s));
        }
    };
    (@F, $b:expr, $c:expr, $d:expr) => { $d ^ ($b & ($c ^ $d)) };
    (@G, $b:expr, $c:expr, $d:expr) => { $c ^ ($d & ($b ^ $c)) };
    (@H, $b:expr, $c:expr, $d:expr) => { $b ^ $c ^ $d };
    (@I, $b:expr, $c:expr, $d:expr) => { $c ^ ($b | !$d) };
}

fn compress_portable(state: &mut State, blocks: &[&[u8]]) {
    const N: usize = PORTABLE_LANES;
    let len = common_block_len(blocks, N);
    let mut s = [[0u32; N]; 4];
    for (row, full) in s.iter_mut().zip(state.iter()) {
        row.copy_from_slice(&full[..N]);
    }
    for off in (0..len).step_by(64) {
        let mut m = [[0u32; N]; 16];
        for (l, block) in blocks.iter().enumerate() {
            for (k, word) in block[off..off + 64].chunks_exact(4).enumerate() {
                m[k][l] = u32::from_le_bytes(word.try_into().unwrap());
            }
        }
        let [mut a, mut b, mut c, mut d] = s;
        md5_64_steps!(step_portable, m, a, b, c, d);
        for (row, new) in s.iter_mut().zip([a, b, c, d]) {
            for (x, y) in row.iter_mut().zip(new) {
                *x = x.wrapping_add(y);
            }
        }
    }
    for (full, row) in state.iter_mut().zip(s.iter()) {
        full[..N].copy_from_slice(row);
    }
}

// AVX-512 intrinsics and `target_feature(enable = "avx512f")` are stable since Rust 1.89, so
// this module needs 1.89 whatever Cargo.toml's `rust-version` says; tell clippy so rather than
// give up the 16-lane kernel.
#[cfg(target_arch = "x86_64")]
#[clippy::msrv = "1.89"]
mod x86 {
    use super::{common_block_len, State, K};
    use std::arch::x86_64::*;

    /// Ternary-logic truth tables of MD5's round functions over (b, c, d).
    const TERN_F: i32 = 0xCA; // b ? c : d
    const TERN_G: i32 = 0xE4; // d ? b : c
    const TERN_H: i32 = 0x96; // b ^ c ^ d
    const TERN_I: i32 = 0x39; // c ^ (b | !d)

    macro_rules! step512 {
        ($m:ident, $f:ident, $a:ident, $b:ident, $c:ident, $d:ident, $mi:literal, $ki:literal, $s:literal) => {
            // The message + constant sum and `a` are ready early; only the logic function,
            // two adds and the rotate sit on the chain that links one step to the next.
            let t = _mm512_add_epi32($m[$mi], _mm512_set1_epi32(K[$ki] as i32));
            let t = _mm512_add_epi32($a, t);
            let t = _mm512_add_epi32(t, _mm512_ternarylogic_epi32::<$f>($b, $c, $d));
            $a = _mm512_add_epi32($b, _mm512_rol_epi32::<$s>(t));
        };
    }

    /// 16 lanes, one stream per 32-bit lane of a zmm register.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn compress_avx512(state: &mut State, blocks: &[&[u8]]) {
        const F: i32 = TERN_F;
        const G: i32 = TERN_G;
        const H: i32 = TERN_H;
        const I: i32 = TERN_I;
        let len = common_block_len(blocks, 16);
        // SAFETY: each state row is 16 u32 = 64 bytes, one unaligned zmm load/store.
        let [mut sa, mut sb, mut sc, mut sd] = state
            .each_ref()
            .map(|row| unsafe { _mm512_loadu_si512(row.as_ptr().cast()) });
        for off in (0..len).step_by(64) {
            let mut r = [_mm512_setzero_si512(); 16];
            for (row, block) in r.iter_mut().zip(blocks) {
                // SAFETY: the slice is exactly 64 bytes (bounds-checked indexing), so the
                // unaligned 64-byte load stays inside it.
                *row = unsafe { _mm512_loadu_si512(block[off..off + 64].as_ptr().cast()) };
            }
            let m = transpose16(r);
            prefetch_ahead(blocks, off);
            let (mut a, mut b, mut c, mut d) = (sa, sb, sc, sd);
            md5_64_steps!(step512, m, a, b, c, d);
            sa = _mm512_add_epi32(sa, a);
            sb = _mm512_add_epi32(sb, b);
            sc = _mm512_add_epi32(sc, c);
            sd = _mm512_add_epi32(sd, d);
        }
        for (row, v) in state.iter_mut().zip([sa, sb, sc, sd]) {
            // SAFETY: as for the loads above.
            unsafe { _mm512_storeu_si512(row.as_mut_ptr().cast(), v) };
        }
    }

    /// Asks for every lane's block two ahead of `off`. All lanes read at the same offset, and
    /// when their buffers share an alignment (page-aligned parts of one file, say) their lines
    /// compete for the same L1 set, evicting what the hardware prefetcher fetched; an explicit
    /// prefetch just ahead of use measured ~10% faster on such cold 8 MiB streams.
    #[inline(always)]
    fn prefetch_ahead(blocks: &[&[u8]], off: usize) {
        const AHEAD: usize = 2 * 64;
        for block in blocks {
            if let Some(next) = block.get(off + AHEAD..).filter(|next| !next.is_empty()) {
                // SAFETY: a prefetch is only a hint: it never faults and changes no memory, and
                // the address is in bounds anyway.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(next.as_ptr().cast()) };
            }
        }
    }

    /// 16x16 transpose of u32: row l (lane l's block) in, row k (word k of every lane) out.
    /// Four shuffle stages instead of 16 gathers, which are slow on every AVX-512 CPU.
    #[target_feature(enable = "avx512f")]
    fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
        // Pairs of rows interleaved by 32-bit words, then by 64-bit words: v[g][q] holds, in its
        // 128-bit part j, word 4j+q of rows 4g..4g+3.
        let mut v = [[_mm512_setzero_si512(); 4]; 4];
        for (g, vg) in v.iter_mut().enumerate() {
            let [r0, r1, r2, r3] = [r[4 * g], r[4 * g + 1], r[4 * g + 2], r[4 * g + 3]];
            let t0 = _mm512_unpacklo_epi32(r0, r1);
            let t1 = _mm512_unpackhi_epi32(r0, r1);
            let t2 = _mm512_unpacklo_epi32(r2, r3);
            let t3 = _mm512_unpackhi_epi32(r2, r3);
            *vg = [
                _mm512_unpacklo_epi64(t0, t2),
                _mm512_unpackhi_epi64(t0, t2),
                _mm512_unpacklo_epi64(t1, t3),
                _mm512_unpackhi_epi64(t1, t3),
            ];
        }
        // Then a 4x4 transpose of 128-bit parts across the four groups.
        let mut m = [_mm512_setzero_si512(); 16];
        for q in 0..4 {
            let x0 = _mm512_shuffle_i32x4::<0x44>(v[0][q], v[1][q]);
            let x1 = _mm512_shuffle_i32x4::<0xEE>(v[0][q], v[1][q]);
            let x2 = _mm512_shuffle_i32x4::<0x44>(v[2][q], v[3][q]);
            let x3 = _mm512_shuffle_i32x4::<0xEE>(v[2][q], v[3][q]);
            m[q] = _mm512_shuffle_i32x4::<0x88>(x0, x2);
            m[4 + q] = _mm512_shuffle_i32x4::<0xDD>(x0, x2);
            m[8 + q] = _mm512_shuffle_i32x4::<0x88>(x1, x3);
            m[12 + q] = _mm512_shuffle_i32x4::<0xDD>(x1, x3);
        }
        m
    }

    macro_rules! step256 {
        ($m:ident, $f:ident, $a:ident, $b:ident, $c:ident, $d:ident, $mi:literal, $ki:literal, $s:literal) => {
            let t = _mm256_add_epi32($m[$mi], _mm256_set1_epi32(K[$ki] as i32));
            let t = _mm256_add_epi32($a, t);
            let t = _mm256_add_epi32(t, step256!(@$f, $b, $c, $d));
            // AVX2 has no rotate.
            let t = _mm256_or_si256(_mm256_slli_epi32::<$s>(t), _mm256_srli_epi32::<{ 32 - $s }>(t));
            $a = _mm256_add_epi32($b, t);
        };
        (@F, $b:ident, $c:ident, $d:ident) => {
            _mm256_xor_si256($d, _mm256_and_si256($b, _mm256_xor_si256($c, $d)))
        };
        (@G, $b:ident, $c:ident, $d:ident) => {
            _mm256_xor_si256($c, _mm256_and_si256($d, _mm256_xor_si256($b, $c)))
        };
        (@H, $b:ident, $c:ident, $d:ident) => {
            _mm256_xor_si256(_mm256_xor_si256($b, $c), $d)
        };
        (@I, $b:ident, $c:ident, $d:ident) => {
            // andnot(d, ones) is !d.
            _mm256_xor_si256($c, _mm256_or_si256($b, _mm256_andnot_si256($d, _mm256_set1_epi32(-1))))
        };
    }

    /// 8 lanes, one stream per 32-bit lane of a ymm register.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn compress_avx2(state: &mut State, blocks: &[&[u8]]) {
        let len = common_block_len(blocks, 8);
        // SAFETY: each state row has 16 u32; the first 8 (32 bytes) are one unaligned ymm.
        let [mut sa, mut sb, mut sc, mut sd] = state
            .each_ref()
            .map(|row| unsafe { _mm256_loadu_si256(row.as_ptr().cast()) });
        for off in (0..len).step_by(64) {
            let mut lo = [_mm256_setzero_si256(); 8];
            let mut hi = [_mm256_setzero_si256(); 8];
            for ((l, h), block) in lo.iter_mut().zip(hi.iter_mut()).zip(blocks) {
                let block = &block[off..off + 64];
                // SAFETY: `block` is exactly 64 bytes (bounds-checked), so both unaligned
                // 32-byte loads stay inside it.
                unsafe {
                    *l = _mm256_loadu_si256(block.as_ptr().cast());
                    *h = _mm256_loadu_si256(block[32..].as_ptr().cast());
                }
            }
            prefetch_ahead(blocks, off);
            let lo = transpose8(lo);
            let hi = transpose8(hi);
            let m = [
                lo[0], lo[1], lo[2], lo[3], lo[4], lo[5], lo[6], lo[7], hi[0], hi[1], hi[2], hi[3],
                hi[4], hi[5], hi[6], hi[7],
            ];
            let (mut a, mut b, mut c, mut d) = (sa, sb, sc, sd);
            md5_64_steps!(step256, m, a, b, c, d);
            sa = _mm256_add_epi32(sa, a);
            sb = _mm256_add_epi32(sb, b);
            sc = _mm256_add_epi32(sc, c);
            sd = _mm256_add_epi32(sd, d);
        }
        for (row, v) in state.iter_mut().zip([sa, sb, sc, sd]) {
            // SAFETY: as for the loads above.
            unsafe { _mm256_storeu_si256(row.as_mut_ptr().cast(), v) };
        }
    }

    /// 8x8 transpose of u32 (rows = lanes in, rows = message words out).
    #[target_feature(enable = "avx2")]
    fn transpose8(r: [__m256i; 8]) -> [__m256i; 8] {
        // u[4g+q] holds, in its 128-bit half h, word 4h+q of rows 4g..4g+3.
        let mut u = [_mm256_setzero_si256(); 8];
        for g in 0..2 {
            let t0 = _mm256_unpacklo_epi32(r[4 * g], r[4 * g + 1]);
            let t1 = _mm256_unpackhi_epi32(r[4 * g], r[4 * g + 1]);
            let t2 = _mm256_unpacklo_epi32(r[4 * g + 2], r[4 * g + 3]);
            let t3 = _mm256_unpackhi_epi32(r[4 * g + 2], r[4 * g + 3]);
            u[4 * g] = _mm256_unpacklo_epi64(t0, t2);
            u[4 * g + 1] = _mm256_unpackhi_epi64(t0, t2);
            u[4 * g + 2] = _mm256_unpacklo_epi64(t1, t3);
            u[4 * g + 3] = _mm256_unpackhi_epi64(t1, t3);
        }
        let mut m = [_mm256_setzero_si256(); 8];
        for q in 0..4 {
            m[q] = _mm256_permute2x128_si256::<0x20>(u[q], u[4 + q]);
            m[4 + q] = _mm256_permute2x128_si256::<0x31>(u[q], u[4 + q]);
        }
        m
    }
}

/// Where one lane is in its current input: whole blocks still to read from the caller's data,
/// then (for a final input) the padded tail, kept here because it needs padding bytes appended.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    body: &'a [u8],
    tail: [u8; 128],
    tail_pos: usize,
    tail_end: usize,
}

impl<'a> Cursor<'a> {
    const IDLE: Cursor<'static> = Cursor {
        body: &[],
        tail: [0; 128],
        tail_pos: 0,
        tail_end: 0,
    };

    /// Non-final data: whole blocks only.
    fn blocks(data: &'a [u8]) -> Self {
        assert!(
            data.len().is_multiple_of(64),
            "non-final input must be a multiple of 64 bytes"
        );
        Cursor {
            body: data,
            ..Cursor::IDLE
        }
    }

    /// The final data of a stream of `total` bytes (this data included), with MD5's padding.
    fn last(data: &'a [u8], total: u64) -> Self {
        let whole = data.len() / 64 * 64;
        let rest = &data[whole..];
        let mut tail = [0u8; 128];
        tail[..rest.len()].copy_from_slice(rest);
        tail[rest.len()] = 0x80;
        let tail_end = if rest.len() < 56 { 64 } else { 128 };
        tail[tail_end - 8..tail_end].copy_from_slice(&total.wrapping_mul(8).to_le_bytes());
        Cursor {
            body: &data[..whole],
            tail,
            tail_pos: 0,
            tail_end,
        }
    }

    fn is_done(&self) -> bool {
        self.body.is_empty() && self.tail_pos == self.tail_end
    }

    /// The contiguous bytes this lane reads next.
    fn current(&self) -> &[u8] {
        if self.body.is_empty() {
            &self.tail[self.tail_pos..self.tail_end]
        } else {
            self.body
        }
    }

    fn consume(&mut self, n: usize) {
        if self.body.is_empty() {
            self.tail_pos += n;
        } else {
            self.body = &self.body[n..];
        }
    }
}

/// One kernel call: every lane with data advances by the largest step all of them can take.
/// Lanes without data are fed a copy of a busy lane's blocks and their state is put back, which
/// is cheaper than masking every instruction. Returns false when no lane has data.
fn advance(kernel: Kernel, state: &mut State, cursors: &mut [Cursor<'_>]) -> bool {
    let Some(step) = cursors
        .iter()
        .filter(|c| !c.is_done())
        .map(|c| c.current().len())
        .min()
    else {
        return false;
    };
    let busy = cursors
        .iter()
        .position(|c| !c.is_done())
        .expect("found above");
    let saved = *state;
    {
        let donor = &cursors[busy].current()[..step];
        let mut blocks: [&[u8]; MAX_LANES] = [&[]; MAX_LANES];
        for (b, c) in blocks.iter_mut().zip(cursors.iter()) {
            *b = if c.is_done() {
                donor
            } else {
                &c.current()[..step]
            };
        }
        kernel.compress(state, &blocks[..cursors.len()]);
    }
    for (lane, c) in cursors.iter_mut().enumerate() {
        if c.is_done() {
            for (row, old) in state.iter_mut().zip(saved.iter()) {
                row[lane] = old[lane];
            }
        } else {
            c.consume(step);
        }
    }
    true
}

fn lane_digest(state: &State, lane: usize) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (chunk, row) in out.chunks_exact_mut(4).zip(state.iter()) {
        chunk.copy_from_slice(&row[lane].to_le_bytes());
    }
    out
}

fn reset_lane(state: &mut State, lane: usize) {
    for (row, iv) in state.iter_mut().zip(IV) {
        row[lane] = iv;
    }
}

/// Number of lanes used on this CPU: 16 with AVX-512F, 8 with AVX2, else 4.
pub fn lanes() -> usize {
    Kernel::detect().lanes()
}

/// Whether `HASHSYNC_MD5_SIMD=off` asks for the portable kernel whatever the CPU has: the
/// kernel Apple Silicon runs, checked end to end on an x86 machine. Read once.
#[cfg(target_arch = "x86_64")]
fn simd_turned_off() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var_os("HASHSYNC_MD5_SIMD").is_some_and(|v| v == "off"))
}

/// Lanes sized for `streams` concurrent streams: the narrowest SIMD kernel that has room for
/// them all. Every call costs a full-width step however many lanes are busy, so two streams
/// run faster on the 8-lane AVX2 kernel than on the 16-lane AVX-512 one.
pub fn lanes_for(streams: usize) -> Md5Lanes {
    #[cfg(target_arch = "x86_64")]
    {
        if streams <= Kernel::Avx2.lanes() && Kernel::Avx2.available() {
            return Md5Lanes::with_kernel(Kernel::Avx2);
        }
    }
    let _ = streams;
    Md5Lanes::new()
}

/// Streaming multi-lane MD5. Each lane hashes its own stream; all lanes advance in lockstep.
#[derive(Clone)]
pub struct Md5Lanes {
    kernel: Kernel,
    state: State,
    /// Bytes hashed so far in each lane's current stream, for the length in the padding.
    len: [u64; MAX_LANES],
}

impl Default for Md5Lanes {
    fn default() -> Self {
        Self::new()
    }
}

impl Md5Lanes {
    /// All lanes reset, as many as [`lanes()`].
    pub fn new() -> Self {
        Self::with_kernel(Kernel::detect())
    }

    pub(crate) fn with_kernel(kernel: Kernel) -> Self {
        assert!(
            kernel.available(),
            "{kernel:?} is not supported by this CPU"
        );
        Md5Lanes {
            kernel,
            state: RESET_STATE,
            len: [0; MAX_LANES],
        }
    }

    pub fn lanes(&self) -> usize {
        self.kernel.lanes()
    }

    /// Feeds one slice per lane (`inputs.len() == self.lanes()`; an empty slice means "nothing
    /// for this lane this round").
    ///
    /// `last[i] == true` means `inputs[i]` is the final data of lane i's stream: its digest is
    /// returned at position i and the lane is reset for a new stream. Non-final inputs must be a
    /// multiple of 64 bytes (panics otherwise); final inputs may have any length, including 0.
    ///
    /// Lanes whose data runs out early idle while the others finish, so throughput is that of
    /// the longest input times the lane count: for many small inputs prefer [`md5_batch`].
    pub fn update(&mut self, inputs: &[&[u8]], last: &[bool]) -> Vec<Option<[u8; 16]>> {
        let n = self.lanes();
        assert_eq!(inputs.len(), n, "one input per lane");
        assert_eq!(last.len(), n, "one `last` flag per lane");
        let mut cursors = [Cursor::IDLE; MAX_LANES];
        for (lane, (&data, &fin)) in inputs.iter().zip(last).enumerate() {
            let total = self.len[lane] + data.len() as u64;
            cursors[lane] = if fin {
                Cursor::last(data, total)
            } else {
                Cursor::blocks(data)
            };
            self.len[lane] = total;
        }
        while advance(self.kernel, &mut self.state, &mut cursors[..n]) {}
        let mut out = vec![None; n];
        for (lane, (&fin, slot)) in last.iter().zip(out.iter_mut()).enumerate() {
            if fin {
                *slot = Some(lane_digest(&self.state, lane));
                reset_lane(&mut self.state, lane);
                self.len[lane] = 0;
            }
        }
        out
    }
}

/// MD5 of each input, computed lane-parallel. Equals the MD5 of each input.
pub fn md5_batch(inputs: &[&[u8]]) -> Vec<[u8; 16]> {
    md5_batch_with(Kernel::detect(), inputs)
}

pub(crate) fn md5_batch_with(kernel: Kernel, inputs: &[&[u8]]) -> Vec<[u8; 16]> {
    assert!(
        kernel.available(),
        "{kernel:?} is not supported by this CPU"
    );
    let n = kernel.lanes();
    // Longest first, so the last inputs to start are short and the lanes finish close together.
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(inputs[i].len()));
    let mut queue = order.into_iter();

    let mut out = vec![[0u8; 16]; inputs.len()];
    let mut state = RESET_STATE;
    let mut cursors = [Cursor::IDLE; MAX_LANES];
    let mut job: [Option<usize>; MAX_LANES] = [None; MAX_LANES];
    loop {
        for lane in 0..n {
            if !cursors[lane].is_done() {
                continue;
            }
            if let Some(i) = job[lane].take() {
                out[i] = lane_digest(&state, lane);
                reset_lane(&mut state, lane);
            }
            if let Some(i) = queue.next() {
                cursors[lane] = Cursor::last(inputs[i], inputs[i].len() as u64);
                job[lane] = Some(i);
            }
        }
        if !advance(kernel, &mut state, &mut cursors[..n]) {
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::{Digest, Md5};

    fn reference(data: &[u8]) -> [u8; 16] {
        Md5::digest(data).into()
    }

    fn kernels() -> Vec<Kernel> {
        // The SIMD kernels exist on x86-64 only; elsewhere (Apple Silicon) the portable one.
        #[cfg(target_arch = "x86_64")]
        let all = vec![Kernel::Portable, Kernel::Avx2, Kernel::Avx512];
        #[cfg(not(target_arch = "x86_64"))]
        let all = vec![Kernel::Portable];
        let available: Vec<Kernel> = all.into_iter().filter(|k| k.available()).collect();
        assert!(available.contains(&Kernel::detect()));
        available
    }

    /// Deterministic bytes without a `rand` dependency (xorshift64*).
    fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect()
    }

    fn check_batch(kernel: Kernel, inputs: &[Vec<u8>]) {
        let refs: Vec<&[u8]> = inputs.iter().map(|v| v.as_slice()).collect();
        let got = md5_batch_with(kernel, &refs);
        for (i, (g, data)) in got.iter().zip(inputs).enumerate() {
            assert_eq!(
                *g,
                reference(data),
                "{kernel:?}, input {i} of length {}",
                data.len()
            );
        }
    }

    #[test]
    fn md5x_rfc1321_vectors() {
        let vectors: [(&str, &str); 7] = [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            (
                "abcdefghijklmnopqrstuvwxyz",
                "c3fcd3d76192e4007dfb496cca67e13b",
            ),
            (
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                "d174ab98d277d9f5a5611c2c9f419d9f",
            ),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ];
        let inputs: Vec<&[u8]> = vectors.iter().map(|(m, _)| m.as_bytes()).collect();
        for kernel in kernels() {
            let got = md5_batch_with(kernel, &inputs);
            for (g, (m, hex)) in got.iter().zip(vectors) {
                let hex_got: String = g.iter().map(|b| format!("{b:02x}")).collect();
                assert_eq!(hex_got, hex, "{kernel:?} on {m:?}");
            }
        }
        assert_eq!(md5_batch(&inputs).len(), inputs.len());
    }

    #[test]
    fn md5x_every_length_and_padding_edges() {
        let mut lens: Vec<usize> = (0..=200).collect();
        lens.extend([
            55, 56, 57, 63, 64, 65, 119, 120, 121, 127, 128, 129, 1000, 4096, 4097,
        ]);
        let inputs: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| random_bytes(i as u64, len))
            .collect();
        for kernel in kernels() {
            check_batch(kernel, &inputs);
            // Same lengths in lockstep: every lane hits the padding edge in the same call.
            for &len in &[0, 55, 56, 63, 64, 119, 120, 128] {
                let same: Vec<Vec<u8>> = (0..2 * kernel.lanes() + 1)
                    .map(|i| random_bytes(1000 + i as u64, len))
                    .collect();
                check_batch(kernel, &same);
            }
        }
    }

    #[test]
    fn md5x_wildly_different_lengths_and_few_inputs() {
        let lens = [
            0usize, 1, 100_000, 64, 5000, 3, 70_001, 128, 9, 200_000, 56, 65_536, 12_345,
        ];
        let inputs: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| random_bytes(77 + i as u64, len))
            .collect();
        for kernel in kernels() {
            check_batch(kernel, &inputs);
            check_batch(kernel, &inputs[..1]);
            check_batch(kernel, &[]);
        }
    }

    #[test]
    fn md5x_streams_in_rounds() {
        for kernel in kernels() {
            let n = kernel.lanes();
            let mut lanes = Md5Lanes::with_kernel(kernel);
            assert_eq!(lanes.lanes(), n);
            // Lane i gets a stream of blocks in rounds of varying sizes (some empty), ends at
            // round 2 + i % 3 with an odd-sized final piece, then starts a second stream.
            let mut streams: Vec<Vec<u8>> = vec![Vec::new(); n];
            let mut digests: Vec<Vec<[u8; 16]>> = vec![Vec::new(); n];
            let mut expected: Vec<Vec<[u8; 16]>> = vec![Vec::new(); n];
            for round in 0..8 {
                let pieces: Vec<Vec<u8>> = (0..n)
                    .map(|i| {
                        let fin = round % (2 + i % 3) == 1 + i % 3;
                        let len = if fin {
                            (i * 37 + round * 11) % 150
                        } else {
                            64 * ((i + round) % 4) * (1 + i % 5)
                        };
                        random_bytes((round * 100 + i) as u64, len)
                    })
                    .collect();
                let last: Vec<bool> = (0..n).map(|i| round % (2 + i % 3) == 1 + i % 3).collect();
                let refs: Vec<&[u8]> = pieces.iter().map(|p| p.as_slice()).collect();
                let out = lanes.update(&refs, &last);
                for i in 0..n {
                    streams[i].extend_from_slice(&pieces[i]);
                    if last[i] {
                        expected[i].push(reference(&streams[i]));
                        streams[i].clear();
                        digests[i].push(out[i].expect("final lane has a digest"));
                    } else {
                        assert!(out[i].is_none());
                    }
                }
            }
            assert_eq!(digests, expected, "{kernel:?}");
            assert!(expected.iter().all(|d| !d.is_empty()));
        }
    }

    #[test]
    fn md5x_update_many_small_finals() {
        for kernel in kernels() {
            let n = kernel.lanes();
            let mut lanes = Md5Lanes::with_kernel(kernel);
            for round in 0..3 {
                let data: Vec<Vec<u8>> = (0..n)
                    .map(|i| random_bytes(i as u64, 4096 + 997 * i * (round + 1)))
                    .collect();
                let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
                let out = lanes.update(&refs, &vec![true; n]);
                for (o, d) in out.iter().zip(&data) {
                    assert_eq!(o.unwrap(), reference(d));
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "multiple of 64")]
    fn md5x_rejects_partial_non_final_block() {
        let mut lanes = Md5Lanes::new();
        let n = lanes.lanes();
        let data = [0u8; 10];
        let mut inputs: Vec<&[u8]> = vec![&[]; n];
        inputs[0] = &data;
        lanes.update(&inputs, &vec![false; n]);
    }

    /// Throughput against the md-5 crate; run with
    /// `cargo test --release md5x_bench -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn md5x_bench() {
        use std::time::Instant;
        fn gbps(bytes: usize, secs: f64) -> f64 {
            bytes as f64 / secs / 1e9
        }
        fn best<F: FnMut()>(mut f: F) -> f64 {
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        }
        let big: Vec<Vec<u8>> = (0..16).map(|i| random_bytes(i, 8 << 20)).collect();
        let mut seed = 12345u64;
        let small: Vec<Vec<u8>> = (0..2000)
            .map(|i| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let len = 4096 + (seed >> 33) as usize % (60 * 1024 + 1);
                random_bytes(i, len)
            })
            .collect();
        for (name, set) in [("16 x 8 MiB", &big), ("2000 x 4-64 KiB", &small)] {
            let refs: Vec<&[u8]> = set.iter().map(|v| v.as_slice()).collect();
            let bytes: usize = refs.iter().map(|r| r.len()).sum();
            let t = best(|| {
                for r in &refs {
                    std::hint::black_box(reference(r));
                }
            });
            println!("{name}: md-5 crate {:.2} GB/s", gbps(bytes, t));
            for kernel in kernels() {
                let t = best(|| {
                    std::hint::black_box(md5_batch_with(kernel, &refs));
                });
                println!("{name}: md5_batch {kernel:?} {:.2} GB/s", gbps(bytes, t));
                // The streaming API fed like the engine: one input per lane per call.
                let n = kernel.lanes();
                let t = best(|| {
                    let mut lanes = Md5Lanes::with_kernel(kernel);
                    for group in refs.chunks(n) {
                        let mut inputs: Vec<&[u8]> = group.to_vec();
                        inputs.resize(n, &[]);
                        let mut last = vec![true; group.len()];
                        last.resize(n, false);
                        std::hint::black_box(lanes.update(&inputs, &last));
                    }
                });
                println!(
                    "{name}: Md5Lanes::update {kernel:?} {:.2} GB/s",
                    gbps(bytes, t)
                );
            }
        }
    }
}
