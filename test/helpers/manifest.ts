// test/helpers/manifest.ts: reads daemonset.yaml the way a cluster would and turns its weft
// container into a command line for the lab: documents parsed strictly, the container's
// environment assembled (env over envFrom, fieldRef spec.nodeName, ConfigMap keys), `$(VAR)`
// expanded with Kubernetes' rules, and container paths mapped to host directories through the
// container's own volumeMounts. Pure functions over parsed objects; no kernel, no processes.

import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';

/** The repository root (this file runs from dist/test/helpers/). */
export const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url)).replace(/\/$/, '');
export const MANIFEST_PATH = `${REPO_ROOT}/daemonset.yaml`;

export type Obj = Record<string, unknown>;

export interface ManifestDoc {
  /** 1-based line where the document starts. */
  readonly line: number;
  readonly object: Obj;
}

export interface Manifest {
  readonly text: string;
  readonly docs: readonly ManifestDoc[];
}

export function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Parses every YAML document; any YAML error or warning, or an empty document, throws. */
export function loadManifest(path = MANIFEST_PATH): Manifest {
  const text = readFileSync(path, 'utf8');
  const docs: ManifestDoc[] = [];
  for (const doc of parseAllDocuments(text, { prettyErrors: true, uniqueKeys: true })) {
    const problems = [...doc.errors, ...doc.warnings];
    if (problems.length > 0) {
      throw new Error(`${path}: ${problems.map((p) => p.message).join('; ')}`);
    }
    const object: unknown = doc.toJS();
    const offset = doc.range[0];
    const line = text.slice(0, offset).split('\n').length;
    if (!isObj(object)) throw new Error(`${path}:${line}: a document that is not an object`);
    docs.push({ line, object });
  }
  return { text, docs };
}

/** The one object of a kind (throws when there is none or more than one). */
export function only(manifest: Manifest, kind: string): Obj {
  const found = manifest.docs.filter((d) => d.object['kind'] === kind);
  if (found.length !== 1) {
    throw new Error(`daemonset.yaml has ${found.length} ${kind} objects, expected exactly one`);
  }
  return found[0]!.object;
}

/** Follows a path of keys and array indexes; undefined when any step is missing. */
export function at(v: unknown, ...path: (string | number)[]): unknown {
  let cur = v;
  for (const key of path) {
    if (typeof key === 'number') cur = Array.isArray(cur) ? cur[key] : undefined;
    else cur = isObj(cur) ? cur[key] : undefined;
  }
  return cur;
}

export function podSpec(daemonSet: Obj): Obj {
  const spec = at(daemonSet, 'spec', 'template', 'spec');
  if (!isObj(spec)) throw new Error('DaemonSet has no spec.template.spec');
  return spec;
}

/** The weft container: the only container of the DaemonSet's pod template. */
export function weftContainer(daemonSet: Obj): Obj {
  const containers = podSpec(daemonSet)['containers'];
  if (!Array.isArray(containers) || containers.length !== 1 || !isObj(containers[0])) {
    throw new Error('the DaemonSet should run exactly one container');
  }
  return containers[0];
}

export function strings(v: unknown): string[] {
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) {
    throw new Error(`expected a list of strings, got ${JSON.stringify(v)}`);
  }
  return v as string[];
}

/**
 * The container's environment as the kubelet builds it: every envFrom ConfigMap first (in
 * order), then env (which wins); `fieldRef: spec.nodeName` is `nodeName`. Throws on sources it
 * cannot resolve (a missing ConfigMap or key, another fieldRef): the kubelet would not start
 * the container either.
 */
export function containerEnv(
  container: Obj,
  configMaps: readonly Obj[],
  nodeName: string,
): Record<string, string> {
  const env: Record<string, string> = {};
  const configMap = (name: unknown): Obj => {
    const cm = configMaps.find((c) => at(c, 'metadata', 'name') === name);
    if (!cm) throw new Error(`ConfigMap ${String(name)} is referenced but not in the manifest`);
    return isObj(cm['data']) ? cm['data'] : {};
  };
  for (const from of (container['envFrom'] as unknown[] | undefined) ?? []) {
    const ref = at(from, 'configMapRef', 'name');
    if (ref === undefined) throw new Error(`unsupported envFrom ${JSON.stringify(from)}`);
    const prefix = typeof at(from, 'prefix') === 'string' ? (at(from, 'prefix') as string) : '';
    for (const [k, v] of Object.entries(configMap(ref))) env[prefix + k] = String(v);
  }
  for (const e of (container['env'] as unknown[] | undefined) ?? []) {
    const name = at(e, 'name');
    if (typeof name !== 'string') throw new Error(`env entry without a name: ${JSON.stringify(e)}`);
    const value = at(e, 'value');
    if (typeof value === 'string') {
      env[name] = expandVars(value, env);
      continue;
    }
    const field = at(e, 'valueFrom', 'fieldRef', 'fieldPath');
    if (field === 'spec.nodeName') {
      env[name] = nodeName;
      continue;
    }
    const cmKey = at(e, 'valueFrom', 'configMapKeyRef');
    if (isObj(cmKey)) {
      const data = configMap(cmKey['name']);
      const key = String(cmKey['key']);
      if (!(key in data)) throw new Error(`ConfigMap ${String(cmKey['name'])} has no key ${key}`);
      env[name] = String(data[key]);
      continue;
    }
    throw new Error(`unsupported env source for ${name}: ${JSON.stringify(e)}`);
  }
  return env;
}

