/*
 * A target for the dump's priority: a heap of MB megabytes, all written, and
 * THREADS threads that spin.  usage: busyheap MODE REPORT_FILE MB THREADS
 *
 *   spin     the threads compute, never touching the heap
 *   rewrite  the threads keep rewriting the whole heap: every page of it is
 *            copied once while a copy-on-write child lives
 *
 * The main thread heartbeats every 100 ms (checked nanosleep); see report.h.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "report.h"

static char *heap;
static size_t heap_size;
static int rewrite;
static volatile uint64_t sink;

static void *spinner(void *arg)
{
    size_t stride = 4096, offset = (size_t)(uintptr_t)arg * 64;
    for (uint64_t round = 0;; round++) {
        if (rewrite) {
            for (size_t i = offset; i < heap_size; i += stride)
                heap[i] = (char)round;
        } else {
            for (int i = 0; i < 1000000; i++)
                sink += i;
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: busyheap spin|rewrite REPORT_FILE MB THREADS\n");
        return 2;
    }
    report_path = argv[2];
    install_handlers();
    rewrite = !strcmp(argv[1], "rewrite");
    heap_size = (size_t)atol(argv[3]) << 20;
    heap = malloc(heap_size);
    if (!heap)
        return 2;
    memset(heap, 0x5a, heap_size);
    for (long i = 0; i < atol(argv[4]); i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, spinner, (void *)(uintptr_t)i) != 0)
            return 2;
    }
    ready();
    for (;;) {
        checked_sleep(100);
        after_each_round();
    }
}
