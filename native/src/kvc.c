/* kvc.c — library-wide entry points of the native runtime: status strings and
 * version. Kernels: kernels.h; the model: model.c; contexts: context.c. */

#include "kvc.h"

#include <stdarg.h>
#include <stdio.h>

#include "util.h"

int kvc_fail(char *err, int err_len, int status, const char *fmt, ...) {
    if (err && err_len > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, (size_t)err_len, fmt, ap);
        va_end(ap);
    }
    return status;
}

const char *kvc_version(void) { return "0.1.0"; }

const char *kvc_status_string(int status) {
    switch (status) {
    case KVC_OK: return "ok";
    case KVC_ERR_INVALID: return "invalid argument (size, type or shape)";
    case KVC_ERR_NOMEM: return "out of memory";
    case KVC_ERR_UNSUPPORTED: return "not supported by this build or CPU";
    case KVC_ERR_CONTEXT_FULL: return "context is full (more tokens than n_ctx)";
    case KVC_ERR_CANCELLED: return "cancelled";
    default: return "unknown error";
    }
}

size_t kvc_row_bytes(int type, long long n) {
    int bs, ts, vdt;
    if (kvc_type_info(type, &bs, &ts, &vdt) != KVC_OK || n <= 0 || n % bs) return 0;
    return (size_t)(n / bs) * (size_t)ts;
}
