/* kvc.h — the whole C ABI of kvconvert's native runtime.
 *
 * Contract: opaque handles, int status codes (KVC_OK = 0), a message getter for
 * the last error of a handle; the library never exits, aborts on user input or
 * prints. Python maps the GGUF and passes tensor pointers; C validates every
 * size it is given. This file has no preprocessor directives so that it can be
 * passed verbatim to cffi's cdef (see kvconvert/_build_native.py).
 */

typedef enum {
    KVC_OK = 0,
    KVC_ERR_INVALID = 1,      /* bad argument, size or type */
    KVC_ERR_NOMEM = 2,        /* allocation failed */
    KVC_ERR_UNSUPPORTED = 3,  /* type/impl not available on this build or CPU */
    KVC_ERR_CONTEXT_FULL = 4, /* more tokens than the context holds */
    KVC_ERR_CANCELLED = 5
} kvc_status;

/* Tensor/cache element types; values are ggml's (GGUF tensor type ids). */
typedef enum {
    KVC_TYPE_F32 = 0,
    KVC_TYPE_F16 = 1,
    KVC_TYPE_Q4_0 = 2,
    KVC_TYPE_Q4_1 = 3,
    KVC_TYPE_Q5_0 = 6,
    KVC_TYPE_Q5_1 = 7,
    KVC_TYPE_Q8_0 = 8,
    KVC_TYPE_Q8_1 = 9,
    KVC_TYPE_Q4_K = 12,
    KVC_TYPE_Q5_K = 13,
    KVC_TYPE_Q6_K = 14,
    KVC_TYPE_Q8_K = 15,
    KVC_TYPE_BF16 = 30
} kvc_type;

/* Kernel implementations. AUTO = the best one this CPU supports. */
typedef enum {
    KVC_IMPL_AUTO = 0,
    KVC_IMPL_SCALAR = 1,
    KVC_IMPL_AVX2 = 2,   /* AVX2 + FMA + F16C */
    KVC_IMPL_AVX512 = 3, /* AVX-512 F/BW/VL (+VNNI where present) */
    KVC_IMPL_NEON = 4
} kvc_impl;

const char *kvc_status_string(int status);
const char *kvc_version(void);

/* Bitmask of available implementations: bit (1 << impl). SCALAR is always set. */
int kvc_cpu_impls(void);
/* The implementation AUTO resolves to. */
int kvc_cpu_best_impl(void);

/* ---- kernels (the runtime's building blocks; exposed so tests compare twins) ----
 * block_size: elements per block; type_size: bytes per block;
 * vec_dot_type: the type the activation vector is quantized to for vec_dot. */
int kvc_type_info(int type, int *block_size, int *type_size, int *vec_dot_type);

/* x: (n) float -> y: (n / block_size) blocks of `type`. n must be a multiple of block_size. */
int kvc_quantize_row(int type, int impl, const float *x, void *y, long long n);

/* x: (n / block_size) blocks of `type` -> y: (n) float. */
int kvc_dequantize_row(int type, int impl, const void *x, float *y, long long n);

/* out = dot(w, a): w is (n) elements of `type`, a is (n) elements of that type's
 * vec_dot_type (already quantized with kvc_quantize_row). */
int kvc_vec_dot(int type, int impl, long long n, const void *w, const void *a, float *out);

/* Blocked GEMM (prefill; n_tok = 1 is the decode matvec):
 * out[t*ldo + r] = dot(W row r, A row t) for r < m, t < n_tok.
 * w: (m, k) rows of `type` (row stride k/block*type_size bytes); a: (n_tok, k)
 * rows already quantized to the type's vec_dot_type; out: row t at out + t*ldo. */
int kvc_gemm(int type, int impl, long long m, long long n_tok, long long k, const void *w, const void *a,
             float *out, long long ldo);

/* ---- models ----
 * A model is described by pointers into the mapped GGUF (owned by the caller,
 * which must keep the mapping alive while the model exists). ne[] is in ggml
 * order: ne[0] is the row length. Absent optional tensors have data == NULL. */