/** `$(VAR)` references in a string (escaped `$$(VAR)` left out). */
export function varRefs(s: string): string[] {
  const out: string[] = [];
  const re = /\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)/g;
  for (let m = re.exec(s); m; m = re.exec(s)) if (m[1] !== undefined) out.push(m[1]);
  return out;
}

/** Kubernetes' expansion of command/args: `$(VAR)` when defined, `$$` is `$`, else verbatim. */
export function expandVars(s: string, env: Readonly<Record<string, string>>): string {
  return s.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)/g, (whole, name: string | undefined) => {
    if (name === undefined) return '$';
    return Object.prototype.hasOwnProperty.call(env, name) ? env[name]! : whole;
  });
}

export interface Mount {
  readonly volume: string;
  readonly mountPath: string;
}

export function volumeMounts(container: Obj): Mount[] {
  return ((container['volumeMounts'] as unknown[] | undefined) ?? []).map((m) => ({
    volume: String(at(m, 'name')),
    mountPath: String(at(m, 'mountPath')).replace(/\/+$/, '') || '/',
  }));
}

/** The mount a container path lies under (the deepest one), if any. */
export function mountOf(path: string, mounts: readonly Mount[]): Mount | undefined {
  return mounts
    .filter((m) => path === m.mountPath || path.startsWith(`${m.mountPath}/`))
    .sort((a, b) => b.mountPath.length - a.mountPath.length)[0];
}

/** Splits `--flag=value` / `--flag value` args into (flag, value) pairs; the rest positional. */
export function parseArgs(args: readonly string[]): {
  positional: string[];
  flags: { flag: string; value: string | undefined; index: number }[];
} {
  const positional: string[] = [];
  const flags: { flag: string; value: string | undefined; index: number }[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      if (eq > 0) flags.push({ flag: a.slice(0, eq), value: a.slice(eq + 1), index: i });
      else if (i + 1 < args.length && !args[i + 1]!.startsWith('--')) {
        flags.push({ flag: a, value: args[i + 1], index: i });
        i++;
      } else flags.push({ flag: a, value: undefined, index: i });
    } else positional.push(a);
  }
  return { positional, flags };
}

export interface NodeCommand {
  /** argv to spawn: process.execPath, the CLI script, then the container's args. */
  readonly argv: string[];
  /** The container's own environment (NODE_NAME, the ConfigMap keys). */
  readonly env: Record<string, string>;
  /** The container's args after `$(VAR)` expansion, before path mapping. */
  readonly expandedArgs: string[];
  /** The args with container paths replaced by host directories. */
  readonly args: string[];
}

/**
 * The weft container's command line for a lab node: `node` is this Node.js, the image's
 * WORKDIR (`imageRoot`) is this repository, and every value under a volumeMount is rewritten to
 * `hostDirs[volume]` (the lab's directory standing in for that volume). An absolute path in the
 * args under no mount throws: it would not exist in the container.
 */
export function nodeCommand(
  manifest: Manifest,
  opts: { nodeName: string; hostDirs: Readonly<Record<string, string>>; imageRoot: string },
): NodeCommand {
  const ds = only(manifest, 'DaemonSet');
  const container = weftContainer(ds);
  const configMaps = manifest.docs.map((d) => d.object).filter((o) => o['kind'] === 'ConfigMap');
  const env = containerEnv(container, configMaps, opts.nodeName);
  const command = strings(container['command']).map((s) => expandVars(s, env));
  const expandedArgs = strings(container['args']).map((s) => expandVars(s, env));
  const unresolved = expandedArgs.flatMap(varRefs);
  if (unresolved.length > 0) throw new Error(`unresolved $(...) in args: ${unresolved.join(', ')}`);
  if (command[0] !== 'node' || command.length !== 2) {
    throw new Error(`expected command [node, <cli>], got ${JSON.stringify(command)}`);
  }
  const root = opts.imageRoot.replace(/\/+$/, '');
  if (!command[1]!.startsWith(`${root}/`)) {
    throw new Error(`the CLI ${command[1]} is not under the image's ${root}`);
  }
  const script = `${REPO_ROOT}/${command[1]!.slice(root.length + 1)}`;
  const mounts = volumeMounts(container);
  const mapValue = (value: string): string => {
    if (!value.startsWith('/')) return value;
    const m = mountOf(value, mounts);
    if (!m) throw new Error(`${value} is under no volumeMount of the container`);
    const host = opts.hostDirs[m.volume];
    if (host === undefined) throw new Error(`no host directory given for volume ${m.volume}`);
    return host.replace(/\/+$/, '') + value.slice(m.mountPath.length);
  };
  const args = expandedArgs.map((a) => {
    if (a.startsWith('--') && a.includes('=')) {
      const eq = a.indexOf('=');
      return `${a.slice(0, eq)}=${mapValue(a.slice(eq + 1))}`;
    }
    return mapValue(a);
  });
  return { argv: [process.execPath, script, ...args], env, expandedArgs, args };
}

/** The WORKDIR of the Dockerfile's final stage: where the image keeps weft (`/opt/weft`). */
export function imageWorkdir(dockerfile = `${REPO_ROOT}/Dockerfile`): string {
  const finalStage = readFileSync(dockerfile, 'utf8')
    .split(/^FROM /m)
    .pop()!;
  const workdir = /^WORKDIR (\S+)/m.exec(finalStage)?.[1];
  if (!workdir) throw new Error(`${dockerfile}: the final stage has no WORKDIR`);
  return workdir;
}
