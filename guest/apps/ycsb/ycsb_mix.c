/* ycsb_mix.c: YCSB's core workloads B-F on SQLite (ycsb_mix.h draws them), for ycsb.c.
 *
 * The same table, load and markers as workload A (ycsb_db.h), then run_mix: each
 * operation in autocommit; a READMODIFYWRITE is a read, then an update (two
 * statements, as YCSB's JDBC binding runs it). A READ, a READMODIFYWRITE's read and
 * every row a SCAN returns fold their ten fields into the checksum; a READ of a missing
 * row counts a miss. The scan statement is prepared only for a workload that scans.
 * Its read and update steps are its own, not ycsb.c's do_read and do_update: those
 * count A's operations and stay exactly as A's figures were measured.
 * src/underbridge/bench/ycsb_native.py is the Python twin of what this does.
 */
#include "ycsb_db.h"

/* YCSB's JDBC binding's scan (DefaultDBFlavor.createScanStatement). */
static const char SCAN_SQL[] =
    "SELECT * FROM usertable WHERE YCSB_KEY >= ? ORDER BY YCSB_KEY LIMIT ?";

/* A's tally (ycsb_db.h) and the kinds A does not have. */
struct mix_tally {
    struct tally base;
    long inserts, scans, rmws;
};

/* The workload named by one letter a..f (either case), or NULL. */
static const struct ycsb_workload *ycsb_workload_named(const char *name)
{
    if (name[0] == '\0' || name[1] != '\0')
        return 0;
    char letter = (char)(name[0] | 0x20);
    for (int i = 0; i < YCSB_WORKLOADS; i++)
        if (ycsb_workloads[i].name == letter)
            return &ycsb_workloads[i];
    return 0;
}


/* The ten fields of the current row into the checksum. */
static void fold_columns(sqlite3_stmt *stmt, struct mix_tally *tally)
{
    for (int col = 1; col <= YCSB_FIELD_COUNT; col++) {
        const unsigned char *text = sqlite3_column_text(stmt, col);
        int n = sqlite3_column_bytes(stmt, col); /* after column_text, as documented */
        tally->base.checksum = ycsb_fnv1a_fold(tally->base.checksum, text, n);
    }
}

/* The row of key, folded (a missing row: a miss); the caller counts the operation. */
static int fold_row(sqlite3 *db, sqlite3_stmt *read, const char *key, int keylen,
                    struct mix_tally *tally)
{
    if (sqlite3_bind_text(read, 1, key, keylen, SQLITE_STATIC) != SQLITE_OK)
        return fail(db, "bind SELECT");
    int rc = sqlite3_step(read);
    if (rc == SQLITE_ROW) {
        fold_columns(read, tally);
        rc = sqlite3_step(read); /* the key is unique: this must end the result */
    } else if (rc == SQLITE_DONE) {
        tally->base.misses++;
    }
    sqlite3_reset(read);
    return rc == SQLITE_DONE ? 0 : fail(db, "SELECT");
}

