/* kvmap._speedups: an optional compiled path for resolving keys against range pieces.
 *
 * kvmap works without this module (pure Python, the same results); compiled.py uses it when it
 * imports. RangeIndex(bounds, targets, ...) answers what compiled.py's pure-Python resolver does:
 *
 *     target = targets[bisect_right(bounds, key)]
 *     None if target is None else Resolution(entry, url + encode(key[strip:]), None, None, None)
 *
 * The search. A binary search over a list of str compares through pointers, and at 1e5 bounds
 * nearly every compare is a cache miss. Here each bound is cut into "words": word d holds bytes
 * [7d, 7d + 7) of the bound's UTF-8 form, big-endian and zero-padded, in its top 7 bytes, and in
 * its low byte min(bytes left from 7d on, 8) (8: the string goes on past this word). Keys order
 * by code point, UTF-8 bytes order the same way, so for strings equal in bytes [0, 7d), comparing
 * their words d as integers compares the strings, except that equal words with a low byte of 8
 * leave the rest undecided (the low byte is what tells "ab" from "ab\0"). So the search is a
 * binary search over the contiguous uint64 array of words 0; where the key's word equals a run of
 * bounds' words that go on, it continues among that run only, with words 1, and so on. Arrays of
 * deeper words exist only when some run of two or more bounds needs them (at most MAX_LEVELS);
 * past the last one, the few bounds left are compared as str (PyUnicode_Compare).
 *
 * Surrogates have no UTF-8 form; the encoding here writes them like any other code point below
 * U+10000 (3 bytes), which keeps the order. Bounds never hold one (manifests reject them), and a
 * key holding one is rejected before the search, by calling back into kvmap's own check so the
 * error is the same InvalidKeyError.
 *
 * The answer: each piece's entry, strip and (short, ASCII) URL prefix are in one 64-byte record;
 * the remainder key[strip:] is appended as it is when every character is in REMAINDER_SAFE (a
 * 128-entry table), else through kvmap.url.encode_remainder (a call back into Python); the
 * Resolution is allocated as its type's tuple and filled in place, as tuple.__new__(Resolution,
 * ...) does, and then untracked by the cyclic collector: an int, a str and Nones make no cycle.
 *
 * Many keys: resolve_many sorts a batch by the keys' first words and resolves them in that order,
 * so the search goes on from the last key's place and the pieces are read front to back.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_LEVELS 6
/* Bytes of a key's UTF-8 form that the words look at, plus one to tell "goes on". */
#define HEAD_BYTES (7 * MAX_LEVELS + 1)
#define GOES_ON 8

#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(p, rw) __builtin_prefetch((p), (rw))
#else
#define PREFETCH(p, rw) ((void)0)
#endif

/* URL prefixes of up to this many ASCII characters are copied into their piece's Target, so that
 * one cache line (64 bytes, on 64-bit platforms) holds all that resolving a key there reads. */
#define INLINE_URL 39
#define NOT_INLINE 0xFF

typedef struct {
    PyObject *url; /* NULL: no value here (not covered, or a whiteout) */
    long long entry;
    Py_ssize_t strip;
    unsigned char ulen;              /* the length of url, if copied into text; else NOT_INLINE */
    unsigned char text[INLINE_URL];
} Target;

typedef struct {
    PyObject_HEAD
    Py_ssize_t n;                 /* number of bounds */
    int levels;                   /* arrays of words built: words[0 .. levels) */
    uint64_t *words[MAX_LEVELS];  /* words[d][i]: word d of bound i */
    PyObject **bounds;            /* n strong references, for the str compares past the last level */
    Target *targets;              /* n + 1, aligned to 64 bytes */
    void *targets_block;          /* what was allocated for them */
    PyTypeObject *resolution;     /* the Resolution NamedTuple type (a tuple subclass, no extra fields) */
    PyObject *encode;             /* kvmap.url.encode_remainder */
    PyObject *check_key;          /* raises InvalidKeyError for a key with a lone surrogate */
    unsigned char safe[128];      /* safe[c]: c is kept as it is in a remainder */
} RangeIndex;

/* -- encoding ----------------------------------------------------------------------------- */

/* Up to cap (+3) bytes of the UTF-8 form of s, surrogates encoded like other 3-byte code points.
 * Returns the bytes written, clamped to cap: only whether a string goes on past cap matters. */
