/* ycsb_gen.h: YCSB workload A's generator, header-only: the C twin of
 * src/underbridge/bench/ycsb_workload.py (whose docstring states the full spec).
 * Workloads B-F build on it in ycsb_mix.h.
 *
 *  - One splitmix64 stream (struct ycsb_rng) drives everything, in program order:
 *    the load phase draws 10 values per record, then each operation draws u, its key
 *    (one double) and, for an UPDATE, the field (one double) and a value.
 *  - ycsb_fnvhash64 is YCSB's Utils.fnvhash64 (FNV-1a over 8 bytes, then Java's
 *    Math.abs: Long.MIN_VALUE stays negative); key names are "user" + its decimal.
 *  - ycsb_next_keynum is ScrambledZipfianGenerator(0, records-1): YCSB's inner
 *    ZipfianGenerator over 10^10 + 1 items, theta 0.99, precomputed zetan, then
 *    fnvhash64 mod records (a floor remainder: always in [0, records)).
 *  - A value is 100 characters chr(32 + b % 95) from the little-endian bytes b of 13
 *    consecutive outputs.
 *
 * Floating point must match Python bit for bit: every expression is written in YCSB's
 * (Java's) evaluation order with one rounding per operation, and pow is libm's. A fused
 * multiply-add would round once where Python rounds twice, so this header refuses a
 * target with fast FMA unless the includer promises -ffp-contract=off (defining
 * YCSB_FP_CONTRACT_OFF). The guest (-march=x86-64) has no FMA at all.
 *
 * No globals and no libc beyond <math.h>'s pow: usable from the guest, from ycsb.c and
 * from host test drivers alike.
 */
#ifndef YCSB_GEN_H
#define YCSB_GEN_H

#include <math.h>
#include <stdint.h>

#if defined(__FP_FAST_FMA) && !defined(YCSB_FP_CONTRACT_OFF)
#error "ycsb_gen.h: FMA target: build with -ffp-contract=off and -DYCSB_FP_CONTRACT_OFF"
#endif

#define YCSB_FIELD_COUNT 10
#define YCSB_FIELD_LENGTH 100
#define YCSB_VALUE_OUTPUTS 13 /* ceil(100 / 8) */
#define YCSB_KEY_MAX 25       /* "user" + "-9223372036854775808" + NUL */
#define YCSB_READ_PROPORTION 0.5

#define YCSB_FNV_OFFSET_BASIS_64 0xCBF29CE484222325ULL
#define YCSB_FNV_PRIME_64 1099511628211ULL

/* ScrambledZipfianGenerator: ZipfianGenerator(0, ITEM_COUNT, 0.99, ZETAN). */
#define YCSB_ITEM_COUNT 10000000000LL
#define YCSB_ZIPFIAN_CONSTANT 0.99
#define YCSB_ZETAN 26.46902820178302

/* Timing marker, defined by whoever links ycsb.c (guest: mark.c; host tests: a stub). */
void ycsb_mark(void);

/* ---- splitmix64 ------------------------------------------------------------------ */

struct ycsb_rng {
    uint64_t state;
};

static inline void ycsb_rng_seed(struct ycsb_rng *rng, uint64_t seed)
{
    rng->state = seed;
}

