// identity/validate.ts: the X.509-SVID check of a TLS peer, run after the handshake (which
// requests the certificate but does not reject it) and before any byte is relayed. Pure: it
// is handed the peer's certificates, the bundles and the time; it must not touch sockets
// beyond reading the peer chain off a TLSSocket, and must not log or close anything.

import { X509Certificate } from 'node:crypto';
import type { DetailedPeerCertificate, PeerCertificate, TLSSocket } from 'node:tls';
import {
  certFacts,
  describeCert,
  hasUsage,
  issuedBy,
  sameCert,
  x509,
  type CertFacts,
} from './pkix.js';
import { tryParseSpiffeId, InvalidSpiffeIdError, type SpiffeId } from './spiffe.js';
import type { TrustBundles } from './trust.js';

export type PeerValidation =
  | { readonly ok: true; readonly spiffeId: SpiffeId }
  | { readonly ok: false; readonly reason: string };

/** Longer peer chains are rejected outright (ours are 2 long; Istio's rarely exceed 4). */
export const MAX_CHAIN_LENGTH = 8;

/**
 * Validates a peer chain (leaf first, then what the peer sent; a trailing root is allowed)
 * as an X.509-SVID of the trust domain its URI SAN names, against that trust domain's bundle
 * only. Rules: exactly one URI SAN, a valid spiffe:// ID with a non-empty path; leaf CA=false,
 * key usage with digitalSignature and without keyCertSign/cRLSign; every certificate used
 * within validity at `now`; each link signed by the next, intermediates CA=true (with
 * keyCertSign when key usage is set) within their pathLen; the chain ends at, or is signed
 * by, a root of the peer's own trust domain.
 */
export function validatePeer(
  chain: readonly X509Certificate[],
  bundles: TrustBundles,
  now: Date = new Date(),
): PeerValidation {
  const fail = (reason: string): PeerValidation => ({ ok: false, reason });
  if (chain.length === 0) return fail('peer presented no certificate');
  if (chain.length > MAX_CHAIN_LENGTH)
    return fail(`peer chain has ${chain.length} certificates (more than ${MAX_CHAIN_LENGTH})`);
  const leaf = chain[0]!;
  const facts: CertFacts[] = [];
  for (const [i, cert] of chain.entries()) {
    try {
      facts.push(certFacts(cert));
    } catch (err) {
      return fail(`certificate ${i} does not parse: ${(err as Error).message}`);
    }
  }
  const lf = facts[0]!;

  if (lf.uris.length === 0) return fail('leaf has no URI SAN (an X.509-SVID has exactly one)');
  if (lf.uris.length > 1)
    return fail(`leaf has ${lf.uris.length} URI SANs (an X.509-SVID has exactly one)`);
  const parsed = tryParseSpiffeId(lf.uris[0]!);
  if (parsed instanceof InvalidSpiffeIdError) return fail(`leaf URI SAN: ${parsed.message}`);
  const spiffeId = parsed;
  if (spiffeId.path === '')
    return fail(`leaf URI SAN ${spiffeId.uri} has an empty path (a trust domain, not a workload)`);

  if (lf.ca === true) return fail('leaf is a CA certificate (basicConstraints CA=true)');
  if (lf.keyUsage === undefined) return fail('leaf has no key usage (needs digitalSignature)');
  if (!hasUsage(lf, x509.KeyUsageFlags.digitalSignature))
    return fail('leaf key usage lacks digitalSignature');
  if (hasUsage(lf, x509.KeyUsageFlags.keyCertSign)) return fail('leaf key usage has keyCertSign');
  if (hasUsage(lf, x509.KeyUsageFlags.cRLSign)) return fail('leaf key usage has cRLSign');

  const roots = bundles.get(spiffeId.trustDomain);
  if (roots === undefined || roots.length === 0)
    return fail(`no trust bundle for trust domain ${spiffeId.trustDomain} (peer ${spiffeId.uri})`);

  const validity = (cert: X509Certificate, f: CertFacts, what: string): string | undefined => {
    if (now.getTime() > f.notAfter.getTime())
      return `${what} ${describeCert(cert)} expired at ${f.notAfter.toISOString()}`;
    if (now.getTime() < f.notBefore.getTime())
      return `${what} ${describeCert(cert)} is not valid before ${f.notBefore.toISOString()}`;
    return undefined;
  };
  const leafValidity = validity(leaf, lf, 'leaf');
  if (leafValidity !== undefined) return fail(leafValidity);

  // Walk up: at each step, stop at a bundle root that signed the current certificate; else the
  // next certificate of the chain must have signed it and be a usable CA.
  let cur = leaf;
  for (let i = 0; ; i++) {
    const root = roots.find((r) => issuedBy(cur, r));
    if (root !== undefined) {
      const rf = certFacts(root);
      const bad = validity(root, rf, `root of ${spiffeId.trustDomain}`);
      if (bad !== undefined) return fail(bad);
      // Intermediates below the root (the leaf excluded) must fit in the root's pathLen.
      if (rf.pathLength !== undefined && i > rf.pathLength)
        return fail(
          `root ${describeCert(root)} allows ${rf.pathLength} intermediates, chain has ${i}`,
        );
      return { ok: true, spiffeId };
    }
    const next = chain[i + 1];
    if (next === undefined)
      return fail(
        `chain does not lead to a root of trust domain ${spiffeId.trustDomain}: ${i === 0 ? 'leaf' : `certificate ${i}`} ${describeCert(cur)} is not signed by any of its roots`,
      );
    const nf = facts[i + 1]!;
    if (!issuedBy(cur, next))
      return fail(`certificate ${i} ${describeCert(cur)} is not signed by certificate ${i + 1}`);
    if (nf.ca !== true)
      return fail(`intermediate ${describeCert(next)} is not a CA (basicConstraints CA=true)`);
    if (nf.keyUsage !== undefined && !hasUsage(nf, x509.KeyUsageFlags.keyCertSign))
      return fail(`intermediate ${describeCert(next)} key usage lacks keyCertSign`);
    if (nf.pathLength !== undefined && i > nf.pathLength)
      return fail(
        `intermediate ${describeCert(next)} allows ${nf.pathLength} intermediates below it, chain has ${i}`,
      );
    const bad = validity(next, nf, 'intermediate');
    if (bad !== undefined) return fail(bad);
    cur = next;
  }
}

