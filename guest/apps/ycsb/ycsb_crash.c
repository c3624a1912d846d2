/* ycsb_crash.c: YCSB-A on SQLite for `underbridge bench crash`: the records and
 * operations of ycsb.c (ycsb_gen.h, the same stream), run while the bench kills the
 * storage servers under it. An operation that fails does not end the run: the program
 * notes it, closes the database and opens it again (SQLite's next open rolls back what
 * a hot journal holds), and goes on with the next operation.
 *
 *   usage: ycsb_crash RECORDS OPS SEED [DBPATH]   (DBPATH defaults to /ycsb.db)
 *
 * The ledger, on stdout, is what the bench checks the database against:
 *   "ycsb-crash: failed OP" for every UPDATE whose statement did not return SQLITE_DONE
 *   (OP counts from 0); every other UPDATE returned, so the application saw it commit;
 *   "ycsb-crash: done ops=N updates=U failed=F read_failures=R reopens=O" at the end.
 * The load (one transaction) is retried from the start of its stream until it commits;
 * it never counts as an operation.
 *
 * ycsb_progress counts records loaded plus operations done, as in ycsb.c, and
 * ycsb_succeeded the operations that returned success: the bench reads both out of
 * memory (a crash's recovery ends when the next operation succeeds).
 * Exit status: 0 when the run reached its end, 1 when the database could not be opened
 * again (REOPEN_TRIES times), 2 on bad usage.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ycsb_db.h"

#define REOPEN_TRIES 1000

volatile long ycsb_progress;
volatile long ycsb_succeeded;

struct db {
    const char *path;
    sqlite3 *handle;
    struct statements st;
    long reopens;
};

static void db_close(struct db *db)
{
    finalize_all(&db->st);
    memset(&db->st, 0, sizeof db->st);
    sqlite3_close(db->handle); /* all statements are gone, so it closes */
    db->handle = NULL;
}

/* Open the database, make the table if it is missing, prepare: 0, or -1. */
static int db_open_once(struct db *db)
{
    if (sqlite3_open_v2(db->path, &db->handle, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                        NULL) != SQLITE_OK ||
        sqlite3_exec(db->handle, "CREATE TABLE IF NOT EXISTS usertable (YCSB_KEY VARCHAR(255) "
                                 "PRIMARY KEY, FIELD0 TEXT, FIELD1 TEXT, FIELD2 TEXT, FIELD3 TEXT, "
                                 "FIELD4 TEXT, FIELD5 TEXT, FIELD6 TEXT, FIELD7 TEXT, FIELD8 "
                                 "TEXT, FIELD9 TEXT)",
                     NULL, NULL, NULL) != SQLITE_OK ||
        prepare_all(db->handle, &db->st) != 0) {
        db_close(db);
        return -1;
    }
    return 0;
}

/* (Re)open until it works: the servers may be restarting under us. */
static int db_open(struct db *db)
{
    if (db->handle != NULL) {
        db_close(db);
        db->reopens++;
    }
    for (int tries = 0; tries < REOPEN_TRIES; tries++)
        if (db_open_once(db) == 0)
            return 0;
    return -1;
}

/* Rows in the table, or -1. */
static long row_count(struct db *db)
{
    sqlite3_stmt *count;
    long rows = -1;

    if (sqlite3_prepare_v2(db->handle, "SELECT count(*) FROM usertable", -1, &count, NULL) !=
        SQLITE_OK)
        return -1;
    if (sqlite3_step(count) == SQLITE_ROW)
        rows = sqlite3_column_int64(count, 0);
    sqlite3_finalize(count);
    return rows;
}

/* The load, one transaction, unless an earlier try committed it (its COMMIT may have
 * reported a failure after the journal was gone); a failed try is rolled back by the
 * next open. 0 once the table holds every record. */
static int load_once(struct db *db, struct ycsb_rng *rng, long records)
{
    long rows = row_count(db);

    if (rows == records)
        return 0;
    if (rows != 0)
        return -1;
    return load(db->handle, db->st.insert, rng, records);
}

static int do_update(struct db *db, const struct ycsb_op *op, const char *key, int keylen)
{
    sqlite3_stmt *update = db->st.update[op->field];
    if (sqlite3_bind_text(update, 1, op->value, YCSB_FIELD_LENGTH, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_text(update, 2, key, keylen, SQLITE_STATIC) != SQLITE_OK)
        return -1;
    int rc = sqlite3_step(update);
    sqlite3_reset(update);
    return rc == SQLITE_DONE ? 0 : -1;
}

static int do_read(struct db *db, const char *key, int keylen)
{
    sqlite3_stmt *read = db->st.read;
    if (sqlite3_bind_text(read, 1, key, keylen, SQLITE_STATIC) != SQLITE_OK)
        return -1;
    int rc = sqlite3_step(read);
    while (rc == SQLITE_ROW)
        rc = sqlite3_step(read);
    sqlite3_reset(read);
    return rc == SQLITE_DONE ? 0 : -1;
}

int main(int argc, char **argv)
{
    long records, ops;
    uint64_t seed;
    if (argc < 4 || argc > 5 || parse_count(argv[1], 1, &records) != 0 ||
        parse_count(argv[2], 0, &ops) != 0 || parse_seed(argv[3], &seed) != 0) {
        fputs("usage: ycsb_crash RECORDS OPS SEED [DBPATH]\n", stderr);
        return 2;
    }
    struct db db = {.path = argc == 5 ? argv[4] : DEFAULT_DB_PATH};
    struct ycsb_rng rng, at_load;
    struct ycsb_zipf zipf;
    ycsb_rng_seed(&rng, seed);
    ycsb_zipf_init(&zipf);

    if (db_open(&db) != 0)
        return 1;
    at_load = rng;
    while (load_once(&db, &rng, records) != 0) { /* from the start of its stream again */
        rng = at_load;
        ycsb_progress = 0;
        if (db_open(&db) != 0)
            return 1;
    }
    long updates = 0, failed = 0, read_failures = 0;
    struct ycsb_op op;
    char key[YCSB_KEY_MAX];
    for (long i = 0; i < ops; i++) {
        ycsb_next_op(&rng, &zipf, records, &op);
        int keylen = ycsb_key_name(op.keynum, key);
        int rc;
        if (op.kind == YCSB_READ) {
            rc = do_read(&db, key, keylen);
            read_failures += rc != 0;
        } else {
            updates++;
            rc = do_update(&db, &op, key, keylen);
            if (rc != 0) {
                failed++;
                printf("ycsb-crash: failed %ld\n", i);
            }
        }
        ycsb_progress++;
        ycsb_succeeded += rc == 0;
        if (rc != 0 && db_open(&db) != 0)
            return 1;
    }
    db_close(&db);
    printf("ycsb-crash: done ops=%ld updates=%ld failed=%ld read_failures=%ld reopens=%ld\n",
           ops, updates, failed, read_failures, db.reopens);
    return 0;
}
