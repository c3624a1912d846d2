"""The rewriter: hidden PKRU writers out of real gcc output, port I/O into calls.

Programs are C guests built by the project's toolchain with the patterns planted on
purpose in ordinary code (constants, an array offset, a RIP-relative address, two
instructions side by side). Each is scanned, rewritten, scanned again, and run before
and after under the kernel (ring 3, where the originals are harmless): output and exit
status must be identical. Port I/O is checked at the machine level, against fake
routines assembled beside the rewritten code.
"""

from __future__ import annotations

import io
import struct

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import given, settings
from hypothesis import strategies as st

from underbridge.bridge.rewrite import JMP_LEN, IoRoutines, RewriteRefused, rewrite_elf
from underbridge.bridge.scan import scan_elf
from underbridge.elf.image import PAGE_SIZE, parse_elf
from underbridge.errors import ElfError, UserError
from underbridge.guestbuild.asm import assemble
from underbridge.guestbuild.toolchain import build_program
from underbridge.kernel.kernel import Kernel
from underbridge.kernel.loader import map_image
from underbridge.machine.context import Reg
from underbridge.machine.cpu import ExitKind, Machine
from underbridge.machine.faults import GENERAL_PROTECTION

from ..machine.conftest import STACK_TOP, USER_RW, Scratch

# ---- programs ------------------------------------------------------------------------

CONSTANTS = r"""
#include "ub.h"

/* An array offset whose displacement holds 0f 01 ef: movzx eax, byte [rdi + 0xef010f] */
__attribute__((noipa)) unsigned peek(const unsigned char *p) { return p[0xef010f]; }

/* A RIP-relative lea 0xef010f bytes ahead, and a wrpkru across two instructions
   (b0 0f | 01 ef), written the way a compiler could have. */
extern unsigned long rip_far(void);
extern unsigned span_two(unsigned a, unsigned b);
__asm__(".pushsection .text\n"
        ".globl rip_far\nrip_far:\n\tleaq 0xef010f(%rip), %rax\n\tret\n"
        ".globl span_two\nspan_two:\n\tpushq %rbp\n\tmovl %esi, %ebp\n\tmovb $0x0f, %al\n"
        "\taddl %ebp, %edi\n\tmovzbl %al, %eax\n\taddl %edi, %eax\n\tpopq %rbp\n\tret\n"
        ".popsection\n");

static const unsigned char text[] = "rewriting keeps meaning";

int main(int argc, char **argv)
{
    (void)argv;
    volatile unsigned x = 0x90ef010fu;            /* mov dword [rsp], imm32 */
    ub_printf("x*3 = %u\n", x * 3);
    volatile unsigned long y = 0x5544ef010f332211ul;  /* movabs */
    ub_printf("y = %lx\n", y);
    volatile unsigned z = 0x9028ae0fu;            /* xrstor [rax] in an imm32 */
    ub_printf("z^argc = %x\n", z ^ (unsigned)argc);
    ub_printf("peek = %c\n", peek(text - 0xef010f + 3));
    ub_printf("rip_far = %lx\n", rip_far() - (unsigned long)rip_far);
    ub_printf("span = %u\n", span_two(40, 2));
    return 7;
}
"""

PORT_IO = r"""
#include "ub.h"

static inline unsigned char inb(unsigned short port)
{
    unsigned char value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static inline void outb(unsigned short port, unsigned char value)
{
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

__attribute__((noipa)) unsigned char port_in(unsigned short port) { return inb(port); }
__attribute__((noipa)) unsigned port_in_plus(unsigned short port) { return inb(port) ^ 0x11u; }
__attribute__((noipa)) void port_out(unsigned short port, unsigned char v) { outb(port, v); }

int main(void)
{
    port_out(0x3f8, 'A');
    return port_in(0x3f8) + port_in_plus(0x60);
}
"""

VALUE = r"""
#include "ub.h"

extern unsigned value(void);
__asm__(".pushsection .text\n.globl value\n.p2align 4\n"
        "value:\n\tmovl $0x11223344, %eax\n\tret\n.popsection\n");

int main(void)
{
    ub_printf("%x\n", value());
    return (int)(value() & 0x7f);
}
"""


def asm_program(asm: str, main: str = "return 0;") -> str:
    lines = "".join(f'    "{line}\\n"\n' for line in asm.splitlines())
    return (
        f'#include "ub.h"\n__asm__(".pushsection .text\\n"\n{lines}    ".popsection\\n");\n'
        f"int main(void) {{ {main} }}\n"
    )


