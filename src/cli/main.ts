#!/usr/bin/env node
// cli/: the `weft` command. Parses flags (yargs), turns them into typed options, and runs a
// composition root. Every bad flag or start-up failure becomes one clear line on stderr and a
// non-zero exit; stack traces only with --log-level debug.
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { KernelError } from '../bpf/errors.js';
import { createLogger, DEFAULT_LOG_BATCH_MS, LOG_LEVELS } from '../telemetry/logger.js';
import {
  CliError,
  DEFAULT_FWMARK,
  DEFAULT_FWMARK_MASK,
  DEFAULT_ROUTE_TABLE,
  DEFAULT_RULE_PRIORITY,
  parseAttachMode,
  parseDuration,
  parseFraction,
  parseIpv4,
  parseNumber,
  parseTrustDomain,
  parseUplinks,
  parseWorkers,
  type NodeOptions,
} from './options.js';

/** WEFT_MAX_WORKERS in bpf/weft_maps.h (kept here so flag parsing loads no FFI). */
const MAX_WORKERS = 16;

function packageVersion(): string {
  const pkg = JSON.parse(
    readFileSync(new URL('../../../package.json', import.meta.url), 'utf8'),
  ) as {
    version: string;
  };
  return pkg.version;
}

function fail(error: unknown, debug: boolean): never {
  const message =
    error instanceof CliError || error instanceof KernelError
      ? error.message
      : error instanceof Error
        ? `${error.message}`
        : String(error);
  process.stderr.write(`weft: ${message}\n`);
  if (debug && error instanceof Error && error.stack) process.stderr.write(`${error.stack}\n`);
  process.exit(1);
}

