// identity/ca.ts: the embedded CA's files, in Istio's `cacerts` layout so the same Secret
// works for both: `initCa` creates a root and an issuer (`weft ca init`), `loadIssuer` reads
// and checks them (`weft node --ca DIR`). It reads and writes only the directory it is given;
// it must not mint workload certificates (svid.ts does), log, or decide what happens on error.
//
// The root key: Istio's plug-in CA layout keeps the root key offline; only the issuer
// (intermediate) key sits in the Secret, so a leaked Secret lets an attacker mint workload
// certificates until the issuer expires or the root is rotated, but never a new issuer, and
// the root can stay in every trust bundle. `initCa` therefore does not write `root-key.pem`
// unless asked (`keepRootKey`); without it the root key is generated non-extractable and
// discarded, so renewing the issuer means a new root (a planned root rotation). Operators who
// want to re-issue the issuer under the same root ask for `root-key.pem` and move it off the
// cluster themselves; it never belongs in the `cacerts` Secret.

import { chmod, lstat, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  X509Certificate,
  createPrivateKey,
  createPublicKey,
  type KeyObject,
  type webcrypto,
} from 'node:crypto';
import {
  EC_P256,
  certFacts,
  certPem,
  describeCert,
  hasUsage,
  issuedBy,
  parsePemCertificates,
  randomSerial,
  sameCert,
  toPem,
  webCrypto,
  x509,
} from './pkix.js';
import { DEFAULT_TRUST_DOMAIN, trustDomainProblem } from './spiffe.js';

/** Istio's `cacerts` file names (plus the optional, offline root key). */
export const CA_FILES = {
  rootCert: 'root-cert.pem',
  issuerCert: 'ca-cert.pem',
  issuerKey: 'ca-key.pem',
  certChain: 'cert-chain.pem',
  rootKey: 'root-key.pem',
} as const;

const DAY_MS = 24 * 60 * 60 * 1000;
/** Certificates are backdated this much to tolerate clock skew between nodes. */
export const BACKDATE_MS = 60 * 1000;

export type CaErrorCode =
  | 'invalid-option'
  | 'exists'
  | 'missing'
  | 'unreadable'
  | 'unparsable'
  | 'key-mismatch'
  | 'not-ca'
  | 'expired'
  | 'not-yet-valid'
  | 'chain-mismatch'
  | 'not-signed-by-root';

/** A CA directory that cannot be created or used; `file` is the path at fault, when one is. */
export class CaError extends Error {
  override readonly name = 'CaError';
  constructor(
    readonly code: CaErrorCode,
    message: string,
    readonly file?: string,
  ) {
    super(message);
  }
}

export interface InitCaOptions {
  trustDomain?: string;
  rootTtlDays?: number;
  issuerTtlDays?: number;
  /** Replace existing files (and remove a stale root-key.pem unless keepRootKey). */
  force?: boolean;
  /** Also write root-key.pem (0600). Default false: see the header of this file. */
  keepRootKey?: boolean;
  now?: Date;
}

export interface CertSummary {
  readonly subject: string;
  readonly serial: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly fingerprint256: string;
}

export interface InitCaResult {
  readonly dir: string;
  readonly trustDomain: string;
  /** Paths written, in writing order. */
  readonly files: readonly string[];
  readonly root: CertSummary;
  readonly issuer: CertSummary;
}

