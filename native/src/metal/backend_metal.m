/* backend_metal.m — the Metal backend (backend.h's kvc_backend_ops on an Apple
 * GPU): host.h's forward pass over a kvm_device made of Metal buffers, one
 * command buffer with one serial compute encoder per batch, and the kernels of
 * this directory compiled once per process from the embedded source
 * (metal_source.inc). Compiled only on macOS (kvconvert/_build_native.py),
 * chosen by default where it runs, or with KVC_BACKEND=metal (context.c). Objective-C with manual reference
 * counting; errors are kvc status codes with a message, never prints or exits.
 *
 * NOT YET RUN ON APPLE HARDWARE. The kernels and host.h's forward pass are
 * verified on Linux through the shim (tests/test_metal.py, docs/design.md §9);
 * this file is only parsed there by clang against stand-in Metal headers.
 * scripts/metal_check.sh is its first run. */
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>

#include "metal/host.h"
#include "metal/metal_source.inc"

/* ---- the device, its library and pipelines: once per process ---- */

static struct {
    int status; /* KVC_OK once initialised */
    char err[256];
    id<MTLDevice> dev;
    id<MTLCommandQueue> queue;
    id<MTLComputePipelineState> pipe[KVM_P_COUNT];
} G;

static void metal_init_once(void) {
    @autoreleasepool {
        G.status = KVC_ERR_UNSUPPORTED;
        G.dev = MTLCreateSystemDefaultDevice();
        if (!G.dev) {
            snprintf(G.err, sizeof G.err, "no Metal device");
            return;
        }
        MTLCompileOptions *opt = [[MTLCompileOptions alloc] init];
        /* no fast-math relaxations: the kernels follow the CPU twins' float operations */
#if defined(__MAC_15_0) && __MAC_OS_X_VERSION_MAX_ALLOWED >= __MAC_15_0
        if (@available(macOS 15.0, *)) opt.mathMode = MTLMathModeSafe;
        else opt.fastMathEnabled = NO;
#else
        opt.fastMathEnabled = NO;
#endif
        NSError *e = nil;
        NSString *src = [NSString stringWithUTF8String:kvm_metal_source];
        id<MTLLibrary> lib = [G.dev newLibraryWithSource:src options:opt error:&e];
        [opt release];
        if (!lib) {
            snprintf(G.err, sizeof G.err, "Metal kernels do not compile: %s",
                     e ? [[e localizedDescription] UTF8String] : "unknown error");
            return;
        }
        for (int i = 0; i < KVM_P_COUNT; i++) {
            id<MTLFunction> f = [lib newFunctionWithName:[NSString stringWithUTF8String:KVM_PIPE_NAMES[i]]];
            if (!f) {
                snprintf(G.err, sizeof G.err, "Metal kernel %s missing", KVM_PIPE_NAMES[i]);
                [lib release];
                return;
            }
            G.pipe[i] = [G.dev newComputePipelineStateWithFunction:f error:&e];
            [f release];
            if (!G.pipe[i]) {
                snprintf(G.err, sizeof G.err, "Metal pipeline %s: %s", KVM_PIPE_NAMES[i],
                         e ? [[e localizedDescription] UTF8String] : "unknown error");
                [lib release];
                return;
            }
            /* simd_sum spans 32 lanes; the threadgroup size host.h dispatches must fit */
            if (G.pipe[i].threadExecutionWidth != 32 ||
                G.pipe[i].maxTotalThreadsPerThreadgroup < (NSUInteger)KVM_PIPE_THREADS[i]) {
                snprintf(G.err, sizeof G.err, "Metal pipeline %s: SIMD width %d, at most %d threads per group",
                         KVM_PIPE_NAMES[i], (int)G.pipe[i].threadExecutionWidth,
                         (int)G.pipe[i].maxTotalThreadsPerThreadgroup);
                [lib release];
                return;
            }
        }
        [lib release];
        G.queue = [G.dev newCommandQueue];
        if (!G.queue) {
            snprintf(G.err, sizeof G.err, "no Metal command queue");
            return;
        }
        G.status = KVC_OK;
    }
}

static int metal_ready(char *err, int err_len) {
    static dispatch_once_t once;
    dispatch_once(&once, ^{ metal_init_once(); });
    return G.status == KVC_OK ? KVC_OK : kvc_fail(err, err_len, G.status, "%s", G.err);
}

/* ---- host.h's kvm_device on Metal: shared buffers, one serial compute encoder per batch ---- */

