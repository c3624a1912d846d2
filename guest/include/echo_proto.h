/* echo_proto.h: the protocol of the echo server (guest/servers/echo).
 *
 * A request's mr[0] is the operation; the reply's registers depend on it.
 */
#ifndef ECHO_PROTO_H
#define ECHO_PROTO_H

#include "ub_syscall.h"

#define ECHO_SERVICE "echo" /* the default service name */

/* Reply mr[0..3] = request mr[0..3], unchanged (mr[0] is ECHO_REGS). */
#define ECHO_REGS 0

/* Reverse the first n = mr[1] bytes of the shared buffer in place. n is capped at
 * ECHO_BUF_MAX (a negative n counts as 0). Reply mr[0] = 0, mr[1] = bytes reversed,
 * mr[2..3] unchanged. */
#define ECHO_BUF 1
#define ECHO_BUF_MAX UB_IPC_BUFFER_SIZE  /* the whole shared buffer */

/* Any other operation: reply mr[0] = -UB_EINVAL. */

#endif
