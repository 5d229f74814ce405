// Small helpers the e2e tests share for a LabMesh's config directory: writing manifests
// atomically (the file source never sees half a file) and polling for a condition.
import { rename, writeFile } from 'node:fs/promises';
import { stringify } from 'yaml';
import type { LabMesh } from '../../src/lab/mesh.js';

/** Replaces `<configDir>/<file>` with these objects, atomically (write, then rename). */
export async function writeManifest(mesh: LabMesh, file: string, objects: object[]): Promise<void> {
  const tmp = `${mesh.configDir}/.${file}.tmp`;
  await writeFile(tmp, objects.map((o) => stringify(o)).join('---\n'));
  await rename(tmp, `${mesh.configDir}/${file}`);
}

/** An AuthorizationPolicy in `namespace` with this spec. */
export function authorizationPolicy(namespace: string, name: string, spec: object): object {
  return {
    apiVersion: 'security.istio.io/v1',
    kind: 'AuthorizationPolicy',
    metadata: { name, namespace },
    spec,
  };
}

/** Polls `check` every 100 ms until it holds or `timeoutMs` passes; then checks once more. */
export async function eventually(
  check: () => Promise<boolean> | boolean,
  timeoutMs = 8000,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return check();
}
