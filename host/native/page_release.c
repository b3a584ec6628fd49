/* Native threads that run beside a call holding Python's interpreter lock throughout (a LiteRT model load).
 *
 * The watcher keeps a read-only file mapping out of this process's resident set while the call reads it:
 * every interval it reads /proc/self/maps and advises MADV_DONTNEED over each read-only mapping of the
 * file; the pages leave this process's page tables and stay in the page cache, so a later access is a
 * minor fault, not a disk read. Writable mappings are never touched.
 *
 * The filler (optional) faults in, from the second core, the anonymous memory the call maps while it runs:
 * XNNPACK packs weights into fresh buffers and clears its workspace from one thread, and the page faults
 * are most of a load's time where fresh pages are dear (a VM whose balloon reports free pages to the host,
 * so a page first touched after a while costs a fault in the host too). Every private anonymous writable
 * range of 4 MiB or more that was not mapped when the watch started, less what is a thread's stack or a malloc
 * arena (both reserve memory nobody may ask for), is advised MADV_POPULATE_WRITE in 1 MiB steps from its top
 * down, meeting the loading thread, which writes from the bottom up; the advice faults pages in as a write
 * would without touching their contents. Built and loaded by host/native/__init__.py (ctypes); one watch per
 * process at a time. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>

static pthread_t watcher;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static int running;
static char target[PATH_MAX];
static long interval_ns;
static unsigned long long advised_bytes;
static unsigned long passes;

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#define FILL_STEP (1UL << 20)
#define FILL_MIN (4UL << 20) /* smaller new ranges are left to the loading thread */
#define FILL_INTERVAL_NS (10 * 1000000L) /* a new buffer is found within this while the filler is idle */

struct range { unsigned long lo, hi; };
struct ranges { struct range *r; size_t n, cap; };

static pthread_t filler;
static int filling;
static struct ranges before, filled;
static unsigned long long filled_bytes;
static int fill_error;

/* Waits on `wake` for up to `ns`, `lock` held (a stop broadcasts `wake`, so no watch thread sleeps it out). */
static void nap(long ns) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += ns;
    until.tv_sec += until.tv_nsec / 1000000000L;
    until.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(&wake, &lock, &until);
}

static int ranges_add(struct ranges *s, unsigned long lo, unsigned long hi) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 256;
        struct range *r = realloc(s->r, cap * sizeof *r);
        if (!r) return ENOMEM;
        s->r = r;
        s->cap = cap;
    }
    s->r[s->n].lo = lo;
    s->r[s->n].hi = hi;
    s->n++;
    return 0;
}

static int in_ranges(const struct ranges *s, unsigned long x, unsigned long *hi) {
    for (size_t i = 0; i < s->n; i++)
        if (s->r[i].lo <= x && x < s->r[i].hi) { *hi = s->r[i].hi; return 1; }
    return 0;
}

/* The first stretch [*a, *b) of [lo, hi) in neither before nor filled; 0 when there is none. */
static int next_piece(unsigned long lo, unsigned long hi, unsigned long *a, unsigned long *b) {
    unsigned long x = lo, end;
    while (x < hi && (in_ranges(&before, x, &end) || in_ranges(&filled, x, &end))) x = end;
    if (x >= hi) return 0;
    end = hi;
    for (size_t i = 0; i < before.n; i++)
        if (before.r[i].lo > x && before.r[i].lo < end) end = before.r[i].lo;
    for (size_t i = 0; i < filled.n; i++)
        if (filled.r[i].lo > x && filled.r[i].lo < end) end = filled.r[i].lo;
    *a = x;
    *b = end;
    return 1;
}

#define GUARD_MAX (64UL << 10)  /* an inaccessible mapping up to this size is a guard page */
#define ARENA_MAX (64UL << 20)  /* a glibc malloc arena: its used part, then its inaccessible reserve */
static unsigned long stack_max; /* a thread's stack above its guard page (RLIMIT_STACK, as glibc sizes them) */