def build(tmp_path_factory, name: str, source: str, base: int) -> bytes:
    path = tmp_path_factory.mktemp("rewrite") / f"{name}.c"
    path.write_text(source)
    return build_program(path, base=base).read_bytes()


def run(data: bytes, argv: list[str]) -> tuple[str, int | None, bytes]:
    kernel = Kernel(Machine(), ipc="sel4")
    process = kernel.spawn(data, argv)
    kernel.run()
    return process.state.name, process.exit_status, bytes(process.console)


def symbols(data: bytes) -> dict[str, int]:
    symtab = ELFFile(io.BytesIO(data)).get_section_by_name(".symtab")
    return {sym.name: sym["st_value"] for sym in symtab.iter_symbols() if sym.name}


def file_offset(data: bytes, vaddr: int) -> int:
    for segment in parse_elf(data).segments:
        if segment.vaddr <= vaddr < segment.vaddr + len(segment.data):
            return segment.file_offset + vaddr - segment.vaddr
    raise AssertionError(hex(vaddr))


@pytest.fixture(scope="module")
def constants(tmp_path_factory) -> bytes:
    return build(tmp_path_factory, "constants", CONSTANTS, 0x400000)


@pytest.fixture(scope="module")
def constants_rewritten(constants):
    return rewrite_elf(constants, name="constants")


# ---- hidden PKRU writers ------------------------------------------------------------------


def test_the_planted_occurrences_are_there_and_gone_after_rewriting(constants, constants_rewritten):
    before = scan_elf(constants).pkru_writers
    assert sorted(f.kind for f in before) == ["wrpkru"] * 5 + ["xrstor"]
    assert not any(f.aligned for f in before)
    assert scan_elf(constants_rewritten.data).pkru_writers == ()
    removed = {why for change in constants_rewritten.changes for why in change.why}
    assert removed == {f"{f.kind} at {f.vaddr:#x} (hidden)" for f in before}
    forms = " ".join(line for change in constants_rewritten.changes for line in change.how)
    for form in ("imm via scratch", "imm split", "disp split", "RIP disp re-based", "copied"):
        assert form in forms, forms


def test_the_rewritten_program_behaves_the_same(constants, constants_rewritten):
    original = run(constants, ["constants"])
    rewritten = run(constants_rewritten.data, ["constants"])
    assert original[:2] == ("EXITED", 7)
    assert b"y = 5544ef010f332211\n" in original[2] and b"peek = r\n" in original[2]
    assert rewritten == original


def test_only_the_patched_sites_and_the_program_headers_change(constants, constants_rewritten):
    old, new = constants, constants_rewritten.data
    changed = set(range(0x20, 0x28)) | set(range(0x38, 0x3A))  # e_phoff, e_phnum
    for change in constants_rewritten.changes:
        assert old[change.offset : change.offset + len(change.original)] == change.original
        assert new[change.offset : change.offset + len(change.patch)] == change.patch
        changed |= set(range(change.offset, change.offset + len(change.original)))
        rel = struct.unpack("<i", change.patch[1:5])[0]
        assert change.patch[0] == 0xE9 and change.vaddr + JMP_LEN + rel == change.trampoline
        assert set(change.patch[JMP_LEN:]) <= {0xCC}
    assert all(old[i] == new[i] for i in range(len(old)) if i not in changed)


def test_the_trampolines_sit_in_one_new_rx_segment_after_the_others(constants, constants_rewritten):
    before, after = parse_elf(constants).segments, parse_elf(constants_rewritten.data).segments

    def layout(segment):  # (the first segment's bytes hold the ELF header: e_phoff changed)
        return segment.vaddr, segment.memsz, segment.writable, segment.executable

    assert [layout(s) for s in after[:-1]] == [layout(s) for s in before]
    new = after[-1]
    assert new.executable and not new.writable
    assert new.vaddr == -(-max(s.end for s in before) // PAGE_SIZE) * PAGE_SIZE
    for change in constants_rewritten.changes:
        at = change.trampoline - new.vaddr
        assert new.data[at : at + len(change.code)] == change.code


def test_a_clean_program_is_returned_as_it_is(hello_elf):
    data = hello_elf.read_bytes()
    result = rewrite_elf(data, name="hello")
    assert result.data == data and result.changes == ()


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    pattern=st.sampled_from([b"\x0f\x01\xef", b"\x0f\xae\x28", b"\x0f\xc7\x1f"]),
    position=st.integers(0, 1),
    other=st.integers(0, 0xFF),
)
def test_any_immediate_holding_a_pattern_is_rewritten_faithfully(
    value_program, pattern, position, other
):
    data, at = value_program
    imm_bytes = bytes([other]) + pattern if position else pattern + bytes([other])
    imm = int.from_bytes(imm_bytes, "little")
    planted = data[:at] + imm_bytes + data[at + 4 :]
    assert len(scan_elf(planted).pkru_writers) >= 1
    rewritten = rewrite_elf(planted, name="value").data
    assert scan_elf(rewritten).pkru_writers == ()
    expected = ("EXITED", imm & 0x7F, f"{imm:x}\n".encode())
    assert run(planted, ["value"]) == expected
    assert run(rewritten, ["value"]) == expected


