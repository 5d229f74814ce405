// SPDX-License-Identifier: GPL-2.0
/* redirect.bpf.c: tc ingress program on every pod veth and uplink of a node.
 *
 * It decides, per packet, whether TCP belongs to the node proxy and hands it to the proxy's
 * socket with bpf_sk_assign; everything else goes back to the kernel untouched
 * (TC_ACT_UNSPEC, so a CNI's own filters still run). It never rewrites packets and never
 * forwards them anywhere itself. When capture is required but impossible (no listener,
 * no proxy socket) it drops: plaintext must not leave the node (fail closed).
 *
 * Maps (layouts in weft_maps.h) decide what is captured, not attachment: the program sits on
 * every interface and a pod joins or leaves the mesh by a map entry.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "weft_maps.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, WEFT_LISTENER_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} weft_listeners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MAX_PODS);
	__type(key, __u32);
	__type(value, struct weft_pod);
} weft_pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MAX_IFACES);
	__type(key, __u32);
	__type(value, struct weft_iface);
} weft_ifaces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MAX_HOST_ADDRS);
	__type(key, __u32);
	__type(value, __u32);
} weft_host_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MAX_SERVICE_VIPS);
	__type(key, __u32);
	__type(value, __u32);
} weft_service_vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct weft_config);
} weft_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MAX_DIRECT_VERDICTS);
	__type(key, struct weft_direct_verdict_key);
	__type(value, struct weft_direct_verdict);
} weft_direct_verdicts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MAX_DIRECT_FLOWS);
	__type(key, struct weft_flow_key);
	__type(value, struct weft_direct_flow);
} weft_direct_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEFT_MAX_DIRECT_CUTS);
	__type(key, struct weft_flow_key);
	__type(value, __u32);
} weft_direct_cuts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, WEFT_MAX_PODS + 1);
	__type(key, __u32);
	__type(value, struct weft_counters);
} weft_counters SEC(".maps");

enum counter {
	C_CAPTURED_OUTBOUND,
	C_CAPTURED_INBOUND,
	C_CAPTURED_HBONE,
	C_BYPASSED,
	C_DROPPED_NO_LISTENER,
	C_DROPPED_SPOOFED,
	C_DROPPED_STRAY,
	C_DROPPED_IPV6,
	C_DROPPED_FRAGMENT,
	C_DIRECT,
	C_DROPPED_CUT,
};

static __always_inline void count(__u32 pod_ip, enum counter which)
{
	struct weft_counters *c = bpf_map_lookup_elem(&weft_counters, &pod_ip);

	if (!c) {
		struct weft_counters zero = {};

		/* BPF_NOEXIST: another CPU may have created it meanwhile; either way look again. */
		bpf_map_update_elem(&weft_counters, &pod_ip, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&weft_counters, &pod_ip);
		if (!c)
			return; /* map full: the packet decision stands, only the count is lost */
	}
	switch (which) {
	case C_CAPTURED_OUTBOUND: c->captured_outbound++; break;
	case C_CAPTURED_INBOUND: c->captured_inbound++; break;
	case C_CAPTURED_HBONE: c->captured_hbone++; break;
	case C_BYPASSED: c->bypassed++; break;
	case C_DROPPED_NO_LISTENER: c->dropped_no_listener++; break;
	case C_DROPPED_SPOOFED: c->dropped_spoofed++; break;
	case C_DROPPED_STRAY: c->dropped_stray++; break;
	case C_DROPPED_IPV6: c->dropped_ipv6++; break;
	case C_DROPPED_FRAGMENT: c->dropped_fragment++; break;
	case C_DIRECT: c->direct++; break;
	case C_DROPPED_CUT: c->dropped_cut++; break;
	}
}

static __always_inline int is_enrolled(__u32 ip)
{
	const struct weft_pod *pod = bpf_map_lookup_elem(&weft_pods, &ip);

	return pod && (pod->flags & WEFT_POD_ENROLLED);
}

/* Marks a captured packet so `ip rule fwmark` routes it to the local table: without it the
 * kernel would try to forward a packet whose destination is not a node address and drop it. */
static __always_inline void mark_captured(struct __sk_buff *skb)
{
	__u32 zero = 0;
	const struct weft_config *cfg = bpf_map_lookup_elem(&weft_config, &zero);

	if (cfg && cfg->mark_mask)
		skb->mark = (skb->mark & ~cfg->mark_mask) | (cfg->mark & cfg->mark_mask);
}

/* Hands a packet of an existing connection to the socket that owns its 4-tuple, unless that
 * is a listener (new connections go to the capture listeners instead). TIME_WAIT sockets are
 * included: they answer the peer's last ACK or a retransmitted FIN. Returns 1 when assigned. */
