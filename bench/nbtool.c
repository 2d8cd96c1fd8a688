/* nbtool: tiny TCP helpers for pasta-net's bench/ (request/response, connect
 * rate, startup probe, echo server, idle-flow holder).  Plain C so that the
 * tool's own overhead is small next to the helper under test.  Derived from
 * the reference harness shared/netbench/nbtool.c; hold/flows are new.
 *
 *   nbtool serve PORT [ADDR]          echo server (poll loop, many conns)
 *   nbtool rr    ADDR PORT SECONDS    1-byte ping-pong on one connection
 *   nbtool crr   ADDR PORT SECONDS    connect, 1-byte ping-pong, close; repeat
 *   nbtool probe ADDR PORT TIMEOUT_S  retry connect until it succeeds; prints
 *                                     "ready" at start and the CLOCK_MONOTONIC
 *                                     time of the first successful connect
 *   nbtool hold  PORT [ADDR]          accept any number of connections and
 *                                     keep them open (epoll; data discarded)
 *   nbtool flows ADDR PORT N          open N connections one after another,
 *                                     print "open=... errors=... seconds=...",
 *                                     then keep them open until stdin closes
 *
 * Output of rr/crr/probe is one line of key=value pairs.
 * IPv4 and IPv6 literals are accepted.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static socklen_t mkaddr(const char *a, int port, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, a, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		s4->sin_port = htons(port);
		return sizeof(*s4);
	}
	if (inet_pton(AF_INET6, a, &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(port);
		return sizeof(*s6);
	}
	fprintf(stderr, "bad address %s\n", a);
	exit(2);
}

static int xconnect(struct sockaddr_storage *ss, socklen_t sl)
{
	int one = 1, s = socket(ss->ss_family, SOCK_STREAM, 0);
	if (s < 0)
		return -1;
	setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(s, (struct sockaddr *)ss, sl) < 0) {
		close(s);
		return -1;
	}
	return s;
}

/* one transaction: send 1 byte, wait for 1 byte back */
static int xact(int s)
{
	char c = 'x';
	if (send(s, &c, 1, 0) != 1)
		return -1;
	return recv(s, &c, 1, 0) == 1 ? 0 : -1;
}

static int serve(int port, const char *addr)
{
	struct sockaddr_storage ss;
	socklen_t sl = mkaddr(addr ? addr : "::", port, &ss);
	int one = 1, ls = socket(ss.ss_family, SOCK_STREAM, 0);
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(ls, (struct sockaddr *)&ss, sl) < 0 || listen(ls, 1024) < 0) {
		perror("bind/listen");
		return 1;
	}
	enum { MAXC = 1024 };
	struct pollfd p[MAXC + 1];
	int n = 1;
	p[0].fd = ls;
	p[0].events = POLLIN;
	for (;;) {
		if (poll(p, n, -1) < 0 && errno != EINTR)
			return 1;
		if (p[0].revents & POLLIN) {
			int c = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
			if (c >= 0 && n <= MAXC) {
				setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
				p[n].fd = c;
				p[n].events = POLLIN;
				p[n].revents = 0;
				n++;
			} else if (c >= 0) {
				close(c);
			}
		}
		for (int i = 1; i < n; i++) {
			if (!p[i].revents)
				continue;
			char buf[4096];
			ssize_t r = recv(p[i].fd, buf, sizeof(buf), 0);
			if (r > 0 && send(p[i].fd, buf, r, MSG_NOSIGNAL) == r)
				continue;
			if (r < 0 && errno == EAGAIN)
				continue;
			close(p[i].fd);
			p[i] = p[--n];
			i--;
		}
	}
}

static int rr(const char *a, int port, double secs)
{
	struct sockaddr_storage ss;
	socklen_t sl = mkaddr(a, port, &ss);
	int s = xconnect(&ss, sl);
	if (s < 0) {
		perror("connect");
		return 1;
	}
	long n = 0;
	double t0 = now(), t;
	do {
		for (int i = 0; i < 100; i++, n++)
			if (xact(s) < 0) {
				perror("rr");
				return 1;
			}
		t = now();
	} while (t - t0 < secs);
	close(s);
	printf("transactions=%ld seconds=%.3f tps=%.1f mean_rtt_us=%.2f\n",
	       n, t - t0, n / (t - t0), (t - t0) / n * 1e6);
	return 0;
}

