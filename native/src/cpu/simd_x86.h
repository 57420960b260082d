/* simd_x86.h — small AVX2 helpers shared by the x86 kernel files.
 *
 * Include it after the file's `#pragma GCC target(...)` so the helpers are
 * compiled for (and inlined into) that instruction set. Everything here needs
 * at least AVX2 + FMA + F16C. Pointers are unaligned byte pointers. */
#ifndef KVC_SIMD_X86_H
#define KVC_SIMD_X86_H

#include <immintrin.h>

#include "../vec.h"
#include "quants.h"

#define KVC_INLINE static inline __attribute__((always_inline))

KVC_INLINE float hsum_ps_256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

KVC_INLINE int hsum_epi32_256(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}

/* fp16 at p -> float (exact), via the lookup table. */
KVC_INLINE float ld_fp16(const void *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return kvc_fp16_table[h];
}

/* fp16 at p broadcast to 8 floats (a table load + broadcast load). */
KVC_INLINE __m256 bcast_fp16(const void *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _mm256_broadcast_ss(&kvc_fp16_table[h]);
}

/* exp per lane with the operations of kvc_expf_ref (vec.h), so bit-identical to
 * it: the softmax and SiLU of vec_avx2.c and the AVX2 attention tiles share it. */
KVC_INLINE __m256 exp8(__m256 x) {
    const __m256 zero = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ);
    x = _mm256_min_ps(x, _mm256_set1_ps(88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(KVC_EXP_LOG2E)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(KVC_EXP_LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(KVC_EXP_LN2_LO), r);
    __m256 p = _mm256_set1_ps(KVC_EXP_C7);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KVC_EXP_C6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KVC_EXP_C5));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KVC_EXP_C4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KVC_EXP_C3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KVC_EXP_C2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(zero, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

KVC_INLINE __m256i loadu256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
KVC_INLINE __m128i loadu128(const void *p) { return _mm_loadu_si128((const __m128i *)p); }

/* 16 bytes of nibbles -> 32 bytes in 0..15: byte j < 16 = low nibble of p[j],
 * byte 16 + j = high nibble of p[j] (the Q4_0/Q4_1/Q5_0 element order).
 * Broadcast load + per-lane variable shift: no shuffle-port uops. */
KVC_INLINE __m256i nibbles_32(const uint8_t *p) {
    const __m256i b = _mm256_broadcastsi128_si256(loadu128(p));
    return _mm256_and_si256(_mm256_srlv_epi64(b, _mm256_set_epi64x(4, 4, 0, 0)), _mm256_set1_epi8(15));
}

/* 32 bits at p (little endian) -> 32 bytes: byte j = 0xFF if bit j is set, else 0. */
KVC_INLINE __m256i bits_32(const uint8_t *p) {
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)kvc_ld_u32(p)), shuf);
    b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe)); /* all bits but bit j%8 */
    return _mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1));
}

/* Q4_K's 12 packed scale bytes -> 16 bytes: sc[0..7] then m[0..7] (ggml's utmp trick). */
KVC_INLINE __m128i q4k_scales_mins(const uint8_t *q) {
    uint32_t u[4];
    memcpy(u, q, 12);
    const uint32_t m1 = 0x3f3f3f3f, m2 = 0x0f0f0f0f, m3 = 0x03030303;
    u[3] = ((u[2] >> 4) & m2) | (((u[1] >> 6) & m3) << 4);
    const uint32_t mins_lo = u[1] & m1;
    u[1] = (u[2] & m2) | (((u[0] >> 6) & m3) << 4);
    u[2] = mins_lo;
    u[0] &= m1;
    return _mm_set_epi32((int)u[3], (int)u[2], (int)u[1], (int)u[0]);
}

#endif /* KVC_SIMD_X86_H */
