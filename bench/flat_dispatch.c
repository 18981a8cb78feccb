// SPDX-License-Identifier: GPL-2.0
/* PROTOTYPE for benchmark 1b, not part of the collection: the dispatch
 * program's lookup with one exact-match hash table instead of the LPM trie.
 *
 * A binding (protocol, family, port, prefix/len) is stored under its masked
 * prefix and length. Per (protocol, family), prefix_lens lists the distinct
 * prefix lengths in use, longest first, with a bit each for "has bindings on
 * a real port" and "has bindings on port 0". The program tries the lengths in
 * that order, at each one the real port first and then port 0: the first hit
 * is the longest prefix, and at equal length the specific port wins -- the
 * same precedence as dispatch.c.j2. A lookup costs at most 2 x (distinct
 * lengths in use) hash lookups, whatever the number of bindings, where the
 * trie walks O(depth) dependent nodes twice.
 * Everything after the lookup (metrics, sockets, bpf_sk_assign) is the same
 * code as dispatch.c.j2.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>

#define AF_INET  2
#define AF_INET6 10
#define MAX_LENS 8

struct flat_key {
	u8 protocol;
	u8 family;
	u16 port;		/* network byte order, 0 = every port */
	u32 prefixlen;		/* address prefix length */
	u32 addr[4];		/* masked to prefixlen; IPv4 uses addr[0] */
};

struct binding_value {
	u32 dest_id;
	u32 prefixlen;
};

struct lens {
	u32 n;
	u8 len[MAX_LENS];	/* longest first */
	u8 kinds[MAX_LENS];	/* bit 0: real ports at this length, bit 1: port 0 */
};

struct dest_metrics {
	u64 lookups;
	u64 misses;
	u64 errors;
};

BPF_F_TABLE("hash", struct flat_key, struct binding_value, flat_bindings, 1100000, BPF_F_NO_PREALLOC);
BPF_ARRAY(prefix_lens, struct lens, 4);	/* (udp ? 2 : 0) + (ipv6 ? 1 : 0) */
BPF_TABLE("sockmap", u32, u64, sockets, 1024);
BPF_PERCPU_ARRAY(metrics, struct dest_metrics, 1024);

/* Network-order mask of the first `bits` bits of a 32-bit word (0..32). */
static __always_inline u32 word_mask(int bits)
{
	if (bits >= 32)
		return 0xffffffff;
	if (bits <= 0)
		return 0;
	return bpf_htonl(~((1U << (32 - bits)) - 1));
}

int dispatch(struct bpf_sk_lookup *ctx)
{
	struct flat_key key = {};
	struct binding_value *best = NULL;
	struct dest_metrics *m;
	struct bpf_sock *sk;
	struct lens *lens;
	u32 addr[4] = {}, family, idx, dest_id;
	u16 port;
	long err;
	int i;

	if (ctx->sk)
		return SK_PASS;
	family = ctx->family;
	if (family == AF_INET) {
		addr[0] = ctx->local_ip4;
		/* keep each load in its branch: merged, clang would load through
		 * a computed ctx pointer, which the verifier refuses */
		asm volatile("" : "+r"(addr[0]));
	} else if (family == AF_INET6) {
		__builtin_memcpy(addr, ctx->local_ip6, 16);
		asm volatile("" : "+r"(addr[0]));
	} else {
		return SK_PASS;
	}
	idx = (ctx->protocol == IPPROTO_UDP ? 2 : 0) + (family == AF_INET6 ? 1 : 0);
	lens = prefix_lens.lookup(&idx);
	if (!lens)
		return SK_PASS;
	key.protocol = ctx->protocol;
	key.family = family;
	port = bpf_htons(ctx->local_port);

#pragma unroll
	for (i = 0; i < MAX_LENS; i++) {
		int plen;
		u8 kinds;

		if (i >= lens->n)
			break;
		plen = lens->len[i];
		kinds = lens->kinds[i];
		key.prefixlen = plen;
		key.addr[0] = addr[0] & word_mask(plen);
		key.addr[1] = addr[1] & word_mask(plen - 32);
		key.addr[2] = addr[2] & word_mask(plen - 64);
		key.addr[3] = addr[3] & word_mask(plen - 96);
		if (kinds & 1) {
			key.port = port;
			best = flat_bindings.lookup(&key);
			if (best)
				break;
		}
		if (kinds & 2) {
			key.port = 0;
			best = flat_bindings.lookup(&key);
			if (best)
				break;
		}
	}
	if (!best)
		return SK_PASS;

	dest_id = best->dest_id;
	m = metrics.lookup(&dest_id);
	if (m)
		m->lookups++;
	sk = (struct bpf_sock *)sockets.lookup(&dest_id);
	if (!sk) {
		if (m)
			m->misses++;
		return SK_DROP;
	}
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		if (m)
			m->errors++;
		return SK_DROP;
	}
	return SK_PASS;
}
