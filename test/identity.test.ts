// test/identity.test.ts: identity/: SPIFFE IDs, the CA directory (initCa/loadIssuer and each
// of loadIssuer's errors), SVID minting, peer validation (one test per broken X.509-SVID rule,
// each certificate built with @peculiar/x509 to break exactly that rule), a real TLS 1.3
// handshake with manager-issued contexts, and renewal/backoff. Temp directories only; every
// wait is bounded.

import test, { type ExecutionContext } from 'ava';
import { X509Certificate, webcrypto } from 'node:crypto';
import { readFile, rm, mkdtemp, stat, writeFile, access } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import {
  CA_FILES,
  CaError,
  CertificateManager,
  InvalidSpiffeIdError,
  TrustBundles,
  chainFromPeerCertificate,
  chainFromX509,
  initCa,
  loadIssuer,
  mintSvid,
  parseSpiffeId,
  peerChain,
  spiffeIdFor,
  validatePeer,
  type Clock,
  type Issuer,
  type MintFailedEvent,
  type RotatedEvent,
} from '../src/identity/index.js';
import { x509 } from '../src/identity/pkix.js';

const crypto = webcrypto as unknown as webcrypto.Crypto;
const EC = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const TD = 'cluster.local';
const OTHER_TD = 'example.org';
const WEB = `spiffe://${TD}/ns/default/sa/web`;
const HOUR = 3600_000;

