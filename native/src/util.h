/* util.h — small helpers shared by the runtime's C files. */
#ifndef KVC_UTIL_H
#define KVC_UTIL_H

#include <stddef.h>

/* Format a message into err (if not NULL) and return status: the library's way
 * of reporting a failure without printing. */
int kvc_fail(char *err, int err_len, int status, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Bytes of a row of n elements of `type`; 0 if the type is unknown or n is not a
 * whole number of its blocks. */
size_t kvc_row_bytes(int type, long long n);

#endif
