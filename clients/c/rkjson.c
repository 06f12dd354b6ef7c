/* librocker_client internals: a JSON writer for the request and a strict reader for the reply.
 * SPDX-License-Identifier: MIT */
#include "rkjson.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define RKJ_MAX_DEPTH 64

/* ---- writer ---- */

void rkj_put(struct rkj_buf *b, const char *s, size_t n) {
    if (b->failed)
        return;
    if (n > b->cap - b->len) {
        size_t cap = b->cap ? b->cap : 256;
        while (n > cap - b->len) {
            if (cap > ((size_t)-1) / 2) {
                b->failed = 1;
                return;
            }
            cap *= 2;
        }
        char *data = realloc(b->data, cap);
        if (!data) {
            b->failed = 1;
            return;
        }
        b->data = data;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
}

void rkj_puts(struct rkj_buf *b, const char *s) {
    rkj_put(b, s, strlen(s));
}

void rkj_put_int(struct rkj_buf *b, long long v) {
    char tmp[24], *q = tmp + sizeof tmp;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do
        *--q = (char)('0' + u % 10);
    while (u /= 10);
    if (v < 0)
        *--q = '-';
    rkj_put(b, q, (size_t)(tmp + sizeof tmp - q));
}

void rkj_put_string(struct rkj_buf *b, const char *s) {
    static const char hex[] = "0123456789abcdef";
    if (!s) {
        rkj_puts(b, "null");
        return;
    }
    rkj_put(b, "\"", 1);
    const char *run = s; /* bytes copied as they are */
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[6];
        size_t n = 2;
        esc[0] = '\\';
        if (c == '"' || c == '\\')
            esc[1] = (char)c;
        else if (c == '\n')
            esc[1] = 'n';
        else if (c == '\r')
            esc[1] = 'r';
        else if (c == '\t')
            esc[1] = 't';
        else if (c == '\b')
            esc[1] = 'b';
        else if (c == '\f')
            esc[1] = 'f';
        else if (c < 0x20) {
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            n = 6;
        } else
            continue;
        rkj_put(b, run, (size_t)(s - run));
        rkj_put(b, esc, n);
        run = s + 1;
    }
    rkj_put(b, run, (size_t)(s - run));
    rkj_put(b, "\"", 1);
}

void rkj_free(struct rkj_buf *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* ---- reader ---- */

static void ws(struct rkj_in *in) {
    while (in->p < in->end && (*in->p == ' ' || *in->p == '\t' || *in->p == '\n' || *in->p == '\r'))
        in->p++;
}

char rkj_peek(struct rkj_in *in) {
    ws(in);
    return in->p < in->end ? *in->p : 0;
}

static int eat(struct rkj_in *in, char c) {
    if (rkj_peek(in) != c)
        return -1;
    in->p++;
    return 0;
}

static int literal(struct rkj_in *in, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(in->end - in->p) < n || memcmp(in->p, word, n) != 0)
        return -1;
    in->p += n;
    return 0;
}

static int hex4(struct rkj_in *in, unsigned *out) {
    unsigned v = 0;
    if (in->end - in->p < 4)
        return -1;
    for (int i = 0; i < 4; i++) {
        char c = *in->p++;
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

static void emit(char *out, size_t cap, size_t *len, const char *bytes, size_t n) {
    for (size_t i = 0; i < n; i++, (*len)++)
        if (out && *len + 1 < cap)
            out[*len] = bytes[i];
}

int rkj_string(struct rkj_in *in, char *out, size_t cap, size_t *lenp, int *has_nul) {
    size_t len = 0;
    int nul = 0;
    if (eat(in, '"') < 0)
        return -1;
    for (;;) {
        if (in->p >= in->end)
            return -1;
        unsigned char c = (unsigned char)*in->p++;
        if (c == '"')
            break;
        if (c < 0x20)
            return -1; /* raw control characters are not allowed in JSON strings */
        if (c != '\\') {
            emit(out, cap, &len, (const char *)&c, 1);
            continue;
        }
        if (in->p >= in->end)
            return -1;
        char e = *in->p++, ch;
        switch (e) {
        case '"':
        case '\\':
        case '/': ch = e; break;
        case 'b': ch = '\b'; break;
        case 'f': ch = '\f'; break;
        case 'n': ch = '\n'; break;
        case 'r': ch = '\r'; break;
        case 't': ch = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            char u8[4];
            size_t n;
            if (hex4(in, &cp) < 0)
                return -1;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (literal(in, "\\u") < 0 || hex4(in, &lo) < 0 || lo < 0xDC00 || lo > 0xDFFF)
                    return -1;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return -1; /* a lone low surrogate */
            }
            if (cp == 0)
                nul = 1;
            if (cp < 0x80) {
                u8[0] = (char)cp;
                n = 1;
            } else if (cp < 0x800) {
                u8[0] = (char)(0xC0 | cp >> 6);
                u8[1] = (char)(0x80 | (cp & 0x3F));
                n = 2;
            } else if (cp < 0x10000) {
                u8[0] = (char)(0xE0 | cp >> 12);
                u8[1] = (char)(0x80 | (cp >> 6 & 0x3F));
                u8[2] = (char)(0x80 | (cp & 0x3F));
                n = 3;
            } else {
                u8[0] = (char)(0xF0 | cp >> 18);
                u8[1] = (char)(0x80 | (cp >> 12 & 0x3F));
                u8[2] = (char)(0x80 | (cp >> 6 & 0x3F));
                u8[3] = (char)(0x80 | (cp & 0x3F));
                n = 4;
            }
            emit(out, cap, &len, u8, n);
            continue;
        }
        default: return -1;
        }
        emit(out, cap, &len, &ch, 1);
    }
    if (out && cap)
        out[len < cap ? len : cap - 1] = '\0';
    if (lenp)
        *lenp = len;
    if (has_nul)
        *has_nul = nul;
    return 0;
}

