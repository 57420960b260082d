/* target_end.h — closes a target_avx2.h / target_avx512.h region (clang needs the pop; GCC's
 * target pragma simply lasts to the end of the file). */
#if defined(__clang__)
#pragma clang attribute pop
#endif