static __always_inline int assign_established(struct __sk_buff *skb, struct bpf_sock_tuple *tuple)
{
	struct bpf_sock *sk;
	int assigned = 0;

	sk = bpf_skc_lookup_tcp(skb, tuple, sizeof(tuple->ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	if (sk->state != BPF_TCP_LISTEN)
		assigned = bpf_sk_assign(skb, sk, 0) == 0;
	bpf_sk_release(sk);
	if (assigned)
		mark_captured(skb);
	return assigned;
}

/* The listener of kind `kind` (WEFT_SLOT_*) that a new connection goes to: the one of the
 * worker its flow hash picks, else of the next worker (in order, wrapping) whose slot holds
 * one. NULL when no worker has one (the proxy is down). The caller releases the socket. */
static __always_inline struct bpf_sock *pick_listener(__u32 kind, __u32 hash)
{
	__u32 zero = 0;
	const struct weft_config *cfg = bpf_map_lookup_elem(&weft_config, &zero);
	__u32 workers = cfg && cfg->workers ? cfg->workers : 1;
	__u32 first, i;

	if (workers > WEFT_MAX_WORKERS)
		workers = WEFT_MAX_WORKERS;
	first = hash % workers;
	for (i = 0; i < WEFT_MAX_WORKERS && i < workers; i++) {
		__u32 worker = first + i;
		__u32 slot;
		struct bpf_sock *listener;

		if (worker >= workers)
			worker -= workers;
		slot = kind + WEFT_SLOT_COUNT * worker;
		listener = bpf_map_lookup_elem(&weft_listeners, &slot);
		if (listener)
			return listener;
	}
	return NULL;
}

/* Hands a new connection (SYN) to a capture listener of kind `kind`; drops when there is none. */
static __always_inline int assign_listener(struct __sk_buff *skb, __u32 kind, __u32 pod_ip,
					   enum counter captured)
{
	struct bpf_sock *listener = pick_listener(kind, bpf_get_hash_recalc(skb));
	long err;

	if (!listener) {
		count(pod_ip, C_DROPPED_NO_LISTENER);
		return TC_ACT_SHOT;
	}
	err = bpf_sk_assign(skb, listener, 0);
	bpf_sk_release(listener);
	if (err) {
		count(pod_ip, C_DROPPED_NO_LISTENER);
		return TC_ACT_SHOT;
	}
	mark_captured(skb);
	count(pod_ip, captured);
	return TC_ACT_OK;
}

/* Advances one direction's sequence mark; returns the newly covered payload bytes. Serial
 * arithmetic: a segment that ends at or before the mark is a retransmission and adds nothing. */
static __always_inline __u32 advance(__u32 *next_seq, __u32 end_seq)
{
	__u32 gained = end_seq - *next_seq;

	if ((__s32)gained <= 0)
		return 0;
	*next_seq = end_seq;
	return gained;
}

/* A new connection between two enrolled pods of this node that the proxy already allowed
 * (same client pod, server pod and port): let it through and start its flow entry. Only while
 * the proxy is up (its outbound listener is in its slot): with the proxy down nobody could
 * re-check the flow, so new connections fail closed as proxied ones do. Any worker's listener
 * will do: the control plane, not a worker, keeps direct flows. */
static __always_inline int try_direct(const struct bpf_sock_tuple *tuple, const struct tcphdr *tcp)
{
	struct weft_direct_verdict_key vkey = {
		.client_ip = tuple->ipv4.saddr,
		.server_ip = tuple->ipv4.daddr,
		.server_port = tuple->ipv4.dport,
	};
	struct weft_flow_key fkey = {
		.client_ip = tuple->ipv4.saddr,
		.server_ip = tuple->ipv4.daddr,
		.client_port = tuple->ipv4.sport,
		.server_port = tuple->ipv4.dport,
	};
	struct bpf_sock *listener;
	struct weft_direct_flow flow = {};

	if (!is_enrolled(tuple->ipv4.daddr) || !bpf_map_lookup_elem(&weft_direct_verdicts, &vkey)) {
		/* Proxied: an entry left from an earlier flow with this tuple must not match it. */
		bpf_map_delete_elem(&weft_direct_flows, &fkey);
		bpf_map_delete_elem(&weft_direct_cuts, &fkey);
		return 0;
	}
	listener = pick_listener(WEFT_SLOT_OUTBOUND, 0);
	if (!listener)
		return 0;
	bpf_sk_release(listener);

	flow.client_next_seq = bpf_ntohl(tcp->seq) + 1;
	flow.opened_ns = bpf_ktime_get_ns();
	flow.last_ns = flow.opened_ns;
	bpf_map_delete_elem(&weft_direct_cuts, &fkey);
	/* A full map leaves the connection to the proxy, which is always correct. */
	return bpf_map_update_elem(&weft_direct_flows, &fkey, &flow, BPF_ANY) == 0;
}

/* handle_direct's answer for a packet of no direct flow (distinct from every TC_ACT_*). */
#define NOT_DIRECT (-100)

/* A packet of a direct flow, in either direction: account for it and let it through, or drop
 * it when the proxy cut the flow. Returns NOT_DIRECT when it belongs to no direct flow. */
static __always_inline int handle_direct(struct __sk_buff *skb, const struct bpf_sock_tuple *tuple,
					 const struct iphdr *ip, const struct tcphdr *tcp)
{
	struct weft_flow_key key = {
		.client_ip = tuple->ipv4.saddr,
		.server_ip = tuple->ipv4.daddr,
		.client_port = tuple->ipv4.sport,
		.server_port = tuple->ipv4.dport,
	};
	struct weft_direct_flow *flow;
	int from_client = 1;
	__u32 payload, end_seq, l3_len, headers, fin_bit;
	__u64 now;

	flow = bpf_map_lookup_elem(&weft_direct_flows, &key);
	if (!flow) {
		key.client_ip = tuple->ipv4.daddr;
		key.server_ip = tuple->ipv4.saddr;
		key.client_port = tuple->ipv4.dport;
		key.server_port = tuple->ipv4.sport;
		flow = bpf_map_lookup_elem(&weft_direct_flows, &key);
		if (!flow)
			return NOT_DIRECT;
		from_client = 0;
	}
	if (!tcp->rst && bpf_map_lookup_elem(&weft_direct_cuts, &key)) {
		count(from_client ? key.client_ip : key.server_ip, C_DROPPED_CUT);
		return TC_ACT_SHOT;
	}

	/* Payload length from the IP header; a GSO packet over 64 KiB carries 0 there. */
	l3_len = bpf_ntohs(ip->tot_len);
	if (l3_len == 0)
		l3_len = skb->len - sizeof(struct ethhdr);
	headers = sizeof(struct iphdr) + tcp->doff * 4;
	payload = l3_len > headers ? l3_len - headers : 0;
	end_seq = bpf_ntohl(tcp->seq) + payload;
	fin_bit = tcp->fin ? (from_client ? WEFT_FLOW_FIN_CLIENT : WEFT_FLOW_FIN_SERVER) : 0;
	now = bpf_ktime_get_ns();

	/* After its FIN a side sends only ACKs, one sequence number further on (the FIN's). */
	bpf_spin_lock(&flow->lock);
	if (from_client) {
		if (!(flow->state & WEFT_FLOW_FIN_CLIENT))
			flow->client_bytes += advance(&flow->client_next_seq, end_seq);
	} else if (tcp->syn) {
		flow->server_next_seq = bpf_ntohl(tcp->seq) + 1;
		flow->state |= WEFT_FLOW_SERVER_SEQ;
	} else if ((flow->state & WEFT_FLOW_SERVER_SEQ) && !(flow->state & WEFT_FLOW_FIN_SERVER)) {
		flow->server_bytes += advance(&flow->server_next_seq, end_seq);
	}
	flow->state |= fin_bit | (tcp->rst ? WEFT_FLOW_RST : 0);
	flow->last_ns = now;
	if (!flow->closed_ns && ((flow->state & WEFT_FLOW_RST) ||
				 (flow->state & (WEFT_FLOW_FIN_CLIENT | WEFT_FLOW_FIN_SERVER)) ==
					 (WEFT_FLOW_FIN_CLIENT | WEFT_FLOW_FIN_SERVER)))
		flow->closed_ns = now;
	bpf_spin_unlock(&flow->lock);
	return TC_ACT_UNSPEC;
}

static __always_inline int handle_ipv6(struct __sk_buff *skb, void *data, void *data_end,
				       const struct weft_iface *from_pod)
{
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	__u8 next;

	if ((void *)(ip6 + 1) > data_end)
		return TC_ACT_UNSPEC;
	next = ip6->nexthdr;
	/* Extension headers could hide TCP; with no IPv6 capture, treat them as TCP. */
	if (next != IPPROTO_TCP && next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING &&
	    next != IPPROTO_FRAGMENT && next != IPPROTO_DSTOPTS)
		return TC_ACT_UNSPEC;
	if (from_pod && is_enrolled(from_pod->pod_ip)) {
		count(from_pod->pod_ip, C_DROPPED_IPV6);
		return TC_ACT_SHOT;
	}
	return TC_ACT_UNSPEC;
}

SEC("tc")
int weft_redirect(struct __sk_buff *skb)
{
	const __u32 l4_off = sizeof(struct ethhdr) + sizeof(struct iphdr);
	struct bpf_sock_tuple tuple = {};
	const struct weft_iface *from_pod;
	__u32 ifindex = skb->ifindex;
	void *data, *data_end;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct tcphdr *tcp;
	int new_connection;
	__u32 src, dst;

	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return TC_ACT_UNSPEC;

	from_pod = bpf_map_lookup_elem(&weft_ifaces, &ifindex);

	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return handle_ipv6(skb, data, data_end, from_pod);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_UNSPEC;

	ip = data + sizeof(*eth);
	if ((void *)(ip + 1) > data_end)
		return TC_ACT_UNSPEC;
	src = ip->saddr;
	dst = ip->daddr;

	/* Anti-spoofing applies to every protocol: a pod speaks only with its own address. */
	if (from_pod && src != from_pod->pod_ip) {
		count(from_pod->pod_ip, C_DROPPED_SPOOFED);
		return TC_ACT_SHOT;
	}
	if (ip->protocol != IPPROTO_TCP)
		return TC_ACT_UNSPEC;

	int src_enrolled = from_pod && is_enrolled(src);
	int dst_enrolled = !src_enrolled && is_enrolled(dst);

	if (!src_enrolled && !dst_enrolled) {
		if (from_pod)
			count(src, C_BYPASSED);
		return TC_ACT_UNSPEC;
	}

	/* From here on the packet is the mesh's: every path either assigns it or drops it. */
	__u32 owner = src_enrolled ? src : dst;

	if (ip->frag_off & bpf_htons(0x3fff)) {
		count(owner, C_DROPPED_FRAGMENT);
		return TC_ACT_SHOT;
	}
	if (ip->ihl != 5) {
		/* IP options are unused by TCP between pods; refusing them keeps the offsets fixed. */
		count(owner, C_DROPPED_STRAY);
		return TC_ACT_SHOT;
	}
	if (l4_off + sizeof(struct tcphdr) > skb->len) {
		count(owner, C_DROPPED_STRAY);
		return TC_ACT_SHOT;
	}
	if (data + l4_off + sizeof(struct tcphdr) > data_end) {
		if (bpf_skb_pull_data(skb, l4_off + sizeof(struct tcphdr)))
			return TC_ACT_SHOT;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	ip = data + sizeof(struct ethhdr);
	tcp = data + l4_off;
	if ((void *)(ip + 1) > data_end || (void *)(tcp + 1) > data_end)
		return TC_ACT_SHOT;

	tuple.ipv4.saddr = src;
	tuple.ipv4.daddr = dst;
	tuple.ipv4.sport = tcp->source;
	tuple.ipv4.dport = tcp->dest;
	new_connection = tcp->syn && !tcp->ack;

	if (!new_connection) {
		if (assign_established(skb, &tuple))
			return TC_ACT_OK;
		/* Either end may have left the mesh since the flow began; it stays direct. */
		int direct = handle_direct(skb, &tuple, ip, tcp);

		if (direct != NOT_DIRECT)
			return direct;
		/* A reply to the node itself (kubelet probes go out through the veth's egress,
		 * uncaptured) is the one plaintext an enrolled pod may send without the proxy. */
		if (src_enrolled && bpf_map_lookup_elem(&weft_host_addrs, &dst))
			return TC_ACT_UNSPEC;
		if (src_enrolled && bpf_map_lookup_elem(&weft_service_vips, &dst)) {
			/* Marked: the node can only deliver it locally, never forward it. */
			mark_captured(skb);
			return TC_ACT_OK;
		}
		count(owner, C_DROPPED_STRAY);
		return TC_ACT_SHOT;
	}

	if (src_enrolled) {
		if (try_direct(&tuple, tcp)) {
			count(src, C_DIRECT);
			return TC_ACT_UNSPEC;
		}
		return assign_listener(skb, WEFT_SLOT_OUTBOUND, src, C_CAPTURED_OUTBOUND);
	}

	__u32 zero = 0;
	const struct weft_config *cfg = bpf_map_lookup_elem(&weft_config, &zero);

	if (cfg && cfg->hbone_port && tcp->dest == bpf_htons((__u16)cfg->hbone_port))
		return assign_listener(skb, WEFT_SLOT_HBONE, dst, C_CAPTURED_HBONE);
	return assign_listener(skb, WEFT_SLOT_INBOUND, dst, C_CAPTURED_INBOUND);
}
