/* ycsb.c: YCSB workload A on SQLite: load RECORDS rows in one transaction, then run
 * OPS operations (50% reads of all fields, 50% single-field updates, zipfian keys),
 * each in autocommit, and print one summary line.
 *
 *   usage: ycsb RECORDS OPS SEED [DBPATH]      (DBPATH defaults to /ycsb.db)
 *
 * The workload comes from ycsb_gen.h; src/underbridge/bench/ycsb_workload.py is its
 * Python twin and must print the same summary and leave the same rows. The database is
 * opened on the default VFS: SQLite's unix VFS on a host, the IPC VFS (ubvfs.c) in
 * underbridge. The table must not exist yet.
 *
 * ycsb_mark() is called four times: before the load, after its COMMIT, after the last
 * operation, and once more at once (so a marker's own cost can be subtracted).
 *
 * ycsb_progress counts records loaded plus operations done. It is plain memory, never
 * a syscall: the benchmark reads it out of the guest's memory for its progress bar, so
 * watching costs the guest nothing.
 *
 * Exit status: 0 on success, 1 on an SQLite error, 2 on bad usage (message on stderr).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "sqlite3.h"
#include "ycsb_gen.h"

#define DEFAULT_DB_PATH "/ycsb.db"

volatile long ycsb_progress; /* records loaded + operations done (read by the bench) */

static const char CREATE_SQL[] =
    "CREATE TABLE usertable (YCSB_KEY VARCHAR(255) PRIMARY KEY, "
    "FIELD0 TEXT, FIELD1 TEXT, FIELD2 TEXT, FIELD3 TEXT, FIELD4 TEXT, "
    "FIELD5 TEXT, FIELD6 TEXT, FIELD7 TEXT, FIELD8 TEXT, FIELD9 TEXT)";
static const char INSERT_SQL[] =
    "INSERT INTO usertable VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
static const char READ_SQL[] = "SELECT * FROM usertable WHERE YCSB_KEY = ?";
static const char *const UPDATE_SQL[YCSB_FIELD_COUNT] = {
    "UPDATE usertable SET FIELD0 = ? WHERE YCSB_KEY = ?",
    "UPDATE usertable SET FIELD1 = ? WHERE YCSB_KEY = ?",
    "UPDATE usertable SET FIELD2 = ? WHERE YCSB_KEY = ?",
    "UPDATE usertable SET FIELD3 = ? WHERE YCSB_KEY = ?",
    "UPDATE usertable SET FIELD4 = ? WHERE YCSB_KEY = ?",
    "UPDATE usertable SET FIELD5 = ? WHERE YCSB_KEY = ?",
    "UPDATE usertable SET FIELD6 = ? WHERE YCSB_KEY = ?",
    "UPDATE usertable SET FIELD7 = ? WHERE YCSB_KEY = ?",
    "UPDATE usertable SET FIELD8 = ? WHERE YCSB_KEY = ?",
    "UPDATE usertable SET FIELD9 = ? WHERE YCSB_KEY = ?",
};

/* Every prepared statement, prepared once and reset between uses. */
struct statements {
    sqlite3_stmt *insert;
    sqlite3_stmt *read;
    sqlite3_stmt *update[YCSB_FIELD_COUNT];
};

struct tally {
    long reads, updates, misses;
    uint64_t checksum;
};

/* Reports an SQLite failure; always returns -1 so callers can `return fail(...)`. */
static int fail(sqlite3 *db, const char *what)
{
    fprintf(stderr, "ycsb: %s: %s\n", what, db ? sqlite3_errmsg(db) : "out of memory");
    return -1;
}

/* A decimal count >= min into *out; 0 on success. */
static int parse_count(const char *text, long min, long *out)
{
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < min)
        return -1;
    *out = value;
    return 0;
}

/* A decimal uint64 (strtoull would silently wrap "-1"). */
static int parse_seed(const char *text, uint64_t *out)
{
    char *end;
    if (text[0] < '0' || text[0] > '9')
        return -1;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno != 0 || *end != '\0')
        return -1;
    *out = (uint64_t)value;
    return 0;
}

/* Runs one statement that returns no rows and resets it (bindings stay). */
static int step_done(sqlite3 *db, sqlite3_stmt *stmt, const char *what)
{
    int rc = sqlite3_step(stmt);
    sqlite3_reset(stmt);
    return rc == SQLITE_DONE ? 0 : fail(db, what);
}

static int prepare_all(sqlite3 *db, struct statements *st)
{
    if (sqlite3_prepare_v2(db, INSERT_SQL, -1, &st->insert, NULL) != SQLITE_OK)
        return fail(db, "prepare INSERT");
    if (sqlite3_prepare_v2(db, READ_SQL, -1, &st->read, NULL) != SQLITE_OK)
        return fail(db, "prepare SELECT");
    for (int f = 0; f < YCSB_FIELD_COUNT; f++)
        if (sqlite3_prepare_v2(db, UPDATE_SQL[f], -1, &st->update[f], NULL) != SQLITE_OK)
            return fail(db, "prepare UPDATE");
    return 0;
}

static void finalize_all(struct statements *st)
{
    sqlite3_finalize(st->insert);
    sqlite3_finalize(st->read);
    for (int f = 0; f < YCSB_FIELD_COUNT; f++)
        sqlite3_finalize(st->update[f]);
}

/* The load phase: every record, in keynum order, inside one transaction. The buffers
 * are bound SQLITE_STATIC: they outlive each step and are rebound before the next. */
