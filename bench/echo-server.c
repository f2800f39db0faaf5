/*
 * echo-server: the upstream for the connection-rate benchmark.
 *
 * Single-threaded epoll loop (optionally N threads with SO_REUSEPORT) that
 * echoes every byte it reads and closes when the peer closes. Binds only the
 * address it is given (127.0.0.1 in the bench). Stops on SIGTERM/SIGINT.
 *
 *   echo-server ADDR PORT [THREADS]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static struct sockaddr_in bind_addr;

static void on_signal(int sig) { (void)sig; stop = 1; }

static int listen_socket(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) { perror("socket"); exit(1); }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&bind_addr, sizeof bind_addr) < 0) { perror("bind"); exit(1); }
    if (listen(fd, 4096) < 0) { perror("listen"); exit(1); }
    return fd;
}

static void *serve(void *arg) {
    (void)arg;
    int lfd = listen_socket();
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = lfd };
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event events[256];
    char buf[65536];
    while (!stop) {
        int n = epoll_wait(ep, events, 256, 200);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                for (;;) {
                    int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (c < 0) break;
                    int one = 1;
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event cev = { .events = EPOLLIN | EPOLLRDHUP, .data.fd = c };
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            int done = 0;
            for (;;) {
                ssize_t r = read(fd, buf, sizeof buf);
                if (r > 0) {
                    ssize_t off = 0;
                    while (off < r) {
                        ssize_t w = write(fd, buf + off, (size_t)(r - off));
                        if (w > 0) { off += w; continue; }
                        if (w < 0 && errno == EINTR) continue;
                        if (w < 0 && errno == EAGAIN) {
                            /* Small payloads never get here on loopback; wait briefly
                             * rather than buffering so the loop stays trivial. */
                            usleep(100);
                            continue;
                        }
                        done = 1;
                        break;
                    }
                    if (done) break;
                    continue;
                }
                if (r == 0) { done = 1; break; }
                if (errno == EINTR) continue;
                if (errno != EAGAIN) done = 1;
                break;
            }
            if (done) { epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL); close(fd); }
        }
    }
    close(ep);
    close(lfd);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s ADDR PORT [THREADS]\n", argv[0]); return 2; }
    memset(&bind_addr, 0, sizeof bind_addr);
    bind_addr.sin_family = AF_INET;
    bind_addr.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &bind_addr.sin_addr) != 1) { fprintf(stderr, "bad addr\n"); return 2; }
    int threads = argc > 3 ? atoi(argv[3]) : 1;
    if (threads < 1) threads = 1;
    struct sigaction sa = { .sa_handler = on_signal };
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    pthread_t tids[64];
    if (threads > 64) threads = 64;
    for (int i = 1; i < threads; i++) pthread_create(&tids[i], NULL, serve, NULL);
    serve(NULL);
    for (int i = 1; i < threads; i++) pthread_join(tids[i], NULL);
    return 0;
}
