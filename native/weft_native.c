// SPDX-License-Identifier: Apache-2.0
/* weft_native.c: flat C entry points for the few kernel calls that are awkward through FFI.
 *
 * Every function is a thin, stateless wrapper around one kernel interaction (a socket set up
 * in several setsockopt steps, a tc/tcx attachment, an rtnetlink rule or route) and returns
 * 0 / a file descriptor on success and -errno on failure, so the TypeScript side owns all
 * decisions, naming and error messages. Nothing here keeps state or allocates across calls.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/fib_rules.h>
#include <linux/inet_diag.h>
#include <linux/net_namespace.h>
#include <linux/sock_diag.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

/* tcx arrived in Linux 6.6; Debian 12's uapi headers predate it. Values from linux/bpf.h. */
#define WEFT_BPF_TCX_INGRESS 46
#define WEFT_BPF_F_BEFORE (1U << 3)

static int parse_ipv4(const char *ip, int port, struct sockaddr_in *out)
{
	if (port < 0 || port > 65535)
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	out->sin_family = AF_INET;
	out->sin_port = htons((uint16_t)port);
	if (inet_pton(AF_INET, ip, &out->sin_addr) != 1)
		return -EINVAL;
	return 0;
}

static int fail_close(int fd)
{
	int err = -errno;

	close(fd);
	return err;
}

/* Socket options a weft socket may need before bind. */
enum {
	OPT_TRANSPARENT = 1 << 0,      /* IP_TRANSPARENT: accept for / bind to any address */
	OPT_REUSEADDR = 1 << 1,        /* SO_REUSEADDR */
	OPT_REUSEPORT = 1 << 2,        /* SO_REUSEPORT: share the port with a successor */
	OPT_BIND_NO_PORT = 1 << 3,     /* IP_BIND_ADDRESS_NO_PORT: port chosen at connect */
};

/* A non-blocking TCP socket with `options` set and bound to ip:port; listening when
 * backlog > 0. Returns the fd or -errno. */
static int bound_socket(const char *ip, int port, unsigned options, int backlog)
{
	struct sockaddr_in addr;
	int one = 1;
	int fd, err;

	err = parse_ipv4(ip, port, &addr);
	if (err)
		return err;
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if ((options & OPT_TRANSPARENT) &&
	    setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one)))
		return fail_close(fd);
	if ((options & OPT_REUSEADDR) &&
	    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)))
		return fail_close(fd);
	if ((options & OPT_REUSEPORT) &&
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)))
		return fail_close(fd);
	if ((options & OPT_BIND_NO_PORT) &&
	    setsockopt(fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one)))
		return fail_close(fd);
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)))
		return fail_close(fd);
	if (backlog > 0 && listen(fd, backlog))
		return fail_close(fd);
	return fd;
}

/* A listening socket that accepts connections for any destination address, as bpf_sk_assign
 * delivers them (IP_TRANSPARENT). SO_REUSEPORT is deliberately NOT set: sk_assign into a
 * reuseport group would re-select a socket. */
int weft_listen_transparent(const char *ip, int port, int backlog)
{
	return bound_socket(ip, port, OPT_TRANSPARENT | OPT_REUSEADDR, backlog > 0 ? backlog : 1);
}

/* A listening socket shared with a successor process during a hand-over (admin, metrics,
 * readiness ports): Node 20's net module cannot set SO_REUSEPORT itself. */
int weft_listen_reuseport(const char *ip, int port, int backlog)
{
	return bound_socket(ip, port, OPT_REUSEADDR | OPT_REUSEPORT, backlog > 0 ? backlog : 1);
}

/* An unconnected TCP socket bound to a possibly non-local source address (the original
 * client's), ready for a non-blocking connect by libuv. */
int weft_socket_transparent(const char *bind_ip, int bind_port)
{
	return bound_socket(bind_ip, bind_port, OPT_TRANSPARENT | OPT_BIND_NO_PORT, 0);
}

/* The kernel's cookie of a socket: what a SOCKMAP lookup from user space returns, so a
 * process can tell whether its listener is still the one in a slot. */
int weft_socket_cookie(int fd, uint64_t *cookie)
{
	socklen_t len = sizeof(*cookie);

	if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, cookie, &len))
		return -errno;
	return 0;
}

