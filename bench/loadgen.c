/* loadgen: the servers and load generators of the data-path benchmarks.
 *
 * Python cannot open tens of thousands of TCP connections per second, so the
 * traffic side is this small C program (gcc -O2 -pthread). It only ever talks
 * to the addresses it is given, which the benchmarks keep on loopback or inside
 * namespaces they created, and every client run is bounded in time and count.
 *
 *   loadgen server tcp ADDR PORT [-t THREADS] [-T] [-c CPU]
 *       one listening socket (-T: IP_TRANSPARENT, for TPROXY); each
 *       connection: read 1 byte, write 1 byte, close (server closes first).
 *   loadgen server tcp-range ADDR LO HI [-c CPU]
 *       one listening socket per port LO..HI (the "bind every port" way);
 *       prints how long opening them took.
 *   loadgen server udp ADDR PORT [-t THREADS] [-c CPU]
 *       echo every datagram back to its sender.
 *   Servers print "ready PORT FD SETUP_US" on stdout once listening, then run
 *   until killed.
 *
 *   loadgen client tcp|udp ADDR PORT[-HI] [-t THREADS] [-s SECONDS] [-n MAX]
 *                  [-b BINDADDR] [-c CPU]
 *       closed loop: each thread has one transaction outstanding. TCP: connect,
 *       send 1 byte, read the reply, close with RST (SO_LINGER 0, so no
 *       TIME_WAIT exhausts the ephemeral ports). UDP: sendto 1 byte, wait for
 *       the echo (200 ms timeout counts a loss). A port range picks a random
 *       port per transaction. Prints one JSON line: count, rate, errors and
 *       latency percentiles in microseconds (connect to reply).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HIST_US 200000		/* latency histogram: 1 us buckets up to 200 ms */

static struct sockaddr_storage target;
static socklen_t target_len;
static struct sockaddr_storage bindaddr;
static socklen_t bind_len;
static int family, port_lo, port_hi, udp, threads = 1, cpu = -1, transparent;
static double seconds = 3;
static long max_ops;
static volatile int stop;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void pin(void)
{
	cpu_set_t set;
	if (cpu < 0)
		return;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	sched_setaffinity(0, sizeof(set), &set);
}

static void parse_addr(const char *addr, int port, struct sockaddr_storage *ss, socklen_t *len)
{
	memset(ss, 0, sizeof(*ss));
	if (strchr(addr, ':')) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(port);
		if (inet_pton(AF_INET6, addr, &s6->sin6_addr) != 1)
			die("bad IPv6 address");
		*len = sizeof(*s6);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
		s4->sin_family = AF_INET;
		s4->sin_port = htons(port);
		if (inet_pton(AF_INET, addr, &s4->sin_addr) != 1)
			die("bad IPv4 address");
		*len = sizeof(*s4);
	}
}

static void set_port(struct sockaddr_storage *ss, int port)
{
	if (ss->ss_family == AF_INET6)
		((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
	else
		((struct sockaddr_in *)ss)->sin_port = htons(port);
}

static void raise_nofile(void)
{
	struct rlimit r = { 200000, 200000 };
	setrlimit(RLIMIT_NOFILE, &r);
}

/* --- servers ----------------------------------------------------------- */

static int *listeners;
static int nlisteners;

static int open_listener(int type, int port)
{
	struct sockaddr_storage ss = target;
	int one = 1, fd = socket(family, type | (type == SOCK_STREAM ? SOCK_NONBLOCK : 0), 0);
	if (fd < 0)
		die("socket");
	set_port(&ss, port);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (transparent && setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one)))
		die("IP_TRANSPARENT");
	if (bind(fd, (struct sockaddr *)&ss, target_len))
		die("bind");
	if (type == SOCK_STREAM && listen(fd, 4096))
		die("listen");
	return fd;
}