@pytest.fixture(scope="module")
def value_program(tmp_path_factory) -> tuple[bytes, int]:
    """The VALUE program and the file offset of its `mov eax, imm32` immediate."""
    data = build(tmp_path_factory, "value", VALUE, 0x800000)
    at = file_offset(data, symbols(data)["value"]) + 1
    assert data[at - 1 : at + 4] == bytes.fromhex("b844332211")
    return data, at


# ---- refusals ------------------------------------------------------------------------------


def test_an_aligned_wrpkru_is_refused(tmp_path_factory):
    data = build(
        tmp_path_factory,
        "aligned",
        '#include "ub.h"\nint main(void) {\n'
        '    __asm__ volatile("wrpkru" :: "a"(0), "c"(0), "d"(0));\n    return 0;\n}\n',
        0x400000,
    )
    (finding,) = scan_elf(data).pkru_writers
    with pytest.raises(
        RewriteRefused,
        match=f"wrpkru at {finding.vaddr:#x} is an aligned "
        "instruction: the program itself writes PKRU",
    ) as refused:
        rewrite_elf(data, name="aligned")
    assert isinstance(refused.value, UserError)


def test_a_pattern_spanning_a_jump_target_is_refused(tmp_path_factory):
    data = build(
        tmp_path_factory,
        "span_target",
        asm_program(
            ".globl loop_it\nloop_it:\n\tmovb $0x0f, %al\n.globl inner\ninner:\n\taddl %ebp, %edi\n"
            "\tdecl %esi\n\tjnz inner\n\tret"
        ),
        0x400000,
    )
    inner = symbols(data)["inner"]
    with pytest.raises(
        RewriteRefused,
        match=f"{inner:#x}, a possible jump target, lies strictly inside the range to patch",
    ):
        rewrite_elf(data, name="span_target")


def test_a_jump_computed_into_an_immediate_is_refused(tmp_path_factory):
    # pkru_writer.c's hidden variant: lea of an address inside a movabs, then jmp *%rbx.
    data = build(
        tmp_path_factory,
        "computed_jump",
        asm_program(
            ".globl hop\nhop:\n\tleaq 1f+2(%rip), %rbx\n\tjmp *%rbx\n"
            "1:\tmovabs $0x9090909090ef010f, %rax\n\tret"
        ),
        0x400000,
    )
    with pytest.raises(RewriteRefused, match="a possible jump target, lies strictly inside"):
        rewrite_elf(data, name="computed_jump")


def test_an_occurrence_in_too_short_a_run_is_refused(tmp_path_factory):
    data = build(
        tmp_path_factory,
        "too_short",
        asm_program(
            ".globl short_run\nshort_run:\n\tmovb $0x0f, %al\n\taddl %ebp, %edi\n\tjnz short_run\n"
            "\tret"
        ),
        0x400000,
    )
    with pytest.raises(
        RewriteRefused, match="occurrence inside a 4-byte instruction sequence too short to patch"
    ):
        rewrite_elf(data, name="too_short")


def test_a_pattern_in_a_branch_is_refused():
    # call rel32 whose displacement is 0f 01 ef 00: hand-built, gcc never emits one
    code = b"\xe8\x0f\x01\xef\x00" + b"\xc3"
    with pytest.raises(RewriteRefused, match="a branch whose meaning depends on where it is"):
        rewrite_elf(make_elf(0x400000, code), name="call")


def test_bad_input_is_an_elf_error():
    with pytest.raises(ElfError):
        rewrite_elf(b"not an elf" * 10, name="junk")


# ---- port I/O ---------------------------------------------------------------------------------

ROUTINES_AT, DATA_AT = 0x50_0000, 0x60_0000
ROUTINES = f"""
inb: mov al, 0x5a
     ret
.p2align 4, 0xcc
outb: mov byte ptr [{DATA_AT:#x}], al
     mov word ptr [{DATA_AT + 2:#x}], dx
     ret
"""
IO = IoRoutines(inb=ROUTINES_AT, outb=ROUTINES_AT + 0x10)