typedef struct {
    const char *name;  /* GGUF tensor name, used in error messages */
    int type;          /* kvc_type */
    long long ne[2];   /* (row length, rows); 1-D tensors have ne[1] == 1 */
    const void *data;
    long long nbytes;  /* bytes available at data: checked against type and ne */
} kvc_tensor;

/* One block, as kvconvert/models/arch/base.py describes it (the field names are its
 * tensor slots): x += [post_norm](attn(norm(x))); x += [post_norm](mlp(norm(x))).
 * Optional tensors (data == NULL when absent): biases; q_norm/k_norm (QK-norm: a
 * per-head RMSNorm of q and k with these (head_dim) gains, before RoPE);
 * attn_post_norm/ffn_post_norm (both or neither). */
typedef struct {
    kvc_tensor attn_norm, wq, bq, wk, bk, wv, bv, wo, bo;
    kvc_tensor ffn_norm, w_gate, w_up, w_down;
    kvc_tensor q_norm, k_norm, attn_post_norm, ffn_post_norm;
    int window;              /* 0: global attention; else a query sees keys at distance < window */
    const float *rope_freqs; /* (head_dim/2) this layer's RoPE angles per position, or NULL: the model's */
    /* Optional per-row output scales (F32, data == NULL when absent): q = (W_q x + b_q) * q_scale and
     * k = (W_k x + b_k) * k_scale row by row, before QK-norm and RoPE — the K→Q smoothing of a file
     * patched with its own weights, applied to the products so the weights stay as stored.
     * (n_head * head_dim) and (n_head_kv * head_dim); both or neither; CPU backend only. */
    kvc_tensor q_scale, k_scale;
} kvc_layer_desc;

enum { KVC_ROPE_NEOX = 0, KVC_ROPE_INTERLEAVED = 1 };
enum { KVC_ACT_SILU = 0, KVC_ACT_GELU_TANH = 1 }; /* MLP: act(gate) * up */

typedef struct {
    int n_vocab, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff;
    float rms_eps;
    int rope_pairing;            /* KVC_ROPE_* */
    const float *rope_freqs;     /* (head_dim/2) angle per position of each pair */
    /* Folded layout (docs/design.md §3): pair j of layer l rotates with frequency
     * rope_freqs[rope_pair_src[l * head_dim/2 + j]] (a permutation per layer); NULL: identity. */
    const int *rope_pair_src;    /* (n_layer, head_dim/2) or NULL */
    kvc_tensor tok_embd, output_norm, output; /* output.data == NULL: tied to tok_embd */
    const kvc_layer_desc *layers;             /* (n_layer) */
    int activation;                           /* KVC_ACT_* */
    float embd_scale;                         /* token embeddings times this; 0: 1 */
    float attn_scale;                         /* scores q·k times this; 0: 1/sqrt(head_dim) */
} kvc_model_desc;

typedef struct kvc_model kvc_model;
typedef struct kvc_context kvc_context;

/* On failure *out is NULL and err (if not NULL) receives a message. */
int kvc_model_create(const kvc_model_desc *desc, kvc_model **out, char *err, int err_len);
void kvc_model_free(kvc_model *model);

/* TurboQuant cache (docs/design.md §4): per token and KV head, the head vector (after
 * RoPE, K centering and the channel permutation) is split into group 0 =
 * channels [0, n_hi) and group 1 = [n_hi, head_dim) (n_hi = 0: one group that
 * uses lo_bits). Each group is sign-flipped and Walsh–Hadamard rotated, stored
 * as a scale (fp16, or 8 bits: scale8) plus b-bit Lloyd–Max codes, optionally plus QJL residual
 * signs and an fp16 residual norm (K only). kvconvert/turboquant.py is the numpy
 * twin and the definition of every detail (signs, block WHT, rounding). */
enum { KVC_CACHE_TQ = 64 };

