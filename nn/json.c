/* Strict recursive-descent JSON reader and an escaping writer (see json.h). */
#include "nn/json.h"

#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- reader ------------------------------------------------------------------ */
typedef struct parser {
    const unsigned char *s;
    size_t len, pos;
    size_t values;
    pare_arena *arena;
    const char *what;
} parser;

static int fail(parser *p, const char *reason)
{
    return pare_set_error("%s: JSON error at byte %zu: %s", p->what, p->pos, reason);
}

static void skip_ws(parser *p)
{
    while (p->pos < p->len) {
        unsigned char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static int peek(const parser *p)
{
    return p->pos < p->len ? p->s[p->pos] : -1;
}

static pare_json *node(parser *p, pare_json_type type)
{
    if (++p->values > PARE_JSON_MAX_VALUES) {
        fail(p, "too many values (the limit is 1048576)");
        return NULL;
    }
    pare_json *v = pare_arena_zalloc(p->arena, sizeof *v);
    v->type = type;
    v->offset = p->pos;
    return v;
}

static int literal(parser *p, const char *word)
{
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0) return fail(p, "invalid literal");
    p->pos += n;
    return 0;
}

/* Length of the UTF-8 sequence at s[0, n), or 0 if it is not valid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t k;
    unsigned min, cp;
    if (c >= 0xC2 && c <= 0xDF)
        k = 2, min = 0x80, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF)
        k = 3, min = 0x800, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4)
        k = 4, min = 0x10000, cp = c & 0x07;
    else
        return 0;
    if (n < k) return 0;
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return k;
}

int pare_utf8_valid(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(s + i, n - i);
        if (!k) return 0;
        i += k;
    }
    return 1;
}

static int hex4(parser *p, unsigned *out)
{
    if (p->len - p->pos < 4) return fail(p, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p->s[p->pos + (size_t)i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return fail(p, "invalid hex digit in \\u escape");
        v = v << 4 | d;
    }
    p->pos += 4;
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12);
        o[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18);
    o[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* One escape after the backslash; a \uXXXX never decodes to more bytes than
 * its 6 (or 12 for a pair) source bytes, so the output buffer cannot overflow. */
static int escape(parser *p, char *o, size_t *olen)
{
    if (p->pos >= p->len) return fail(p, "unterminated string");
    unsigned char c = p->s[p->pos++];
    const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t";
    const char *hit = c ? strchr(from, c) : NULL;
    if (hit) {
        o[(*olen)++] = to[hit - from];
        return 0;
    }
    if (c != 'u') return fail(p, "invalid escape in string");
    unsigned cp = 0;
    if (hex4(p, &cp)) return -1;
    if (cp >= 0xDC00 && cp <= 0xDFFF) return fail(p, "unpaired low surrogate in \\u escape");
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        unsigned lo = 0;
        if (p->len - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u')
            return fail(p, "unpaired high surrogate in \\u escape");
        p->pos += 2;
        if (hex4(p, &lo)) return -1;
        if (lo < 0xDC00 || lo > 0xDFFF) return fail(p, "unpaired high surrogate in \\u escape");
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
    }
    if (cp == 0) return fail(p, "\\u0000 in a string is not supported");
    *olen += put_utf8(o + *olen, cp);
    return 0;
}

/* Parses a string at the opening quote into a NUL-terminated arena copy. */
static int string(parser *p, const char **out, size_t *out_len)
{
    size_t start = ++p->pos, end = start;
    /* First pass finds the closing quote, to size the copy. */
    while (end < p->len && p->s[end] != '"') end += p->s[end] == '\\' ? 2 : 1;
    if (end >= p->len) return fail(p, "unterminated string");
    char *o = pare_arena_alloc(p->arena, end - start + 1);
    size_t n = 0;
    while (p->pos < end) {
        unsigned char c = p->s[p->pos];
        if (c == '\\') {
            p->pos++;
            if (escape(p, o, &n)) return -1;
        } else if (c < 0x20) {
            return fail(p, "control character in string (escape it)");
        } else {
            size_t k = utf8_seq(p->s + p->pos, end - p->pos);
            if (!k) return fail(p, "invalid UTF-8 in string");
            memcpy(o + n, p->s + p->pos, k);
            n += k;
            p->pos += k;
        }
    }
    if (p->pos != end) return fail(p, "unterminated string"); /* an escape ran past the quote */
    p->pos++;
    o[n] = '\0';
    *out = o;
    *out_len = n;
    return 0;
}

static int digits(parser *p)
{
    size_t start = p->pos;
    while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    return p->pos > start;
}

/* strtod reads the locale's decimal point; JSON always uses '.'. */
static double to_double(parser *p, size_t start, size_t n)
{
    char *tmp = pare_arena_alloc(p->arena, n + 1);
    memcpy(tmp, p->s + start, n);
    tmp[n] = '\0';
    const char *dp = localeconv()->decimal_point;
    if (dp && dp[0] && dp[0] != '.' && !dp[1]) {
        char *dot = strchr(tmp, '.');
        if (dot) *dot = dp[0];
    }
    return strtod(tmp, NULL);
}

static int number(parser *p, pare_json *v)
{
    size_t start = p->pos;
    int neg = 0, is_int = 1;
    if (peek(p) == '-') p->pos++, neg = 1;
    if (peek(p) == '0') {
        p->pos++;
        if (peek(p) >= '0' && peek(p) <= '9') return fail(p, "leading zero in number");
    } else if (!digits(p)) {
        return fail(p, "invalid number");
    }
    size_t int_end = p->pos;
    if (peek(p) == '.') {
        p->pos++;
        if (!digits(p)) return fail(p, "digits expected after '.'");
        is_int = 0;
    }
    if (peek(p) == 'e' || peek(p) == 'E') {
        p->pos++;
        if (peek(p) == '+' || peek(p) == '-') p->pos++;
        if (!digits(p)) return fail(p, "digits expected in exponent");
        is_int = 0;
    }
    if (is_int) {
        uint64_t mag = 0;
        for (size_t i = start + (size_t)neg; i < int_end; i++) {
            unsigned d = p->s[i] - '0';
            if (mag > (UINT64_C(0x7FFFFFFFFFFFFFFF) - d) / 10) {
                is_int = 0; /* beyond int64: keep only the double */
                break;
            }
            mag = mag * 10 + d;
        }
        if (is_int) v->i = neg ? -(int64_t)mag : (int64_t)mag;
    }
    v->is_int = is_int;
    v->num = to_double(p, start, p->pos - start);
    if (!isfinite(v->num)) return fail(p, "number out of range");
    return 0;
}

static pare_json *value(parser *p, int depth);

static int members(parser *p, pare_json *v, int depth, int object)
{
    int close = object ? '}' : ']';
    pare_json **tail = &v->first;
    p->pos++;
    skip_ws(p);
    if (peek(p) == close) {
        p->pos++;
        return 0;
    }
    for (;;) {
        const char *key = NULL;
        size_t key_len;
        if (object) {
            skip_ws(p);
            if (peek(p) != '"') return fail(p, "object key (a string) expected");
            if (string(p, &key, &key_len)) return -1;
            skip_ws(p);
            if (peek(p) != ':') return fail(p, "':' expected after object key");
            p->pos++;
        }
        pare_json *e = value(p, depth + 1);
        if (!e) return -1;
        e->key = key;
        *tail = e;
        tail = &e->next;
        v->len++;
        skip_ws(p);
        int c = peek(p);
        if (c == close) {
            p->pos++;
            return 0;
        }
        if (c != ',') return fail(p, object ? "',' or '}' expected" : "',' or ']' expected");
        p->pos++;
    }
}

static pare_json *value(parser *p, int depth)
{
    if (depth >= PARE_JSON_MAX_DEPTH) {
        fail(p, "nesting deeper than 64 levels");
        return NULL;
    }
    skip_ws(p);
    int c = peek(p);
    pare_json *v;
    int rc;
    switch (c) {
    case '{':
    case '[':
        if (!(v = node(p, c == '{' ? PARE_JSON_OBJECT : PARE_JSON_ARRAY))) return NULL;
        rc = members(p, v, depth, c == '{');
        break;
    case '"':
        if (!(v = node(p, PARE_JSON_STRING))) return NULL;
        rc = string(p, &v->str, &v->len);
        break;
    case 't':
    case 'f':
        if (!(v = node(p, PARE_JSON_BOOL))) return NULL;
        v->boolean = c == 't';
        rc = literal(p, c == 't' ? "true" : "false");
        break;
    case 'n':
        if (!(v = node(p, PARE_JSON_NULL))) return NULL;
        rc = literal(p, "null");
        break;
    case -1:
        fail(p, "unexpected end of input");
        return NULL;
    default:
        if (c != '-' && !(c >= '0' && c <= '9')) {
            fail(p, "unexpected character");
            return NULL;
        }
        if (!(v = node(p, PARE_JSON_NUMBER))) return NULL;
        rc = number(p, v);
    }
    return rc ? NULL : v;
}

int pare_json_parse(pare_json_doc *doc, const char *text, size_t len, const char *what)
{
    parser p = {(const unsigned char *)text, len, 0, 0, &doc->arena, what ? what : "JSON"};
    pare_arena_init(&doc->arena, 4096);
    doc->root = value(&p, 0);
    if (doc->root) {
        skip_ws(&p);
        if (p.pos == p.len) return 0;
        fail(&p, "unexpected data after the JSON value");
    }
    pare_json_doc_free(doc);
    return -1;
}

void pare_json_doc_free(pare_json_doc *doc)
{
    pare_arena_destroy(&doc->arena);
    doc->root = NULL;
}

const pare_json *pare_json_get(const pare_json *obj, const char *key)
{
    if (!obj || obj->type != PARE_JSON_OBJECT) return NULL;
    for (const pare_json *e = obj->first; e; e = e->next)
        if (strcmp(e->key, key) == 0) return e;
    return NULL;
}

const char *pare_json_type_name(pare_json_type t)
{
    static const char *const names[] = {"null", "a boolean", "a number", "a string", "an array", "an object"};
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "?";
}

/* ---- writer -------------------------------------------------------------------- */
static void put(pare_jw *w, const char *s, size_t n)
{
    if (w->failed) return;
    if (w->len + n + 1 > w->cap) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap < w->len + n + 1) cap *= 2;
        char *grown = pare_alloc(cap);
        if (w->len) memcpy(grown, w->buf, w->len);
        pare_free(w->buf);
        w->buf = grown;
        w->cap = cap;
    }
    memcpy(w->buf + w->len, s, n);
    w->len += n;
    w->buf[w->len] = '\0';
}

