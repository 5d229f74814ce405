#!/usr/bin/env node
// cli/: the `weft` command. Parses flags (yargs), turns them into typed options, and runs a
// composition root. Every bad flag or start-up failure becomes one clear line on stderr and a
// non-zero exit; stack traces only with --log-level debug.
import { readFileSync } from 'node:fs';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { KernelError } from '../bpf/errors.js';
import { createLogger, LOG_LEVELS } from '../telemetry/logger.js';
import {
  CliError,
  DEFAULT_FWMARK,
  DEFAULT_FWMARK_MASK,
  DEFAULT_ROUTE_TABLE,
  DEFAULT_RULE_PRIORITY,
  parseAttachMode,
  parseDuration,
  parseIpv4,
  parseNumber,
  parseUplinks,
  type NodeOptions,
} from './options.js';

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
    cleanup: Boolean(argv.cleanup),
  };
  if ((options.fwmark & options.fwmarkMask) !== options.fwmark) {
    throw new CliError(`--fwmark 0x${options.fwmark.toString(16)} has bits outside --fwmark-mask`);
  }
  const log = createLogger(options.logLevel as never, 'node');
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

async function runDemoCommand(argv: Record<string, unknown>): Promise<void> {
  const { runDemo } = await import('./demo.js');
  await runDemo({ keep: Boolean(argv.keep), logLevel: String(argv['log-level']) });
}

const cli = yargs(hideBin(process.argv))
  .scriptName('weft')
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
          describe: 'cluster objects: a YAML file or a directory of manifests (watched)',
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
        .option('interface-scan', {
          type: 'string',
          default: '2s',
          describe: 'how often new interfaces are looked for',
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
  .command('version', 'print the version', {}, () => {
    process.stdout.write(`weft ${packageVersion()}\n`);
  })
  .demandCommand(1, 'name a command: node, demo or version')
  .strict()
  .help()
  .fail((message, error) => {
    if (error) throw error;
    process.stderr.write(`weft: ${message}\nrun \`weft --help\` for usage\n`);
    process.exit(2);
  });

const debug = process.argv.includes('debug');
cli.parseAsync().catch((error: unknown) => fail(error, debug));