/* Private anonymous writable mappings from /proc/self/maps with no path (not [heap], [stack] or a file), less
 * what nobody has asked for: a thread's stack above its guard page, a malloc arena's used part below its
 * reserve (a new buffer the kernel merged with either keeps the rest). */
static int anonymous_ranges(struct ranges *out) {
    FILE *maps = fopen("/proc/self/maps", "re");
    char line[PATH_MAX + 256];
    unsigned long guard_lo = 0, guard_hi = 0; /* the last guard page */
    int last_kept = 0;          /* the last line was kept: trim it if a reserve follows */
    out->n = 0;
    if (!maps) return errno;
    while (fgets(line, sizeof line, maps)) {
        unsigned long lo, hi, inode;
        char perms[8];
        int path_at = 0;
        if (sscanf(line, "%lx-%lx %7s %*s %*s %lu %n", &lo, &hi, perms, &inode, &path_at) < 4) continue;
        if (strncmp(perms, "---", 3) == 0) {
            if (hi - lo <= GUARD_MAX) { guard_lo = lo; guard_hi = hi; }
            else if (last_kept && out->r[out->n - 1].hi == lo && hi - lo < ARENA_MAX) {
                /* an arena spans ARENA_MAX up to its reserve's end: below its start is someone else's */
                struct range *r = &out->r[out->n - 1];
                if (hi - ARENA_MAX <= r->lo) out->n--;
                else r->hi = hi - ARENA_MAX;
            }
            last_kept = 0;
            continue;
        }
        last_kept = 0;
        if (strcmp(perms, "rw-p") != 0 || inode != 0) continue;
        if (path_at && line[path_at] != '\n' && line[path_at] != '\0') continue;
        if (lo == guard_hi) { /* a stack: stack_max bytes in all, its guard page included */
            unsigned long stack = stack_max - (guard_hi - guard_lo);
            if (hi - lo <= stack) continue;
            lo += stack;
        }
        if (ranges_add(out, lo, hi)) break;
        last_kept = 1;
    }
    fclose(maps);
    return 0;
}

static int still_filling(void) {
    pthread_mutex_lock(&lock);
    int on = filling;
    pthread_mutex_unlock(&lock);
    return on;
}

/* Faults in [lo, hi) from the top down, stopping early when the watch ends or the range goes away. */
static void fill(unsigned long lo, unsigned long hi) {
    unsigned long top = hi;
    while (top > lo && still_filling()) {
        unsigned long base = top - lo > FILL_STEP ? top - FILL_STEP : lo;
        if (madvise((void *)base, top - base, MADV_POPULATE_WRITE) != 0) break; /* unmapped or changed meanwhile */
        filled_bytes += top - base;
        top = base;
    }
    ranges_add(&filled, still_filling() ? lo : top, hi); /* a range that failed is not tried again */
}

static void *fill_loop(void *unused) {
    (void)unused;
    struct ranges now = {0};
    while (still_filling()) {
        int worked = 0;
        if (anonymous_ranges(&now) != 0) break;
        for (size_t i = 0; i < now.n && still_filling(); i++) {
            unsigned long lo = now.r[i].lo, a, b;
            while (next_piece(lo, now.r[i].hi, &a, &b)) {
                if (b - a >= FILL_MIN) { fill(a, b); worked = 1; }
                else ranges_add(&filled, a, b);
                lo = b;
            }
        }
        if (!worked) {
            pthread_mutex_lock(&lock);
            if (filling) nap(FILL_INTERVAL_NS);
            pthread_mutex_unlock(&lock);
        }
    }
    free(now.r);
    return NULL;
}