void pare_jw_raw(pare_jw *w, const char *s)
{
    put(w, s, strlen(s));
}

void pare_jw_str(pare_jw *w, const char *s)
{
    size_t n = strlen(s);
    if (!w->failed && !pare_utf8_valid((const unsigned char *)s, n)) {
        w->failed = 1;
        pare_set_error("string \"%.40s\" is not valid UTF-8", s);
        return;
    }
    put(w, "\"", 1);
    size_t run = 0; /* bytes copied as they are */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        put(w, s + run, i - run);
        run = i + 1;
        char esc[8];
        const char *from = "\"\\\b\f\n\r\t", *to = "\"\\bfnrt";
        const char *hit = strchr(from, c);
        if (hit)
            snprintf(esc, sizeof esc, "\\%c", to[hit - from]);
        else
            snprintf(esc, sizeof esc, "\\u%04x", c);
        put(w, esc, strlen(esc));
    }
    put(w, s + run, n - run);
    put(w, "\"", 1);
}

void pare_jw_int(pare_jw *w, long long v)
{
    char b[32];
    snprintf(b, sizeof b, "%lld", v);
    pare_jw_raw(w, b);
}

void pare_jw_uint(pare_jw *w, uint64_t v)
{
    char b[32];
    snprintf(b, sizeof b, "%llu", (unsigned long long)v);
    pare_jw_raw(w, b);
}

void pare_jw_float(pare_jw *w, float v)
{
    if (!isfinite(v)) {
        if (!w->failed) pare_set_error("cannot write the non-finite number %g in JSON", (double)v);
        w->failed = 1;
        return;
    }
    char b[48];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(b, sizeof b, "%.*g", prec, (double)v);
        char *comma = strchr(b, ','); /* a locale with a decimal comma */
        if (comma) *comma = '.';
        char tmp[48];
        memcpy(tmp, b, sizeof tmp);
        const char *dp = localeconv()->decimal_point;
        char *dot = strchr(tmp, '.');
        if (dot && dp && dp[0] && !dp[1]) *dot = dp[0];
        if (strtof(tmp, NULL) == v) break;
    }
    /* JSON needs a digit after "e-" only; %g writes "1e-05", which is valid. */
    pare_jw_raw(w, b);
}

void pare_jw_free(pare_jw *w)
{
    pare_free(w->buf);
    memset(w, 0, sizeof *w);
}