typedef struct {
    int n_hi, hi_bits, lo_bits, qjl_hi, qjl_lo;
    const float *codebook_hi; /* (1 << hi_bits) ascending centroids; NULL when n_hi == 0 */
    const float *codebook_lo; /* (1 << lo_bits) */
    const int *perm;          /* (head_dim) channel order applied after RoPE, or NULL */
    /* scale8: each group's scale is one byte e on a log grid, ŝ = 2^((e + scale_base)/32)
     * (e = 0: 0), scale_base in -2048..2048; 0: an fp16 scale (2 bytes) */
    int scale8, scale_base;
    /* trellis: memory bits M of bitshift-trellis codes (1..6; 0: Lloyd–Max codes), taken by each
     * group that can hold them: at most 256 channels, bits + M <= 12 (the other group keeps
     * Lloyd–Max codes; a layer with QJL, or where no group can, is refused). A trellis group's codebook holds
     * 1 << (bits + M) values in state order, and its code i decodes to the value of the last
     * bits + M bits of the group's code ring up to it (docs/design.md §4). CPU only. */
    int trellis;
    /* K basis (K only; both or neither; CPU only): after the permutation, KV head h's key is coded
     * as k' = k · basis[h] and every query of its group scored as q' = q · qbasis[h], so
     * ⟨q', k'⟩ = ⟨q, k⟩ when qbasis[h] = basis[h]⁻ᵀ (the caller's contract). The exact rows
     * (sinks, recent window) keep the original vectors. NULL: none. */
    const float *basis;       /* (n_head_kv, head_dim, head_dim) row-major, row i = input channel */
    const float *qbasis;      /* (n_head_kv, head_dim, head_dim) */
    /* basis_block > 0 (needs basis): the basis follows RoPE. A key at position p is first turned
     * back by RoPE's rotation at P = p - p % basis_block (its block's first position), so every
     * block is coded in the coordinates of positions [0, basis_block), where the basis was fitted;
     * the queries scoring a block get the same turn (rotations keep every score). 0: one basis
     * for every position. */
    int basis_block;
} kvc_tq_layer;

typedef struct {
    int n_ctx;      /* tokens the KV cache holds */
    int n_batch;    /* max tokens per kvc_eval call */
    int type_k;     /* KVC_TYPE_F32, F16, Q8_0, Q4_0 or KVC_CACHE_TQ */
    int type_v;
    int n_threads;
    const kvc_tq_layer *tq_k; /* (n_layer) when type_k == KVC_CACHE_TQ */
    const kvc_tq_layer *tq_v; /* (n_layer) when type_v == KVC_CACHE_TQ */
    unsigned long long tq_seed;
    int tq_scale_mode;        /* 0: scale = norm; 1: least-squares scale; 2: ‖y‖²/⟨y, c⟩ (proj) */
    int tq_v_scale_mode;      /* V's own scale: 0 = tq_scale_mode (zero-initialised callers keep one
                                 mode); 1 + mode otherwise (1 norm, 2 ls, 3 proj) */
    /* K mean-centering (any K type): subtract the pre-RoPE mean before caching and
     * add q·R_n·mean back exactly in the scores, for the k_center_pairs pairs of
     * largest mean energy per head (0: all pairs). k_mean NULL: the mean of the
     * first evaluated batch is used, fixed from then on. */
    int k_center;
    int k_center_pairs;
    const float *k_mean;      /* (n_layer, n_head_kv, head_dim) in the file's channel order, or NULL */
    /* k_mean_folded: the weights already subtract k_mean (folded layout's b_k), so the
     * runtime only adds the correction; needs k_center and k_mean, for any K type. */
    int k_mean_folded;
    /* V mean (portable layout): v − v_mean is cached and v_mean added to the attention
     * output (exact: softmax weights sum to 1). NULL: no V centering. */
    const float *v_mean;      /* (n_layer, n_head_kv, head_dim) or NULL */
    /* Attention sinks (TurboQuant caches only): the first n_sink positions of the
     * context are also kept in f16 and used exactly — K scores from the f16 key,
     * V through an f16 correction to its decoded value. 0: off. At most 64. */
    int n_sink;
    /* Recent exact window (TurboQuant caches only): each query also uses the last n_recent
     * positions up to and including its own exactly, as the sinks (f16 key, f16 V correction),
     * from a ring of n_recent + n_rewind rows per layer and KV head plus one batch buffer
     * (fixed memory, counted in kvc_kv_bytes). 0: off. At most 256. */
    int n_recent;
    /* With a recent window: how many positions a rewind may go back without evaluating
     * again (the ring's rows beyond the window; kvc_rewind_floor). 0: 16. At most 4096. */
    int n_rewind;
    /* Sliding-window layers cache only the positions their window (plus one batch and
     * some slack for rewinds) can still see, not all n_ctx; 1: every position (tests). */
    int kv_keep_all;
    /* Which backend runs the context (kvc_context_backend says which one did):
     * KVC_BACKEND_AUTO: Metal when the build has it, a device exists and it runs this
     * model and these caches, else the CPU. KVC_BACKEND_CPU / _METAL: that one.
     * KVC_BACKEND_DEFAULT: the environment variable KVC_BACKEND (cpu, metal, auto),
     * else auto. */
    int backend;
    /* Weight products with float activations: quantized weight rows are expanded to float, 16 at a
     * time, and multiplied with the activations as they are, instead of rounding the activations to
     * the weight's 8-bit dot type per block (as llama.cpp and, by default, this runtime do). Slower; a
     * measuring mode: with rounded activations any change of the cache, even to a more exact one,
     * moves later layers' activations across rounding steps, and two runs then differ by that
     * rounding noise as well as by the cache. CPU backend only (auto picks the CPU for it). */
    int float_products;
} kvc_context_params;

