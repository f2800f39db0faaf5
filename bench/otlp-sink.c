/*
 * otlp-sink: the OTLP/HTTP collector stand-in of the tracing benchmark.
 *
 * Accepts POST /v1/traces (protobuf bodies) on 127.0.0.1:PORT, reads each body and
 * answers 200 with an empty body (an empty ExportTraceServiceResponse), keeping only
 * counts; GET /stats answers {"exports": N, "bytes": N}. A real collector runs on
 * another machine: this one does the least work a receiver can (no decoding), so the
 * CPU it takes from the proxies under test on a small machine stays small. (The Python
 * sink it replaces, bench/otlp-sink.py, took a visible share of a 2-core machine.)
 * One thread per connection (the exporters keep one or two open); HTTP/1.1 keep-alive
 * with Content-Length bodies only (what Spoke's exporter sends). Stops on SIGTERM.
 *
 *   otlp-sink PORT
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

static atomic_ulong exports, bytes;

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads one request head into buf (up to the blank line); returns its length, or -1. */
static ssize_t read_head(int fd, char *buf, size_t cap, size_t *have) {
    for (;;) {
        char *end = memmem(buf, *have, "\r\n\r\n", 4);
        if (end) return end - buf + 4;
        if (*have == cap) return -1;
        ssize_t r = read(fd, buf + *have, cap - *have);
        if (r <= 0) return -1;
        *have += (size_t)r;
    }
}

static void *serve(void *arg) {
    int fd = (int)(long)arg;
    char buf[16384], body[65536];
    size_t have = 0;
    for (;;) {
        ssize_t head = read_head(fd, buf, sizeof buf, &have);
        if (head < 0) break;
        unsigned long len = 0;
        for (char *p = buf; p < buf + head;) {
            char *eol = memmem(p, (size_t)(buf + head - p), "\r\n", 2);
            if (!eol) break;
            if ((size_t)(eol - p) > 15 && strncasecmp(p, "content-length:", 15) == 0)
                len = strtoul(p + 15, NULL, 10);
            p = eol + 2;
        }
        int stats = strncmp(buf, "GET /stats", 10) == 0;
        /* The body: what is already buffered, then the rest from the socket. */
        size_t extra = have - (size_t)head;
        size_t used = extra < len ? extra : len;
        memmove(buf, buf + head + used, extra - used);
        have = extra - used;
        unsigned long left = len - used;
        while (left > 0) {
            ssize_t r = read(fd, body, left < sizeof body ? left : sizeof body);
            if (r <= 0) goto done;
            left -= (unsigned long)r;
        }
        char resp[256];
        int n;
        if (stats) {
            char js[128];
            int m = snprintf(js, sizeof js, "{\"exports\": %lu, \"bytes\": %lu}",
                             atomic_load(&exports), atomic_load(&bytes));
            n = snprintf(resp, sizeof resp,
                         "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         "content-length: %d\r\n\r\n%s", m, js);
        } else {
            atomic_fetch_add(&exports, 1);
            atomic_fetch_add(&bytes, len);
            n = snprintf(resp, sizeof resp,
                         "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\n"
                         "content-length: 0\r\n\r\n");
        }
        if (write_all(fd, resp, (size_t)n) < 0) break;
    }
done:
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: otlp-sink PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])) };
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 128) < 0) {
        perror("otlp-sink: bind");
        return 1;
    }
    for (;;) {
        int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) continue;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pthread_t t;
        if (pthread_create(&t, NULL, serve, (void *)(long)c) != 0) {
            close(c);
            continue;
        }
        pthread_detach(t);
    }
}