static int load(sqlite3 *db, sqlite3_stmt *insert, struct ycsb_rng *rng, long records)
{
    char key[YCSB_KEY_MAX];
    char values[YCSB_FIELD_COUNT][YCSB_FIELD_LENGTH];

    if (sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        return fail(db, "BEGIN");
    for (long keynum = 0; keynum < records; keynum++) {
        int keylen = ycsb_key_name(keynum, key);
        int rc = sqlite3_bind_text(insert, 1, key, keylen, SQLITE_STATIC);
        for (int f = 0; f < YCSB_FIELD_COUNT; f++) {
            ycsb_next_value(rng, values[f]);
            if (rc == SQLITE_OK)
                rc = sqlite3_bind_text(insert, 2 + f, values[f], YCSB_FIELD_LENGTH,
                                       SQLITE_STATIC);
        }
        if (rc != SQLITE_OK)
            return fail(db, "bind INSERT");
        if (step_done(db, insert, "INSERT") != 0)
            return -1;
        ycsb_progress++;
    }
    if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        return fail(db, "COMMIT");
    return 0;
}

/* A READ: all ten fields (columns 1..10 of SELECT *) fold into the checksum. */
static int do_read(sqlite3 *db, sqlite3_stmt *read, const char *key, int keylen,
                   struct tally *tally)
{
    if (sqlite3_bind_text(read, 1, key, keylen, SQLITE_STATIC) != SQLITE_OK)
        return fail(db, "bind SELECT");
    int rc = sqlite3_step(read);
    tally->reads++;
    if (rc == SQLITE_ROW) {
        for (int col = 1; col <= YCSB_FIELD_COUNT; col++) {
            const unsigned char *text = sqlite3_column_text(read, col);
            int n = sqlite3_column_bytes(read, col); /* after column_text, as documented */
            tally->checksum = ycsb_fnv1a_fold(tally->checksum, text, n);
        }
        rc = sqlite3_step(read); /* the key is unique: this must end the result */
    } else if (rc == SQLITE_DONE) {
        tally->misses++;
    }
    sqlite3_reset(read);
    return rc == SQLITE_DONE ? 0 : fail(db, "SELECT");
}

static int do_update(sqlite3 *db, sqlite3_stmt *update, const struct ycsb_op *op,
                     const char *key, int keylen, struct tally *tally)
{
    if (sqlite3_bind_text(update, 1, op->value, YCSB_FIELD_LENGTH, SQLITE_STATIC) !=
            SQLITE_OK ||
        sqlite3_bind_text(update, 2, key, keylen, SQLITE_STATIC) != SQLITE_OK)
        return fail(db, "bind UPDATE");
    tally->updates++;
    return step_done(db, update, "UPDATE");
}

/* The run phase: ops operations, each its own (autocommit) transaction. */
static int run(sqlite3 *db, struct statements *st, struct ycsb_rng *rng, long records,
               long ops, struct tally *tally)
{
    struct ycsb_zipf zipf;
    struct ycsb_op op;
    char key[YCSB_KEY_MAX];

    ycsb_zipf_init(&zipf);
    for (long i = 0; i < ops; i++) {
        ycsb_next_op(rng, &zipf, records, &op);
        int keylen = ycsb_key_name(op.keynum, key);
        int rc = op.kind == YCSB_READ
                     ? do_read(db, st->read, key, keylen, tally)
                     : do_update(db, st->update[op.field], &op, key, keylen, tally);
        if (rc != 0)
            return -1;
        ycsb_progress++;
    }
    return 0;
}

/* Table, load, run, with the four markers; 0 or -1 (already reported). */
static int workload(sqlite3 *db, long records, long ops, uint64_t seed,
                    struct tally *tally)
{
    struct statements st = {0};
    struct ycsb_rng rng;
    int rc = -1;

    ycsb_rng_seed(&rng, seed);
    if (sqlite3_exec(db, CREATE_SQL, NULL, NULL, NULL) != SQLITE_OK) {
        fail(db, "CREATE TABLE");
    } else if (prepare_all(db, &st) == 0) {
        ycsb_mark(); /* m0: load begins */
        if (load(db, st.insert, &rng, records) == 0) {
            ycsb_mark(); /* m1: load committed */
            if (run(db, &st, &rng, records, ops, tally) == 0) {
                ycsb_mark(); /* m2: last operation done */
                ycsb_mark(); /* m3: a marker's own cost is m3 - m2 */
                rc = 0;
            }
        }
    }
    finalize_all(&st); /* finalizing NULL is a no-op */
    return rc;
}

int main(int argc, char **argv)
{
    long records, ops;
    uint64_t seed;
    if ((argc != 4 && argc != 5) || parse_count(argv[1], 1, &records) != 0 ||
        parse_count(argv[2], 0, &ops) != 0 || parse_seed(argv[3], &seed) != 0) {
        fprintf(stderr, "usage: ycsb RECORDS OPS SEED [DBPATH]\n"
                        "  RECORDS >= 1, OPS >= 0, SEED a decimal uint64\n");
        return 2;
    }
    const char *path = argc == 5 ? argv[4] : DEFAULT_DB_PATH;

    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK) {
        fail(db, "open");
        sqlite3_close(db);
        return 1;
    }
    struct tally tally = {0, 0, 0, YCSB_FNV_OFFSET_BASIS_64};
    int rc = workload(db, records, ops, seed, &tally);
    if (sqlite3_close(db) != SQLITE_OK && rc == 0)
        rc = fail(db, "close");
    if (rc != 0)
        return 1;
    printf("ycsb: records=%ld ops=%ld seed=%lu reads=%ld updates=%ld misses=%ld "
           "checksum=%016lx\n",
           records, ops, (unsigned long)seed, tally.reads, tally.updates, tally.misses,
           (unsigned long)tally.checksum);
    return 0;
}
