// The policy-routing pair that makes captured packets local: `ip rule fwmark MARK/MASK lookup
// TABLE` and `ip route add local 0.0.0.0/0 dev lo table TABLE`. Without it the kernel would
// forward (and drop) sk-assigned packets whose destination is not a node address.
import { check } from '../bpf/errors.js';
import { native } from '../bpf/ffi.js';
import { interfaceIndex } from '../bpf/attach.js';

export interface LocalDeliveryRouting {
  readonly mark: number;
  readonly mask: number;
  readonly table: number;
  readonly rulePriority: number;
}

const EEXIST = 17;
const ENOENT = 2;
const ESRCH = 3;

export function installLocalDelivery(routing: LocalDeliveryRouting): void {
  const lo = interfaceIndex('lo');
  const route = native.localRouteAdd(routing.table, lo);
  if (route !== -EEXIST) check(route, `add local route to table ${routing.table}`);
  const rule = native.ruleAdd(routing.mark, routing.mask, routing.table, routing.rulePriority);
  if (rule !== -EEXIST) {
    check(
      rule,
      `add rule fwmark ${hex(routing.mark)}/${hex(routing.mask)} lookup ${routing.table}`,
    );
  }
}

/** Removes exactly the rule and route installLocalDelivery adds; absent ones are fine. */
export function removeLocalDelivery(routing: LocalDeliveryRouting): void {
  const rule = native.ruleDel(routing.mark, routing.mask, routing.table, routing.rulePriority);
  if (rule !== -ENOENT && rule !== -ESRCH) check(rule, `delete weft's fwmark rule`);
  const route = native.localRouteDel(routing.table, interfaceIndex('lo'));
  if (route !== -ENOENT && route !== -ESRCH)
    check(route, `delete local route in table ${routing.table}`);
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}
