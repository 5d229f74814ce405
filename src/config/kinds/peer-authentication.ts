// config/kinds/peer-authentication.ts: translates an Istio PeerAuthentication
// (security.istio.io v1 or v1beta1): the workload selector, the mTLS mode and per-port modes.
// Checks follow Istio's schema and validation. Validation and shaping only.

import { isPortString, type FieldReader } from '../fields.js';
import { MTLS_MODES, type MtlsMode, type PeerAuthentication } from '../mesh-model.js';
import { ISTIO_SECURITY_GROUP, ISTIO_SECURITY_VERSIONS, readWorkloadSelector } from './istio.js';
import type { KindTranslator, ObjectMeta } from './translator.js';

export const peerAuthenticationTranslator: KindTranslator<'PeerAuthentication'> = {
  kind: 'PeerAuthentication',
  group: ISTIO_SECURITY_GROUP,
  versions: ISTIO_SECURITY_VERSIONS,
  namespaced: true,
  translate(r: FieldReader, meta: ObjectMeta): PeerAuthentication {
    r.stringMap(['metadata', 'labels']);
    r.stringMap(['metadata', 'annotations']);
    r.map(['spec']);
    r.onlyFields(['spec'], ['selector', 'mtls', 'portLevelMtls']);
    const selector = readWorkloadSelector(r, ['spec', 'selector']);
    const mode = readMode(r, ['spec', 'mtls']);

    const portLevelModes = new Map<number, MtlsMode>();
    const ports = r.map(['spec', 'portLevelMtls']);
    if (ports !== undefined) {
      const keys = Object.keys(ports);
      if (keys.length === 0) {
        r.fail(['spec', 'portLevelMtls'], 'must not be empty (leave it out instead)');
      } else if (selector === undefined) {
        r.fail(
          ['spec', 'portLevelMtls'],
          'requires spec.selector.matchLabels (a mesh- or namespace-wide policy cannot set port modes)',
        );
      }
      for (const key of keys) {
        const at = ['spec', 'portLevelMtls', key];
        if (!isPortString(key)) {
          r.fail(at, `${JSON.stringify(key)} is not a port number (expected 1-65535)`);
        }
        const portMode = readMode(r, at);
        if (isPortString(key)) portLevelModes.set(Number(key), portMode);
      }
    }

    return {
      name: meta.name,
      namespace: meta.namespace!,
      ...(selector !== undefined && { selector }),
      mode,
      portLevelModes,
    };
  },
};

/** `{mode: ...}` at `path`; UNSET when absent. */
function readMode(r: FieldReader, path: readonly (string | number)[]): MtlsMode {
  if (r.map(path) === undefined) return 'UNSET';
  r.onlyFields(path, ['mode']);
  return r.oneOf([...path, 'mode'], MTLS_MODES, 'an mTLS mode') ?? 'UNSET';
}