static Py_ssize_t
utf8_head(PyObject *s, unsigned char *buf, Py_ssize_t cap)
{
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    Py_ssize_t len = PyUnicode_GET_LENGTH(s);
    Py_ssize_t out = 0;
    for (Py_ssize_t i = 0; i < len && out < cap; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c < 0x80) {
            buf[out++] = (unsigned char)c;
        }
        else if (c < 0x800) {
            buf[out++] = (unsigned char)(0xC0 | (c >> 6));
            buf[out++] = (unsigned char)(0x80 | (c & 0x3F));
        }
        else if (c < 0x10000) {
            buf[out++] = (unsigned char)(0xE0 | (c >> 12));
            buf[out++] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
            buf[out++] = (unsigned char)(0x80 | (c & 0x3F));
        }
        else {
            buf[out++] = (unsigned char)(0xF0 | (c >> 18));
            buf[out++] = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
            buf[out++] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
            buf[out++] = (unsigned char)(0x80 | (c & 0x3F));
        }
    }
    return out < cap ? out : cap;
}

/* Word d of the string whose UTF-8 form starts with b[0 .. len) (see the top of this file). */
static inline uint64_t
word_at(const unsigned char *b, Py_ssize_t len, int d)
{
    Py_ssize_t off = 7 * (Py_ssize_t)d;
    Py_ssize_t left = len - off;
    if (left <= 0) {
        return 0;
    }
    Py_ssize_t take = left < 7 ? left : 7;
    uint64_t w = 0;
    for (Py_ssize_t i = 0; i < take; i++) {
        w |= (uint64_t)b[off + i] << (8 * (7 - i));
    }
    return w | (uint64_t)(left < GOES_ON ? left : GOES_ON);
}

/* A view of the first bytes of s's UTF-8 form: its own buffer when s is ASCII, else buf. */
static inline const unsigned char *
head_of(PyObject *s, unsigned char *buf, Py_ssize_t *len)
{
    if (PyUnicode_IS_ASCII(s)) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(s);
        *len = n < HEAD_BYTES ? n : HEAD_BYTES;
        return (const unsigned char *)PyUnicode_DATA(s);
    }
    *len = utf8_head(s, buf, HEAD_BYTES);
    return buf;
}

/* -- search ------------------------------------------------------------------------------- */

/* The first i in [lo, hi) with w[i] > x (hi if none). */
static inline Py_ssize_t
upper_bound(const uint64_t *w, Py_ssize_t lo, Py_ssize_t hi, uint64_t x)
{
    Py_ssize_t n = hi - lo;
    if (n <= 0) {
        return lo;
    }
    const uint64_t *base = w + lo;
    while (n > 1) {
        Py_ssize_t half = n / 2;
        base = (base[half] <= x) ? base + half : base;
        n -= half;
    }
    return (base - w) + (*base <= x);
}

/* The first i in [lo, u) with w[i] == x, given w[u - 1] == x (galloping back from u - 1). */
static inline Py_ssize_t
run_start(const uint64_t *w, Py_ssize_t lo, Py_ssize_t u, uint64_t x)
{
    Py_ssize_t known = u - 1; /* w[known] == x */
    Py_ssize_t step = 1;
    while (known - step >= lo && w[known - step] == x) {
        known -= step;
        step *= 2;
    }
    Py_ssize_t below = known - step < lo ? lo - 1 : known - step; /* w[below] < x, or below == lo - 1 */
    /* the first equal one is in (below, known] */
    Py_ssize_t a = below + 1, b = known;
    while (a < b) {
        Py_ssize_t mid = a + (b - a) / 2;
        if (w[mid] < x) {
            a = mid + 1;
        }
        else {
            b = mid;
        }
    }
    return a;
}

/* bisect_right(bounds, key), given head (the first bytes of key's UTF-8 form, see head_of), its
 * word 0 x and u, the first i with words[0][i] > x; -1 with an exception set on failure. */
static Py_ssize_t
finish(RangeIndex *self, PyObject *key, const unsigned char *head, Py_ssize_t len, uint64_t x, Py_ssize_t u)
{
    const uint64_t *w = self->words[0];
    if ((x & 0xFF) != GOES_ON || u == 0 || w[u - 1] != x) {
        return u; /* decided: equal words that do not go on are equal strings */
    }
    Py_ssize_t lo = run_start(w, 0, u, x), hi = u;
    for (int d = 1; d < self->levels; d++) {
        w = self->words[d];
        x = word_at(head, len, d);
        u = upper_bound(w, lo, hi, x);
        if ((x & 0xFF) != GOES_ON || u == lo || w[u - 1] != x) {
            return u;
        }
        lo = run_start(w, lo, u, x);
        hi = u;
    }
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        int c = PyUnicode_Compare(key, self->bounds[mid]);
        if (c == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (c < 0) {
            hi = mid;
        }
        else {
            lo = mid + 1;
        }
    }
    return lo;
}

