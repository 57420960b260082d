/* target_neon_dotprod.h — include first in a kernel file that uses the ARMv8.2
 * dotprod extension (sdot): the rest of the file is compiled for it (selected
 * at run time by dispatch.c from HWCAP_ASIMDDP; never -march flags). End the
 * file by including target_end.h. GCC's arm_neon.h declares the dot intrinsics
 * for arch=armv8.2-a+dotprod and inlines them only into functions compiled for
 * at least that (a CPU with dotprod implements ARMv8.2). */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("dotprod"))), apply_to = function)
#else
#pragma GCC target("arch=armv8.2-a+dotprod")
#endif