static void release_once(void) {
    FILE *maps = fopen("/proc/self/maps", "re");
    char line[PATH_MAX + 256];
    if (!maps) return;
    while (fgets(line, sizeof line, maps)) {
        unsigned long lo, hi;
        char perms[8];
        int path_at = 0;
        if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %n", &lo, &hi, perms, &path_at) < 3 || path_at == 0) continue;
        char *path = line + path_at;
        path[strcspn(path, "\n")] = '\0';
        if (perms[1] == 'w' || strcmp(path, target) != 0) continue;
        if (madvise((void *)lo, hi - lo, MADV_DONTNEED) == 0) advised_bytes += hi - lo;
    }
    fclose(maps);
    passes++;
}

static void *watch(void *unused) {
    (void)unused;
    pthread_mutex_lock(&lock);
    while (running) {
        pthread_mutex_unlock(&lock);
        release_once();
        pthread_mutex_lock(&lock);
        if (!running) break;
        nap(interval_ns);
    }
    pthread_mutex_unlock(&lock);
    return NULL;
}

/* Starts a watch: the watcher over `path` (an absolute, resolved path as /proc/self/maps prints it; NULL or
 * "" for none) every `interval_ms`, and with `fill` the filler. Returns 0, EBUSY when a watch already runs,
 * ENAMETOOLONG, or the error of reading /proc/self/maps or of pthread_create. */
int sdp_watch_start(const char *path, int interval_ms, int fill) {
    pthread_mutex_lock(&lock);
    if (running || filling) { pthread_mutex_unlock(&lock); return EBUSY; }
    if (path && strlen(path) >= sizeof target) { pthread_mutex_unlock(&lock); return ENAMETOOLONG; }
    strcpy(target, path ? path : "");
    interval_ns = (long)(interval_ms > 0 ? interval_ms : 1) * 1000000L;
    advised_bytes = filled_bytes = 0;
    passes = 0;
    fill_error = 0;
    filled.n = 0;
    int rc = 0;
    if (fill) {
        struct rlimit lim;
        stack_max = 32UL << 20; /* glibc's default where RLIMIT_STACK is unlimited */
        if (getrlimit(RLIMIT_STACK, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY && lim.rlim_cur < stack_max)
            stack_max = (lim.rlim_cur + 4095) & ~4095UL;
        /* a kernel before 5.14 does not know the advice (EINVAL) */
        void *probe = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (probe == MAP_FAILED) fill_error = errno;
        else {
            if (madvise(probe, 4096, MADV_POPULATE_WRITE) != 0) fill_error = errno;
            munmap(probe, 4096);
        }
        rc = anonymous_ranges(&before); /* what was mapped before the call is not the call's to fill */
        if (rc == 0 && !fill_error) {
            filling = 1;
            rc = pthread_create(&filler, NULL, fill_loop, NULL);
            if (rc != 0) filling = 0;
        }
    }
    if (rc == 0 && target[0]) {
        running = 1;
        rc = pthread_create(&watcher, NULL, watch, NULL);
        if (rc != 0) running = 0;
    }
    int started_filler = filling;
    if (rc != 0) filling = 0;
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&lock);
    if (rc != 0 && started_filler) pthread_join(filler, NULL);
    return rc;
}

/* Stops the watch and waits for its threads; returns the bytes of address range the watcher advised (summed
 * over passes), its number of passes through *passes_out, the bytes the filler faulted in through
 * *filled_out and its error through *fill_error_out (EINVAL: the kernel has no MADV_POPULATE_WRITE). */
unsigned long long sdp_watch_stop(unsigned long *passes_out, unsigned long long *filled_out, int *fill_error_out) {
    pthread_mutex_lock(&lock);
    int was = running, was_filling = filling;
    running = filling = 0;
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&lock);
    if (was) pthread_join(watcher, NULL);
    if (was_filling) pthread_join(filler, NULL);
    if (passes_out) *passes_out = passes;
    if (filled_out) *filled_out = filled_bytes;
    if (fill_error_out) *fill_error_out = fill_error;
    return advised_bytes;
}