/* bisect_right(bounds, key); -1 with an exception set on failure. */
static Py_ssize_t
position(RangeIndex *self, PyObject *key)
{
    unsigned char buf[HEAD_BYTES + 4];
    Py_ssize_t len;
    const unsigned char *head = head_of(key, buf, &len);
    uint64_t x = word_at(head, len, 0);
    return finish(self, key, head, len, x, upper_bound(self->words[0], 0, self->n, x));
}

/* -- answers ------------------------------------------------------------------------------ */

/* Whether a non-ASCII key holds a surrogate code point (only 2- and 4-byte kinds can). */
static int
has_surrogate(PyObject *key)
{
    int kind = PyUnicode_KIND(key);
    if (kind == PyUnicode_1BYTE_KIND) {
        return 0;
    }
    const void *data = PyUnicode_DATA(key);
    Py_ssize_t len = PyUnicode_GET_LENGTH(key);
    for (Py_ssize_t i = 0; i < len; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c >= 0xD800 && c <= 0xDFFF) {
            return 1;
        }
    }
    return 0;
}

/* Raise the error kvmap's own check raises for key; always returns -1. */
static int
reject_key(RangeIndex *self, PyObject *key)
{
    PyObject *r = PyObject_CallOneArg(self->check_key, key);
    if (r != NULL) {
        Py_DECREF(r);
        PyErr_Format(PyExc_SystemError, "kvmap: the key check accepted a key holding a surrogate");
    }
    return -1;
}

/* url + key[start:], the remainder escaped as encode_remainder does. New reference or NULL. */
static PyObject *
target_url(RangeIndex *self, PyObject *url, PyObject *key, Py_ssize_t start);

/* The same for t's URL, for an ASCII key whose characters are kb[0 .. klen). */
static PyObject *
ascii_target_url(RangeIndex *self, const Target *t, PyObject *key, const unsigned char *kb, Py_ssize_t klen)
{
    PyObject *url = t->url;
    Py_ssize_t start = t->strip;
    if (start > klen) {
        start = klen;
    }
    Py_ssize_t rlen = klen - start;
    if (rlen == 0) {
        Py_INCREF(url);
        return url;
    }
    if (t->ulen == NOT_INLINE && !PyUnicode_IS_ASCII(url)) {
        return target_url(self, url, key, start);
    }
    const unsigned char *rest = kb + start;
    for (Py_ssize_t i = 0; i < rlen; i++) {
        if (!self->safe[rest[i]]) { /* ASCII: every byte is < 0x80 */
            return target_url(self, url, key, start);
        }
    }
    /* Both ASCII, nothing to escape: one new string, two copies. */
    Py_ssize_t ulen;
    const unsigned char *ub;
    if (t->ulen != NOT_INLINE) {
        ulen = t->ulen;
        ub = t->text;
    }
    else {
        ulen = PyUnicode_GET_LENGTH(url);
        ub = PyUnicode_1BYTE_DATA(url);
    }
    PyObject *out = PyUnicode_New(ulen + rlen, 127);
    if (out == NULL) {
        return NULL;
    }
    Py_UCS1 *o = PyUnicode_1BYTE_DATA(out);
    memcpy(o, ub, (size_t)ulen);
    memcpy(o + ulen, rest, (size_t)rlen);
    return out;
}

static PyObject *
target_url(RangeIndex *self, PyObject *url, PyObject *key, Py_ssize_t start)
{
    Py_ssize_t klen = PyUnicode_GET_LENGTH(key);
    if (start > klen) {
        start = klen;
    }
    if (start == klen) {
        Py_INCREF(url);
        return url;
    }
    int kind = PyUnicode_KIND(key);
    const void *data = PyUnicode_DATA(key);
    int plain = 1;
    for (Py_ssize_t i = start; i < klen; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c >= 0x80 || !self->safe[c]) {
            plain = 0;
            break;
        }
    }
    PyObject *rest = PyUnicode_Substring(key, start, klen);
    if (rest == NULL) {
        return NULL;
    }
    if (!plain) {
        PyObject *encoded = PyObject_CallOneArg(self->encode, rest);
        Py_DECREF(rest);
        if (encoded == NULL) {
            return NULL;
        }
        if (!PyUnicode_Check(encoded)) {
            Py_DECREF(encoded);
            PyErr_SetString(PyExc_TypeError, "kvmap: encode_remainder returned a non-str");
            return NULL;
        }
        rest = encoded;
    }
    PyObject *out = PyUnicode_Concat(url, rest);
    Py_DECREF(rest);
    return out;
}