/* The pre-DNAT destination of an accepted connection (conntrack), when there is one.
 * Returns -ENOENT when the connection was not NATed. ip_out needs INET_ADDRSTRLEN bytes. */
int weft_original_dst(int fd, char *ip_out, int ip_len, int *port_out)
{
	struct sockaddr_in addr;
	socklen_t len = sizeof(addr);

	if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &addr, &len))
		return -errno;
	if (!inet_ntop(AF_INET, &addr.sin_addr, ip_out, (socklen_t)ip_len))
		return -errno;
	*port_out = ntohs(addr.sin_port);
	return 0;
}

/* ---- libbpf diagnostics ---- */

static int libbpf_quiet;

static int print_warnings(enum libbpf_print_level level, const char *format, va_list args)
{
	if (level > LIBBPF_WARN || libbpf_quiet)
		return 0;
	return vfprintf(stderr, format, args);
}

/* libbpf prints warnings (verifier logs, attach failures) to stderr; an expected failure,
 * such as querying an interface that has no clsact qdisc, is silenced around the call. */
void weft_libbpf_quiet(int quiet)
{
	libbpf_quiet = quiet;
	libbpf_set_print(print_warnings);
}

/* ---- tc clsact (kernels before 6.6) ---- */

int weft_tc_attach(int ifindex, int prog_fd, unsigned priority, unsigned handle, int replace)
{
	DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
	DECLARE_LIBBPF_OPTS(bpf_tc_opts, opts, .prog_fd = prog_fd, .priority = priority,
			    .handle = handle, .flags = replace ? BPF_TC_F_REPLACE : 0);
	int err;

	err = bpf_tc_hook_create(&hook);
	if (err && err != -EEXIST)
		return err;
	return bpf_tc_attach(&hook, &opts);
}

int weft_tc_detach(int ifindex, unsigned priority, unsigned handle)
{
	DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
	DECLARE_LIBBPF_OPTS(bpf_tc_opts, opts, .priority = priority, .handle = handle);

	return bpf_tc_detach(&hook, &opts);
}

/* Returns the id of the program at (priority, handle) on ingress, or -ENOENT. */
int weft_tc_query(int ifindex, unsigned priority, unsigned handle, unsigned *prog_id)
{
	DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
	DECLARE_LIBBPF_OPTS(bpf_tc_opts, opts, .priority = priority, .handle = handle);
	int err;

	weft_libbpf_quiet(1);
	err = bpf_tc_query(&hook, &opts);
	weft_libbpf_quiet(0);
	/* No clsact qdisc (EINVAL) or no such filter (ENOENT): nothing of weft's is there. */
	if (err == -EINVAL)
		return -ENOENT;
	if (err)
		return err;
	*prog_id = opts.prog_id;
	return 0;
}

/* ---- tcx (kernels 6.6 and later) ---- */

/* Attaches prog_fd first in the ingress chain of ifindex (BPF_F_BEFORE with no anchor), so a
 * CNI program returning TC_ACT_OK cannot skip weft. Returns the link fd. libbpf 1.1 has no
 * tcx API, so this is the raw bpf(BPF_LINK_CREATE) call. */
int weft_tcx_attach(int ifindex, int prog_fd)
{
	union {
		struct {
			uint32_t prog_fd;
			uint32_t target_ifindex;
			uint32_t attach_type;
			uint32_t flags;
			uint32_t relative_fd;
			uint32_t pad;
			uint64_t expected_revision;
		} link_create;
		uint8_t raw[128];
	} attr;
	int fd;

	memset(&attr, 0, sizeof(attr));
	attr.link_create.prog_fd = (uint32_t)prog_fd;
	attr.link_create.target_ifindex = (uint32_t)ifindex;
	attr.link_create.attach_type = WEFT_BPF_TCX_INGRESS;
	attr.link_create.flags = WEFT_BPF_F_BEFORE;
	fd = (int)syscall(__NR_bpf, BPF_LINK_CREATE, &attr, sizeof(attr));
	return fd < 0 ? -errno : fd;
}

/* Reads a link's program id and, for tcx links, the interface it is on (0 once the interface
 * is gone and the link is defunct). */
