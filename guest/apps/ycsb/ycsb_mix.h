/* ycsb_mix.h: YCSB's core workloads A-F, header-only: the C twin of
 * src/underbridge/bench/ycsb_core.py (its docstring is the spec and cites YCSB's
 * workloads/workloada..workloadf) and of YcsbGenerator.operations.
 *
 *  - ycsb_choose is CoreWorkload's DiscreteGenerator over the non-zero proportions in
 *    the order READ, UPDATE, INSERT, SCAN, READMODIFYWRITE; the last entry takes what
 *    rounding leaves (Java would throw).
 *  - Inserts take keynums records, records + 1, ...; mix->last is the last inserted.
 *  - zipfian keys: ycsb_next_keynum over records + expectednewkeys keys, redrawn while
 *    beyond mix->last. latest keys: SkewedLatestGenerator (struct ycsb_latest), its
 *    result cut to Java's int and redrawn the same way.
 *  - Per op: the kind (one draw); an INSERT then ten values; every other kind its
 *    keynum, then a SCAN its length, an UPDATE or READMODIFYWRITE its field and value.
 *
 * Workload A through ycsb_next_mix_op draws exactly what ycsb_next_op draws (the tests
 * prove it); ycsb.c still runs A through ycsb_next_op, the loop the figures were
 * measured with. Floating point as in ycsb_gen.h: Java's order, one rounding per
 * operation, libm's pow; IEEE division and (long) casts written out as Java has them.
 */
#ifndef YCSB_MIX_H
#define YCSB_MIX_H

#include "ycsb_gen.h"

struct ycsb_workload {
    char name;                      /* 'a' .. 'f' */
    double proportion[YCSB_KINDS]; /* indexed by enum ycsb_op_kind */
    int latest;                     /* requestdistribution=latest (else zipfian) */
    int64_t min_scan, max_scan;     /* minscanlength, maxscanlength */
};

/* YCSB's workloads/workloada..workloadf (brianfrankcooper/YCSB). Read only. */
static const struct ycsb_workload ycsb_workloads[] = {
    {'a', {0.5, 0.5, 0.0, 0.0, 0.0}, 0, 1, 100},
    {'b', {0.95, 0.05, 0.0, 0.0, 0.0}, 0, 1, 100},
    {'c', {1.0, 0.0, 0.0, 0.0, 0.0}, 0, 1, 100},
    {'d', {0.95, 0.0, 0.05, 0.0, 0.0}, 1, 1, 100},
    {'e', {0.0, 0.0, 0.05, 0.95, 0.0}, 0, 1, 100},
    {'f', {0.5, 0.0, 0.0, 0.0, 0.5}, 0, 1, 100},
};
#define YCSB_WORKLOADS ((int)(sizeof ycsb_workloads / sizeof ycsb_workloads[0]))

/* DiscreteGenerator.nextValue for the draw u. */
static inline enum ycsb_op_kind ycsb_choose(const struct ycsb_workload *w, double u)
{
    double sum = 0;
    int last = 0;
    for (int k = 0; k < YCSB_KINDS; k++)
        if (w->proportion[k] > 0) {
            sum += w->proportion[k];
            last = k;
        }
    for (int k = 0; k < last; k++) {
        if (!(w->proportion[k] > 0))
            continue;
        double share = w->proportion[k] / sum;
        if (u < share)
            return (enum ycsb_op_kind)k;
        u -= share;
    }
    return (enum ycsb_op_kind)last;
}

/* Java's (long) cast: NaN is 0, out-of-range values saturate (C leaves them undefined). */
static inline int64_t ycsb_java_long(double x)
{
    if (x != x)
        return 0;
    if (x >= 0x1p63)
        return INT64_MAX;
    if (x <= -0x1p63)
        return INT64_MIN;
    return (int64_t)x;
}

/* Java's long.intValue(): the low 32 bits, signed (gcc converts modulo 2^32). */
static inline int64_t ycsb_java_int(int64_t value)
{
    return (int32_t)(uint32_t)(uint64_t)value;
}

/* ZipfianGenerator.zetastatic(st, n, theta, initialsum), in YCSB's order. */
static inline double ycsb_zeta_sum(int64_t start, int64_t end, double theta, double initial)
{
    double sum = initial;
    for (int64_t i = start; i < end; i++)
        sum += 1 / pow((double)(i + 1), theta);
    return sum;
}

/* ---- SkewedLatestGenerator ------------------------------------------------------- */

struct ycsb_latest {
    int64_t items, countforzeta;
    double theta, zeta2theta, alpha, zetan, eta;
};

/* eta as nextLong recomputes it: with the constructor's items (YCSB's code). */
static inline double ycsb_latest_eta(const struct ycsb_latest *g)
{
    return (1 - pow(2.0 / (double)g->items, 1 - g->theta)) / (1 - g->zeta2theta / g->zetan);
}

