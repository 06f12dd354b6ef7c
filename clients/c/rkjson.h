/* librocker_client internals: the little JSON it needs (hidden symbols, prefix rkj_).
 * SPDX-License-Identifier: MIT */
#ifndef ROCKER_RKJSON_H
#define ROCKER_RKJSON_H

#include <stddef.h>

/* A growing output buffer; on allocation failure `failed` is set and appends do nothing. */
struct rkj_buf {
    char *data;
    size_t len, cap;
    int failed;
};

void rkj_put(struct rkj_buf *b, const char *s, size_t n);
void rkj_puts(struct rkj_buf *b, const char *s);
void rkj_put_int(struct rkj_buf *b, long long v);
/* A JSON string (quoted, escaped) or null for NULL; bytes >= 0x80 pass through (UTF-8). */
void rkj_put_string(struct rkj_buf *b, const char *s);
void rkj_free(struct rkj_buf *b);

/* A reader over [p, end). Every function returns 0 on success, -1 on malformed input. */
struct rkj_in {
    const char *p, *end;
    int depth;
};

/* Next value's kind without consuming it: one of " { [ t f n - 0..9, or 0 at the end. */
char rkj_peek(struct rkj_in *in);
/* A string: up to cap-1 bytes decoded into out (NUL-terminated, may be truncated);
 * *len gets the full decoded length. Sets *has_nul if it contains U+0000. out may be NULL. */
int rkj_string(struct rkj_in *in, char *out, size_t cap, size_t *len, int *has_nul);
/* An integer without fraction or exponent, in [LLONG_MIN/10, LLONG_MAX/10]. */
int rkj_int(struct rkj_in *in, long long *v);
/* Any value (nesting at most 64 deep). */
int rkj_skip(struct rkj_in *in);
/* Objects: rkj_obj_begin, then rkj_obj_key (with *count = 0 at first) until it returns 0 (the
 * closing brace); 1 means a key was read into key (truncated to keycap-1; "" if it holds a NUL)
 * and its ':' consumed: read or skip the value next. */
int rkj_obj_begin(struct rkj_in *in);
int rkj_obj_key(struct rkj_in *in, int *count, char *key, size_t keycap);
/* Only whitespace left. */
int rkj_end(struct rkj_in *in);

#endif /* ROCKER_RKJSON_H */
