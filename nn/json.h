/* A small strict JSON reader and writer for nn's file formats (safetensors
 * headers, the architecture string). Internal to nn/: not installed as an API
 * promise, but compress/ may use it for its own metadata.
 *
 * The reader is meant for untrusted input: RFC 8259 grammar only (no comments,
 * no trailing commas, no leading zeros, no NaN), valid UTF-8, \uXXXX escapes
 * with surrogate pairs, a nesting limit and a value-count limit, and it never
 * reads outside [text, text + len). Strings with an embedded NUL (\u0000) are
 * rejected, since every consumer treats them as C strings. */
#ifndef PARE_NN_JSON_H
#define PARE_NN_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "tensor/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum pare_json_type {
    PARE_JSON_NULL,
    PARE_JSON_BOOL,
    PARE_JSON_NUMBER,
    PARE_JSON_STRING,
    PARE_JSON_ARRAY,
    PARE_JSON_OBJECT,
} pare_json_type;

typedef struct pare_json pare_json;
struct pare_json {
    pare_json_type type;
    int boolean;      /* BOOL */
    int is_int;       /* NUMBER written without fraction or exponent, in int64 range */
    int64_t i;        /* NUMBER, when is_int */
    double num;       /* NUMBER, always (finite) */
    const char *str;  /* STRING: decoded UTF-8, NUL-terminated */
    size_t len;       /* STRING: bytes; ARRAY/OBJECT: element count */
    const char *key;  /* set when this value is a member of an object */
    pare_json *first; /* ARRAY/OBJECT: first element, chained by next */
    pare_json *next;
    size_t offset; /* byte offset of the value in the text, for messages */
};

#define PARE_JSON_MAX_DEPTH  64
#define PARE_JSON_MAX_VALUES ((size_t)1 << 20)

/* A parsed document owns every node and string in one arena. */
typedef struct pare_json_doc {
    pare_arena arena;
    pare_json *root;
} pare_json_doc;

/* Parses exactly one JSON value (surrounded by optional whitespace) from
 * text[0, len). On error returns -1, frees what it allocated and sets
 * pare_error to "<what>: JSON error at byte N: <reason>". */
int pare_json_parse(pare_json_doc *doc, const char *text, size_t len, const char *what);
void pare_json_doc_free(pare_json_doc *doc);
/* The member `key` of an object (the first one), or NULL. */
const pare_json *pare_json_get(const pare_json *obj, const char *key);
const char *pare_json_type_name(pare_json_type t);
/* 1 if s[0, n) is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
int pare_utf8_valid(const unsigned char *s, size_t n);

/* ---- writer: appends to a growing buffer. After the first failure (invalid
 * UTF-8 in a string, a non-finite number) every call is a no-op and `failed`
 * is set, with pare_error saying why; check once at the end. */
typedef struct pare_jw {
    char *buf; /* NUL-terminated */
    size_t len, cap;
    int failed;
} pare_jw;

void pare_jw_raw(pare_jw *w, const char *s);
void pare_jw_str(pare_jw *w, const char *s); /* quoted and escaped */
void pare_jw_int(pare_jw *w, long long v);
void pare_jw_uint(pare_jw *w, uint64_t v);
/* The shortest decimal that reads back as the same float. */
void pare_jw_float(pare_jw *w, float v);
void pare_jw_free(pare_jw *w);

/* ---- nn-internal: the architecture reader with a bound on the parameters it
 * may allocate (pare_load passes what the file can hold, the fuzzer a small
 * number); pare_arch_from_json uses a generous default. */
typedef struct pare_model pare_model;
pare_model *pare_arch_parse(const char *json, size_t len, size_t max_params);

#ifdef __cplusplus
}
#endif
#endif
