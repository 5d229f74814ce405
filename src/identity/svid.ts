// identity/svid.ts: minting X.509-SVIDs (workload certificates) with a loaded issuer. The
// result lives in memory only: this module must not write keys or certificates anywhere, log,
// or decide which identities a node may hold (manager.ts does).

import { X509Certificate } from 'node:crypto';
import { BACKDATE_MS, type Issuer } from './ca.js';
import {
  EC_P256,
  randomSerial,
  toPem,
  webCrypto,
  x509,
  type CertFacts,
  certFacts,
} from './pkix.js';
import { InvalidSpiffeIdError, toSpiffeId, type SpiffeId } from './spiffe.js';

/** A workload certificate and its private key. Never persisted. */
export interface Svid {
  readonly spiffeId: SpiffeId;
  /** The leaf certificate. */
  readonly certPem: string;
  /** PKCS#8 PEM of the leaf's ECDSA P-256 key. */
  readonly keyPem: string;
  /** Leaf, issuer and any intermediates (no self-signed root): the TLS `cert` chain. */
  readonly chainPem: string;
  /** Lowercase hex, as @peculiar/x509 prints it (node:crypto prints it uppercase). */
  readonly serial: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
}

export interface MintSvidOptions {
  spiffeId: SpiffeId | string;
  ttlMs: number;
  now?: Date;
  /** Backdating of notBefore against clock skew; default 1 minute. */
  backdateMs?: number;
}

/**
 * Mints an X.509-SVID for `spiffeId`: fresh ECDSA P-256 key, empty subject, exactly one URI
 * SAN (critical, as RFC 5280 requires with an empty subject; this is also Istio's shape),
 * CA=false and digitalSignature (both critical), serverAuth + clientAuth, random 128-bit
 * serial. notAfter is clamped to the issuer's notAfter: a leaf never outlives its issuer.
 */
export async function mintSvid(issuer: Issuer, opts: MintSvidOptions): Promise<Svid> {
  const spiffeId = toSpiffeId(opts.spiffeId);
  if (spiffeId.path === '')
    throw new InvalidSpiffeIdError(spiffeId.uri, 'a workload ID needs a non-empty path');
  if (!(Number.isFinite(opts.ttlMs) && opts.ttlMs > 0))
    throw new RangeError(`ttlMs must be a positive number, got ${opts.ttlMs}`);
  const now = opts.now ?? new Date();
  const issuerFacts: CertFacts = certFacts(issuer.issuerCert);
  if (now.getTime() >= issuerFacts.notAfter.getTime())
    throw new Error(`issuer certificate expired at ${issuerFacts.notAfter.toISOString()}`);
  const notBefore = new Date(now.getTime() - (opts.backdateMs ?? BACKDATE_MS));
  // X.509 times have whole seconds: round notAfter up so the certificate lives at least ttlMs.
  const notAfter = new Date(
    Math.min(Math.ceil((now.getTime() + opts.ttlMs) / 1000) * 1000, issuerFacts.notAfter.getTime()),
  );

  const issuerX = new x509.X509Certificate(issuer.issuerCert.raw);
  const ski = issuerX.getExtension(x509.SubjectKeyIdentifierExtension);
  const aki =
    ski !== null
      ? new x509.AuthorityKeyIdentifierExtension(ski.keyId)
      : await x509.AuthorityKeyIdentifierExtension.create(issuerX.publicKey, false, webCrypto);

  const keys = await webCrypto.subtle.generateKey(EC_P256, true, ['sign', 'verify']);
  const leaf = await x509.X509CertificateGenerator.create(
    {
      serialNumber: randomSerial(),
      subject: '',
      issuer: issuerX.subjectName,
      notBefore,
      notAfter,
      publicKey: keys.publicKey,
      signingKey: issuer.issuerKey,
      signingAlgorithm: issuer.signingAlgorithm,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension(
          [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth],
          false,
        ),
        new x509.SubjectAlternativeNameExtension([{ type: 'url', value: spiffeId.uri }], true),
        aki,
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, webCrypto),
      ],
    },
    webCrypto,
  );
  const certPem = leaf.toString('pem') + '\n';
  // Parse once with node:crypto as a sanity check that what we hand to TLS is well formed.
  new X509Certificate(certPem);
  return {
    spiffeId,
    certPem,
    keyPem: toPem(await webCrypto.subtle.exportKey('pkcs8', keys.privateKey), 'PRIVATE KEY'),
    chainPem: certPem + issuer.issuerChainPems.join(''),
    serial: leaf.serialNumber,
    notBefore: leaf.notBefore,
    notAfter: leaf.notAfter,
  };
}
