// The `weft` command's contract: help and version, and bad input (flags, config, privileges,
// busy ports, interfaces, bpffs) answered with one clear line and a non-zero exit, leaving
// nothing half-attached.
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Lab } from '../src/lab/cluster.js';
import { LabMesh, WEFT_CLI } from '../src/lab/mesh.js';
import { requireRoot } from './helpers/root.js';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function weft(args: string[], prefix: string[] = []): Promise<Run> {
  const argv = [...prefix, process.execPath, WEFT_CLI, ...args];
  return new Promise((resolve) => {
    execFile(argv[0]!, argv.slice(1), { timeout: 20_000 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

let lab: Lab;

test.before(async () => {
  requireRoot();
  lab = await Lab.create({ nodes: 1, podsPerNode: 1 });
});

test.after.always(async () => {
  await lab?.destroy();
});

test('version and help', async (t) => {
  const version = await weft(['version']);
  t.is(version.code, 0);
  t.regex(version.stdout, /^weft \d+\.\d+\.\d+\n$/);
  for (const args of [['--help'], ['node', '--help'], ['demo', '--help'], ['version', '--help']]) {
    const help = await weft(args);
    t.is(help.code, 0, args.join(' '));
    t.true(help.stdout.length > 0);
  }
});

test('a bad flag value is one clear line', async (t) => {
  const run = await weft([
    'node',
    '--config',
    '/nonexistent',
    '--node-name',
    'n',
    '--fwmark',
    'zzz',
  ]);
  t.not(run.code, 0);
  t.is(run.stderr.trim(), 'weft: --fwmark: "zzz" is not a whole number from 1 to 4294967295');
  const batch = await weft(['node', '--config', '/x', '--node-name', 'n', '--log-batch', 'soon']);
  t.not(batch.code, 0);
  t.is(
    batch.stderr.trim(),
    'weft: --log-batch: "soon" is not a duration (e.g. 500ms, 25s, 2m, 24h)',
  );
  const long = await weft(['node', '--config', '/x', '--node-name', 'n', '--log-batch', '1m']);
  t.not(long.code, 0);
  t.is(long.stderr.trim(), 'weft: --log-batch must be at most 10s');
  const unknown = await weft(['node', '--no-such-flag']);
  t.not(unknown.code, 0);
  t.regex(unknown.stderr, /Unknown argument/);
});

test('without root or capabilities weft node says what it needs', async (t) => {
  const run = await weft(
    ['node', '--config', '/x', '--node-name', 'n'],
    ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all'],
  );
  t.not(run.code, 0);
  t.regex(run.stderr, /^weft: weft node needs root, or the capabilities CAP_BPF and CAP_NET_ADMIN/);
});

test.serial('an invalid object in the config is named with file and line', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'weft-cli-'));
  try {
    await writeFile(
      join(dir, 'pods.yaml'),
      'apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  nodeName: node-0\nstatus:\n  podIP: 198.19.0.300\n',
    );
    const node = lab.node('node-0');
    const run = await lab.exec(
      node.netns,
      [
        process.execPath,
        WEFT_CLI,
        'node',
        '--config',
        dir,
        '--node-name',
        'node-0',
        '--bpffs',
        node.pinDir,
      ],
      { allowFail: true },
    );
    t.not(run.code, 0);
    t.regex(run.stderr, /pods\.yaml:8: Pod default\/web: status\.podIP: .*198\.19\.0\.300/);
    t.deepEqual(await bpffsEntries(node.pinDir), [], 'nothing pinned');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test.serial('an unknown uplink interface and a non-bpffs pin directory are refused', async (t) => {
  const node = lab.node('node-0');
  const mesh = await writeConfigOnly();
  const uplink = await lab.exec(
    node.netns,
    [
      process.execPath,
      WEFT_CLI,
      'node',
      '--config',
      mesh,
      '--node-name',
      'node-0',
      '--bpffs',
      node.pinDir,
      '--uplink',
      'nosuch0',
    ],
    { allowFail: true },
  );
  t.not(uplink.code, 0);
  t.is(uplink.stderr.trim(), 'weft: find interface nosuch0: ENODEV: no such interface');
  const notBpffs = await lab.exec(
    node.netns,
    [
      process.execPath,
      WEFT_CLI,
      'node',
      '--config',
      mesh,
      '--node-name',
      'node-0',
      '--bpffs',
      `${lab.dir}/not-bpffs`,
    ],
    { allowFail: true },
  );
  t.not(notBpffs.code, 0);
  t.regex(notBpffs.stderr, /is not on a bpffs/);
});

test.serial('a busy capture port stops start-up and leaves nothing attached', async (t) => {
  const node = lab.node('node-0');
  const config = await writeConfigOnly();
  const holder = lab.spawn(node.netns, [
    process.execPath,
    '-e',
    "require('net').createServer().listen(15001,'127.0.0.1',()=>console.log('holding'))",
  ]);
  try {
    await holder.waitForLine((l) => l === 'holding');
    const run = await lab.exec(
      node.netns,
      [
        process.execPath,
        WEFT_CLI,
        'node',
        '--config',
        config,
        '--node-name',
        'node-0',
        '--bpffs',
        node.pinDir,
      ],
      { allowFail: true },
    );
    t.not(run.code, 0);
    t.regex(run.stderr, /port 15001 is in use/);
    t.deepEqual(await bpffsEntries(node.pinDir), []);
    const rules = await lab.exec(node.netns, ['ip', 'rule', 'show']);
    t.notRegex(rules.stdout, /lookup 150/);
    t.deepEqual(await attachments(node.netns, node.pinDir), {});
  } finally {
    await holder.stop();
  }
});

test.serial(
  '--cleanup removes every program, pin, rule and route weft added, and only those',
  async (t) => {
    const node = lab.node('node-0');
    const snapshot = async () => ({
      rules: (await lab.exec(node.netns, ['ip', 'rule', 'show'])).stdout,
      routes: (await lab.exec(node.netns, ['ip', '-4', 'route', 'show', 'table', 'all'])).stdout,
      bpf: await attachments(node.netns, node.pinDir),
      tc: (await lab.exec(node.netns, ['tc', 'filter', 'show', 'dev', node.uplink, 'ingress']))
        .stdout,
      pins: await bpffsEntries(node.pinDir),
    });
    const before = await snapshot();
    const mesh = await LabMesh.start(lab);
    const during = await snapshot();
    t.deepEqual(
      Object.keys(during.bpf).sort(),
      [node.uplink, lab.pods[0]!.hostVeth].sort(),
      'attached while running',
    );
    t.regex(during.rules, /lookup 150/);
    await mesh.stop();
    const stopped = await snapshot();
    t.deepEqual(stopped.bpf, during.bpf, 'SIGTERM keeps the program attached (fail closed)');
    const cleanup = await lab.exec(node.netns, [
      process.execPath,
      WEFT_CLI,
      'node',
      '--cleanup',
      '--bpffs',
      node.pinDir,
    ]);
    t.is(cleanup.code, 0, cleanup.stderr);
    t.deepEqual(await snapshot(), before);
  },
);

const ATTACHMENTS = new URL('./helpers/attachments.js', import.meta.url).pathname;

async function attachments(netns: string, pinDir: string): Promise<Record<string, number>> {
  const run = await lab.exec(netns, [process.execPath, ATTACHMENTS, pinDir, 'tcx']);
  return JSON.parse(run.stdout) as Record<string, number>;
}

async function writeConfigOnly(): Promise<string> {
  const dir = `${lab.dir}/config-only`;
  const { mkdir } = await import('node:fs/promises');
  await mkdir(dir, { recursive: true });
  const { stringify } = await import('yaml');
  await writeFile(
    `${dir}/cluster.yaml`,
    lab
      .podObjects()
      .map((o) => stringify(o))
      .join('---\n'),
  );
  return dir;
}

async function bpffsEntries(dir: string): Promise<string[]> {
  const { readdir } = await import('node:fs/promises');
  try {
    return (await readdir(dir)).sort();
  } catch {
    return [];
  }
}