int weft_link_info(int link_fd, unsigned *type, unsigned *prog_id, unsigned *ifindex)
{
	struct {
		uint32_t type;
		uint32_t id;
		uint32_t prog_id;
		uint32_t pad;
		uint32_t ifindex; /* tcx.ifindex / netkit.ifindex */
		uint32_t attach_type;
		uint8_t rest[64];
	} __attribute__((aligned(8))) info;
	uint32_t len = sizeof(info);
	int err;

	memset(&info, 0, sizeof(info));
	err = bpf_obj_get_info_by_fd(link_fd, &info, &len);
	if (err)
		return err;
	*type = info.type;
	*prog_id = info.prog_id;
	*ifindex = info.ifindex;
	return 0;
}

/* ---- rtnetlink: the fwmark rule and the local route table ---- */

struct nl_request {
	struct nlmsghdr nh;
	union {
		struct fib_rule_hdr rule;
		struct rtmsg route;
	};
	char attrs[128];
};

static void nl_attr_u32(struct nl_request *req, unsigned short type, uint32_t value)
{
	struct rtattr *rta = (struct rtattr *)((char *)req + NLMSG_ALIGN(req->nh.nlmsg_len));

	rta->rta_type = type;
	rta->rta_len = RTA_LENGTH(sizeof(value));
	memcpy(RTA_DATA(rta), &value, sizeof(value));
	req->nh.nlmsg_len = NLMSG_ALIGN(req->nh.nlmsg_len) + RTA_ALIGN(rta->rta_len);
}

/* Sends one request and waits for its acknowledgement; returns 0 or -errno from the kernel. */
static int nl_transact(struct nl_request *req)
{
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	char reply[4096];
	struct timeval timeout = { .tv_sec = 5 };
	int fd, err;
	ssize_t n;

	fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
	req->nh.nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
	req->nh.nlmsg_seq = (uint32_t)time(NULL);
	if (sendto(fd, req, req->nh.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0)
		return fail_close(fd);
	for (int tries = 0; tries < 16; tries++) {
		n = recv(fd, reply, sizeof(reply), 0);
		if (n < 0)
			return fail_close(fd);
		for (struct nlmsghdr *h = (struct nlmsghdr *)reply; NLMSG_OK(h, (size_t)n);
		     h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_seq != req->nh.nlmsg_seq || h->nlmsg_type != NLMSG_ERROR)
				continue;
			err = ((struct nlmsgerr *)NLMSG_DATA(h))->error;
			close(fd);
			return err;
		}
	}
	close(fd);
	return -ETIMEDOUT;
}

static int rule_request(int add, uint32_t mark, uint32_t mask, uint32_t table, uint32_t priority)
{
	struct nl_request req;

	memset(&req, 0, sizeof(req));
	req.nh.nlmsg_len = NLMSG_LENGTH(sizeof(struct fib_rule_hdr));
	req.nh.nlmsg_type = add ? RTM_NEWRULE : RTM_DELRULE;
	req.nh.nlmsg_flags = add ? (NLM_F_CREATE | NLM_F_EXCL) : 0;
	req.rule.family = AF_INET;
	req.rule.action = FR_ACT_TO_TBL;
	req.rule.table = table < 256 ? (uint8_t)table : RT_TABLE_UNSPEC;
	nl_attr_u32(&req, FRA_FWMARK, mark);
	nl_attr_u32(&req, FRA_FWMASK, mask);
	nl_attr_u32(&req, FRA_TABLE, table);
	nl_attr_u32(&req, FRA_PRIORITY, priority);
	return nl_transact(&req);
}

/* `ip rule add fwmark MARK/MASK lookup TABLE priority PRIORITY`; -EEXIST if already there. */
int weft_rule_add(uint32_t mark, uint32_t mask, uint32_t table, uint32_t priority)
{
	return rule_request(1, mark, mask, table, priority);
}

int weft_rule_del(uint32_t mark, uint32_t mask, uint32_t table, uint32_t priority)
{
	return rule_request(0, mark, mask, table, priority);
}

static int local_route_request(int add, uint32_t table, int lo_ifindex)
{
	struct nl_request req;

	memset(&req, 0, sizeof(req));
	req.nh.nlmsg_len = NLMSG_LENGTH(sizeof(struct rtmsg));
	req.nh.nlmsg_type = add ? RTM_NEWROUTE : RTM_DELROUTE;
	req.nh.nlmsg_flags = add ? (NLM_F_CREATE | NLM_F_EXCL) : 0;
	req.route.rtm_family = AF_INET;
	req.route.rtm_dst_len = 0;
	req.route.rtm_table = table < 256 ? (uint8_t)table : RT_TABLE_UNSPEC;
	req.route.rtm_protocol = RTPROT_BOOT;
	req.route.rtm_scope = RT_SCOPE_HOST;
	req.route.rtm_type = RTN_LOCAL;
	nl_attr_u32(&req, RTA_TABLE, table);
	nl_attr_u32(&req, RTA_OIF, (uint32_t)lo_ifindex);
	return nl_transact(&req);
}

