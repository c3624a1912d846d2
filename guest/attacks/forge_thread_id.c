/* forge_thread_id: an in-kernel server tries to change the thread id that gates trust.
 *
 * The attack: a gate's return half lets a return through only if the save area's record
 * names the current thread, read from the kernel's current-thread word (argv[1];
 * kernel/ipc/underbridge.py CURRENT_THREAD_PAGE). A server that could write that word
 * could pose as the thread of a call in progress and forge its client's return. The word
 * is on a supervisor page that every ring-0 server may read (it holds nothing secret):
 * we read it, then write it.
 * Expected hardware response: the read works; the write takes #PF, write to a read-only
 * page (CR0.WP=1 makes ring 0 obey R/W); the kernel terminates us.
 * Checked by: tests/test_redteam.py::test_row[forge-thread-id].
 */
#include "attack.h"

int main(int argc, char **argv)
{
    unsigned long word = attack_arg(argc, argv, 1);
    unsigned long tid = *(volatile unsigned long *)word;
    ub_printf("the current-thread word says %lu\n", tid);
    return attack_write(word, tid + 1, "the current-thread word");
}
