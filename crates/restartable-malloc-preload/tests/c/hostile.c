// Hostile callers of malloc, run with librestartable_malloc.so preloaded
// (tests/preload.rs builds and runs it). Each check prints one line and
// exits non-zero at the first failure.
//
//   hostile [conformance] [dlsym] [dltls] [tls] [signals] [fork] [churn] [exchange] [release]
//
// Allocations before main run in every mode (a constructor); `dltls`
// dlopens $HOSTILE_TLS_DIR/libtls0.so ... libtls23.so.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

// C23's, which glibc 2.36 lacks: looked up in the preloaded library.
static void (*free_sized)(void *, size_t);
static void (*free_aligned_sized)(void *, size_t, size_t);

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "FAILED %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                  \
            fprintf(stderr, "\n");                                         \
            exit(1);                                                       \
        }                                                                  \
    } while (0)

static volatile int stop;

// --- before main: the loader and libc's start-up call malloc first --------
static void *early_block;
static size_t early_calls;
__attribute__((constructor)) static void before_main(void) {
    early_block = malloc(1000);
    memset(early_block, 0x5a, 1000);
    void *z = calloc(10, 100);
    for (int i = 0; i < 1000; i++)
        if (((unsigned char *)z)[i]) abort();
    free(z);
    early_calls = 2;
}

static size_t rss_kib(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
        fclose(f);
    }
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE) / 1024;
}

