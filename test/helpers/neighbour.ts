// Run inside a node namespace: loads test/fixtures/pass_all.bpf.o and attaches it with tcx to
// the named interfaces BEFORE weft starts, pinning each link under <pinDir>, as a CNI would.
import { interfaceIndex } from '../../src/bpf/attach.js';
import { check } from '../../src/bpf/errors.js';
import { libbpf, libc, native } from '../../src/bpf/ffi.js';
import { BpfObject } from '../../src/bpf/object.js';

const [objectPath, pinDir, ...ifnames] = process.argv.slice(2) as [string, string, ...string[]];
const object = BpfObject.open(objectPath);
object.load();
const programFd = object.programFd('pass_all');
for (const name of ifnames) {
  const link = check(
    native.tcxAttach(interfaceIndex(name), programFd),
    `attach pass_all to ${name}`,
  );
  check(libbpf.objPin(link, `${pinDir}/neighbour-${name}`), `pin neighbour link of ${name}`);
  libc.close(link);
}
console.log('attached');