async function runNodeCommand(argv: Record<string, unknown>): Promise<void> {
  const options: NodeOptions = {
    config: String(argv.config ?? ''),
    nodeName: String(argv['node-name'] ?? ''),
    bpffs: String(argv.bpffs),
    uplinks: parseUplinks(argv.uplink),
    attachMode: parseAttachMode(argv['attach-mode']),
    fwmark: parseNumber('fwmark', argv.fwmark, 1, 0xffffffff),
    fwmarkMask: parseNumber('fwmark-mask', argv['fwmark-mask'], 1, 0xffffffff),
    routeTable: parseNumber('route-table', argv['route-table'], 1, 0xfffffffe),
    rulePriority: parseNumber('rule-priority', argv['rule-priority'], 1, 32765),
    listenAddress: parseIpv4('listen-address', argv['listen-address']),
    outboundPort: parseNumber('outbound-port', argv['outbound-port'], 1, 65535),
    inboundPort: parseNumber('inbound-port', argv['inbound-port'], 1, 65535),
    hbonePort: 15008,
    connectTimeoutMs: parseDuration('connect-timeout', argv['connect-timeout']),
    drainGraceMs: parseDuration('drain-grace', argv['drain-grace']),
    interfaceScanMs: parseDuration('interface-scan', argv['interface-scan']),
    logLevel: String(argv['log-level']),
    logBatchMs: parseDuration('log-batch', argv['log-batch']),
    cleanup: Boolean(argv.cleanup),
    ca: argv.ca === undefined ? undefined : String(argv.ca),
    trustDomain: parseTrustDomain(argv['trust-domain']),
    rootNamespace: String(argv['root-namespace']),
    certTtlMs: parseDuration('cert-ttl', argv['cert-ttl']),
    adminPort: parseNumber('admin-port', argv['admin-port'], 1, 65535),
    metricsPort: parseNumber('metrics-port', argv['metrics-port'], 1, 65535),
    readinessPort: parseNumber('readiness-port', argv['readiness-port'], 1, 65535),
    seriesBudget: parseNumber(
      'metrics-series-budget',
      argv['metrics-series-budget'],
      1,
      10_000_000,
    ),
    accessLog: argv['access-log'] !== false,
    accessLogSample: parseFraction('access-log-sample', argv['access-log-sample']),
    directSameNode: argv['direct-same-node'] !== false,
    workers: parseWorkers(argv.workers, availableParallelism(), MAX_WORKERS),
  };
  if (options.certTtlMs < 2000) throw new CliError(`--cert-ttl must be at least 2s`);
  if ((options.fwmark & options.fwmarkMask) !== options.fwmark) {
    throw new CliError(`--fwmark 0x${options.fwmark.toString(16)} has bits outside --fwmark-mask`);
  }
  if (options.logBatchMs > 10_000) throw new CliError('--log-batch must be at most 10s');
  const log = createLogger(options.logLevel as never, 'node', options.logBatchMs);
  const { NodeAgent, assertPrivileges, cleanupNode } = await import('./node-agent.js');
  assertPrivileges();
  if (options.cleanup) {
    cleanupNode(options, log);
    return;
  }
  if (!options.config) throw new CliError('--config <file|dir> is required');
  if (!options.nodeName) throw new CliError('--node-name <name> is required');
  const agent = new NodeAgent(options, log);
  await agent.start();
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    if (++signals > 1) process.exit(1);
    log.info({ signal }, 'stopping: draining connections');
    agent.stop().then(
      () => process.exit(0),
      (error: unknown) => fail(error, true),
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}

async function runCaInit(argv: Record<string, unknown>): Promise<void> {
  const { initCa } = await import('../identity/index.js');
  const out = String(argv.out ?? '');
  if (!out) throw new CliError('--out <dir> is required');
  const result = await initCa(out, {
    trustDomain: parseTrustDomain(argv['trust-domain']),
    force: Boolean(argv.force),
  });
  process.stdout.write(
    `wrote ${result.files.join(', ')} to ${out}\n` +
      `root:   ${result.root.subject} (expires ${result.root.notAfter})\n` +
      `issuer: ${result.issuer.subject} (expires ${result.issuer.notAfter})\n` +
      `Use it with \`weft node --ca ${out}\`, or as the Kubernetes Secret weft-system/cacerts.\n`,
  );
}

async function runStatus(argv: Record<string, unknown>): Promise<void> {
  const { fetchStatus, renderStatus } = await import('./status.js');
  const admin = `http://127.0.0.1:${parseNumber('admin-port', argv['admin-port'], 1, 65535)}`;
  const status = await fetchStatus(admin);
  process.stdout.write(argv.json ? `${JSON.stringify(status, null, 2)}\n` : renderStatus(status));
}

async function runDemoCommand(argv: Record<string, unknown>): Promise<void> {
  const { runDemo } = await import('./demo.js');
  await runDemo({ keep: Boolean(argv.keep), logLevel: String(argv['log-level']) });
}

const cli = yargs(hideBin(process.argv))
  .scriptName('weft')
  // A flag given twice takes its last value (as most CLIs do), never an array.
  .parserConfiguration({ 'duplicate-arguments-array': false })
  .usage('$0 <command> [options]')
  .option('log-level', {
    choices: LOG_LEVELS as string[],
    default: 'info',
    describe: 'log verbosity',
  })
  .command(
    'node',
    'run the node proxy for one node',
    (y) =>
      y
        .option('config', {
          type: 'string',
          describe:
            'cluster objects: a YAML file or a directory of manifests (watched), or `kube` for the Kubernetes API (in-cluster or KUBECONFIG)',
        })
        .option('node-name', { type: 'string', describe: 'this node, as in Pod spec.nodeName' })
        .option('bpffs', {
          type: 'string',
          default: '/sys/fs/bpf/weft',
          describe: 'directory on a bpffs where weft pins its maps, program and links',
        })
        .option('uplink', {
          type: 'string',
          describe: 'comma-separated uplink interfaces (default: every interface but lo)',
        })
        .option('attach-mode', {
          type: 'string',
          default: 'auto',
          describe: 'tcx (kernel >= 6.6), tc (clsact) or auto',
        })
        .option('fwmark', {
          type: 'string',
          default: `0x${DEFAULT_FWMARK.toString(16)}`,
          describe: 'mark set on captured packets',
        })
        .option('fwmark-mask', {
          type: 'string',
          default: `0x${DEFAULT_FWMARK_MASK.toString(16)}`,
          describe: 'mark bits weft owns',
        })
        .option('route-table', {
          type: 'string',
          default: String(DEFAULT_ROUTE_TABLE),
          describe: 'routing table for captured packets',
        })
        .option('rule-priority', {
          type: 'string',
          default: String(DEFAULT_RULE_PRIORITY),
          describe: 'priority of the fwmark rule',
        })
        .option('listen-address', {
          type: 'string',
          default: '127.0.0.1',
          describe: 'address of the capture listeners',
        })
        .option('outbound-port', { type: 'string', default: '15001' })
        .option('inbound-port', { type: 'string', default: '15006' })
        .option('connect-timeout', {
          type: 'string',
          default: '5s',
          describe: 'upstream connect timeout',
        })
        .option('drain-grace', {
          type: 'string',
          default: '25s',
          describe: 'how long SIGTERM waits for live connections',
        })
        .option('log-batch', {
          type: 'string',
          default: `${DEFAULT_LOG_BATCH_MS}ms`,
          describe:
            'how long info lines (the access log) may wait to be written together, in one write of at most 4 KiB; 0 writes each line at once',
        })
        .option('interface-scan', {
          type: 'string',
          default: '2s',
          describe: 'how often new interfaces are looked for',
        })
        .option('ca', {
          type: 'string',
          describe:
            "CA issuer directory (Istio's cacerts files: weft ca init); without it cross-node mesh traffic is refused",
        })
        .option('trust-domain', { type: 'string', default: 'cluster.local' })
        .option('root-namespace', {
          type: 'string',
          default: 'weft-system',
          describe: 'namespace of mesh-wide policies (istio-system for Istio users)',
        })
        .option('cert-ttl', {
          type: 'string',
          default: '24h',
          describe: 'workload certificate lifetime',
        })
        .option('admin-port', {
          type: 'string',
          default: '15000',
          describe: 'admin endpoint (localhost only)',
        })
        .option('metrics-port', { type: 'string', default: '15020' })
        .option('readiness-port', { type: 'string', default: '15021' })
        .option('metrics-series-budget', {
          type: 'string',
          default: '10000',
          describe: 'most Istio TCP metric label sets kept before folding into "other"',
        })
        .option('access-log', {
          type: 'boolean',
          default: true,
          describe: 'one JSON line per closed connection on stdout (--no-access-log turns it off)',
        })
        .option('direct-same-node', {
          type: 'boolean',
          default: true,
          describe:
            'once the proxy allowed a same-node pod pair and port, let their later connections through in BPF (--no-direct-same-node relays them all)',
        })
        .option('access-log-sample', {
          type: 'string',
          default: '1',
          describe: 'fraction of clean connections logged; refusals and errors always are',
        })
        .option('workers', {
          type: 'string',
          default: '1',
          describe:
            'data-plane worker processes (1 to 16, or auto: one per CPU); above 1 this process stays the control plane and the workers relay connections',
        })
        .option('cleanup', {
          type: 'boolean',
          default: false,
          describe: 'remove every program, pin, rule and route weft added, then exit',
        }),
    (argv) => runNodeCommand(argv),
  )
  .command(
    'demo',
    'build a small multi-node cluster in network namespaces and show weft at work',
    (y) =>
      y.option('keep', {
        type: 'boolean',
        default: false,
        describe: 'keep the cluster until Ctrl-C',
      }),
    (argv) => runDemoCommand(argv),
  )
  .command(
    'ca init',
    "create a root and an issuing CA in Istio's cacerts layout",
    (y) =>
      y
        .option('out', { type: 'string', demandOption: true, describe: 'directory to write' })
        .option('trust-domain', { type: 'string', default: 'cluster.local' })
        .option('force', { type: 'boolean', default: false, describe: 'replace existing files' }),
    (argv) => runCaInit(argv),
  )
  .command(
    'status',
    "show this node's enrolled pods, identities, connections and drops (reads the admin endpoint)",
    (y) =>
      y
        .option('json', { type: 'boolean', default: false })
        .option('admin-port', { type: 'string', default: '15000' }),
    (argv) => runStatus(argv),
  )
  .command('version', 'print the version', {}, () => {
    process.stdout.write(`weft ${packageVersion()}\n`);
  })
  .demandCommand(1, 'name a command: node, demo, ca init, status or version')
  .strict()
  .help()
  .fail((message, error) => {
    if (error) throw error;
    process.stderr.write(`weft: ${message}\nrun \`weft --help\` for usage\n`);
    process.exit(2);
  });

const debug = process.argv.includes('debug');
cli.parseAsync().catch((error: unknown) => fail(error, debug));