static int conformance(void) {
    free_sized = (void (*)(void *, size_t))dlsym(RTLD_DEFAULT, "free_sized");
    free_aligned_sized = (void (*)(void *, size_t, size_t))dlsym(RTLD_DEFAULT, "free_aligned_sized");
    CHECK(free_sized && free_aligned_sized, "the C23 frees are exported");
    // Every size up to 1 MiB: aligned to 16, usable size at least the size.
    for (size_t size = 0; size <= (1 << 20); size += size < 4096 ? 1 : 4093) {
        unsigned char *p = malloc(size);
        CHECK(p, "malloc(%zu)", size);
        CHECK((uintptr_t)p % 16 == 0, "malloc(%zu) = %p", size, (void *)p);
        CHECK(malloc_usable_size(p) >= size, "usable %zu < %zu", malloc_usable_size(p), size);
        if (size) p[0] = p[size - 1] = 1;
        free(p);
    }
    // Every power-of-two alignment up to 64 KiB, through every entry point.
    for (size_t align = 1; align <= (1 << 16); align *= 2) {
        for (size_t size = 1; size <= (1 << 17); size = size * 3 + 1) {
            void *a = aligned_alloc(align, size), *m = memalign(align, size), *q = NULL;
            int rc = posix_memalign(&q, align < sizeof(void *) ? sizeof(void *) : align, size);
            CHECK(a && m && rc == 0 && q, "align %zu size %zu", align, size);
            CHECK((uintptr_t)a % align == 0 && (uintptr_t)m % align == 0 && (uintptr_t)q % align == 0,
                  "misaligned at %zu", align);
            CHECK(malloc_usable_size(a) >= size, "usable");
            memset(a, 1, size);
            memset(m, 2, size);
            memset(q, 3, size);
            free_aligned_sized(a, align, size);
            free(m);
            free_sized(q, size);
        }
    }
    long page = sysconf(_SC_PAGESIZE);
    void *v = valloc(10), *pv = pvalloc(10);
    CHECK(v && (uintptr_t)v % page == 0 && pv && (uintptr_t)pv % page == 0, "valloc");
    CHECK(malloc_usable_size(pv) >= (size_t)page, "pvalloc rounds to a page");
    free(v);
    free(pv);
    // calloc zeroes reused memory.
    for (int round = 0; round < 2; round++) {
        for (size_t size = 16; size <= (1 << 20); size *= 2) {
            unsigned char *p = malloc(size);
            memset(p, 0xff, size);
            free(p);
            p = calloc(1, size);
            for (size_t i = 0; i < size; i++) CHECK(p[i] == 0, "calloc(%zu)[%zu]", size, i);
            free(p);
        }
    }
    // realloc keeps the contents up to the smaller size, across classes.
    unsigned char *r = malloc(1);
    r[0] = 0;
    size_t have = 1;
    for (size_t size = 2; size <= (3 << 20); size = size * 2 + 7) {
        r = realloc(r, size);
        CHECK(r, "realloc(%zu)", size);
        for (size_t i = 0; i < have; i++) CHECK(r[i] == (unsigned char)(i * 7), "lost at %zu", i);
        for (size_t i = have; i < size; i++) r[i] = (unsigned char)(i * 7);
        have = size;
    }
    for (size_t size = have; size > 1; size /= 3) {
        r = realloc(r, size);
        for (size_t i = 0; i < size; i++) CHECK(r[i] == (unsigned char)(i * 7), "lost shrinking");
    }
    free(r);
    // The error cases.
    void *a = malloc(0), *b = malloc(0);
    CHECK(a && b && a != b, "malloc(0) unique");
    free(a);
    free(b);
    free(NULL);
    errno = 0;
    volatile size_t huge = SIZE_MAX;
    CHECK(malloc(huge) == NULL && errno == ENOMEM, "malloc(SIZE_MAX)");
    errno = 0;
    CHECK(calloc(SIZE_MAX / 2, 3) == NULL && errno == ENOMEM, "calloc overflow");
    errno = 0;
    CHECK(calloc((size_t)1 << 33, (size_t)1 << 33) == NULL && errno == ENOMEM, "calloc overflow 2");
    void *keep = malloc(10);
    errno = 0;
    CHECK(reallocarray(keep, SIZE_MAX, 2) == NULL && errno == ENOMEM, "reallocarray overflow");
    errno = 0;
    CHECK(realloc(keep, SIZE_MAX - 100) == NULL && errno == ENOMEM, "realloc too large");
    free(keep);
    errno = 0;
    CHECK(aligned_alloc(3, 16) == NULL && errno == EINVAL, "aligned_alloc(3)");
    void *out = (void *)1;
    CHECK(posix_memalign(&out, 3, 16) == EINVAL && out == (void *)1, "posix_memalign(3)");
    CHECK(posix_memalign(&out, 4, 16) == EINVAL, "posix_memalign(4)");
    CHECK(posix_memalign(&out, 64, SIZE_MAX - 100) == ENOMEM && out == (void *)1, "posix_memalign ENOMEM");
    CHECK(realloc(malloc(10), 0) == NULL, "realloc(p, 0) frees");
    // The block made before main is ours and intact.
    CHECK(early_calls == 2 && malloc_usable_size(early_block) >= 1000, "early block");
    for (int i = 0; i < 1000; i++) CHECK(((unsigned char *)early_block)[i] == 0x5a, "early");
    free(early_block);
    printf("conformance ok\n");
    return 0;
}

// --- dlsym, dlopen, dlerror: the loader allocates inside a lookup ----------
static int dl(void) {
    for (int i = 0; i < 200; i++) {
        CHECK(dlsym(RTLD_DEFAULT, "no_such_symbol_anywhere") == NULL, "found nothing");
        char *err = dlerror();
        CHECK(err && strstr(err, "no_such_symbol"), "dlerror");
        void *h = dlopen("libz.so.1", RTLD_NOW | RTLD_LOCAL);
        if (!h) h = dlopen("libm.so.6", RTLD_NOW | RTLD_LOCAL);
        CHECK(h, "dlopen: %s", dlerror());
        CHECK(dlsym(h, "zlibVersion") || dlsym(h, "cos"), "dlsym");
        // glibc 2.36 has no free_sized: found, it is the preloaded one.
        CHECK(dlsym(RTLD_DEFAULT, "free_sized"), "the preloaded library is in the lookup");
        dlclose(h);
    }
    printf("dlsym ok\n");
    return 0;
}

// --- dlopen of many TLS libraries while threads use them -------------------
// Each new module makes every thread's TLS vector grow at its next use,
// inside __tls_get_addr, through malloc (which itself uses TLS).
enum { TLS_LIBS = 24 };
typedef long (*touch_fn)(long);
static touch_fn touches[TLS_LIBS];
static volatile int opened;
static void *tls_user(void *arg) {
    long v = (long)(uintptr_t)arg, sum = 0;
    while (!stop) {
        int n = __atomic_load_n(&opened, __ATOMIC_ACQUIRE);
        for (int i = 0; i < n; i++) sum += touches[i](v++);
        free(malloc(64 + v % 512));
    }
    return (void *)sum;
}
static int dltls(void) {
    const char *dir = getenv("HOSTILE_TLS_DIR");
    CHECK(dir, "HOSTILE_TLS_DIR is not set");
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, tls_user, (void *)(uintptr_t)i);
    void *handles[TLS_LIBS];
    for (int i = 0; i < TLS_LIBS; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/libtls%d.so", dir, i);
        handles[i] = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        CHECK(handles[i], "dlopen %s: %s", path, dlerror());
        touches[i] = (touch_fn)dlsym(handles[i], "tls_touch");
        CHECK(touches[i], "dlsym tls_touch");
        __atomic_store_n(&opened, i + 1, __ATOMIC_RELEASE);
        usleep(2000);
    }
    // Threads started after the libraries were loaded, too.
    pthread_t late[4];
    for (int i = 0; i < 4; i++) pthread_create(&late[i], NULL, tls_user, (void *)(uintptr_t)(i + 4));
    usleep(50000);
    stop = 1;
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < 4; i++) pthread_join(late[i], NULL);
    stop = 0;
    printf("dltls ok: %d TLS libraries opened while 8 threads used them\n", TLS_LIBS);
    return 0;
}

// --- thread-exit destructors that allocate and free --------------------------
static pthread_key_t key;
static long tls_frees;
static pthread_mutex_t tls_lock = PTHREAD_MUTEX_INITIALIZER;
static void tls_destructor(void *p) {
    free(p);
    void *q = malloc(300);
    memset(q, 1, 300);
    free(q);
    pthread_mutex_lock(&tls_lock);
    tls_frees++;
    pthread_mutex_unlock(&tls_lock);
}
static void *tls_thread(void *arg) {
    (void)arg;
    pthread_setspecific(key, malloc(100));
    return NULL;
}
static int tls(void) {
    pthread_key_create(&key, tls_destructor);
    for (int round = 0; round < 50; round++) {
        pthread_t t[20];
        for (int i = 0; i < 20; i++) pthread_create(&t[i], NULL, tls_thread, NULL);
        for (int i = 0; i < 20; i++) pthread_join(t[i], NULL);
    }
    CHECK(tls_frees == 1000, "destructors ran %ld", tls_frees);
    printf("tls ok\n");
    return 0;
}

// --- signal handlers that allocate, while the interrupted code does --------
static volatile sig_atomic_t in_handler_ops;
static void on_signal(int sig) {
    (void)sig;
    int saved = errno;
    void *a = malloc(48), *b = malloc(5000);
    memset(a, 7, 48);
    memset(b, 7, 5000);
    free(b);
    free(a);
    in_handler_ops = in_handler_ops + 1;
    errno = saved;
}
static void *allocating(void *arg) {
    unsigned long seed = (unsigned long)(uintptr_t)arg, sum = 0;
    void *held[64] = {0};
    while (!stop) {
        for (int i = 0; i < 64; i++) {
            seed = seed * 6364136223846793005UL + 1442695040888963407UL;
            free(held[i]);
            size_t size = 16 + (seed >> 33) % 3000;
            held[i] = malloc(size);
            memset(held[i], (int)i, size < 64 ? size : 64);
            sum += size;
        }
        for (int i = 0; i < 64; i++)
            CHECK(((unsigned char *)held[i])[0] == (unsigned char)i, "overwritten block");
    }
    for (int i = 0; i < 64; i++) free(held[i]);
    return (void *)sum;
}
static int signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    enum { N = 4 };
    pthread_t t[N];
    for (int i = 0; i < N; i++) pthread_create(&t[i], NULL, allocating, (void *)(uintptr_t)(i + 1));
    for (int k = 0; k < 20000; k++) {
        pthread_kill(t[k % N], SIGUSR1);
        if (k % 64 == 0) usleep(50);
    }
    stop = 1;
    for (int i = 0; i < N; i++) pthread_join(t[i], NULL);
    CHECK(in_handler_ops > 0, "no handler ran");
    printf("signals ok: %d handlers allocated\n", (int)in_handler_ops);
    stop = 0;
    return 0;
}

