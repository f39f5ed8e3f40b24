/*
 * Allocator workloads for scripts/malloc-compare.sh, run under LD_PRELOAD.
 *
 *   workloads MODE THREADS OPS
 *
 * OPS is the total over all threads (split evenly), so a run's length
 * stays bounded as THREADS grows. Modes:
 *   remote      producer/consumer pairs over SPSC rings: every free remote
 *   falseshare  allocate 8-64 B, write it 100 times, free (active false
 *               sharing, the Hoard paper's cache-thrash)
 *   mixed       per-thread live set of 1000 blocks, 16 B-64 KiB
 *               log-distributed, one replaced per op, realloc 1 op in 8
 *   larson      shared slot array, blocks swapped in and out atomically,
 *               so most blocks are freed by a thread other than their
 *               allocator
 *
 * Each mode checks itself (tags, per-block checksums, alloc/free counts
 * and sums) and prints "ok ..." then one "result ..." line; any mismatch
 * or NULL prints "workloads: error: ..." and exits 1.
 */
#define _POSIX_C_SOURCE 200809L
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CACHE_LINE 64

static const char *mode_name = "?";

static void fail(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    int n = snprintf(buf, sizeof buf, "workloads: error: mode=%s: ", mode_name);
    va_start(ap, fmt);
    vsnprintf(buf + n, sizeof buf - 1 - (size_t)n, fmt, ap);
    va_end(ap);
    size_t len = strlen(buf);
    buf[len++] = '\n';
    /* write(2) and _exit: other threads may still be inside the allocator,
       so no stdio locks or exit handlers. */
    if (write(2, buf, len) < 0)
        _exit(1);
    _exit(1);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (p == NULL)
        fail("malloc(%zu) returned NULL", n);
    return p;
}

