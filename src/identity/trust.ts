// identity/trust.ts: trust bundles, one set of root certificates per SPIFFE trust domain.
// Bundles are never merged: a peer is only ever checked against the roots of its own trust
// domain (validate.ts), which is why Node's single `ca` list cannot do this check. This module
// holds the roots; it must not read files or fetch bundles (callers hand it PEM or certs).

import { X509Certificate } from 'node:crypto';
import { certFacts, certPem, describeCert, parsePemCertificates } from './pkix.js';
import { trustDomainProblem } from './spiffe.js';

export class TrustBundles {
  readonly #roots = new Map<string, readonly X509Certificate[]>();

  /** `init`: trust domain -> roots (certificates or PEM text). */
  constructor(init?: Iterable<readonly [string, readonly X509Certificate[] | string]>) {
    if (init !== undefined) for (const [td, roots] of init) this.set(td, roots);
  }

  /**
   * Replaces the roots of `trustDomain`. Throws when the trust domain is invalid, there is no
   * root, a PEM block does not parse, or a root is not a CA certificate.
   */
  set(trustDomain: string, roots: readonly X509Certificate[] | string): this {
    const problem = trustDomainProblem(trustDomain);
    if (problem !== undefined)
      throw new Error(`trust bundle for ${JSON.stringify(trustDomain)}: ${problem}`);
    const certs =
      typeof roots === 'string'
        ? parsePemCertificates(roots, `trust bundle for ${trustDomain}`)
        : [...roots];
    if (certs.length === 0) throw new Error(`trust bundle for ${trustDomain} holds no certificate`);
    for (const c of certs) {
      if (certFacts(c).ca !== true)
        throw new Error(
          `trust bundle for ${trustDomain}: ${describeCert(c)} is not a CA certificate`,
        );
    }
    this.#roots.set(trustDomain, Object.freeze(certs));
    return this;
  }

  /** The roots of `trustDomain`, or undefined when there is no bundle for it. */
  get(trustDomain: string): readonly X509Certificate[] | undefined {
    return this.#roots.get(trustDomain);
  }

  has(trustDomain: string): boolean {
    return this.#roots.has(trustDomain);
  }

  delete(trustDomain: string): boolean {
    return this.#roots.delete(trustDomain);
  }

  trustDomains(): string[] {
    return [...this.#roots.keys()].sort();
  }

  /** PEM of the roots of one trust domain (for a TLS `ca` option), or undefined. */
  pem(trustDomain: string): string | undefined {
    return this.#roots.get(trustDomain)?.map(certPem).join('');
  }
}
