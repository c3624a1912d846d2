/* crt0.S: process entry point of every underbridge guest program.
 *
 * The kernel enters _start in ring 3 with RSP pointing at the SysV initial stack:
 *
 *     RSP ->  argc            (8 bytes)
 *             argv[0..argc-1] (8 bytes each)
 *             NULL
 *             (envp and auxv may be absent)
 *
 * _start clears RBP (the outermost frame for debuggers and backtraces), passes argc
 * in RDI and &argv[0] in RSI, aligns RSP to 16 bytes so that main is entered with the
 * ABI's RSP % 16 == 8, calls main and hands its int result, sign-extended, to ub_exit.
 */
    .text
    .globl  _start
    .type   _start, @function
_start:
    xorl    %ebp, %ebp
    movq    (%rsp), %rdi        /* argc */
    leaq    8(%rsp), %rsi       /* argv = &argv[0] */
    andq    $-16, %rsp
    call    main
    movslq  %eax, %rdi          /* main returns int: sign-extend to long */
    call    ub_exit
    ud2                         /* ub_exit never returns */
    .size   _start, . - _start

    .section .note.GNU-stack, "", @progbits