/* xorshift64*: cheap, per thread, so the generator is not a shared line. */
static inline uint64_t rnd(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __asm__ volatile("pause");
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

/* Spin briefly, then yield: runs use up to 4x more threads than CPUs,
   and a spinning waiter would starve the thread it waits for. */
static inline void backoff(unsigned *spins)
{
    if (++*spins < 64)
        cpu_relax();
    else
        sched_yield();
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static long peak_rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (sscanf(line, "VmHWM: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

/* Per-thread tallies, one cache line each so counting does not add
   false sharing of its own. */
struct tally {
    _Alignas(CACHE_LINE) uint64_t allocs, frees, ops;
    uint64_t alloc_sum, free_sum; /* sums of block tags: equal iff every
                                     block came back once and intact */
};

struct thread_arg {
    double end; /* when this thread finished its measured work */
    int id;
    uint64_t ops;
    struct tally *t;
    void *ctx;
};

static pthread_barrier_t start_barrier;
static _Atomic int ready;

/* Workers announce themselves, then block in the barrier; main releases
   them only once all are there, so its clock starts before any work even
   if it is descheduled right after (runs have 4x more threads than CPUs). */
static void start_wait(void)
{
    /* one allocation first, so per-thread (and per-process, e.g. a
       membarrier registration) setup stays out of the measurement */
    free(xmalloc(32));
    atomic_fetch_add_explicit(&ready, 1, memory_order_release);
    pthread_barrier_wait(&start_barrier);
}

/* ---- remote --------------------------------------------------------------- */

#define RING 1024 /* power of two */

struct ring {
    _Alignas(CACHE_LINE) _Atomic uint64_t head; /* written by the producer */
    _Alignas(CACHE_LINE) _Atomic uint64_t tail; /* written by the consumer */
    _Alignas(CACHE_LINE) void *slot[RING];
};

/* Block layout (16-512 B): tag at 0, size at 8, last byte (at 15 or
   later, clear of the 12 header bytes) = (uint8_t)mix(tag). */
struct remote_hdr {
    uint64_t tag;
    uint32_t size;
};

static uint64_t remote_tag(int pair, uint64_t seq)
{
    return ((uint64_t)pair << 40) | seq;
}

static void *remote_producer(void *a)
{
    struct thread_arg *arg = a;
    struct ring *r = arg->ctx;
    struct tally *t = arg->t;
    uint64_t s = mix((uint64_t)arg->id + 1) | 1;
    uint64_t head = 0, tail_seen = 0;
    start_wait();
    for (uint64_t i = 0; i < arg->ops; i++) {
        /* sizes 16-512, mostly small as in real programs */
        uint64_t x = rnd(&s);
        size_t size = (x & 3) == 0 ? 16 + (x >> 8) % 497 : 16 + (x >> 8) % 113;
        struct remote_hdr *h = xmalloc(size);
        h->tag = remote_tag(arg->id / 2, i);
        h->size = (uint32_t)size;
        ((unsigned char *)h)[size - 1] = (unsigned char)mix(h->tag);
        t->allocs++;
        t->alloc_sum += h->tag;
        unsigned spins = 0;
        while (head - tail_seen == RING) {
            tail_seen = atomic_load_explicit(&r->tail, memory_order_acquire);
            if (head - tail_seen == RING)
                backoff(&spins);
        }
        r->slot[head & (RING - 1)] = h;
        head++;
        atomic_store_explicit(&r->head, head, memory_order_release);
    }
    t->ops = arg->ops;
    arg->end = now();
    return NULL;
}

static void *remote_consumer(void *a)
{
    struct thread_arg *arg = a;
    struct ring *r = arg->ctx;
    struct tally *t = arg->t;
    uint64_t tail = 0, head_seen = 0;
    start_wait();
    for (uint64_t i = 0; i < arg->ops; i++) {
        unsigned spins = 0;
        while (tail == head_seen) {
            head_seen = atomic_load_explicit(&r->head, memory_order_acquire);
            if (tail == head_seen)
                backoff(&spins);
        }
        struct remote_hdr *h = r->slot[tail & (RING - 1)];
        uint64_t want = remote_tag(arg->id / 2, i);
        /* in-order sequence numbers: each block arrives exactly once */
        if (h->tag != want)
            fail("pair %d block %" PRIu64 ": tag %#" PRIx64 ", expected %#" PRIx64,
                 arg->id / 2, i, h->tag, want);
        if (h->size < 16 || h->size > 512 ||
            ((unsigned char *)h)[h->size - 1] != (unsigned char)mix(h->tag))
            fail("pair %d block %" PRIu64 ": size or trailing byte corrupted", arg->id / 2, i);
        t->free_sum += h->tag;
        t->frees++;
        free(h);
        tail++;
        atomic_store_explicit(&r->tail, tail, memory_order_release);
    }
    arg->end = now();
    return NULL;
}

/* ---- falseshare ----------------------------------------------------------- */

#define FS_WRITES 100

static void *falseshare_thread(void *a)
{
    struct thread_arg *arg = a;
    struct tally *t = arg->t;
    uint64_t s = mix((uint64_t)arg->id + 7) | 1;
    start_wait();
    for (uint64_t i = 0; i < arg->ops; i++) {
        size_t size = 8 + rnd(&s) % 57; /* 8-64 */
        volatile unsigned char *p = xmalloc(size);
        unsigned char base = (unsigned char)(arg->id * 31 + i);
        t->allocs++;
        for (size_t k = 0; k < size; k++)
            p[k] = base;
        /* volatile read-modify-writes: each one reaches the cache line */
        for (unsigned j = 0; j < FS_WRITES; j++)
            p[j % size]++;
        /* byte k got FS_WRITES/size increments, one more if k < rest;
           another thread writing into our object shows up here */
        for (size_t k = 0; k < size; k++) {
            unsigned char want = (unsigned char)(base + FS_WRITES / size + (k < FS_WRITES % size));
            if (p[k] != want)
                fail("thread %d object %" PRIu64 " byte %zu: %u, expected %u", arg->id, i, k,
                     p[k], want);
        }
        free((void *)p);
        t->frees++;
    }
    t->ops = arg->ops;
    arg->end = now();
    return NULL;
}

/* ---- mixed ---------------------------------------------------------------- */

#define LIVE 1000

struct live {
    unsigned char *p;
    size_t size;
    unsigned char tag;
};

static size_t log_size(uint64_t *s)
{
    uint64_t x = rnd(s);
    size_t lo = (size_t)16 << ((x >> 4) % 12); /* 16 B .. 32 KiB */
    size_t n = lo + (size_t)((x >> 20) % lo);  /* [lo, 2 lo) */
    return n > 65536 ? 65536 : n;
}

static void live_check(const struct live *b, int id)
{
    if (b->p[0] != b->tag || b->p[b->size - 1] != (unsigned char)~b->tag)
        fail("thread %d: block of %zu B corrupted", id, b->size);
}

static void live_fill(struct live *b, uint64_t *s, struct tally *t)
{
    b->size = log_size(s);
    b->p = xmalloc(b->size);
    b->tag = (unsigned char)rnd(s);
    b->p[0] = b->tag;
    b->p[b->size - 1] = (unsigned char)~b->tag;
    t->allocs++;
}

static void *mixed_thread(void *a)
{
    struct thread_arg *arg = a;
    struct tally *t = arg->t;
    uint64_t s = mix((uint64_t)arg->id + 13) | 1;
    struct live *set = xmalloc(sizeof(struct live) * LIVE);
    for (int i = 0; i < LIVE; i++)
        live_fill(&set[i], &s, t);
    start_wait();
    for (uint64_t i = 0; i < arg->ops; i++) {
        uint64_t x = rnd(&s);
        struct live *b = &set[(x >> 8) % LIVE];
        live_check(b, arg->id);
        if ((x & 7) == 0) {
            size_t old = b->size, n = log_size(&s);
            unsigned char last = b->p[old - 1];
            unsigned char *q = realloc(b->p, n);
            if (q == NULL)
                fail("realloc(%zu) returned NULL", n);
            /* realloc keeps the first min(old, n) bytes */
            if (q[0] != b->tag || (n >= old && q[old - 1] != last))
                fail("thread %d: realloc %zu -> %zu lost the contents", arg->id, old, n);
            b->p = q;
            b->size = n;
            b->p[n - 1] = (unsigned char)~b->tag;
        } else {
            free(b->p);
            t->frees++;
            live_fill(b, &s, t);
        }
    }
    t->ops = arg->ops;
    for (int i = 0; i < LIVE; i++) {
        live_check(&set[i], arg->id);
        free(set[i].p);
        t->frees++;
    }
    free(set);
    arg->end = now();
    return NULL;
}

/* ---- larson --------------------------------------------------------------- */

/* as remote_hdr: the last byte, at 15 or later, is clear of the header */
struct larson_blk {
    uint64_t tag;
    uint32_t size; /* 16-1024 */
};

struct larson_ctx {
    _Atomic(struct larson_blk *) *slots;
    size_t nslots;
    int nthreads;
};

static struct larson_blk *larson_alloc(int id, uint64_t serial, uint64_t *s, struct tally *t)
{
    size_t size = 16 + rnd(s) % 1009;
    struct larson_blk *b = xmalloc(size);
    b->tag = mix(((uint64_t)id << 40) ^ serial) | 1;
    b->size = (uint32_t)size;
    ((unsigned char *)b)[size - 1] = (unsigned char)(b->tag >> 8);
    t->allocs++;
    t->alloc_sum += b->tag;
    return b;
}

static void larson_free(struct larson_blk *b, int id, struct tally *t)
{
    if (b == NULL)
        fail("thread %d: empty slot (a block was taken twice)", id);
    if (b->size < 16 || b->size > 1024 ||
        ((unsigned char *)b)[b->size - 1] != (unsigned char)(b->tag >> 8))
        fail("thread %d: block corrupted (size %" PRIu32 ")", id, b->size);
    t->free_sum += b->tag;
    t->frees++;
    free(b);
}

static void *larson_thread(void *a)
{
    struct thread_arg *arg = a;
    struct larson_ctx *c = arg->ctx;
    struct tally *t = arg->t;
    uint64_t s = mix((uint64_t)arg->id + 29) | 1;
    uint64_t serial = 0;
    /* each worker fills its own stripe of slots before the start, so the
       first blocks come from every worker's heap, not only main's */
    for (size_t k = (size_t)arg->id; k < c->nslots; k += (size_t)c->nthreads)
        atomic_store_explicit(&c->slots[k], larson_alloc(arg->id, UINT64_MAX - k, &s, t),
                              memory_order_relaxed);
    start_wait(); /* the barrier publishes every stripe */
    for (uint64_t i = 0; i < arg->ops; i++) {
        size_t k = rnd(&s) % c->nslots;
        struct larson_blk *nb = larson_alloc(arg->id, serial++, &s, t);
        struct larson_blk *old = atomic_exchange_explicit(&c->slots[k], nb, memory_order_acq_rel);
        larson_free(old, arg->id, t);
    }
    t->ops = arg->ops;
    arg->end = now();
    return NULL;
}

/* ---- main ----------------------------------------------------------------- */

static uint64_t parse_u64(const char *s, const char *what)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (*s == '\0' || *end != '\0' || s[0] == '-')
        fail("bad %s '%s'", what, s);
    return (uint64_t)v;
}

static void run_threads(int n, void *(*fn)(void *), struct thread_arg *args, pthread_t *tids)
{
    for (int i = 0; i < n; i++)
        if (pthread_create(&tids[i], NULL, fn, &args[i]) != 0)
            fail("pthread_create failed");
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s remote|falseshare|mixed|larson THREADS OPS\n", argv[0]);
        return 2;
    }
    mode_name = argv[1];
    uint64_t nthreads64 = parse_u64(argv[2], "THREADS");
    uint64_t ops = parse_u64(argv[3], "OPS");
    if (nthreads64 < 1 || nthreads64 > 4096)
        fail("THREADS must be 1 to 4096");
    int nthreads = (int)nthreads64;
    int remote = strcmp(mode_name, "remote") == 0;
    void *(*fn)(void *) = NULL;
    if (remote) {
        if (nthreads < 2 || nthreads % 2 != 0)
            fail("remote needs an even THREADS of at least 2 (pairs)");
    } else if (strcmp(mode_name, "falseshare") == 0) {
        fn = falseshare_thread;
    } else if (strcmp(mode_name, "mixed") == 0) {
        fn = mixed_thread;
    } else if (strcmp(mode_name, "larson") == 0) {
        fn = larson_thread;
    } else {
        fail("unknown mode (remote, falseshare, mixed, larson)");
    }

    struct tally *tally = aligned_alloc(CACHE_LINE, sizeof(struct tally) * (size_t)nthreads);
    struct thread_arg *args = xmalloc(sizeof(struct thread_arg) * (size_t)nthreads);
    pthread_t *tids = xmalloc(sizeof(pthread_t) * (size_t)nthreads);
    if (tally == NULL)
        fail("aligned_alloc returned NULL");
    memset(tally, 0, sizeof(struct tally) * (size_t)nthreads);

    /* work units: pairs for remote, threads otherwise */
    int units = remote ? nthreads / 2 : nthreads;
    struct ring *rings = NULL;
    struct larson_ctx lc = {0};
    if (remote) {
        rings = aligned_alloc(CACHE_LINE, sizeof(struct ring) * (size_t)units);
        if (rings == NULL)
            fail("aligned_alloc returned NULL");
        for (int i = 0; i < units; i++) {
            atomic_init(&rings[i].head, 0);
            atomic_init(&rings[i].tail, 0);
        }
    }
    for (int i = 0; i < nthreads; i++) {
        int unit = remote ? i / 2 : i;
        args[i].id = i;
        args[i].ops = ops / (uint64_t)units + ((uint64_t)unit < ops % (uint64_t)units);
        args[i].t = &tally[i];
        args[i].ctx = remote ? (void *)&rings[unit] : (void *)&lc;
    }

    if (fn == larson_thread) {
        lc.nslots = 4096;
        lc.nthreads = nthreads;
        lc.slots = xmalloc(sizeof(*lc.slots) * lc.nslots);
        for (size_t k = 0; k < lc.nslots; k++)
            atomic_init(&lc.slots[k], NULL);
    }

    if (pthread_barrier_init(&start_barrier, NULL, (unsigned)nthreads + 1) != 0)
        fail("pthread_barrier_init failed");
    if (remote) {
        for (int i = 0; i < nthreads; i++)
            if (pthread_create(&tids[i], NULL, i % 2 == 0 ? remote_producer : remote_consumer,
                               &args[i]) != 0)
                fail("pthread_create failed");
    } else {
        run_threads(nthreads, fn, args, tids);
    }
    /* measured: from releasing the ready threads to the last one's end
       stamp (not the join, whose wake-up may lag) */
    while (atomic_load_explicit(&ready, memory_order_acquire) < nthreads)
        sched_yield();
    double t0 = now(), t1 = t0;
    pthread_barrier_wait(&start_barrier);
    for (int i = 0; i < nthreads; i++) {
        pthread_join(tids[i], NULL);
        if (args[i].end > t1)
            t1 = args[i].end;
    }
    double seconds = t1 - t0;

    if (fn == larson_thread) {
        struct tally *t0t = &tally[0];
        for (size_t k = 0; k < lc.nslots; k++)
            larson_free(atomic_load_explicit(&lc.slots[k], memory_order_relaxed), 0, t0t);
        free(lc.slots);
    }

    struct tally sum = {0};
    for (int i = 0; i < nthreads; i++) {
        sum.allocs += tally[i].allocs;
        sum.frees += tally[i].frees;
        sum.ops += tally[i].ops;
        sum.alloc_sum += tally[i].alloc_sum;
        sum.free_sum += tally[i].free_sum;
    }
    if (sum.ops != ops)
        fail("ops done %" PRIu64 ", expected %" PRIu64, sum.ops, ops);
    if (sum.allocs != sum.frees)
        fail("%" PRIu64 " allocations but %" PRIu64 " frees", sum.allocs, sum.frees);
    if (sum.alloc_sum != sum.free_sum)
        fail("tag sums differ: allocated %#" PRIx64 ", freed %#" PRIx64, sum.alloc_sum,
             sum.free_sum);
    free(rings);
    free(tally);
    free(args);
    free(tids);
    pthread_barrier_destroy(&start_barrier);

    long rss = peak_rss_kib();
    if (rss < 0)
        fail("no VmHWM in /proc/self/status");
    printf("ok mode=%s threads=%d ops=%" PRIu64 " allocs=%" PRIu64 " frees=%" PRIu64
           " tag_sum=%#" PRIx64 "\n",
           mode_name, nthreads, ops, sum.allocs, sum.frees, sum.alloc_sum);
    printf("result mode=%s threads=%d ops=%" PRIu64 " seconds=%.6f mops=%.3f peak_rss_kib=%ld\n",
           mode_name, nthreads, ops, seconds, seconds > 0 ? (double)ops / seconds / 1e6 : 0.0, rss);
    return 0;
}
