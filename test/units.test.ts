// Small pure pieces: flag parsing, the pod-interface route lookup, the enrollment rule and the
// tcx kernel check. No root needed.
import test from 'ava';
import { kernelSupportsTcx } from '../src/bpf/attach.js';
import {
  CliError,
  parseDuration,
  parseNumber,
  parseTrustDomain,
  parseUplinks,
} from '../src/cli/options.js';
import type { Namespace, Workload } from '../src/config/model.js';
import { isEnrolled } from '../src/redirect/enrollment.js';
import { PodInterfaceError, podInterfaceForIp } from '../src/redirect/interfaces.js';

test('durations, numbers, uplinks and trust domains parse or say what is wrong', (t) => {
  t.is(parseDuration('drain-grace', '25s'), 25_000);
  t.is(parseDuration('x', '500ms'), 500);
  t.is(parseDuration('x', '2m'), 120_000);
  t.is(parseDuration('x', '24h'), 86_400_000);
  t.is(parseDuration('x', '3'), 3000);
  t.throws(() => parseDuration('drain-grace', 'soon'), {
    instanceOf: CliError,
    message: /--drain-grace: "soon" is not a duration/,
  });
  t.is(parseNumber('fwmark', '0x1000', 1, 0xffffffff), 0x1000);
  t.throws(() => parseNumber('route-table', '0', 1, 10), {
    message: '--route-table: "0" is not a whole number from 1 to 10',
  });
  t.deepEqual(parseUplinks('eth0, eth1'), ['eth0', 'eth1']);
  t.is(parseUplinks(undefined), undefined);
  t.throws(() => parseUplinks('a-very-long-interface-name'), {
    message: /--uplink: .* is not an interface name/,
  });
  t.is(parseTrustDomain('cluster.local'), 'cluster.local');
  t.throws(() => parseTrustDomain('Cluster.Local'), { message: /--trust-domain/ });
});

// Routes as podInterfaceForIp reads them from /proc/net/route (addresses as numbers).
const route = (iface: string, dest: string, gw: string, mask: string) => ({
  iface,
  destination: ipNumber(dest),
  gateway: ipNumber(gw),
  mask: ipNumber(mask),
});
function ipNumber(ip: string): number {
  return ip.split('.').reduce((acc, part) => ((acc << 8) | Number(part)) >>> 0, 0);
}

test('a pod veth is found from its /32 route; anything else is a clear error', (t) => {
  const routes = [
    route('eth0', '0.0.0.0', '198.18.0.254', '0.0.0.0'),
    route('lxc1', '198.19.0.10', '0.0.0.0', '255.255.255.255'),
    route('cni0', '10.244.0.0', '0.0.0.0', '255.255.255.0'),
  ];
  t.is(podInterfaceForIp('198.19.0.10', routes), 'lxc1');
  t.throws(() => podInterfaceForIp('10.244.0.7', routes), {
    instanceOf: PodInterfaceError,
    message: /routed via cni0, not a \/32 route to its veth/,
  });
  t.throws(() => podInterfaceForIp('203.0.113.9', routes), { message: /through a gateway/ });
  t.throws(() => podInterfaceForIp('203.0.113.9', routes.slice(1)), {
    message: /no route to pod IP/,
  });
});

function pod(annotations: Record<string, string>, extra: Partial<Workload> = {}): Workload {
  return {
    uid: 'u',
    name: 'p',
    namespace: 'ns',
    nodeName: 'n',
    serviceAccount: 'default',
    ip: '198.19.0.10',
    ips: ['198.19.0.10'],
    labels: {},
    annotations,
    hostNetwork: false,
    phase: 'Running',
    ...extra,
  };
}

test("enrollment follows Istio ambient's rule: pod first, then namespace, never hostNetwork", (t) => {
  const ambientNs: Namespace = {
    name: 'ns',
    labels: {},
    annotations: { 'weft.io/dataplane-mode': 'ambient' },
  };
  const plainNs: Namespace = { name: 'ns', labels: {}, annotations: {} };
  t.true(isEnrolled(pod({ 'weft.io/dataplane-mode': 'ambient' }), plainNs));
  t.true(isEnrolled(pod({}), ambientNs));
  t.false(isEnrolled(pod({ 'weft.io/dataplane-mode': 'none' }), ambientNs));
  t.false(isEnrolled(pod({}), plainNs));
  t.false(
    isEnrolled(pod({ 'weft.io/dataplane-mode': 'ambient' }, { hostNetwork: true }), ambientNs),
  );
  t.false(isEnrolled(pod({ 'weft.io/dataplane-mode': 'ambient' }, { ip: '' }), ambientNs));
});

test('tcx is used from Linux 6.6 on', (t) => {
  t.true(kernelSupportsTcx('6.6.0'));
  t.true(kernelSupportsTcx('6.18.44-fc-v669'));
  t.true(kernelSupportsTcx('7.0.1'));
  t.false(kernelSupportsTcx('6.5.13'));
  t.false(kernelSupportsTcx('5.10.0-28-amd64'));
});