async function tempDir(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'weft-identity-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Creates a CA directory (with its root key, for tests that forge CA files) and loads it. */
async function newCa(trustDomain = TD): Promise<{ dir: string; issuer: Issuer }> {
  const dir = await mkdtemp(join(tmpdir(), 'weft-identity-ca-'));
  await initCa(dir, { trustDomain, keepRootKey: true });
  return { dir, issuer: await loadIssuer(dir) };
}

let caA: { dir: string; issuer: Issuer }; // cluster.local, in the bundle
let caRogue: { dir: string; issuer: Issuer }; // also says cluster.local, not in any bundle
let caOther: { dir: string; issuer: Issuer }; // example.org, in the bundle
let bundles: TrustBundles;

test.before(async () => {
  [caA, caRogue, caOther] = await Promise.all([newCa(), newCa(), newCa(OTHER_TD)]);
  bundles = new TrustBundles([
    [TD, caA.issuer.rootPems.join('')],
    [OTHER_TD, [...caOther.issuer.roots]],
  ]);
});

test.after.always(async () => {
  for (const ca of [caA, caRogue, caOther])
    if (ca !== undefined) await rm(ca.dir, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------
// Forging certificates

interface Signer {
  readonly cert: X509Certificate;
  readonly key: webcrypto.CryptoKey;
  /** What follows the signed certificate on the wire: the signer and its own chain. */
  readonly chain: readonly X509Certificate[];
}

function signerOf(issuer: Issuer): Signer {
  return {
    cert: issuer.issuerCert,
    key: issuer.issuerKey,
    chain: issuer.issuerChainPems.map((p) => new X509Certificate(p)),
  };
}

interface CertSpec {
  uris?: string[];
  dns?: string[];
  /** basicConstraints cA; null leaves the extension out. */
  ca?: boolean | null;
  subject?: string;
  /** Key usage bits; null leaves the extension out. */
  keyUsage?: number | null;
  notBefore?: Date;
  notAfter?: Date;
  signer?: Signer;
}

/** A certificate with the given shape, signed by `signer` (CA A's issuer by default). */
async function forge(
  spec: CertSpec = {},
): Promise<{ chain: X509Certificate[]; key: webcrypto.CryptoKey }> {
  const signer = spec.signer ?? signerOf(caA.issuer);
  const keys = (await crypto.subtle.generateKey(EC, true, [
    'sign',
    'verify',
  ])) as webcrypto.CryptoKeyPair;
  const signerX = new x509.X509Certificate(signer.cert.raw);
  const names: x509.JsonGeneralName[] = [
    ...(spec.uris ?? [WEB]).map((value) => ({ type: 'url' as const, value })),
    ...(spec.dns ?? []).map((value) => ({ type: 'dns' as const, value })),
  ];
  const extensions: x509.Extension[] = [
    await x509.AuthorityKeyIdentifierExtension.create(signerX.publicKey, false, crypto),
    await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, crypto),
  ];
  if (names.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(names, true));
  const ca = spec.ca === undefined ? false : spec.ca;
  if (ca !== null) extensions.push(new x509.BasicConstraintsExtension(ca, undefined, true));
  const ku = spec.keyUsage === undefined ? x509.KeyUsageFlags.digitalSignature : spec.keyUsage;
  if (ku !== null) extensions.push(new x509.KeyUsagesExtension(ku, true));
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.create(
    {
      subject: spec.subject ?? '',
      issuer: signerX.subjectName,
      notBefore: spec.notBefore ?? new Date(now - 60_000),
      notAfter: spec.notAfter ?? new Date(now + HOUR),
      publicKey: keys.publicKey,
      signingKey: signer.key,
      signingAlgorithm: EC,
      extensions,
    },
    crypto,
  );
  return {
    chain: [new X509Certificate(cert.toString('pem')), ...signer.chain],
    key: keys.privateKey,
  };
}

async function forgedChain(spec: CertSpec = {}): Promise<X509Certificate[]> {
  return (await forge(spec)).chain;
}

function rejects(t: ExecutionContext, chain: X509Certificate[], reason: RegExp): void {
  const r = validatePeer(chain, bundles, new Date());
  if (r.ok) t.fail(`accepted ${r.spiffeId.uri}`);
  else {
    t.regex(r.reason, reason);
    t.log(r.reason);
  }
}

// ---------------------------------------------------------------------------------------------
// SPIFFE IDs

test('spiffe: parse, format and spiffeIdFor', (t) => {
  const id = parseSpiffeId('spiffe://cluster.local/ns/prod/sa/web');
  t.like(id, {
    trustDomain: 'cluster.local',
    path: '/ns/prod/sa/web',
    uri: 'spiffe://cluster.local/ns/prod/sa/web',
    namespace: 'prod',
    serviceAccount: 'web',
  });
  t.deepEqual(spiffeIdFor('cluster.local', 'prod', 'web'), id);
  const generic = parseSpiffeId('spiffe://a_b.example-1/x/Y.z');
  t.is(generic.namespace, undefined);
  t.is(generic.path, '/x/Y.z');
  t.is(parseSpiffeId('spiffe://td').path, '');
});

test('spiffe: invalid IDs say why', (t) => {
  const cases: [string, RegExp][] = [
    ['', /empty/],
    ['https://cluster.local/ns/a/sa/b', /scheme/],
    ['SPIFFE://cluster.local/ns/a', /scheme/],
    ['spiffe:///ns/a/sa/b', /trust domain is missing/],
    ['spiffe://Cluster.local/ns/a', /lowercase letters/],
    ['spiffe://cluster.local:8080/ns/a', /port/],
    ['spiffe://u@cluster.local/ns/a', /user info/],
    ['spiffe://cluster.local/ns//sa', /empty segments/],
    ['spiffe://cluster.local/ns/../sa', /dot segments/],
    ['spiffe://cluster.local/ns/a/', /trailing slash/],
    ['spiffe://cluster.local/', /trailing slash/],
    ['spiffe://cluster.local/ns/a%20b', /path segment characters/],
    ['spiffe://cluster.local/ns/a?x=1', /query/],
    ['spiffe://cluster.local/ns/a#f', /fragment/],
    [`spiffe://${'a'.repeat(256)}/x`, /longer than 255/],
  ];
  for (const [input, reason] of cases) {
    const err = t.throws(() => parseSpiffeId(input), { instanceOf: InvalidSpiffeIdError });
    t.regex(err!.reason, reason, input);
  }
  t.throws(() => spiffeIdFor('Bad', 'a', 'b'), { instanceOf: InvalidSpiffeIdError });
  t.throws(() => spiffeIdFor(TD, '', 'b'), { message: /namespace: path cannot contain empty/ });
  t.throws(() => spiffeIdFor(TD, 'a', 'b/c'), { message: /service account/ });
});

// ---------------------------------------------------------------------------------------------
// CA directory

test('initCa writes the cacerts layout and loadIssuer reads it back', async (t) => {
  const dir = await tempDir(t);
  const res = await initCa(dir, { trustDomain: 'mesh.example' });
  t.deepEqual(res.files.map((f) => f.slice(dir.length + 1)).sort(), [
    'ca-cert.pem',
    'ca-key.pem',
    'cert-chain.pem',
    'root-cert.pem',
  ]);
  await t.throwsAsync(access(join(dir, CA_FILES.rootKey)), { code: 'ENOENT' });
  t.is((await stat(join(dir, CA_FILES.issuerKey))).mode & 0o777, 0o600);
  t.regex(await readFile(join(dir, CA_FILES.issuerKey), 'utf8'), /^-----BEGIN PRIVATE KEY-----/);

  const issuer = await loadIssuer(dir);
  const root = new X509Certificate(await readFile(join(dir, CA_FILES.rootCert)));
  t.true(root.ca);
  t.true(issuer.issuerCert.ca);
  t.true(issuer.issuerCert.checkIssued(root) && issuer.issuerCert.verify(root.publicKey));
  t.regex(root.subject, /O=mesh\.example/);
  t.is(issuer.rootPems.length, 1);
  t.is(issuer.issuerChainPems.length, 1);
  t.is(
    issuer.chainPem,
    await readFile(join(dir, CA_FILES.certChain), 'utf8'),
    'chainPem is cert-chain.pem: issuer then root',
  );
  const chain = issuer.chainPem.match(/BEGIN CERTIFICATE/g);
  t.is(chain?.length, 2);
  const bc = (c: X509Certificate) =>
    new x509.X509Certificate(c.raw).getExtension(x509.BasicConstraintsExtension)!;
  const ku = (c: X509Certificate) =>
    new x509.X509Certificate(c.raw).getExtension(x509.KeyUsagesExtension)!;
  t.is(bc(issuer.issuerCert).pathLength, 0);
  t.is(ku(issuer.issuerCert).usages, x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign);
  t.is(ku(root).usages, x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign);
  t.is(Math.round((res.issuer.notAfter.getTime() - Date.now()) / 86400_000), 730);
  t.is(Math.round((res.root.notAfter.getTime() - Date.now()) / 86400_000), 3650);

  // Refuses to overwrite; force replaces (and drops nothing it should keep).
  const err = await t.throwsAsync(initCa(dir), { instanceOf: CaError });
  t.is(err!.code, 'exists');
  t.regex(err!.message, /root-cert\.pem.*force/);
  const again = await initCa(dir, { force: true, keepRootKey: true });
  t.not(again.root.fingerprint256, res.root.fingerprint256);
  t.is((await stat(join(dir, CA_FILES.rootKey))).mode & 0o777, 0o600);
  await loadIssuer(dir);
  await initCa(dir, { force: true });
  await t.throwsAsync(access(join(dir, CA_FILES.rootKey)), { code: 'ENOENT' });

  await t.throwsAsync(initCa(join(dir, 'x'), { trustDomain: 'Bad_TD' }), {
    message: /lowercase letters/,
  });
  await t.throwsAsync(initCa(join(dir, 'y'), { rootTtlDays: 10, issuerTtlDays: 20 }), {
    message: /cannot outlive its root/,
  });
});

async function copyCa(t: ExecutionContext, from: string): Promise<string> {
  const dir = await tempDir(t);
  for (const n of Object.values(CA_FILES))
    await writeFile(join(dir, n), await readFile(join(from, n)));
  return dir;
}

async function loadError(
  t: ExecutionContext,
  dir: string,
  code: CaError['code'],
  now?: Date,
): Promise<CaError> {
  const err = await t.throwsAsync(loadIssuer(dir, { now }), { instanceOf: CaError });
  t.is(err!.code, code, err!.message);
  t.log(err!.message);
  return err!;
}

test('loadIssuer: missing file is named, with the command that creates it', async (t) => {
  const dir = await copyCa(t, caA.dir);
  await rm(join(dir, CA_FILES.certChain));
  const err = await loadError(t, dir, 'missing');
  t.regex(err.message, /cert-chain\.pem/);
  t.true(err.message.includes(`weft ca init --out ${dir}`));
  t.is(err.file, join(dir, CA_FILES.certChain));
  const empty = await tempDir(t);
  t.regex((await loadError(t, empty, 'missing')).message, /root-cert\.pem, ca-cert\.pem/);
});

test('loadIssuer: unparsable PEM', async (t) => {
  const dir = await copyCa(t, caA.dir);
  await writeFile(join(dir, CA_FILES.issuerCert), 'not a certificate\n');
  const err = await loadError(t, dir, 'unparsable');
  t.is(err.file, join(dir, CA_FILES.issuerCert));
  const dir2 = await copyCa(t, caA.dir);
  await writeFile(
    join(dir2, CA_FILES.rootCert),
    '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n',
  );
  t.is((await loadError(t, dir2, 'unparsable')).file, join(dir2, CA_FILES.rootCert));
  const dir3 = await copyCa(t, caA.dir);
  await writeFile(join(dir3, CA_FILES.issuerKey), 'garbage');
  t.is((await loadError(t, dir3, 'unparsable')).file, join(dir3, CA_FILES.issuerKey));
});

test('loadIssuer: key not matching the issuer certificate', async (t) => {
  const dir = await copyCa(t, caA.dir);
  await writeFile(
    join(dir, CA_FILES.issuerKey),
    await readFile(join(caRogue.dir, CA_FILES.issuerKey)),
  );
  t.is((await loadError(t, dir, 'key-mismatch')).file, join(dir, CA_FILES.issuerKey));
});

/** Root of a CA directory written with keepRootKey, as a Signer. */
async function rootSigner(dir: string): Promise<Signer> {
  const pem = await readFile(join(dir, CA_FILES.rootKey), 'utf8');
  const der = Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
  const key = await crypto.subtle.importKey('pkcs8', der, EC, false, ['sign']);
  const cert = new X509Certificate(await readFile(join(dir, CA_FILES.rootCert)));
  return { cert, key, chain: [] };
}

async function pkcs8Pem(key: webcrypto.CryptoKey): Promise<string> {
  const b64 = Buffer.from(await crypto.subtle.exportKey('pkcs8', key)).toString('base64');
  return `-----BEGIN PRIVATE KEY-----\n${b64.replace(/.{1,64}/g, '$&\n')}-----END PRIVATE KEY-----\n`;
}

test('loadIssuer: issuer that is not a CA', async (t) => {
  const dir = await copyCa(t, caA.dir);
  const root = await rootSigner(dir);
  // A leaf-shaped certificate signed by the root, with its matching key.
  const { chain, key } = await forge({ signer: root });
  const certPem = `-----BEGIN CERTIFICATE-----\n${chain[0]!.raw.toString('base64').replace(/.{1,64}/g, '$&\n')}-----END CERTIFICATE-----\n`;
  await writeFile(join(dir, CA_FILES.issuerCert), certPem);
  await writeFile(join(dir, CA_FILES.issuerKey), await pkcs8Pem(key));
  await writeFile(
    join(dir, CA_FILES.certChain),
    certPem + (await readFile(join(dir, CA_FILES.rootCert), 'utf8')),
  );
  const err = await loadError(t, dir, 'not-ca');
  t.regex(err.message, /ca-cert\.pem .* is not a CA/);
});

test('loadIssuer: expired issuer', async (t) => {
  const err = await loadError(t, caA.dir, 'expired', new Date(Date.now() + 731 * 24 * HOUR));
  t.is(err.file, join(caA.dir, CA_FILES.issuerCert));
  t.regex(err.message, /expired at/);
});

test('loadIssuer: issuer not signed by the root', async (t) => {
  const dir = await copyCa(t, caA.dir);
  await writeFile(
    join(dir, CA_FILES.rootCert),
    await readFile(join(caRogue.dir, CA_FILES.rootCert)),
  );
  // cert-chain.pem still names A's root, which is no longer the trusted root.
  const err = await loadError(t, dir, 'not-signed-by-root');
  t.regex(err.message, /does not chain to any certificate of .*root-cert\.pem/);
  // cert-chain.pem that does not start with ca-cert.pem
  const dir2 = await copyCa(t, caA.dir);
  await writeFile(
    join(dir2, CA_FILES.certChain),
    await readFile(join(caRogue.dir, CA_FILES.certChain)),
  );
  t.regex((await loadError(t, dir2, 'chain-mismatch')).message, /must start with/);
});

// ---------------------------------------------------------------------------------------------
// Minting and validation

test('mintSvid produces an X.509-SVID that validatePeer accepts', async (t) => {
  const now = new Date();
  const svid = await mintSvid(caA.issuer, { spiffeId: WEB, ttlMs: HOUR, now });
  t.is(svid.spiffeId.uri, WEB);
  t.regex(svid.serial, /^[0-9a-f]{32}$/);
  t.is(svid.notBefore.getTime(), Math.floor((now.getTime() - 60_000) / 1000) * 1000);
  t.true(Math.abs(svid.notAfter.getTime() - (now.getTime() + HOUR)) < 1000);
  t.regex(svid.keyPem, /^-----BEGIN PRIVATE KEY-----/);
  t.is(svid.chainPem.match(/BEGIN CERTIFICATE/g)?.length, 2);
  t.true(svid.chainPem.startsWith(svid.certPem));

  const leaf = new X509Certificate(svid.certPem);
  t.is(leaf.subject as string | undefined, undefined, 'empty subject');
  t.is(leaf.subjectAltName, `URI:${WEB}`);
  t.false(leaf.ca);
  t.deepEqual(leaf.keyUsage?.sort(), ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']); // EKU
  t.is(leaf.serialNumber.toLowerCase(), svid.serial);
  const p = new x509.X509Certificate(leaf.raw);
  t.true(p.getExtension(x509.BasicConstraintsExtension)!.critical);
  t.true(p.getExtension(x509.SubjectAlternativeNameExtension)!.critical);
  const ku = p.getExtension(x509.KeyUsagesExtension)!;
  t.true(ku.critical);
  t.is(ku.usages, x509.KeyUsageFlags.digitalSignature);
  t.is((leaf.publicKey.asymmetricKeyDetails ?? {}).namedCurve, 'prime256v1');

  const chain = [leaf, caA.issuer.issuerCert];
  t.deepEqual(validatePeer(chain, bundles, now), {
    ok: true,
    spiffeId: parseSpiffeId(WEB),
  });
  // The root appended (as Node does when its ca store holds it) is fine too.
  t.true(validatePeer([...chain, caA.issuer.roots[0]!], bundles, now).ok);
  // Two mints differ in key and serial.
  const again = await mintSvid(caA.issuer, { spiffeId: WEB, ttlMs: HOUR, now });
  t.not(again.serial, svid.serial);
  t.not(again.keyPem, svid.keyPem);
  // A leaf never outlives its issuer.
  const long = await mintSvid(caA.issuer, { spiffeId: WEB, ttlMs: 10_000 * 24 * HOUR, now });
  const issuerNotAfter = new x509.X509Certificate(caA.issuer.issuerCert.raw).notAfter;
  t.is(long.notAfter.getTime(), issuerNotAfter.getTime());
  await t.throwsAsync(mintSvid(caA.issuer, { spiffeId: `spiffe://${TD}`, ttlMs: HOUR }), {
    instanceOf: InvalidSpiffeIdError,
  });
});

test('forged baseline (the shape every broken-rule test starts from) is accepted', async (t) => {
  const r = validatePeer(await forgedChain(), bundles);
  t.true(r.ok, r.ok ? '' : r.reason);
});

test('rule: no URI SAN', async (t) => {
  rejects(t, await forgedChain({ uris: [], dns: ['web.default.svc'] }), /no URI SAN/);
});

test('rule: two URI SANs', async (t) => {
  rejects(
    t,
    await forgedChain({ uris: [WEB, `spiffe://${TD}/ns/default/sa/other`] }),
    /2 URI SANs/,
  );
});

test('rule: non-spiffe URI', async (t) => {
  rejects(t, await forgedChain({ uris: ['https://cluster.local/ns/default/sa/web'] }), /scheme/);
});

test('rule: empty path', async (t) => {
  rejects(t, await forgedChain({ uris: [`spiffe://${TD}`] }), /empty path/);
});

test('rule: leaf CA=true', async (t) => {
  rejects(t, await forgedChain({ ca: true }), /leaf is a CA/);
});

test('rule: keyCertSign set', async (t) => {
  const ku = x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyCertSign;
  rejects(t, await forgedChain({ keyUsage: ku }), /keyCertSign/);
});

test('rule: cRLSign set', async (t) => {
  const ku = x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.cRLSign;
  rejects(t, await forgedChain({ keyUsage: ku }), /cRLSign/);
});

test('rule: missing digitalSignature', async (t) => {
  rejects(
    t,
    await forgedChain({ keyUsage: x509.KeyUsageFlags.keyAgreement }),
    /lacks digitalSignature/,
  );
  rejects(t, await forgedChain({ keyUsage: null }), /no key usage/);
});

test('rule: expired', async (t) => {
  const now = Date.now();
  rejects(
    t,
    await forgedChain({ notBefore: new Date(now - 2 * HOUR), notAfter: new Date(now - HOUR) }),
    /leaf .* expired at/,
  );
});

test('rule: not yet valid', async (t) => {
  const now = Date.now();
  rejects(
    t,
    await forgedChain({ notBefore: new Date(now + HOUR), notAfter: new Date(now + 2 * HOUR) }),
    /not valid before/,
  );
});

test('rule: signed by another CA (its root sent along is not trusted)', async (t) => {
  const rogue = signerOf(caRogue.issuer);
  rejects(t, await forgedChain({ signer: rogue }), /not signed by any of its roots/);
  rejects(
    t,
    await forgedChain({ signer: { ...rogue, chain: [...rogue.chain, ...caRogue.issuer.roots] } }),
    /does not lead to a root of trust domain cluster\.local/,
  );
});

test("rule: chain to another trust domain's root while claiming this one", async (t) => {
  // Valid in every other respect, and example.org's bundle is present: never merged.
  const chain = await forgedChain({ signer: signerOf(caOther.issuer) });
  rejects(t, chain, /root of trust domain cluster\.local/);
  // The same issuer is fine for its own trust domain.
  const own = await forgedChain({
    signer: signerOf(caOther.issuer),
    uris: [`spiffe://${OTHER_TD}/ns/default/sa/web`],
  });
  t.true(validatePeer(own, bundles).ok);
});

test('rule: unknown trust domain with no bundle', async (t) => {
  rejects(
    t,
    await forgedChain({ uris: ['spiffe://unknown.test/ns/default/sa/web'] }),
    /no trust bundle for trust domain unknown\.test/,
  );
});

test('rule: intermediate that is not a CA', async (t) => {
  // CA=false but otherwise able to sign (keyCertSign, a subject), so only the CA rule breaks.
  const mid = await forge({
    uris: [`spiffe://${TD}/ns/default/sa/mid`],
    subject: 'CN=not a CA',
    keyUsage: x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyCertSign,
  });
  const signer: Signer = { cert: mid.chain[0]!, key: mid.key, chain: mid.chain };
  rejects(t, await forgedChain({ signer }), /intermediate .* is not a CA/);
});

test('validatePeer: no certificate, and a chain walked from getPeerCertificate', async (t) => {
  t.deepEqual(validatePeer([], bundles), { ok: false, reason: 'peer presented no certificate' });
  t.deepEqual(chainFromPeerCertificate({} as tls.PeerCertificate), []);
  t.deepEqual(chainFromPeerCertificate(null), []);
  const chain = [...(await forgedChain()), caA.issuer.roots[0]!];
  // Shape of getPeerCertificate(true): issuerCertificate links, the root pointing at itself.
  const nodes = chain.map((c) => ({ raw: c.raw }) as tls.DetailedPeerCertificate);
  nodes.forEach((n, i) => (n.issuerCertificate = nodes[i + 1] ?? n));
  const walked = chainFromPeerCertificate(nodes[0]);
  t.deepEqual(
    walked.map((c) => c.fingerprint256),
    chain.map((c) => c.fingerprint256),
  );
});

// ---------------------------------------------------------------------------------------------
// Certificate manager

test('TLS 1.3 handshake with manager-issued contexts, validated on both ends', async (t) => {
  const mgr = new CertificateManager({ issuer: caA.issuer, trustDomain: TD });
  t.teardown(() => mgr.close());
  mgr.setWanted([
    { namespace: 'client-ns', serviceAccount: 'client' },
    { namespace: 'server-ns', serviceAccount: 'server' },
  ]);
  const clientId = `spiffe://${TD}/ns/client-ns/sa/client`;
  const serverId = `spiffe://${TD}/ns/server-ns/sa/server`;
  const [clientCert, serverCert] = await Promise.all([
    mgr.ready(clientId, 10_000),
    mgr.ready(serverId, 10_000),
  ]);

  // As the node proxy does: accept plain TCP, wrap it with the destination's secure context.
  const serverSide = new Promise<{ id: unknown; protocol: string | null }>((resolve, reject) => {
    const server = net.createServer((raw) => {
      const sock = new tls.TLSSocket(raw, {
        isServer: true,
        secureContext: serverCert.secureContext,
        requestCert: true,
        rejectUnauthorized: false,
      });
      sock.on('error', reject);
      sock.once('secure', () => {
        const r = validatePeer(peerChain(sock), bundles);
        resolve({ id: r.ok ? r.spiffeId.uri : r.reason, protocol: sock.getProtocol() });
        sock.end('hello from server');
      });
    });
    t.teardown(() => server.close());
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      const client = tls.connect({
        host: '127.0.0.1',
        port,
        secureContext: clientCert.secureContext,
        rejectUnauthorized: false,
      });
      client.on('error', reject);
      client.once('secureConnect', () => {
        const r = validatePeer(peerChain(client), bundles);
        x509Chain = chainFromX509(client.getPeerX509Certificate());
        clientSaw = r.ok ? r.spiffeId.uri : r.reason;
        clientProtocol = client.getProtocol();
        let data = '';
        client.on('data', (d: Buffer) => (data += d.toString()));
        client.on('end', () => {
          clientData = data;
          client.end();
        });
      });
    });
  });
  let clientSaw: string | undefined;
  let clientProtocol: string | null | undefined;
  let clientData: string | undefined;
  let x509Chain: X509Certificate[] = [];
  const server = await withTimeout(serverSide, 10_000, 'TLS handshake');
  t.is(server.id, clientId, 'server validated the client');
  t.is(server.protocol, 'TLSv1.3');
  await waitFor(() => clientData !== undefined, 5_000, 'server data');
  t.is(clientSaw, serverId, 'client validated the server');
  t.is(clientProtocol, 'TLSv1.3');
  t.is(clientData, 'hello from server');
  t.log(`getPeerX509Certificate chain length: ${x509Chain.length}`);
  t.like(validatePeer(x509Chain, bundles), { ok: true, spiffeId: { uri: serverId } });
});

// Serial: ava runs serial tests before the concurrent ones, so CPU load from the others does
// not skew the timing.
test.serial(
  'rotation: a short-lived certificate is renewed around half-life with a new serial',
  async (t) => {
    const mgr = new CertificateManager({ issuer: caA.issuer, trustDomain: TD, ttlMs: 2000 });
    t.teardown(() => mgr.close());
    const events: (RotatedEvent & { at: number })[] = [];
    mgr.on('rotated', (e) => events.push({ ...e, at: Date.now() }));
    const t0 = Date.now();
    mgr.setWanted([{ namespace: 'default', serviceAccount: 'web' }]);
    const first = await mgr.ready(WEB, 10_000);
    await waitFor(() => events.length >= 2, 6_000, 'a renewal');
    const [e1, e2] = events as [RotatedEvent & { at: number }, RotatedEvent & { at: number }];
    t.is(e1.previousSerial, undefined);
    t.is(e1.serial, first.svid.serial);
    t.is(e2.previousSerial, e1.serial);
    t.not(e2.serial, e1.serial);
    // Certificates have whole-second validity, so the first one lives 1-2 s from t0; renewal is
    // due at half of that, and must come before the first one expires.
    const notAfter = first.svid.notAfter.getTime();
    const halfLife = t0 + (notAfter - t0) / 2;
    t.log(
      `issued at +${e1.at - t0} ms, renewed at +${e2.at - t0} ms, half-life +${halfLife - t0} ms, expiry +${notAfter - t0} ms`,
    );
    t.true(e2.at >= halfLife - 20, 'not renewed early');
    t.true(e2.at < notAfter, 'renewed before expiry');
    const now = mgr.current(WEB)!;
    t.is(now.svid.serial, e2.serial);
    t.true(now.svid.notAfter.getTime() >= first.svid.notAfter.getTime());
    t.is(mgr.list()[0]!.serial, e2.serial);
  },
);

/** A clock whose timers fire only when the test advances it. */
class FakeClock implements Clock {
  t = 1_800_000_000_000;
  timers = new Map<number, { at: number; fn: () => void }>();
  next = 1;
  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    const id = this.next++;
    this.timers.set(id, { at: this.t + ms, fn });
    return id;
  }
  clearTimeout(h: unknown): void {
    this.timers.delete(h as number);
  }
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      const due = [...this.timers.entries()]
        .filter(([, v]) => v.at <= end)
        .sort((a, b) => a[1].at - b[1].at)[0];
      if (due === undefined) break;
      this.timers.delete(due[0]);
      this.t = due[1].at;
      due[1].fn();
      await flush();
    }
    this.t = end;
    await flush();
  }
}