@pytest.fixture(scope="module")
def port_io(tmp_path_factory) -> bytes:
    return build(tmp_path_factory, "port_io", PORT_IO, 0x100_0000)


def call_in(scratch: Scratch, driver_at: int, function: int, *args: int):
    """Run `function(args...)` in ring 3 from a driver page; the Exit and the context."""
    setup = "".join(
        f"mov {reg}, {arg:#x}\n" for reg, arg in zip(("edi", "esi"), args, strict=False)
    )
    scratch.code(f"{setup}mov rax, {function:#x}\ncall rax\nsyscall", vaddr=driver_at)
    context = scratch.context(rip=driver_at)
    return scratch.machine.run(context), context


def test_port_io_becomes_calls_of_the_routines(port_io):
    assert sorted(f.kind for f in scan_elf(port_io).privileged) == [
        "privileged:in",
        "privileged:in",
        "privileged:out",
    ]
    result = rewrite_elf(port_io, name="port_io", io_routines=IO)
    assert scan_elf(result.data).privileged == ()
    assert all(
        line.endswith(("call inb", "call outb"))
        for change in result.changes
        for line in change.how
        if ": in " in line or ": out " in line
    )
    where = symbols(port_io)
    machine = Machine()
    table = machine.new_page_table()
    try:
        scratch = Scratch(machine, table)
        map_image(machine, table, parse_elf(result.data))
        scratch.code(ROUTINES, vaddr=ROUTINES_AT)
        data_frame = scratch.page(DATA_AT, USER_RW)
        scratch.page(STACK_TOP - PAGE_SIZE, USER_RW)

        exit_, context = call_in(scratch, 0x40_0000, where["port_in"], 0x3F8)
        assert exit_.kind is ExitKind.SYSCALL and context[Reg.RAX] & 0xFF == 0x5A
        exit_, context = call_in(scratch, 0x40_1000, where["port_in_plus"], 0x60)
        assert exit_.kind is ExitKind.SYSCALL and context[Reg.RAX] == 0x5A ^ 0x11
        exit_, context = call_in(scratch, 0x40_2000, where["port_out"], 0x3F8, ord("A"))
        assert exit_.kind is ExitKind.SYSCALL
        assert machine.mem.read(data_frame, 4) == b"A\x00\xf8\x03"
    finally:
        machine.destroy_page_table(table)


def test_the_original_port_io_faults_in_ring3(port_io):
    machine = Machine()
    table = machine.new_page_table()
    try:
        scratch = Scratch(machine, table)
        map_image(machine, table, parse_elf(port_io))
        scratch.page(STACK_TOP - PAGE_SIZE, USER_RW)
        exit_, _ = call_in(scratch, 0x40_0000, symbols(port_io)["port_in"], 0x3F8)
        assert exit_.kind is ExitKind.FAULT and exit_.fault.vector == GENERAL_PROTECTION
        assert exit_.fault.instruction.startswith("in")
    finally:
        machine.destroy_page_table(table)


def test_port_io_is_left_alone_without_routines(port_io):
    assert rewrite_elf(port_io, name="port_io").changes == ()


def test_other_port_io_forms_are_refused(tmp_path_factory):
    data = build(
        tmp_path_factory,
        "port_imm",
        asm_program(".globl post\npost:\n\tmovb $0x42, %al\n\toutb %al, $0x80\n\tret"),
        0x400000,
    )
    with pytest.raises(
        RewriteRefused,
        match=r"port I/O `out 0x80, al` at 0x[0-9a-f]+: only "
        r"`in al, dx` and `out dx, al`",
    ):
        rewrite_elf(data, name="port_imm", io_routines=IO)


# ---- a hand-built ELF ----------------------------------------------------------------------


def make_elf(vaddr: int, code: bytes) -> bytes:
    """A static ET_EXEC with one R+X PT_LOAD holding `code` at `vaddr`, entry there."""
    header = bytearray(0x1000)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header[:64] = ident + struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, vaddr, 64, 0, 0, 64, 56, 1, 64, 0, 0
    )
    header[64:120] = struct.pack(
        "<IIQQQQQQ", 1, 5, 0x1000, vaddr, vaddr, len(code), len(code), 0x1000
    )
    return bytes(header) + code


