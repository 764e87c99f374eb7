/* Woodpecker's native runtime, linked beside the Halide runtime into every kernel library.
 *
 * Why: between two kernels of a plan, Python's call overhead and Halide's default thread pool
 * (workers sleep on a condition variable after every parallel loop and are woken per loop)
 * cost more than many of the kernels themselves: MobileNetV2's 54 steps ran 1.13-1.2x faster
 * called from one C loop, and the spinning pool added 3-5 % (interleaved rounds, one process).
 *
 * - A fork-join pool for Halide's parallel loops (installed with halide_set_custom_do_par_for):
 *   threads-1 workers claim loop iterations with one compare-and-swap each; after a loop they
 *   spin for `spin_us` microseconds waiting for the next one, then sleep on a futex. Nested
 *   parallel loops, and loops entered while another thread owns the pool, run serially.
 * - wpk_run: calls a list of Halide entry points (their _argv forms) in order.
 * - An error handler that keeps Halide's message for wpk_last_error: the runtime's default one
 *   aborts the process, which must not happen to a plan's caller.
 */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

typedef int (*halide_task_t)(void *user_context, int task_number, uint8_t *closure);
typedef int (*halide_do_par_for_t)(void *, halide_task_t, int, int, uint8_t *);
extern halide_do_par_for_t halide_set_custom_do_par_for(halide_do_par_for_t do_par_for);
typedef void (*halide_error_handler_t)(void *user_context, const char *message);
extern halide_error_handler_t halide_set_error_handler(halide_error_handler_t handler);

#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

#define MAX_WORKERS 255
#define CLOSED 0xffffffffu

static struct {
    _Atomic uint64_t ticket;  /* loop generation << 32 | next iteration to claim */
    _Atomic int done;         /* iterations of the current loop finished */
    _Atomic int error;        /* first non-zero result of an iteration */
    _Atomic uint32_t wake;    /* futex word, bumped for every loop */
    _Atomic int sleeping;     /* workers waiting on the futex */
    _Atomic int stop;         /* set by wpk_pool_stop; workers exit */
    _Atomic int nap;          /* set by wpk_pool_sleep: sleep now instead of spinning */
    halide_task_t fn;         /* the current loop; written only while no iteration of it can run */
    void *user_context;
    uint8_t *closure;
    int min, extent;
    int workers;
    long spin_ns;
    pthread_t threads[MAX_WORKERS];
    pthread_mutex_t owner;    /* held by the thread that runs a loop on the pool */
} pool = {.owner = PTHREAD_MUTEX_INITIALIZER};

static __thread int inside_pool;
static halide_do_par_for_t halide_pool; /* the handler before ours, restored by wpk_pool_stop */

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static uint32_t generation(uint64_t ticket) { return (uint32_t)(ticket >> 32); }

