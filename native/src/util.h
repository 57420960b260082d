/* util.h — small helpers shared by the runtime's C files. */
#ifndef KVC_UTIL_H
#define KVC_UTIL_H

/* Format a message into err (if not NULL) and return status: the library's way
 * of reporting a failure without printing. */
int kvc_fail(char *err, int err_len, int status, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif
