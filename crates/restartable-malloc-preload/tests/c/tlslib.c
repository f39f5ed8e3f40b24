// A library with thread-local storage, dlopen'ed many times over (as
// copies) by hostile.c's `dltls` check: each first use in a thread makes
// glibc's __tls_get_addr grow that thread's TLS vector, through malloc.
static __thread char buffer[4096];
static __thread long uses;

long tls_touch(long v) {
    buffer[v % sizeof buffer] = (char)v;
    return ++uses + buffer[v % sizeof buffer] - (char)v;
}