static void *tcp_server(void *arg)
{
	struct epoll_event ev, events[256];
	int i, ep = epoll_create1(0);
	char byte;
	(void)arg;
	pin();
	for (i = 0; i < nlisteners; i++) {
		ev.events = EPOLLIN | EPOLLEXCLUSIVE;
		ev.data.u64 = ((uint64_t)1 << 32) | (uint32_t)listeners[i];
		if (epoll_ctl(ep, EPOLL_CTL_ADD, listeners[i], &ev))
			die("epoll_ctl listener");
	}
	for (;;) {
		int n = epoll_wait(ep, events, 256, -1);
		for (i = 0; i < n; i++) {
			int fd = (int)(uint32_t)events[i].data.u64;
			if (events[i].data.u64 >> 32) {
				int c;
				while ((c = accept4(fd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
					ev.events = EPOLLIN | EPOLLRDHUP;
					ev.data.u64 = (uint32_t)c;
					epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
				}
			} else {
				if (read(fd, &byte, 1) == 1)
					(void)!write(fd, &byte, 1);
				close(fd);	/* server closes first; the client's RST ends it */
			}
		}
	}
	return NULL;
}

static void *udp_server(void *arg)
{
	char buf[2048];
	struct sockaddr_storage peer;
	(void)arg;
	pin();
	for (;;) {
		socklen_t plen = sizeof(peer);
		ssize_t n = recvfrom(listeners[0], buf, sizeof(buf), 0, (struct sockaddr *)&peer, &plen);
		if (n > 0)
			sendto(listeners[0], buf, n, 0, (struct sockaddr *)&peer, plen);
	}
	return NULL;
}

static int server(int argc, char **argv)
{
	const char *mode = argv[0];
	int i, lo, hi, t;
	double t0;
	pthread_t tid;

	if (argc < 3)
		return 2;
	lo = hi = atoi(argv[2]);
	if (!strcmp(mode, "tcp-range")) {
		if (argc < 4)
			return 2;
		hi = atoi(argv[3]);
	}
	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-t") && i + 1 < argc) threads = atoi(argv[++i]);
		else if (!strcmp(argv[i], "-c") && i + 1 < argc) cpu = atoi(argv[++i]);
		else if (!strcmp(argv[i], "-T")) transparent = 1;
	}
	parse_addr(argv[1], 0, &target, &target_len);
	family = target.ss_family;
	raise_nofile();
	listeners = calloc(hi - lo + 1, sizeof(int));
	t0 = now();
	for (i = lo; i <= hi; i++)
		listeners[nlisteners++] = open_listener(strcmp(mode, "udp") ? SOCK_STREAM : SOCK_DGRAM, i);
	{
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		getsockname(listeners[0], (struct sockaddr *)&ss, &len);
		printf("ready %d %d %.0f\n", ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
					    : ((struct sockaddr_in *)&ss)->sin_port),
		       listeners[0], (now() - t0) * 1e6);
		fflush(stdout);
	}
	for (t = 1; t < threads; t++)
		pthread_create(&tid, NULL, strcmp(mode, "udp") ? tcp_server : udp_server, NULL);
	if (strcmp(mode, "udp"))
		tcp_server(NULL);
	else
		udp_server(NULL);
	return 0;
}

/* --- clients ----------------------------------------------------------- */

struct worker {
	pthread_t tid;
	unsigned seed;
	long ops, errors;
	uint32_t *hist;
	long overflow;
};

static long total_ops(struct worker *w)
{
	long s = 0;
	for (int i = 0; i < threads; i++)
		s += w[i].ops;
	return s;
}

static void record(struct worker *w, double t0)
{
	long us = (long)((now() - t0) * 1e6);
	if (us < HIST_US)
		w->hist[us]++;
	else
		w->overflow++;
	w->ops++;
}

static void *tcp_client(void *arg)
{
	struct worker *w = arg;
	struct linger lg = { 1, 0 };
	struct sockaddr_storage ss = target;
	char byte = 'x';
	int one = 1;
	pin();
	while (!stop) {
		double t0;
		int fd;
		if (port_hi > port_lo)
			set_port(&ss, port_lo + rand_r(&w->seed) % (port_hi - port_lo + 1));
		t0 = now();
		fd = socket(family, SOCK_STREAM, 0);
		if (fd < 0) {
			w->errors++;
			continue;
		}
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		if (bind_len) {
			setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
			bind(fd, (struct sockaddr *)&bindaddr, bind_len);
		}
		if (connect(fd, (struct sockaddr *)&ss, target_len) == 0 && write(fd, &byte, 1) == 1 &&
		    read(fd, &byte, 1) == 1)
			record(w, t0);
		else
			w->errors++;
		close(fd);
		if (max_ops && w->ops >= max_ops)
			break;
	}
	return NULL;
}