/* new SkewedLatestGenerator(counter) with counter.lastValue() == last:
 * ZipfianGenerator(last), i.e. ZipfianGenerator(0, last - 1): items = last. */
static inline void ycsb_latest_init(struct ycsb_latest *g, int64_t last)
{
    g->items = last;
    g->theta = YCSB_ZIPFIAN_CONSTANT;
    g->zeta2theta = ycsb_zeta_sum(0, 2, g->theta, 0.0);
    g->alpha = 1.0 / (1.0 - g->theta);
    g->zetan = ycsb_zeta_sum(0, last, g->theta, 0.0);
    g->countforzeta = last;
    g->eta = ycsb_latest_eta(g);
}

/* SkewedLatestGenerator.nextValue with basis.lastValue() == last: one draw. */
static inline int64_t ycsb_latest_next(struct ycsb_latest *g, struct ycsb_rng *rng,
                                       int64_t last)
{
    if (last > g->countforzeta) {
        g->zetan = ycsb_zeta_sum(g->countforzeta, last, g->theta, g->zetan);
        g->countforzeta = last;
        g->eta = ycsb_latest_eta(g);
    }
    double u = ycsb_next_double(rng);
    double uz = u * g->zetan;
    int64_t ret;
    if (uz < 1.0)
        ret = 0;
    else if (uz < 1.0 + pow(0.5, g->theta))
        ret = 1;
    else
        ret = ycsb_java_long((double)last * pow(g->eta * u - g->eta + 1, g->alpha));
    return last - ret; /* last >= 0 and ret >= 0: no overflow */
}

/* ---- the operation stream -------------------------------------------------------- */

struct ycsb_mix {
    const struct ycsb_workload *workload;
    struct ycsb_zipf zipf;     /* the scrambled zipfian's inner generator */
    struct ycsb_latest latest; /* workload D's key chooser */
    int64_t keyspace;          /* records + expectednewkeys */
    int64_t last;              /* the last keynum inserted */
};

/* CoreWorkload.init's key choosers for `records` loaded records and `ops` operations. */
static inline void ycsb_mix_init(struct ycsb_mix *mix, const struct ycsb_workload *w,
                                 int64_t records, long ops)
{
    mix->workload = w;
    ycsb_zipf_init(&mix->zipf);
    mix->keyspace = records + (int64_t)((double)ops * w->proportion[YCSB_INSERT] * 2.0);
    mix->last = records - 1;
    mix->latest = (struct ycsb_latest){0}; /* zipfian workloads never read it */
    if (w->latest)
        ycsb_latest_init(&mix->latest, records - 1);
}

struct ycsb_mix_op {
    struct ycsb_op op;  /* kind, keynum; field and value for UPDATE and RMW */
    int64_t length;     /* SCAN: at most this many rows */
    char values[YCSB_FIELD_COUNT][YCSB_FIELD_LENGTH]; /* INSERT; not NUL-terminated */
};

/* CoreWorkload.nextKeynum: draw (as an int) until at most the last inserted keynum. */
static inline int64_t ycsb_mix_keynum(struct ycsb_rng *rng, struct ycsb_mix *mix)
{
    for (;;) {
        int64_t keynum = mix->workload->latest
                             ? ycsb_java_int(ycsb_latest_next(&mix->latest, rng, mix->last))
                             : ycsb_next_keynum(rng, &mix->zipf, mix->keyspace);
        if (keynum <= mix->last)
            return keynum;
    }
}

static inline void ycsb_next_mix_op(struct ycsb_rng *rng, struct ycsb_mix *mix,
                                    struct ycsb_mix_op *out)
{
    const struct ycsb_workload *w = mix->workload;
    struct ycsb_op *op = &out->op;
    op->kind = ycsb_choose(w, ycsb_next_double(rng));
    op->field = -1;
    out->length = 0;
    if (op->kind == YCSB_INSERT) {
        op->keynum = ++mix->last;
        for (int f = 0; f < YCSB_FIELD_COUNT; f++)
            ycsb_next_value(rng, out->values[f]);
        return;
    }
    op->keynum = ycsb_mix_keynum(rng, mix);
    if (op->kind == YCSB_READ)
        return;
    if (op->kind == YCSB_SCAN) {
        int64_t span = w->max_scan - w->min_scan + 1;
        out->length = w->min_scan + (int64_t)(ycsb_next_double(rng) * (double)span);
        return;
    }
    op->field = (int)(ycsb_next_double(rng) * YCSB_FIELD_COUNT);
    ycsb_next_value(rng, op->value);
}

#endif /* YCSB_MIX_H */