/** Creates a root and an issuer CA in `outDir` (created if needed), Istio `cacerts` names. */
export async function initCa(outDir: string, opts: InitCaOptions = {}): Promise<InitCaResult> {
  const trustDomain = opts.trustDomain ?? DEFAULT_TRUST_DOMAIN;
  const rootTtlDays = opts.rootTtlDays ?? 3650;
  const issuerTtlDays = opts.issuerTtlDays ?? 730;
  const now = opts.now ?? new Date();
  const tdProblem = trustDomainProblem(trustDomain);
  if (tdProblem !== undefined)
    throw new CaError(
      'invalid-option',
      `trust domain ${JSON.stringify(trustDomain)}: ${tdProblem}`,
    );
  for (const [name, v] of [
    ['rootTtlDays', rootTtlDays],
    ['issuerTtlDays', issuerTtlDays],
  ] as const) {
    if (!(Number.isFinite(v) && v > 0))
      throw new CaError('invalid-option', `${name} must be a positive number, got ${v}`);
  }
  if (issuerTtlDays > rootTtlDays)
    throw new CaError(
      'invalid-option',
      `issuerTtlDays (${issuerTtlDays}) must not exceed rootTtlDays (${rootTtlDays}): an issuer cannot outlive its root`,
    );

  const names: string[] = [
    CA_FILES.rootCert,
    CA_FILES.issuerCert,
    CA_FILES.issuerKey,
    CA_FILES.certChain,
  ];
  if (opts.keepRootKey === true) names.push(CA_FILES.rootKey);
  await mkdir(outDir, { recursive: true, mode: 0o700 });
  if (opts.force !== true) {
    const existing = [];
    for (const n of names) if (await exists(join(outDir, n))) existing.push(n);
    if (existing.length > 0)
      throw new CaError(
        'exists',
        `${outDir} already holds ${existing.join(', ')}; refusing to overwrite a CA (use --force to replace it)`,
        join(outDir, existing[0]!),
      );
  }

  const notBefore = new Date(now.getTime() - BACKDATE_MS);
  const rootKeys = (await webCrypto.subtle.generateKey(EC_P256, opts.keepRootKey === true, [
    'sign',
    'verify',
  ])) as webcrypto.CryptoKeyPair;
  const root = await x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: randomSerial(),
      name: [{ CN: ['weft root CA'] }, { O: [trustDomain] }],
      notBefore,
      notAfter: new Date(now.getTime() + rootTtlDays * DAY_MS),
      keys: rootKeys,
      signingAlgorithm: EC_P256,
      extensions: [
        new x509.BasicConstraintsExtension(true, undefined, true),
        new x509.KeyUsagesExtension(
          x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign,
          true,
        ),
        await x509.SubjectKeyIdentifierExtension.create(rootKeys.publicKey, false, webCrypto),
      ],
    },
    webCrypto,
  );
  const issuerKeys = (await webCrypto.subtle.generateKey(EC_P256, true, [
    'sign',
    'verify',
  ])) as webcrypto.CryptoKeyPair;
  const issuer = await x509.X509CertificateGenerator.create(
    {
      serialNumber: randomSerial(),
      subject: [{ CN: ['weft issuer CA'] }, { O: [trustDomain] }],
      issuer: root.subjectName,
      notBefore,
      notAfter: new Date(now.getTime() + issuerTtlDays * DAY_MS),
      publicKey: issuerKeys.publicKey,
      signingKey: rootKeys.privateKey,
      signingAlgorithm: EC_P256,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(
          x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign,
          true,
        ),
        await x509.SubjectKeyIdentifierExtension.create(issuerKeys.publicKey, false, webCrypto),
        await x509.AuthorityKeyIdentifierExtension.create(rootKeys.publicKey, false, webCrypto),
      ],
    },
    webCrypto,
  );

  const rootPem = root.toString('pem') + '\n';
  const issuerPem = issuer.toString('pem') + '\n';
  const keyPem = toPem(
    await webCrypto.subtle.exportKey('pkcs8', issuerKeys.privateKey),
    'PRIVATE KEY',
  );
  const files: string[] = [];
  const put = async (name: string, data: string, mode: number): Promise<void> => {
    const path = join(outDir, name);
    // 'wx' fails if the file appeared since the check above; chmod because a replaced file
    // keeps its old mode.
    await writeFile(path, data, { mode, flag: opts.force === true ? 'w' : 'wx' });
    await chmod(path, mode);
    files.push(path);
  };
  await put(CA_FILES.issuerKey, keyPem, 0o600);
  if (opts.keepRootKey === true) {
    const rootKeyPem = toPem(
      await webCrypto.subtle.exportKey('pkcs8', rootKeys.privateKey),
      'PRIVATE KEY',
    );
    await put(CA_FILES.rootKey, rootKeyPem, 0o600);
  } else if (opts.force === true) {
    // A root key left from an earlier CA would not match the new root.
    await rm(join(outDir, CA_FILES.rootKey), { force: true });
  }
  await put(CA_FILES.rootCert, rootPem, 0o644);
  await put(CA_FILES.issuerCert, issuerPem, 0o644);
  await put(CA_FILES.certChain, issuerPem + rootPem, 0o644);

  return {
    dir: outDir,
    trustDomain,
    files,
    root: summarize(new X509Certificate(rootPem)),
    issuer: summarize(new X509Certificate(issuerPem)),
  };
}