// --- fork from a multithreaded, allocating parent ---------------------------
static int forks(void) {
    enum { N = 4 };
    pthread_t t[N];
    for (int i = 0; i < N; i++) pthread_create(&t[i], NULL, allocating, (void *)(uintptr_t)(i + 9));
    for (int k = 0; k < 100; k++) {
        pid_t pid = fork();
        CHECK(pid >= 0, "fork");
        if (pid == 0) {
            alarm(20);  // a deadlock fails instead of hanging
            for (int i = 0; i < 1000; i++) {
                char *p = malloc(1 + i * 37);
                memset(p, 1, 1 + i * 37);
                free(p);
            }
            char *s = strdup("child");
            _exit(strcmp(s, "child") == 0 ? 0 : 3);
        }
        int status = 0;
        CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %d: status %#x", k, status);
    }
    stop = 1;
    for (int i = 0; i < N; i++) pthread_join(t[i], NULL);
    stop = 0;
    printf("fork ok: 100 children allocated and exited\n");
    return 0;
}

// --- 20,000 short-lived threads: memory stays bounded -----------------------
static void *short_lived(void *arg) {
    size_t n = (size_t)(uintptr_t)arg;
    void *p[8];
    for (int i = 0; i < 8; i++) p[i] = malloc(16 << (n + i) % 12);
    for (int i = 0; i < 8; i++) free(p[i]);
    return NULL;
}
static int churn(void) {
    size_t before = 0, peak = 0;
    for (int k = 0; k < 20000; k += 8) {
        pthread_t t[8];
        for (int i = 0; i < 8; i++) pthread_create(&t[i], NULL, short_lived, (void *)(uintptr_t)(k + i));
        for (int i = 0; i < 8; i++) pthread_join(t[i], NULL);
        size_t now = rss_kib();
        if (k == 800) before = now;
        if (now > peak) peak = now;
    }
    printf("churn ok: 20000 threads, RSS after 800 threads %zu KiB, peak %zu KiB\n", before, peak);
    CHECK(peak < before + 16 * 1024, "RSS grew with threads: %zu -> %zu KiB", before, peak);
    return 0;
}