/* Resolution(entry, url, None, None, None); steals entry and url (also on failure). */
static PyObject *
make_resolution(RangeIndex *self, PyObject *entry, PyObject *url)
{
#if PY_VERSION_HEX < 0x030E0000
    /* What tuple.__new__(Resolution, items) does: allocate the subtype's tuple, fill it in. */
    PyTypeObject *type = self->resolution;
    PyObject *r = type->tp_alloc(type, 5);
    if (r == NULL) {
        Py_DECREF(entry);
        Py_DECREF(url);
        return NULL;
    }
    PyTuple_SET_ITEM(r, 0, entry);
    PyTuple_SET_ITEM(r, 1, url);
    Py_INCREF(Py_None);
    PyTuple_SET_ITEM(r, 2, Py_None);
    Py_INCREF(Py_None);
    PyTuple_SET_ITEM(r, 3, Py_None);
    Py_INCREF(Py_None);
    PyTuple_SET_ITEM(r, 4, Py_None);
    /* An int, a str and Nones cannot be part of a reference cycle: keep it out of the cyclic
     * collector's lists, as CPython does for such plain tuples (it never does for subclasses). */
    PyObject_GC_UnTrack(r);
    return r;
#else
    /* Newer tuples carry more state (a cached hash): let tuple.__new__ build the subtype. */
    PyObject *items = PyTuple_New(5);
    if (items == NULL) {
        Py_DECREF(entry);
        Py_DECREF(url);
        return NULL;
    }
    PyTuple_SET_ITEM(items, 0, entry);
    PyTuple_SET_ITEM(items, 1, url);
    PyTuple_SET_ITEM(items, 2, Py_NewRef(Py_None));
    PyTuple_SET_ITEM(items, 3, Py_NewRef(Py_None));
    PyTuple_SET_ITEM(items, 4, Py_NewRef(Py_None));
    PyObject *args = PyTuple_Pack(1, items);
    Py_DECREF(items);
    if (args == NULL) {
        return NULL;
    }
    PyObject *r = PyTuple_Type.tp_new(self->resolution, args, NULL);
    Py_DECREF(args);
    if (r != NULL && PyObject_GC_IsTracked(r)) {
        PyObject_GC_UnTrack(r);
    }
    return r;
#endif
}

/* Whether key is a str kvmap can resolve; else raise (TypeError, or kvmap's InvalidKeyError). */
static int
check_key(RangeIndex *self, PyObject *key)
{
    if (!PyUnicode_Check(key)) {
        PyErr_Format(PyExc_TypeError, "keys are str, not %.100s", Py_TYPE(key)->tp_name);
        return 0;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(key) < 0) {
        return 0;
    }
#endif
    if (!PyUnicode_IS_ASCII(key) && has_surrogate(key)) {
        reject_key(self, key);
        return 0;
    }
    return 1;
}

/* The entry of the last answer of a batch, kept for runs of keys in one piece. */
typedef struct {
    const Target *target;
    PyObject *entry; /* a strong reference, or NULL */
} LastEntry;

/* The resolution of a checked key at position k: a new reference (Py_None included), or NULL.
 * kb: the key's characters when it is ASCII (klen of them), else NULL. */