enum { KVC_BACKEND_DEFAULT = 0, KVC_BACKEND_CPU = 1, KVC_BACKEND_METAL = 2, KVC_BACKEND_AUTO = 3 };

int kvc_context_create(kvc_model *model, const kvc_context_params *params, kvc_context **out,
                       char *err, int err_len);
void kvc_context_free(kvc_context *ctx);

/* Evaluate n tokens at positions n_past .. n_past+n-1 and append them to the
 * cache. logits: (n, n_vocab) if all_logits else (n_vocab) for the last token;
 * may be NULL. Fails with KVC_ERR_CONTEXT_FULL past n_ctx (nothing appended). */
int kvc_eval(kvc_context *ctx, const int *tokens, int n, float *logits, int all_logits);
/* Batched decode of independent sequences: append tokens[i] to ctxs[i] (at its own
 * position n_past) for i < n, as one batch of n rows through every weight product,
 * so each weight row is read once for all of them. ctxs: (n) distinct contexts of the
 * same model, n <= ctxs[0]'s n_batch; each keeps its own cache, cache types and K
 * centering. ctxs[0]'s thread pool runs everything (attention on as many threads as
 * the fewest-threaded context has). logits: (n, n_vocab), row i for ctxs[i], or NULL.
 * Errors (message in kvc_context_error(ctxs[0])): KVC_ERR_INVALID for a NULL, repeated
 * or other-model context, n out of range or a bad token id; KVC_ERR_CONTEXT_FULL if
 * any context is full. A failed call appends nothing to any context. */
int kvc_eval_multi(kvc_context **ctxs, int n, const int *tokens, float *logits);
int kvc_n_past(const kvc_context *ctx);
/* Calibration capture: during each later kvc_eval batch of T tokens, every layer's
 * projections (after bias, before centering and RoPE) are copied to
 * q + (l * n_batch + t) * n_head * head_dim, k/v + (l * n_batch + t) * n_head_kv * head_dim
 * for t < T (the last batch of the call wins). All NULL: capture off. */
