/*
 * A 32-bit process without libc (no multilib needed to build it):
 * gcc -m32 -nostdlib -static -fno-pic.  It sleeps forever, one second at a
 * time, through the i386 system call gate.
 */
void _start(void)
{
    struct { int sec, nsec; } ts = {1, 0};
    for (;;)
        __asm__ volatile("int $0x80" : : "a"(162), "b"(&ts), "c"(0) : "memory");
}
