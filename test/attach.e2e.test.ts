// End-to-end: how weft sits among other tc programs. With tcx it goes first, so a CNI
// program that accepts every packet (TC_ACT_OK ends the chain) cannot let enrolled traffic
// bypass capture; on kernels without tcx the clsact fallback captures the same way.
import test from 'ava';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { Lab } from '../src/lab/cluster.js';
import { LabMesh, WEFT_CLI } from '../src/lab/mesh.js';
import { requireRoot } from './helpers/root.js';

const AMBIENT = { 'weft.io/dataplane-mode': 'ambient' };
const PORT = 8080;
const here = new URL('.', import.meta.url).pathname;
const sourceDir = new URL('../../test/', import.meta.url).pathname;

test.before(() => requireRoot());

async function twoPodLab(): Promise<Lab> {
  return Lab.create({
    nodes: 1,
    podsPerNode: 2,
    pods: { 'pod-0-0': { annotations: AMBIENT }, 'pod-0-1': { annotations: AMBIENT } },
  });
}

test.serial('weft captures ahead of a CNI tcx program that accepts everything', async (t) => {
  const lab = await twoPodLab();
  let mesh: LabMesh | undefined;
  try {
    const node = lab.nodes[0]!;
    const object = `${lab.dir}/pass_all.bpf.o`;
    await promisify(execFile)('clang', [
      '-O2',
      '-g',
      '-Wall',
      '-Werror',
      '-target',
      'bpf',
      '-I/usr/include/x86_64-linux-gnu',
      '-c',
      `${sourceDir}fixtures/pass_all.bpf.c`,
      '-o',
      object,
    ]);
    const neighbourPins = `${lab.bpffs}/neighbour`;
    await lab.exec(node.netns, ['mkdir', '-p', neighbourPins]);
    const attached = await lab.exec(node.netns, [
      process.execPath,
      `${here}helpers/neighbour.js`,
      object,
      neighbourPins,
      node.uplink,
      ...lab.pods.map((p) => p.hostVeth),
    ]);
    t.is(attached.stdout.trim(), 'attached');

    mesh = await LabMesh.start(lab, { nodeArgs: ['--attach-mode', 'tcx'] });
    await lab.serve('pod-0-1', PORT);
    const [result] = await lab.connect('pod-0-0', 'pod-0-1', PORT, { bytes: 4096 });
    t.true(result!.ok && result!.match, result!.error ?? '');
    const log = await mesh.waitForAccessLog('node-0', 1);
    t.is(log.length, 1, 'the connection went through the node proxy');
    t.is(log[0]!.path, 'same-node');
  } finally {
    await mesh?.stop();
    await lab.destroy();
  }
});

test.serial('the clsact fallback captures and cleans up like tcx', async (t) => {
  const lab = await twoPodLab();
  let mesh: LabMesh | undefined;
  try {
    const node = lab.nodes[0]!;
    mesh = await LabMesh.start(lab, { nodeArgs: ['--attach-mode', 'tc'] });
    const filters = await lab.exec(node.netns, [
      'tc',
      'filter',
      'show',
      'dev',
      lab.pods[0]!.hostVeth,
      'ingress',
    ]);
    t.regex(filters.stdout, /weft_redirect/);
    await lab.serve('pod-0-1', PORT);
    const [result] = await lab.connect('pod-0-0', 'pod-0-1', PORT, { bytes: 4096 });
    t.true(result!.ok && result!.match, result!.error ?? '');
    t.is((await mesh.waitForAccessLog('node-0', 1)).length, 1);

    await mesh.stopNode('node-0');
    const [blocked] = await lab.connect('pod-0-0', 'pod-0-1', PORT, {
      connectTimeoutMs: 800,
      timeoutMs: 1500,
    });
    t.false(blocked!.ok, 'fail closed with the proxy stopped');

    const cleanup = await lab.exec(node.netns, [
      process.execPath,
      WEFT_CLI,
      'node',
      '--cleanup',
      '--attach-mode',
      'tc',
      '--bpffs',
      node.pinDir,
    ]);
    t.is(cleanup.code, 0, cleanup.stderr);
    for (const iface of [node.uplink, ...lab.pods.map((p) => p.hostVeth)]) {
      const after = await lab.exec(node.netns, ['tc', 'filter', 'show', 'dev', iface, 'ingress']);
      t.notRegex(after.stdout, /weft_redirect/, `filter removed from ${iface}`);
    }
  } finally {
    await mesh?.stop();
    await lab.destroy();
  }
});