def test_trampolines_keep_rip_relative_and_absolute_meaning():
    # A hand-built program: lea rax, [rip + disp] holding the pattern, then syscall.
    code = assemble("lea rax, [rip + 0xef010f]\nmov ebx, 0x90ef010f\nsyscall", origin=0x400000)
    data = make_elf(0x400000, code)
    result = rewrite_elf(data, name="hand")
    assert scan_elf(result.data).pkru_writers == ()
    registers = []
    for program in (data, result.data):
        machine = Machine()
        table = machine.new_page_table()
        map_image(machine, table, parse_elf(program))
        Scratch(machine, table).page(STACK_TOP - PAGE_SIZE, USER_RW)
        context = machine.new_context(ring=3, page_table=table, rip=0x400000, rsp=STACK_TOP)
        assert machine.run(context).kind is ExitKind.SYSCALL
        registers.append((context[Reg.RAX], context[Reg.RBX]))
        machine.destroy_page_table(table)
    assert registers[0] == (0x400007 + 0xEF010F, 0x90EF010F)
    assert registers[1] == registers[0]


# ---- every form, instruction by instruction ------------------------------------------------

FORM_DATA = 0x60_0000
FORM_SETUP = f"""mov eax, 0x12345678
mov ecx, 0x9abcdef0
mov edx, 0x55
mov rbx, 0x1000
mov rsi, 3
mov rdi, {FORM_DATA:#x}
mov rbp, {FORM_DATA + 0x100 - 0xEF010F:#x}
mov r8, {FORM_DATA + 0x40 - 0x1FC70F:#x}
xor r11d, r11d
stc
"""
FORMS = [  # (instruction holding a pattern, the form it must take)
    ("add dword ptr [rsp + 8], 0x90ef010f", "imm via scratch"),
    ("cmp eax, 0x9028ae0f", "imm via scratch"),
    ("adc eax, 0x1fc70f33", "imm via scratch"),
    ("sub rbx, 0x6bae0f", "imm via scratch"),
    ("test ecx, 0xef010f00", "imm via scratch"),
    ("or dword ptr [rdi + rsi*4 + 8], 0x90ef010f", "imm via scratch"),
    ("mov qword ptr [rsp + 16], 0x28ae0f", "imm via scratch"),
    ("mov r12d, 0x90ef010f", "imm split"),
    ("mov r13, 0x7fef010f", "imm split"),
    ("movabs r14, 0xef010f00001234", "imm split"),
    ("push 0x28ae0f\npop r10", "push split"),
    ("mov rdx, qword ptr [rbp + 0xef010f]", "disp split"),
    ("cmp word ptr [rbp + 0xef010f], 0x1234", "disp split"),
    ("mov ah, byte ptr [rbp + 0xef010f]", "disp split"),
    ("movzx eax, byte ptr [r8 + r11*1 + 0x1fc70f]", "disp split"),
    ("lea rax, [rsp + 0xef010f]", "disp split"),
]


@pytest.fixture(scope="module")
def form_machine() -> Machine:
    return Machine()


def run_form(machine: Machine, data: bytes) -> tuple:
    """Registers (the flags in R15), the data page and the stack above RSP after a run."""
    table = machine.new_page_table()
    try:
        scratch = Scratch(machine, table)
        map_image(machine, table, parse_elf(data))
        data_frame = scratch.page(FORM_DATA, USER_RW, bytes(range(256)) * 16)
        stack = scratch.page(STACK_TOP - PAGE_SIZE, USER_RW, bytes(range(256)) * 16)
        context = machine.new_context(ring=3, page_table=table, rip=0x400000, rsp=STACK_TOP - 0x800)
        assert machine.run(context).kind is ExitKind.SYSCALL
        registers = tuple(context[reg] for reg in Reg if reg <= Reg.RIP)
        return (
            registers,
            machine.mem.read(data_frame, PAGE_SIZE),
            machine.mem.read(stack + 0x800, 0x800),
        )
    finally:
        machine.destroy_page_table(table)


@pytest.mark.parametrize(("instruction", "form"), FORMS, ids=[f for f, _ in FORMS])
def test_each_form_keeps_registers_flags_and_memory(form_machine, instruction, form):
    code = assemble(f"{FORM_SETUP}{instruction}\npushfq\npop r15\nsyscall", origin=0x400000)
    data = make_elf(0x400000, code)
    assert scan_elf(data).pkru_writers
    result = rewrite_elf(data, name="form")
    assert scan_elf(result.data).pkru_writers == ()
    assert any(form in line for change in result.changes for line in change.how), result.changes
    assert run_form(form_machine, result.data) == run_form(form_machine, data)