/** A loaded, checked issuer: what mintSvid signs with. */
export interface Issuer {
  /** ca-cert.pem. */
  readonly issuerCert: X509Certificate;
  /** ca-key.pem, imported for signing only (not extractable). */
  readonly issuerKey: webcrypto.CryptoKey;
  /** WebCrypto signature parameters matching issuerKey. */
  readonly signingAlgorithm: webcrypto.Algorithm | webcrypto.EcdsaParams;
  /** cert-chain.pem (issuer, any intermediates, root), ending with the root it chains to. */
  readonly chainPem: string;
  /** Issuer then intermediates, without self-signed roots: what follows a leaf on the wire. */
  readonly issuerChainPems: readonly string[];
  /** Every certificate of root-cert.pem (more than one during a root rotation). */
  readonly rootPems: readonly string[];
  readonly roots: readonly X509Certificate[];
}

export interface LoadIssuerOptions {
  now?: Date;
}

/** Reads and checks a CA directory written by `initCa` or by Istio's plug-in CA tooling. */
export async function loadIssuer(dir: string, opts: LoadIssuerOptions = {}): Promise<Issuer> {
  const now = opts.now ?? new Date();
  const path = (name: string): string => join(dir, name);
  const names = [CA_FILES.rootCert, CA_FILES.issuerCert, CA_FILES.issuerKey, CA_FILES.certChain];
  const text = new Map<string, string>();
  const missing: string[] = [];
  for (const n of names) {
    try {
      text.set(n, await readFile(path(n), 'utf8'));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') missing.push(n);
      else
        throw new CaError(
          'unreadable',
          `${path(n)}: cannot read: ${(err as Error).message}`,
          path(n),
        );
    }
  }
  if (missing.length > 0)
    throw new CaError(
      'missing',
      `CA directory ${dir} lacks ${missing.join(', ')}; \`weft ca init --out ${dir}\` creates them`,
      path(missing[0]!),
    );

  const certsOf = (name: string): X509Certificate[] => {
    try {
      return parsePemCertificates(text.get(name)!, path(name));
    } catch (err) {
      throw new CaError('unparsable', (err as Error).message, path(name));
    }
  };
  const issuerCerts = certsOf(CA_FILES.issuerCert);
  if (issuerCerts.length !== 1)
    throw new CaError(
      'unparsable',
      `${path(CA_FILES.issuerCert)} holds ${issuerCerts.length} certificates; expected the issuer certificate only`,
      path(CA_FILES.issuerCert),
    );
  const issuerCert = issuerCerts[0]!;
  const roots = certsOf(CA_FILES.rootCert);
  const chain = certsOf(CA_FILES.certChain);

  const keyFile = path(CA_FILES.issuerKey);
  let keyObject;
  try {
    keyObject = createPrivateKey(text.get(CA_FILES.issuerKey)!);
  } catch (err) {
    throw new CaError(
      'unparsable',
      `${keyFile}: not a PEM private key: ${(err as Error).message}`,
      keyFile,
    );
  }
  // Node 20's createPublicKey refuses a key that is already public (X509Certificate.publicKey).
  const spki = (k: KeyObject): Buffer =>
    (k.type === 'public' ? k : createPublicKey(k)).export({ type: 'spki', format: 'der' });
  if (!spki(keyObject).equals(spki(issuerCert.publicKey)))
    throw new CaError(
      'key-mismatch',
      `${keyFile} does not match the public key of ${path(CA_FILES.issuerCert)} ${describeCert(issuerCert)}`,
      keyFile,
    );
  const { importAlg, signingAlgorithm } = signingParamsOf(keyObject, keyFile);
  const issuerKey = await webCrypto.subtle.importKey(
    'pkcs8',
    keyObject.export({ type: 'pkcs8', format: 'der' }),
    importAlg,
    false,
    ['sign'],
  );

  const issuerFile = path(CA_FILES.issuerCert);
  const facts = factsOrThrow(issuerCert, issuerFile);
  if (
    facts.ca !== true ||
    (facts.keyUsage !== undefined && !hasUsage(facts, x509.KeyUsageFlags.keyCertSign))
  )
    throw new CaError(
      'not-ca',
      `${issuerFile} ${describeCert(issuerCert)} is not a CA certificate (needs basicConstraints CA=true and, if key usage is set, keyCertSign)`,
      issuerFile,
    );
  checkValidity(issuerCert, facts, issuerFile, now);

  const chainFile = path(CA_FILES.certChain);
  if (!sameCert(chain[0]!, issuerCert))
    throw new CaError(
      'chain-mismatch',
      `${chainFile} must start with the certificate of ${CA_FILES.issuerCert} ${describeCert(issuerCert)}, found ${describeCert(chain[0]!)}`,
      chainFile,
    );
  // Walk cert-chain.pem link by link until a certificate is, or is signed by, a root.
  let anchor: X509Certificate | undefined;
  for (let i = 0; i < chain.length && anchor === undefined; i++) {
    const cert = chain[i]!;
    anchor = roots.find((r) => sameCert(r, cert) || issuedBy(cert, r));
    if (anchor !== undefined) break;
    const next = chain[i + 1];
    if (next === undefined) break;
    if (!issuedBy(cert, next))
      throw new CaError(
        'not-signed-by-root',
        `${chainFile}: certificate ${i + 1} ${describeCert(cert)} is not signed by certificate ${i + 2} ${describeCert(next)}`,
        chainFile,
      );
    if (i + 1 < chain.length - 1 || !isSelfSigned(next))
      checkValidity(next, factsOrThrow(next, chainFile), chainFile, now);
  }
  if (anchor === undefined)
    throw new CaError(
      'not-signed-by-root',
      `${issuerFile} ${describeCert(issuerCert)} does not chain to any certificate of ${path(CA_FILES.rootCert)}`,
      issuerFile,
    );
  checkValidity(
    anchor,
    factsOrThrow(anchor, path(CA_FILES.rootCert)),
    path(CA_FILES.rootCert),
    now,
  );

  const chainPems = chain.map(certPem);
  if (!chain.some((c) => sameCert(c, anchor))) chainPems.push(certPem(anchor));
  return {
    issuerCert,
    issuerKey,
    signingAlgorithm,
    chainPem: chainPems.join(''),
    issuerChainPems: chain
      .filter((c) => !(isSelfSigned(c) && roots.some((r) => sameCert(r, c))))
      .map(certPem),
    rootPems: roots.map(certPem),
    roots,
  };
}