// --- blocks freed by other threads: none lost, none handed out twice --------
enum { RING = 1024, PER = 50000 };
static void *ring[RING];
static pthread_mutex_t ring_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ring_cond = PTHREAD_COND_INITIALIZER;
static int ring_head, ring_tail;
static void *producer(void *arg) {
    uintptr_t id = (uintptr_t)arg;
    for (uintptr_t i = 0; i < PER; i++) {
        size_t size = 16 + (i * 131) % 2000;
        uintptr_t *p = malloc(size);
        p[0] = id << 32 | i;
        p[size / sizeof(uintptr_t) - 1] = ~(id << 32 | i);
        pthread_mutex_lock(&ring_lock);
        while (ring_head - ring_tail == RING) pthread_cond_wait(&ring_cond, &ring_lock);
        ring[ring_head++ % RING] = p;
        pthread_cond_broadcast(&ring_cond);
        pthread_mutex_unlock(&ring_lock);
    }
    return NULL;
}
static long consumed[4];
static void *consumer(void *arg) {
    uintptr_t me = (uintptr_t)arg;
    for (;;) {
        pthread_mutex_lock(&ring_lock);
        while (ring_head == ring_tail && ring_head < 4 * PER) pthread_cond_wait(&ring_cond, &ring_lock);
        if (ring_tail == 4 * PER) {
            pthread_mutex_unlock(&ring_lock);
            return NULL;
        }
        uintptr_t *p = ring[ring_tail++ % RING];
        pthread_cond_broadcast(&ring_cond);
        pthread_mutex_unlock(&ring_lock);
        uintptr_t tag = p[0], i = tag & 0xffffffff;
        size_t size = 16 + (i * 131) % 2000;
        CHECK(p[size / sizeof(uintptr_t) - 1] == ~tag, "tag overwritten: block handed out twice?");
        free(p);
        consumed[me]++;
    }
}
static int exchange(void) {
    pthread_t p[4], c[4];
    for (uintptr_t i = 0; i < 4; i++) pthread_create(&p[i], NULL, producer, (void *)i);
    for (uintptr_t i = 0; i < 4; i++) pthread_create(&c[i], NULL, consumer, (void *)i);
    for (int i = 0; i < 4; i++) pthread_join(p[i], NULL);
    for (int i = 0; i < 4; i++) pthread_join(c[i], NULL);
    long total = consumed[0] + consumed[1] + consumed[2] + consumed[3];
    CHECK(total == 4 * PER, "consumed %ld of %d", total, 4 * PER);
    printf("exchange ok: %ld blocks freed by other threads, tags intact\n", total);
    return 0;
}

// --- memory goes back after a 1 GiB burst ------------------------------------
static int release(void) {
    enum { N = 1 << 16 };
    static void *blocks[N];
    size_t before = rss_kib();
    for (int round = 0; round < 2; round++) {
        size_t bytes = 0;
        int n = 0;
        while (bytes < ((size_t)1 << 30) && n < N) {
            size_t size = 16 + ((size_t)n * 2654435761u) % (64 * 1024);
            blocks[n] = malloc(size);
            memset(blocks[n], 1, size);
            bytes += size;
            n++;
        }
        size_t peak = rss_kib();
        for (int i = 0; i < n; i++) free(blocks[i]);
        size_t after;
        if (round == 0) {
            malloc_trim(0);
            after = rss_kib();
            printf("release (malloc_trim): %d blocks, %zu MiB; RSS %zu KiB before, %zu peak, %zu after\n",
                   n, bytes >> 20, before, peak, after);
        } else {
            // The release policy: the first slow path (a cache refill or
            // flush) after the delay sweeps.
            struct timespec ts = {1, 300 * 1000 * 1000};
            nanosleep(&ts, NULL);
            for (int i = 0; i < 1000; i++) blocks[i] = malloc(24);
            for (int i = 0; i < 1000; i++) free(blocks[i]);
            after = rss_kib();
            printf("release (delay): %d blocks, %zu MiB; RSS %zu KiB before, %zu peak, %zu after\n",
                   n, bytes >> 20, before, peak, after);
        }
        CHECK(after <= 2 * before, "RSS stayed at %zu KiB (before the burst: %zu)", after, before);
    }
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        const char *m = argv[i];
        if (!strcmp(m, "conformance")) conformance();
        else if (!strcmp(m, "dlsym")) dl();
        else if (!strcmp(m, "tls")) tls();
        else if (!strcmp(m, "dltls")) dltls();
        else if (!strcmp(m, "signals")) signals();
        else if (!strcmp(m, "fork")) forks();
        else if (!strcmp(m, "churn")) churn();
        else if (!strcmp(m, "exchange")) exchange();
        else if (!strcmp(m, "release")) release();
        else CHECK(0, "unknown check %s", m);
    }
    CHECK(malloc_usable_size(NULL) == 0, "usable(NULL)");
    return 0;
}
