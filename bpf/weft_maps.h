/* weft_maps.h: the layout of every map the redirect program shares with the node proxy.
 *
 * This header is the contract between bpf/ and src/bpf/maps.ts: change a struct here and the
 * TypeScript codecs must change with it (WEFT_ABI_VERSION guards pinned maps from an older
 * weft). It holds declarations only; no program logic lives here.
 */
#ifndef WEFT_MAPS_H
#define WEFT_MAPS_H

#include <linux/bpf.h>
#include <linux/types.h>

/* Bumped whenever a map's key or value layout changes. */
#define WEFT_ABI_VERSION 4

#define WEFT_MAX_PODS 65536
#define WEFT_MAX_IFACES 65536
#define WEFT_MAX_HOST_ADDRS 256
#define WEFT_MAX_SERVICE_VIPS 65536
#define WEFT_MAX_DIRECT_VERDICTS 65536
#define WEFT_MAX_DIRECT_FLOWS 65536
#define WEFT_MAX_DIRECT_CUTS 4096

/* weft_listeners: SOCKMAP slots holding the node proxy's capture listeners. Each data-plane
 * worker process w owns the slots `kind + WEFT_SLOT_COUNT * w`; a single-process proxy is
 * worker 0. A new connection goes to the worker its flow hash picks, or, when that worker's
 * slot is empty (it died or is restarting), to the next worker that has one. */
enum weft_listener_slot {
	WEFT_SLOT_OUTBOUND = 0, /* 15001: plaintext from local enrolled pods */
	WEFT_SLOT_INBOUND = 1,  /* 15006: plaintext to local enrolled pods */
	WEFT_SLOT_HBONE = 2,    /* 15008: HBONE to local enrolled pods */
	WEFT_SLOT_COUNT = 3,
};
#define WEFT_MAX_WORKERS 16
#define WEFT_LISTENER_SLOTS (WEFT_SLOT_COUNT * WEFT_MAX_WORKERS)

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
	__u32 workers;     /* data-plane workers whose slots new connections are spread over;
			    * 0 counts as 1, more than WEFT_MAX_WORKERS as WEFT_MAX_WORKERS */
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
	__u64 direct;               /* new same-node connections let through by a verdict */
	__u64 dropped_cut;          /* packet of a direct flow the proxy cut (policy change) */
};

/* weft_host_addrs: the node's own addresses; key IPv4 (network order), value unused. */

/* weft_service_vips: cluster IPs of services; key IPv4 (network order), value unused. A
 * kube-proxy DNAT runs after tc ingress, so later packets of a captured connection to a VIP
 * carry the pre-NAT tuple and no socket lookup here can match them: they are handed to the
 * node's own stack (marked, so they can only be delivered locally), where the DNAT turns
 * them into the tuple of the proxy's accepted socket. */

/* The same-node direct path. An allowed connection between two enrolled pods of this node
 * needs no proxy: the node proxy records its verdict for (client pod, server pod, port) in
 * weft_direct_verdicts after deciding a first connection, and later SYNs matching a verdict
 * pass straight to the server pod. Each such flow gets a weft_direct_flows entry that the
 * program keeps up to date (bytes, FIN/RST) and the node proxy reads for metrics, access logs
 * and policy re-checks; it deletes entries once closed. */

/* weft_direct_verdicts: key below, value `struct weft_direct_verdict`. */
struct weft_direct_verdict_key {
	__u32 client_ip;   /* network byte order */
	__u32 server_ip;   /* network byte order */
	__u16 server_port; /* network byte order */
	__u16 pad;         /* zero */
};

struct weft_direct_verdict {
	__u32 flags;    /* reserved, zero: presence is the verdict "allow" */
	__u32 reserved;
};

/* weft_direct_flows and weft_direct_cuts: key is the flow as the client opened it. */
struct weft_flow_key {
	__u32 client_ip;   /* network byte order */
	__u32 server_ip;   /* network byte order */
	__u16 client_port; /* network byte order */
	__u16 server_port; /* network byte order */
};

#define WEFT_FLOW_FIN_CLIENT (1u << 0)
#define WEFT_FLOW_FIN_SERVER (1u << 1)
#define WEFT_FLOW_RST (1u << 2)
#define WEFT_FLOW_SERVER_SEQ (1u << 3) /* server_next_seq is valid (SYN-ACK seen) */

struct weft_direct_flow {
	struct bpf_spin_lock lock;
	__u32 state;           /* WEFT_FLOW_* */
	__u32 client_next_seq; /* highest sequence number sent by the client, plus one */
	__u32 server_next_seq; /* the same for the server */
	/* Payload bytes each way, counted once: by how far the sequence number advanced, so
	 * retransmissions are not counted twice. */
	__u64 client_bytes;
	__u64 server_bytes;
	__u64 opened_ns; /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) at the SYN */
	__u64 last_ns;   /* at the latest packet */
	__u64 closed_ns; /* at the RST or the second FIN; 0 while open */
};

/* weft_direct_cuts: flows the node proxy cut after a policy change; value unused. Their
 * packets are dropped (an RST still passes, so both ends learn). */

#endif /* WEFT_MAPS_H */