static int crr(const char *a, int port, double secs)
{
	struct sockaddr_storage ss;
	socklen_t sl = mkaddr(a, port, &ss);
	long n = 0, err = 0;
	double t0 = now(), t;
	do {
		int s = xconnect(&ss, sl);
		if (s < 0 || xact(s) < 0)
			err++;
		else
			n++;
		if (s >= 0)
			close(s);
		t = now();
		if (err > 1000)
			break;
	} while (t - t0 < secs);
	printf("connections=%ld errors=%ld seconds=%.3f cps=%.1f\n",
	       n, err, t - t0, n / (t - t0));
	return err > 1000;
}

static int probe(const char *a, int port, double timeout)
{
	struct sockaddr_storage ss;
	socklen_t sl = mkaddr(a, port, &ss);
	long tries = 0;
	printf("ready\n");
	fflush(stdout);
	double t0 = now();
	while (now() - t0 < timeout) {
		tries++;
		int s = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
		int r = connect(s, (struct sockaddr *)&ss, sl);
		if (r < 0 && errno == EINPROGRESS) {
			/* a SYN sent before the helper is ready may be dropped:
			 * give up after 50 ms and retry instead of waiting for
			 * the kernel's 1 s retransmission */
			struct pollfd p = { .fd = s, .events = POLLOUT };
			int e = 0;
			socklen_t el = sizeof(e);
			if (poll(&p, 1, 50) == 1 &&
			    !getsockopt(s, SOL_SOCKET, SO_ERROR, &e, &el) && !e)
				r = 0;
		}
		if (r == 0) {
			printf("connected_at=%.6f tries=%ld\n", now(), tries);
			close(s);
			return 0;
		}
		close(s);
		usleep(500);
	}
	printf("timeout tries=%ld\n", tries);
	return 1;
}

/* idle-flow server: unlike serve() it has no connection limit, because the
 * scaling test holds 10,000 flows at once */
static int hold(int port, const char *addr)
{
	struct sockaddr_storage ss;
	socklen_t sl = mkaddr(addr ? addr : "::", port, &ss);
	int one = 1, ls = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(ls, (struct sockaddr *)&ss, sl) < 0 || listen(ls, 4096) < 0) {
		perror("bind/listen");
		return 1;
	}
	int ep = epoll_create1(0);
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = ls }, evs[256];
	epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
	for (;;) {
		int n = epoll_wait(ep, evs, 256, -1);
		if (n < 0 && errno != EINTR)
			return 1;
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			if (fd == ls) {
				int c;
				while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
					ev.events = EPOLLIN;
					ev.data.fd = c;
					if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev) < 0)
						close(c);
				}
				continue;
			}
			char buf[4096];
			ssize_t r = recv(fd, buf, sizeof(buf), 0);
			if (r == 0 || (r < 0 && errno != EAGAIN))
				close(fd);	/* also removes it from ep */
		}
	}
}

/* idle-flow client: connections are opened one at a time so that the helper
 * sees a steady trickle of SYNs, not a burst it might legitimately drop */
static int flows(const char *a, int port, long want)
{
	struct sockaddr_storage ss;
	socklen_t sl = mkaddr(a, port, &ss);
	struct timeval tmo = { .tv_sec = 5 };
	long open = 0, err = 0;
	double t0 = now();
	while (open < want && err <= 100) {
		int s = socket(ss.ss_family, SOCK_STREAM, 0);
		if (s < 0) {
			perror("socket");
			break;
		}
		/* bounds connect() too, instead of the kernel's SYN backoff */
		setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tmo, sizeof(tmo));
		if (connect(s, (struct sockaddr *)&ss, sl) < 0) {
			close(s);
			err++;
			continue;
		}
		open++;
	}
	printf("open=%ld errors=%ld seconds=%.3f\n", open, err, now() - t0);
	fflush(stdout);
	char c;
	while (read(0, &c, 1) > 0)
		;
	return open == want ? 0 : 1;
}

int main(int argc, char **argv)
{
	if (argc >= 3 && !strcmp(argv[1], "serve"))
		return serve(atoi(argv[2]), argc > 3 ? argv[3] : NULL);
	if (argc == 5 && !strcmp(argv[1], "rr"))
		return rr(argv[2], atoi(argv[3]), atof(argv[4]));
	if (argc == 5 && !strcmp(argv[1], "crr"))
		return crr(argv[2], atoi(argv[3]), atof(argv[4]));
	if (argc == 5 && !strcmp(argv[1], "probe"))
		return probe(argv[2], atoi(argv[3]), atof(argv[4]));
	if (argc >= 3 && !strcmp(argv[1], "hold"))
		return hold(atoi(argv[2]), argc > 3 ? argv[3] : NULL);
	if (argc == 5 && !strcmp(argv[1], "flows"))
		return flows(argv[2], atoi(argv[3]), atol(argv[4]));
	fprintf(stderr, "usage: see top of nbtool.c\n");
	return 2;
}