static PyObject *
answer(RangeIndex *self, PyObject *key, const unsigned char *kb, Py_ssize_t klen, Py_ssize_t k, LastEntry *last)
{
    const Target *t = &self->targets[k];
    if (t->url == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *url = kb != NULL ? ascii_target_url(self, t, key, kb, klen) : target_url(self, t->url, key, t->strip);
    if (url == NULL) {
        return NULL;
    }
    if (last->target != t) {
        PyObject *entry = PyLong_FromLongLong(t->entry);
        if (entry == NULL) {
            Py_DECREF(url);
            return NULL;
        }
        Py_XDECREF(last->entry);
        last->entry = entry;
        last->target = t;
    }
    Py_INCREF(last->entry);
    return make_resolution(self, last->entry, url);
}

/* The resolution of one key (a new reference, Py_None included), or NULL with an exception. */
static PyObject *
resolve_one(RangeIndex *self, PyObject *key)
{
    if (!check_key(self, key)) {
        return NULL;
    }
    Py_ssize_t k = position(self, key);
    if (k < 0) {
        return NULL;
    }
    const Target *t = &self->targets[k];
    if (t->url == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *url = PyUnicode_IS_ASCII(key)
                        ? ascii_target_url(self, t, key, PyUnicode_1BYTE_DATA(key), PyUnicode_GET_LENGTH(key))
                        : target_url(self, t->url, key, t->strip);
    if (url == NULL) {
        return NULL;
    }
    PyObject *entry = PyLong_FromLongLong(t->entry);
    if (entry == NULL) {
        Py_DECREF(url);
        return NULL;
    }
    return make_resolution(self, entry, url);
}

/* -- many keys ---------------------------------------------------------------------------- */

/* Batches of at least this many keys are resolved in key order (see resolve_many). */
#define SORT_MIN 64
/* ASCII keys up to this long are copied next to each other for the sorted pass. */
#define COPY_MAX 1024
/* How many keys ahead the sorted pass asks for memory it will read. */
#define AHEAD 8

typedef struct {
    uint64_t word;  /* word 0 of the key */
    PyObject *key;
    Py_ssize_t at;  /* where its characters are in the copy, or -1: not copied */
    uint32_t len;   /* its length, if copied */
    uint32_t i;     /* its position in the batch */
} Item;

/* Sort items by word: least significant digit radix sort, bytes that every item shares skipped. */
static void
radix_sort(Item *items, Item *spare, Py_ssize_t n)
{
    Py_ssize_t count[8][256];
    memset(count, 0, sizeof(count));
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t w = items[i].word;
        for (int b = 0; b < 8; b++) {
            count[b][(w >> (8 * b)) & 0xFF]++;
        }
    }
    Item *src = items, *dst = spare;
    for (int b = 0; b < 8; b++) {
        Py_ssize_t *c = count[b];
        if (c[(src[0].word >> (8 * b)) & 0xFF] == n) {
            continue; /* every item has the same byte here */
        }
        Py_ssize_t at = 0;
        for (int v = 0; v < 256; v++) {
            Py_ssize_t k = c[v];
            c[v] = at;
            at += k;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            dst[c[(src[i].word >> (8 * b)) & 0xFF]++] = src[i];
        }
        Item *t = src;
        src = dst;
        dst = t;
    }
    if (src != items) {
        memcpy(items, src, sizeof(Item) * (size_t)n);
    }
}

/* The first i >= from with w[i] > x, given that every w[i] before from is <= x (galloping). */
static inline Py_ssize_t
gallop_upper(const uint64_t *w, Py_ssize_t from, Py_ssize_t n, uint64_t x)
{
    if (from >= n || w[from] > x) {
        return from;
    }
    Py_ssize_t known = from, step = 1; /* w[known] <= x */
    while (known + step < n && w[known + step] <= x) {
        known += step;
        step *= 2;
    }
    Py_ssize_t end = known + step < n ? known + step : n;
    return upper_bound(w, known + 1, end, x);
}

/* resolve for each key of a checked batch, in key order: the search goes on from where the last
 * one ended, and the pieces' data (words, targets, URL prefixes) is read front to back. The keys'
 * characters are copied next to each other first, so reading them out of order stays cheap. */
static int
resolve_sorted(RangeIndex *self, PyObject *keys, PyObject *out)
{
    Py_ssize_t n = PyList_GET_SIZE(keys);
    if (n > (Py_ssize_t)UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "too many keys in one batch");
        return -1;
    }
    Item *items = PyMem_Malloc(sizeof(Item) * (size_t)n * 2);
    Py_ssize_t cap = 16 * n, used = 0;
    unsigned char *text = PyMem_Malloc((size_t)cap);
    LastEntry last = {NULL, NULL};
    int status = -1;
    if (items == NULL || text == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i + AHEAD < n) {
            PREFETCH(PyList_GET_ITEM(keys, i + AHEAD), 0);
        }
        PyObject *key = PyList_GET_ITEM(keys, i);
        if (!check_key(self, key)) {
            goto done;
        }
        Item *item = &items[i];
        unsigned char buf[HEAD_BYTES + 4];
        Py_ssize_t len;
        const unsigned char *head = head_of(key, buf, &len);
        item->word = word_at(head, len, 0);
        item->key = key;
        item->i = (uint32_t)i;
        item->at = -1;
        item->len = 0;
        Py_ssize_t klen = PyUnicode_GET_LENGTH(key);
        if (PyUnicode_IS_ASCII(key) && klen <= COPY_MAX) {
            if (used + klen > cap) {
                cap = 2 * cap + klen;
                unsigned char *more = PyMem_Realloc(text, (size_t)cap);
                if (more == NULL) {
                    PyErr_NoMemory();
                    goto done;
                }
                text = more;
            }
            memcpy(text + used, PyUnicode_1BYTE_DATA(key), (size_t)klen);
            item->at = used;
            item->len = (uint32_t)klen;
            used += klen;
        }
    }
    radix_sort(items, items + n, n);
    const uint64_t *w0 = self->words[0];
    PyObject **slots = ((PyListObject *)out)->ob_item;
    Py_ssize_t from = 0;
    for (Py_ssize_t j = 0; j < n; j++) {
        const Item *item = &items[j];
        if (j + AHEAD < n) {
            /* What the key AHEAD places on needs, from out of the way places: its characters
             * (copied in batch order) and its place in the result. */
            const Item *next = &items[j + AHEAD];
            if (next->at >= 0) {
                PREFETCH(text + next->at, 0);
            }
            PREFETCH(&slots[next->i], 1);
        }
        uint64_t x = item->word;
        from = gallop_upper(w0, from, self->n, x);
        const unsigned char *kb = NULL, *head;
        unsigned char buf[HEAD_BYTES + 4];
        Py_ssize_t klen = item->len, len;
        if (item->at >= 0) {
            kb = head = text + item->at;
            len = klen < HEAD_BYTES ? klen : HEAD_BYTES;
        }
        else {
            head = head_of(item->key, buf, &len);
        }
        Py_ssize_t k = finish(self, item->key, head, len, x, from);
        if (k < 0) {
            goto done;
        }
        /* The pieces ahead, in the order the keys will want them (two per key, roughly). */
        PREFETCH(&self->targets[k + 2 * AHEAD < self->n ? k + 2 * AHEAD : self->n], 0);
        PyObject *r = answer(self, item->key, kb, klen, k, &last);
        if (r == NULL) {
            goto done;
        }
        PyList_SET_ITEM(out, item->i, r);
    }
    status = 0;
