/* target_avx2.h — include first in an AVX2 kernel file: the rest of the file
 * is compiled for AVX2 + FMA + F16C (selected at run time by dispatch; never
 * -march flags). End the file by including target_end.h. */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c")
#endif