/* Claim and run iterations of loop `gen` until none is left or a newer loop replaced it. */
static void run_iterations(uint32_t gen) {
    uint64_t ticket = atomic_load_explicit(&pool.ticket, memory_order_acquire);
    while (generation(ticket) == gen && (uint32_t)ticket < (uint32_t)pool.extent) {
        if (!atomic_compare_exchange_weak_explicit(&pool.ticket, &ticket, ticket + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        /* The loop cannot finish, so fn and closure cannot change, until this iteration is done. */
        int result = pool.fn(pool.user_context, pool.min + (int)(uint32_t)ticket, pool.closure);
        if (result != 0) {
            int none = 0;
            atomic_compare_exchange_strong(&pool.error, &none, result);
        }
        atomic_fetch_add_explicit(&pool.done, 1, memory_order_release);
        ticket = atomic_load_explicit(&pool.ticket, memory_order_acquire);
    }
}

static void *worker(void *unused) {
    (void)unused;
    inside_pool = 1;
    uint32_t seen = generation(atomic_load(&pool.ticket));
    while (!atomic_load(&pool.stop)) {
        long since = now_ns();
        unsigned spins = 0;
        uint32_t gen;
        while ((gen = generation(atomic_load_explicit(&pool.ticket, memory_order_acquire))) == seen) {
            CPU_RELAX();
            if (++spins % 64 != 0)
                continue;
            if (atomic_load(&pool.stop))
                return NULL;
            if (atomic_load(&pool.nap) || now_ns() - since > pool.spin_ns) {
                uint32_t wake = atomic_load(&pool.wake);
                atomic_fetch_add(&pool.sleeping, 1);
                if (generation(atomic_load(&pool.ticket)) == seen && !atomic_load(&pool.stop))
                    syscall(SYS_futex, &pool.wake, FUTEX_WAIT_PRIVATE, wake, NULL, NULL, 0);
                atomic_fetch_sub(&pool.sleeping, 1);
                since = now_ns();
            }
        }
        seen = gen;
        run_iterations(gen);
    }
    return NULL;
}

static void wake_workers(void) {
    atomic_fetch_add(&pool.wake, 1);
    if (atomic_load(&pool.sleeping))
        syscall(SYS_futex, &pool.wake, FUTEX_WAKE_PRIVATE, MAX_WORKERS, NULL, NULL, 0);
}

static int serial_par_for(void *user_context, halide_task_t fn, int min, int extent, uint8_t *closure) {
    for (int i = min; i < min + extent; i++) {
        int result = fn(user_context, i, closure);
        if (result != 0)
            return result;
    }
    return 0;
}

static int pool_par_for(void *user_context, halide_task_t fn, int min, int extent, uint8_t *closure) {
    if (inside_pool || extent <= 1 || pool.workers == 0 || pthread_mutex_trylock(&pool.owner) != 0)
        return serial_par_for(user_context, fn, min, extent, closure);
    pool.fn = fn, pool.user_context = user_context, pool.closure = closure;
    pool.min = min, pool.extent = extent;
    atomic_store(&pool.error, 0);
    atomic_store(&pool.done, 0);
    atomic_store(&pool.nap, 0);
    uint32_t gen = generation(atomic_load(&pool.ticket)) + 1;
    atomic_store_explicit(&pool.ticket, (uint64_t)gen << 32, memory_order_release);
    wake_workers();
    inside_pool = 1;
    run_iterations(gen);
    inside_pool = 0;
    while (atomic_load_explicit(&pool.done, memory_order_acquire) < extent)
        CPU_RELAX();
    /* Closed: a worker still holding this loop's last ticket can no longer claim an iteration. */
    atomic_store(&pool.ticket, ((uint64_t)gen << 32) | CLOSED);
    int result = atomic_load(&pool.error);
    pthread_mutex_unlock(&pool.owner);
    return result;
}

static __thread char last_error[1024];

static void keep_error(void *user_context, const char *message) {
    (void)user_context;
    strncpy(last_error, message, sizeof(last_error) - 1);
}

/* The message of the last error a kernel reported on this thread. */
const char *wpk_last_error(void) { return last_error; }

/* Keep kernels' error messages instead of aborting; start threads-1 workers and route this
 * library's parallel loops to them. Returns 0, or -1 if no thread could be started (loops then
 * run on Halide's own pool). Idempotent. */
int wpk_start(int threads, int spin_us) {
    halide_set_error_handler(keep_error);
    if (pool.workers > 0)
        return 0;
    pool.spin_ns = (long)spin_us * 1000L;
    atomic_store(&pool.stop, 0);
    int wanted = threads - 1 > MAX_WORKERS ? MAX_WORKERS : threads - 1;
    while (pool.workers < wanted && pthread_create(&pool.threads[pool.workers], NULL, worker, NULL) == 0)
        pool.workers++;
    if (wanted > 0 && pool.workers == 0)
        return -1;
    halide_pool = halide_set_custom_do_par_for(pool_par_for);
    return 0;
}

/* Let the workers sleep now rather than spin: before another library's threads take the cores. */
void wpk_pool_sleep(void) { atomic_store(&pool.nap, 1); }

/* Stop and join the workers (before the library is unloaded); loops then run on Halide's pool. */
void wpk_pool_stop(void) {
    if (pool.workers == 0)
        return;
    pthread_mutex_lock(&pool.owner);
    halide_set_custom_do_par_for(halide_pool);
    atomic_store(&pool.stop, 1);
    wake_workers();
    for (int i = 0; i < pool.workers; i++)
        pthread_join(pool.threads[i], NULL);
    pool.workers = 0;
    pthread_mutex_unlock(&pool.owner);
}

typedef int (*halide_argv_t)(void **args);

/* Call n entry points in order, each with its argument array; stop at the first error.
 * Returns 0 or the error, and the failing step's index in *failed. */
int wpk_run(int n, halide_argv_t *entries, void ***arguments, int *failed) {
    for (int i = 0; i < n; i++) {
        int result = entries[i](arguments[i]);
        if (result != 0) {
            *failed = i;
            return result;
        }
    }
    return 0;
}