static int write_field(sqlite3 *db, sqlite3_stmt *update, const char *value,
                       const char *key, int keylen)
{
    if (sqlite3_bind_text(update, 1, value, YCSB_FIELD_LENGTH, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_text(update, 2, key, keylen, SQLITE_STATIC) != SQLITE_OK)
        return fail(db, "bind UPDATE");
    return step_done(db, update, "UPDATE");
}

static int insert_row(sqlite3 *db, sqlite3_stmt *insert, const char *key, int keylen,
                      const char (*values)[YCSB_FIELD_LENGTH])
{
    int rc = sqlite3_bind_text(insert, 1, key, keylen, SQLITE_STATIC);
    for (int f = 0; f < YCSB_FIELD_COUNT && rc == SQLITE_OK; f++)
        rc = sqlite3_bind_text(insert, 2 + f, values[f], YCSB_FIELD_LENGTH, SQLITE_STATIC);
    if (rc != SQLITE_OK)
        return fail(db, "bind INSERT");
    return step_done(db, insert, "INSERT");
}

/* At most length rows from key on, in key order, every one folded. */
static int scan_rows(sqlite3 *db, sqlite3_stmt *scan, const char *key, int keylen,
                     int64_t length, struct mix_tally *tally)
{
    if (sqlite3_bind_text(scan, 1, key, keylen, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_int64(scan, 2, length) != SQLITE_OK)
        return fail(db, "bind SCAN");
    int rc;
    while ((rc = sqlite3_step(scan)) == SQLITE_ROW)
        fold_columns(scan, tally);
    sqlite3_reset(scan);
    return rc == SQLITE_DONE ? 0 : fail(db, "SCAN");
}

static int do_mix_op(sqlite3 *db, struct statements *st, sqlite3_stmt *scan,
                     const struct ycsb_mix_op *mop, struct mix_tally *tally)
{
    const struct ycsb_op *op = &mop->op;
    char key[YCSB_KEY_MAX];
    int keylen = ycsb_key_name(op->keynum, key);
    switch (op->kind) {
    case YCSB_READ:
        tally->base.reads++;
        return fold_row(db, st->read, key, keylen, tally);
    case YCSB_UPDATE:
        tally->base.updates++;
        return write_field(db, st->update[op->field], op->value, key, keylen);
    case YCSB_INSERT:
        tally->inserts++;
        return insert_row(db, st->insert, key, keylen, mop->values);
    case YCSB_SCAN:
        tally->scans++;
        return scan_rows(db, scan, key, keylen, mop->length, tally);
    default: /* YCSB_RMW: the read, then the update: two autocommit statements */
        tally->rmws++;
        if (fold_row(db, st->read, key, keylen, tally) != 0)
            return -1;
        return write_field(db, st->update[op->field], op->value, key, keylen);
    }
}

static int run_mix(sqlite3 *db, struct statements *st, sqlite3_stmt *scan, struct ycsb_rng *rng,
                   struct ycsb_mix *mix, long ops, struct mix_tally *tally)
{
    struct ycsb_mix_op op;
    for (long i = 0; i < ops; i++) {
        ycsb_next_mix_op(rng, mix, &op);
        if (do_mix_op(db, st, scan, &op, tally) != 0)
            return -1;
        ycsb_progress++;
    }
    return 0;
}

/* ycsb.c's workload() for any core workload: the same table, load and markers, then run_mix.
 * The key choosers are built before the markers, as YCSB builds them before it runs. */
static int mix_workload(sqlite3 *db, const struct ycsb_workload *w, long records, long ops,
                        uint64_t seed, struct mix_tally *tally)
{
    struct statements st = {0};
    sqlite3_stmt *scan = NULL; /* prepared only for a workload that scans */
    struct ycsb_rng rng;
    struct ycsb_mix mix;
    int rc = -1;

    ycsb_rng_seed(&rng, seed);
    ycsb_mix_init(&mix, w, records, ops);
    if (sqlite3_exec(db, CREATE_SQL, NULL, NULL, NULL) != SQLITE_OK) {
        fail(db, "CREATE TABLE");
    } else if (prepare_all(db, &st) != 0) {
        /* already reported */
    } else if (w->proportion[YCSB_SCAN] > 0 &&
               sqlite3_prepare_v2(db, SCAN_SQL, -1, &scan, NULL) != SQLITE_OK) {
        fail(db, "prepare SCAN");
    } else {
        ycsb_mark(); /* m0: load begins */
        if (load(db, st.insert, &rng, records) == 0) {
            ycsb_mark(); /* m1: load committed */
            if (run_mix(db, &st, scan, &rng, &mix, ops, tally) == 0) {
                ycsb_mark(); /* m2: last operation done */
                ycsb_mark(); /* m3: a marker's own cost is m3 - m2 */
                rc = 0;
            }
        }
    }
    finalize_all(&st);
    sqlite3_finalize(scan);
    return rc;
}

int ycsb_runs_a(const char *name)
{
    const struct ycsb_workload *w = ycsb_workload_named(name);
    return w != NULL && w->name == 'a';
}

/* ycsb.c's main for workloads B-F (A too, if asked: the tests run it that way). */
int ycsb_mix_main(int argc, char **argv)
{
    long records, ops;
    uint64_t seed;
    const struct ycsb_workload *w = argc == 6 ? ycsb_workload_named(argv[5]) : ycsb_workloads;
    if (argc < 4 || argc > 6 || w == NULL || parse_count(argv[1], 1, &records) != 0 ||
        parse_count(argv[2], 0, &ops) != 0 || parse_seed(argv[3], &seed) != 0) {
        fputs(YCSB_USAGE, stderr);
        return 2;
    }
    const char *path = argc >= 5 ? argv[4] : DEFAULT_DB_PATH;

    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK) {
        fail(db, "open");
        sqlite3_close(db);
        return 1;
    }
    struct mix_tally tally = {{0, 0, 0, YCSB_FNV_OFFSET_BASIS_64}, 0, 0, 0};
    int rc = mix_workload(db, w, records, ops, seed, &tally);
    if (sqlite3_close(db) != SQLITE_OK && rc == 0)
        rc = fail(db, "close");
    if (rc != 0)
        return 1;
    printf("ycsb: workload=%c records=%ld ops=%ld seed=%lu reads=%ld updates=%ld "
           "inserts=%ld scans=%ld rmws=%ld misses=%ld checksum=%016lx\n",
           w->name, records, ops, (unsigned long)seed, tally.base.reads, tally.base.updates,
           tally.inserts, tally.scans, tally.rmws, tally.base.misses,
           (unsigned long)tally.base.checksum);
    return 0;
}
