/* The accept guard: a connection that finds no descriptor free is refused, never fatal.
 *
 * libzmq 4.3.5 aborts the process when its ipc listener's accept() fails with EMFILE (its
 * errno_assert lists ENFILE, not EMFILE), and its tcp listener, which tolerates EMFILE,
 * leaves the connection pending and is woken for it again at once, forever. Preloaded into
 * the ingest (LD_PRELOAD, declared by the ingest's node kind), this library interposes
 * accept4() and accept(): when the real call fails for want of a descriptor, it frees the
 * one it keeps in reserve, accepts the pending connection into it, closes it at once (the
 * peer reads end-of-file: refused), takes the reserve back, and fails the call with
 * ECONNABORTED, which both listeners take for a peer gone before it was accepted. This is the
 * "EMFILE trick" of libev, libuv and nginx, placed under a library that cannot be changed.
 *
 * vigil_accept_refused() counts the refusals; the ingest's door reads it (ctypes) and
 * reports them with its own. Not a Python module: it is found by path, never imported.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>

typedef int (*accept4_fn)(int, struct sockaddr *, socklen_t *, int);
typedef int (*accept_fn)(int, struct sockaddr *, socklen_t *);

static accept4_fn real_accept4;
static accept_fn real_accept;
/* One descriptor held free for refusals; -1 while another thread took its place. */
static int reserve = -1;
/* libzmq may accept on several I/O threads: one refusal at a time owns the reserve. */
static pthread_mutex_t reserve_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_ulong refused;

static int open_reserve(void) { return open("/dev/null", O_RDONLY | O_CLOEXEC); }

__attribute__((constructor)) static void guard_init(void) {
    real_accept4 = (accept4_fn)dlsym(RTLD_NEXT, "accept4");
    real_accept = (accept_fn)dlsym(RTLD_NEXT, "accept");
    reserve = open_reserve();
}

/* Connections refused for want of a descriptor since the process started. */
__attribute__((visibility("default"))) unsigned long vigil_accept_refused(void) {
    return atomic_load(&refused);
}

/* The listener `fd` has a connection pending and no descriptor is free: refuse it with the
 * reserve. Without a reserve (a thread took the descriptor it freed), the connection stays
 * pending and is refused on the next call, once the reserve is back. */
static int refuse(int fd) {
    pthread_mutex_lock(&reserve_lock);
    if (reserve < 0) reserve = open_reserve();
    if (reserve >= 0) {
        close(reserve);
        int conn = real_accept4(fd, NULL, NULL, SOCK_CLOEXEC);
        if (conn >= 0) {
            close(conn);
            atomic_fetch_add(&refused, 1);
        }
        reserve = open_reserve();
    }
    pthread_mutex_unlock(&reserve_lock);
    errno = ECONNABORTED;
    return -1;
}

/* A failure for want of resources, which the ipc listener would abort on. */
static int shortage(int error) {
    return error == EMFILE || error == ENFILE || error == ENOBUFS || error == ENOMEM;
}

static int guarded(int fd, int conn) {
    if (conn >= 0 || !shortage(errno)) return conn;
    if (errno == EMFILE || errno == ENFILE) return refuse(fd);
    errno = ECONNABORTED; /* out of memory: left pending, retried when the loop comes back */
    return -1;
}

__attribute__((visibility("default"))) int accept4(int fd, struct sockaddr *addr,
                                                   socklen_t *len, int flags) {
    return guarded(fd, real_accept4(fd, addr, len, flags));
}

__attribute__((visibility("default"))) int accept(int fd, struct sockaddr *addr,
                                                  socklen_t *len) {
    return guarded(fd, real_accept(fd, addr, len));
}
