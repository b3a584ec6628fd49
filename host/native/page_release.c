/* A native thread that keeps a read-only file mapping out of this process's resident set while another
 * call (a LiteRT model load, which holds Python's interpreter lock throughout) reads it.
 *
 * Every interval it reads /proc/self/maps and advises MADV_DONTNEED over each read-only mapping of the
 * file: the pages leave this process's page tables and stay in the page cache, so a later access is a
 * minor fault, not a disk read. Writable mappings are never touched. Built and loaded by
 * host/native/__init__.py (ctypes); one watcher per process at a time. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static pthread_t watcher;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static int running;
static char target[PATH_MAX];
static long interval_ns;
static unsigned long long advised_bytes;
static unsigned long passes;

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
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += interval_ns;
        until.tv_sec += until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&wake, &lock, &until);
    }
    pthread_mutex_unlock(&lock);
    return NULL;
}

/* Starts watching `path` (an absolute, resolved path as /proc/self/maps prints it) every `interval_ms`.
 * Returns 0, EBUSY when a watcher already runs, ENAMETOOLONG, or pthread_create's error. */
int sdp_watch_start(const char *path, int interval_ms) {
    pthread_mutex_lock(&lock);
    if (running) { pthread_mutex_unlock(&lock); return EBUSY; }
    if (strlen(path) >= sizeof target) { pthread_mutex_unlock(&lock); return ENAMETOOLONG; }
    strcpy(target, path);
    interval_ns = (long)(interval_ms > 0 ? interval_ms : 1) * 1000000L;
    advised_bytes = 0;
    passes = 0;
    running = 1;
    int rc = pthread_create(&watcher, NULL, watch, NULL);
    if (rc != 0) running = 0;
    pthread_mutex_unlock(&lock);
    return rc;
}

/* Stops the watcher and waits for it; returns the bytes of address range it advised (summed over passes),
 * and the number of passes through *passes_out. */
unsigned long long sdp_watch_stop(unsigned long *passes_out) {
    pthread_mutex_lock(&lock);
    int was = running;
    running = 0;
    pthread_cond_signal(&wake);
    pthread_mutex_unlock(&lock);
    if (was) pthread_join(watcher, NULL);
    if (passes_out) *passes_out = passes;
    return advised_bytes;
}