done:
    Py_XDECREF(last.entry);
    PyMem_Free(items);
    PyMem_Free(text);
    return status;
}

/* -- the type ----------------------------------------------------------------------------- */

static void
RangeIndex_dealloc(RangeIndex *self)
{
    if (self->bounds != NULL) {
        for (Py_ssize_t i = 0; i < self->n; i++) {
            Py_XDECREF(self->bounds[i]);
        }
        PyMem_Free(self->bounds);
    }
    if (self->targets_block != NULL) {
        for (Py_ssize_t i = 0; i <= self->n; i++) {
            Py_XDECREF(self->targets[i].url);
        }
        PyMem_Free(self->targets_block);
    }
    for (int d = 0; d < MAX_LEVELS; d++) {
        PyMem_Free(self->words[d]);
    }
    Py_XDECREF(self->resolution);
    Py_XDECREF(self->encode);
    Py_XDECREF(self->check_key);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Build words[d] for every bound; returns whether a run of two or more bounds with equal words
 * [0 .. d] that go on remains (then words[d + 1] is worth building). -1 on failure.
 * same[i] says bound i equals bound i - 1 in every word so far, and both go on. */
static int
build_level(RangeIndex *self, int d, unsigned char *same)
{
    Py_ssize_t n = self->n;
    uint64_t *w = PyMem_Malloc(sizeof(uint64_t) * (size_t)(n > 0 ? n : 1));
    if (w == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->words[d] = w;
    self->levels = d + 1;
    unsigned char buf[HEAD_BYTES + 4];
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len;
        const unsigned char *head = head_of(self->bounds[i], buf, &len);
        w[i] = word_at(head, len, d);
    }
    int more = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int s = i > 0 && (d == 0 || same[i]) && w[i] == w[i - 1] && (w[i] & 0xFF) == GOES_ON;
        same[i] = (unsigned char)s;
        more |= s;
    }
    return more;
}

/* Fill a new, zeroed RangeIndex from its arguments; -1 with an exception set on failure
 * (the dealloc frees what was filled so far). */