/* `ip route add local 0.0.0.0/0 dev lo table TABLE`; -EEXIST if already there. */
int weft_local_route_add(uint32_t table, int lo_ifindex)
{
	return local_route_request(1, table, lo_ifindex);
}

int weft_local_route_del(uint32_t table, int lo_ifindex)
{
	return local_route_request(0, table, lo_ifindex);
}

/* ---- network namespaces: finding a pod's, and aborting a TCP socket inside it ---- */

/* Sends one netlink request on a fresh socket of `protocol` and copies the first reply of
 * type `want` into `out`; returns its length, or the kernel's -errno, or -ETIMEDOUT. */
static int nl_query(int protocol, const struct nlmsghdr *req, uint16_t want, char *out, size_t size)
{
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	struct timeval timeout = { .tv_sec = 5 };
	char reply[8192];
	int fd, result = -ETIMEDOUT;
	ssize_t n;

	fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol);
	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
	if (sendto(fd, req, req->nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0)
		return fail_close(fd);
	for (int tries = 0; tries < 16 && result == -ETIMEDOUT; tries++) {
		n = recv(fd, reply, sizeof(reply), 0);
		if (n < 0)
			return fail_close(fd);
		for (struct nlmsghdr *h = (struct nlmsghdr *)reply; NLMSG_OK(h, (size_t)n);
		     h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_seq != req->nlmsg_seq)
				continue;
			if (h->nlmsg_type == NLMSG_ERROR) {
				result = ((struct nlmsgerr *)NLMSG_DATA(h))->error;
				break;
			}
			if (h->nlmsg_type == want) {
				if (h->nlmsg_len > size)
					result = -EMSGSIZE;
				else {
					memcpy(out, h, h->nlmsg_len);
					result = (int)h->nlmsg_len;
				}
				break;
			}
		}
	}
	close(fd);
	return result;
}

/* The s32 value of attribute `type` among the attributes that follow a message's fixed
 * header of `header_len` bytes; -ENOENT when absent. */
static int nl_find_s32(const struct nlmsghdr *h, size_t header_len, unsigned short type, int32_t *value)
{
	size_t offset = NLMSG_SPACE(header_len);
	const struct rtattr *rta;

	while (offset + sizeof(*rta) <= h->nlmsg_len) {
		rta = (const struct rtattr *)((const char *)h + offset);
		if (rta->rta_len < sizeof(*rta) || offset + rta->rta_len > h->nlmsg_len)
			return -EBADMSG;
		if (rta->rta_type == type && RTA_PAYLOAD(rta) >= sizeof(*value)) {
			memcpy(value, RTA_DATA(rta), sizeof(*value));
			return 0;
		}
		offset += RTA_ALIGN(rta->rta_len);
	}
	return -ENOENT;
}

/* The id (in this process's namespace) of the namespace holding the peer of veth `ifindex`
 * (`ip link` shows it as link-netnsid); -ENOENT when the link has no peer elsewhere. */
int weft_link_netnsid(int ifindex)
{
	struct {
		struct nlmsghdr nh;
		struct ifinfomsg ifi;
	} req;
	char reply[8192];
	int32_t nsid;
	int n, err;

	memset(&req, 0, sizeof(req));
	req.nh.nlmsg_len = NLMSG_LENGTH(sizeof(req.ifi));
	req.nh.nlmsg_type = RTM_GETLINK;
	req.nh.nlmsg_flags = NLM_F_REQUEST;
	req.nh.nlmsg_seq = (uint32_t)time(NULL);
	req.ifi.ifi_family = AF_UNSPEC;
	req.ifi.ifi_index = ifindex;
	n = nl_query(NETLINK_ROUTE, &req.nh, RTM_NEWLINK, reply, sizeof(reply));
	if (n < 0)
		return n;
	err = nl_find_s32((struct nlmsghdr *)reply, sizeof(struct ifinfomsg), IFLA_LINK_NETNSID, &nsid);
	if (err)
		return err;
	return nsid < 0 ? -ENOENT : nsid;
}