int kvc_set_capture(kvc_context *ctx, float *q, float *k, float *v);
/* Forget cached tokens from position n_past on (0 clears the cache). Sliding-window
 * layers keep only a window (kv_keep_all), the recent window's ring the last n_recent +
 * n_rewind positions: n_past must be 0 or >= kvc_rewind_floor. */
int kvc_set_n_past(kvc_context *ctx, int n_past);
/* The smallest n_past > 0 kvc_set_n_past accepts now (1 when every position is kept). */
int kvc_rewind_floor(const kvc_context *ctx);
/* TurboQuant twins, exposed for tests (twin of kvconvert/turboquant.py):
 * encode n vectors x (n, m) into rows of kvc_tq_row_bytes(m, bits, qjl, scale8) bytes;
 * score: out[j] = estimated <q, x_j> for the n encoded rows (q unrotated, (m));
 * decode: rows back to (n, m) float vectors (no QJL term). layer/group pick the signs;
 * trellis, scale8, scale_base: the code and scale formats (kvc_tq_layer). */
long long kvc_tq_row_bytes(int m, int bits, int qjl, int scale8);
int kvc_tq_encode(int impl, int m, int bits, int qjl, int trellis, int scale8, int scale_base, int scale_mode,
                  const float *codebook, unsigned long long seed, int layer, int group, const float *x, int n,
                  void *rows);
int kvc_tq_decode(int impl, int m, int bits, int qjl, int trellis, int scale8, int scale_base, const float *codebook,
                  unsigned long long seed, int layer, int group, const void *rows, int n, float *x);
int kvc_tq_score(int impl, int m, int bits, int qjl, int trellis, int scale8, int scale_base, const float *codebook,
                 unsigned long long seed, int layer, int group, const float *q, const void *rows, int n, float *out);

/* Bytes of KV cache per token (all layers, K and V) while every layer holds it: a
 * sliding-window layer stops growing at its window (kvc_kv_bytes). */
long long kvc_kv_bytes_per_token(const kvc_context *ctx);
/* Bytes the KV cache rows of ctx take (all layers, K and V): n_ctx rows per KV head of a
 * global layer, the window's rows (see kv_keep_all) of a sliding-window layer, plus the
 * recent window's fixed ring (n_recent). */
long long kvc_kv_bytes(const kvc_context *ctx);
/* The backend ctx runs on: "cpu" or "metal" (kvc_context_params.backend). */
const char *kvc_context_backend(const kvc_context *ctx);
/* Message for the last failed call on ctx ("" if none). */
const char *kvc_context_error(const kvc_context *ctx);

/* ---- vector ops of the forward pass (exposed so tests compare SIMD to scalar twins) ---- */
int kvc_op_softmax(int impl, int n, float *x);                       /* in place; x: (n) */
int kvc_op_rms_norm(int impl, int n, const float *x, const float *w, float eps, float *out);
int kvc_op_silu_mul(int impl, int n, const float *g, const float *u, float *out); /* silu(g) * u */
/* gelu(g) * u with GELU's tanh approximation (GeGLU); scalar only, impl must be SCALAR or AUTO */
int kvc_op_gelu_mul(int impl, int n, const float *g, const float *u, float *out);
int kvc_op_axpy(int impl, int n, float a, const float *x, float *y);  /* y += a * x */
/* y (n) += sum_k a[k] * x[k] over the r rows of x (r, n), 1 <= r <= 1024 */
int kvc_op_axpy_rows(int impl, int n, int r, const float *a, const float *x, float *y);
/* One key tile of flash attention (native/src/attn.h states the formulas): scale for the scores, qt (D, 64) queries
 * transposed, k and v (kc, D), lo and hi (nq) each row's visible keys of the tile (both NULL:
 * all), m and l (64) running max and sum, o (nq, D) running output, st (kc, 64) scratch;
 * nq <= 64, kc <= 64. */
int kvc_op_attn_tile(int impl, int nq, int D, int kc, float scale, const float *qt, const float *k, const float *v, const int *lo,
                     const int *hi, float *m, float *l, float *o, float *st);
