/*
 * A process holding MB megabytes of written memory, asleep: what the core
 * writers are timed on (bench/writer.py).  usage: hold MB
 * Each page is half pseudo-random bytes, half zeros: about 2:1 for zstd.
 * Prints "ready" once the memory is written.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    size_t size = (size_t)atol(argc > 1 ? argv[1] : "256") << 20;
    unsigned char *heap = malloc(size);
    uint64_t x = 88172645463325252ULL;
    if (!heap)
        return 2;
    for (size_t at = 0; at < size; at += 4096) {
        for (size_t i = 0; i < 2048; i += 8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            memcpy(heap + at + i, &x, 8);
        }
        memset(heap + at + 2048, 0, 2048);
    }
    printf("ready\n");
    fflush(stdout);
    for (;;)
        pause();
}
