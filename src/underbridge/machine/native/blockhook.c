/* The block hook of the native accounting (machine/native_accounting.py).
 *
 * Unicorn calls ub_on_block at the entry of every translation block. It does, in C,
 * what Accounting.on_block does in Python: stop at the deadline, look the block up in
 * the table of the running address space, and add its static cost to the counters.
 * Python is called (ub_state.slow) only for a block not in the table (it decodes the
 * block once and inserts it) and for a block flagged `trap`, which holds a privileged
 * instruction the secure monitor may have to stop before.
 *
 * Invariants:
 *   - The counters here are the only copy while native accounting is on; Python reads
 *     and writes them through a ctypes mirror of ub_state (same field order).
 *   - A table entry is inserted or replaced only by Python (ub_table_put), never here.
 *   - The deadline is checked before the block is looked up, exactly as in Python: a
 *     block whose entry reaches the deadline is neither run nor counted.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define UB_EVENTS 8
#define UB_CATEGORIES 256

typedef struct {
    uint64_t address;
    uint64_t cycles;
    uint32_t size;
    uint32_t instructions;
    uint32_t category;
    uint16_t used;
    uint16_t trap;
    uint32_t has_events;
    uint32_t events[UB_EVENTS];
} ub_block;

typedef struct {
    ub_block *slots;
    uint64_t mask; /* capacity - 1; capacity is a power of two */
    uint64_t count;
} ub_table;

typedef int (*ub_slow_fn)(uint64_t address, uint32_t size);
typedef int (*ub_stop_fn)(void *uc);

typedef struct {
    uint64_t instructions;
    uint64_t block_cycles;
    uint64_t deadline;
    uint64_t deadline_reached;
    uint64_t counting;
    uint64_t events[UB_EVENTS];
    int64_t category_cycles[UB_CATEGORIES];
    ub_table *table;
    ub_slow_fn slow;
    ub_stop_fn stop;
} ub_state;

static uint64_t ub_hash(uint64_t address) {
    return (address * 0x9E3779B97F4A7C15ull) >> 17;
}

static ub_block *ub_find(const ub_table *table, uint64_t address) {
    uint64_t i = ub_hash(address) & table->mask;
    for (;;) {
        ub_block *slot = &table->slots[i];
        if (!slot->used)
            return NULL;
        if (slot->address == address)
            return slot;
        i = (i + 1) & table->mask;
    }
}

ub_table *ub_table_new(void) {
    ub_table *table = calloc(1, sizeof *table);
    if (table == NULL)
        return NULL;
    table->slots = calloc(256, sizeof *table->slots);
    if (table->slots == NULL) {
        free(table);
        return NULL;
    }
    table->mask = 255;
    return table;
}

void ub_table_free(ub_table *table) {
    if (table != NULL) {
        free(table->slots);
        free(table);
    }
}

void ub_table_clear(ub_table *table) {
    memset(table->slots, 0, (table->mask + 1) * sizeof *table->slots);
    table->count = 0;
}

static ub_block *ub_slot_for(ub_table *table, uint64_t address) {
    uint64_t i = ub_hash(address) & table->mask;
    while (table->slots[i].used && table->slots[i].address != address)
        i = (i + 1) & table->mask;
    return &table->slots[i];
}

static int ub_grow(ub_table *table) {
    uint64_t old_capacity = table->mask + 1;
    ub_block *old = table->slots;
    ub_block *slots = calloc(2 * old_capacity, sizeof *slots);
    if (slots == NULL)
        return -1;
    table->slots = slots;
    table->mask = 2 * old_capacity - 1;
    for (uint64_t i = 0; i < old_capacity; i++)
        if (old[i].used)
            *ub_slot_for(table, old[i].address) = old[i];
    free(old);
    return 0;
}

/* Insert or replace the entry of the block at `block->address`; 0 on success. */
int ub_table_put(ub_table *table, const ub_block *block) {
    if (2 * (table->count + 1) > table->mask + 1 && ub_grow(table) != 0)
        return -1;
    ub_block *slot = ub_slot_for(table, block->address);
    if (!slot->used)
        table->count++;
    *slot = *block;
    slot->used = 1;
    return 0;
}

void ub_on_block(void *uc, uint64_t address, uint32_t size, void *user_data) {
    ub_state *s = user_data;
    if (s->instructions >= s->deadline) {
        s->deadline_reached = 1;
        s->stop(uc);
        return;
    }
    ub_block *block = ub_find(s->table, address);
    if (block == NULL || block->size != size || block->trap) {
        if (s->slow(address, size))
            return; /* the monitor stopped the CPU before this block */
        block = ub_find(s->table, address);
        if (block == NULL || block->size != size)
            return; /* unreachable: Python inserted it; never count a guess */
    }
    s->instructions += block->instructions; /* the machine's clock even when not counting */
    if (!s->counting)
        return;
    s->block_cycles += block->cycles;
    s->category_cycles[block->category] += (int64_t)block->cycles;
    if (block->has_events)
        for (int i = 0; i < UB_EVENTS; i++)
            s->events[i] += block->events[i];
}