static int
fill(RangeIndex *self, PyObject *bounds, PyObject *targets, PyObject *resolution, PyObject *encode,
     PyObject *check_key, PyObject *safe)
{
    PyTypeObject *rtype = (PyTypeObject *)resolution;
    if (!PyType_IsSubtype(rtype, &PyTuple_Type) || rtype->tp_basicsize != PyTuple_Type.tp_basicsize ||
        rtype->tp_itemsize != PyTuple_Type.tp_itemsize) {
        PyErr_SetString(PyExc_TypeError, "resolution must be a tuple subclass without extra fields");
        return -1;
    }
    if (!PyCallable_Check(encode) || !PyCallable_Check(check_key)) {
        PyErr_SetString(PyExc_TypeError, "encode and check_key must be callable");
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(bounds);
    if (PyList_GET_SIZE(targets) != n + 1) {
        PyErr_SetString(PyExc_ValueError, "targets must have one more item than bounds");
        return -1;
    }
    memset(self->safe, 0, sizeof(self->safe));
    for (Py_ssize_t i = 0; i < PyUnicode_GET_LENGTH(safe); i++) {
        Py_UCS4 c = PyUnicode_READ_CHAR(safe, i);
        if (c >= 0x80) {
            PyErr_SetString(PyExc_ValueError, "safe characters must be ASCII");
            return -1;
        }
        self->safe[c] = 1;
    }
    self->bounds = PyMem_Calloc((size_t)(n > 0 ? n : 1), sizeof(PyObject *));
    self->targets_block = PyMem_Calloc((size_t)n + 2, sizeof(Target));
    if (self->bounds == NULL || self->targets_block == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->targets = (Target *)(((uintptr_t)self->targets_block + 63) & ~(uintptr_t)63);
    self->n = n;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = PyList_GET_ITEM(bounds, i);
        if (!PyUnicode_Check(b)) {
            PyErr_SetString(PyExc_TypeError, "bounds must be str");
            return -1;
        }
#if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_READY(b) < 0) {
            return -1;
        }
#endif
        if (i > 0) {
            int c = PyUnicode_Compare(self->bounds[i - 1], b);
            if (c == -1 && PyErr_Occurred()) {
                return -1;
            }
            if (c >= 0) {
                PyErr_SetString(PyExc_ValueError, "bounds must be strictly increasing");
                return -1;
            }
        }
        Py_INCREF(b);
        self->bounds[i] = b;
    }
    for (Py_ssize_t i = 0; i <= n; i++) {
        PyObject *t = PyList_GET_ITEM(targets, i);
        Target *out = &self->targets[i];
        out->entry = -1;
        out->ulen = NOT_INLINE;
        if (t == Py_None) {
            continue;
        }
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 3 || !PyUnicode_Check(PyTuple_GET_ITEM(t, 1))) {
            PyErr_SetString(PyExc_TypeError, "a target is None or (entry, url, strip)");
            return -1;
        }
        /* ints only (no __index__): no Python code runs while the lists are read */
        if (!PyLong_Check(PyTuple_GET_ITEM(t, 0)) || !PyLong_Check(PyTuple_GET_ITEM(t, 2))) {
            PyErr_SetString(PyExc_TypeError, "a target's entry and strip are int");
            return -1;
        }
        long long entry = PyLong_AsLongLong(PyTuple_GET_ITEM(t, 0));
        if (entry == -1 && PyErr_Occurred()) {
            return -1;
        }
        Py_ssize_t strip = PyLong_AsSsize_t(PyTuple_GET_ITEM(t, 2));
        if (strip == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (entry < 0 || strip < 0) {
            PyErr_SetString(PyExc_ValueError, "a target's entry and strip are >= 0");
            return -1;
        }
        PyObject *url = PyTuple_GET_ITEM(t, 1);
#if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_READY(url) < 0) {
            return -1;
        }
#endif
        Py_INCREF(url);
        out->url = url;
        out->strip = strip;
        out->entry = entry;
        if (PyUnicode_IS_ASCII(url) && PyUnicode_GET_LENGTH(url) <= INLINE_URL) {
            out->ulen = (unsigned char)PyUnicode_GET_LENGTH(url);
            memcpy(out->text, PyUnicode_1BYTE_DATA(url), (size_t)out->ulen);
        }
    }
    Py_INCREF(resolution);
    self->resolution = rtype;
    Py_INCREF(encode);
    self->encode = encode;
    Py_INCREF(check_key);
    self->check_key = check_key;

    unsigned char *same = PyMem_Malloc((size_t)(n > 0 ? n : 1));
    if (same == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int more = 1;
    for (int d = 0; d < MAX_LEVELS && more; d++) {
        more = build_level(self, d, same);
        if (more < 0) {
            PyMem_Free(same);
            return -1;
        }
    }
    PyMem_Free(same);
    return 0;
}

