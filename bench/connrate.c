/*
 * connrate: short-lived TCP connections per second.
 *
 * Each of C worker threads loops until the deadline: connect, send an S-byte
 * payload, read the S-byte echo, close. Every socket call has a 2 s timeout,
 * so the run always ends within duration + ~2 s. Prints one JSON object:
 *   {"ok":N,"errors":{...},"seconds":T,"rate":R,"p50_us":..,"p99_us":..}
 *
 *   connrate -h 127.0.0.1 -p PORT [-c WORKERS] [-d SECONDS] [-s BYTES]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct worker {
    pthread_t tid;
    uint64_t ok, err_socket, err_connect, err_write, err_read, err_short;
    uint32_t *lat_us;
    size_t n_lat, cap_lat;
};

static struct sockaddr_in target;
static double deadline;
static size_t payload_len = 64;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void record(struct worker *w, double seconds) {
    if (w->n_lat == w->cap_lat) {
        size_t cap = w->cap_lat ? w->cap_lat * 2 : 65536;
        uint32_t *p = realloc(w->lat_us, cap * sizeof *p);
        if (!p) return;
        w->lat_us = p;
        w->cap_lat = cap;
    }
    w->lat_us[w->n_lat++] = (uint32_t)(seconds * 1e6);
}

static void *run(void *arg) {
    struct worker *w = arg;
    char out[65536], in[65536];
    memset(out, 'x', payload_len);
    struct timeval tv = { .tv_sec = 2, .tv_usec = 0 };
    int one = 1;
    while (now() < deadline) {
        double t0 = now();
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) { w->err_socket++; usleep(1000); continue; }
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv); /* also bounds connect() */
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, (struct sockaddr *)&target, sizeof target) < 0) {
            w->err_connect++; close(fd); usleep(1000); continue;
        }
        if (write(fd, out, payload_len) != (ssize_t)payload_len) {
            w->err_write++; close(fd); usleep(1000); continue;
        }
        size_t got = 0;
        int failed = 0;
        while (got < payload_len) {
            ssize_t r = read(fd, in + got, payload_len - got);
            if (r > 0) { got += (size_t)r; continue; }
            if (r < 0 && errno == EINTR) continue;
            if (r == 0) w->err_short++; else w->err_read++;
            failed = 1;
            break;
        }
        close(fd);
        if (failed) { usleep(1000); continue; }
        w->ok++;
        record(w, now() - t0);
    }
    return NULL;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0, workers = 4;
    double seconds = 5;
    int opt;
    while ((opt = getopt(argc, argv, "h:p:c:d:s:")) != -1) {
        switch (opt) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'c': workers = atoi(optarg); break;
        case 'd': seconds = atof(optarg); break;
        case 's': payload_len = (size_t)atol(optarg); break;
        default:
            fprintf(stderr, "usage: %s -h HOST -p PORT [-c WORKERS] [-d SECONDS] [-s BYTES]\n", argv[0]);
            return 2;
        }
    }
    if (port <= 0 || workers < 1 || workers > 256 || seconds <= 0 || seconds > 600 ||
        payload_len < 1 || payload_len > 65536) {
        fprintf(stderr, "connrate: bad arguments\n");
        return 2;
    }
    memset(&target, 0, sizeof target);
    target.sin_family = AF_INET;
    target.sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, host, &target.sin_addr) != 1) { fprintf(stderr, "bad host\n"); return 2; }
    signal(SIGPIPE, SIG_IGN);

    struct worker *ws = calloc((size_t)workers, sizeof *ws);
    double start = now();
    deadline = start + seconds;
    for (int i = 0; i < workers; i++) pthread_create(&ws[i].tid, NULL, run, &ws[i]);
    for (int i = 0; i < workers; i++) pthread_join(ws[i].tid, NULL);
    double elapsed = now() - start;

    uint64_t ok = 0, es = 0, ec = 0, ew = 0, er = 0, esh = 0;
    size_t n = 0;
    for (int i = 0; i < workers; i++) {
        ok += ws[i].ok; es += ws[i].err_socket; ec += ws[i].err_connect;
        ew += ws[i].err_write; er += ws[i].err_read; esh += ws[i].err_short;
        n += ws[i].n_lat;
    }
    uint32_t *all = malloc((n ? n : 1) * sizeof *all);
    size_t k = 0;
    for (int i = 0; i < workers; i++) {
        if (ws[i].n_lat) memcpy(all + k, ws[i].lat_us, ws[i].n_lat * sizeof *all);
        k += ws[i].n_lat;
    }
    qsort(all, n, sizeof *all, cmp_u32);
    uint32_t p50 = n ? all[n / 2] : 0, p99 = n ? all[(size_t)((double)n * 0.99)] : 0;
    printf("{\"ok\":%llu,\"errors\":{\"socket\":%llu,\"connect\":%llu,\"write\":%llu,"
           "\"read\":%llu,\"short\":%llu},\"workers\":%d,\"payload\":%zu,"
           "\"seconds\":%.3f,\"rate\":%.1f,\"p50_us\":%u,\"p99_us\":%u}\n",
           (unsigned long long)ok, (unsigned long long)es, (unsigned long long)ec,
           (unsigned long long)ew, (unsigned long long)er, (unsigned long long)esh,
           workers, payload_len, elapsed, (double)ok / elapsed, p50, p99);
    return 0;
}