/**
 * The chain a TLS peer presented, leaf first, as validatePeer takes it. Reads
 * `getPeerCertificate(true)` (Node fills `issuerCertificate` from what the peer sent, then
 * from the socket's `ca` store) and stops at a self-signed certificate. Empty when the peer
 * sent no certificate.
 */
export function peerChain(socket: TLSSocket): X509Certificate[] {
  return chainFromPeerCertificate(socket.getPeerCertificate(true));
}

/** Walks a `getPeerCertificate(true)` result into node:crypto certificates, leaf first. */
export function chainFromPeerCertificate(
  peer: DetailedPeerCertificate | PeerCertificate | null | undefined,
): X509Certificate[] {
  const out: X509Certificate[] = [];
  let cur: DetailedPeerCertificate | PeerCertificate | undefined = peer ?? undefined;
  while (cur !== undefined && cur.raw !== undefined && Object.keys(cur).length > 0) {
    if (out.some((c) => c.raw.equals(cur!.raw))) break; // a self-signed root points at itself
    out.push(new X509Certificate(cur.raw));
    if (out.length > MAX_CHAIN_LENGTH) break; // validatePeer rejects it; no need to walk on
    cur = 'issuerCertificate' in cur ? cur.issuerCertificate : undefined;
  }
  return out;
}

/** Walks `X509Certificate#issuerCertificate` links (as from getPeerX509Certificate()). */
export function chainFromX509(leaf: X509Certificate | undefined): X509Certificate[] {
  const out: X509Certificate[] = [];
  let cur = leaf;
  while (
    cur !== undefined &&
    !out.some((c) => sameCert(c, cur!)) &&
    out.length <= MAX_CHAIN_LENGTH
  ) {
    out.push(cur);
    cur = cur.issuerCertificate;
  }
  return out;
}
