/* target_avx512.h — include first in an AVX-512 kernel file: the rest of the
 * file is compiled for AVX2 + FMA + F16C + AVX-512 F/BW/VL/DQ + VNNI, the set
 * dispatch.c requires before it picks the AVX-512 table (never -march flags).
 * End the file by including target_end.h. */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni"))), \
                             apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#endif