async function flush(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
}

test('manager: failed minting retries with bounded exponential backoff', async (t) => {
  const clock = new FakeClock();
  let calls = 0;
  const failFirst = 9;
  const mint = async (id: Parameters<typeof mintSvid>[1]['spiffeId'], ttlMs: number, now: Date) => {
    calls++;
    if (calls <= failFirst) throw new Error(`CA unavailable (${calls})`);
    return mintSvid(caA.issuer, { spiffeId: id, ttlMs, now });
  };
  const mgr = new CertificateManager({ mint, issuer: caA.issuer, clock, ttlMs: 4 * HOUR });
  t.teardown(() => mgr.close());
  const failures: MintFailedEvent[] = [];
  mgr.on('mintFailed', (e) => failures.push(e));
  mgr.setWanted([{ namespace: 'default', serviceAccount: 'web' }]);
  await flush();
  t.is(mgr.current(WEB), undefined);
  t.like(mgr.list()[0], { spiffeId: WEB, state: 'retrying', failures: 1 });
  await clock.advance(10 * 60_000);
  t.deepEqual(
    failures.map((f) => f.retryInMs),
    [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000],
  );
  await waitFor(() => mgr.current(WEB) !== undefined, 5_000, 'the certificate after retries');
  t.is(calls, failFirst + 1);
  t.like(mgr.list()[0], { state: 'ready', failures: 0, lastError: undefined });
  // Renewal is scheduled at half life of the fake clock.
  const info = mgr.list()[0]!;
  const issuedAt = Date.parse(info.notBefore!) + 60_000; // notBefore is backdated 1 minute
  t.true(Math.abs(Date.parse(info.renewAt!) - (issuedAt + 2 * HOUR)) <= 1000, info.renewAt);
  const serial = mgr.current(WEB)!.svid.serial;
  await clock.advance(2 * HOUR + 1000);
  await waitFor(() => mgr.current(WEB)?.svid.serial !== serial, 5_000, 'renewal');
  t.is(calls, failFirst + 2);
});

