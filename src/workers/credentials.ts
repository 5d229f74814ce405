// credentials.ts: a worker's side of the workload certificates. The control plane mints and
// rotates them (CertificateManager) and sends each one over IPC; the worker turns it into a
// TLS secure context, retires the tunnels of a replaced certificate, and answers the
// TunnelCredentials interface the NodeProxy asks. It never mints and never logs a key.
import { createSecureContext, type SecureContext } from 'node:tls';
import { TrustBundles, peerChain, validatePeer } from '../identity/index.js';
import { HBONE_CIPHERSUITES, HbonePool, type HboneLogger } from '../proxy/hbone/index.js';
import { tunnelSourceKey, type TunnelCredentials } from '../proxy/node-proxy.js';
import type { WorkerCertificate } from './protocol.js';

export class WorkerCredentials {
  private readonly current = new Map<
    string,
    { context: SecureContext; serial: string; notAfter: number }
  >();
  readonly bundles: TrustBundles;
  readonly pool: HbonePool;

  constructor(
    bundles: readonly (readonly [string, string])[],
    private readonly trustDomain: string,
    logger: HboneLogger,
  ) {
    this.bundles = new TrustBundles(bundles);
    this.pool = new HbonePool({ logger });
  }

  /** A certificate issued or rotated by the control plane. */
  put(certificate: WorkerCertificate): void {
    const ca = this.bundles.pem(this.trustDomain);
    const context = createSecureContext({
      ciphers: HBONE_CIPHERSUITES,
      honorCipherOrder: true,
      maxVersion: 'TLSv1.3',
      minVersion: 'TLSv1.3',
      key: certificate.keyPem,
      cert: certificate.chainPem,
      ca,
    });
    this.current.set(certificate.spiffeId, {
      context,
      serial: certificate.serial,
      notAfter: certificate.notAfter.getTime(),
    });
    if (certificate.previousSerial) {
      this.pool.retireSource(tunnelSourceKey(certificate.spiffeId, certificate.previousSerial));
    }
  }

  drop(spiffeId: string): void {
    this.current.delete(spiffeId);
  }

  tunnels(): TunnelCredentials {
    const bundles = this.bundles;
    return {
      credentials: (identity) => {
        const cert = this.current.get(identity);
        if (!cert || Date.now() >= cert.notAfter) return undefined;
        return { context: cert.context, serial: cert.serial };
      },
      verifyPeer: (socket) => {
        const verdict = validatePeer(peerChain(socket), bundles, new Date());
        return verdict.ok ? { ok: true, identity: verdict.spiffeId.uri } : verdict;
      },
      pool: this.pool,
    };
  }
}