static int digits(struct rkj_in *in) {
    const char *start = in->p;
    while (in->p < in->end && *in->p >= '0' && *in->p <= '9')
        in->p++;
    return in->p > start ? 0 : -1;
}

/* Consumes a number; *is_int says whether it had neither fraction nor exponent. */
static int number(struct rkj_in *in, int *is_int) {
    ws(in);
    *is_int = 1;
    if (in->p < in->end && *in->p == '-')
        in->p++;
    if (in->p < in->end && *in->p == '0')
        in->p++;
    else if (digits(in) < 0)
        return -1;
    if (in->p < in->end && *in->p == '.') {
        in->p++;
        *is_int = 0;
        if (digits(in) < 0)
            return -1;
    }
    if (in->p < in->end && (*in->p == 'e' || *in->p == 'E')) {
        in->p++;
        *is_int = 0;
        if (in->p < in->end && (*in->p == '+' || *in->p == '-'))
            in->p++;
        if (digits(in) < 0)
            return -1;
    }
    return 0;
}

int rkj_int(struct rkj_in *in, long long *v) {
    int is_int;
    ws(in);
    const char *start = in->p;
    if (number(in, &is_int) < 0 || !is_int)
        return -1;
    int neg = *start == '-';
    long long acc = 0;
    for (const char *q = start + neg; q < in->p; q++) {
        if (acc > LLONG_MAX / 100)
            return -1;
        acc = acc * 10 + (*q - '0');
    }
    *v = neg ? -acc : acc;
    return 0;
}

int rkj_obj_begin(struct rkj_in *in) {
    return eat(in, '{');
}

int rkj_obj_key(struct rkj_in *in, int *count, char *key, size_t keycap) {
    size_t len;
    int nul;
    char c = rkj_peek(in);
    if (c == '}') {
        in->p++;
        return 0;
    }
    if (*count > 0 && eat(in, ',') < 0)
        return -1;
    if (rkj_string(in, key, keycap, &len, &nul) < 0 || eat(in, ':') < 0)
        return -1;
    if (nul && keycap)
        key[0] = '\0';
    (*count)++;
    return 1;
}

int rkj_skip(struct rkj_in *in) {
    int is_int, count = 0, r;
    char key[1];
    switch (rkj_peek(in)) {
    case '"': return rkj_string(in, NULL, 0, NULL, NULL);
    case 't': return literal(in, "true");
    case 'f': return literal(in, "false");
    case 'n': return literal(in, "null");
    case '{':
        if (in->depth >= RKJ_MAX_DEPTH)
            return -1;
        in->depth++;
        in->p++;
        while ((r = rkj_obj_key(in, &count, key, sizeof key)) == 1)
            if (rkj_skip(in) < 0)
                return -1;
        in->depth--;
        return r;
    case '[':
        if (in->depth >= RKJ_MAX_DEPTH)
            return -1;
        in->depth++;
        in->p++;
        if (rkj_peek(in) == ']') {
            in->p++;
        } else {
            for (;;) {
                if (rkj_skip(in) < 0)
                    return -1;
                if (rkj_peek(in) == ']') {
                    in->p++;
                    break;
                }
                if (eat(in, ',') < 0)
                    return -1;
            }
        }
        in->depth--;
        return 0;
    default: return number(in, &is_int);
    }
}

int rkj_end(struct rkj_in *in) {
    return rkj_peek(in) == 0 && in->p == in->end ? 0 : -1;
}
