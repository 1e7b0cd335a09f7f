/*
 * udp_sender: UDP datagrams at a fixed packet rate, for bench/bench_capture.py.
 *
 * iperf3 cannot send more than ~90,000 small datagrams/s on this 2-core machine while
 * the capture shares it: one sendto() per datagram, and its pacing. This sends them in
 * batches of BATCH with sendmmsg(2), paced by the clock (each batch when its first
 * datagram is due), so that a rate of 200,000+ packets/s costs the sender little.
 *
 *   udp_sender DST_IP PORT RATE_PPS SECONDS PAYLOAD_BYTES
 *
 * Prints one JSON line: {"sent": N, "seconds": S, "send_errors": E}. A datagram the
 * kernel refused (ENOBUFS, EAGAIN) is counted in send_errors, not in sent.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 32

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void sleep_until(double when) {
    struct timespec t;
    t.tv_sec = (time_t)when;
    t.tv_nsec = (long)((when - (double)t.tv_sec) * 1e9);
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL);
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s DST_IP PORT RATE_PPS SECONDS PAYLOAD_BYTES\n", argv[0]);
        return 2;
    }
    const char *dst_ip = argv[1];
    int port = atoi(argv[2]);
    double rate = atof(argv[3]), seconds = atof(argv[4]);
    int payload = atoi(argv[5]);
    if (port <= 0 || port > 65535 || rate <= 0 || seconds <= 0 || payload < 8 || payload > 1400) {
        fprintf(stderr, "udp_sender: bad arguments\n");
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        perror("udp_sender: socket");
        return 1;
    }
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    if (inet_pton(AF_INET, dst_ip, &dst.sin_addr) != 1) {
        fprintf(stderr, "udp_sender: not an IPv4 address: %s\n", dst_ip);
        return 2;
    }
    if (connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0) {
        perror("udp_sender: connect");
        return 1;
    }
    static char data[BATCH][1400];
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        memset(data[i], 'w', (size_t)payload);
        iov[i].iov_base = data[i];
        iov[i].iov_len = (size_t)payload;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    unsigned long long total = (unsigned long long)(rate * seconds), sent = 0, errors = 0;
    double start = now_s();
    while (sent + errors < total) {
        double due = start + (double)(sent + errors) / rate;
        if (now_s() < due) sleep_until(due);
        unsigned long long left = total - sent - errors;
        unsigned int n = left < BATCH ? (unsigned int)left : BATCH;
        for (unsigned int i = 0; i < n; i++) {
            /* a sequence number in each datagram: distinct payloads, as real traffic has */
            unsigned long long seq = sent + errors + i;
            memcpy(data[i], &seq, sizeof seq);
        }
        int done = sendmmsg(fd, msgs, n, 0);
        if (done < 0) {
            if (errno == ENOBUFS || errno == EAGAIN || errno == ECONNREFUSED) {
                errors += 1; /* the first datagram of the batch was refused; go on */
                continue;
            }
            perror("udp_sender: sendmmsg");
            return 1;
        }
        sent += (unsigned long long)done;
    }
    printf("{\"sent\": %llu, \"seconds\": %.6f, \"send_errors\": %llu}\n", sent, now_s() - start, errors);
    return 0;
}
