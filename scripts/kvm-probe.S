# The KVM probe guest embedded in Sources/QEMUProvider/Acceleration.swift.
# Build: as --32 -o probe.o kvm-probe.S && ld -m elf_i386 -Ttext=0x100000 --oformat binary -o probe.bin probe.o
.set MAGIC, 0x1BADB002
.set FLAGS, 0x00010000
.section .text
.code32
.globl _start
_start:
header:
  .long MAGIC
  .long FLAGS
  .long -(MAGIC + FLAGS)
  .long header          # header_addr
  .long header          # load_addr
  .long 0               # load_end_addr (whole file)
  .long 0               # bss_end_addr
  .long entry           # entry_addr
entry:
  movl $0x181003, 0x180000
  movl $0, 0x180004
  movl $0x182003, 0x181000
  movl $0, 0x181004
  movl $0x83, 0x182000
  movl $0, 0x182004
  movl $0x180000, %eax
  movl %eax, %cr3
  movl %cr4, %eax
  orl $0x20, %eax
  movl %eax, %cr4
  movl $0xC0000080, %ecx
  rdmsr
  orl $0x100, %eax
  wrmsr
  movl %cr0, %eax
  orl $0x80000001, %eax
  movl %eax, %cr0
  lgdt gdtr
  ljmp $0x08, $long_entry
.code64
long_entry:
  movb $0x31, %al
  outb %al, $0xf4
1: hlt
  jmp 1b
.align 8
gdt:
  .quad 0
  .quad 0x00209A0000000000
  .quad 0x0000920000000000
gdtr:
  .word 23
  .long gdt
