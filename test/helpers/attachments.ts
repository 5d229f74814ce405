// Run inside a node namespace: prints which interfaces carry weft's program, as JSON
// {"ifname": programId}. bpftool 7.1 (Debian 12) cannot show tcx links per interface.
import { listInterfaces, type AttachMode } from '../../src/bpf/attach.js';
import { attachedProgramId } from '../../src/bpf/attach.js';

const [pinDir, mode] = process.argv.slice(2) as [string, AttachMode];
const out: Record<string, number> = {};
for (const iface of listInterfaces()) {
  const id = attachedProgramId(iface, mode, `${pinDir}/links/${iface.index}`);
  if (id !== undefined) out[iface.name] = id;
}
console.log(JSON.stringify(out));
