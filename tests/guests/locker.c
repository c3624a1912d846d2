/* locker: a test client of the fs server (tests/fs/test_close_notifications.py).
 *
 * usage: locker hold NAME   opens NAME (creating it), locks it EXCLUSIVE, prints
 *                           "hold = <status>" and exits WITHOUT closing it;
 *        locker try NAME    opens NAME, asks for a SHARED lock, prints "try = <status>"
 *                           (-16, FS_EBUSY, while another connection holds EXCLUSIVE),
 *                           closes it and exits.
 */
#include "ub.h"
#include "ub_fs.h"
#include "ub_ipc.h"

static long call(struct ub_conn *c, long op, long a, long b)
{
    long mr[4] = {op, a, b, 0};
    long r = ub_ipc_call(c, mr);
    return r < 0 ? r : mr[0] < 0 ? mr[0] : mr[1];
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    struct ub_conn fs;
    if (ub_ipc_connect(FS_SERVICE, &fs) < 0)
        return 1;
    memcpy(fs.buf, argv[2], strlen(argv[2]) + 1);
    long handle = call(&fs, FS_OPEN, FS_O_CREATE, 0);
    if (handle < 0) {
        ub_printf("open = %ld\n", handle);
        return 1;
    }
    if (ub_streq(argv[1], "hold")) {
        long r = call(&fs, FS_LOCK, handle, FS_LOCK_SHARED);
        if (r >= 0)
            r = call(&fs, FS_LOCK, handle, FS_LOCK_RESERVED);
        if (r >= 0)
            r = call(&fs, FS_LOCK, handle, FS_LOCK_EXCLUSIVE);
        ub_printf("hold = %ld\n", r);
        return 0; /* no FS_CLOSE: ending closes the connection */
    }
    ub_printf("try = %ld\n", call(&fs, FS_LOCK, handle, FS_LOCK_SHARED));
    call(&fs, FS_CLOSE, handle, 0);
    return 0;
}