test('manager: holds exactly the wanted identities and never lists keys', async (t) => {
  const mgr = new CertificateManager({ issuer: caA.issuer });
  t.teardown(() => mgr.close());
  const dropped: string[] = [];
  mgr.on('dropped', (e) => dropped.push(e.spiffeId));
  const pod = (namespace: string, serviceAccount: string) => ({
    uid: `${namespace}/${serviceAccount}`,
    namespace,
    serviceAccount,
  });
  mgr.setWanted([pod('a', 'x'), pod('a', 'x'), pod('b', 'y')]);
  await Promise.all([
    mgr.ready(spiffeIdFor(TD, 'a', 'x'), 10_000),
    mgr.ready(`spiffe://${TD}/ns/b/sa/y`, 10_000),
  ]);
  t.deepEqual(
    mgr.list().map((c) => [c.spiffeId, c.state]),
    [
      [`spiffe://${TD}/ns/a/sa/x`, 'ready'],
      [`spiffe://${TD}/ns/b/sa/y`, 'ready'],
    ],
  );
  const dump = JSON.stringify(mgr.list());
  t.false(dump.includes('PRIVATE KEY'));
  t.false(dump.includes('CERTIFICATE'));
  mgr.setWanted([pod('b', 'y')]);
  t.deepEqual(dropped, [`spiffe://${TD}/ns/a/sa/x`]);
  t.is(mgr.current(`spiffe://${TD}/ns/a/sa/x`), undefined);
  t.truthy(mgr.current(`spiffe://${TD}/ns/b/sa/y`));
  await t.throwsAsync(mgr.ready(`spiffe://${TD}/ns/a/sa/x`), { message: /not an identity/ });
  t.throws(() => new CertificateManager({ trustDomain: TD }), { message: /issuer or a mint/ });
  const bundlesWithoutOurs = new TrustBundles([[OTHER_TD, caOther.issuer.rootPems.join('')]]);
  t.throws(() => new CertificateManager({ issuer: caA.issuer, bundles: bundlesWithoutOurs }), {
    message: /no trust bundle for our own trust domain/,
  });
});

// ---------------------------------------------------------------------------------------------

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
