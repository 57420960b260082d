/* offsets.c — the Metal header's structs (native/src/metal/kvc_metal.h, as C)
 * against the C runtime's (native/src/quants.h, tq.h): every block field at the
 * same offset, the same sizes, the same TurboQuant limits. A mismatch fails to
 * compile (tests/test_metal.py builds this with gcc). */
#include <stddef.h>
#include <stdio.h>

#include "quants.h"
#include "tq.h"
#include "metal/kvc_metal.h"
#include "metal/tq_tables.h"

#define SAME(a, b, f) static_assert(offsetof(a, f) == offsetof(b, f), #a "." #f " offset")

SAME(kvm_block_q4_0, block_q4_0, d);
SAME(kvm_block_q4_0, block_q4_0, qs);
SAME(kvm_block_q8_0, block_q8_0, d);
SAME(kvm_block_q8_0, block_q8_0, qs);
SAME(kvm_block_q4_K, block_q4_K, d);
SAME(kvm_block_q4_K, block_q4_K, dmin);
SAME(kvm_block_q4_K, block_q4_K, scales);
SAME(kvm_block_q4_K, block_q4_K, qs);
SAME(kvm_block_q6_K, block_q6_K, ql);
SAME(kvm_block_q6_K, block_q6_K, qh);
SAME(kvm_block_q6_K, block_q6_K, scales);
SAME(kvm_block_q6_K, block_q6_K, d);
static_assert(sizeof(kvm_block_q4_0) == sizeof(block_q4_0), "q4_0 size");
static_assert(sizeof(kvm_block_q8_0) == sizeof(block_q8_0), "q8_0 size");
static_assert(sizeof(kvm_block_q4_K) == sizeof(block_q4_K), "q4_K size");
static_assert(sizeof(kvm_block_q6_K) == sizeof(block_q6_K), "q6_K size");
static_assert(sizeof(kvm_half) == sizeof(kvc_half), "half size");
static_assert(KVM_QK == QK8_0 && KVM_QK == QK4_0 && KVM_QK_K == QK_K, "block sizes");
static_assert(KVM_TQ_MAX_GROUPS == TQ_MAX_GROUPS, "TurboQuant groups");
static_assert(KVM_TQ_MAX_CB == 1 << TQ_MAX_BITS, "TurboQuant codebook entries");
static_assert(KVM_TQ_MAX_DIM <= TQ_MAX_DIM, "TurboQuant head_dim");
/* the kernel-argument structs have no implicit padding: sizes are sums of their fields */
static_assert(offsetof(kvm_tq_group, qjl_c) == 14 * 4 && offsetof(kvm_tq_layout, g) == 16, "kvm_tq_layout layout");
static_assert(offsetof(kvm_tq_store_args, L) == 48 && offsetof(kvm_attn_args, LK) == 64 &&
              offsetof(kvm_attn_args, LV) == 64 + sizeof(kvm_tq_layout), "layouts in the argument structs");

int main(void) {
    printf("q4_0 %zu q8_0 %zu q4_K %zu q6_K %zu tq_layout %zu store_args %zu attn_args %zu\n",
           sizeof(kvm_block_q4_0), sizeof(kvm_block_q8_0), sizeof(kvm_block_q4_K), sizeof(kvm_block_q6_K),
           sizeof(kvm_tq_layout), sizeof(kvm_tq_store_args), sizeof(kvm_attn_args));
    return 0;
}
