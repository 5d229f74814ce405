/* weft_maps.h: the layout of every map the redirect program shares with the node proxy.
 *
 * This header is the contract between bpf/ and src/bpf/maps.ts: change a struct here and the
 * TypeScript codecs must change with it (WEFT_ABI_VERSION guards pinned maps from an older
 * weft). It holds declarations only; no program logic lives here.
 */
#ifndef WEFT_MAPS_H
#define WEFT_MAPS_H

#include <linux/types.h>

/* Bumped whenever a map's key or value layout changes. */
#define WEFT_ABI_VERSION 2

#define WEFT_MAX_PODS 65536
#define WEFT_MAX_IFACES 65536
#define WEFT_MAX_HOST_ADDRS 256
#define WEFT_MAX_SERVICE_VIPS 65536

/* weft_listeners: SOCKMAP slots holding the node proxy's capture listeners. */
enum weft_listener_slot {
	WEFT_SLOT_OUTBOUND = 0, /* 15001: plaintext from local enrolled pods */
	WEFT_SLOT_INBOUND = 1,  /* 15006: plaintext to local enrolled pods */
	WEFT_SLOT_HBONE = 2,    /* 15008: HBONE to local enrolled pods */
	WEFT_SLOT_COUNT = 3,
};

/* weft_pods: key is a local pod's IPv4 address (network byte order). */
struct weft_pod {
	__u32 flags;
	__u32 ifindex; /* host-side veth of the pod; informational */
};
#define WEFT_POD_ENROLLED (1u << 0)

/* weft_ifaces: key is the ifindex of a pod's host-side veth. Interfaces absent from this
 * map (uplinks, unknown veths) are treated as "from outside": inbound capture only. */
struct weft_iface {
	__u32 pod_ip; /* the only source address this veth may carry (network byte order) */
	__u32 flags;  /* reserved, zero */
};

/* weft_config: a single entry (key 0). */
struct weft_config {
	__u32 abi_version; /* WEFT_ABI_VERSION of the proxy that filled the maps */
	__u32 mark;        /* fwmark set on captured packets so the node delivers them locally */
	__u32 mark_mask;   /* bits of skb->mark that weft owns */
	__u32 hbone_port;  /* inbound TCP port handed to the HBONE slot (15008) */
};

/* weft_counters: per-CPU, key is a pod IPv4 address; 0 counts what has no pod. */
struct weft_counters {
	__u64 captured_outbound;    /* new connections from an enrolled pod handed to 15001 */
	__u64 captured_inbound;     /* new connections to an enrolled pod handed to 15006 */
	__u64 captured_hbone;       /* new connections to an enrolled pod handed to 15008 */
	__u64 bypassed;             /* TCP packets of a non-enrolled pod left to the kernel */
	__u64 dropped_no_listener;  /* new connection with no listener in its slot (fail closed) */
	__u64 dropped_spoofed;      /* packet from a pod veth with a source IP not that pod's */
	__u64 dropped_stray;        /* enrolled pod packet with no proxy socket (e.g. proxy crash) */
	__u64 dropped_ipv6;         /* IPv6 TCP from or to an enrolled pod (no IPv6 capture yet) */
	__u64 dropped_fragment;     /* IPv4 fragment of TCP from or to an enrolled pod */
};

/* weft_host_addrs: the node's own addresses; key IPv4 (network order), value unused. */

/* weft_service_vips: cluster IPs of services; key IPv4 (network order), value unused. A
 * kube-proxy DNAT runs after tc ingress, so later packets of a captured connection to a VIP
 * carry the pre-NAT tuple and no socket lookup here can match them: they are handed to the
 * node's own stack (marked, so they can only be delivered locally), where the DNAT turns
 * them into the tuple of the proxy's accepted socket. */

#endif /* WEFT_MAPS_H */