static PyObject *
RangeIndex_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"bounds", "targets", "resolution", "encode", "check_key", "safe", NULL};
    PyObject *bounds, *targets, *resolution, *encode, *check_key, *safe;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!OOU:RangeIndex", kwlist, &PyList_Type, &bounds,
                                     &PyList_Type, &targets, &PyType_Type, &resolution, &encode, &check_key,
                                     &safe)) {
        return NULL;
    }
    RangeIndex *self = (RangeIndex *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    if (fill(self, bounds, targets, resolution, encode, check_key, safe) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static PyObject *
RangeIndex_resolve(RangeIndex *self, PyObject *key)
{
    return resolve_one(self, key);
}

static PyObject *
RangeIndex_resolve_many(RangeIndex *self, PyObject *keys)
{
    if (!PyList_Check(keys)) {
        PyErr_SetString(PyExc_TypeError, "keys must be a list");
        return NULL;
    }
    /* A copy: nothing that runs meanwhile (the callbacks into kvmap) can change it. */
    PyObject *batch = PyList_GetSlice(keys, 0, PyList_GET_SIZE(keys));
    if (batch == NULL) {
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(batch);
    PyObject *out = PyList_New(n);
    if (out == NULL) {
        Py_DECREF(batch);
        return NULL;
    }
    if (n >= SORT_MIN) { /* it checks the keys first */
        if (resolve_sorted(self, batch, out) < 0) {
            goto fail;
        }
    }
    else {
        for (Py_ssize_t i = 0; i < n; i++) {
            if (!check_key(self, PyList_GET_ITEM(batch, i))) { /* all of them, before any answer */
                goto fail;
            }
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *r = resolve_one(self, PyList_GET_ITEM(batch, i));
            if (r == NULL) {
                goto fail;
            }
            PyList_SET_ITEM(out, i, r);
        }
    }
    Py_DECREF(batch);
    return out;
fail:
    Py_DECREF(batch);
    Py_DECREF(out); /* the places not filled are NULL, which a list's dealloc skips */
    return NULL;
}

static PyObject *
RangeIndex_position(RangeIndex *self, PyObject *key)
{
    if (!PyUnicode_Check(key)) {
        PyErr_Format(PyExc_TypeError, "keys are str, not %.100s", Py_TYPE(key)->tp_name);
        return NULL;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(key) < 0) {
        return NULL;
    }
#endif
    Py_ssize_t k = position(self, key);
    if (k < 0) {
        return NULL;
    }
    return PyLong_FromSsize_t(k);
}

static PyObject *
RangeIndex_get_levels(RangeIndex *self, void *closure)
{
    return PyLong_FromLong(self->levels);
}

static PyObject *
RangeIndex_sizeof(RangeIndex *self, PyObject *unused)
{
    size_t size = sizeof(RangeIndex) + (size_t)self->n * sizeof(PyObject *) +
                  ((size_t)self->n + 1) * sizeof(Target) + (size_t)self->levels * (size_t)self->n * sizeof(uint64_t);
    return PyLong_FromSize_t(size);
}

static PyMethodDef RangeIndex_methods[] = {
    {"resolve", (PyCFunction)RangeIndex_resolve, METH_O,
     "resolve(key) -> Resolution | None: the range pieces' answer for key."},
    {"resolve_many", (PyCFunction)RangeIndex_resolve_many, METH_O,
     "resolve_many(keys: list[str]) -> list[Resolution | None]: resolve for each key."},
    {"position", (PyCFunction)RangeIndex_position, METH_O, "position(key) -> int: bisect_right(bounds, key)."},
    {"__sizeof__", (PyCFunction)RangeIndex_sizeof, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef RangeIndex_getset[] = {
    {"levels", (getter)RangeIndex_get_levels, NULL, "How many arrays of words the search uses.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RangeIndexType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kvmap._speedups.RangeIndex",
    .tp_basicsize = sizeof(RangeIndex),
    .tp_dealloc = (destructor)RangeIndex_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "RangeIndex(bounds, targets, resolution, encode, check_key, safe): resolve keys against range "
              "pieces (see kvmap.compiled).",
    .tp_methods = RangeIndex_methods,
    .tp_getset = RangeIndex_getset,
    .tp_new = RangeIndex_new,
};

static int
speedups_exec(PyObject *m)
{
    if (PyType_Ready(&RangeIndexType) < 0) {
        return -1;
    }
    Py_INCREF(&RangeIndexType);
    if (PyModule_AddObject(m, "RangeIndex", (PyObject *)&RangeIndexType) < 0) {
        Py_DECREF(&RangeIndexType);
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot speedups_slots[] = {
    {Py_mod_exec, speedups_exec},
#ifdef Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED
    /* RangeIndex is a static type: one interpreter only. */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
#ifdef Py_MOD_GIL_NOT_USED
    /* A RangeIndex is not changed after it is made; each call's state is its own. */
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kvmap._speedups",
    .m_doc = "kvmap's optional compiled fast path for resolving keys against range pieces.",
    .m_size = 0,
    .m_slots = speedups_slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