function signingParamsOf(
  key: ReturnType<typeof createPrivateKey>,
  file: string,
): {
  importAlg: webcrypto.RsaHashedImportParams | webcrypto.EcKeyImportParams;
  signingAlgorithm: webcrypto.Algorithm | webcrypto.EcdsaParams;
} {
  if (key.asymmetricKeyType === 'ec') {
    const curve = key.asymmetricKeyDetails?.namedCurve;
    const named = curve === 'prime256v1' ? 'P-256' : curve === 'secp384r1' ? 'P-384' : undefined;
    if (named !== undefined) {
      const hash = named === 'P-256' ? 'SHA-256' : 'SHA-384';
      return {
        importAlg: { name: 'ECDSA', namedCurve: named },
        signingAlgorithm: { name: 'ECDSA', hash } as webcrypto.EcdsaParams,
      };
    }
  }
  if (key.asymmetricKeyType === 'rsa') {
    // Istio's sample plug-in certificates are RSA.
    return {
      importAlg: { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' },
      signingAlgorithm: { name: 'RSASSA-PKCS1-v1_5' },
    };
  }
  throw new CaError(
    'unparsable',
    `${file}: unsupported key type ${key.asymmetricKeyType ?? '?'}${key.asymmetricKeyDetails?.namedCurve ? ` (${key.asymmetricKeyDetails.namedCurve})` : ''}; use ECDSA P-256/P-384 or RSA`,
    file,
  );
}

function factsOrThrow(cert: X509Certificate, file: string): ReturnType<typeof certFacts> {
  try {
    return certFacts(cert);
  } catch (err) {
    throw new CaError(
      'unparsable',
      `${file}: extensions of ${describeCert(cert)} do not parse: ${(err as Error).message}`,
      file,
    );
  }
}

function checkValidity(
  cert: X509Certificate,
  facts: ReturnType<typeof certFacts>,
  file: string,
  now: Date,
): void {
  if (now.getTime() > facts.notAfter.getTime())
    throw new CaError(
      'expired',
      `${file}: ${describeCert(cert)} expired at ${facts.notAfter.toISOString()}`,
      file,
    );
  if (now.getTime() < facts.notBefore.getTime())
    throw new CaError(
      'not-yet-valid',
      `${file}: ${describeCert(cert)} is not valid before ${facts.notBefore.toISOString()}`,
      file,
    );
}

function isSelfSigned(cert: X509Certificate): boolean {
  return issuedBy(cert, cert);
}

function summarize(cert: X509Certificate): CertSummary {
  const f = certFacts(cert);
  return {
    subject: cert.subject.replace(/\n/g, ', '),
    serial: cert.serialNumber.toLowerCase(),
    notBefore: f.notBefore,
    notAfter: f.notAfter,
    fingerprint256: cert.fingerprint256,
  };
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    return true;
  }
}