static void *udp_client(void *arg)
{
	struct worker *w = arg;
	struct timeval tv = { 0, 200000 };
	struct sockaddr_storage ss = target;
	char buf[64];
	int fd = socket(family, SOCK_DGRAM, 0);
	pin();
	if (fd < 0)
		die("socket");
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (bind_len && bind(fd, (struct sockaddr *)&bindaddr, bind_len))
		die("bind");
	while (!stop) {
		double t0 = now();
		if (port_hi > port_lo)
			set_port(&ss, port_lo + rand_r(&w->seed) % (port_hi - port_lo + 1));
		if (sendto(fd, "x", 1, 0, (struct sockaddr *)&ss, target_len) == 1 &&
		    recv(fd, buf, sizeof(buf), 0) > 0)
			record(w, t0);
		else
			w->errors++;
		if (max_ops && w->ops >= max_ops)
			break;
	}
	close(fd);
	return NULL;
}

static double pct(uint32_t *hist, long count, double p)
{
	long want = (long)(count * p / 100.0), seen = 0;
	for (long us = 0; us < HIST_US; us++) {
		seen += hist[us];
		if (seen > want)
			return us + 0.5;
	}
	return HIST_US;
}

static int client(int argc, char **argv)
{
	struct worker *w;
	uint32_t *hist;
	double t0, elapsed, sum = 0;
	long count = 0, errors = 0, overflow = 0;
	char *dash;
	int i;

	if (argc < 3)
		return 2;
	udp = !strcmp(argv[0], "udp");
	port_lo = port_hi = atoi(argv[2]);
	dash = strchr(argv[2], '-');
	if (dash)
		port_hi = atoi(dash + 1);
	for (i = 3; i < argc; i++) {
		if (!strcmp(argv[i], "-t") && i + 1 < argc) threads = atoi(argv[++i]);
		else if (!strcmp(argv[i], "-s") && i + 1 < argc) seconds = atof(argv[++i]);
		else if (!strcmp(argv[i], "-n") && i + 1 < argc) max_ops = atol(argv[++i]);
		else if (!strcmp(argv[i], "-c") && i + 1 < argc) cpu = atoi(argv[++i]);
		else if (!strcmp(argv[i], "-b") && i + 1 < argc) parse_addr(argv[++i], 0, &bindaddr, &bind_len);
	}
	parse_addr(argv[1], port_lo, &target, &target_len);
	family = target.ss_family;
	raise_nofile();
	w = calloc(threads, sizeof(*w));
	t0 = now();
	for (i = 0; i < threads; i++) {
		w[i].seed = 12345 + i;
		w[i].hist = calloc(HIST_US, sizeof(uint32_t));
		pthread_create(&w[i].tid, NULL, udp ? udp_client : tcp_client, &w[i]);
	}
	/* stop on time, or when every thread reached -n */
	while (now() - t0 < seconds && !(max_ops && total_ops(w) >= max_ops * threads))
		usleep(10000);
	stop = 1;
	for (i = 0; i < threads; i++)
		pthread_join(w[i].tid, NULL);
	elapsed = now() - t0;
	hist = calloc(HIST_US, sizeof(uint32_t));
	for (i = 0; i < threads; i++) {
		for (long us = 0; us < HIST_US; us++) {
			hist[us] += w[i].hist[us];
			sum += (us + 0.5) * w[i].hist[us];
		}
		count += w[i].ops;
		errors += w[i].errors;
		overflow += w[i].overflow;
	}
	printf("{\"count\": %ld, \"errors\": %ld, \"seconds\": %.4f, \"rate\": %.1f, \"p50_us\": %.1f, "
	       "\"p90_us\": %.1f, \"p99_us\": %.1f, \"mean_us\": %.1f, \"over_200ms\": %ld}\n",
	       count, errors, elapsed, count / elapsed, pct(hist, count, 50), pct(hist, count, 90),
	       pct(hist, count, 99), count ? sum / count : 0.0, overflow);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 3 && !strcmp(argv[1], "server"))
		return server(argc - 2, argv + 2);
	if (argc >= 3 && !strcmp(argv[1], "client"))
		return client(argc - 2, argv + 2);
	fprintf(stderr, "usage: loadgen server tcp|tcp-range|udp ... | loadgen client tcp|udp ADDR PORT[-HI] ...\n");
	return 2;
}
