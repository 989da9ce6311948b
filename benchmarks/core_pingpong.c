/* Round-trip time of a cache line bounced between two threads pinned to CPUs 0 and 1.
 *
 * On a 2-core virtual machine this tells how near the host placed the two cores, which decides how
 * much a second ONNX Runtime thread helps a small model (README, "Two-thread phases"): 82-155 ns went
 * with int8 resnet-mnist at 18,000-20,300 images/s, 383-459 ns with ~13,600.
 * Build and run: gcc -O2 -pthread -o /tmp/pingpong benchmarks/core_pingpong.c && /tmp/pingpong
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { ROUNDS = 200000 };
static _Alignas(64) atomic_int flag = 0;

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    int err = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    if (err != 0) {  /* both threads on one CPU would spin a whole time slice per round trip */
        fprintf(stderr, "core_pingpong: cannot pin a thread to CPU %d: %s; it needs CPUs 0 and 1\n", cpu, strerror(err));
        exit(2);
    }
}

static void *answer(void *unused) {
    (void)unused;
    pin(1);
    for (int i = 0; i < ROUNDS; i++) {
        while (atomic_load_explicit(&flag, memory_order_acquire) != 1) {}
        atomic_store_explicit(&flag, 0, memory_order_release);
    }
    return NULL;
}

int main(void) {
    pthread_t other;
    struct timespec start, end;
    pin(0);
    int err = pthread_create(&other, NULL, answer, NULL);
    if (err != 0) {
        fprintf(stderr, "core_pingpong: cannot start the second thread: %s\n", strerror(err));
        return 2;
    }
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (int i = 0; i < ROUNDS; i++) {
        atomic_store_explicit(&flag, 1, memory_order_release);
        while (atomic_load_explicit(&flag, memory_order_acquire) != 0) {}
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    pthread_join(other, NULL);
    double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
    printf("%.0f ns round trip between CPU 0 and CPU 1\n", ns / ROUNDS);
    return 0;
}