static kvm_buf mtl_alloc(size_t n, const void *init) {
    id<MTLBuffer> b = init ? [G.dev newBufferWithBytes:init length:n options:MTLResourceStorageModeShared]
                           : [G.dev newBufferWithLength:n options:MTLResourceStorageModeShared];
    if (b && !init) memset([b contents], 0, n);
    return (kvm_buf)b; /* +1, released by mtl_release */
}

static void *mtl_contents(kvm_buf b) { return [(id<MTLBuffer>)b contents]; }

static void mtl_release(kvm_buf b) {
    if (b) [(id<MTLBuffer>)b release];
}

typedef struct {
    id<MTLCommandBuffer> cb;
    id<MTLComputeCommandEncoder> enc;
} mtl_batch;

static void *mtl_begin(char *err, int err_len) {
    mtl_batch *b = calloc(1, sizeof *b);
    if (!b) {
        kvc_fail(err, err_len, KVC_ERR_NOMEM, "out of memory");
        return NULL;
    }
    b->cb = [[G.queue commandBuffer] retain];
    b->enc = [[b->cb computeCommandEncoder] retain]; /* serial: each dispatch sees the previous one's writes */
    if (!b->cb || !b->enc) {
        [b->enc release], [b->cb release], free(b);
        kvc_fail(err, err_len, KVC_ERR_NOMEM, "Metal: no command buffer");
        return NULL;
    }
    return b;
}

static void mtl_pipe(void *e, int p) { [((mtl_batch *)e)->enc setComputePipelineState:G.pipe[p]]; }

static void mtl_bytes(void *e, int i, const void *p, size_t n) {
    [((mtl_batch *)e)->enc setBytes:p length:n atIndex:(NSUInteger)i];
}

static void mtl_buffer(void *e, int i, kvm_buf b, size_t off) {
    [((mtl_batch *)e)->enc setBuffer:(id<MTLBuffer>)b offset:off atIndex:(NSUInteger)i];
}

static void mtl_tg_mem(void *e, int i, size_t n) {
    [((mtl_batch *)e)->enc setThreadgroupMemoryLength:n atIndex:(NSUInteger)i];
}

static void mtl_dispatch(void *e, int gx, int gy, int gz, int threads) {
    [((mtl_batch *)e)->enc dispatchThreadgroups:MTLSizeMake(gx, gy, gz) threadsPerThreadgroup:MTLSizeMake(threads, 1, 1)];
}

static int mtl_end(void *e, char *err, int err_len) {
    mtl_batch *b = e;
    [b->enc endEncoding];
    [b->cb commit];
    [b->cb waitUntilCompleted];
    int st = KVC_OK;
    if ([b->cb status] != MTLCommandBufferStatusCompleted) {
        NSError *er = [b->cb error];
        st = kvc_fail(err, err_len, KVC_ERR_UNSUPPORTED, "Metal command buffer failed: %s",
                      er ? [[er localizedDescription] UTF8String] : "unknown error");
    }
    [b->enc release], [b->cb release], free(b);
    return st;
}

static kvm_device METAL;

static int mtl_create(kvc_context *ctx, const kvc_context_params *p, char *err, int err_len) {
    int st = metal_ready(err, err_len);
    if (st != KVC_OK) return st;
    @autoreleasepool {
        METAL = (kvm_device){mtl_alloc, mtl_contents, mtl_release, (size_t)[G.dev maxThreadgroupMemoryLength],
                             mtl_begin, mtl_pipe, mtl_bytes, mtl_buffer, mtl_tg_mem, mtl_dispatch, mtl_end};
        st = kvm_create(&METAL, ctx, p, err, err_len);
    }
    return st;
}

static int mtl_eval(kvc_context *ctx, const int *tokens, int n, float *logits, int all_logits) {
    int st;
    @autoreleasepool {
        st = kvm_eval(ctx, tokens, n, logits, all_logits);
    }
    return st;
}

static int mtl_eval_multi(kvc_context **ctxs, int n, const int *tokens, float *logits) {
    int st;
    @autoreleasepool {
        st = kvm_eval_multi(ctxs, n, tokens, logits);
    }
    return st;
}

const kvc_backend_ops kvc_backend_metal = {
    .name = "metal",
    .create = mtl_create,
    .eval = mtl_eval,
    .eval_multi = mtl_eval_multi,
    .kv_bytes_per_token = kvm_kv_bytes_per_token,
    .kv_bytes = kvm_kv_bytes,
    .rewind_floor = kvm_rewind_floor,
    .free = kvm_free,
};
