/* Glue for gpushare-hook linked against musl on x86_64 (included by
 * src/bin/gpushare-hook.rs when build.rs links it so; tests/musl_glue.rs
 * checks memcpy and memmove against the C library's, and the arguments'
 * walk).
 *
 * The arguments: the standard library built for glibc takes argc, argv and
 * envp as the arguments of its `.init_array.00099` entry, which glibc
 * passes to every such function and musl does not. gpushare_musl_args runs
 * just before it and returns with argc, argv and envp in the argument
 * registers, which musl's loop over the array (add, compare, call through
 * the next slot) leaves as they are. They are found from `__environ`,
 * which musl has set by then: on the initial stack argv's NULL ends just
 * below envp, and argc sits below argv's pointers. install/test.sh runs
 * every test through this build, so a musl whose loop used those registers
 * would fail them all.
 *
 * _dl_find_object: gcc's unwinder asks glibc for a pc's unwind tables
 * through it. Panics abort here; "not found" leaves only a backtrace
 * without frames.
 *
 * memcpy and memmove: musl's copy with `rep movsq` after a byte loop and
 * finish with another, a tenth of the full runtime's own time in a create
 * (serde's strings, the parsers' buffers). Here: up to 16 bytes with two
 * overlapping loads and stores, longer with `rep movsb`, which x86_64
 * processors with fast string moves (ERMS, FSRM) run at full speed.
 * memmove is replaced too, as musl's jumps into its own memcpy.
 *
 * Intel syntax without register prefixes, as Rust's global_asm! takes it
 * (an assembler given the file alone is told so first). */

	.pushsection .init_array.00098,"aw"
	.p2align 3
	.quad gpushare_musl_args
	.popsection
	.pushsection .text.gpushare_musl_args,"ax",@progbits
	.globl gpushare_musl_args
	.hidden gpushare_musl_args
gpushare_musl_args:
	mov rdx, qword ptr [rip + __environ]
	lea rsi, [rdx - 8]
	xor edi, edi
2:
	sub rsi, 8
	cmp qword ptr [rsi], rdi
	je 3f
	inc rdi
	jmp 2b
3:
	add rsi, 8
	ret
	.popsection
	.pushsection .text._dl_find_object,"ax",@progbits
	.globl _dl_find_object
	.type _dl_find_object,@function
_dl_find_object:
	mov eax, -1
	ret
	.popsection

	.pushsection .text.memcpy,"ax",@progbits
	.globl memcpy
	.type memcpy,@function
memcpy:
	mov rax, rdi
	cmp rdx, 16
	ja 5f
	cmp rdx, 8
	jb 6f
	mov rcx, qword ptr [rsi]
	mov r8, qword ptr [rsi + rdx - 8]
	mov qword ptr [rdi], rcx
	mov qword ptr [rdi + rdx - 8], r8
	ret
6:
	cmp rdx, 4
	jb 7f
	mov ecx, dword ptr [rsi]
	mov r8d, dword ptr [rsi + rdx - 4]
	mov dword ptr [rdi], ecx
	mov dword ptr [rdi + rdx - 4], r8d
	ret
7:
	test rdx, rdx
	jz 8f
	mov r9, rdx
	shr r9, 1
	movzx ecx, byte ptr [rsi]
	movzx r8d, byte ptr [rsi + rdx - 1]
	movzx r10d, byte ptr [rsi + r9]
	mov byte ptr [rdi], cl
	mov byte ptr [rdi + rdx - 1], r8b
	mov byte ptr [rdi + r9], r10b
8:
	ret
5:
	mov rcx, rdx
	rep movsb
	ret
	.popsection
	.pushsection .text.memmove,"ax",@progbits
	.globl memmove
	.type memmove,@function
memmove:
	mov rax, rdi
	sub rax, rsi
	cmp rax, rdx
	jae memcpy
	mov rax, rdi
	lea rsi, [rsi + rdx - 1]
	lea rdi, [rdi + rdx - 1]
	mov rcx, rdx
	std
	rep movsb
	cld
	ret
	.popsection

	.section .note.GNU-stack,"",@progbits