/* The id this process's namespace gives the network namespace at `path` (a bind mount under
 * /var/run/netns or /proc/PID/ns/net); -ENOENT when it has none. */
int weft_netns_id(const char *path)
{
	struct {
		struct nlmsghdr nh;
		struct rtgenmsg g;
		char attrs[16];
	} req;
	char reply[1024];
	struct rtattr *rta;
	int32_t nsid;
	int fd, n, err;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	memset(&req, 0, sizeof(req));
	req.nh.nlmsg_len = NLMSG_LENGTH(sizeof(req.g));
	req.nh.nlmsg_type = RTM_GETNSID;
	req.nh.nlmsg_flags = NLM_F_REQUEST;
	req.nh.nlmsg_seq = (uint32_t)time(NULL);
	req.g.rtgen_family = AF_UNSPEC;
	rta = (struct rtattr *)((char *)&req + NLMSG_ALIGN(req.nh.nlmsg_len));
	rta->rta_type = NETNSA_FD;
	rta->rta_len = RTA_LENGTH(sizeof(uint32_t));
	memcpy(RTA_DATA(rta), &fd, sizeof(uint32_t));
	req.nh.nlmsg_len = NLMSG_ALIGN(req.nh.nlmsg_len) + RTA_ALIGN(rta->rta_len);
	n = nl_query(NETLINK_ROUTE, &req.nh, RTM_NEWNSID, reply, sizeof(reply));
	close(fd);
	if (n < 0)
		return n;
	err = nl_find_s32((struct nlmsghdr *)reply, sizeof(struct rtgenmsg), NETNSA_NSID, &nsid);
	if (err)
		return err;
	return nsid < 0 ? -ENOENT : nsid;
}

struct destroy_job {
	const char *netns_path;
	struct inet_diag_req_v2 req;
	int result;
};

/* Runs on its own thread: setns() changes only the calling thread's namespace, and the
 * thread ends right after, so Node's threads never leave the node's namespace. */
static void *destroy_in_netns(void *arg)
{
	struct destroy_job *job = arg;
	struct {
		struct nlmsghdr nh;
		struct inet_diag_req_v2 req;
	} msg;
	char reply[512];
	int fd;

	fd = open(job->netns_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		job->result = -errno;
		return NULL;
	}
	if (setns(fd, CLONE_NEWNET) < 0) {
		job->result = -errno;
		close(fd);
		return NULL;
	}
	close(fd);
	memset(&msg, 0, sizeof(msg));
	msg.nh.nlmsg_len = NLMSG_LENGTH(sizeof(msg.req));
	msg.nh.nlmsg_type = SOCK_DESTROY;
	msg.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
	msg.nh.nlmsg_seq = (uint32_t)time(NULL);
	msg.req = job->req;
	job->result = nl_query(NETLINK_SOCK_DIAG, &msg.nh, NLMSG_ERROR, reply, sizeof(reply));
	return NULL;
}

/* Aborts the TCP socket local_ip:local_port <-> remote_ip:remote_port that lives in the
 * network namespace at `netns_path` (as `ss -K` does): its owner gets ECONNABORTED and the
 * peer an RST. Returns 0, -ENOENT when no such socket exists, or another -errno. */
int weft_tcp_destroy(const char *netns_path, const char *local_ip, int local_port,
		     const char *remote_ip, int remote_port)
{
	struct sockaddr_in local, remote;
	struct destroy_job job = { .netns_path = netns_path, .result = -EINTR };
	pthread_t thread;
	int err;

	if (parse_ipv4(local_ip, local_port, &local) || parse_ipv4(remote_ip, remote_port, &remote))
		return -EINVAL;
	job.req.sdiag_family = AF_INET;
	job.req.sdiag_protocol = IPPROTO_TCP;
	job.req.idiag_states = ~0u;
	job.req.id.idiag_sport = local.sin_port;
	job.req.id.idiag_dport = remote.sin_port;
	job.req.id.idiag_src[0] = local.sin_addr.s_addr;
	job.req.id.idiag_dst[0] = remote.sin_addr.s_addr;
	job.req.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
	job.req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
	err = pthread_create(&thread, NULL, destroy_in_netns, &job);
	if (err)
		return -err;
	pthread_join(thread, NULL);
	return job.result;
}
