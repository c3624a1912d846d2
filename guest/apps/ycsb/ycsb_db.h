/* ycsb_db.h: the SQLite side every workload shares: the table, the statements, the
 * load phase and the tally. Included by ycsb.c (workload A) and ycsb_mix.c (B-F), each
 * compiling its own copy, so that adding workloads left A's translation unit, and the
 * code gcc makes of A's loop, as it was when A's figures were measured.
 *
 * The statements are YCSB's JDBC binding's (DefaultDBFlavor), prepared once; every
 * value buffer is bound SQLITE_STATIC and outlives the step it is bound for.
 */
#ifndef YCSB_DB_H
#define YCSB_DB_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "sqlite3.h"
#include "ycsb_mix.h"

extern volatile long ycsb_progress; /* records loaded + operations done (ycsb.c) */

#define DEFAULT_DB_PATH "/ycsb.db"
#define YCSB_USAGE                                                                       \
    "usage: ycsb RECORDS OPS SEED [DBPATH [WORKLOAD]]\n"                                 \
    "  RECORDS >= 1, OPS >= 0, SEED a decimal uint64, WORKLOAD a..f (default a)\n"

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
__attribute__((noinline)) static int load(sqlite3 *db, sqlite3_stmt *insert,
                                          struct ycsb_rng *rng, long records)
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

/* ycsb_mix.c: whether WORKLOAD names workload A; main for any other WORKLOAD (a whole
 * run, or the usage for a bad letter), with argc == 6. */
int ycsb_runs_a(const char *name);
int ycsb_mix_main(int argc, char **argv);

#endif /* YCSB_DB_H */