static inline uint64_t ycsb_next_u64(struct ycsb_rng *rng)
{
    uint64_t z = (rng->state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* [0, 1): a 53-bit integer (exact in a double) times 2^-53 (exact). */
static inline double ycsb_next_double(struct ycsb_rng *rng)
{
    return (double)(ycsb_next_u64(rng) >> 11) * 0x1.0p-53;
}

/* ---- YCSB's hashing and key names ------------------------------------------------ */

/* Java's Math.abs of a long given as its 64 bits, without C's signed overflow:
 * 2^63 (Long.MIN_VALUE) has no positive counterpart and stays INT64_MIN. */
static inline int64_t ycsb_java_abs(uint64_t bits)
{
    if (bits == (1ULL << 63))
        return INT64_MIN;
    if (bits >> 63)
        return (int64_t)(0 - bits); /* |negative|, now below 2^63 */
    return (int64_t)bits;
}

/* Utils.fnvhash64(long val). Java shifts val arithmetically, but iteration i only
 * reads bits 8i..8i+7 of the original value, which no shifted-in sign bit reaches, so
 * an unsigned shift yields the same octets (and avoids C's implementation-defined
 * signed shift). */
static inline int64_t ycsb_fnvhash64(int64_t val)
{
    uint64_t bits = (uint64_t)val;
    uint64_t hash = YCSB_FNV_OFFSET_BASIS_64;
    for (int i = 0; i < 8; i++) {
        hash ^= bits & 0xff;
        hash *= YCSB_FNV_PRIME_64;
        bits >>= 8;
    }
    return ycsb_java_abs(hash);
}

/* "user" + decimal hash (Java's Long.toString: a '-' for INT64_MIN) into out
 * (YCSB_KEY_MAX bytes, NUL-terminated); returns the length. */
static inline int ycsb_format_key(int64_t hash, char out[YCSB_KEY_MAX])
{
    /* magnitude as unsigned: INT64_MIN's is 2^63, which int64_t cannot hold */
    uint64_t mag = hash < 0 ? 0 - (uint64_t)hash : (uint64_t)hash;
    char digits[20];
    int ndigits = 0, len = 0;
    do {
        digits[ndigits++] = (char)('0' + mag % 10);
        mag /= 10;
    } while (mag != 0);
    out[len++] = 'u';
    out[len++] = 's';
    out[len++] = 'e';
    out[len++] = 'r';
    if (hash < 0)
        out[len++] = '-';
    while (ndigits > 0)
        out[len++] = digits[--ndigits];
    out[len] = '\0';
    return len;
}

/* CoreWorkload.buildKeyName(keynum) with hashed inserts and zeropadding 1. */
static inline int ycsb_key_name(int64_t keynum, char out[YCSB_KEY_MAX])
{
    return ycsb_format_key(ycsb_fnvhash64(keynum), out);
}

/* ---- ScrambledZipfianGenerator(0, records - 1) ----------------------------------- */

struct ycsb_zipf {
    int64_t items; /* ZipfianGenerator(0, ITEM_COUNT): max - min + 1 */
    double theta, zetan, zeta2theta, alpha, eta;
    double one_threshold; /* 1.0 + pow(0.5, theta) */
};

/* ZipfianGenerator's constructor with YCSB's precomputed zetan (and without the
 * throw-away first draw, which would come from Java's own RNG anyway). */
static inline void ycsb_zipf_init(struct ycsb_zipf *zipf)
{
    zipf->items = YCSB_ITEM_COUNT + 1;
    zipf->theta = YCSB_ZIPFIAN_CONSTANT;
    zipf->zetan = YCSB_ZETAN;
    /* zeta(2, theta) = zetastatic(0, 2, theta, 0): YCSB's loop, in its order */
    double sum = 0.0;
    for (int64_t i = 0; i < 2; i++)
        sum += 1 / pow((double)(i + 1), zipf->theta);
    zipf->zeta2theta = sum;
    zipf->alpha = 1.0 / (1.0 - zipf->theta);
    zipf->eta = (1 - pow(2.0 / (double)zipf->items, 1 - zipf->theta)) /
                (1 - zipf->zeta2theta / zipf->zetan);
    zipf->one_threshold = 1.0 + pow(0.5, zipf->theta);
}

/* pow's base in nextLong: Java's eta * u - eta + 1, i.e. ((eta * u) - eta) + 1 with a
 * rounding after each operation (alpha = 100 turns one ulp here into ~100 in pow). */
static inline double ycsb_zipf_base(const struct ycsb_zipf *zipf, double u)
{
    return zipf->eta * u - zipf->eta + 1;
}

/* ZipfianGenerator.nextLong(items) for the uniform draw u: in [0, items].
 * Java: base + (long) ((itemcount) * Math.pow(eta * u - eta + 1, alpha)), base = 0. */
static inline int64_t ycsb_zipf_inner(const struct ycsb_zipf *zipf, double u)
{
    double uz = u * zipf->zetan;
    if (uz < 1.0)
        return 0;
    if (uz < zipf->one_threshold)
        return 1;
    return (int64_t)((double)zipf->items * pow(ycsb_zipf_base(zipf, u), zipf->alpha));
}

/* fnvhash64(inner) mod records as a floor remainder: Java's % would go negative for
 * Long.MIN_VALUE, which no inner value in [0, 2^34) hashes to anyway. */
static inline int64_t ycsb_scramble(int64_t inner, int64_t records)
{
    int64_t rem = ycsb_fnvhash64(inner) % records;
    return rem < 0 ? rem + records : rem;
}

/* One key choice: one draw, in [0, records). */
static inline int64_t ycsb_next_keynum(struct ycsb_rng *rng, const struct ycsb_zipf *zipf,
                                       int64_t records)
{
    return ycsb_scramble(ycsb_zipf_inner(zipf, ycsb_next_double(rng)), records);
}

/* ---- values and operations ------------------------------------------------------- */

/* A field value: 100 printable characters from 13 outputs (the rest of the 13th is
 * dropped). out needs YCSB_FIELD_LENGTH bytes; no NUL is written. */
static inline void ycsb_next_value(struct ycsb_rng *rng, char out[YCSB_FIELD_LENGTH])
{
    int n = 0;
    for (int i = 0; i < YCSB_VALUE_OUTPUTS; i++) {
        uint64_t word = ycsb_next_u64(rng);
        for (int j = 0; j < 8 && n < YCSB_FIELD_LENGTH; j++, word >>= 8)
            out[n++] = (char)(32 + (word & 0xff) % 95);
    }
}

/* YCSB's order of proportions (CoreWorkload.createOperationGenerator); workload A
 * uses the first two, the others come from ycsb_mix.h. */
enum ycsb_op_kind { YCSB_READ, YCSB_UPDATE, YCSB_INSERT, YCSB_SCAN, YCSB_RMW, YCSB_KINDS };

struct ycsb_op {
    enum ycsb_op_kind kind;
    int64_t keynum;
    int field;                     /* UPDATE only: 0..9 */
    char value[YCSB_FIELD_LENGTH]; /* UPDATE only; not NUL-terminated */
};

/* The next run-phase operation: u, the key, and for an UPDATE the field and value. */
static inline void ycsb_next_op(struct ycsb_rng *rng, const struct ycsb_zipf *zipf,
                                int64_t records, struct ycsb_op *op)
{
    double u = ycsb_next_double(rng);
    op->keynum = ycsb_next_keynum(rng, zipf, records);
    if (u < YCSB_READ_PROPORTION) {
        op->kind = YCSB_READ;
        op->field = -1;
        return;
    }
    op->kind = YCSB_UPDATE;
    op->field = (int)(ycsb_next_double(rng) * YCSB_FIELD_COUNT);
    ycsb_next_value(rng, op->value);
}

/* FNV-1a 64 over n bytes, continuing from checksum (start: YCSB_FNV_OFFSET_BASIS_64). */
static inline uint64_t ycsb_fnv1a_fold(uint64_t checksum, const unsigned char *data,
                                       long n)
{
    for (long i = 0; i < n; i++) {
        checksum ^= data[i];
        checksum *= 0x100000001B3ULL;
    }
    return checksum;
}

#endif /* YCSB_GEN_H */
